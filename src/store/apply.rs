//! The one store function every ingest path goes through: [`apply`] reads the item's row, asks
//! the pure rule what to do, writes the result and logs the observation.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreSettings;
use super::poll_state::{self, Trigger};
use super::rule::{ItemState, Outcome, Rules, decide, musement_time};
use crate::clock::{from_db_text, later, to_db_text};
use crate::observation::{Observation, Position, Source, Status};

/// The longest a persistent doubt pushes an order's re-poll out.
const MAX_REPOLL_DELAY: Duration = Duration::hours(1);

/// Applies one observation inside the caller's transaction and returns the rule's outcome.
/// `now` is our clock at commit time (for `first_seen_at`, `changed_at`, re-poll marks).
pub fn apply(
    conn: &Connection,
    observation: &Observation,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Outcome> {
    let rules = &settings.rules;
    let order_uuid = observation.order.to_string();
    warn_about_times(observation, rules);
    upsert_order(conn, observation, now)?;
    let current = load_item(conn, &observation.item.to_string())?;
    let decision = decide(current.as_ref(), observation, rules);
    if current.as_ref() != Some(&decision.state) {
        let status_changed = current.as_ref().map(|c| &c.status) != Some(&decision.state.status);
        write_item(conn, observation, &decision.state, status_changed, now)?;
    }
    append_event(conn, observation, decision.outcome, rules)?;
    if decision.outcome == Outcome::Conflict {
        tracing::error!(
            item = %observation.item,
            version = ?observation.position.version(),
            stored = %decision.state.status,
            received = %observation.status,
            "conflict: Musement sent two statuses for the same item version; kept the first, re-polling"
        );
    }
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

/// Odd Musement times are stored, never rejected, but said once, here: a far-future time is
/// clamped by the rule, a very old one is suspicious.
fn warn_about_times(observation: &Observation, rules: &Rules) {
    let time = musement_time(observation, rules);
    let sent = match observation.position {
        Position::Webhook { updated, .. } => updated,
        Position::Poll { as_of } => as_of,
    };
    if sent > time {
        tracing::warn!(item = %observation.item, %sent, used = %time, "Musement time is far in the future; clamped");
    } else if sent < observation.received_at - Duration::days(365) {
        tracing::warn!(item = %observation.item, %sent, "Musement time is more than a year old; stored as sent");
    }
}

/// Creates the order row if needed and merges order-level facts: webhook facts follow the
/// `order_version` rule, poll-only facts their own `order_polled_as_of`.
fn upsert_order(
    conn: &Connection,
    observation: &Observation,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let facts = &observation.order_facts;
    // SQLite evaluates every SET expression against the old row, so both CASEs see the old version.
    conn.prepare_cached(
        "INSERT INTO orders (order_uuid, order_id, order_version, order_created, order_updated, first_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (order_uuid) DO UPDATE SET
           order_id = coalesce(orders.order_id, excluded.order_id),
           order_created = coalesce(orders.order_created, excluded.order_created),
           order_updated = CASE WHEN excluded.order_version > coalesce(orders.order_version, -1)
                                THEN excluded.order_updated ELSE orders.order_updated END,
           order_version = CASE WHEN excluded.order_version > coalesce(orders.order_version, -1)
                                THEN excluded.order_version ELSE orders.order_version END",
    )?
    .execute(params![
        observation.order.to_string(),
        facts.id,
        facts.version,
        facts.created.map(to_db_text),
        facts.updated.map(to_db_text),
        to_db_text(now),
    ])?;
    if let Position::Poll { as_of } = observation.position
        && (facts.status.is_some() || facts.identifier.is_some())
    {
        conn.prepare_cached(
            "UPDATE orders SET order_status = coalesce(?2, order_status),
                               identifier = coalesce(?3, identifier),
                               order_polled_as_of = ?4
             WHERE order_uuid = ?1 AND (order_polled_as_of IS NULL OR order_polled_as_of < ?4)",
        )?
        .execute(params![
            observation.order.to_string(),
            facts.status,
            facts.identifier,
            to_db_text(as_of),
        ])?;
    }
    Ok(())
}

fn load_item(conn: &Connection, item_uuid: &str) -> rusqlite::Result<Option<ItemState>> {
    conn.prepare_cached(
        "SELECT status, status_version, item_version, as_of, as_of_source, source
         FROM order_items WHERE item_uuid = ?1",
    )?
    .query_row([item_uuid], |row| {
        Ok(ItemState {
            status: Status::parse(&row.get::<_, String>(0)?),
            status_version: row.get(1)?,
            item_version: row.get(2)?,
            as_of: parse_time(row, 3)?,
            as_of_source: parse_source(row, 4)?,
            source: parse_source(row, 5)?,
        })
    })
    .optional()
}

fn parse_time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(index)?;
    from_db_text(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_source(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Source> {
    let text: String = row.get(index)?;
    Source::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown source {text:?}").into(),
        )
    })
}

fn write_item(
    conn: &Connection,
    observation: &Observation,
    state: &ItemState,
    status_changed: bool,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    // item_updated follows item_version: only the webhook that raised the version sets it.
    let updated = match observation.position {
        Position::Webhook { version, updated } if state.item_version == Some(version) => {
            Some(to_db_text(updated))
        }
        _ => None,
    };
    let now = to_db_text(now);
    conn.prepare_cached(
        "INSERT INTO order_items (item_uuid, order_uuid, status, item_version, status_version,
                                  item_created, item_updated, as_of, as_of_source, source,
                                  first_seen_at, changed_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?11)
         ON CONFLICT (item_uuid) DO UPDATE SET
           status = excluded.status,
           item_version = excluded.item_version,
           status_version = excluded.status_version,
           item_created = coalesce(order_items.item_created, excluded.item_created),
           item_updated = coalesce(excluded.item_updated, order_items.item_updated),
           as_of = excluded.as_of,
           as_of_source = excluded.as_of_source,
           source = excluded.source,
           changed_at = CASE WHEN ?12 THEN excluded.changed_at ELSE order_items.changed_at END,
           updated_at = excluded.updated_at",
    )?
    .execute(params![
        observation.item.to_string(),
        observation.order.to_string(),
        state.status.as_str(),
        state.item_version,
        state.status_version,
        observation.item_created.map(to_db_text),
        updated,
        to_db_text(state.as_of),
        state.as_of_source.as_str(),
        state.source.as_str(),
        now,
        status_changed,
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
    let (pending, attempts): (Option<String>, i64) = conn
        .prepare_cached("SELECT repoll_at, repoll_attempts FROM orders WHERE order_uuid = ?1")?
        .query_row([order_uuid], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let now_text = to_db_text(now);
    if pending.is_some_and(|at| at > now_text) {
        return Ok(()); // already marked for a future poll; one poll settles every item
    }
    let base = rules.skew_margin.max(Duration::seconds(1));
    let delay = (base * 2i32.saturating_pow(attempts.clamp(0, 12) as u32)).min(MAX_REPOLL_DELAY);
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
    use crate::observation::OrderFacts;
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

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_for_writing(
            &dir.path().join("t.db"),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        (dir, conn)
    }

    #[test]
    fn poll_only_order_facts_follow_their_own_as_of() {
        let (_dir, conn) = database();
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
        let events: i64 = conn
            .query_row("SELECT count(*) FROM item_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 3);
    }

    #[test]
    fn persistent_doubt_backs_off_the_repoll() {
        let (_dir, conn) = database();
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
}
