-- orderwatch schema, version 6: signed webhooks out (`[[forward]]`). An outbox fed from the
-- change feed: each destination's place in the feed, and one row per status change to deliver
-- to it, kept after delivery as its record.

CREATE TABLE forward_destinations (
    name             TEXT PRIMARY KEY,      -- [[forward]] name
    feed_cursor      TEXT NOT NULL,         -- the change feed is enqueued up to here (`--after`)
    disabled_at      TEXT,                  -- the destination answered 410 Gone: nothing is sent
    disabled_reason  TEXT                   -- until `orderwatch deliveries enable NAME`
);

CREATE TABLE forward_deliveries (
    id                INTEGER PRIMARY KEY,  -- enqueue order
    destination       TEXT NOT NULL,
    event_id          INTEGER NOT NULL,     -- item_events.id of the change (webhook-id)
    item_uuid         TEXT NOT NULL,
    cursor            TEXT NOT NULL,        -- the change's place in the feed
    new_status        TEXT NOT NULL,
    body              TEXT NOT NULL,        -- the exact JSON posted on every attempt
    state             TEXT NOT NULL,        -- pending | delivered | parked | skipped
    head              INTEGER NOT NULL DEFAULT 0, -- the item's next open delivery: the only one sent
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    first_attempt_at  TEXT,                 -- give_up_after counts from here
    next_attempt_at   TEXT NOT NULL,        -- not sent before
    last_attempt_at   TEXT,
    last_status       INTEGER,              -- HTTP status of the last attempt (NULL: none came)
    last_error        TEXT,
    claimed_by        TEXT,                 -- the instance sending it now, until claimed_until
    claimed_until     TEXT,
    delivered_at      TEXT
);

-- What to send next: a destination's sendable deliveries (each its item's head) by when due.
CREATE INDEX forward_deliveries_due ON forward_deliveries (destination, next_attempt_at, id)
    WHERE head = 1 AND state = 'pending';
-- Per-item order: an item's open deliveries in the order of its changes (the next head).
CREATE INDEX forward_deliveries_open ON forward_deliveries (destination, item_uuid, event_id, id)
    WHERE state IN ('pending', 'parked');
