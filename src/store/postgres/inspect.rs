//! The inspection commands' reads on PostgreSQL, each answering as its SQLite twin in
//! `store::inspect` (the differential test asks both): `items`, whether a status is stored,
//! and `rejected`. Times come out as SQLite stores them (RFC 3339, milliseconds, `Z`).

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::super::inspect::{ItemFilter, ItemRow, RejectedRow, seconds_since};
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Items matching `filter`, longest in their current status first.
pub async fn items(
    client: &Client,
    filter: &ItemFilter,
    now: DateTime<Utc>,
) -> Result<Vec<ItemRow>> {
    let mut sql = String::from(
        "SELECT item_uuid::text, order_uuid::text, status, item_version, source, as_of,
                changed_at, confirm_deadline,
                (status = 'PENDING' AND coalesce(confirm_deadline < $1, false)), missing_since
         FROM order_items WHERE true",
    );
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
    if let Some(since) = &filter.changed_since {
        values.push(since);
        sql.push_str(&format!(" AND changed_at >= ${}", values.len()));
    }
    if filter.overdue {
        sql.push_str(" AND status = 'PENDING' AND coalesce(confirm_deadline < $1, false)");
    }
    sql.push_str(" ORDER BY changed_at, item_uuid");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
    }
    let rows = client.query(&sql, &values).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let changed_at = to_db_text(row.get(6));
            ItemRow {
                item: row.get(0),
                order: row.get(1),
                status: row.get(2),
                version: row.get(3),
                source: row.get(4),
                as_of: to_db_text(row.get(5)),
                age_seconds: seconds_since(&changed_at, now),
                changed_at,
                confirm_deadline: row.get::<_, Option<DateTime<Utc>>>(7).map(to_db_text),
                overdue: row.get(8),
                missing_since: row.get::<_, Option<DateTime<Utc>>>(9).map(to_db_text),
            }
        })
        .collect())
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
