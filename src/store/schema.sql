-- orderwatch schema, version 1. A documented contract: see README "Schema".
-- Every time is fixed-width RFC 3339 UTC text, e.g. 2018-12-10T13:12:40.000Z, so string order is
-- time order and sqlite3 users can read it.

-- One row per order seen by either path.
CREATE TABLE orders (
    order_uuid          TEXT PRIMARY KEY,
    order_id            TEXT,              -- webhook order_id (numeric string)
    order_version       INTEGER,           -- highest webhook order_version seen
    order_created       TEXT,              -- webhook order_created
    order_updated       TEXT,              -- order_updated of that highest version
    order_status        TEXT,              -- polled order status (only a poll has it)
    identifier          TEXT,              -- polled identifier, e.g. MUS0738876
    order_polled_as_of  TEXT,              -- Musement time of the poll that set the two above
    first_seen_at       TEXT NOT NULL,     -- our clock, first observation of the order
    repoll_at           TEXT,              -- set by a doubtful/conflict outcome: poll at or after this
    repoll_attempts     INTEGER NOT NULL DEFAULT 0, -- consecutive doubts, for backoff
    -- Reconciler bookkeeping, maintained by the store on every change:
    watched             INTEGER NOT NULL DEFAULT 0, -- registered with `orderwatch watch`
    needs_poll          INTEGER NOT NULL DEFAULT 0, -- 1 while some item is unsettled (see README)
    next_poll_at        TEXT,              -- due at or after this (with needs_poll = 1)
    last_polled_at      TEXT,              -- our clock, last successful poll
    poll_failures       INTEGER NOT NULL DEFAULT 0, -- consecutive failed polls, for backoff
    last_error          TEXT,              -- why the last poll failed (NULL after a success)
    not_found_at        TEXT,              -- Musement answered 404: no longer polled
    expired_at          TEXT               -- past [reconciler] max_age: no longer polled
) STRICT;

CREATE INDEX orders_repoll ON orders (repoll_at) WHERE repoll_at IS NOT NULL;
-- Due orders are found through this partial index, so settled orders are never scanned.
CREATE INDEX orders_due ON orders (next_poll_at) WHERE needs_poll = 1;

-- The reconciled state: one row per order item.
CREATE TABLE order_items (
    item_uuid       TEXT PRIMARY KEY,
    order_uuid      TEXT NOT NULL,
    status          TEXT NOT NULL,         -- PENDING, OK, KO, REFUND_STARTED, REFUNDED, CANCELLATION_ERROR, or as sent
    item_version    INTEGER,               -- highest webhook order_item_version seen (NULL: only polls so far)
    status_version  INTEGER,               -- version of the webhook that set status (NULL: a poll set it)
    item_created    TEXT,                  -- webhook order_item_created
    item_updated    TEXT,                  -- order_item_updated of item_version
    as_of           TEXT NOT NULL,         -- Musement time up to which status is known to hold
    as_of_source    TEXT NOT NULL CHECK (as_of_source IN ('webhook', 'poll')),
    source          TEXT NOT NULL CHECK (source IN ('webhook', 'poll')),  -- what set status
    first_seen_at   TEXT NOT NULL,         -- our clock
    changed_at      TEXT NOT NULL,         -- our clock, when status last changed
    updated_at      TEXT NOT NULL,         -- our clock, last write of this row
    -- Facts only a poll gives:
    vouchers        TEXT,                  -- JSON array of voucher URLs (NULL: never polled)
    product_id      TEXT,
    product_title   TEXT,
    product_date    TEXT,                  -- activity's local date, as sent: 2018-09-01 15:30
    max_confirmation_time TEXT,            -- ISO-8601 duration as sent: P0D, PT30M, P2D
    confirm_deadline TEXT,                 -- first_seen_at + max_confirmation_time
    overdue_warned_at TEXT                 -- when the overdue warning was logged (once per item)
) STRICT;

CREATE INDEX order_items_order ON order_items (order_uuid);
CREATE INDEX order_items_status ON order_items (status);

-- Every observation ever received, append-only, with what the rule made of it.
CREATE TABLE item_events (
    id            INTEGER PRIMARY KEY,     -- stable cursor for consumers
    item_uuid     TEXT NOT NULL,
    order_uuid    TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('webhook', 'poll')),
    status        TEXT NOT NULL,
    item_version  INTEGER,                 -- NULL for polls
    as_of         TEXT NOT NULL,           -- webhook order_item_updated (clamped) or poll Date
    received_at   TEXT NOT NULL,           -- our clock
    outcome       TEXT NOT NULL CHECK (outcome IN ('applied', 'confirmed', 'duplicate', 'stale', 'conflict', 'doubtful')),
    payload       TEXT NOT NULL            -- raw JSON (polled items without personal data)
) STRICT;

CREATE INDEX item_events_item ON item_events (item_uuid, id);

-- Authenticated webhooks that failed validation, newest kept, so operators see what was sent.
CREATE TABLE rejected_webhooks (
    id           INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    peer         TEXT NOT NULL,            -- client address the request came from
    field        TEXT NOT NULL,            -- offending field, or 'body'
    error        TEXT NOT NULL,
    body         BLOB NOT NULL             -- as received (may be invalid UTF-8)
) STRICT;

-- One row, rewritten by every readiness check, so /readyz proves a real write can commit.
CREATE TABLE heartbeat (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  TEXT NOT NULL
) STRICT;

-- Who runs a reconciler pass now, so passes never overlap across processes.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;

-- PENDING items past their confirmation deadline (real time; the daemon uses its own clock).
-- The same rule as store::queries::OVERDUE (items, show, stats, overdue warnings): they must agree.
CREATE VIEW overdue_items AS
SELECT item_uuid, order_uuid, status, first_seen_at, max_confirmation_time, confirm_deadline
FROM order_items
WHERE status = 'PENDING' AND confirm_deadline < strftime('%Y-%m-%dT%H:%M:%fZ', 'now');
