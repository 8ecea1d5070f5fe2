//! Store functions the reconciler needs besides [`super::apply`]: recording a poll (its items go
//! through `apply`, like webhooks), recording a failed poll, watching orders, expiring them,
//! overdue warnings, and the lease that keeps passes from overlapping.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::StoreSettings;
use super::apply::apply_batch;
use super::cells::{self, Place, Unreadable, order_place};
use super::poll_state::{self, ITEMS_OF_ORDER, Trigger};
use super::rule::Outcome;
use crate::backoff::BackoffPolicy;
use crate::clock::{from_db_text, later, to_db_text};
use crate::observation::Observation;

/// One successful poll of one order: an observation per item (with its item facts).
#[derive(Debug, Clone)]
pub struct PollRecord {
    /// The order polled.
    pub order: Uuid,
    /// Our clock just before the GET was sent. Musement's answer can say nothing about what
    /// happened here after it: a re-poll mark due later is not settled by this poll, and an
    /// item first seen later is not expected in its answer.
    pub requested_at: DateTime<Utc>,
    /// What the response said about each item.
    pub items: Vec<Observation>,
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
        /// How the wait grows with consecutive failures.
        backoff: BackoffPolicy,
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

/// Stores a poll: each item through the one ordering rule (which also says whether its facts
/// replace the stored ones, and the order's), the items it no longer lists, then the order's bookkeeping.
pub fn record_poll(
    conn: &Connection,
    record: &PollRecord,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<PollRecorded> {
    let order_uuid = record.order.to_string();
    ensure_order(conn, &order_uuid, now)?;
    let previous_failures = failures(conn, &order_uuid)?;
    let items: Vec<&Observation> = record.items.iter().collect();
    let outcomes = apply_batch(conn, &items, settings, now)?;
    note_missing_items(conn, record, now)?;
    repair_order_first_seen(conn, &order_uuid, now)?;
    let still_in_doubt = outcomes.iter().any(|o| o.needs_repoll());
    let settled = !still_in_doubt && settles_repoll_mark(conn, &order_uuid, record.requested_at)?;
    conn.prepare_cached(
        "UPDATE orders SET last_polled_at = ?2, poll_failures = 0, last_error = NULL, not_found_at = NULL,
           repoll_at = CASE WHEN ?3 THEN NULL ELSE repoll_at END,
           repoll_attempts = CASE WHEN ?3 THEN 0 ELSE repoll_attempts END
         WHERE order_uuid = ?1",
    )?
    .execute(params![order_uuid, to_db_text(now), settled])?;
    poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Polled, now)?;
    Ok(PollRecorded {
        outcomes,
        previous_failures,
    })
}

/// Whether a poll sent at `requested_at` that found no doubt settles the order's re-poll mark.
/// The mark asks for a poll sent at or after `repoll_at`; one sent earlier may have read
/// Musement before the webhook that set the mark, so it leaves the mark for the re-poll (at
/// worst one GET more). An unreadable mark is unknown, and cleared.
fn settles_repoll_mark(
    conn: &Connection,
    order_uuid: &str,
    requested_at: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    Ok(match repoll_mark(conn, order_uuid)? {
        Ok(Some(repoll_at)) => requested_at >= repoll_at,
        Ok(None) | Err(Unreadable) => true,
    })
}

/// The order's re-poll mark: `Ok(None)` for none (an unreadable one is logged once).
fn repoll_mark(
    conn: &Connection,
    order_uuid: &str,
) -> rusqlite::Result<cells::Read<DateTime<Utc>>> {
    conn.prepare_cached("SELECT repoll_at FROM orders WHERE order_uuid = ?1")?
        .query_row([order_uuid], |r| {
            Ok(cells::time(
                r.get_ref(0)?,
                order_place("repoll_at", order_uuid),
            ))
        })
}

/// Sets `missing_since` (and warns, once) on the order's items this poll does not list, and
/// clears it on those it lists again. An item first seen after the request was sent, or at
/// the same instant (its webhook raced the poll), is not expected in the answer.
fn note_missing_items(
    conn: &Connection,
    record: &PollRecord,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let order_uuid = record.order.to_string();
    let listed: HashSet<Uuid> = record.items.iter().map(|o| o.item).collect();
    let mut newly_missing = Vec::new();
    let mut back = Vec::new();
    {
        let mut statement = conn.prepare_cached(&format!(
            "SELECT item_uuid, first_seen_at, missing_since IS NOT NULL
             FROM order_items WHERE {ITEMS_OF_ORDER}"
        ))?;
        let mut rows = statement.query([&order_uuid])?;
        while let Some(row) = rows.next()? {
            let item_uuid = cells::key(row.get_ref(0)?);
            let missing: bool = row.get(2)?;
            let place = |column| Place {
                table: "order_items",
                column,
                key: &item_uuid,
            };
            // A key that is not a UUID names no item Musement could list: logged once, skipped.
            let Ok(Some(item)) = cells::uuid(row.get_ref(0)?, place("item_uuid")) else {
                continue;
            };
            if listed.contains(&item) {
                if missing {
                    back.push(item_uuid);
                }
                continue;
            }
            // Unreadable: not known to predate the request, so not called missing.
            let seen_before_request = cells::time(row.get_ref(1)?, place("first_seen_at"))
                .is_ok_and(|seen| seen.is_some_and(|seen| seen < record.requested_at));
            if !missing && seen_before_request {
                newly_missing.push(item_uuid);
            }
        }
    }
    for item in &newly_missing {
        conn.prepare_cached("UPDATE order_items SET missing_since = ?2 WHERE item_uuid = ?1")?
            .execute(params![item, to_db_text(now)])?;
        tracing::warn!(order = %order_uuid, %item,
            "Musement no longer lists this item in its order; kept as it was (order_items.missing_since)");
    }
    for item in &back {
        conn.prepare_cached("UPDATE order_items SET missing_since = NULL WHERE item_uuid = ?1")?
            .execute([item])?;
        tracing::info!(order = %order_uuid, %item, "Musement lists this item in its order again");
    }
    Ok(())
}

/// Replaces an unreadable `orders.first_seen_at` (it dates `max_age`) with its earliest
/// item's, or `now`.
fn repair_order_first_seen(
    conn: &Connection,
    order_uuid: &str,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let readable = conn
        .prepare_cached("SELECT first_seen_at FROM orders WHERE order_uuid = ?1")?
        .query_row([order_uuid], |r| {
            Ok(
                cells::time(r.get_ref(0)?, order_place("first_seen_at", order_uuid))
                    .is_ok_and(|seen| seen.is_some()),
            )
        })?;
    if readable {
        return Ok(());
    }
    let items: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT min(first_seen_at) FROM order_items WHERE {ITEMS_OF_ORDER}"
        ))?
        .query_row([order_uuid], |r| r.get(0))?;
    let earliest = items
        .and_then(|text| from_db_text(&text).ok())
        .unwrap_or(now);
    conn.prepare_cached("UPDATE orders SET first_seen_at = ?2 WHERE order_uuid = ?1")?
        .execute(params![order_uuid, to_db_text(earliest)])?;
    Ok(())
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
            backoff,
            jitter,
        } => {
            let order_uuid = order.to_string();
            ensure_order(conn, &order_uuid, now)?;
            let failures = failures(conn, &order_uuid)?;
            let next = later(now, backoff.after_failure(failures, *jitter, *retry_after));
            // A due re-poll mark waits for the backoff too, or it would bypass it every pass.
            // (An unreadable mark, due or not, is replaced as well.)
            let due_mark = match repoll_mark(conn, &order_uuid)? {
                Ok(None) => false,
                Ok(Some(repoll_at)) => repoll_at <= now,
                Err(Unreadable) => true,
            };
            conn.prepare_cached(
                "UPDATE orders SET poll_failures = poll_failures + 1, last_error = ?2, next_poll_at = ?3,
                   repoll_at = CASE WHEN ?4 THEN ?3 ELSE repoll_at END
                 WHERE order_uuid = ?1",
            )?
            .execute(params![order_uuid, error, to_db_text(next), due_mark])?;
            Ok(Some(Backoff {
                next_poll_at: next,
                failures: failures + 1,
            }))
        }
    }
}

/// Registers orders to poll before any webhook arrives; a watch also revives a `not_found` or
/// unwatched order. Returns the orders that were new.
pub fn watch(
    conn: &Connection,
    orders: &[Uuid],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Uuid>> {
    let mut new = Vec::new();
    for order in orders {
        let order_uuid = order.to_string();
        let now_text = to_db_text(now);
        let inserted = conn
            .prepare_cached(
                "INSERT INTO orders (order_uuid, first_seen_at, watched, next_poll_at) VALUES (?1, ?2, 1, ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![order_uuid, now_text])?;
        if inserted > 0 {
            new.push(*order);
        }
        conn.prepare_cached(
            "UPDATE orders SET watched = 1,
               next_poll_at = CASE WHEN not_found_at IS NOT NULL OR unwatched_at IS NOT NULL
                              THEN ?2 ELSE next_poll_at END,
               not_found_at = NULL, unwatched_at = NULL
             WHERE order_uuid = ?1",
        )?
        .execute(params![order_uuid, now_text])?;
        poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Other, now)?;
    }
    Ok(new)
}

/// Stops polling orders the partner no longer watches (`unwatched_at`, kept from the first
/// unwatch), dropping a pending re-poll mark; webhooks still update their items. Returns the
/// orders that are stored (unwatching an unknown order does nothing).
pub fn unwatch(
    conn: &Connection,
    orders: &[Uuid],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Uuid>> {
    let mut known = Vec::new();
    for order in orders {
        let order_uuid = order.to_string();
        let changed = conn
            .prepare_cached(
                "UPDATE orders SET unwatched_at = coalesce(unwatched_at, ?2),
                   repoll_at = NULL, repoll_attempts = 0
                 WHERE order_uuid = ?1",
            )?
            .execute(params![order_uuid, to_db_text(now)])?;
        if changed > 0 && !known.contains(order) {
            known.push(*order);
            poll_state::refresh(conn, &order_uuid, &settings.policy, Trigger::Other, now)?;
        }
    }
    Ok(known)
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
