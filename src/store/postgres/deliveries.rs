//! The outbox of signed webhooks out on PostgreSQL: `store::deliveries` (SQLite) with the same
//! commands, answers and rules; what differs is how several instances share it. Claims take
//! rows with `FOR UPDATE SKIP LOCKED`, so two instances claiming at once take different
//! deliveries, and a claim another instance holds is taken over only once `claimed_until` has
//! passed (it died mid-send).

use chrono::{DateTime, SubsecRound, Utc};
use tokio_postgres::{Client, Row};

use super::super::deliveries::{
    Claimed, DeliveryFilter, DeliveryRow, DestinationRow, Finish, ForwardCommand, ForwardDone,
    StartAt,
};
use super::super::inspect::FeedPosition;
use super::feed;
use super::session::Session;
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

fn ms(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(3)
}

/// Runs `command` inside `tx` at `now`.
pub async fn execute(
    tx: &Session<'_>,
    command: &ForwardCommand,
    now: DateTime<Utc>,
) -> Result<ForwardDone> {
    let now = ms(now);
    Ok(match command {
        ForwardCommand::Register { destination, start } => {
            let start_cursor = match start {
                StartAt::Beginning => "0".to_owned(),
                StartAt::End => end_of_feed(tx).await?,
            };
            tx.execute(
                "INSERT INTO forward_destinations (name, feed_cursor) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                &[destination, &start_cursor],
            )
            .await?;
            ForwardDone::Registered {
                cursor: cursor_of(tx, destination).await?.unwrap_or(start_cursor),
            }
        }
        ForwardCommand::Enqueue {
            destination,
            expected,
            to,
            deliveries,
        } => {
            // The row lock taken here makes a second instance's update of the same page wait,
            // then find the cursor moved and enqueue nothing.
            let moved = tx
                .execute(
                    "UPDATE forward_destinations SET feed_cursor = $1
                     WHERE name = $2 AND feed_cursor = $3",
                    &[to, destination, expected],
                )
                .await?;
            if moved == 1 {
                for delivery in deliveries {
                    tx.execute(
                        "INSERT INTO forward_deliveries (destination, event_id, item_uuid,
                             cursor, new_status, body, state, created_at, next_attempt_at)
                         VALUES ($1, $2, ($3::text)::uuid, $4, $5, $6, 'pending', $7, $7)",
                        &[
                            destination,
                            &delivery.event_id,
                            &delivery.item,
                            &delivery.cursor,
                            &delivery.new_status,
                            &delivery.body,
                            &now,
                        ],
                    )
                    .await?;
                }
            }
            ForwardDone::Enqueued {
                enqueued: moved == 1,
                cursor: cursor_of(tx, destination)
                    .await?
                    .unwrap_or_else(|| expected.clone()),
            }
        }
        ForwardCommand::Claim {
            destination,
            holder,
            limit,
            until,
        } => claim(tx, destination, holder, *limit, now, ms(*until)).await?,
        ForwardCommand::Finish {
            id,
            destination,
            holder,
            attempted_at,
            result,
        } => ForwardDone::Done(Ok(finish(
            tx,
            *id,
            destination,
            holder,
            ms(*attempted_at),
            result,
            now,
        )
        .await?)),
        ForwardCommand::ReleaseClaims {
            destination,
            holder,
        } => ForwardDone::Done(Ok(tx
            .execute(
                "UPDATE forward_deliveries SET claimed_by = NULL, claimed_until = NULL
                 WHERE destination = $1 AND claimed_by = $2 AND state = 'pending'",
                &[destination, holder],
            )
            .await?
            > 0)),
        ForwardCommand::Retry(ids) => ForwardDone::Changed(
            tx.query(
                "UPDATE forward_deliveries SET state = 'pending', attempts = 0,
                     first_attempt_at = NULL, next_attempt_at = $2, claimed_by = NULL,
                     claimed_until = NULL
                 WHERE id = ANY($1) AND state IN ('pending', 'parked') RETURNING id",
                &[ids, &now],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect(),
        ),
        ForwardCommand::Skip(ids) => ForwardDone::Changed(
            tx.query(
                "UPDATE forward_deliveries SET state = 'skipped', claimed_by = NULL,
                     claimed_until = NULL,
                     last_error = coalesce(last_error, 'skipped at ' || $2::text)
                 WHERE id = ANY($1) AND state IN ('pending', 'parked') RETURNING id",
                &[ids, &to_db_text(now)],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect(),
        ),
        ForwardCommand::Enable(destination) => ForwardDone::Done(Ok(tx
            .execute(
                "UPDATE forward_destinations SET disabled_at = NULL, disabled_reason = NULL
                 WHERE name = $1",
                &[destination],
            )
            .await?
            == 1)),
        ForwardCommand::Replay { destination, from } => {
            // A plain event id is resolved to its place in the commit-ordered feed now, so the
            // feed reader only ever meets cursors it can resume from.
            let from = match from {
                FeedPosition::AfterEvent(id) => match tx
                    .query_opt(
                        "SELECT (tx::text)::bigint FROM item_events WHERE id = $1",
                        &[id],
                    )
                    .await?
                {
                    Some(row) => FeedPosition::After(feed::FeedCursor {
                        tx: row.get(0),
                        id: *id,
                    }),
                    None => {
                        return Ok(ForwardDone::Done(Err(format!(
                            "no event has id {id} (pruned, or never written): replay from a \
                             cursor (TX.ID) instead"
                        ))));
                    }
                },
                other => *other,
            };
            ForwardDone::Done(Ok(tx
                .execute(
                    "UPDATE forward_destinations SET feed_cursor = $1 WHERE name = $2",
                    &[&from.to_string(), destination],
                )
                .await?
                == 1))
        }
    })
}

/// The cursor after the newest event the feed can read now (below the oldest running
/// transaction): where a destination with `start = "end"` begins.
async fn end_of_feed(tx: &Session<'_>) -> Result<String> {
    let row = tx
        .query_opt(
            "SELECT (tx::text)::bigint, id FROM item_events
             WHERE outcome = 'applied' AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY tx DESC, id DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row
        .map_or(FeedPosition::Start, |row| {
            FeedPosition::After(feed::FeedCursor {
                tx: row.get(0),
                id: row.get(1),
            })
        })
        .to_string())
}

async fn cursor_of(tx: &Session<'_>, destination: &str) -> Result<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT feed_cursor FROM forward_destinations WHERE name = $1",
            &[&destination],
        )
        .await?
        .map(|row| row.get(0)))
}

/// [`ForwardCommand::Claim`].
async fn claim(
    tx: &Session<'_>,
    destination: &str,
    holder: &str,
    limit: usize,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<ForwardDone> {
    let disabled: Option<bool> = tx
        .query_opt(
            "SELECT disabled_at IS NOT NULL FROM forward_destinations WHERE name = $1",
            &[&destination],
        )
        .await?
        .map(|row| row.get(0));
    if disabled != Some(false) {
        return Ok(ForwardDone::Claimed {
            disabled: true,
            deliveries: Vec::new(),
        });
    }
    let limit = limit.min(i64::MAX as usize) as i64;
    let rows = tx
        .query(
            "UPDATE forward_deliveries SET claimed_by = $2, claimed_until = $4
             WHERE id IN (
                 SELECT d.id FROM forward_deliveries d
                 WHERE d.destination = $1 AND d.state = 'pending' AND d.next_attempt_at <= $3
                   AND (d.claimed_until IS NULL OR d.claimed_until <= $3)
                   AND NOT EXISTS (SELECT 1 FROM forward_deliveries e
                                   WHERE e.destination = d.destination
                                     AND e.item_uuid = d.item_uuid AND e.id < d.id
                                     AND e.state IN ('pending', 'parked'))
                 ORDER BY d.next_attempt_at, d.id LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, event_id, item_uuid::text, body, attempts, first_attempt_at,
                       next_attempt_at",
            &[&destination, &holder, &now, &until, &limit],
        )
        .await?;
    let mut deliveries: Vec<(DateTime<Utc>, Claimed)> = rows
        .iter()
        .map(|r| {
            (
                r.get(6),
                Claimed {
                    id: r.get(0),
                    event_id: r.get(1),
                    item: r.get(2),
                    body: r.get(3),
                    attempts: r.get::<_, i32>(4).into(),
                    first_attempt_at: r.get(5),
                },
            )
        })
        .collect();
    // RETURNING comes in no particular order; send in the order they were due.
    deliveries.sort_by_key(|(due, claimed)| (*due, claimed.id));
    Ok(ForwardDone::Claimed {
        disabled: false,
        deliveries: deliveries.into_iter().map(|(_, claimed)| claimed).collect(),
    })
}

/// [`ForwardCommand::Finish`], as on SQLite.
async fn finish(
    tx: &Session<'_>,
    id: i64,
    destination: &str,
    holder: &str,
    attempted_at: DateTime<Utc>,
    result: &Finish,
    now: DateTime<Utc>,
) -> Result<bool> {
    let status = |status: &Option<u16>| status.map(i32::from);
    let changed = match result {
        Finish::Delivered { status } => {
            tx.execute(
                "UPDATE forward_deliveries SET state = 'delivered', delivered_at = $3,
                     attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, $4),
                     last_attempt_at = $4, last_status = $2, last_error = NULL,
                     claimed_by = NULL, claimed_until = NULL
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &i32::from(*status), &now, &attempted_at],
            )
            .await?
        }
        Finish::Retry {
            status: code,
            error,
            at,
        } => {
            tx.execute(
                "UPDATE forward_deliveries SET attempts = attempts + 1,
                     first_attempt_at = coalesce(first_attempt_at, $6), last_attempt_at = $6,
                     next_attempt_at = $5, last_status = $3, last_error = $4,
                     claimed_by = NULL, claimed_until = NULL
                 WHERE id = $1 AND state = 'pending' AND claimed_by = $2",
                &[&id, &holder, &status(code), error, &ms(*at), &attempted_at],
            )
            .await?
        }
        Finish::Park {
            status: code,
            error,
        } => {
            tx.execute(
                "UPDATE forward_deliveries SET state = 'parked', attempts = attempts + 1,
                     first_attempt_at = coalesce(first_attempt_at, $5), last_attempt_at = $5,
                     last_status = $3, last_error = $4, claimed_by = NULL, claimed_until = NULL
                 WHERE id = $1 AND state = 'pending' AND claimed_by = $2",
                &[&id, &holder, &status(code), error, &attempted_at],
            )
            .await?
        }
        Finish::Gone {
            status: code,
            error,
        } => {
            tx.execute(
                "UPDATE forward_destinations SET disabled_at = $2, disabled_reason = $3
                 WHERE name = $1 AND disabled_at IS NULL",
                &[&destination, &now, &format!("{code} Gone: {error}")],
            )
            .await?;
            tx.execute(
                "UPDATE forward_deliveries SET attempts = attempts + 1,
                     first_attempt_at = coalesce(first_attempt_at, $5), last_attempt_at = $5,
                     last_status = $3, last_error = $4, claimed_by = NULL, claimed_until = NULL
                 WHERE id = $1 AND state = 'pending' AND claimed_by = $2",
                &[&id, &holder, &i32::from(*code), error, &attempted_at],
            )
            .await?
        }
    };
    Ok(changed == 1)
}

/// The deliveries matching `filter`, newest first.
pub async fn deliveries(client: &Client, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>> {
    let limit = filter.limit.min(i64::MAX as usize) as i64;
    let rows = client
        .query(
            "SELECT id, destination, event_id, item_uuid::text, cursor, new_status, state,
                    attempts, created_at, next_attempt_at, last_attempt_at, last_status,
                    last_error, delivered_at
             FROM forward_deliveries
             WHERE ($1::text IS NULL OR destination = $1)
               AND (NOT $2 OR state = 'parked' OR (state = 'pending' AND attempts > 0))
               AND (cardinality($3::text[]) = 0 OR state = ANY($3))
             ORDER BY id DESC LIMIT $4",
            &[&filter.destination, &filter.failed, &filter.states, &limit],
        )
        .await?;
    Ok(rows.iter().map(delivery_row).collect())
}

fn delivery_row(r: &Row) -> DeliveryRow {
    let time = |column| r.get::<_, Option<DateTime<Utc>>>(column).map(to_db_text);
    DeliveryRow {
        id: r.get(0),
        destination: r.get(1),
        event_id: r.get(2),
        item: r.get(3),
        cursor: r.get(4),
        new_status: r.get(5),
        state: r.get(6),
        attempts: r.get::<_, i32>(7).into(),
        created_at: to_db_text(r.get(8)),
        next_attempt_at: to_db_text(r.get(9)),
        last_attempt_at: time(10),
        last_status: r.get::<_, Option<i32>>(11).map(i64::from),
        last_error: r.get(12),
        delivered_at: time(13),
    }
}

/// Every registered destination with its backlog.
pub async fn destinations(client: &Client) -> Result<Vec<DestinationRow>> {
    let rows = client
        .query(
            "SELECT f.name, f.feed_cursor, f.disabled_at, f.disabled_reason,
                    (SELECT count(*) FROM forward_deliveries
                     WHERE destination = f.name AND state IN ('pending', 'parked')),
                    (SELECT count(*) FROM forward_deliveries
                     WHERE destination = f.name AND state = 'parked'),
                    (SELECT min(created_at) FROM forward_deliveries
                     WHERE destination = f.name AND state IN ('pending', 'parked'))
             FROM forward_destinations f ORDER BY f.name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DestinationRow {
            name: r.get(0),
            feed_cursor: r.get(1),
            disabled_at: r.get::<_, Option<DateTime<Utc>>>(2).map(to_db_text),
            disabled_reason: r.get(3),
            undelivered: r.get(4),
            parked: r.get(5),
            oldest_undelivered_at: r.get::<_, Option<DateTime<Utc>>>(6).map(to_db_text),
        })
        .collect())
}

/// The voucher URLs of `items` (those never polled have none).
pub async fn vouchers(client: &Client, items: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let rows = client
        .query(
            "SELECT item_uuid::text, vouchers FROM order_items
             WHERE item_uuid = ANY($1::text[]::uuid[]) AND vouchers IS NOT NULL",
            &[&items],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let vouchers: serde_json::Value = r.get(1);
            (
                r.get(0),
                serde_json::from_value(vouchers).unwrap_or_default(),
            )
        })
        .collect())
}
