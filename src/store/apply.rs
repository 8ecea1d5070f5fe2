//! The one store function every ingest path goes through: [`apply_batch`] reads the rows a
//! batch of observations touches, asks the pure rule what to do (folded in queue order by
//! [`super::batch::plan`]), writes the result and logs every observation.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::StoreSettings;
use super::batch::{self, ItemWrite, Loaded, OrderWrite, StoredItem, StoredOrder};
use super::cells::{self, Place, Unreadable, order_place};
use super::poll_state::{self, FIELD_COLUMNS, ITEM_VIEW_COLUMNS};
use super::rule::{Decision, ItemState, OrderState, Outcome, Rules, musement_time};
use crate::clock::{from_db_text, to_db_text};
use crate::observation::{ItemFacts, Observation, OrderFacts, Position};
use crate::telemetry;

/// Applies one observation inside the caller's transaction and returns the rule's outcome
/// (a batch of one: see [`apply_batch`]).
pub fn apply(
    conn: &Connection,
    observation: &Observation,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Outcome> {
    let outcomes = apply_batch(conn, &[observation], settings, now)?;
    Ok(outcomes[0])
}

/// Applies `observations`, in order, inside the caller's transaction and returns each one's
/// outcome: the rows they touch are read in one statement per table, the rule decides the
/// orders' facts, the items' rows, re-poll marks and when each order is due, and each changed
/// row is written once, with an event per observation. `now` is our clock at commit time
/// (for `first_seen_at`, `changed_at`, re-poll marks). The rows are those that applying the
/// observations one by one in that order gives.
pub fn apply_batch(
    conn: &Connection,
    observations: &[&Observation],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Outcome>> {
    let (loaded, mut seqs) = load(conn, observations)?;
    let plan = batch::plan(loaded, observations, settings, now);
    for order in &plan.orders {
        if let Some(seq) = write_order(conn, order, now)? {
            seqs.orders.insert(order.key.clone(), seq);
        }
    }
    for item in &plan.items {
        let order_seq = seqs.orders.get(&item.order_key).copied();
        if let Some(seq) = write_item(conn, item, order_seq, now)? {
            seqs.items.insert(item.key.clone(), seq);
        }
    }
    for (observation, outcome) in observations.iter().zip(&plan.outcomes) {
        let item_seq = seqs.items.get(&observation.item.to_string()).copied();
        append_event(conn, observation, *outcome, item_seq, &settings.rules)?;
    }
    for note in &plan.notes {
        let observation = observations[note.index];
        warn_about_times(observation, &settings.rules);
        log_decision(observation, note.before.as_ref(), &note.decision);
    }
    Ok(plan.outcomes)
}

/// The arrival numbers (`seq`, schema version 4) of the rows a batch touches, by UUID text:
/// read with the rows, and taken from each new row as it is inserted, so that a new item names
/// its order's and an event its item's. One not known here (a row inserted by hand and left
/// without) is filled by the schema's triggers.
#[derive(Debug, Default)]
struct Seqs {
    orders: HashMap<String, i64>,
    items: HashMap<String, i64>,
}

/// The stored rows `observations` touch: their orders, their items, and every other item of
/// those orders (which decide when the order is polled); and their arrival numbers.
fn load(conn: &Connection, observations: &[&Observation]) -> rusqlite::Result<(Loaded, Seqs)> {
    let mut order_keys = Vec::new();
    let mut item_keys = Vec::new();
    let (mut seen_orders, mut seen_items) = (HashSet::new(), HashSet::new());
    for observation in observations {
        if seen_orders.insert(observation.order) {
            order_keys.push(observation.order.to_string());
        }
        if seen_items.insert(observation.item) {
            item_keys.push(observation.item.to_string());
        }
    }
    let order_list = serde_json::to_string(&order_keys).expect("a list of strings");
    let item_list = serde_json::to_string(&item_keys).expect("a list of strings");
    let mut loaded = Loaded::default();
    let mut seqs = Seqs::default();
    {
        let mut statement = conn.prepare_cached(&format!(
            "SELECT order_uuid, order_id, order_version, order_created, order_updated,
                    order_status, identifier, order_polled_as_of, repoll_at, repoll_attempts,
                    {FIELD_COLUMNS}, seq
             FROM orders WHERE order_uuid IN (SELECT value FROM json_each(?1))"
        ))?;
        let mut rows = statement.query([&order_list])?;
        while let Some(row) = rows.next()? {
            let key = cells::key(row.get_ref(0)?);
            let order = read_order(row, &key)?;
            if let Some(seq) = row.get(14)? {
                seqs.orders.insert(key.clone(), seq);
            }
            loaded.orders.insert(key, order);
        }
    }
    {
        let mut statement = conn.prepare_cached(&format!(
            "SELECT item_uuid, order_uuid, status, status_version, item_version, as_of,
                    as_of_source, source, facts_as_of, first_seen_at, item_created, item_updated,
                    vouchers, product_id, product_title, product_date, max_confirmation_time,
                    {ITEM_VIEW_COLUMNS}, seq
             FROM order_items
             WHERE item_uuid IN (SELECT value FROM json_each(?1))
                OR (order_seq IN (SELECT seq FROM orders
                                  WHERE order_uuid IN (SELECT value FROM json_each(?2)))
                    AND order_uuid IN (SELECT value FROM json_each(?2)))"
        ))?;
        let mut rows = statement.query([&item_list, &order_list])?;
        while let Some(row) = rows.next()? {
            let key = cells::key(row.get_ref(0)?);
            let item = read_item(row, &key)?;
            if let Some(seq) = row.get(20)? {
                seqs.items.insert(key.clone(), seq);
            }
            loaded.items.insert(key, item);
        }
    }
    for (key, item) in &mut loaded.items {
        if item.first_seen.is_none() {
            item.first_event = first_event_time(conn, key)?;
        }
    }
    Ok((loaded, seqs))
}

/// The decisions an operator must hear about, said once, here.
pub(super) fn log_decision(
    observation: &Observation,
    current: Option<&ItemState>,
    decision: &Decision,
) {
    if decision.outcome == Outcome::Conflict {
        tracing::error!(
            item = %observation.item,
            version = observation.position.version(),
            stored = %decision.state.status,
            received = %observation.status,
            "conflict: Musement sent two statuses for the same item version; kept the first, re-polling"
        );
    }
    let stored_version = current.and_then(|c| c.item_version);
    if let (Position::Webhook { version, .. }, Some(stored_version)) =
        (observation.position, stored_version)
        && decision.outcome == Outcome::Applied
        && version < stored_version
    {
        tracing::warn!(
            item = %observation.item,
            version,
            stored_version,
            "a webhook with a lower version than the stored one is clearly later in time; \
             the stored version was not believed (see README \"The ordering rule\")"
        );
    }
}

/// Odd Musement times are stored, never rejected, but said once, here: a far-future time is
/// clamped by the rule, a very old one is suspicious.
pub(super) fn warn_about_times(observation: &Observation, rules: &Rules) {
    let time = musement_time(observation, rules);
    let sent = match observation.position {
        Position::Webhook { updated, .. } => updated,
        Position::Poll { as_of } => as_of,
    };
    if sent > time {
        let (sent, used) = (telemetry::rfc3339(sent), telemetry::rfc3339(time));
        tracing::warn!(item = %observation.item, %sent, %used, "Musement time is far in the future; clamped");
    } else if sent < observation.received_at - Duration::days(365) {
        let sent = telemetry::rfc3339(sent);
        tracing::warn!(item = %observation.item, %sent, "Musement time is more than a year old; stored as sent");
    }
}

/// Writes an order's decided facts (creating the row, `first_seen_at` = `now`, `seq` the rowid
/// it gets), its re-poll mark and when it is due; nothing that did not change. Returns its
/// `seq` when it wrote the facts.
fn write_order(
    conn: &Connection,
    order: &OrderWrite,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<i64>> {
    let mut seq = None;
    if let Some(decided) = &order.facts {
        let facts = &decided.facts;
        seq = conn.prepare_cached(
            "INSERT INTO orders (order_uuid, order_id, order_version, order_created, order_updated,
                                 order_status, identifier, order_polled_as_of, first_seen_at, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                     (SELECT coalesce(max(rowid), 0) + 1 FROM orders))
             ON CONFLICT (order_uuid) DO UPDATE SET
               order_id = excluded.order_id,
               order_version = excluded.order_version,
               order_created = excluded.order_created,
               order_updated = excluded.order_updated,
               order_status = excluded.order_status,
               identifier = excluded.identifier,
               order_polled_as_of = excluded.order_polled_as_of
             RETURNING seq",
        )?
        .query_row(params![
            order.key,
            facts.id,
            facts.version,
            facts.created.map(to_db_text),
            facts.updated.map(to_db_text),
            facts.status,
            facts.identifier,
            decided.polled_as_of.map(to_db_text),
            to_db_text(now),
        ], |row| row.get(0))?;
    }
    if let Some((repoll_at, attempts)) = order.repoll {
        conn.prepare_cached(
            "UPDATE orders SET repoll_at = ?2, repoll_attempts = ?3 WHERE order_uuid = ?1",
        )?
        .execute(params![order.key, to_db_text(repoll_at), attempts])?;
    }
    poll_state::write(conn, &order.key, &order.poll)?;
    Ok(seq)
}

/// An `orders` row as [`load`] selects it. An unreadable fact is unknown (`None`), so the
/// rule's decision replaces it.
fn read_order(row: &Row<'_>, order_uuid: &str) -> rusqlite::Result<StoredOrder> {
    let place = |column| order_place(column, order_uuid);
    let text = |i: usize, column| -> rusqlite::Result<Option<String>> {
        Ok(cells::text(row.get_ref(i)?, place(column))
            .unwrap_or(None)
            .map(str::to_owned))
    };
    let time = |i: usize, column| -> rusqlite::Result<Option<DateTime<Utc>>> {
        Ok(cells::time(row.get_ref(i)?, place(column)).unwrap_or(None))
    };
    Ok(StoredOrder {
        state: OrderState {
            facts: OrderFacts {
                id: text(1, "order_id")?,
                version: cells::integer(row.get_ref(2)?, place("order_version")).unwrap_or(None),
                created: time(3, "order_created")?,
                updated: time(4, "order_updated")?,
                status: text(5, "order_status")?,
                identifier: text(6, "identifier")?,
            },
            polled_as_of: time(7, "order_polled_as_of")?,
        },
        repoll_mark: cells::time(row.get_ref(8)?, place("repoll_at")),
        repoll_attempts: row.get(9)?,
        poll: poll_state::read_fields(row, 10, order_uuid)?,
    })
}

/// An `order_items` row as [`load`] selects it.
fn read_item(row: &Row<'_>, item_uuid: &str) -> rusqlite::Result<StoredItem> {
    let place = |column| Place {
        table: "order_items",
        column,
        key: item_uuid,
    };
    // Every cell is read (and an unreadable one logged) before any is judged.
    let order_key = cells::key(row.get_ref(1)?);
    let status = cells::status(row.get_ref(2)?, place("status"));
    let status_version = cells::integer(row.get_ref(3)?, place("status_version"));
    let item_version = cells::integer(row.get_ref(4)?, place("item_version"));
    let as_of = cells::time(row.get_ref(5)?, place("as_of"));
    let as_of_source = cells::source(row.get_ref(6)?, place("as_of_source"));
    let source = cells::source(row.get_ref(7)?, place("source"));
    let facts_as_of = cells::time(row.get_ref(8)?, place("facts_as_of"));
    let first_seen = cells::time(row.get_ref(9)?, place("first_seen_at"));
    let detail_time = |i: usize, column| -> rusqlite::Result<Option<DateTime<Utc>>> {
        Ok(cells::time(row.get_ref(i)?, place(column)).unwrap_or(None))
    };
    let detail_text = |i: usize, column| -> rusqlite::Result<Option<String>> {
        Ok(cells::text(row.get_ref(i)?, place(column))
            .unwrap_or(None)
            .map(str::to_owned))
    };
    let item_created = detail_time(10, "item_created")?;
    let item_updated = detail_time(11, "item_updated")?;
    let stored_facts = ItemFacts {
        vouchers: cells::string_list(row.get_ref(12)?, place("vouchers")).unwrap_or(None),
        product_id: detail_text(13, "product_id")?,
        product_title: detail_text(14, "product_title")?,
        product_date: detail_text(15, "product_date")?,
        max_confirmation_time: detail_text(16, "max_confirmation_time")?,
    };
    // An unreadable detail (`item_created`, a product fact) is only that detail unknown; an
    // unreadable cell the status rule needs makes the whole state unknown, and the next
    // decision replaces it whole.
    let state = (|| -> Result<ItemState, Unreadable> {
        Ok(ItemState {
            status: status?.ok_or(Unreadable)?,
            status_version: status_version?,
            item_version: item_version?,
            as_of: as_of?.ok_or(Unreadable)?,
            as_of_source: as_of_source?.ok_or(Unreadable)?,
            source: source?.ok_or(Unreadable)?,
            facts_as_of: facts_as_of?,
            facts: stored_facts.clone(),
            item_created,
            item_updated,
        })
    })();
    Ok(StoredItem {
        order_key,
        state: state.ok(),
        facts: stored_facts,
        first_seen: first_seen.unwrap_or(None),
        first_event: None,
        poll_view: poll_state::read_item_view(row, 17, item_uuid)?,
    })
}

/// When the item's first event arrived: the best `first_seen_at` for an item whose stored one
/// is unreadable (`None` if that is unreadable too, or pruned).
fn first_event_time(conn: &Connection, item_uuid: &str) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let first: Option<String> = conn
        .prepare_cached(
            "SELECT received_at FROM item_events
             WHERE item_seq IS (SELECT seq FROM order_items WHERE item_uuid = ?1)
               AND item_uuid = ?1
             ORDER BY id LIMIT 1",
        )?
        .query_row([item_uuid], |row| row.get(0))
        .optional()?;
    Ok(first.and_then(|text| from_db_text(&text).ok()))
}

/// Writes an item's decided state. The poll facts' columns are written only when the rule
/// said a poll's facts are the newest (`writes_facts`), with the confirmation deadline they
/// date from `first_seen_at`. A new row gets `seq` (the rowid it gets) and `order_seq`; the
/// item's `seq` is returned.
fn write_item(
    conn: &Connection,
    write: &ItemWrite,
    order_seq: Option<i64>,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<i64>> {
    let state = &write.state;
    let facts = &state.facts;
    let vouchers = facts
        .vouchers
        .as_ref()
        .map(|list| serde_json::to_string(list).unwrap_or_else(|_| "[]".into()));
    let deadline = write.confirm_deadline.map(to_db_text);
    let now = to_db_text(now);
    conn.prepare_cached(
        "INSERT INTO order_items (item_uuid, order_uuid, status, item_version, status_version,
                                  item_created, item_updated, as_of, as_of_source, source,
                                  facts_as_of, first_seen_at, changed_at, updated_at,
                                  vouchers, product_id, product_title, product_date,
                                  max_confirmation_time, confirm_deadline, seq, order_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13,
                 ?15, ?16, ?17, ?18, ?19, ?20,
                 (SELECT coalesce(max(rowid), 0) + 1 FROM order_items), ?23)
         ON CONFLICT (item_uuid) DO UPDATE SET
           status = excluded.status,
           item_version = excluded.item_version,
           status_version = excluded.status_version,
           item_created = excluded.item_created,
           item_updated = excluded.item_updated,
           as_of = excluded.as_of,
           as_of_source = excluded.as_of_source,
           source = excluded.source,
           facts_as_of = excluded.facts_as_of,
           first_seen_at = CASE WHEN ?21 THEN excluded.first_seen_at ELSE order_items.first_seen_at END,
           changed_at = CASE WHEN ?14 THEN excluded.changed_at ELSE order_items.changed_at END,
           updated_at = excluded.updated_at,
           vouchers = CASE WHEN ?22 THEN excluded.vouchers ELSE order_items.vouchers END,
           product_id = CASE WHEN ?22 THEN excluded.product_id ELSE order_items.product_id END,
           product_title = CASE WHEN ?22 THEN excluded.product_title ELSE order_items.product_title END,
           product_date = CASE WHEN ?22 THEN excluded.product_date ELSE order_items.product_date END,
           max_confirmation_time = CASE WHEN ?22 THEN excluded.max_confirmation_time
                                        ELSE order_items.max_confirmation_time END,
           confirm_deadline = CASE WHEN ?22 THEN coalesce(excluded.confirm_deadline, order_items.confirm_deadline)
                                   ELSE order_items.confirm_deadline END
         RETURNING seq",
    )?
    .query_row(params![
        write.key,
        write.order_key,
        state.status.as_str(),
        state.item_version,
        state.status_version,
        state.item_created.map(to_db_text),
        state.item_updated.map(to_db_text),
        to_db_text(state.as_of),
        state.as_of_source.as_str(),
        state.source.as_str(),
        state.facts_as_of.map(to_db_text),
        to_db_text(write.first_seen),
        now,
        write.status_changed,
        vouchers,
        facts.product_id,
        facts.product_title,
        facts.product_date,
        facts.max_confirmation_time,
        deadline,
        write.repaired_first_seen,
        write.writes_facts,
        order_seq,
    ], |row| row.get(0))
}

fn append_event(
    conn: &Connection,
    observation: &Observation,
    outcome: Outcome,
    item_seq: Option<i64>,
    rules: &Rules,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                  received_at, outcome, payload, item_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        observation.item.to_string(),
        observation.order.to_string(),
        observation.position.source().as_str(),
        observation.status.as_str(),
        observation.position.version(),
        to_db_text(musement_time(observation, rules)),
        to_db_text(observation.received_at),
        outcome.as_str(),
        observation.raw,
        item_seq,
    ])?;
    Ok(())
}

/// An authenticated webhook that failed validation, kept for operators.
#[derive(Debug, Clone)]
pub struct RejectedWebhook {
    /// Our clock when it arrived.
    pub received_at: DateTime<Utc>,
    /// The client address it came from.
    pub peer: String,
    /// The offending field (`body` when the whole body was at fault).
    pub field: String,
    /// The validation error.
    pub error: String,
    /// The body as received.
    pub body: Vec<u8>,
}

/// Stores a rejected webhook and prunes the table to the newest `keep` rows.
pub fn record_rejected(
    conn: &Connection,
    rejected: &RejectedWebhook,
    keep: u32,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rejected_webhooks (received_at, peer, field, error, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        to_db_text(rejected.received_at),
        rejected.peer,
        rejected.field,
        rejected.error,
        rejected.body,
    ])?;
    conn.prepare_cached("DELETE FROM rejected_webhooks WHERE id <= last_insert_rowid() - ?1")?
        .execute([keep])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{OrderFacts, Status};
    use crate::store::testing::{count, new_database};
    use uuid::Uuid;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn poll(status: &str, order_status: &str, as_of: i64) -> Observation {
        Observation {
            item: Uuid::from_u128(1),
            order: Uuid::from_u128(2),
            status: Status::parse(status),
            position: Position::Poll { as_of: at(as_of) },
            item_created: None,
            order_facts: OrderFacts {
                status: Some(order_status.into()),
                identifier: Some("MUS0738876".into()),
                ..OrderFacts::default()
            },
            item_facts: ItemFacts::default(),
            received_at: at(as_of),
            raw: "{}".into(),
        }
    }

    fn apply(
        conn: &Connection,
        observation: &Observation,
        now: DateTime<Utc>,
    ) -> rusqlite::Result<Outcome> {
        super::apply(conn, observation, &StoreSettings::default(), now)
    }

    #[test]
    fn poll_only_order_facts_follow_their_own_as_of() {
        let (_dir, conn) = new_database();
        assert_eq!(
            apply(&conn, &poll("PENDING", "PENDING", 10), at(10)).unwrap(),
            Outcome::Applied
        );
        assert_eq!(
            apply(&conn, &poll("OK", "OK", 30), at(30)).unwrap(),
            Outcome::Applied
        );
        assert_eq!(
            apply(&conn, &poll("PENDING", "PENDING", 20), at(31)).unwrap(),
            Outcome::Stale
        );
        let (order_status, identifier, polled): (String, String, String) = conn
            .query_row(
                "SELECT order_status, identifier, order_polled_as_of FROM orders",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (order_status.as_str(), identifier.as_str()),
            ("OK", "MUS0738876")
        );
        assert_eq!(polled, to_db_text(at(30)));
        let (status, source, version, changed): (String, String, Option<i64>, String) = conn
            .query_row(
                "SELECT status, source, item_version, changed_at FROM order_items",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), source.as_str(), version),
            ("OK", "poll", None)
        );
        assert_eq!(
            changed,
            to_db_text(at(30)),
            "changed_at moves only with the status"
        );
        assert_eq!(count(&conn, "item_events"), 3);
    }

    #[test]
    fn a_poll_that_gives_only_one_order_fact_writes_it() {
        let (_dir, conn) = new_database();
        let order_facts = |conn: &Connection| -> (Option<String>, Option<String>) {
            conn.query_row("SELECT order_status, identifier FROM orders", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        };
        // (poll's order status, its identifier, its time) → the stored pair after it.
        let steps = [
            ((Some("PENDING"), None), 10, (Some("PENDING"), None)),
            // A fact the poll leaves out keeps its value.
            (
                (None, Some("MUS0738876")),
                20,
                (Some("PENDING"), Some("MUS0738876")),
            ),
        ];
        for ((status, identifier), time, stored) in steps {
            let observation = Observation {
                order_facts: OrderFacts {
                    status: status.map(str::to_owned),
                    identifier: identifier.map(str::to_owned),
                    ..OrderFacts::default()
                },
                ..poll("PENDING", "PENDING", time)
            };
            apply(&conn, &observation, at(time)).unwrap();
            let stored = (stored.0.map(str::to_owned), stored.1.map(str::to_owned));
            assert_eq!(order_facts(&conn), stored, "after the poll at {time}");
        }
    }

    #[test]
    fn persistent_doubt_backs_off_the_repoll() {
        let (_dir, conn) = new_database();
        let repoll = |conn: &Connection| -> (String, i64) {
            conn.query_row("SELECT repoll_at, repoll_attempts FROM orders", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        };
        let mut webhook = poll("PENDING", "PENDING", 100);
        webhook.position = Position::Webhook {
            version: 1,
            updated: at(100),
        };
        apply(&conn, &webhook, at(100)).unwrap();
        // Polls within the margin that disagree are doubtful.
        assert_eq!(
            apply(&conn, &poll("OK", "OK", 102), at(102)).unwrap(),
            Outcome::Doubtful
        );
        assert_eq!(repoll(&conn), (to_db_text(at(107)), 1));
        // Another doubt before the mark is due does not push it out.
        apply(&conn, &poll("OK", "OK", 103), at(103)).unwrap();
        assert_eq!(repoll(&conn), (to_db_text(at(107)), 1));
        // Once due, a renewed doubt doubles the wait.
        apply(&conn, &poll("OK", "OK", 104), at(108)).unwrap();
        assert_eq!(repoll(&conn), (to_db_text(at(118)), 2));
    }

    #[test]
    fn a_stale_webhook_repairs_an_unreadable_first_seen_at_and_nothing_else() {
        let (_dir, conn) = new_database();
        let webhook = |version, updated| Observation {
            position: Position::Webhook {
                version,
                updated: at(updated),
            },
            order_facts: OrderFacts::default(),
            ..poll("OK", "OK", updated)
        };
        let row = |conn: &Connection| -> (String, String, i64, String) {
            conn.query_row(
                "SELECT first_seen_at, item_updated, item_version, updated_at FROM order_items",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
        };
        apply(&conn, &webhook(2, 20), at(21)).unwrap();
        conn.execute("UPDATE order_items SET first_seen_at = 'long ago'", [])
            .unwrap();
        // Stale, yet the row is written to repair first_seen_at (when the first event was
        // received, at 20); the rest is the rule's: item_updated stays that of item_version,
        // not the stale webhook's.
        assert_eq!(
            apply(&conn, &webhook(1, 10), at(30)).unwrap(),
            Outcome::Stale
        );
        assert_eq!(
            row(&conn),
            (
                to_db_text(at(20)),
                to_db_text(at(20)),
                2,
                to_db_text(at(30))
            )
        );
        // Once readable, a stale webhook writes nothing.
        assert_eq!(
            apply(&conn, &webhook(1, 10), at(40)).unwrap(),
            Outcome::Stale
        );
        assert_eq!(row(&conn).3, to_db_text(at(30)));
    }
}
