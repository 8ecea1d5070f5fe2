//! Read-side queries, run on their own (read-only) connections.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::cells::{self, order_place};
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
/// (longest overdue first), each order once. Both come from range searches of partial indexes
/// (two each, merged, rather than an OR that SQLite would answer by scanning the index), so
/// settled orders and orders not due yet are never read.
pub fn due_orders(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<DueOrder>> {
    let mut due = select_due(
        conn,
        "SELECT order_uuid, first_seen_at, repoll_at FROM orders WHERE repoll_at <= ?1
         UNION ALL
         SELECT order_uuid, first_seen_at, repoll_at FROM orders WHERE repoll_at > ?2",
        "repoll_at",
        now,
        true,
    )?;
    let regular = select_due(
        conn,
        "SELECT order_uuid, first_seen_at, next_poll_at FROM orders
         WHERE needs_poll = 1 AND next_poll_at <= ?1
         UNION ALL
         SELECT order_uuid, first_seen_at, next_poll_at FROM orders
         WHERE needs_poll = 1 AND next_poll_at > ?2",
        "next_poll_at",
        now,
        false,
    )?;
    let marked: std::collections::HashSet<Uuid> = due.iter().map(|d| d.order).collect();
    due.extend(regular.into_iter().filter(|d| !marked.contains(&d.order)));
    Ok(due)
}

/// Every order still to poll: those due at `now` (as [`due_orders`] orders them), then those
/// scheduled for later (in their quiet period after a webhook, backing off, or waiting for a
/// re-check), soonest first. For `orderwatch reconcile --all-due`.
pub fn orders_to_poll(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<DueOrder>> {
    let mut orders = due_orders(conn, now)?;
    let listed: std::collections::HashSet<Uuid> = orders.iter().map(|d| d.order).collect();
    let mut statement = conn.prepare_cached(
        "SELECT order_uuid, first_seen_at FROM orders INDEXED BY orders_due
         WHERE needs_poll = 1 AND next_poll_at > ?1 ORDER BY next_poll_at",
    )?;
    let mut rows = statement.query([to_db_text(now)])?;
    while let Some(row) = rows.next()? {
        let key = cells::key(row.get_ref(0)?);
        let place = |column| order_place(column, &key);
        let Ok(Some(order)) = cells::uuid(row.get_ref(0)?, place("order_uuid")) else {
            continue;
        };
        if listed.contains(&order) {
            continue;
        }
        let first_seen_at = cells::time(row.get_ref(1)?, place("first_seen_at"))
            .ok()
            .flatten()
            .unwrap_or(now);
        orders.push(DueOrder {
            order,
            repoll: false,
            first_seen_at,
        });
    }
    Ok(orders)
}

/// Orders still to poll that are not due at `now`, by when and why: what a pass leaves for
/// later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollBacklog {
    /// Due by `soon` (as a rule, within `quiet_period` after a webhook).
    pub soon: i64,
    /// Due after `soon` (as a rule, an OK item's next re-check).
    pub later: i64,
    /// Backing off after failed polls.
    pub backing_off: i64,
    /// The soonest of those backing off, as stored.
    pub backing_off_next: Option<String>,
}

/// [`PollBacklog`] at `now`, from the partial index of orders still to poll; `soon` splits
/// the orders scheduled with no failure. The orders in `except` are not counted (a pass that
/// just polled them: they only wait for their next poll).
pub fn poll_backlog(
    conn: &Connection,
    now: DateTime<Utc>,
    soon: DateTime<Utc>,
    except: &[Uuid],
) -> rusqlite::Result<PollBacklog> {
    let mut backlog = PollBacklog::default();
    let except = serde_json::Value::from_iter(except.iter().map(Uuid::to_string)).to_string();
    let mut statement = conn.prepare_cached(
        "SELECT poll_failures > 0, next_poll_at <= ?3, count(*), min(next_poll_at)
         FROM orders INDEXED BY orders_due
         WHERE needs_poll = 1 AND next_poll_at > ?1 AND next_poll_at <= ?2
           AND NOT coalesce(repoll_at <= ?1, 0)
           AND order_uuid NOT IN (SELECT value FROM json_each(?4))
         GROUP BY 1, 2",
    )?;
    let mut rows = statement.query(params![
        to_db_text(now),
        AFTER_EVERY_TIME,
        to_db_text(soon),
        except
    ])?;
    while let Some(row) = rows.next()? {
        backlog.add(row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
    }
    Ok(backlog)
}

impl PollBacklog {
    /// Counts one group of the backlog query: `count` orders, backing off (`failing`, the
    /// soonest `next` kept), else due by `soon` or later.
    pub fn add(&mut self, failing: bool, by_soon: bool, count: i64, next: Option<String>) {
        if failing {
            self.backing_off += count;
            self.backing_off_next = match (self.backing_off_next.take(), next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        } else if by_soon {
            self.soon += count;
        } else {
            self.later += count;
        }
    }
}

/// Runs one of [`due_orders`]' queries and sorts its orders by due time, oldest (and
/// unreadable) first. Text order is time order for the times orderwatch writes; the query may
/// also return hand-typed ones (`2024-01-01 12:00:00` sorts before the same day's stored
/// times), which are checked here. An unreadable cell is logged once and
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
        let key = cells::key(row.get_ref(0)?);
        let place = |column| order_place(column, &key);
        let Ok(Some(order)) = cells::uuid(row.get_ref(0)?, place("order_uuid")) else {
            continue;
        };
        // Unreadable: due now (and first).
        let due_at = cells::time(row.get_ref(2)?, place(due_column)).unwrap_or(None);
        if due_at.is_some_and(|at| at > now) {
            continue;
        }
        let first_seen_at = cells::time(row.get_ref(1)?, place("first_seen_at"))
            .ok()
            .flatten()
            .unwrap_or(now);
        let order = DueOrder {
            order,
            repoll,
            first_seen_at,
        };
        due.push((due_at, order));
    }
    due.sort_by_key(|(due_at, _)| *due_at);
    Ok(due.into_iter().map(|(_, order)| order).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_db_text;

    #[test]
    fn hand_typed_and_unreadable_due_times_never_hide_an_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_for_writing(
            &dir.path().join("t.db"),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        let now = from_db_text("2024-01-01T12:00:00.000Z").unwrap();
        let order = |n: u128| Uuid::from_u128(n).to_string();
        let rows: [(u128, &str, Option<&str>, Option<&str>); 7] = [
            (
                1,
                "2024-01-01T00:00:00.000Z",
                Some("2024-01-01T11:59:00.000Z"),
                None,
            ),
            (
                2,
                "2024-01-01T00:00:00.000Z",
                Some("2024-01-01T12:01:00.000Z"),
                None,
            ),
            (
                3,
                "2024-01-01T00:00:00.000Z",
                Some("2024-01-01 11:59:00"),
                None,
            ),
            (
                4,
                "2024-01-01T00:00:00.000Z",
                Some("2024-01-01 12:01:00"),
                None,
            ),
            (5, "whenever", Some("soon"), None),
            (6, "2024-01-01T00:00:00.000Z", None, Some("later")),
            (
                7,
                "2024-01-01T00:00:00.000Z",
                None,
                Some("2024-01-01 12:01:00"),
            ),
        ];
        for (n, first_seen, next, repoll) in rows {
            conn.execute(
                "INSERT INTO orders (order_uuid, first_seen_at, needs_poll, next_poll_at, repoll_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![order(n), first_seen, next.is_some(), next, repoll],
            )
            .unwrap();
        }
        let due: Vec<(Uuid, bool, DateTime<Utc>)> = due_orders(&conn, now)
            .unwrap()
            .into_iter()
            .map(|d| (d.order, d.repoll, d.first_seen_at))
            .collect();
        let seen = from_db_text("2024-01-01T00:00:00.000Z").unwrap();
        assert_eq!(
            due,
            [
                (Uuid::from_u128(6), true, seen),
                // Unreadable next_poll_at: due first. Unreadable first_seen_at: now, so
                // max_age does not expire it.
                (Uuid::from_u128(5), false, now),
                (Uuid::from_u128(3), false, seen),
                (Uuid::from_u128(1), false, seen),
            ]
        );
    }
}

/// Orders still polled (not stopped by a 404 or `max_age`) whose last poll failed: they are
/// polled again after a backoff. `stats` and the `orderwatch_reconciler_orders_in_backoff`
/// metric both count this; it reads the partial index of polled orders only.
pub fn orders_in_backoff(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM orders INDEXED BY orders_due WHERE needs_poll = 1 AND poll_failures > 0",
        [],
        |r| r.get(0),
    )
}

/// The stored state `/metrics` shows, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Items per status, as stored.
    pub by_status: Vec<(String, i64)>,
    /// PENDING items past their confirmation deadline at `now` ([`OVERDUE`]).
    pub overdue: i64,
    /// Orders still polled whose last poll failed.
    pub in_backoff: i64,
    /// When the longest-PENDING item became PENDING (`changed_at`), if any is and it reads.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Cheap queries only: the status index, PENDING rows for the overdue rule at `now` (the
/// injected clock, like every other reader of the rule), and the partial index of polled
/// orders.
pub fn state_snapshot(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<StateSnapshot> {
    let mut statement =
        conn.prepare("SELECT status, count(*) FROM order_items GROUP BY status ORDER BY status")?;
    let by_status = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let overdue = conn.query_row(
        &format!("SELECT count(*) FROM order_items WHERE {OVERDUE}"),
        [to_db_text(now)],
        |r| r.get(0),
    )?;
    let in_backoff = orders_in_backoff(conn)?;
    // Rows are written only by orderwatch; an unreadable time shows as no age rather than
    // failing the scrape.
    let oldest_pending = conn
        .query_row(
            "SELECT min(changed_at) FROM order_items WHERE status = 'PENDING'",
            [],
            |r| r.get::<_, Option<String>>(0),
        )?
        .and_then(|text| crate::clock::from_db_text(&text).ok());
    Ok(StateSnapshot {
        by_status,
        overdue,
        in_backoff,
        oldest_pending,
    })
}
