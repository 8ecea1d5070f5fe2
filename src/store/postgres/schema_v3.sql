-- orderwatch PostgreSQL schema, version 3: signed webhooks out (`[[forward]]`). An outbox fed
-- from the change feed: each destination's place in the feed, and one row per status change
-- to deliver to it, kept after delivery as its record.
--
-- Expand-only: a binary of an older schema version does not know these tables and neither
-- reads nor writes them (it forwards nothing).

CREATE TABLE forward_destinations (
    name             text PRIMARY KEY,      -- [[forward]] name
    feed_cursor      text NOT NULL,         -- the change feed is enqueued up to here (`--after`)
    disabled_at      timestamptz,           -- the destination answered 410 Gone: nothing is sent
    disabled_reason  text                   -- until `orderwatch deliveries enable NAME`
);

CREATE TABLE forward_deliveries (
    id                bigserial PRIMARY KEY, -- enqueue order
    destination       text NOT NULL,
    event_id          bigint NOT NULL,       -- item_events.id of the change (webhook-id)
    item_uuid         uuid NOT NULL,
    cursor            text NOT NULL,         -- the change's place in the feed
    new_status        text NOT NULL,
    body              text NOT NULL,         -- the exact JSON posted on every attempt
    state             text NOT NULL,         -- pending | delivered | parked | skipped
    head              boolean NOT NULL DEFAULT false, -- the item's next open delivery: the only one sent
    attempts          integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    first_attempt_at  timestamptz,           -- give_up_after counts from here
    next_attempt_at   timestamptz NOT NULL,  -- not sent before
    last_attempt_at   timestamptz,
    last_status       integer,               -- HTTP status of the last attempt (NULL: none came)
    last_error        text,
    claimed_by        text,                  -- the instance sending it now, until claimed_until
    claimed_until     timestamptz,
    delivered_at      timestamptz
);

-- What to send next: a destination's sendable deliveries (each its item's head) by when due.
CREATE INDEX forward_deliveries_due ON forward_deliveries (destination, next_attempt_at, id)
    WHERE head AND state = 'pending';
-- Per-item order: an item's open deliveries in the order of its changes (the next head).
CREATE INDEX forward_deliveries_open ON forward_deliveries (destination, item_uuid, event_id, id)
    WHERE state IN ('pending', 'parked');
