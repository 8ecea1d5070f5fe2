//! Read-side queries, run on their own (read-only) connections.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::clock::{from_db_text, to_db_text};

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

/// Orders due at `now`: re-poll marks first (oldest mark first), then regular due orders
/// (longest overdue first), each order once. Both come from partial indexes, so settled orders
/// are never read.
pub fn due_orders(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<DueOrder>> {
    let now = to_db_text(now);
    let mut due = select_due(
        conn,
        "SELECT order_uuid, first_seen_at FROM orders
         WHERE repoll_at IS NOT NULL AND repoll_at <= ?1 ORDER BY repoll_at",
        &now,
        true,
    )?;
    let regular = select_due(
        conn,
        "SELECT order_uuid, first_seen_at FROM orders
         WHERE needs_poll = 1 AND next_poll_at <= ?1 ORDER BY next_poll_at",
        &now,
        false,
    )?;
    let marked: std::collections::HashSet<Uuid> = due.iter().map(|d| d.order).collect();
    due.extend(regular.into_iter().filter(|d| !marked.contains(&d.order)));
    Ok(due)
}

fn select_due(
    conn: &Connection,
    sql: &str,
    now: &str,
    repoll: bool,
) -> rusqlite::Result<Vec<DueOrder>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map([now], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut due = Vec::new();
    for row in rows {
        let (order, first_seen) = row?;
        // Rows are written only by orderwatch; a malformed one is skipped rather than stopping
        // every pass.
        let (Ok(order), Ok(first_seen_at)) = (Uuid::try_parse(&order), from_db_text(&first_seen))
        else {
            tracing::warn!(
                order,
                "skipping an order row with an unreadable uuid or time"
            );
            continue;
        };
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
