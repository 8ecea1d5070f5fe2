//! Which orders the reconciler must poll, and when: `orders.needs_poll` and `next_poll_at`,
//! recomputed by the store on every change so a pass only reads a partial index.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, Row, params};

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

/// An order's polling bookkeeping as stored: what [`plan`] decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFields {
    /// Consecutive failed polls.
    pub failures: i64,
    /// When it is due now (`None`: not set, or unreadable and so rewritten).
    pub next: Option<DateTime<Utc>>,
    /// No poll has succeeded yet.
    pub never_polled: bool,
    /// Polling stopped (Musement answered 404, or past `max_age`).
    pub stopped: bool,
}

impl PollFields {
    /// A new order's.
    pub fn new_order() -> Self {
        Self {
            failures: 0,
            next: None,
            never_polled: true,
            stopped: false,
        }
    }
}

/// An item as far as polling its order goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPollView {
    /// Its status (an unreadable one is an unknown status: polled).
    pub status: Status,
    /// Whether it has at least one voucher.
    pub has_vouchers: bool,
    /// The activity's local date (`2018-09-01 15:30`), as sent.
    pub product_date: Option<String>,
}

/// Whether and from when an order is polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollPlan {
    /// `orders.needs_poll`.
    pub needs_poll: bool,
    /// `orders.next_poll_at`.
    pub next: DateTime<Utc>,
}

/// Decides `needs_poll` and `next_poll_at` for an order with `fields` and `items` after
/// `trigger` at `now`. Pure: the store reads the inputs and writes the result.
pub fn plan<'a>(
    fields: &PollFields,
    items: impl IntoIterator<Item = &'a ItemPollView>,
    policy: &PollPolicy,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> PollPlan {
    let activity_cutoff = later(now, -RECHECK_AFTER_ACTIVITY)
        .format("%Y-%m-%d %H:%M")
        .to_string();
    let (mut active, mut recheck, mut count) = (false, false, 0usize);
    for item in items {
        count += 1;
        let status = &item.status;
        let unsettled = policy.poll_statuses.iter().any(|s| s == status.as_str())
            || status.is_unknown()
            || (*status == Status::Ok && !item.has_vouchers);
        active |= unsettled;
        recheck |= *status == Status::Ok
            && item.has_vouchers
            && item
                .product_date
                .as_deref()
                .is_none_or(|date| date >= activity_cutoff.as_str());
    }
    let quiet_until = later(now, policy.quiet_period);
    let next = match trigger {
        Trigger::Webhook if active && fields.failures == 0 => quiet_until,
        Trigger::Webhook => fields.next.map_or(quiet_until, |n| n.max(quiet_until)),
        Trigger::Polled if active || count == 0 => now,
        Trigger::Polled => later(now, policy.recheck_interval),
        Trigger::Other => fields.next.unwrap_or(now),
    };
    // Webhooks name only the items they are about, so until one poll has listed the order's
    // items, an item whose every webhook was lost is unknown: an order whose known items are
    // all final (KO, REFUNDED) is still polled once.
    let needs_poll = (active || recheck || fields.never_polled) && !fields.stopped;
    PollPlan { needs_poll, next }
}

/// Recomputes `needs_poll` and moves `next_poll_at` for one order.
pub fn refresh(
    conn: &Connection,
    order_uuid: &str,
    policy: &PollPolicy,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let fields = load_fields(conn, order_uuid)?;
    let items = load_item_views(conn, order_uuid)?;
    let decided = plan(&fields, &items, policy, trigger, now);
    write(conn, order_uuid, &decided)
}

/// Whether an order's polls are stopped for good (SQL on `orders`, either engine): Musement
/// answered 404, it passed `max_age`, or the partner unwatched it. A macro so that both
/// engines' queries include the one text.
macro_rules! stopped_sql {
    () => {
        "(not_found_at IS NOT NULL OR expired_at IS NOT NULL OR unwatched_at IS NOT NULL)"
    };
}
pub(crate) use stopped_sql;

/// Columns of `orders` that [`read_fields`] reads, in its order.
pub const FIELD_COLUMNS: &str = concat!(
    "poll_failures, next_poll_at, last_polled_at IS NULL, ",
    stopped_sql!()
);

/// [`PollFields`] from [`FIELD_COLUMNS`] starting at column `at`.
pub fn read_fields(row: &Row<'_>, at: usize, order_uuid: &str) -> rusqlite::Result<PollFields> {
    // Unreadable: unknown, and rewritten.
    let next = cells::time(
        row.get_ref(at + 1)?,
        order_place("next_poll_at", order_uuid),
    );
    Ok(PollFields {
        failures: row.get(at)?,
        next: next.unwrap_or(None),
        never_polled: row.get(at + 2)?,
        stopped: row.get(at + 3)?,
    })
}

fn load_fields(conn: &Connection, order_uuid: &str) -> rusqlite::Result<PollFields> {
    conn.prepare_cached(&format!(
        "SELECT {FIELD_COLUMNS} FROM orders WHERE order_uuid = ?1"
    ))?
    .query_row([order_uuid], |r| read_fields(r, 0, order_uuid))
}

/// The items of the order `?1` (its UUID), through the arrival-ordered index on `order_seq`
/// (schema version 4; the UUID is compared too, see schema_v4.sql).
pub const ITEMS_OF_ORDER: &str =
    "order_seq IS (SELECT seq FROM orders WHERE order_uuid = ?1) AND order_uuid = ?1";

/// Columns of `order_items` that [`read_item_view`] reads, in its order.
pub const ITEM_VIEW_COLUMNS: &str = "status, coalesce(vouchers, '[]') <> '[]', product_date";

/// [`ItemPollView`] from [`ITEM_VIEW_COLUMNS`] starting at column `at`.
pub fn read_item_view(row: &Row<'_>, at: usize, item_uuid: &str) -> rusqlite::Result<ItemPollView> {
    let place = |column| Place {
        table: "order_items",
        column,
        key: item_uuid,
    };
    // An unreadable status counts as an unknown one (polled), an unreadable activity date
    // as none; both are logged once.
    let status = cells::status(row.get_ref(at)?, place("status"))
        .unwrap_or(None)
        .unwrap_or_else(|| Status::Other(String::new()));
    let product_date = cells::text(row.get_ref(at + 2)?, place("product_date"))
        .unwrap_or(None)
        .map(str::to_owned);
    Ok(ItemPollView {
        status,
        has_vouchers: row.get(at + 1)?,
        product_date,
    })
}

fn load_item_views(conn: &Connection, order_uuid: &str) -> rusqlite::Result<Vec<ItemPollView>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT item_uuid, {ITEM_VIEW_COLUMNS} FROM order_items WHERE {ITEMS_OF_ORDER}"
    ))?;
    let mut rows = statement.query([order_uuid])?;
    let mut views = Vec::new();
    while let Some(row) = rows.next()? {
        let item_uuid = cells::key(row.get_ref(0)?);
        views.push(read_item_view(row, 1, &item_uuid)?);
    }
    Ok(views)
}

/// Writes the plan, touching the row only when it changes.
pub fn write(conn: &Connection, order_uuid: &str, decided: &PollPlan) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE orders SET needs_poll = ?2, next_poll_at = ?3
         WHERE order_uuid = ?1 AND (needs_poll IS NOT ?2 OR next_poll_at IS NOT ?3)",
    )?
    .execute(params![
        order_uuid,
        decided.needs_poll,
        to_db_text(decided.next)
    ])?;
    Ok(())
}
