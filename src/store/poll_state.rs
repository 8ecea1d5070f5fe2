//! Which orders the reconciler must poll, and when: `orders.needs_poll` and `next_poll_at`,
//! recomputed by the store on every change so a pass only reads a partial index.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, params};

use crate::clock::{later, to_db_text};

/// What decides whether and when an order is polled (from `[reconciler]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPolicy {
    /// Item statuses that keep their order polled every pass.
    pub poll_statuses: Vec<String>,
    /// A webhook pushes its order's next poll at least this far out.
    pub quiet_period: Duration,
    /// How often an order whose unsettled items are all `OK` (with vouchers, activity not yet
    /// past) is re-checked.
    pub recheck_interval: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            poll_statuses: ["PENDING", "REFUND_STARTED", "CANCELLATION_ERROR"]
                .map(String::from)
                .to_vec(),
            quiet_period: Duration::minutes(2),
            recheck_interval: Duration::hours(24),
        }
    }
}

/// An `OK` item stays worth re-checking until a day after its activity date (which is local
/// time without an offset, so a day covers every time zone).
const RECHECK_AFTER_ACTIVITY: Duration = Duration::days(1);

/// What just happened to the order, which decides how `next_poll_at` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A webhook arrived: Musement is talking, so wait `quiet_period` before polling.
    Webhook,
    /// A poll succeeded: due again at the next pass, or after `recheck_interval` when only
    /// re-checks remain.
    Polled,
    /// Anything else (a watch, a poll observation on its own): only fill in a missing time.
    Other,
}

/// Recomputes `needs_poll` and moves `next_poll_at` for one order.
pub fn refresh(
    conn: &Connection,
    order_uuid: &str,
    policy: &PollPolicy,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let statuses = serde_json::to_string(&policy.poll_statuses).unwrap_or_else(|_| "[]".into());
    let activity_cutoff = (now - RECHECK_AFTER_ACTIVITY)
        .format("%Y-%m-%d %H:%M")
        .to_string();
    let (active, recheck, items, failures, next): (bool, bool, i64, i64, Option<String>) = conn
        .prepare_cached(
            "SELECT
               coalesce(max(i.status IN (SELECT value FROM json_each(?2))
                            OR i.status NOT IN ('PENDING', 'OK', 'KO', 'REFUND_STARTED', 'REFUNDED', 'CANCELLATION_ERROR')
                            OR (i.status = 'OK' AND coalesce(i.vouchers, '[]') = '[]')), 0),
               coalesce(max(i.status = 'OK' AND coalesce(i.vouchers, '[]') <> '[]'
                            AND (i.product_date IS NULL OR i.product_date >= ?3)), 0),
               count(i.item_uuid), o.poll_failures, o.next_poll_at
             FROM orders o LEFT JOIN order_items i ON i.order_uuid = o.order_uuid
             WHERE o.order_uuid = ?1",
        )?
        .query_row(params![order_uuid, statuses, activity_cutoff], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let now_text = to_db_text(now);
    let quiet_until = to_db_text(later(now, policy.quiet_period));
    let next = match trigger {
        Trigger::Webhook if active && failures == 0 => quiet_until,
        Trigger::Webhook => next.map_or(quiet_until.clone(), |n| n.max(quiet_until)),
        Trigger::Polled if active || items == 0 => now_text,
        Trigger::Polled => to_db_text(later(now, policy.recheck_interval)),
        Trigger::Other => next.unwrap_or(now_text),
    };
    conn.prepare_cached(
        "UPDATE orders SET
           needs_poll = (?2 OR ?3 OR (watched AND ?4 = 0)) AND not_found_at IS NULL AND expired_at IS NULL,
           next_poll_at = ?5
         WHERE order_uuid = ?1",
    )?
    .execute(params![order_uuid, active, recheck, items, next])?;
    Ok(())
}
