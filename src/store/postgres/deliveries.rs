//! The outbox of signed webhooks out on PostgreSQL: `store::deliveries` (SQLite) with the same
//! commands, answers and rules (read its introduction first); what differs is how several
//! instances share it, and the order of the feed.
//!
//! - **Claims** take rows with `FOR UPDATE SKIP LOCKED`, so two instances claiming at once take
//!   different deliveries, and last until `claimed_until` on the database's clock (every
//!   instance agrees on it); a claim is taken over only once it has passed (its instance died
//!   mid-send).
//! - **The feed is not in event order per item.** It is ordered by writing transaction, and
//!   an item's earlier change can be written by a transaction that started later (it waited
//!   for the order's lock), so it can come after the later change, even a page later. So a
//!   head is claimed only once the destination's cursor has passed every earlier applied
//!   event of its item: by then each was enqueued (and became the head before it) or left out
//!   by the destination's filters.
//! - **The destination's row is never waited for** inside a batch (it rides with webhooks):
//!   enqueueing and disabling take it with `SKIP LOCKED`, and whoever finds it taken tries
//!   again (the feeder at once, a 410 at the next attempt). Two batches locking destinations
//!   in crossing order cannot deadlock.

use chrono::{DateTime, SubsecRound, Utc};
use tokio_postgres::{Client, Row};

use super::super::deliveries::{
    Claimed, DeliveryFilter, DeliveryRow, DestinationRow, Finish, ForwardCommand, ForwardDone,
    NewDelivery, StartAt,
};
use super::super::inspect::FeedPosition;
use super::feed::FeedCursor;
use super::session::Session;
use crate::clock::to_db_text;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

fn ms(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(3)
}

/// A stored `feed_cursor` (`0`, or `TX.ID`) as the `(tx, id)` pair SQL compares events with:
/// the expression, for `f.feed_cursor` (`f` a `forward_destinations` row).
macro_rules! cursor_of_f {
    () => {
        "((split_part(f.feed_cursor, '.', 1)::bigint)::text::xid8, \
          coalesce(nullif(split_part(f.feed_cursor, '.', 2), '')::bigint, 0))"
    };
}
pub(crate) use cursor_of_f;

/// Runs `command` inside `tx` at `now`.
pub async fn execute(
    tx: &Session<'_>,
    command: &ForwardCommand,
    now: DateTime<Utc>,
) -> Result<ForwardDone> {
    let now = ms(now);
    Ok(match command {
        ForwardCommand::Register { destination, start } => {
            // Registered already (every start, and the feeder's look every few seconds): its
            // cursor, without working out where a new one would start.
            if let Some(cursor) = cursor_of(tx, destination).await? {
                return Ok(ForwardDone::Registered { cursor });
            }
            let start_cursor = match start {
                StartAt::Beginning => "0".to_owned(),
                StartAt::End => end_of_feed(tx)
                    .await?
                    .map_or(FeedPosition::Start, FeedPosition::After)
                    .to_string(),
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
            let moved = tx
                .execute(
                    "UPDATE forward_destinations SET feed_cursor = $1
                     WHERE name = $2 AND feed_cursor = $3
                       AND name IN (SELECT name FROM forward_destinations WHERE name = $2
                                    FOR UPDATE SKIP LOCKED)",
                    &[to, destination, expected],
                )
                .await?;
            if moved == 1 {
                for delivery in deliveries {
                    enqueue(tx, destination, delivery, now).await?;
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
            ttl,
        } => claim(tx, destination, holder, *limit, now, *ttl).await?,
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
            operate(
                tx,
                ids,
                "UPDATE forward_deliveries SET state = 'pending', attempts = 0,
                     first_attempt_at = NULL, next_attempt_at = $2, claimed_by = NULL,
                     claimed_until = NULL
                 WHERE id = $1 AND (state = 'parked' OR (state = 'pending'
                       AND (claimed_until IS NULL OR claimed_until <= clock_timestamp())))
                 RETURNING destination, item_uuid::text",
                now,
            )
            .await?,
        ),
        ForwardCommand::Skip(ids) => ForwardDone::Changed(
            operate(
                tx,
                ids,
                "UPDATE forward_deliveries SET state = 'skipped', head = false,
                     claimed_by = NULL, claimed_until = NULL,
                     last_error = coalesce(last_error, 'skipped at ' || to_char($2 AT TIME ZONE 'UTC',
                                                        'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
                 WHERE id = $1 AND (state = 'parked' OR (state = 'pending'
                       AND (claimed_until IS NULL OR claimed_until <= clock_timestamp())))
                 RETURNING destination, item_uuid::text",
                now,
            )
            .await?,
        ),
        ForwardCommand::Enable(destination) => ForwardDone::Done(Ok(tx
            .execute(
                "UPDATE forward_destinations SET disabled_at = NULL, disabled_reason = NULL
                 WHERE name = $1",
                &[destination],
            )
            .await?
            == 1)),
        ForwardCommand::Forget(destination) => {
            tx.execute(
                "DELETE FROM forward_deliveries WHERE destination = $1",
                &[destination],
            )
            .await?;
            ForwardDone::Done(Ok(tx
                .execute(
                    "DELETE FROM forward_destinations WHERE name = $1",
                    &[destination],
                )
                .await?
                == 1))
        }
        ForwardCommand::Replay { destination, from } => match replay_from(tx, *from).await? {
            Err(reason) => ForwardDone::Done(Err(reason)),
            Ok(from) => ForwardDone::Done(Ok(tx
                .execute(
                    "UPDATE forward_destinations SET feed_cursor = $1 WHERE name = $2",
                    &[&from.to_string(), destination],
                )
                .await?
                == 1)),
        },
    })
}

/// Where a replay from `from` starts: a plain event id resolved to its place in the
/// commit-ordered feed now (so the feeder only ever meets cursors it can resume from); a
/// position past the newest event refused (nothing would be sent until the feed got there).
async fn replay_from(
    tx: &Session<'_>,
    from: FeedPosition,
) -> Result<std::result::Result<FeedPosition, String>> {
    let cursor = match from {
        FeedPosition::Start => return Ok(Ok(from)),
        FeedPosition::After(cursor) => cursor,
        FeedPosition::AfterEvent(id) => {
            let row = tx
                .query_opt(
                    "SELECT (tx::text)::bigint FROM item_events WHERE id = $1",
                    &[&id],
                )
                .await?;
            match row {
                Some(row) => FeedCursor { tx: row.get(0), id },
                None => {
                    return Ok(Err(format!(
                        "no event has id {id} (pruned, or never written): replay from a \
                         cursor (TX.ID) instead"
                    )));
                }
            }
        }
    };
    match end_of_feed(tx).await? {
        Some(end) if cursor <= end => Ok(Ok(FeedPosition::After(cursor))),
        end => Ok(Err(format!(
            "{cursor} is past the end of the feed (the newest change is at {}): nothing \
             would be sent until the feed got there",
            end.map_or("0".to_owned(), |end| end.to_string())
        ))),
    }
}

/// The newest position the feed can read now (below the oldest running transaction): where
/// a destination with `start = "end"` begins; `None` with no event.
async fn end_of_feed(tx: &Session<'_>) -> Result<Option<FeedCursor>> {
    Ok(tx
        .query_opt(
            "SELECT (tx::text)::bigint, id FROM item_events
             WHERE outcome = 'applied' AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY tx DESC, id DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|row| FeedCursor {
            tx: row.get(0),
            id: row.get(1),
        }))
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

/// `store::deliveries::enqueue`: the item's head, or behind it.
async fn enqueue(
    tx: &Session<'_>,
    destination: &str,
    delivery: &NewDelivery,
    now: DateTime<Utc>,
) -> Result<()> {
    let head = tx
        .query_opt(
            "SELECT id, event_id, state,
                    coalesce(claimed_until > clock_timestamp(), false)
             FROM forward_deliveries
             WHERE destination = $1 AND item_uuid = ($2::text)::uuid AND head
               AND state IN ('pending', 'parked')
             FOR UPDATE",
            &[&destination, &delivery.item],
        )
        .await?;
    let is_head = match head {
        None => true,
        Some(row) => {
            let (id, event_id, state, claimed): (i64, i64, String, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let overtakes = event_id > delivery.event_id && state == "pending" && !claimed;
            if overtakes {
                tx.execute(
                    "UPDATE forward_deliveries SET head = false WHERE id = $1",
                    &[&id],
                )
                .await?;
            }
            overtakes
        }
    };
    tx.execute(
        "INSERT INTO forward_deliveries (destination, event_id, item_uuid, cursor, new_status,
             body, state, head, created_at, next_attempt_at)
         VALUES ($1, $2, ($3::text)::uuid, $4, $5, $6, 'pending', $7, $8, $8)",
        &[
            &destination,
            &delivery.event_id,
            &delivery.item,
            &delivery.cursor,
            &delivery.new_status,
            &delivery.body,
            &is_head,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// `store::deliveries::promote`.
async fn promote(tx: &Session<'_>, destination: &str, item: &str) -> Result<()> {
    tx.execute(
        "UPDATE forward_deliveries SET head = true
         WHERE id = (SELECT id FROM forward_deliveries
                     WHERE destination = $1 AND item_uuid = ($2::text)::uuid
                       AND state IN ('pending', 'parked')
                     ORDER BY event_id, id LIMIT 1)
           AND NOT EXISTS (SELECT 1 FROM forward_deliveries
                           WHERE destination = $1 AND item_uuid = ($2::text)::uuid AND head
                             AND state IN ('pending', 'parked'))",
        &[&destination, &item],
    )
    .await?;
    Ok(())
}

/// `store::deliveries::operate`: `sql` (`$1` the id, `$2` now, returning the destination and
/// item) on each of `ids`.
async fn operate(
    tx: &Session<'_>,
    ids: &[i64],
    sql: &'static str,
    now: DateTime<Utc>,
) -> Result<Vec<i64>> {
    let mut changed = Vec::new();
    for id in ids {
        if let Some(row) = tx.query_opt(sql, &[id, &now]).await? {
            let (destination, item): (String, String) = (row.get(0), row.get(1));
            promote(tx, &destination, &item).await?;
            changed.push(*id);
        }
    }
    Ok(changed)
}

/// [`ForwardCommand::Claim`]: heads due, not claimed, and whose item has no earlier applied
/// event the destination's cursor has not passed yet (see the introduction).
async fn claim(
    tx: &Session<'_>,
    destination: &str,
    holder: &str,
    limit: usize,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
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
    let ttl_ms = ttl.num_milliseconds() as f64;
    let rows = tx
        .query(
            concat!(
                "UPDATE forward_deliveries
                 SET claimed_by = $2,
                     claimed_until = clock_timestamp() + $4::float8 * interval '1 millisecond'
                 WHERE id IN (
                     SELECT d.id FROM forward_deliveries d
                     WHERE d.destination = $1 AND d.head AND d.state = 'pending'
                       AND d.next_attempt_at <= $3
                       AND (d.claimed_until IS NULL OR d.claimed_until <= clock_timestamp())
                       AND NOT EXISTS (
                           SELECT 1 FROM forward_destinations f, order_items i, item_events p
                           WHERE f.name = d.destination AND i.item_uuid = d.item_uuid
                             AND p.item_seq = i.seq
                             AND p.item_uuid = i.item_uuid AND p.outcome = 'applied'
                             AND p.id < d.event_id AND (p.tx, p.id) > ",
                cursor_of_f!(),
                ")
                     ORDER BY d.next_attempt_at, d.id LIMIT $5
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_id, item_uuid::text, body, attempts, first_attempt_at,
                           next_attempt_at"
            ),
            &[&destination, &holder, &now, &ttl_ms, &limit],
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
            let delivered = tx
                .query_opt(
                    "UPDATE forward_deliveries SET state = 'delivered', head = false,
                         delivered_at = $3, attempts = attempts + 1,
                         first_attempt_at = coalesce(first_attempt_at, $4),
                         last_attempt_at = $4, last_status = $2, last_error = NULL,
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = $1 AND state = 'pending'
                     RETURNING item_uuid::text",
                    &[&id, &i32::from(*status), &now, &attempted_at],
                )
                .await?;
            match delivered {
                Some(row) => {
                    promote(tx, destination, row.get(0)).await?;
                    1
                }
                None => 0,
            }
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
                 WHERE name = $1 AND disabled_at IS NULL
                   AND name IN (SELECT name FROM forward_destinations WHERE name = $1
                                FOR UPDATE SKIP LOCKED)",
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
            concat!(
                "SELECT f.name, f.feed_cursor, f.disabled_at, f.disabled_reason,
                        (SELECT count(*) FROM forward_deliveries
                         WHERE destination = f.name AND state IN ('pending', 'parked')),
                        (SELECT count(*) FROM forward_deliveries
                         WHERE destination = f.name AND state = 'parked'),
                        (SELECT min(created_at) FROM forward_deliveries
                         WHERE destination = f.name AND state IN ('pending', 'parked')),
                        (SELECT e.received_at FROM item_events e
                         WHERE e.outcome = 'applied' AND (e.tx, e.id) > ",
                cursor_of_f!(),
                "        ORDER BY e.tx, e.id LIMIT 1)
                 FROM forward_destinations f ORDER BY f.name"
            ),
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
            oldest_unfed_at: r.get::<_, Option<DateTime<Utc>>>(7).map(to_db_text),
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
