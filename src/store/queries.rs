//! Read-side queries, run on their own (read-only) connections.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::apply::cells;
use super::apply::order_place;
use crate::clock::to_db_text;

/// An order a reconciler pass should poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueOrder {
    /// The order.
    pub order: Uuid,
    /// Marked for a re-poll by a `doubtful` or `conflict` outcome: bypasses every filter.
    pub repoll: bool,
    /// When we first saw it (for `max_age`).
    pub first_seen_at: DateTime<Utc>,
}

/// Anything sorting after this is not a time orderwatch could store (those end in year 9999):
/// such a mark, typed by hand, is due at once, so the poll it brings rewrites it.
const AFTER_EVERY_TIME: &str = "9999-12-31T23:59:59.999Z";

/// Orders due at `now`: re-poll marks first (oldest mark first), then regular due orders
/// (longest overdue first), each order once. Both come from partial indexes, so settled orders
/// are never read.
pub fn due_orders(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<DueOrder>> {
    let mut due = select_due(
        conn,
        "SELECT order_uuid, first_seen_at, repoll_at FROM orders
         WHERE repoll_at IS NOT NULL AND (repoll_at <= ?1 OR repoll_at > ?2) ORDER BY repoll_at",
        "repoll_at",
        now,
        true,
    )?;
    let regular = select_due(
        conn,
        "SELECT order_uuid, first_seen_at, next_poll_at FROM orders
         WHERE needs_poll = 1 AND (next_poll_at <= ?1 OR next_poll_at > ?2) ORDER BY next_poll_at",
        "next_poll_at",
        now,
        false,
    )?;
    let marked: std::collections::HashSet<Uuid> = due.iter().map(|d| d.order).collect();
    due.extend(regular.into_iter().filter(|d| !marked.contains(&d.order)));
    Ok(due)
}

/// Runs one of [`due_orders`]' queries. Text order is time order for the times orderwatch
/// writes; the query may also return hand-typed ones (`2024-01-01 12:00:00` sorts before the
/// same day's stored times), which are checked here. An unreadable cell is logged once and
/// never stops a pass: an unreadable due time counts as due, an unreadable `first_seen_at` as
/// now (so `max_age` does not expire the order; the poll repairs it), an unreadable order UUID
/// is skipped.
fn select_due(
    conn: &Connection,
    sql: &str,
    due_column: &'static str,
    now: DateTime<Utc>,
    repoll: bool,
) -> rusqlite::Result<Vec<DueOrder>> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params![to_db_text(now), AFTER_EVERY_TIME])?;
    let mut due = Vec::new();
    while let Some(row) = rows.next()? {
        let key = String::from_utf8_lossy(row.get_ref(0)?.as_bytes().unwrap_or_default());
        let place = |column| order_place(column, &key);
        let Ok(Some(order)) = cells::uuid(row.get_ref(0)?, place("order_uuid")) else {
            continue;
        };
        if let Ok(Some(at)) = cells::time(row.get_ref(2)?, place(due_column))
            && at > now
        {
            continue;
        }
        let first_seen_at = cells::time(row.get_ref(1)?, place("first_seen_at"))
            .ok()
            .flatten()
            .unwrap_or(now);
        due.push(DueOrder {
            order,
            repoll,
            first_seen_at,
        });
    }
    Ok(due)
}

/// A `PENDING` item past its confirmation deadline whose warning was not logged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueItem {
    pub item: Uuid,
    pub order: Uuid,
    /// `first_seen_at + max_confirmation_time`.
    pub deadline: String,
}

/// The overdue rule, the one copy in Rust: an `order_items` row that is PENDING and past its
/// confirmation deadline, `?1` being now as stored text ([`to_db_text`]). NULL (no deadline
/// known yet) counts as not overdue. The `overdue_items` view (schema.sql) and the `overdue`
/// column of `pending_items` (schema_v2.sql) state it against SQLite's clock; migrations
/// never change, so they must keep agreeing with this (a test in `inspect` checks it).
pub const OVERDUE: &str = "(status = 'PENDING' AND coalesce(confirm_deadline < ?1, 0))";

/// Items overdue at `now` that have not been warned about.
pub fn unwarned_overdue(
    conn: &Connection,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<OverdueItem>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT item_uuid, order_uuid, confirm_deadline FROM order_items
         WHERE {OVERDUE} AND overdue_warned_at IS NULL"
    ))?;
    let rows = statement.query_map(params![to_db_text(now)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut overdue = Vec::new();
    for row in rows {
        let (item, order, deadline) = row?;
        if let (Ok(item), Ok(order)) = (Uuid::try_parse(&item), Uuid::try_parse(&order)) {
            overdue.push(OverdueItem {
                item,
                order,
                deadline,
            });
        }
    }
    Ok(overdue)
}
