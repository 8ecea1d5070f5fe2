//! Read-side queries behind the inspection commands (`items`, `show`, `stats`, `rejected`,
//! `changes`). They run on read-only connections ([`super::open_read_only`]), so they work
//! while the daemon writes (WAL) and never change the file. They read the tables, not the v2
//! views, so they also work on a version 1 database the daemon has not migrated yet.

use chrono::{DateTime, Duration, Utc};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::postgres::feed::FeedCursor;
use super::queries::OVERDUE;
use crate::clock::{from_db_text, to_db_text};

/// One row of `order_items`, as `orderwatch items` and `show` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemRow {
    pub item: String,
    pub order: String,
    pub status: String,
    /// Highest webhook version seen (`None`: only polls so far).
    pub version: Option<i64>,
    /// What set the status: `webhook` or `poll`.
    pub source: String,
    /// Musement time up to which the status is known to hold.
    pub as_of: String,
    /// Our clock, when the status last changed.
    pub changed_at: String,
    /// Seconds in the current status (from `changed_at` to now).
    pub age_seconds: i64,
    /// `first_seen_at + max_confirmation_time`, once a poll told it.
    pub confirm_deadline: Option<String>,
    /// PENDING and past `confirm_deadline`.
    pub overdue: bool,
    /// Our clock, when a poll of its order first did not list it (`None`: listed, or a
    /// database from before schema version 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<String>,
    /// Its arrival number, the API's page cursor, never printed: the rowid on SQLite (unique;
    /// only a VACUUM run by hand could renumber it), `seq` on PostgreSQL.
    #[serde(skip)]
    pub seq: i64,
}

/// What `orderwatch items` selects.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// Any of these statuses (empty: all).
    pub statuses: Vec<String>,
    /// Only this order's items.
    pub order: Option<String>,
    /// Only items whose status changed at or after this time.
    pub changed_since: Option<DateTime<Utc>>,
    /// Only PENDING items past their confirmation deadline.
    pub overdue: bool,
    /// At most this many rows (`None`: all).
    pub limit: Option<usize>,
    /// A page in arrival order: the items that arrived after this arrival number
    /// ([`ItemRow::seq`]; 0 for the first page), oldest first, instead of longest in their
    /// status first. Stable while items change: an item's arrival number never does.
    pub arrived_after: Option<i64>,
}

/// Whether the file has the arrival numbers of schema version 4 (`seq`, `order_seq`,
/// `item_seq`) and their indexes, which lead from an order to its items and from an item to
/// its events; the commands also read older files the daemon has not migrated yet, through
/// the UUIDs.
fn has_seqs(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(schema_version(conn)? >= 4)
}

/// The file's schema version (`PRAGMA user_version`): the commands also read files the daemon
/// has not migrated yet, so a column added later is read only where it exists.
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// `column`, or `NULL` in a file older than schema version `since`, which added it.
fn column_since(
    conn: &Connection,
    column: &'static str,
    since: i64,
) -> rusqlite::Result<&'static str> {
    Ok(if schema_version(conn)? >= since {
        column
    } else {
        "NULL"
    })
}

/// `orders.unwatched_at`, which exists from schema version 5 on (`NULL` in older files).
fn unwatched_at(conn: &Connection) -> rusqlite::Result<&'static str> {
    column_since(conn, "unwatched_at", 5)
}

/// The items of the order `?{n}` (its UUID).
fn items_of_order(conn: &Connection, n: usize) -> rusqlite::Result<String> {
    Ok(if has_seqs(conn)? {
        format!(
            "order_seq IS (SELECT seq FROM orders WHERE order_uuid = ?{n}) AND order_uuid = ?{n}"
        )
    } else {
        format!("order_uuid = ?{n}")
    })
}

/// The columns [`item_row`] reads; `?1` is now (for [`OVERDUE`]), so other parameters of a
/// query selecting them are `?2` on. `missing_since` only exists from schema version 3 on (the
/// commands also read older files the daemon has not migrated yet).
fn item_columns(conn: &Connection) -> rusqlite::Result<String> {
    let missing_since = column_since(conn, "missing_since", 3)?;
    Ok(format!(
        "item_uuid, order_uuid, status, item_version, source, as_of, changed_at, confirm_deadline, {OVERDUE}, {missing_since}, rowid"
    ))
}

fn item_row(row: &Row<'_>, now: DateTime<Utc>) -> rusqlite::Result<ItemRow> {
    let changed_at: String = row.get(6)?;
    Ok(ItemRow {
        item: row.get(0)?,
        order: row.get(1)?,
        status: row.get(2)?,
        overdue: row.get(8)?,
        version: row.get(3)?,
        source: row.get(4)?,
        as_of: row.get(5)?,
        age_seconds: seconds_since(&changed_at, now),
        changed_at,
        confirm_deadline: row.get(7)?,
        missing_since: row.get(9)?,
        seq: row.get(10)?,
    })
}

/// Whole seconds from a stored time to `now` (0 for an unreadable or future time).
pub fn seconds_since(text: &str, now: DateTime<Utc>) -> i64 {
    from_db_text(text).map_or(0, |t| (now - t).num_seconds().max(0))
}

/// Items matching `filter`, longest in their current status first.
pub fn items(
    conn: &Connection,
    filter: &ItemFilter,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<ItemRow>> {
    // ?1 (now) comes first in the text, so each `?` below takes the next number.
    let mut sql = format!("SELECT {} FROM order_items WHERE 1", item_columns(conn)?);
    let mut values: Vec<Box<dyn ToSql>> = vec![Box::new(to_db_text(now))];
    if !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        sql.push_str(&format!(" AND status IN ({marks})"));
        values.extend(filter.statuses.iter().map(|s| Box::new(s.clone()) as _));
    }
    if let Some(order) = &filter.order {
        values.push(Box::new(order.clone()));
        sql.push_str(&format!(" AND {}", items_of_order(conn, values.len())?));
    }
    if let Some(since) = filter.changed_since {
        sql.push_str(" AND changed_at >= ?");
        values.push(Box::new(to_db_text(since)));
    }
    if filter.overdue {
        sql.push_str(&format!(" AND {OVERDUE}"));
    }
    if let Some(after) = filter.arrived_after {
        // The rowid: unique, in arrival order, and a range of the table's own B-tree (the
        // `seq` column has no index of its own).
        sql.push_str(" AND rowid > ? ORDER BY rowid");
        values.push(Box::new(after));
    } else {
        sql.push_str(" ORDER BY changed_at, item_uuid");
    }
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map(
        rusqlite::params_from_iter(values.iter().map(|v| v.as_ref())),
        |row| item_row(row, now),
    )?;
    rows.collect()
}

/// Whether any item is stored with exactly `status` (the status index answers it).
pub fn status_is_stored(conn: &Connection, status: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM order_items WHERE status = ?1)",
        [status],
        |r| r.get(0),
    )
}

/// Polling state of one order, as `show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRow {
    pub order: String,
    /// Musement's booking code, once a poll told it (e.g. MUS0738876).
    pub identifier: Option<String>,
    /// Order status from the last poll.
    pub order_status: Option<String>,
    pub first_seen_at: String,
    /// Registered with `orderwatch watch`.
    pub watched: bool,
    /// The reconciler still polls it.
    pub needs_poll: bool,
    pub next_poll_at: Option<String>,
    pub last_polled_at: Option<String>,
    /// Consecutive failed polls (backoff while above 0).
    pub poll_failures: i64,
    pub last_error: Option<String>,
    /// A doubtful or conflicting observation asked for a poll at or after this.
    pub repoll_at: Option<String>,
    pub not_found_at: Option<String>,
    pub expired_at: Option<String>,
    /// When the partner stopped watching it (no longer polled).
    pub unwatched_at: Option<String>,
}

/// One observation from `item_events` with what the ordering rule made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// `item_events.id`: the stable cursor.
    pub id: i64,
    pub item: String,
    pub order: String,
    pub source: String,
    /// The status this observation carried.
    pub status: String,
    /// Its webhook version (`None` for polls).
    pub version: Option<i64>,
    /// Its Musement time (webhook `order_item_updated`, clamped, or the poll's `Date`).
    pub as_of: String,
    /// Our clock when it arrived.
    pub received_at: String,
    pub outcome: String,
    /// Why the rule decided so, in words (the `item_history` view says the same).
    pub why: String,
    /// The raw JSON (polls: without personal data).
    pub payload: String,
}

/// What polls told about an item beyond its status (the partner API's item answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemFacts {
    pub product_id: Option<String>,
    pub product_title: Option<String>,
    /// The activity's local date, as Musement sent it.
    pub product_date: Option<String>,
    /// ISO-8601 duration, as sent.
    pub max_confirmation_time: Option<String>,
    /// Musement's `order_item_created` and the `order_item_updated` of the newest version.
    pub created: Option<String>,
    pub updated: Option<String>,
    /// Musement time of the poll these facts come from (`None`: never polled).
    pub facts_as_of: Option<String>,
    /// The voucher URLs as Musement lists them (`None` before the first poll; empty until
    /// Musement issues them).
    pub vouchers: Option<serde_json::Value>,
}

/// The stored facts of the item `item` (its full UUID); `None` when no such item is stored.
pub fn item_facts(conn: &Connection, item: &str) -> rusqlite::Result<Option<ItemFacts>> {
    let facts_as_of = column_since(conn, "facts_as_of", 3)?;
    conn.query_row(
        &format!(
            "SELECT product_id, product_title, product_date, max_confirmation_time,
                    item_created, item_updated, {facts_as_of}, vouchers
             FROM order_items WHERE item_uuid = ?1"
        ),
        [item],
        |r| {
            let vouchers: Option<String> = r.get(7)?;
            Ok(ItemFacts {
                product_id: r.get(0)?,
                product_title: r.get(1)?,
                product_date: r.get(2)?,
                max_confirmation_time: r.get(3)?,
                created: r.get(4)?,
                updated: r.get(5)?,
                facts_as_of: r.get(6)?,
                // Written by orderwatch as JSON; text that is not is shown as it is.
                vouchers: vouchers.map(|text| {
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
                }),
            })
        },
    )
    .optional()
}

/// What `orderwatch show` found for an item or an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shown {
    /// The order (of the item), if it has a row.
    pub order: Option<OrderRow>,
    /// The item, or every item of the order.
    pub items: Vec<ItemRow>,
    /// Their events, oldest first.
    pub events: Vec<EventRow>,
}

/// Why `show` found nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("no item or order matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches more than one item or order; give more characters")]
    Ambiguous(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's `show` (`store::postgres::inspect::show`) failed to read.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// The words for an outcome: the same as the `item_history` view's `why` column (a test keeps
/// them equal). They follow [`super::rule::decide`].
pub fn why(outcome: &str, source: &str) -> &'static str {
    match (outcome, source) {
        ("applied", "webhook") => {
            "set the status: first sight of the item, or a version above every one seen (clearly later than a poll's time, if a poll set the status)"
        }
        ("applied", "poll") => {
            "set the status: first sight of the item, or a poll later than the stored time (by more than skew_margin when a webhook set it) that saw another status"
        }
        ("confirmed", "poll") => {
            "the poll saw the stored status (as_of moves forward when the poll is later)"
        }
        ("duplicate", "webhook") => "this version was already stored: nothing changed",
        ("stale", "webhook") => "older than what is stored: a version below the highest one seen",
        ("stale", "poll") => {
            "older than what is stored: the poll's time is not after the time of the poll that set the row"
        }
        ("conflict", "webhook") => {
            "same version as the webhook that set the status but another status: kept the stored one, re-poll scheduled"
        }
        ("doubtful", "webhook") => {
            "a newer version, but not more than skew_margin later than the poll that set the status: kept it, re-poll scheduled"
        }
        ("doubtful", "poll") => {
            "another status than the webhook's, but not more than skew_margin later than it: kept it, re-poll scheduled"
        }
        _ => "",
    }
}

/// Finds `text` (a full UUID or a unique prefix of one, as tables print them) among items,
/// then orders, and returns its current state and history.
pub fn show(conn: &Connection, text: &str, now: DateTime<Utc>) -> Result<Shown, ShowError> {
    let key = text.trim().to_ascii_lowercase();
    let item = find(conn, "order_items", "item_uuid", &key)?;
    let order = find(conn, "orders", "order_uuid", &key)?;
    let (items, order_uuid) = match (item, order) {
        (Found::One(item), Found::None) => {
            let row = conn
                .prepare(&format!(
                    "SELECT {} FROM order_items WHERE item_uuid = ?2",
                    item_columns(conn)?
                ))?
                .query_row([&to_db_text(now), &item], |r| item_row(r, now))?;
            let order = row.order.clone();
            (vec![row], order)
        }
        (Found::None, Found::One(order)) => {
            let mut statement = conn.prepare(&format!(
                "SELECT {} FROM order_items WHERE {} ORDER BY first_seen_at, item_uuid",
                item_columns(conn)?,
                items_of_order(conn, 2)?
            ))?;
            let rows = statement.query_map([&to_db_text(now), &order], |r| item_row(r, now))?;
            (rows.collect::<rusqlite::Result<_>>()?, order)
        }
        (Found::None, Found::None) => return Err(ShowError::NotFound(text.into())),
        _ => return Err(ShowError::Ambiguous(text.into())),
    };
    let mut events = Vec::new();
    let of_item = if has_seqs(conn)? {
        "item_seq IS (SELECT seq FROM order_items WHERE item_uuid = ?1) AND item_uuid = ?1"
    } else {
        "item_uuid = ?1"
    };
    let mut statement = conn.prepare(&format!(
        "SELECT id, item_uuid, order_uuid, source, status, item_version, as_of, received_at, outcome, payload
         FROM item_events WHERE {of_item} ORDER BY id"
    ))?;
    for item in &items {
        let rows = statement.query_map([&item.item], |r| {
            let (outcome, source): (String, String) = (r.get(8)?, r.get(3)?);
            Ok(EventRow {
                id: r.get(0)?,
                item: r.get(1)?,
                order: r.get(2)?,
                why: why(&outcome, &source).to_owned(),
                source,
                status: r.get(4)?,
                version: r.get(5)?,
                as_of: r.get(6)?,
                received_at: r.get(7)?,
                outcome,
                payload: r.get(9)?,
            })
        })?;
        for row in rows {
            events.push(row?);
        }
    }
    events.sort_by_key(|e| e.id);
    Ok(Shown {
        order: order_row(conn, &order_uuid)?,
        items,
        events,
    })
}

enum Found {
    None,
    One(String),
    Many,
}

/// An exact key, else a unique prefix of at least 4 characters (a range scan of the primary key).
fn find(conn: &Connection, table: &str, column: &str, key: &str) -> rusqlite::Result<Found> {
    let exact: Option<String> = conn
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {column} = ?1"),
            [key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(exact) = exact {
        return Ok(Found::One(exact));
    }
    if key.len() < 4 {
        return Ok(Found::None);
    }
    // '~' sorts after every character of a UUID.
    let mut statement = conn.prepare(&format!(
        "SELECT {column} FROM {table} WHERE {column} >= ?1 AND {column} < ?1 || '~' ORDER BY {column} LIMIT 2"
    ))?;
    let found: Vec<String> = statement
        .query_map([key], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(match found.as_slice() {
        [] => Found::None,
        [one] => Found::One(one.clone()),
        _ => Found::Many,
    })
}

fn order_row(conn: &Connection, order: &str) -> rusqlite::Result<Option<OrderRow>> {
    conn.query_row(
        &format!(
            "SELECT order_uuid, identifier, order_status, first_seen_at, watched, needs_poll,
                    next_poll_at, last_polled_at, poll_failures, last_error, repoll_at,
                    not_found_at, expired_at, {}
             FROM orders WHERE order_uuid = ?1",
            unwatched_at(conn)?
        ),
        [order],
        |r| {
            Ok(OrderRow {
                order: r.get(0)?,
                identifier: r.get(1)?,
                order_status: r.get(2)?,
                first_seen_at: r.get(3)?,
                watched: r.get(4)?,
                needs_poll: r.get(5)?,
                next_poll_at: r.get(6)?,
                last_polled_at: r.get(7)?,
                poll_failures: r.get(8)?,
                last_error: r.get(9)?,
                repoll_at: r.get(10)?,
                not_found_at: r.get(11)?,
                expired_at: r.get(12)?,
                unwatched_at: r.get(13)?,
            })
        },
    )
    .optional()
}

/// A count of items with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

/// What `stats` derives from the counts by status and the oldest pending time, the same way
/// on every engine.
pub(crate) struct StatusTotals {
    pub(crate) items: i64,
    pub(crate) pending: i64,
    pub(crate) oldest_pending_age_seconds: Option<i64>,
}

impl StatusTotals {
    pub(crate) fn of(
        by_status: &[StatusCount],
        oldest_pending_since: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            items: by_status.iter().map(|s| s.count).sum(),
            pending: by_status
                .iter()
                .find(|s| s.status == "PENDING")
                .map_or(0, |s| s.count),
            oldest_pending_age_seconds: oldest_pending_since.map(|t| seconds_since(t, now)),
        }
    }
}

/// Events of the last hour with one source and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventCount {
    pub source: String,
    pub outcome: String,
    pub count: i64,
}

/// What `orderwatch stats` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// When the numbers were taken (our clock).
    pub at: String,
    pub items: i64,
    /// Items by status, most frequent first.
    pub items_by_status: Vec<StatusCount>,
    pub pending: i64,
    /// `changed_at` of the item longest in PENDING.
    pub oldest_pending_since: Option<String>,
    pub oldest_pending_age_seconds: Option<i64>,
    /// PENDING items past their confirmation deadline.
    pub overdue: i64,
    pub orders: i64,
    /// Orders registered with `orderwatch watch`.
    pub watched_orders: i64,
    /// Orders the reconciler still has to poll (`orders.needs_poll`), due now or later.
    pub orders_to_poll: i64,
    /// The same count under its first name, which read as "orders polled so far". Deprecated:
    /// kept for one release, then removed.
    pub orders_polled: i64,
    /// Orders still polled whose last poll failed: polled again after a backoff (see
    /// [`orders_in_backoff`]).
    pub orders_in_backoff: i64,
    /// Orders Musement answered 404 for: no longer polled.
    pub orders_not_found: i64,
    /// Orders past `[reconciler] max_age`: no longer polled.
    pub orders_expired: i64,
    /// Orders the partner unwatched (`orderwatch unwatch`, the API): no longer polled.
    pub orders_unwatched: i64,
    /// Our clock when the newest webhook observation arrived; looked for among the newest
    /// [`RECENT_EVENTS`] events only (null when none of them is a webhook).
    pub last_webhook_at: Option<String>,
    /// Our clock at the newest successful poll of any order.
    pub last_poll_at: Option<String>,
    /// Observations received in the hour before `at`, by source and outcome.
    pub events_last_hour: Vec<EventCount>,
    pub events: i64,
    /// Stored rejected webhooks (the newest `[store] rejected_keep`).
    pub rejected_webhooks: i64,
    pub schema_version: i64,
}

/// How much older than the cutoff an event's `received_at` may be while still committed after
/// newer ones: an observation is stamped when it arrives and committed within the request
/// timeout or a poll's duration, far less than this. Reading in id order (commit order) can
/// therefore stop at the first row this far past a cutoff (here, and in pruning).
pub(super) const COMMIT_LAG: Duration = Duration::minutes(10);

/// How many of the newest events `stats` searches for the last webhook: without an index on
/// `source`, a history of polls only would otherwise be read whole (seconds per million rows).
pub const RECENT_EVENTS: i64 = 100_000;

/// The numbers behind `orderwatch stats` at `now`.
pub fn stats(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Stats> {
    let now_text = to_db_text(now);
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let mut statement = conn.prepare(
        "SELECT status, count(*) FROM order_items GROUP BY status ORDER BY count(*) DESC, status",
    )?;
    let items_by_status = statement
        .query_map([], |r| {
            Ok(StatusCount {
                status: r.get(0)?,
                count: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let oldest_pending_since: Option<String> = conn.query_row(
        "SELECT min(changed_at) FROM order_items WHERE status = 'PENDING'",
        [],
        |r| r.get(0),
    )?;
    let orders = conn.query_row(
        &format!(
            "SELECT count(*), coalesce(sum(watched), 0), coalesce(sum(needs_poll), 0),
                    count(not_found_at), count(expired_at), count({})
             FROM orders",
            unwatched_at(conn)?
        ),
        [],
        |r| {
            Ok([
                r.get::<_, i64>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ])
        },
    )?;
    let last_webhook_at = conn
        .query_row(
            "SELECT received_at FROM item_events
             WHERE id > (SELECT coalesce(max(id), 0) FROM item_events) - ?1 AND source = 'webhook'
             ORDER BY id DESC LIMIT 1",
            [RECENT_EVENTS],
            |r| r.get::<_, String>(0),
        )
        .optional()?;
    let totals = StatusTotals::of(&items_by_status, oldest_pending_since.as_deref(), now);
    Ok(Stats {
        at: now_text.clone(),
        items: totals.items,
        pending: totals.pending,
        items_by_status,
        oldest_pending_age_seconds: totals.oldest_pending_age_seconds,
        oldest_pending_since,
        overdue: conn.query_row(
            &format!("SELECT count(*) FROM order_items WHERE {OVERDUE}"),
            [&now_text],
            |r| r.get(0),
        )?,
        orders: orders[0],
        watched_orders: orders[1],
        orders_to_poll: orders[2],
        orders_polled: orders[2],
        orders_in_backoff: super::queries::orders_in_backoff(conn)?,
        orders_not_found: orders[3],
        orders_expired: orders[4],
        orders_unwatched: orders[5],
        last_webhook_at,
        last_poll_at: conn.query_row("SELECT max(last_polled_at) FROM orders", [], |r| r.get(0))?,
        events_last_hour: events_since(conn, now - Duration::hours(1))?,
        events: count("SELECT count(*) FROM item_events")?,
        rejected_webhooks: count("SELECT count(*) FROM rejected_webhooks")?,
        schema_version: count("PRAGMA user_version")?,
    })
}

/// Counts events received at or after `since`, reading backwards from the newest (there is
/// no index on `received_at`, and a full scan of a large history would be slow).
fn events_since(conn: &Connection, since: DateTime<Utc>) -> rusqlite::Result<Vec<EventCount>> {
    let since_text = to_db_text(since);
    let stop = to_db_text(since - COMMIT_LAG);
    let mut statement =
        conn.prepare("SELECT received_at, source, outcome FROM item_events ORDER BY id DESC")?;
    let mut rows = statement.query([])?;
    let mut counts: Vec<EventCount> = Vec::new();
    while let Some(row) = rows.next()? {
        let received_at: String = row.get(0)?;
        if received_at < stop {
            break;
        }
        if received_at < since_text {
            continue;
        }
        let (source, outcome): (String, String) = (row.get(1)?, row.get(2)?);
        match counts
            .iter_mut()
            .find(|c| c.source == source && c.outcome == outcome)
        {
            Some(count) => count.count += 1,
            None => counts.push(EventCount {
                source,
                outcome,
                count: 1,
            }),
        }
    }
    counts.sort_by(|a, b| (&a.source, &a.outcome).cmp(&(&b.source, &b.outcome)));
    Ok(counts)
}

/// One stored rejected webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    pub id: i64,
    pub received_at: String,
    /// Client address it came from.
    pub peer: String,
    /// The offending field, or `body`.
    pub field: String,
    pub error: String,
    /// The body as received, invalid UTF-8 replaced by U+FFFD.
    pub body: String,
}

/// The newest `limit` rejected webhooks, newest first.
pub fn rejected(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<RejectedRow>> {
    let mut statement = conn.prepare(
        "SELECT id, received_at, peer, field, error, body FROM rejected_webhooks ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = statement.query_map([limit.min(i64::MAX as usize) as i64], |r| {
        Ok(RejectedRow {
            id: r.get(0)?,
            received_at: r.get(1)?,
            peer: r.get(2)?,
            field: r.get(3)?,
            error: r.get(4)?,
            body: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(5)?).into_owned(),
        })
    })?;
    rows.collect()
}

/// One status change in the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `item_events.id` of the applied event.
    pub id: i64,
    /// Where to resume after this change (`--after`): the event id on SQLite, `TX.ID` (the
    /// writing transaction and the id) on PostgreSQL, whose feed is in commit order.
    pub cursor: String,
    pub item: String,
    pub order: String,
    /// The status before (`None` when the item was first seen).
    pub old_status: Option<String>,
    pub new_status: String,
    /// Webhook version (`None` when a poll set it).
    pub version: Option<i64>,
    pub source: String,
    /// Musement time of the change.
    pub as_of: String,
    /// Our clock when it arrived.
    pub received_at: String,
}

/// A position in the change feed, as `--after` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedPosition {
    /// Before every event.
    Start,
    /// After the event with this id: SQLite's cursor, and a plain id on PostgreSQL, where it is
    /// resolved through the event's row.
    AfterEvent(i64),
    /// After this position in PostgreSQL's commit-ordered feed.
    After(FeedCursor),
}

impl std::str::FromStr for FeedPosition {
    type Err = String;

    /// An event id (`1093`; `0` is the start) or a PostgreSQL cursor (`7412.1093`).
    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains('.') {
            return text.parse().map(Self::After);
        }
        match text.parse::<i64>() {
            Ok(id) if id <= 0 => Ok(Self::Start),
            Ok(id) => Ok(Self::AfterEvent(id)),
            Err(_) => Err(format!(
                "{text:?} is neither an event id (e.g. 1093) nor a cursor (TX.ID, e.g. 7412.1093)"
            )),
        }
    }
}

impl std::fmt::Display for FeedPosition {
    /// As [`FromStr`](std::str::FromStr) reads it back: `0`, an event id, or `TX.ID`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start => f.write_str("0"),
            Self::AfterEvent(id) => write!(f, "{id}"),
            Self::After(cursor) => write!(f, "{cursor}"),
        }
    }
}

/// A well-formed position this database cannot resume from: the other engine's kind of
/// cursor, or (on PostgreSQL) an event id that no event has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnusableCursor(pub String);

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes after the cursor, in commit order.
    pub changes: Vec<Change>,
    /// Every `applied` event looked at, in the same order: the changes and the observations
    /// that applied without changing the status (a newer version of the same status), for
    /// destinations of signed webhooks out that take those too.
    pub applied: Vec<Change>,
    /// The last event looked at (resume after it); `None` when nothing was newer.
    pub scanned_to: Option<FeedPosition>,
    /// Fewer than the page size were looked at: the feed is caught up.
    pub caught_up: bool,
}

/// Looks at up to `page` `applied` events after `after` and keeps those whose status differs
/// from the item's previous applied status: the status changes, in commit order. Ids of
/// committed events only grow (one writer; pruning never deletes an item's newest event), so
/// `id` is a stable cursor.
pub fn changes_from(
    conn: &Connection,
    after: FeedPosition,
    page: usize,
) -> rusqlite::Result<Result<ChangePage, UnusableCursor>> {
    let after = match after {
        FeedPosition::Start => 0,
        FeedPosition::AfterEvent(id) => id,
        FeedPosition::After(cursor) => {
            return Ok(Err(UnusableCursor(format!(
                "{cursor} is a PostgreSQL cursor; this database is SQLite, whose cursors are \
                 event ids"
            ))));
        }
    };
    changes(conn, after, page).map(Ok)
}

/// [`changes_from`] after the event id `after`.
fn changes(conn: &Connection, after: i64, page: usize) -> rusqlite::Result<ChangePage> {
    let same_item = if has_seqs(conn)? {
        "p.item_seq IS e.item_seq AND p.item_uuid = e.item_uuid"
    } else {
        "p.item_uuid = e.item_uuid"
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT e.id, e.item_uuid, e.order_uuid,
                (SELECT p.status FROM item_events p
                 WHERE {same_item} AND p.id < e.id AND p.outcome = 'applied'
                 ORDER BY p.id DESC LIMIT 1),
                e.status, e.item_version, e.source, e.as_of, e.received_at
         FROM item_events e WHERE e.id > ?1 AND e.outcome = 'applied' ORDER BY e.id LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![after, page.min(i64::MAX as usize) as i64], |r| {
        let id: i64 = r.get(0)?;
        Ok(Change {
            id,
            cursor: id.to_string(),
            item: r.get(1)?,
            order: r.get(2)?,
            old_status: r.get(3)?,
            new_status: r.get(4)?,
            version: r.get(5)?,
            source: r.get(6)?,
            as_of: r.get(7)?,
            received_at: r.get(8)?,
        })
    })?;
    let mut result = ChangePage {
        changes: Vec::new(),
        applied: Vec::new(),
        scanned_to: None,
        caught_up: false,
    };
    let mut looked_at = 0;
    for row in rows {
        let change = row?;
        looked_at += 1;
        result.scanned_to = Some(FeedPosition::AfterEvent(change.id));
        if change.old_status.as_deref() != Some(change.new_status.as_str()) {
            result.changes.push(change.clone());
        }
        result.applied.push(change);
    }
    result.caught_up = looked_at < page;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::new_database;

    #[test]
    fn why_matches_the_item_history_view_for_every_outcome() {
        let (_dir, conn) = new_database();
        let pairs = [
            ("applied", "webhook"),
            ("applied", "poll"),
            ("confirmed", "poll"),
            ("duplicate", "webhook"),
            ("stale", "webhook"),
            ("stale", "poll"),
            ("conflict", "webhook"),
            ("doubtful", "webhook"),
            ("doubtful", "poll"),
        ];
        for (outcome, source) in pairs {
            conn.execute(
                "INSERT INTO item_events (item_uuid, order_uuid, source, status, as_of, received_at, outcome, payload)
                 VALUES ('i', 'o', ?1, 'OK', 't', 't', ?2, '{}')",
                [source, outcome],
            )
            .unwrap();
            let from_view: String = conn
                .query_row(
                    "SELECT why FROM item_history ORDER BY event_id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!why(outcome, source).is_empty(), "{outcome}/{source}");
            assert_eq!(from_view, why(outcome, source), "{outcome}/{source}");
        }
    }

    #[test]
    fn the_overdue_rule_agrees_with_the_views_and_every_command() {
        let (_dir, conn) = new_database();
        let now = Utc::now();
        let past = to_db_text(now - Duration::hours(1));
        let future = to_db_text(now + Duration::days(30));
        for (item, status, deadline) in [
            ("late", "PENDING", Some(past.as_str())),
            ("in-time", "PENDING", Some(future.as_str())),
            ("no-deadline", "PENDING", None),
            ("confirmed", "OK", Some(past.as_str())),
        ] {
            conn.execute(
                "INSERT INTO order_items (item_uuid, order_uuid, status, as_of, as_of_source, source,
                                          first_seen_at, changed_at, updated_at, confirm_deadline)
                 VALUES (?1, 'o', ?2, 't', 'poll', 'poll', 't', 't', 't', ?3)",
                params![item, status, deadline],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES ('o', 't')",
            [],
        )
        .unwrap();
        let list = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(list("SELECT item_uuid FROM overdue_items"), ["late"]);
        assert_eq!(
            list("SELECT item_uuid FROM pending_items WHERE overdue"),
            ["late"]
        );
        let filter = ItemFilter {
            overdue: true,
            ..ItemFilter::default()
        };
        let overdue: Vec<String> = items(&conn, &filter, now)
            .unwrap()
            .into_iter()
            .map(|i| i.item)
            .collect();
        assert_eq!(overdue, ["late"]);
        let flagged: Vec<(String, bool)> = items(&conn, &ItemFilter::default(), now)
            .unwrap()
            .into_iter()
            .map(|i| (i.item, i.overdue))
            .filter(|(_, overdue)| *overdue)
            .collect();
        assert_eq!(flagged, [("late".to_owned(), true)]);
        assert!(show(&conn, "late", now).unwrap().items[0].overdue);
        assert!(!show(&conn, "in-time", now).unwrap().items[0].overdue);
        assert_eq!(stats(&conn, now).unwrap().overdue, 1);
        let unwarned = super::super::queries::unwarned_overdue(&conn, now).unwrap();
        assert!(unwarned.is_empty(), "only UUIDs are warned about");
    }

    #[test]
    fn orders_in_backoff_leaves_out_orders_no_longer_polled() {
        let (_dir, conn) = new_database();
        conn.execute_batch(
            "INSERT INTO orders (order_uuid, first_seen_at, needs_poll, poll_failures, not_found_at, expired_at)
             VALUES ('retrying', 't', 1, 2, NULL, NULL),
                    ('fine', 't', 1, 0, NULL, NULL),
                    ('gone', 't', 0, 3, 't', NULL),
                    ('too-old', 't', 0, 1, NULL, 't');",
        )
        .unwrap();
        let stats = stats(&conn, Utc::now()).unwrap();
        assert_eq!(stats.orders_in_backoff, 1);
        assert_eq!((stats.orders_not_found, stats.orders_expired), (1, 1));
        assert_eq!(super::super::queries::orders_in_backoff(&conn).unwrap(), 1);
    }

    #[test]
    fn seconds_since_is_never_negative() {
        let now = from_db_text("2024-01-01T00:01:00.000Z").unwrap();
        assert_eq!(seconds_since("2024-01-01T00:00:00.000Z", now), 60);
        assert_eq!(seconds_since("2024-01-01T00:02:00.000Z", now), 0);
        assert_eq!(seconds_since("garbage", now), 0);
    }
}
