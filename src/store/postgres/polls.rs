//! The reconciler's store functions on PostgreSQL, each what its SQLite twin in
//! `store::polls` does (the differential test runs both): recording a poll (its items through
//! [`apply_batch`]), a failed poll, watching and expiring orders, overdue marks, and the lease.
//! Each one locks the order row it changes first (`FOR NO KEY UPDATE`), like `apply_batch`, so
//! a webhook batch and a poll of the same order never decide from each other's stale rows.
//! Recording a poll (or its failure, or an expiry) ends the order's claim
//! ([`super::cluster::claim_due`]): the order is free for whichever instance finds it due next.
//! PostgreSQL's types leave no cell unreadable, so SQLite's repairs of hand-damaged cells
//! (an unreadable `first_seen_at` or re-poll mark) have nothing to do here.

use std::collections::HashSet;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use uuid::Uuid;

use super::super::poll_state::{self, ItemPollView, PollFields, Trigger, stopped_sql};
use super::super::{Backoff, LeaseAnswer, PollFailure, PollRecord, PollRecorded, StoreSettings};
use super::apply::apply_batch;
use super::session::Session;
use crate::clock::later;
use crate::observation::{Observation, Status};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

fn ms(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(3)
}

/// Creates the order's row if there is none, then locks it; returns its `poll_failures` and
/// `repoll_at`.
async fn lock_order(
    tx: &Session<'_>,
    order: Uuid,
    now: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>)> {
    tx.execute(
        "INSERT INTO orders (order_uuid, first_seen_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&order, &now],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT poll_failures, repoll_at FROM orders WHERE order_uuid = $1 FOR NO KEY UPDATE",
            &[&order],
        )
        .await?;
    Ok((i64::from(row.get::<_, i32>(0)), row.get(1)))
}

/// Recomputes `needs_poll` and moves `next_poll_at` for one (locked) order: the pure
/// `poll_state::plan` over its stored fields and items.
async fn refresh(
    tx: &Session<'_>,
    order: Uuid,
    settings: &StoreSettings,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<()> {
    let row = tx
        .query_one(
            concat!(
                "SELECT poll_failures, next_poll_at, last_polled_at IS NULL, ",
                stopped_sql!(),
                ", seq FROM orders WHERE order_uuid = $1"
            ),
            &[&order],
        )
        .await?;
    let fields = PollFields {
        failures: i64::from(row.get::<_, i32>(0)),
        next: row.get(1),
        never_polled: row.get(2),
        stopped: row.get(3),
    };
    let seq: i64 = row.get(4);
    let items: Vec<ItemPollView> = tx
        .query(
            "SELECT status, coalesce(jsonb_array_length(vouchers), 0) > 0, product_date
             FROM order_items WHERE order_seq = $1 AND order_uuid = $2",
            &[&seq, &order],
        )
        .await?
        .iter()
        .map(|row| ItemPollView {
            status: Status::parse(row.get::<_, &str>(0)),
            has_vouchers: row.get(1),
            product_date: row.get(2),
        })
        .collect();
    let decided = poll_state::plan(&fields, &items, &settings.policy, trigger, now);
    tx.execute(
        "UPDATE orders SET needs_poll = $2, next_poll_at = $3
         WHERE order_uuid = $1
           AND (needs_poll IS DISTINCT FROM $2 OR next_poll_at IS DISTINCT FROM $3)",
        &[&order, &decided.needs_poll, &ms(decided.next)],
    )
    .await?;
    Ok(())
}

/// Stores a poll: each item through the one ordering rule, the items it no longer lists, then
/// the order's bookkeeping (what `store::record_poll` does).
pub async fn record_poll(
    tx: &Session<'_>,
    record: &PollRecord,
    settings: &StoreSettings,
    now: DateTime<Utc>,
    receiver: &str,
) -> Result<PollRecorded> {
    let now = ms(now);
    let (previous_failures, _) = lock_order(tx, record.order, now).await?;
    let items: Vec<&Observation> = record.items.iter().collect();
    let outcomes = apply_batch(tx, &items, settings, now, receiver).await?;
    note_missing_items(tx, record, now).await?;
    let still_in_doubt = outcomes.iter().any(|o| o.needs_repoll());
    let repoll_at: Option<DateTime<Utc>> = tx
        .query_one(
            "SELECT repoll_at FROM orders WHERE order_uuid = $1",
            &[&record.order],
        )
        .await?
        .get(0);
    // A poll sent before the mark may have read Musement before the webhook that set it.
    let settled = !still_in_doubt && repoll_at.is_none_or(|at| record.requested_at >= at);
    tx.execute(
        "UPDATE orders SET last_polled_at = $2, poll_failures = 0, last_error = NULL,
           not_found_at = NULL, poll_claimed_by = NULL, poll_claimed_until = NULL,
           repoll_at = CASE WHEN $3 THEN NULL ELSE repoll_at END,
           repoll_attempts = CASE WHEN $3 THEN 0 ELSE repoll_attempts END
         WHERE order_uuid = $1",
        &[&record.order, &now, &settled],
    )
    .await?;
    refresh(tx, record.order, settings, Trigger::Polled, now).await?;
    Ok(PollRecorded {
        outcomes,
        previous_failures,
    })
}

/// Sets `missing_since` (and warns, once) on the order's items this poll does not list, and
/// clears it on those it lists again; an item first seen at or after the request is not
/// expected in the answer.
async fn note_missing_items(
    tx: &Session<'_>,
    record: &PollRecord,
    now: DateTime<Utc>,
) -> Result<()> {
    let listed: HashSet<Uuid> = record.items.iter().map(|o| o.item).collect();
    let rows = tx
        .query(
            "SELECT i.item_uuid, i.first_seen_at, i.missing_since IS NOT NULL
             FROM order_items i JOIN orders o ON i.order_seq = o.seq AND i.order_uuid = o.order_uuid
             WHERE o.order_uuid = $1",
            &[&record.order],
        )
        .await?;
    let (mut newly_missing, mut back) = (Vec::new(), Vec::new());
    for row in &rows {
        let item: Uuid = row.get(0);
        let first_seen: DateTime<Utc> = row.get(1);
        let missing: bool = row.get(2);
        if listed.contains(&item) {
            if missing {
                back.push(item);
            }
        } else if !missing && first_seen < record.requested_at {
            newly_missing.push(item);
        }
    }
    if !newly_missing.is_empty() {
        tx.execute(
            "UPDATE order_items SET missing_since = $2 WHERE item_uuid = ANY($1)",
            &[&newly_missing, &now],
        )
        .await?;
    }
    if !back.is_empty() {
        tx.execute(
            "UPDATE order_items SET missing_since = NULL WHERE item_uuid = ANY($1)",
            &[&back],
        )
        .await?;
    }
    for item in &newly_missing {
        tracing::warn!(order = %record.order, %item,
            "Musement no longer lists this item in its order; kept as it was (order_items.missing_since)");
    }
    for item in &back {
        tracing::info!(order = %record.order, %item, "Musement lists this item in its order again");
    }
    Ok(())
}

/// Records a failed poll; returns when the order is due again (`None` for a 404).
pub async fn record_poll_failure(
    tx: &Session<'_>,
    failure: &PollFailure,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> Result<Option<Backoff>> {
    let now = ms(now);
    match failure {
        PollFailure::NotFound { order } => {
            lock_order(tx, *order, now).await?;
            tx.execute(
                "UPDATE orders SET not_found_at = $2, last_error = 'not found (404)',
                   repoll_at = NULL, repoll_attempts = 0,
                   poll_claimed_by = NULL, poll_claimed_until = NULL
                 WHERE order_uuid = $1",
                &[order, &now],
            )
            .await?;
            refresh(tx, *order, settings, Trigger::Other, now).await?;
            Ok(None)
        }
        PollFailure::Failed {
            order,
            error,
            retry_after,
            backoff,
            jitter,
        } => {
            let (failures, repoll_at) = lock_order(tx, *order, now).await?;
            let next = ms(later(
                now,
                backoff.after_failure(failures, *jitter, *retry_after),
            ));
            // A due re-poll mark waits for the backoff too, or it would bypass it every pass.
            let due_mark = repoll_at.is_some_and(|at| at <= now);
            tx.execute(
                "UPDATE orders SET poll_failures = poll_failures + 1, last_error = $2,
                   next_poll_at = $3, poll_claimed_by = NULL, poll_claimed_until = NULL,
                   repoll_at = CASE WHEN $4 THEN $3 ELSE repoll_at END
                 WHERE order_uuid = $1",
                &[order, error, &next, &due_mark],
            )
            .await?;
            Ok(Some(Backoff {
                next_poll_at: next,
                failures: failures + 1,
            }))
        }
    }
}

/// Registers orders to poll before any webhook arrives; a watch also revives a `not_found` or
/// unwatched order. Returns the orders that were new.
pub async fn watch(
    tx: &Session<'_>,
    orders: &[Uuid],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    let now = ms(now);
    let mut sorted = orders.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut new = Vec::new();
    for order in sorted {
        let inserted = tx
            .execute(
                "INSERT INTO orders (order_uuid, first_seen_at, watched, next_poll_at)
                 VALUES ($1, $2, true, $2) ON CONFLICT DO NOTHING",
                &[&order, &now],
            )
            .await?;
        if inserted > 0 {
            new.push(order);
        }
        tx.execute(
            "UPDATE orders SET watched = true,
               next_poll_at = CASE WHEN not_found_at IS NOT NULL OR unwatched_at IS NOT NULL
                              THEN $2 ELSE next_poll_at END,
               not_found_at = NULL, unwatched_at = NULL
             WHERE order_uuid = $1",
            &[&order, &now],
        )
        .await?;
        refresh(tx, order, settings, Trigger::Other, now).await?;
    }
    // Reported in the order asked.
    new.sort_by_key(|order| orders.iter().position(|o| o == order));
    Ok(new)
}

/// Stops polling orders the partner no longer watches (`unwatched_at`, kept from the first
/// unwatch), dropping a pending re-poll mark and any claim; webhooks still update their
/// items. Returns the orders that are stored, in the order asked.
pub async fn unwatch(
    tx: &Session<'_>,
    orders: &[Uuid],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    let now = ms(now);
    let mut known = Vec::new();
    for order in orders {
        let changed = tx
            .execute(
                "UPDATE orders SET unwatched_at = coalesce(unwatched_at, $2),
                   repoll_at = NULL, repoll_attempts = 0,
                   poll_claimed_by = NULL, poll_claimed_until = NULL
                 WHERE order_uuid = $1",
                &[order, &now],
            )
            .await?;
        if changed > 0 && !known.contains(order) {
            known.push(*order);
            refresh(tx, *order, settings, Trigger::Other, now).await?;
        }
    }
    Ok(known)
}

/// Stops polling orders past `max_age`; returns those newly expired (to report once).
pub async fn expire(tx: &Session<'_>, orders: &[Uuid], now: DateTime<Utc>) -> Result<Vec<Uuid>> {
    let rows = tx
        .query(
            "UPDATE orders SET expired_at = $2, needs_poll = false,
               poll_claimed_by = NULL, poll_claimed_until = NULL
             WHERE order_uuid = ANY($1) AND expired_at IS NULL
             RETURNING order_uuid",
            &[&orders, &ms(now)],
        )
        .await?;
    let mut changed: HashSet<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    // In the order asked, each once.
    Ok(orders
        .iter()
        .filter(|o| changed.remove(o))
        .copied()
        .collect())
}

/// Notes that the overdue warning for these items was logged.
pub async fn mark_overdue_warned(
    tx: &Session<'_>,
    items: &[Uuid],
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "UPDATE order_items SET overdue_warned_at = $2 WHERE item_uuid = ANY($1)",
        &[&items, &ms(now)],
    )
    .await?;
    Ok(())
}

/// Takes or renews the named lease for `holder`, unless another holder's has not expired.
/// `now` is our clock, as on SQLite; several instances use the database clock instead (the
/// high-availability issue).
pub async fn acquire_lease(
    tx: &Session<'_>,
    name: &str,
    holder: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<LeaseAnswer> {
    let now = ms(now);
    let until = ms(later(now, ttl));
    let taken = tx
        .query_opt(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at <= $4
             RETURNING holder",
            &[&name, &holder, &until, &now],
        )
        .await?;
    if taken.is_some() {
        return Ok(LeaseAnswer::Acquired { until });
    }
    let row = tx
        .query_one(
            "SELECT holder, expires_at FROM leases WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(LeaseAnswer::Held {
        holder: row.get(0),
        until: row.get(1),
    })
}

/// Gives the lease back (only if `holder` still has it).
pub async fn release_lease(tx: &Session<'_>, name: &str, holder: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        &[&name, &holder],
    )
    .await?;
    Ok(())
}
