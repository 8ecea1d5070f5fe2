-- orderwatch schema, version 5: an order the partner stopped watching (`orderwatch unwatch`, or
-- DELETE /v1/orders/{uuid}/watch on the partner API) is no longer polled, as one Musement
-- answered 404 for; webhooks still update its items. Watching it again clears the mark.

ALTER TABLE orders ADD COLUMN unwatched_at TEXT;     -- unwatched: no longer polled
