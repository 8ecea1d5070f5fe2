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
    repoll_attempts     INTEGER NOT NULL DEFAULT 0  -- consecutive doubts, for backoff
) STRICT;

CREATE INDEX orders_repoll ON orders (repoll_at) WHERE repoll_at IS NOT NULL;

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
    updated_at      TEXT NOT NULL          -- our clock, last write of this row
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
