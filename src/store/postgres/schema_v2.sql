-- orderwatch PostgreSQL schema, version 2: an order the partner stopped watching (`orderwatch
-- unwatch`, or DELETE /v1/orders/{uuid}/watch on the partner API) is no longer polled, as one
-- Musement answered 404 for; webhooks still update its items. Watching it again clears the mark.
--
-- Expand-only: a binary of schema version 1 keeps running beside one of version 2 (a rolling
-- deploy). It does not know the column, so while both run it may plan one poll of an unwatched
-- order; the poll it records makes a version-2 binary's next plan stop it again.

ALTER TABLE orders ADD COLUMN unwatched_at timestamptz;  -- unwatched: no longer polled
