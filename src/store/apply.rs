//! The one store function every ingest path goes through: [`apply`] reads the item's row, asks
//! the pure rule what to do, writes the result and logs the observation.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreSettings;
use super::cells::{self, Place, Unreadable, order_place};
use super::poll_state::{self, Trigger};
use super::rule::{
    Decision, ItemState, OrderState, Outcome, Rules, decide, decide_order, musement_time,
};
use crate::backoff::BackoffPolicy;
use crate::clock::{from_db_text, later, to_db_text};
use crate::observation::{ItemFacts, Observation, OrderFacts, Position, Source};
use crate::telemetry;

/// The longest a persistent doubt pushes an order's re-poll out.
const MAX_REPOLL_DELAY: Duration = Duration::hours(1);

/// Applies one observation inside the caller's transaction and returns the rule's outcome:
/// the order's facts and the item's row as the rule decides them, the event, a re-poll mark
/// when in doubt, and when the order is due. `now` is our clock at commit time (for
/// `first_seen_at`, `changed_at`, re-poll marks).
pub fn apply(
    conn: &Connection,
    observation: &Observation,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Outcome> {
    let rules = &settings.rules;
    let order_uuid = observation.order.to_string();
    let item_uuid = observation.item.to_string();
    warn_about_times(observation, rules);
    write_order(conn, observation, rules, now)?;
    let stored = load_item(conn, &item_uuid)?;
    let current = stored.as_ref().and_then(|s| s.state.as_ref());
    let decision = decide(current, observation, rules);
    let repaired_first_seen = match &stored {
        Some(stored) if stored.first_seen.is_none() => {
            Some(first_event_time(conn, &item_uuid, now)?)
        }
        _ => None,
    };
    if current != Some(&decision.state) || repaired_first_seen.is_some() {
        let first_seen = stored.as_ref().and_then(|s| s.first_seen);
        let write = ItemWrite {
            decision: &decision,
            status_changed: current.map(|c| &c.status) != Some(&decision.state.status),
            first_seen: repaired_first_seen.or(first_seen).unwrap_or(now),
            repaired_first_seen: repaired_first_seen.is_some(),
        };
        write_item(conn, observation, &write, now)?;
    }
    append_event(conn, observation, decision.outcome, rules)?;
    log_decision(observation, current, &decision);
    if decision.outcome.needs_repoll() {
        mark_for_repoll(conn, &order_uuid, rules, now)?;
    }
    let trigger = match observation.position.source() {
        Source::Webhook => Trigger::Webhook,
        Source::Poll => Trigger::Other, // the caller that polled says when the order is due again
    };
    poll_state::refresh(conn, &order_uuid, &settings.policy, trigger, now)?;
    Ok(decision.outcome)
}

/// The decisions an operator must hear about, said once, here.
fn log_decision(observation: &Observation, current: Option<&ItemState>, decision: &Decision) {
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
fn warn_about_times(observation: &Observation, rules: &Rules) {
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

/// Writes the order's facts as [`decide_order`] decides them after `observation`, creating
/// the row if needed (`first_seen_at` = `now`). Nothing is written when nothing changes.
fn write_order(
    conn: &Connection,
    observation: &Observation,
    rules: &Rules,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let order_uuid = observation.order.to_string();
    let stored = load_order(conn, &order_uuid)?;
    let decided = decide_order(stored.as_ref(), observation, rules);
    if stored.as_ref() == Some(&decided) {
        return Ok(());
    }
    let facts = &decided.facts;
    conn.prepare_cached(
        "INSERT INTO orders (order_uuid, order_id, order_version, order_created, order_updated,
                             order_status, identifier, order_polled_as_of, first_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (order_uuid) DO UPDATE SET
           order_id = excluded.order_id,
           order_version = excluded.order_version,
           order_created = excluded.order_created,
           order_updated = excluded.order_updated,
           order_status = excluded.order_status,
           identifier = excluded.identifier,
           order_polled_as_of = excluded.order_polled_as_of",
    )?
    .execute(params![
        order_uuid,
        facts.id,
        facts.version,
        facts.created.map(to_db_text),
        facts.updated.map(to_db_text),
        facts.status,
        facts.identifier,
        decided.polled_as_of.map(to_db_text),
        to_db_text(now),
    ])?;
    Ok(())
}

/// The order's facts as stored; `None` when there is no row yet. An unreadable cell is unknown
/// (`None`), so the rule's decision replaces it.
fn load_order(conn: &Connection, order_uuid: &str) -> rusqlite::Result<Option<OrderState>> {
    conn.prepare_cached(
        "SELECT order_id, order_version, order_created, order_updated, order_status, identifier,
                order_polled_as_of
         FROM orders WHERE order_uuid = ?1",
    )?
    .query_row([order_uuid], |row| {
        let place = |column| order_place(column, order_uuid);
        let text = |i: usize, column| -> rusqlite::Result<Option<String>> {
            Ok(cells::text(row.get_ref(i)?, place(column))
                .unwrap_or(None)
                .map(str::to_owned))
        };
        let time = |i: usize, column| -> rusqlite::Result<Option<DateTime<Utc>>> {
            Ok(cells::time(row.get_ref(i)?, place(column)).unwrap_or(None))
        };
        Ok(OrderState {
            facts: OrderFacts {
                id: text(0, "order_id")?,
                version: cells::integer(row.get_ref(1)?, place("order_version")).unwrap_or(None),
                created: time(2, "order_created")?,
                updated: time(3, "order_updated")?,
                status: text(4, "order_status")?,
                identifier: text(5, "identifier")?,
            },
            polled_as_of: time(6, "order_polled_as_of")?,
        })
    })
    .optional()
}

/// An item's row as the write path reads it.
struct StoredItem {
    /// The rule's view of the row; `None` when one of the cells the status rule needs could
    /// not be read: the state is unknown, and this observation's decision replaces it whole.
    /// (An unreadable detail, e.g. `item_created` or a product fact, is only that detail
    /// unknown.)
    state: Option<ItemState>,
    /// `first_seen_at` (it dates the confirmation deadline); `None` when unreadable: the write
    /// repairs it from the item's first event.
    first_seen: Option<DateTime<Utc>>,
}

fn load_item(conn: &Connection, item_uuid: &str) -> rusqlite::Result<Option<StoredItem>> {
    conn.prepare_cached(
        "SELECT status, status_version, item_version, as_of, as_of_source, source, facts_as_of,
                first_seen_at, item_created, item_updated, vouchers, product_id, product_title,
                product_date, max_confirmation_time
         FROM order_items WHERE item_uuid = ?1",
    )?
    .query_row([item_uuid], |row| {
        let place = |column| Place {
            table: "order_items",
            column,
            key: item_uuid,
        };
        // Every cell is read (and an unreadable one logged) before any is judged.
        let status = cells::status(row.get_ref(0)?, place("status"));
        let status_version = cells::integer(row.get_ref(1)?, place("status_version"));
        let item_version = cells::integer(row.get_ref(2)?, place("item_version"));
        let as_of = cells::time(row.get_ref(3)?, place("as_of"));
        let as_of_source = cells::source(row.get_ref(4)?, place("as_of_source"));
        let source = cells::source(row.get_ref(5)?, place("source"));
        let facts_as_of = cells::time(row.get_ref(6)?, place("facts_as_of"));
        let first_seen = cells::time(row.get_ref(7)?, place("first_seen_at"));
        let detail_time = |i: usize, column| -> rusqlite::Result<Option<DateTime<Utc>>> {
            Ok(cells::time(row.get_ref(i)?, place(column)).unwrap_or(None))
        };
        let detail_text = |i: usize, column| -> rusqlite::Result<Option<String>> {
            Ok(cells::text(row.get_ref(i)?, place(column))
                .unwrap_or(None)
                .map(str::to_owned))
        };
        let item_created = detail_time(8, "item_created")?;
        let item_updated = detail_time(9, "item_updated")?;
        let facts = ItemFacts {
            vouchers: cells::string_list(row.get_ref(10)?, place("vouchers")).unwrap_or(None),
            product_id: detail_text(11, "product_id")?,
            product_title: detail_text(12, "product_title")?,
            product_date: detail_text(13, "product_date")?,
            max_confirmation_time: detail_text(14, "max_confirmation_time")?,
        };
        let state = (|| -> Result<ItemState, Unreadable> {
            Ok(ItemState {
                status: status?.ok_or(Unreadable)?,
                status_version: status_version?,
                item_version: item_version?,
                as_of: as_of?.ok_or(Unreadable)?,
                as_of_source: as_of_source?.ok_or(Unreadable)?,
                source: source?.ok_or(Unreadable)?,
                facts_as_of: facts_as_of?,
                facts,
                item_created,
                item_updated,
            })
        })();
        Ok(StoredItem {
            state: state.ok(),
            first_seen: first_seen.unwrap_or(None),
        })
    })
    .optional()
}

/// The best `first_seen_at` for an item whose stored one is unreadable: when its first event
/// arrived (`now` if that is unreadable too, or pruned).
fn first_event_time(
    conn: &Connection,
    item_uuid: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<DateTime<Utc>> {
    let first: Option<String> = conn
        .prepare_cached(
            "SELECT received_at FROM item_events WHERE item_uuid = ?1 ORDER BY id LIMIT 1",
        )?
        .query_row([item_uuid], |row| row.get(0))
        .optional()?;
    let first = first.and_then(|text| from_db_text(&text).ok());
    Ok(first.unwrap_or(now))
}

/// What [`write_item`] writes besides the decided state.
struct ItemWrite<'a> {
    /// The rule's decision: the state to store, and whether the poll's facts are part of it.
    decision: &'a Decision,
    /// Whether the status differs from the stored one (moves `changed_at`).
    status_changed: bool,
    /// The item's `first_seen_at` (`now` for a new item): dates the confirmation deadline.
    first_seen: DateTime<Utc>,
    /// Whether `first_seen` replaces an unreadable stored one.
    repaired_first_seen: bool,
}

/// Writes the decided state. The poll facts' columns are written only when the rule says this
/// poll's facts are the newest (`writes_facts`), with the confirmation deadline they date
/// from `first_seen_at`.
fn write_item(
    conn: &Connection,
    observation: &Observation,
    write: &ItemWrite<'_>,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let state = &write.decision.state;
    let writes_facts = write.decision.writes_facts;
    let facts = &state.facts;
    let vouchers = facts
        .vouchers
        .as_ref()
        .map(|list| serde_json::to_string(list).unwrap_or_else(|_| "[]".into()));
    let deadline = facts
        .max_confirmation_time
        .as_deref()
        .and_then(super::polls::parse_iso_duration)
        .map(|allowed| to_db_text(later(write.first_seen, allowed)));
    let now = to_db_text(now);
    conn.prepare_cached(
        "INSERT INTO order_items (item_uuid, order_uuid, status, item_version, status_version,
                                  item_created, item_updated, as_of, as_of_source, source,
                                  facts_as_of, first_seen_at, changed_at, updated_at,
                                  vouchers, product_id, product_title, product_date,
                                  max_confirmation_time, confirm_deadline)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13,
                 ?15, ?16, ?17, ?18, ?19, ?20)
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
                                   ELSE order_items.confirm_deadline END",
    )?
    .execute(params![
        observation.item.to_string(),
        observation.order.to_string(),
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
        writes_facts,
    ])?;
    Ok(())
}

fn append_event(
    conn: &Connection,
    observation: &Observation,
    outcome: Outcome,
    rules: &Rules,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                  received_at, outcome, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
    ])?;
    Ok(())
}

/// Asks for a poll of the order after `skew_margin`, doubling the wait each time the doubt
/// comes back while a mark is already due (Musement's state settles it; see the reconciler).
fn mark_for_repoll(
    conn: &Connection,
    order_uuid: &str,
    rules: &Rules,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let (pending, attempts) = conn
        .prepare_cached("SELECT repoll_at, repoll_attempts FROM orders WHERE order_uuid = ?1")?
        .query_row([order_uuid], |row| {
            let pending = cells::time(row.get_ref(0)?, order_place("repoll_at", order_uuid));
            Ok((pending, row.get::<_, i64>(1)?))
        })?;
    // An unreadable mark is unknown: this one replaces it.
    if pending.is_ok_and(|at| at.is_some_and(|at| at > now)) {
        return Ok(()); // already marked for a future poll; one poll settles every item
    }
    let backoff = BackoffPolicy {
        base: rules.skew_margin.max(Duration::seconds(1)),
        cap: MAX_REPOLL_DELAY,
    };
    let delay = backoff.delay(attempts);
    conn.prepare_cached(
        "UPDATE orders SET repoll_at = ?2, repoll_attempts = repoll_attempts + 1 WHERE order_uuid = ?1",
    )?
    .execute(params![order_uuid, to_db_text(later(now, delay))])?;
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
