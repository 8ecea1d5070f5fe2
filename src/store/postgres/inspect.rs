//! The inspection commands' reads on PostgreSQL, each answering as its SQLite twin in
//! `store::inspect` (the differential test asks both): `items`, whether a status is stored,
//! `show`, `stats` and `rejected`. Times come out as SQLite stores them (RFC 3339,
//! milliseconds, `Z`), UUIDs as lowercase hyphenated text, text sorted by byte (`COLLATE "C"`)
//! where SQLite sorts it. SQLite's care for files from before schema version 4 (no arrival
//! numbers) has no twin here: PostgreSQL's first schema has them.

use chrono::{DateTime, Datelike, Duration, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use super::super::inspect::{
    EventCount, EventRow, ItemFacts, ItemFilter, ItemRow, OrderRow, RECENT_EVENTS, RejectedRow,
    ShowError, Shown, Stats, StatusCount, StatusTotals, seconds_since, why,
};
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// PostgreSQL's `timestamptz` starts in 4713 BC; a `--since` reaching before that filters
/// nothing out.
const POSTGRES_FIRST_YEAR: i32 = -4712;

/// Items matching `filter`, longest in their current status first.
pub async fn items(
    client: &Client,
    filter: &ItemFilter,
    now: DateTime<Utc>,
) -> Result<Vec<ItemRow>> {
    let mut sql = format!("SELECT {ITEM_COLUMNS} FROM order_items WHERE true");
    let statuses = filter.statuses.clone();
    let order = match &filter.order {
        // Not a UUID: names no order.
        Some(text) => match Uuid::try_parse(text) {
            Ok(order) => Some(order),
            Err(_) => return Ok(Vec::new()),
        },
        None => None,
    };
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![&now];
    if !statuses.is_empty() {
        values.push(&statuses);
        sql.push_str(&format!(" AND status = ANY(${})", values.len()));
    }
    if let Some(order) = &order {
        values.push(order);
        let n = values.len();
        sql.push_str(&format!(
            " AND order_seq = (SELECT seq FROM orders WHERE order_uuid = ${n}) AND order_uuid = ${n}"
        ));
    }
    // Before PostgreSQL's first representable time (4713 BC) every row is newer: no filter
    // (sending such a time would fail the query).
    let since = filter
        .changed_since
        .filter(|since| since.year() > POSTGRES_FIRST_YEAR);
    if let Some(since) = &since {
        values.push(since);
        sql.push_str(&format!(" AND changed_at >= ${}", values.len()));
    }
    if filter.overdue {
        sql.push_str(" AND status = 'PENDING' AND coalesce(confirm_deadline < $1, false)");
    }
    if let Some(after) = &filter.arrived_after {
        values.push(after);
        sql.push_str(&format!(" AND seq > ${} ORDER BY seq", values.len()));
    } else {
        sql.push_str(" ORDER BY changed_at, item_uuid");
    }
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let rows = client.query(&sql, &values).await?;
    Ok(rows.iter().map(|row| item_row(row, now)).collect())
}

/// The columns [`item_row`] reads; `$1` is now (for the overdue rule, the same as
/// `store::queries::OVERDUE`), so other parameters of a query selecting them are `$2` on.
const ITEM_COLUMNS: &str = "item_uuid, order_uuid, status, item_version, source,
    as_of, changed_at, confirm_deadline,
    (status = 'PENDING' AND coalesce(confirm_deadline < $1, false)), missing_since, seq";

fn item_row(row: &Row, now: DateTime<Utc>) -> ItemRow {
    let changed_at = to_db_text(row.get(6));
    ItemRow {
        item: row.get::<_, Uuid>(0).to_string(),
        order: row.get::<_, Uuid>(1).to_string(),
        status: row.get(2),
        version: row.get(3),
        source: row.get(4),
        as_of: to_db_text(row.get(5)),
        age_seconds: seconds_since(&changed_at, now),
        changed_at,
        confirm_deadline: optional_time(row, 7),
        overdue: row.get(8),
        missing_since: optional_time(row, 9),
        seq: row.get(10),
    }
}

/// A nullable timestamptz cell as SQLite stores it.
fn optional_time(row: &Row, column: usize) -> Option<String> {
    row.get::<_, Option<DateTime<Utc>>>(column).map(to_db_text)
}

/// The stored facts of the item `item`; `None` when no such item is stored.
pub async fn item_facts(client: &Client, item: Uuid) -> Result<Option<ItemFacts>> {
    let row = client
        .query_opt(
            "SELECT product_id, product_title, product_date, max_confirmation_time,
                    item_created, item_updated, facts_as_of, vouchers
             FROM order_items WHERE item_uuid = $1",
            &[&item],
        )
        .await?;
    Ok(row.map(|r| ItemFacts {
        product_id: r.get(0),
        product_title: r.get(1),
        product_date: r.get(2),
        max_confirmation_time: r.get(3),
        created: optional_time(&r, 4),
        updated: optional_time(&r, 5),
        facts_as_of: optional_time(&r, 6),
        vouchers: r.get(7),
    }))
}

/// Whether any item is stored with exactly `status`.
pub async fn status_is_stored(client: &Client, status: &str) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM order_items WHERE status = $1)",
            &[&status],
        )
        .await?
        .get(0))
}

/// Finds `text` (a full UUID or a unique prefix of one, as tables print them) among items,
/// then orders, and returns its current state and history: what SQLite's `show` finds and
/// says, including which texts are ambiguous or name nothing, so an operator's habits carry
/// over between engines.
pub async fn show(
    client: &Client,
    text: &str,
    now: DateTime<Utc>,
) -> std::result::Result<Shown, ShowError> {
    let key = text.trim().to_ascii_lowercase();
    let item = find(client, "order_items", "item_uuid", &key).await?;
    let order = find(client, "orders", "order_uuid", &key).await?;
    let (rows, order_uuid) = match (item, order) {
        (Found::One(item), Found::None) => {
            let row = client
                .query_one(
                    &format!("SELECT {ITEM_COLUMNS} FROM order_items WHERE item_uuid = $2"),
                    &[&now, &item],
                )
                .await?;
            let order = row.get(1);
            (vec![row], order)
        }
        (Found::None, Found::One(order)) => {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ITEM_COLUMNS} FROM order_items
                         WHERE order_seq = (SELECT seq FROM orders WHERE order_uuid = $2)
                           AND order_uuid = $2
                         ORDER BY first_seen_at, item_uuid"
                    ),
                    &[&now, &order],
                )
                .await?;
            (rows, order)
        }
        (Found::None, Found::None) => return Err(ShowError::NotFound(text.into())),
        _ => return Err(ShowError::Ambiguous(text.into())),
    };
    // Every item's events in one statement, through the arrival numbers (the index that
    // leads from an item to its events), oldest first as SQLite lists them.
    let item_uuids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let events = client
        .query(
            "SELECT e.id, e.item_uuid, e.order_uuid, e.source, e.status,
                    e.item_version, e.as_of, e.received_at, e.outcome, e.payload
             FROM order_items i
             JOIN item_events e ON e.item_seq = i.seq AND e.item_uuid = i.item_uuid
             WHERE i.item_uuid = ANY($1)
             ORDER BY e.id",
            &[&item_uuids],
        )
        .await?
        .iter()
        .map(|row| {
            let (source, outcome): (String, String) = (row.get(3), row.get(8));
            EventRow {
                id: row.get(0),
                item: row.get::<_, Uuid>(1).to_string(),
                order: row.get::<_, Uuid>(2).to_string(),
                // SQLite's words (orderwatch_why() in the schema says the same).
                why: why(&outcome, &source).to_owned(),
                source,
                status: row.get(4),
                version: row.get(5),
                as_of: to_db_text(row.get(6)),
                received_at: to_db_text(row.get(7)),
                outcome,
                payload: row.get(9),
            }
        })
        .collect();
    Ok(Shown {
        order: order_row(client, order_uuid).await?,
        items: rows.iter().map(|row| item_row(row, now)).collect(),
        events,
    })
}

enum Found {
    None,
    One(Uuid),
    Many,
}

/// SQLite's `find` on a uuid column: an exact key, else a unique prefix of at least 4
/// characters. SQLite compares the text; here the prefix becomes the range of UUIDs whose
/// text starts with it (uuid order is the order of their lowercase text), so the primary
/// key's index answers both, and a key no UUID's text can start with (a wrong character, a
/// hyphen out of place, another spelling PostgreSQL's uuid input would accept) matches
/// nothing, as in SQLite, without asking.
async fn find(client: &Client, table: &str, column: &str, key: &str) -> Result<Found> {
    let Some((low, high)) = uuid_range(key) else {
        return Ok(Found::None);
    };
    if low == high {
        let exact = client
            .query_opt(
                &format!("SELECT {column} FROM {table} WHERE {column} = $1"),
                &[&low],
            )
            .await?;
        return Ok(exact.map_or(Found::None, |row| Found::One(row.get(0))));
    }
    if key.len() < 4 {
        return Ok(Found::None);
    }
    let found = client
        .query(
            &format!(
                "SELECT {column} FROM {table} WHERE {column} BETWEEN $1 AND $2 ORDER BY {column} LIMIT 2"
            ),
            &[&low, &high],
        )
        .await?;
    Ok(match found.as_slice() {
        [] => Found::None,
        [one] => Found::One(one.get(0)),
        _ => Found::Many,
    })
}

/// The lowest and the highest UUID whose lowercase hyphenated text starts with `prefix`, or
/// `None` when none does.
fn uuid_range(prefix: &str) -> Option<(Uuid, Uuid)> {
    const LOWEST: &str = "00000000-0000-0000-0000-000000000000";
    const HIGHEST: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    if prefix.len() > LOWEST.len() {
        return None;
    }
    let fits = prefix
        .bytes()
        .zip(LOWEST.bytes())
        .all(|(c, shape)| match shape {
            b'-' => c == b'-',
            _ => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
        });
    if !fits {
        return None;
    }
    let low = Uuid::try_parse(&format!("{prefix}{}", &LOWEST[prefix.len()..])).ok()?;
    let high = Uuid::try_parse(&format!("{prefix}{}", &HIGHEST[prefix.len()..])).ok()?;
    Some((low, high))
}

async fn order_row(client: &Client, order: Uuid) -> Result<Option<OrderRow>> {
    let row = client
        .query_opt(
            "SELECT order_uuid, identifier, order_status, first_seen_at, watched, needs_poll,
                    next_poll_at, last_polled_at, poll_failures, last_error, repoll_at,
                    not_found_at, expired_at, unwatched_at
             FROM orders WHERE order_uuid = $1",
            &[&order],
        )
        .await?;
    Ok(row.map(|r| OrderRow {
        order: r.get::<_, Uuid>(0).to_string(),
        identifier: r.get(1),
        order_status: r.get(2),
        first_seen_at: to_db_text(r.get(3)),
        watched: r.get(4),
        needs_poll: r.get(5),
        next_poll_at: optional_time(&r, 6),
        last_polled_at: optional_time(&r, 7),
        poll_failures: i64::from(r.get::<_, i32>(8)),
        last_error: r.get(9),
        repoll_at: optional_time(&r, 10),
        not_found_at: optional_time(&r, 11),
        expired_at: optional_time(&r, 12),
        unwatched_at: optional_time(&r, 13),
    }))
}

/// The numbers behind `orderwatch stats` at `now`, as SQLite's `stats` counts them, except
/// that `schema_version` is PostgreSQL's own (`schema_migrations`), and that the hour's events
/// are found through the index on `received_at`: SQLite, which has none, reads back from the
/// newest event and stops at the first one `COMMIT_LAG` older than the hour, which gives the
/// same counts as long as events commit within that lag of arriving.
pub async fn stats(client: &Client, now: DateTime<Utc>) -> Result<Stats> {
    let items_by_status: Vec<StatusCount> = client
        .query(
            "SELECT status, count(*) FROM order_items GROUP BY status
             ORDER BY count(*) DESC, status COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|row| StatusCount {
            status: row.get(0),
            count: row.get(1),
        })
        .collect();
    let since = now - Duration::hours(1);
    let events_last_hour = client
        .query(
            "SELECT source, outcome, count(*) FROM item_events WHERE received_at >= $1
             GROUP BY source, outcome ORDER BY source COLLATE \"C\", outcome COLLATE \"C\"",
            &[&since],
        )
        .await?
        .iter()
        .map(|row| EventCount {
            source: row.get(0),
            outcome: row.get(1),
            count: row.get(2),
        })
        .collect();
    let row = client
        .query_one(
            "SELECT
               (SELECT min(changed_at) FROM order_items WHERE status = 'PENDING'),
               (SELECT count(*) FROM order_items
                WHERE status = 'PENDING' AND coalesce(confirm_deadline < $1, false)),
               o.orders, o.watched, o.to_poll, o.not_found, o.expired, o.last_poll,
               (SELECT received_at FROM item_events
                WHERE id > (SELECT coalesce(max(id), 0) FROM item_events) - $2
                  AND source = 'webhook'
                ORDER BY id DESC LIMIT 1),
               (SELECT count(*) FROM item_events),
               (SELECT count(*) FROM rejected_webhooks),
               (SELECT coalesce(max(version), 0)::bigint FROM schema_migrations),
               o.unwatched
             FROM (SELECT count(*) AS orders, count(*) FILTER (WHERE watched) AS watched,
                          count(*) FILTER (WHERE needs_poll) AS to_poll,
                          count(not_found_at) AS not_found, count(expired_at) AS expired,
                          count(unwatched_at) AS unwatched,
                          max(last_polled_at) AS last_poll
                   FROM orders) o",
            &[&now, &RECENT_EVENTS],
        )
        .await?;
    let oldest_pending_since = optional_time(&row, 0);
    let orders_to_poll = row.get(4);
    let totals = StatusTotals::of(&items_by_status, oldest_pending_since.as_deref(), now);
    Ok(Stats {
        at: to_db_text(now),
        items: totals.items,
        pending: totals.pending,
        items_by_status,
        oldest_pending_age_seconds: totals.oldest_pending_age_seconds,
        oldest_pending_since,
        overdue: row.get(1),
        orders: row.get(2),
        watched_orders: row.get(3),
        orders_to_poll,
        orders_polled: orders_to_poll,
        orders_in_backoff: super::queries::orders_in_backoff(client).await?,
        orders_not_found: row.get(5),
        orders_expired: row.get(6),
        orders_unwatched: row.get(12),
        last_webhook_at: optional_time(&row, 8),
        last_poll_at: optional_time(&row, 7),
        events_last_hour,
        events: row.get(9),
        rejected_webhooks: row.get(10),
        schema_version: row.get(11),
    })
}

/// The newest `limit` rejected webhooks, newest first.
pub async fn rejected(client: &Client, limit: usize) -> Result<Vec<RejectedRow>> {
    let limit = limit.min(i64::MAX as usize) as i64;
    let rows = client
        .query(
            "SELECT id, received_at, peer, field, error, body FROM rejected_webhooks
             ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| RejectedRow {
            id: row.get(0),
            received_at: to_db_text(row.get(1)),
            peer: row.get(2),
            field: row.get(3),
            error: row.get(4),
            body: String::from_utf8_lossy(row.get::<_, &[u8]>(5)).into_owned(),
        })
        .collect())
}
