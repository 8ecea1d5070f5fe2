//! Which orders the reconciler must poll, and when: `orders.needs_poll` and `next_poll_at`,
//! recomputed by the store on every change so a pass only reads a partial index.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, params};

use super::cells::{self, Place, order_place};
use crate::clock::{later, to_db_text};
use crate::observation::Status;

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
    // Two plain indexed reads and the decision in Rust: this runs for every webhook, and an
    // aggregate query with IN-lists cost the writer more than the rest of `apply` together.
    let activity_cutoff = later(now, -RECHECK_AFTER_ACTIVITY)
        .format("%Y-%m-%d %H:%M")
        .to_string();
    let (failures, next, never_polled, stopped) = conn
        .prepare_cached(
            "SELECT poll_failures, next_poll_at, last_polled_at IS NULL,
                    not_found_at IS NOT NULL OR expired_at IS NOT NULL
             FROM orders WHERE order_uuid = ?1",
        )?
        .query_row([order_uuid], |r| {
            // Unreadable: unknown, and rewritten below.
            let next = cells::time(r.get_ref(1)?, order_place("next_poll_at", order_uuid));
            Ok((
                r.get::<_, i64>(0)?,
                next.unwrap_or(None),
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })?;
    let (mut active, mut recheck, mut items) = (false, false, 0usize);
    let mut statement = conn.prepare_cached(
        "SELECT item_uuid, status, coalesce(vouchers, '[]') <> '[]', product_date
         FROM order_items WHERE order_uuid = ?1",
    )?;
    let mut rows = statement.query([order_uuid])?;
    while let Some(row) = rows.next()? {
        let item_uuid = cells::key(row.get_ref(0)?);
        let place = |column| Place {
            table: "order_items",
            column,
            key: &item_uuid,
        };
        // An unreadable status counts as an unknown one (polled), an unreadable activity date
        // as none; both are logged once.
        let status = cells::status(row.get_ref(1)?, place("status"))
            .unwrap_or(None)
            .unwrap_or_else(|| Status::Other(String::new()));
        let has_vouchers: bool = row.get(2)?;
        let product_date = cells::text(row.get_ref(3)?, place("product_date")).unwrap_or(None);
        items += 1;
        let unsettled = policy.poll_statuses.iter().any(|s| s == status.as_str())
            || status.is_unknown()
            || (status == Status::Ok && !has_vouchers);
        active |= unsettled;
        recheck |= status == Status::Ok
            && has_vouchers
            && product_date.is_none_or(|date| date >= activity_cutoff.as_str());
    }
    let quiet_until = later(now, policy.quiet_period);
    let next = match trigger {
        Trigger::Webhook if active && failures == 0 => quiet_until,
        Trigger::Webhook => next.map_or(quiet_until, |n| n.max(quiet_until)),
        Trigger::Polled if active || items == 0 => now,
        Trigger::Polled => later(now, policy.recheck_interval),
        Trigger::Other => next.unwrap_or(now),
    };
    let next = to_db_text(next);
    // Webhooks name only the items they are about, so until one poll has listed the order's
    // items, an item whose every webhook was lost is unknown: an order whose known items are
    // all final (KO, REFUNDED) is still polled once.
    let needs_poll = (active || recheck || never_polled) && !stopped;
    conn.prepare_cached(
        "UPDATE orders SET needs_poll = ?2, next_poll_at = ?3
         WHERE order_uuid = ?1 AND (needs_poll IS NOT ?2 OR next_poll_at IS NOT ?3)",
    )?
    .execute(params![order_uuid, needs_poll, next])?;
    Ok(())
}
