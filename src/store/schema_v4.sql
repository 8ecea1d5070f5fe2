-- orderwatch schema, version 4: integer keys in arrival order beside the UUIDs, so that a new
-- webhook inserts into two UUID-keyed B-trees (the orders' and the items' primary keys) instead
-- of four. Measured on a 1M-item file, one core, 60 s: the store's own batch path took 6,302
-- new webhooks/s against 4,181/s with version 3 (1.51x; BENCHMARKS.md). Existing columns keep
-- their names and meaning; UUIDs stay the keys a partner's SQL uses.
--
-- `seq` is the row's rowid when it was inserted, kept as a value: a VACUUM may renumber rowids,
-- never a column. Every lookup through a seq also compares the UUID, so two rows that share a
-- seq (possible only after a VACUUM renumbered rowids) cost a row read, never a wrong answer.

ALTER TABLE orders ADD COLUMN seq INTEGER;           -- arrival number of the order
ALTER TABLE order_items ADD COLUMN seq INTEGER;      -- arrival number of the item
ALTER TABLE order_items ADD COLUMN order_seq INTEGER; -- orders.seq of its order
ALTER TABLE item_events ADD COLUMN item_seq INTEGER; -- order_items.seq of its item

UPDATE orders SET seq = rowid;
UPDATE order_items SET seq = rowid,
  order_seq = (SELECT o.seq FROM orders o WHERE o.order_uuid = order_items.order_uuid);
UPDATE item_events SET item_seq =
  (SELECT i.seq FROM order_items i WHERE i.item_uuid = item_events.item_uuid);

-- The two UUID-keyed indexes that every new webhook grew at a random place, replaced.
DROP INDEX order_items_order;
DROP INDEX item_events_item;
CREATE INDEX order_items_order_seq ON order_items (order_seq);
CREATE INDEX item_events_item_seq ON item_events (item_seq, id);

-- orderwatch fills the seqs itself; these fill them for rows inserted without them (by hand in
-- sqlite3, say), so every row stays reachable from its order and its item.
CREATE TRIGGER orders_seq AFTER INSERT ON orders WHEN NEW.seq IS NULL
BEGIN
  UPDATE orders SET seq = NEW.rowid WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER order_items_seq AFTER INSERT ON order_items
WHEN NEW.seq IS NULL OR NEW.order_seq IS NULL
BEGIN
  UPDATE order_items SET seq = coalesce(NEW.seq, NEW.rowid),
    order_seq = coalesce(NEW.order_seq,
                         (SELECT o.seq FROM orders o WHERE o.order_uuid = NEW.order_uuid))
  WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER item_events_item_seq AFTER INSERT ON item_events WHEN NEW.item_seq IS NULL
BEGIN
  UPDATE item_events SET item_seq =
    (SELECT i.seq FROM order_items i WHERE i.item_uuid = NEW.item_uuid)
  WHERE id = NEW.id;
END;

-- pending_items finds each item's last event through item_seq now.
DROP VIEW pending_items;
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
         (SELECT e.outcome FROM item_events e WHERE e.item_seq = i.seq AND e.item_uuid = i.item_uuid
          ORDER BY e.id DESC LIMIT 1) AS last_outcome,
         (SELECT e.received_at FROM item_events e WHERE e.item_seq = i.seq AND e.item_uuid = i.item_uuid
          ORDER BY e.id DESC LIMIT 1) AS last_event_at,
         o.last_polled_at, o.next_poll_at, o.poll_failures, o.last_error
  FROM order_items i JOIN orders o ON o.order_uuid = i.order_uuid
  WHERE i.status = 'PENDING'
)
ORDER BY pending_since, item_uuid;

-- item_history reaches an item's events through item_seq now, so a query for one item
-- (`where item_uuid = …`) reads only its events. Events that name no item row (item_seq NULL,
-- e.g. inserted by hand for an item that does not exist) are listed with no current state, as
-- before; events whose item row was deleted by hand after them no longer are.
DROP VIEW item_history;
CREATE VIEW item_history AS
SELECT e.id AS event_id, i.item_uuid, e.order_uuid, e.received_at, e.source,
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
FROM order_items i JOIN item_events e ON e.item_seq = i.seq AND e.item_uuid = i.item_uuid
UNION ALL
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
       NULL AS current_status, NULL AS current_version, NULL AS current_as_of,
       NULL AS current_source, NULL AS current_since
FROM item_events e WHERE e.item_seq IS NULL
ORDER BY event_id;
