//! The outbox of signed webhooks out (`[[forward]]`): each destination's place in the change
//! feed (`forward_destinations`) and one row per status change to deliver to it
//! (`forward_deliveries`), on SQLite; PostgreSQL's is `postgres/deliveries.rs`, with the same
//! commands and answers. What a delivery holds and when it is tried again are decided in
//! `forward`; here they are only stored.
//!
//! Three rules live in the SQL here and nowhere else:
//! - **Exactly one enqueue per change:** a page of the feed is enqueued together with the
//!   destination's new cursor, and only if the cursor is still where the page was read from
//!   (compare-and-set), so two instances reading the same page enqueue it once.
//! - **Per-item order:** of an item's open (pending or parked) deliveries to a destination,
//!   exactly one is its `head`: the earliest change (lowest event id). Only heads are claimed,
//!   and a claimed head stays pending until its 2xx; then (or when it is skipped) the next
//!   open delivery of the item becomes the head. So an item's changes go out one at a time, in
//!   the order the rule applied them, while other items go on in parallel; and finding what to
//!   send reads heads only, however long a failing destination's backlog grows.
//! - **One sender at a time:** a delivery is claimed until `claimed_until`, and an operator's
//!   retry or skip leaves a delivery being sent alone.
//!
//! SQLite has one writer, so its feed is in event id order and every change of an item is
//! enqueued in the order the rule applied them; PostgreSQL's feed is not, which its claim
//! makes up for (`postgres/deliveries.rs`).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::inspect::FeedPosition;
use crate::clock::{from_db_text, to_db_text};

/// A delivery's state.
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const PARKED: &str = "parked";
pub const SKIPPED: &str = "skipped";

/// Where a new destination starts in the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only changes stored from now on.
    End,
    /// Every change still in the feed.
    Beginning,
}

/// One status change to enqueue for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// `item_events.id` of the change.
    pub event_id: i64,
    pub item: String,
    /// The change's place in the feed.
    pub cursor: String,
    pub new_status: String,
    /// The JSON posted on every attempt.
    pub body: String,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub event_id: i64,
    pub item: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// When it was first tried (`None`: this is the first attempt).
    pub first_attempt_at: Option<DateTime<Utc>>,
}

/// How an attempt ended, as `forward` decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A 2xx.
    Delivered { status: u16 },
    /// Failed; tried again at `at`.
    Retry {
        status: Option<u16>,
        error: String,
        at: DateTime<Utc>,
    },
    /// Failed past `give_up_after`: parked until an operator retries or skips it.
    Park { status: Option<u16>, error: String },
    /// 410 Gone: the destination is disabled; the delivery stays pending.
    Gone { status: u16, error: String },
}

/// What the writer can be asked to do with the outbox.
#[derive(Debug)]
pub enum ForwardCommand {
    /// Adds a configured destination if it is new, at `start`; answers its cursor.
    Register { destination: String, start: StartAt },
    /// Enqueues `deliveries` and moves the destination's cursor from `expected` to `to`, if it
    /// is still at `expected`; answers whether it was, and the cursor now.
    Enqueue {
        destination: String,
        expected: String,
        to: String,
        deliveries: Vec<NewDelivery>,
    },
    /// Claims up to `limit` due deliveries (each its item's head) for `holder`, for `ttl`
    /// (from the database's clock on PostgreSQL, shared by every instance); nothing while
    /// the destination is disabled.
    Claim {
        destination: String,
        holder: String,
        limit: usize,
        ttl: chrono::Duration,
    },
    /// Records an attempt of the delivery `id`, begun at `attempted_at`, by `holder`.
    Finish {
        id: i64,
        destination: String,
        holder: String,
        attempted_at: DateTime<Utc>,
        result: Finish,
    },
    /// Gives back every claim of `holder` on `destination` (it stops, or starts again after
    /// a crash).
    ReleaseClaims { destination: String, holder: String },
    /// Parked (or waiting, not being sent) deliveries due again now, their give-up time
    /// counted afresh.
    Retry(Vec<i64>),
    /// Parked (or waiting, not being sent) deliveries never sent; the item's later changes
    /// go on.
    Skip(Vec<i64>),
    /// A destination no longer configured, and its deliveries, deleted.
    Forget(String),
    /// A destination disabled by a 410 sends again.
    Enable(String),
    /// The destination's cursor set back (or forward) to `from`: the feed is enqueued again
    /// from there.
    Replay {
        destination: String,
        from: FeedPosition,
    },
}

/// What a [`ForwardCommand`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardDone {
    /// `Register`: where the destination's feed stands.
    Registered { cursor: String },
    /// `Enqueue`: whether the page was enqueued, and the cursor now.
    Enqueued { enqueued: bool, cursor: String },
    /// `Claim`.
    Claimed {
        disabled: bool,
        deliveries: Vec<Claimed>,
    },
    /// `Retry`, `Skip`: the deliveries changed.
    Changed(Vec<i64>),
    /// `Enable`, `Forget`, `Finish`, `ReleaseClaims`: whether a row changed; `Replay`:
    /// whether the destination exists, or why the position cannot be used.
    Done(Result<bool, String>),
}

/// Runs `command` on the writer's connection at `now`.
pub fn execute(
    conn: &Connection,
    command: &ForwardCommand,
    now: DateTime<Utc>,
) -> rusqlite::Result<ForwardDone> {
    let now_text = to_db_text(now);
    Ok(match command {
        ForwardCommand::Register { destination, start } => {
            // Registered already (every start, and the feeder's look every few seconds): its
            // cursor, without working out where a new one would start.
            if let Some(cursor) = cursor_of(conn, destination)? {
                return Ok(ForwardDone::Registered { cursor });
            }
            let start_cursor = match start {
                StartAt::Beginning => "0".to_owned(),
                StartAt::End => newest_event(conn)?.to_string(),
            };
            conn.execute(
                "INSERT INTO forward_destinations (name, feed_cursor) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING",
                params![destination, start_cursor],
            )?;
            ForwardDone::Registered {
                cursor: cursor_of(conn, destination)?.unwrap_or(start_cursor),
            }
        }
        ForwardCommand::Enqueue {
            destination,
            expected,
            to,
            deliveries,
        } => {
            let moved = conn.execute(
                "UPDATE forward_destinations SET feed_cursor = ?1
                 WHERE name = ?2 AND feed_cursor = ?3",
                params![to, destination, expected],
            )?;
            if moved == 1 {
                for delivery in deliveries {
                    enqueue(conn, destination, delivery, &now_text)?;
                }
            }
            ForwardDone::Enqueued {
                enqueued: moved == 1,
                cursor: cursor_of(conn, destination)?.unwrap_or_else(|| expected.clone()),
            }
        }
        ForwardCommand::Claim {
            destination,
            holder,
            limit,
            ttl,
        } => claim(conn, destination, holder, *limit, now, *ttl)?,
        ForwardCommand::Finish {
            id,
            destination,
            holder,
            attempted_at,
            result,
        } => ForwardDone::Done(Ok(finish(
            conn,
            *id,
            destination,
            holder,
            &to_db_text(*attempted_at),
            result,
            &now_text,
        )?)),
        ForwardCommand::ReleaseClaims {
            destination,
            holder,
        } => ForwardDone::Done(Ok(conn.execute(
            "UPDATE forward_deliveries SET claimed_by = NULL, claimed_until = NULL
             WHERE destination = ?1 AND claimed_by = ?2 AND state = 'pending'",
            [destination, holder],
        )? > 0)),
        ForwardCommand::Retry(ids) => ForwardDone::Changed(operate(
            conn,
            ids,
            "UPDATE forward_deliveries SET state = 'pending', attempts = 0,
                 first_attempt_at = NULL, next_attempt_at = ?2, claimed_by = NULL,
                 claimed_until = NULL
             WHERE id = ?1 AND (state = 'parked' OR (state = 'pending'
                   AND (claimed_until IS NULL OR claimed_until <= ?2)))",
            &now_text,
        )?),
        ForwardCommand::Skip(ids) => ForwardDone::Changed(operate(
            conn,
            ids,
            "UPDATE forward_deliveries SET state = 'skipped', head = 0, claimed_by = NULL,
                 claimed_until = NULL, last_error = coalesce(last_error, 'skipped at ' || ?2)
             WHERE id = ?1 AND (state = 'parked' OR (state = 'pending'
                   AND (claimed_until IS NULL OR claimed_until <= ?2)))",
            &now_text,
        )?),
        ForwardCommand::Enable(destination) => ForwardDone::Done(Ok(conn.execute(
            "UPDATE forward_destinations SET disabled_at = NULL, disabled_reason = NULL
             WHERE name = ?1",
            [destination],
        )? == 1)),
        ForwardCommand::Forget(destination) => {
            conn.execute(
                "DELETE FROM forward_deliveries WHERE destination = ?1",
                [destination],
            )?;
            ForwardDone::Done(Ok(conn.execute(
                "DELETE FROM forward_destinations WHERE name = ?1",
                [destination],
            )? == 1))
        }
        ForwardCommand::Replay { destination, from } => {
            let newest = newest_event(conn)?;
            let refused = match from {
                FeedPosition::After(cursor) => Some(format!(
                    "{cursor} is a PostgreSQL cursor; this database is SQLite, whose cursors \
                     are event ids"
                )),
                FeedPosition::AfterEvent(id) if *id > newest => Some(format!(
                    "{id} is past the end of the feed (the newest event is {newest}): \
                     nothing would be sent until the feed got there"
                )),
                _ => None,
            };
            if let Some(reason) = refused {
                return Ok(ForwardDone::Done(Err(reason)));
            }
            ForwardDone::Done(Ok(conn.execute(
                "UPDATE forward_destinations SET feed_cursor = ?1 WHERE name = ?2",
                params![from.to_string(), destination],
            )? == 1))
        }
    })
}

/// The newest event's id (0 when there is none): the end of the feed.
fn newest_event(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM item_events", [], |r| {
        r.get(0)
    })
}

/// The destination's cursor, if it is registered.
fn cursor_of(conn: &Connection, destination: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT feed_cursor FROM forward_destinations WHERE name = ?1",
        [destination],
        |r| r.get(0),
    )
    .optional()
}

/// An item's head delivery to a destination: its id, event id and state, and whether it is
/// claimed at `now`.
type Head = (i64, i64, String, bool);

/// Adds `delivery` to `destination`'s outbox as its item's head if the item has no open
/// delivery, or if it is an earlier change than a head not being sent (PostgreSQL's feed can
/// list an item's later change first; the claim holds that one back until the earlier one is
/// enqueued, so it is never being sent then); else behind the head.
fn enqueue(
    conn: &Connection,
    destination: &str,
    delivery: &NewDelivery,
    now: &str,
) -> rusqlite::Result<()> {
    let head: Option<Head> = conn
        .prepare_cached(
            "SELECT id, event_id, state, coalesce(claimed_until > ?3, 0)
             FROM forward_deliveries
             WHERE destination = ?1 AND item_uuid = ?2 AND head = 1
               AND state IN ('pending', 'parked')",
        )?
        .query_row(params![destination, delivery.item, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let is_head = match head {
        None => true,
        Some((id, event_id, state, claimed)) => {
            let overtakes = event_id > delivery.event_id && state == PENDING && !claimed;
            if overtakes {
                conn.prepare_cached("UPDATE forward_deliveries SET head = 0 WHERE id = ?1")?
                    .execute([id])?;
            }
            overtakes
        }
    };
    conn.prepare_cached(
        "INSERT INTO forward_deliveries (destination, event_id, item_uuid, cursor, new_status,
             body, state, head, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?8)",
    )?
    .execute(params![
        destination,
        delivery.event_id,
        delivery.item,
        delivery.cursor,
        delivery.new_status,
        delivery.body,
        is_head,
        now
    ])?;
    Ok(())
}

/// Makes the earliest open delivery of `item` to `destination` its head, when it has none
/// (its head was delivered or skipped).
fn promote(conn: &Connection, destination: &str, item: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE forward_deliveries SET head = 1
         WHERE id = (SELECT id FROM forward_deliveries
                     WHERE destination = ?1 AND item_uuid = ?2
                       AND state IN ('pending', 'parked')
                     ORDER BY event_id, id LIMIT 1)
           AND NOT EXISTS (SELECT 1 FROM forward_deliveries
                           WHERE destination = ?1 AND item_uuid = ?2 AND head = 1
                             AND state IN ('pending', 'parked'))",
    )?
    .execute(params![destination, item])?;
    Ok(())
}

/// Runs the operator's `sql` (`?1` the id, `?2` now) on each of `ids`, keeping each item's
/// head; the ids it changed.
fn operate(conn: &Connection, ids: &[i64], sql: &str, now: &str) -> rusqlite::Result<Vec<i64>> {
    let mut changed = Vec::new();
    for id in ids {
        let Some((destination, item)) = delivery_item(conn, *id)? else {
            continue;
        };
        if conn.prepare_cached(sql)?.execute(params![id, now])? == 1 {
            promote(conn, &destination, &item)?;
            changed.push(*id);
        }
    }
    Ok(changed)
}

/// The destination and item of the delivery `id`.
fn delivery_item(conn: &Connection, id: i64) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached("SELECT destination, item_uuid FROM forward_deliveries WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// [`ForwardCommand::Claim`].
fn claim(
    conn: &Connection,
    destination: &str,
    holder: &str,
    limit: usize,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> rusqlite::Result<ForwardDone> {
    let disabled: Option<bool> = conn
        .query_row(
            "SELECT disabled_at IS NOT NULL FROM forward_destinations WHERE name = ?1",
            [destination],
            |r| r.get(0),
        )
        .optional()?;
    if disabled != Some(false) {
        return Ok(ForwardDone::Claimed {
            disabled: true,
            deliveries: Vec::new(),
        });
    }
    let now_text = to_db_text(now);
    let mut due = conn.prepare_cached(
        "SELECT id, event_id, item_uuid, body, attempts, first_attempt_at
         FROM forward_deliveries
         WHERE destination = ?1 AND head = 1 AND state = 'pending' AND next_attempt_at <= ?2
           AND (claimed_until IS NULL OR claimed_until <= ?2)
         ORDER BY next_attempt_at, id LIMIT ?3",
    )?;
    let deliveries = due
        .query_map(
            params![destination, now_text, limit.min(i64::MAX as usize) as i64],
            |r| {
                let first: Option<String> = r.get(5)?;
                Ok(Claimed {
                    id: r.get(0)?,
                    event_id: r.get(1)?,
                    item: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    first_attempt_at: first.and_then(|text| from_db_text(&text).ok()),
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut take = conn.prepare_cached(
        "UPDATE forward_deliveries SET claimed_by = ?2, claimed_until = ?3 WHERE id = ?1",
    )?;
    let until = to_db_text(crate::clock::later(now, ttl));
    for delivery in &deliveries {
        take.execute(params![delivery.id, holder, until])?;
    }
    Ok(ForwardDone::Claimed {
        disabled: false,
        deliveries,
    })
}

/// [`ForwardCommand::Finish`]: a 2xx counts whoever holds the claim now (it was delivered,
/// and `webhook-id` lets the receiver drop a copy another instance may still be sending);
/// a failure only while `holder` still holds it (else another instance took it over and its
/// record wins).
fn finish(
    conn: &Connection,
    id: i64,
    destination: &str,
    holder: &str,
    attempted_at: &str,
    result: &Finish,
    now: &str,
) -> rusqlite::Result<bool> {
    let changed = match result {
        Finish::Delivered { status } => {
            let Some((_, item)) = delivery_item(conn, id)? else {
                return Ok(false);
            };
            let changed = conn
                .prepare_cached(
                    "UPDATE forward_deliveries SET state = 'delivered', head = 0,
                         delivered_at = ?3, attempts = attempts + 1,
                         first_attempt_at = coalesce(first_attempt_at, ?4),
                         last_attempt_at = ?4, last_status = ?2, last_error = NULL,
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![id, status, now, attempted_at])?;
            if changed == 1 {
                promote(conn, destination, &item)?;
            }
            changed
        }
        Finish::Retry { status, error, at } => failed(
            conn,
            "pending",
            params![id, holder, status, error, to_db_text(*at), attempted_at],
        )?,
        Finish::Park { status, error } => failed(
            conn,
            "parked",
            params![id, holder, status, error, None::<String>, attempted_at],
        )?,
        Finish::Gone { status, error } => {
            conn.execute(
                "UPDATE forward_destinations SET disabled_at = ?2, disabled_reason = ?3
                 WHERE name = ?1 AND disabled_at IS NULL",
                params![destination, now, format!("{status} Gone: {error}")],
            )?;
            failed(
                conn,
                "pending",
                params![id, holder, status, error, None::<String>, attempted_at],
            )?
        }
    };
    Ok(changed == 1)
}

/// Records a failed attempt (`?1` id, `?2` holder, `?3` status, `?4` error, `?5` next attempt
/// or NULL to keep it, `?6` attempted at), leaving the delivery in `state`.
fn failed(
    conn: &Connection,
    state: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    let sql = if state == PARKED {
        "UPDATE forward_deliveries SET state = 'parked', attempts = attempts + 1,
             first_attempt_at = coalesce(first_attempt_at, ?6), last_attempt_at = ?6,
             next_attempt_at = coalesce(?5, next_attempt_at), last_status = ?3,
             last_error = ?4, claimed_by = NULL, claimed_until = NULL
         WHERE id = ?1 AND state = 'pending' AND claimed_by = ?2"
    } else {
        "UPDATE forward_deliveries SET attempts = attempts + 1,
             first_attempt_at = coalesce(first_attempt_at, ?6), last_attempt_at = ?6,
             next_attempt_at = coalesce(?5, next_attempt_at), last_status = ?3,
             last_error = ?4, claimed_by = NULL, claimed_until = NULL
         WHERE id = ?1 AND state = 'pending' AND claimed_by = ?2"
    };
    conn.prepare_cached(sql)?.execute(params)
}

/// Which deliveries `orderwatch deliveries` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this destination's.
    pub destination: Option<String>,
    /// Only the parked ones and the pending ones that failed at least once.
    pub failed: bool,
    /// Only these states (empty: every state).
    pub states: Vec<String>,
    /// Most rows, newest first.
    pub limit: usize,
}

/// One delivery as `orderwatch deliveries` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub destination: String,
    /// `webhook-id` without its `orderwatch-` prefix: the change's event id.
    pub event_id: i64,
    pub item: String,
    pub cursor: String,
    pub new_status: String,
    pub state: String,
    pub attempts: i64,
    pub created_at: String,
    pub next_attempt_at: String,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

/// A destination's backlog: what `/metrics` and `orderwatch deliveries --destinations` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationRow {
    pub name: String,
    pub feed_cursor: String,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    /// Deliveries not yet acknowledged (pending or parked).
    pub undelivered: i64,
    pub parked: i64,
    /// When the oldest undelivered one was enqueued.
    pub oldest_undelivered_at: Option<String>,
    /// When the oldest change not yet enqueued (after `feed_cursor`) arrived: a feeder that
    /// cannot go on shows here.
    pub oldest_unfed_at: Option<String>,
}

impl DestinationRow {
    /// Since when the destination has been missing a change: the older of the oldest
    /// undelivered delivery and the oldest change not yet enqueued.
    pub fn waiting_since(&self) -> Option<&str> {
        match (&self.oldest_undelivered_at, &self.oldest_unfed_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.as_deref().or(b.as_deref()),
        }
    }
}

/// The SQL condition of [`DeliveryFilter::failed`], shared by both engines.
pub const FAILED: &str = "(state = 'parked' OR (state = 'pending' AND attempts > 0))";

/// The deliveries matching `filter`, newest first.
pub fn deliveries(
    conn: &Connection,
    filter: &DeliveryFilter,
) -> rusqlite::Result<Vec<DeliveryRow>> {
    let states = serde_json::to_string(&filter.states).expect("strings serialize");
    let mut statement = conn.prepare(&format!(
        "SELECT id, destination, event_id, item_uuid, cursor, new_status, state, attempts,
                created_at, next_attempt_at, last_attempt_at, last_status, last_error,
                delivered_at
         FROM forward_deliveries
         WHERE (?1 IS NULL OR destination = ?1) AND (NOT ?2 OR {FAILED})
           AND (?3 = '[]' OR state IN (SELECT value FROM json_each(?3)))
         ORDER BY id DESC LIMIT ?4"
    ))?;
    let rows = statement.query_map(
        params![
            filter.destination,
            filter.failed,
            states,
            filter.limit.min(i64::MAX as usize) as i64
        ],
        |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                destination: r.get(1)?,
                event_id: r.get(2)?,
                item: r.get(3)?,
                cursor: r.get(4)?,
                new_status: r.get(5)?,
                state: r.get(6)?,
                attempts: r.get(7)?,
                created_at: r.get(8)?,
                next_attempt_at: r.get(9)?,
                last_attempt_at: r.get(10)?,
                last_status: r.get(11)?,
                last_error: r.get(12)?,
                delivered_at: r.get(13)?,
            })
        },
    )?;
    rows.collect()
}

/// Every registered destination with its backlog.
pub fn destinations(conn: &Connection) -> rusqlite::Result<Vec<DestinationRow>> {
    let mut statement = conn.prepare(
        "SELECT f.name, f.feed_cursor, f.disabled_at, f.disabled_reason,
                (SELECT count(*) FROM forward_deliveries
                 WHERE destination = f.name AND state IN ('pending', 'parked')),
                (SELECT count(*) FROM forward_deliveries
                 WHERE destination = f.name AND state = 'parked'),
                (SELECT min(created_at) FROM forward_deliveries
                 WHERE destination = f.name AND state IN ('pending', 'parked')),
                (SELECT received_at FROM item_events
                 WHERE id > CAST(f.feed_cursor AS INTEGER) AND outcome = 'applied'
                 ORDER BY id LIMIT 1)
         FROM forward_destinations f ORDER BY f.name",
    )?;
    let rows = statement.query_map([], |r| {
        Ok(DestinationRow {
            name: r.get(0)?,
            feed_cursor: r.get(1)?,
            disabled_at: r.get(2)?,
            disabled_reason: r.get(3)?,
            undelivered: r.get(4)?,
            parked: r.get(5)?,
            oldest_undelivered_at: r.get(6)?,
            oldest_unfed_at: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// The voucher URLs of `items` (those never polled have none), for the bodies of their
/// deliveries.
pub fn vouchers(
    conn: &Connection,
    items: &[String],
) -> rusqlite::Result<Vec<(String, Vec<String>)>> {
    let items = serde_json::to_string(items).expect("strings serialize");
    let mut statement = conn.prepare_cached(
        "SELECT item_uuid, vouchers FROM order_items
         WHERE item_uuid IN (SELECT value FROM json_each(?1)) AND vouchers IS NOT NULL",
    )?;
    let rows = statement.query_map([items], |r| {
        let text: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&text).unwrap_or_default()))
    })?;
    rows.collect()
}
