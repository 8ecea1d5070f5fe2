//! Store functions the reconciler needs besides [`super::apply`]: recording a poll (its items go
//! through `apply`, like webhooks), recording a failed poll, watching orders, expiring them,
//! overdue warnings, and the lease that keeps passes from overlapping.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::StoreSettings;
use super::apply::apply;
use super::poll_state::{self, Trigger};
use super::rule::Outcome;
use crate::clock::{from_db_text, later, to_db_text};
use crate::observation::Observation;

/// The longest a `Retry-After` is honoured; a server asking for more is polled again after this.
const MAX_RETRY_AFTER: Duration = Duration::hours(24);

/// Item facts only a poll gives, stored beside the reconciled state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolledItemFacts {
    /// Voucher URLs (`items[].vouchers[].url`).
    pub vouchers: Vec<String>,
    /// `product.id`.
    pub product_id: Option<String>,
    /// `product.title`.
    pub product_title: Option<String>,
    /// `product.date`, local activity time as sent (`2018-09-01 15:30`).
    pub product_date: Option<String>,
    /// `product.max_confirmation_time`, an ISO-8601 duration (`P0D` = instant).
    pub max_confirmation_time: Option<String>,
}

/// One successful poll of one order: an observation per item, plus the item facts.
#[derive(Debug, Clone)]
pub struct PollRecord {
    /// The order polled.
    pub order: Uuid,
    /// What the response said about each item.
    pub items: Vec<(Observation, PolledItemFacts)>,
}

/// A poll that did not give a usable answer. Nothing from it changes an item.
#[derive(Debug, Clone)]
pub enum PollFailure {
    /// Musement answered 404: stop regular polling (a re-poll mark or a new watch still polls).
    NotFound { order: Uuid },
    /// Anything else: back off exponentially, or as `Retry-After` says.
    Failed {
        order: Uuid,
        /// One line for `orders.last_error`.
        error: String,
        /// The server's `Retry-After`, which wins over the exponential wait.
        retry_after: Option<Duration>,
        /// First wait; doubles per consecutive failure.
        backoff_base: Duration,
        /// Longest wait.
        backoff_cap: Duration,
        /// In [0.5, 1]: spreads retries of many orders that failed together.
        jitter: f64,
    },
}

/// What storing a poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRecorded {
    /// Each item's outcome, in response order.
    pub outcomes: Vec<Outcome>,
    /// Consecutive failed polls before this success (to log a recovery once).
    pub previous_failures: i64,
}

/// When a failed order is due again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Due again at or after this.
    pub next_poll_at: DateTime<Utc>,
    /// Consecutive failures, this one included (to log the first one only).
    pub failures: i64,
}

/// Stores a poll: each item through the one ordering rule, then the poll-only facts and the
/// order's bookkeeping.
pub fn record_poll(
    conn: &Connection,
    record: &PollRecord,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<PollRecorded> {
    let order_uuid = record.order.to_string();
    ensure_order(conn, &order_uuid, now)?;
    let previous_failures = failures(conn, &order_uuid)?;
    let mut outcomes = Vec::with_capacity(record.items.len());
    for (observation, facts) in &record.items {
        let outcome = apply(conn, observation, settings, now)?;
        store_item_facts(conn, &observation.item.to_string(), facts, outcome)?;
        outcomes.push(outcome);
    }
    let still_in_doubt = outcomes.iter().any(|o| o.needs_repoll());
    conn.prepare_cached(
        "UPDATE orders SET last_polled_at = ?2, poll_failures = 0, last_error = NULL, not_found_at = NULL,
           repoll_at = CASE WHEN ?3 THEN repoll_at ELSE NULL END,
           repoll_attempts = CASE WHEN ?3 THEN repoll_attempts ELSE 0 END
         WHERE order_uuid = ?1",
    )?
    .execute(params![order_uuid, to_db_text(now), still_in_doubt])?;
    poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Polled, now)?;
    Ok(PollRecorded {
        outcomes,
        previous_failures,
    })
}

fn failures(conn: &Connection, order_uuid: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT poll_failures FROM orders WHERE order_uuid = ?1")?
        .query_row([order_uuid], |r| r.get(0))
}

/// Creates the order row if a poll comes before any webhook or watch (e.g. a re-poll of an
/// order whose row was just made by `watch`, or an API answer for an unknown order).
fn ensure_order(conn: &Connection, order_uuid: &str, now: DateTime<Utc>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO orders (order_uuid, first_seen_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?
    .execute(params![order_uuid, to_db_text(now)])?;
    Ok(())
}

/// Voucher URLs are taken from a poll that is the newest word on the item (applied or
/// confirmed), or when none were known; product facts fill in whatever is known.
fn store_item_facts(
    conn: &Connection,
    item_uuid: &str,
    facts: &PolledItemFacts,
    outcome: Outcome,
) -> rusqlite::Result<()> {
    let newest = matches!(outcome, Outcome::Applied | Outcome::Confirmed);
    let vouchers = serde_json::to_string(&facts.vouchers).unwrap_or_else(|_| "[]".into());
    let first_seen: String = conn
        .prepare_cached("SELECT first_seen_at FROM order_items WHERE item_uuid = ?1")?
        .query_row([item_uuid], |r| r.get(0))?;
    let deadline = facts
        .max_confirmation_time
        .as_deref()
        .and_then(parse_iso_duration)
        .zip(from_db_text(&first_seen).ok())
        .map(|(allowed, seen)| to_db_text(later(seen, allowed)));
    conn.prepare_cached(
        "UPDATE order_items SET
           vouchers = CASE WHEN ?2 OR vouchers IS NULL THEN ?3 ELSE vouchers END,
           product_id = coalesce(?4, product_id),
           product_title = coalesce(?5, product_title),
           product_date = coalesce(?6, product_date),
           max_confirmation_time = coalesce(?7, max_confirmation_time),
           confirm_deadline = coalesce(?8, confirm_deadline)
         WHERE item_uuid = ?1",
    )?
    .execute(params![
        item_uuid,
        newest,
        vouchers,
        facts.product_id,
        facts.product_title,
        facts.product_date,
        facts.max_confirmation_time,
        deadline,
    ])?;
    Ok(())
}

/// Parses an ISO-8601 duration such as `P0D`, `PT30M` or `P2D`.
pub fn parse_iso_duration(text: &str) -> Option<Duration> {
    let parsed = iso8601::duration(text).ok()?;
    Duration::from_std(std::time::Duration::from(parsed)).ok()
}

/// Records a failed poll; returns when the order is due again (`None` for a 404).
pub fn record_poll_failure(
    conn: &Connection,
    failure: &PollFailure,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Option<Backoff>> {
    match failure {
        PollFailure::NotFound { order } => {
            let order_uuid = order.to_string();
            ensure_order(conn, &order_uuid, now)?;
            conn.prepare_cached(
                "UPDATE orders SET not_found_at = ?2, last_error = 'not found (404)', repoll_at = NULL,
                   repoll_attempts = 0 WHERE order_uuid = ?1",
            )?
            .execute(params![order_uuid, to_db_text(now)])?;
            poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Other, now)?;
            Ok(None)
        }
        PollFailure::Failed {
            order,
            error,
            retry_after,
            backoff_base,
            backoff_cap,
            jitter,
        } => {
            let order_uuid = order.to_string();
            ensure_order(conn, &order_uuid, now)?;
            let failures = failures(conn, &order_uuid)?;
            let exponential = (*backoff_base * 2i32.saturating_pow(failures.clamp(0, 20) as u32))
                .min(*backoff_cap);
            let jittered = Duration::milliseconds(
                (exponential.num_milliseconds() as f64 * jitter.clamp(0.5, 1.0)) as i64,
            );
            let next = later(
                now,
                retry_after.map_or(jittered, |r| r.min(MAX_RETRY_AFTER)),
            );
            // A due re-poll mark waits for the backoff too, or it would bypass it every pass.
            conn.prepare_cached(
                "UPDATE orders SET poll_failures = poll_failures + 1, last_error = ?2, next_poll_at = ?3,
                   repoll_at = CASE WHEN repoll_at IS NOT NULL AND repoll_at <= ?4 THEN ?3 ELSE repoll_at END
                 WHERE order_uuid = ?1",
            )?
            .execute(params![order_uuid, error, to_db_text(next), to_db_text(now)])?;
            Ok(Some(Backoff {
                next_poll_at: next,
                failures: failures + 1,
            }))
        }
    }
}

/// Registers orders to poll before any webhook arrives; a watch also revives a `not_found`
/// order. Returns how many orders were new.
pub fn watch(
    conn: &Connection,
    orders: &[Uuid],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<usize> {
    let mut new = 0;
    for order in orders {
        let order_uuid = order.to_string();
        let now_text = to_db_text(now);
        new += conn
            .prepare_cached(
                "INSERT INTO orders (order_uuid, first_seen_at, watched, next_poll_at) VALUES (?1, ?2, 1, ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![order_uuid, now_text])?;
        conn.prepare_cached(
            "UPDATE orders SET watched = 1,
               next_poll_at = CASE WHEN not_found_at IS NOT NULL THEN ?2 ELSE next_poll_at END,
               not_found_at = NULL
             WHERE order_uuid = ?1",
        )?
        .execute(params![order_uuid, now_text])?;
        poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Other, now)?;
    }
    Ok(new)
}

/// Stops polling orders past `max_age`; returns those newly expired (to report once).
pub fn expire(
    conn: &Connection,
    orders: &[Uuid],
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Uuid>> {
    let mut expired = Vec::new();
    for order in orders {
        let changed = conn
            .prepare_cached(
                "UPDATE orders SET expired_at = ?2, needs_poll = 0 WHERE order_uuid = ?1 AND expired_at IS NULL",
            )?
            .execute(params![order.to_string(), to_db_text(now)])?;
        if changed > 0 {
            expired.push(*order);
        }
    }
    Ok(expired)
}

/// Notes that the overdue warning for these items was logged.
pub fn mark_overdue_warned(
    conn: &Connection,
    items: &[Uuid],
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    for item in items {
        conn.prepare_cached("UPDATE order_items SET overdue_warned_at = ?2 WHERE item_uuid = ?1")?
            .execute(params![item.to_string(), to_db_text(now)])?;
    }
    Ok(())
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// Ours until the given time (renew before then).
    Acquired { until: DateTime<Utc> },
    /// Someone else's until the given time.
    Held {
        holder: String,
        until: DateTime<Utc>,
    },
}

/// Takes or renews the named lease for `holder`, unless another holder's has not expired.
pub fn acquire_lease(
    conn: &Connection,
    name: &str,
    holder: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> rusqlite::Result<LeaseAnswer> {
    let current: Option<(String, String)> = conn
        .prepare_cached("SELECT holder, expires_at FROM leases WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((other, expires)) = current
        && other != holder
        && expires > to_db_text(now)
    {
        let until = from_db_text(&expires).unwrap_or(now);
        return Ok(LeaseAnswer::Held {
            holder: other,
            until,
        });
    }
    let until = later(now, ttl);
    conn.prepare_cached(
        "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
    )?
    .execute(params![name, holder, to_db_text(until)])?;
    Ok(LeaseAnswer::Acquired { until })
}

/// Gives the lease back (only if `holder` still has it).
pub fn release_lease(conn: &Connection, name: &str, holder: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
        .execute([name, holder])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations_parse() {
        assert_eq!(parse_iso_duration("P0D"), Some(Duration::zero()));
        assert_eq!(parse_iso_duration("PT30M"), Some(Duration::minutes(30)));
        assert_eq!(parse_iso_duration("P2D"), Some(Duration::days(2)));
        assert_eq!(parse_iso_duration("PT48H"), Some(Duration::hours(48)));
        assert_eq!(parse_iso_duration("soon"), None);
    }
}
