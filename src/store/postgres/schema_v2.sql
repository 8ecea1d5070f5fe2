-- orderwatch PostgreSQL schema, version 2: an order the partner stopped watching (`orderwatch
-- unwatch`, or DELETE /v1/orders/{uuid}/watch on the partner API) is no longer polled, as one
-- Musement answered 404 for; webhooks still update its items. Watching it again clears the mark.
--
-- Expand-only: a binary of schema version 1 keeps running beside one of version 2 (a rolling
-- deploy), but it does not know the column: while one runs, an order unwatched meanwhile is
-- planned for polling again by every webhook or poll that instance stores, and is polled as if
-- watched. Once only version-2 binaries run, the next poll of such an order stops it for good.
-- Unwatch orders after the deploy, not during it.

ALTER TABLE orders ADD COLUMN unwatched_at timestamptz;  -- unwatched: no longer polled

-- The partner API pages items in arrival order (`seq > cursor ORDER BY seq LIMIT n`): an index
-- range instead of reading and sorting every item.
CREATE INDEX order_items_seq ON order_items (seq);
