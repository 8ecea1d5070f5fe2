//! The daemon's read-side questions on PostgreSQL, each what its SQLite twin in
//! `store::queries` answers (the differential test asks both): due orders, orders still to
//! poll, the poll backlog, unwarned overdue items, and the state `/metrics` shows. PostgreSQL's
//! types leave no cell unreadable, so SQLite's care for hand-typed and unreadable cells has
//! nothing to do here.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use super::super::queries::{DueOrder, OverdueItem, PollBacklog, StateSnapshot};
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Orders due at `now`: re-poll marks first (oldest mark first), then regular due orders
/// (longest overdue first), each order once; ties in arrival order.
pub async fn due_orders(client: &Client, now: DateTime<Utc>) -> Result<Vec<DueOrder>> {
    let marked = client
        .query(
            "SELECT order_uuid, first_seen_at FROM orders
             WHERE repoll_at <= $1 ORDER BY repoll_at, seq",
            &[&now],
        )
        .await?;
    let regular = client
        .query(
            "SELECT order_uuid, first_seen_at FROM orders
             WHERE needs_poll AND next_poll_at <= $1 ORDER BY next_poll_at, seq",
            &[&now],
        )
        .await?;
    let mut due: Vec<DueOrder> = due_rows(&marked, true).collect();
    let listed: HashSet<Uuid> = due.iter().map(|d| d.order).collect();
    due.extend(due_rows(&regular, false).filter(|d| !listed.contains(&d.order)));
    Ok(due)
}

/// Rows of `order_uuid, first_seen_at` as orders to poll.
fn due_rows(rows: &[Row], repoll: bool) -> impl Iterator<Item = DueOrder> + '_ {
    rows.iter().map(move |row| DueOrder {
        order: row.get(0),
        repoll,
        first_seen_at: row.get(1),
    })
}

/// Every order still to poll: those due at `now`, then those scheduled later, soonest first.
pub async fn orders_to_poll(client: &Client, now: DateTime<Utc>) -> Result<Vec<DueOrder>> {
    let mut orders = due_orders(client, now).await?;
    let listed: HashSet<Uuid> = orders.iter().map(|d| d.order).collect();
    let later = client
        .query(
            "SELECT order_uuid, first_seen_at FROM orders
             WHERE needs_poll AND next_poll_at > $1 ORDER BY next_poll_at, seq",
            &[&now],
        )
        .await?;
    orders.extend(due_rows(&later, false).filter(|d| !listed.contains(&d.order)));
    Ok(orders)
}

/// What waits to be polled after `now` (but the orders in `except`): due by `soon`, later,
/// or backing off after failed polls.
pub async fn poll_backlog(
    client: &Client,
    now: DateTime<Utc>,
    soon: DateTime<Utc>,
    except: &[Uuid],
) -> Result<PollBacklog> {
    let rows = client
        .query(
            "SELECT poll_failures > 0, next_poll_at <= $2, count(*), min(next_poll_at)
             FROM orders
             WHERE needs_poll AND next_poll_at > $1
               AND NOT coalesce(repoll_at <= $1, false)
               AND order_uuid <> ALL($3)
             GROUP BY 1, 2",
            &[&now, &soon, &except],
        )
        .await?;
    let mut backlog = PollBacklog::default();
    for row in &rows {
        let next: Option<DateTime<Utc>> = row.get(3);
        backlog.add(row.get(0), row.get(1), row.get(2), next.map(to_db_text));
    }
    Ok(backlog)
}

/// The overdue rule ([`super::super::queries::OVERDUE`]) in PostgreSQL's words, `$1` being now.
pub(super) const OVERDUE: &str = "(status = 'PENDING' AND coalesce(confirm_deadline < $1, false))";

/// Items overdue at `now` that have not been warned about.
pub async fn unwarned_overdue(client: &Client, now: DateTime<Utc>) -> Result<Vec<OverdueItem>> {
    let rows = client
        .query(
            &format!(
                "SELECT item_uuid, order_uuid, confirm_deadline FROM order_items
                 WHERE {OVERDUE} AND overdue_warned_at IS NULL ORDER BY seq"
            ),
            &[&now],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| OverdueItem {
            item: row.get(0),
            order: row.get(1),
            deadline: to_db_text(row.get(2)),
        })
        .collect())
}

/// Orders still polled whose last poll failed.
pub async fn orders_in_backoff(client: &Client) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM orders WHERE needs_poll AND poll_failures > 0",
            &[],
        )
        .await?
        .get(0))
}

/// The stored state `/metrics` shows; statuses in byte order, as SQLite sorts them.
pub async fn state_snapshot(client: &Client, now: DateTime<Utc>) -> Result<StateSnapshot> {
    let by_status = client
        .query(
            "SELECT status, count(*) FROM order_items GROUP BY status ORDER BY status COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let overdue: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM order_items WHERE {OVERDUE}"),
            &[&now],
        )
        .await?
        .get(0);
    let in_backoff = orders_in_backoff(client).await?;
    let oldest_pending: Option<DateTime<Utc>> = client
        .query_one(
            "SELECT min(changed_at) FROM order_items WHERE status = 'PENDING'",
            &[],
        )
        .await?
        .get(0);
    Ok(StateSnapshot {
        by_status,
        overdue,
        in_backoff,
        oldest_pending,
    })
}
