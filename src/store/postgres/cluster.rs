//! What several instances on one PostgreSQL database share, each statement short and on the
//! database's clock (instances' clocks may differ; the server's is the one they all see):
//!
//! - **claims** on due orders (`orders.poll_claimed_by/_until`), taken with `SKIP LOCKED`, so N
//!   reconcilers split the due orders instead of each polling all of them; a claim left by a
//!   dead instance expires and is taken over;
//! - **overdue warnings**, each item's taken by one instance in the statement that marks it;
//! - **the Musement budget**: one token bucket row (`rate_budget`) that every instance draws
//!   from, and the pause a 429 or `Retry-After` imposes on all of them (`blocked_until`, on
//!   the instances' clock like the pause each client keeps, which it extends);
//! - **the cluster lease** (`leases`), whose holder exports the database-wide gauges.
//!
//! Each runs in autocommit on a pooled connection: no row lock outlives its statement, and
//! none is held across an HTTP call.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use super::super::LeaseAnswer;
use super::super::queries::{DueOrder, OverdueItem};
use super::queries::OVERDUE;
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// The `rate_budget` row for Musement's API.
const BUDGET: &str = "musement";

/// Claims, for `holder` until `ttl` from now on the database clock, up to `limit` orders due
/// at `now` that no live claim holds, that no instance polled since `pass_began`, and that are
/// not in `skip` (those this pass already handled): re-poll marks first (oldest mark first), then regular due orders (longest overdue
/// first), as [`super::queries::due_orders`] orders them. Rows another transaction has locked
/// (a webhook batch writing that order) are skipped, not waited for.
///
/// `pass_began` keeps passes on several instances from polling an order once each: a poll
/// that leaves an item `PENDING` makes its order due again at once (it is polled every pass),
/// so without it a pass that started with another would find the orders that one just polled
/// due again. Each order is polled once per pass, as on SQLite.
#[allow(clippy::too_many_arguments)]
pub async fn claim_due(
    client: &mut Client,
    now: DateTime<Utc>,
    pass_began: DateTime<Utc>,
    limit: usize,
    holder: &str,
    ttl: Duration,
    skip: &[Uuid],
) -> Result<Vec<DueOrder>> {
    // `last_polled_at` is stored to the millisecond.
    let pass_began = pass_began.trunc_subsecs(3);
    let tx = client.transaction().await?;
    let mut claimed = Vec::new();
    let branches = [
        ("repoll_at <= $1", "repoll_at, seq", true),
        (
            "needs_poll AND next_poll_at <= $1",
            "next_poll_at, seq",
            false,
        ),
    ];
    for (condition, order_by, repoll) in branches {
        let room = limit.saturating_sub(claimed.len());
        if room == 0 {
            break;
        }
        // The order is kept by sorting on the same keys the sub-select used.
        let rows = tx
            .query(
                &format!(
                    "WITH due AS (
                       SELECT order_uuid FROM orders
                       WHERE {condition}
                         AND (poll_claimed_until IS NULL OR poll_claimed_until < clock_timestamp())
                         AND order_uuid <> ALL($2)
                         AND (last_polled_at IS NULL OR last_polled_at < $6)
                       ORDER BY {order_by} LIMIT $3
                       FOR NO KEY UPDATE SKIP LOCKED)
                     UPDATE orders o SET poll_claimed_by = $4,
                       poll_claimed_until = clock_timestamp() + make_interval(secs => $5)
                     FROM due WHERE o.order_uuid = due.order_uuid
                     RETURNING o.order_uuid, o.first_seen_at, o.repoll_at, o.next_poll_at, o.seq"
                ),
                &[
                    &now,
                    &skip,
                    &(room as i64),
                    &holder,
                    &ttl.as_secs_f64(),
                    &pass_began,
                ],
            )
            .await?;
        let mut batch: Vec<(Option<DateTime<Utc>>, i64, DueOrder)> = rows
            .iter()
            .map(|row| {
                let key = if repoll { row.get(2) } else { row.get(3) };
                let order = DueOrder {
                    order: row.get(0),
                    repoll,
                    first_seen_at: row.get(1),
                };
                (key, row.get(4), order)
            })
            .collect();
        batch.sort_by_key(|(key, seq, _)| (*key, *seq));
        claimed.extend(batch.into_iter().map(|(_, _, order)| order));
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Gives back `holder`'s claims on `orders` (those a pass claimed but did not poll: a pause
/// began, or the pass stopped), so any instance may poll them as soon as they are due.
pub async fn release_claims(client: &Client, orders: &[Uuid], holder: &str) -> Result<()> {
    client
        .execute(
            "UPDATE orders SET poll_claimed_by = NULL, poll_claimed_until = NULL
             WHERE order_uuid = ANY($1) AND poll_claimed_by = $2",
            &[&orders, &holder],
        )
        .await?;
    Ok(())
}

/// Items overdue at `now` that nobody has warned about, marked warned at `now` in the same
/// statement: with several instances each item is reported by exactly one of them (a row
/// another instance is marking is skipped; its statement reports it).
pub async fn take_overdue(client: &Client, now: DateTime<Utc>) -> Result<Vec<OverdueItem>> {
    let rows = client
        .query(
            &format!(
                "WITH due AS (
                   SELECT item_uuid FROM order_items
                   WHERE {OVERDUE} AND overdue_warned_at IS NULL
                   FOR NO KEY UPDATE SKIP LOCKED)
                 UPDATE order_items i SET overdue_warned_at = date_trunc('milliseconds', $1)
                 FROM due WHERE i.item_uuid = due.item_uuid
                 RETURNING i.item_uuid, i.order_uuid, i.confirm_deadline, i.seq"
            ),
            &[&now],
        )
        .await?;
    let mut items: Vec<(i64, OverdueItem)> = rows
        .iter()
        .map(|row| {
            let item = OverdueItem {
                item: row.get(0),
                order: row.get(1),
                deadline: to_db_text(row.get(2)),
            };
            (row.get(3), item)
        })
        .collect();
    items.sort_by_key(|(seq, _)| *seq);
    Ok(items.into_iter().map(|(_, item)| item).collect())
}

/// What the shared budget granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// Requests this instance may send now (0 when the bucket is empty or paused).
    pub requests: u32,
    /// When none were granted because the bucket is empty: how long until one token is back.
    pub refill_in: Duration,
    /// Whether a cluster-wide pause runs (then nothing is granted).
    pub paused: bool,
}

/// Takes up to `want` requests from the cluster's token bucket, refilled at `per_second` (on
/// the database clock) and holding at most `burst`; none while a pause runs at `now`.
pub async fn take_requests(
    client: &Client,
    now: DateTime<Utc>,
    per_second: f64,
    burst: f64,
    want: u32,
) -> Result<Grant> {
    ensure_budget_row(client, burst).await?;
    let row = client
        .query_one(
            "WITH b AS (
               SELECT least($2::float8, tokens + greatest(0,
                        extract(epoch FROM clock_timestamp() - updated_at)::float8) * $1::float8)
                        AS available,
                      greatest(0, coalesce(extract(epoch FROM blocked_until - $5)::float8, 0))
                        AS paused_for
               FROM rate_budget WHERE name = $4 FOR UPDATE),
             g AS (
               SELECT available, paused_for,
                      CASE WHEN paused_for > 0 THEN 0
                           ELSE least(floor(available), $3::float8) END AS granted
               FROM b)
             UPDATE rate_budget r SET tokens = g.available - g.granted,
                                      updated_at = clock_timestamp()
             FROM g WHERE r.name = $4
             RETURNING g.granted::int4, g.available, g.paused_for",
            &[&per_second, &burst, &f64::from(want), &BUDGET, &now],
        )
        .await?;
    let granted: i32 = row.get(0);
    let available: f64 = row.get(1);
    let paused_for: f64 = row.get(2);
    let missing = (1.0 - available).max(0.0);
    Ok(Grant {
        requests: u32::try_from(granted).unwrap_or(0),
        refill_in: Duration::from_secs_f64(missing / per_second.max(f64::MIN_POSITIVE)),
        paused: paused_for > 0.0,
    })
}

/// When the cluster-wide pause ends, if it runs at `now`.
pub async fn paused_until(client: &Client, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let row = client
        .query_opt(
            "SELECT blocked_until FROM rate_budget WHERE name = $1 AND blocked_until > $2",
            &[&BUDGET, &now],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Pauses every instance's calls to Musement until `until` (the longer pause wins).
pub async fn pause_all(client: &Client, until: DateTime<Utc>) -> Result<()> {
    ensure_budget_row(client, 0.0).await?;
    client
        .execute(
            "UPDATE rate_budget SET blocked_until = greatest(blocked_until, $2) WHERE name = $1",
            &[&BUDGET, &until],
        )
        .await?;
    Ok(())
}

/// How many orders are due at `now` that no live claim holds, `skip` left out: what a pass
/// that stopped early (a pause, a stop) leaves for later.
pub async fn unclaimed_due(client: &Client, now: DateTime<Utc>, skip: &[Uuid]) -> Result<usize> {
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM orders
             WHERE (repoll_at <= $1 OR (needs_poll AND next_poll_at <= $1))
               AND (poll_claimed_until IS NULL OR poll_claimed_until < clock_timestamp())
               AND order_uuid <> ALL($2)",
            &[&now, &skip],
        )
        .await?
        .get(0);
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Creates the budget row on first use, full.
async fn ensure_budget_row(client: &Client, burst: f64) -> Result<()> {
    client
        .execute(
            "INSERT INTO rate_budget (name, tokens, updated_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (name) DO NOTHING",
            &[&BUDGET, &burst],
        )
        .await?;
    Ok(())
}

/// Takes or renews the named lease for `holder` until `ttl` from now on the database clock,
/// unless another holder's has not expired.
pub async fn acquire_lease(
    client: &Client,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<LeaseAnswer> {
    // A lease released between the two statements makes the second find nothing: try again.
    for _ in 0..3 {
        let taken = client
            .query_opt(
                "INSERT INTO leases (name, holder, expires_at)
                 VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                   expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < clock_timestamp()
                 RETURNING expires_at",
                &[&name, &holder, &ttl.as_secs_f64()],
            )
            .await?;
        if let Some(row) = taken {
            return Ok(LeaseAnswer::Acquired { until: row.get(0) });
        }
        let held = client
            .query_opt(
                "SELECT holder, expires_at FROM leases WHERE name = $1",
                &[&name],
            )
            .await?;
        if let Some(row) = held {
            return Ok(LeaseAnswer::Held {
                holder: row.get(0),
                until: row.get(1),
            });
        }
    }
    let until = client
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0);
    // Taken and released three times over within a few statements: count it as held.
    Ok(LeaseAnswer::Held {
        holder: "another instance".to_owned(),
        until,
    })
}

/// Gives the lease back (only if `holder` still has it).
pub async fn release_lease(client: &Client, name: &str, holder: &str) -> Result<()> {
    client
        .execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await?;
    Ok(())
}
