-- orderwatch schema, version 2: views for people reading the database with plain sqlite3.
-- Ages are measured against SQLite's clock ('now', UTC); times stay RFC 3339 UTC text.

-- Items still PENDING, longest waiting first: since when, for how long, whether past their
-- confirmation deadline, how polling of their order goes, and what the last observation did.
-- `overdue` is the rule of store::queries::OVERDUE against SQLite's clock: they must agree.
CREATE VIEW pending_items AS
SELECT item_uuid, order_uuid, identifier, status, pending_since, age_seconds,
       CASE
         WHEN age_seconds >= 86400 THEN (age_seconds / 86400) || 'd ' || (age_seconds % 86400 / 3600) || 'h'
         WHEN age_seconds >= 3600 THEN (age_seconds / 3600) || 'h ' || (age_seconds % 3600 / 60) || 'm'
         WHEN age_seconds >= 60 THEN (age_seconds / 60) || 'm ' || (age_seconds % 60) || 's'
         ELSE age_seconds || 's'
       END AS age,
       overdue, confirm_deadline, source, item_version, as_of, last_outcome, last_event_at,
       last_polled_at, next_poll_at, poll_failures, last_error
FROM (
  SELECT i.item_uuid, i.order_uuid, o.identifier, i.status, i.changed_at AS pending_since,
         max(0, CAST(round((julianday('now') - julianday(i.changed_at)) * 86400) AS INTEGER)) AS age_seconds,
         coalesce(i.confirm_deadline < strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 0) AS overdue,
         i.confirm_deadline, i.source, i.item_version, i.as_of,
         (SELECT e.outcome FROM item_events e WHERE e.item_uuid = i.item_uuid ORDER BY e.id DESC LIMIT 1) AS last_outcome,
         (SELECT e.received_at FROM item_events e WHERE e.item_uuid = i.item_uuid ORDER BY e.id DESC LIMIT 1) AS last_event_at,
         o.last_polled_at, o.next_poll_at, o.poll_failures, o.last_error
  FROM order_items i JOIN orders o ON o.order_uuid = i.order_uuid
  WHERE i.status = 'PENDING'
)
ORDER BY pending_since, item_uuid;

-- Every observation (oldest first) next to the item's current state, with why the ordering
-- rule did what it did (the same words as `orderwatch show`).
CREATE VIEW item_history AS
SELECT e.id AS event_id, e.item_uuid, e.order_uuid, e.received_at, e.source,
       e.status AS observed_status, e.item_version AS observed_version, e.as_of AS observed_as_of,
       e.outcome,
       CASE e.outcome || '/' || e.source
         WHEN 'applied/webhook' THEN 'set the status: first sight of the item, or a version above every one seen (clearly later than a poll''s time, if a poll set the status)'
         WHEN 'applied/poll' THEN 'set the status: first sight of the item, or a poll later than the stored time (by more than skew_margin when a webhook set it) that saw another status'
         WHEN 'confirmed/poll' THEN 'the poll saw the stored status (as_of moves forward when the poll is later)'
         WHEN 'duplicate/webhook' THEN 'this version was already stored: nothing changed'
         WHEN 'stale/webhook' THEN 'older than what is stored: a version below the highest one seen'
         WHEN 'stale/poll' THEN 'older than what is stored: the poll''s time is not after the time of the poll that set the row'
         WHEN 'conflict/webhook' THEN 'same version as the webhook that set the status but another status: kept the stored one, re-poll scheduled'
         WHEN 'doubtful/webhook' THEN 'a newer version, but not more than skew_margin later than the poll that set the status: kept it, re-poll scheduled'
         WHEN 'doubtful/poll' THEN 'another status than the webhook''s, but not more than skew_margin later than it: kept it, re-poll scheduled'
         ELSE e.outcome
       END AS why,
       i.status AS current_status, i.status_version AS current_version, i.as_of AS current_as_of,
       i.source AS current_source, i.changed_at AS current_since
FROM item_events e LEFT JOIN order_items i ON i.item_uuid = e.item_uuid
ORDER BY e.id;
