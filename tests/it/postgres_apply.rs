//! PostgreSQL's `apply_batch` against SQLite's, on real servers: the same stored observations,
//! the same polling bookkeeping, then the same batch (in the same chunks) at the same `now` must
//! give the same outcomes and the same rows, every column the two schemas share, compared as
//! text (times to the millisecond, flags as 0/1, vouchers as JSON). The arrival numbers may be
//! handed out in another order, so they are checked for what they mean instead: each item names
//! its order's number, each event its item's.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use orderwatch::backoff::BackoffPolicy;
use orderwatch::observation::{Observation, Position, Status};
use orderwatch::store::maintenance::{self, PruneCursor};
use orderwatch::store::postgres::apply::apply_batch;
use orderwatch::store::postgres::commands as pg_commands;
use orderwatch::store::postgres::inspect as pg_inspect;
use orderwatch::store::postgres::migrate as pg_migrate;
use orderwatch::store::postgres::polls as pg_polls;
use orderwatch::store::postgres::queries as pg_queries;
use orderwatch::store::postgres::session::{Session, Statements};
use orderwatch::store::{self, Outcome, PollFailure, PollRecord, RejectedWebhook, StoreSettings};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rusqlite::Connection;
use rusqlite::types::Value;
use uuid::Uuid;

use crate::helpers::observations::{
    at, chunks, item, item_facts, now, observation, order, runner, statuses,
};
use crate::helpers::pg;

#[derive(Debug, Clone)]
struct Case {
    /// Applied one by one, each at its own `received_at`, before the batch.
    stored: Vec<Observation>,
    /// Orders (bit n: order n) whose last poll succeeded.
    polled: u8,
    /// Orders whose last poll failed.
    failing: u8,
    /// Orders due only tomorrow.
    due_later: u8,
    batch: Vec<Observation>,
    /// Where the batch is cut into transactions.
    cuts: Vec<usize>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(observation(), 0..8),
        0u8..8,
        0u8..8,
        0u8..8,
        prop::collection::vec(observation(), 1..24),
        prop::collection::vec(0usize..24, 0..4),
    )
        .prop_map(|(stored, polled, failing, due_later, batch, cuts)| Case {
            stored,
            polled,
            failing,
            due_later,
            batch,
            cuts,
        })
}

/// The polling bookkeeping a case sets on its orders, as one statement per engine
/// (`{key}` is the order's UUID): (bit set, SQLite, PostgreSQL).
fn bookkeeping(case: &Case) -> Vec<(u8, &'static str, &'static str)> {
    let mut statements = Vec::new();
    for n in 0..3u8 {
        let bit = 1 << n;
        if case.polled & bit != 0 {
            statements.push((
                n,
                "UPDATE orders SET last_polled_at = '2023-11-14T22:20:00.000Z' WHERE order_uuid = ?1",
                "UPDATE orders SET last_polled_at = '2023-11-14T22:20:00.000Z' WHERE order_uuid = $1",
            ));
        }
        if case.due_later & bit != 0 {
            statements.push((
                n,
                "UPDATE orders SET next_poll_at = '2023-11-15T12:00:00.000Z' WHERE order_uuid = ?1",
                "UPDATE orders SET next_poll_at = '2023-11-15T12:00:00.000Z' WHERE order_uuid = $1",
            ));
        }
        if case.failing & bit != 0 {
            statements.push((
                n,
                "UPDATE orders SET poll_failures = 1, next_poll_at = '2023-11-15T00:00:00.000Z' WHERE order_uuid = ?1",
                "UPDATE orders SET poll_failures = 1, next_poll_at = '2023-11-15T00:00:00.000Z' WHERE order_uuid = $1",
            ));
        }
    }
    statements
}

fn settings() -> StoreSettings {
    StoreSettings {
        rejected_keep: 2,
        ..StoreSettings::default()
    }
}

/// How a column is compared.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bool,
    Time,
    Json,
    Bytes,
}

use Kind::{Bool, Bytes, Int, Json, Text, Time};

/// A table's name, the column its rows are ordered by, and the columns compared.
type Table = (&'static str, &'static str, &'static [(&'static str, Kind)]);

/// The columns both schemas share (arrival numbers aside), per table, with the row order.
const TABLES: &[Table] = &[
    (
        "orders",
        "order_uuid",
        &[
            ("order_uuid", Text),
            ("order_id", Text),
            ("order_version", Int),
            ("order_created", Time),
            ("order_updated", Time),
            ("order_status", Text),
            ("identifier", Text),
            ("order_polled_as_of", Time),
            ("first_seen_at", Time),
            ("repoll_at", Time),
            ("repoll_attempts", Int),
            ("watched", Bool),
            ("needs_poll", Bool),
            ("next_poll_at", Time),
            ("last_polled_at", Time),
            ("poll_failures", Int),
            ("last_error", Text),
            ("not_found_at", Time),
            ("expired_at", Time),
        ],
    ),
    (
        "order_items",
        "item_uuid",
        &[
            ("item_uuid", Text),
            ("order_uuid", Text),
            ("status", Text),
            ("item_version", Int),
            ("status_version", Int),
            ("item_created", Time),
            ("item_updated", Time),
            ("as_of", Time),
            ("as_of_source", Text),
            ("source", Text),
            ("first_seen_at", Time),
            ("changed_at", Time),
            ("updated_at", Time),
            ("vouchers", Json),
            ("product_id", Text),
            ("product_title", Text),
            ("product_date", Text),
            ("max_confirmation_time", Text),
            ("confirm_deadline", Time),
            ("overdue_warned_at", Time),
            ("facts_as_of", Time),
            ("missing_since", Time),
        ],
    ),
    (
        "item_events",
        "id",
        &[
            ("item_uuid", Text),
            ("order_uuid", Text),
            ("source", Text),
            ("status", Text),
            ("item_version", Int),
            ("as_of", Time),
            ("received_at", Time),
            ("outcome", Text),
            ("payload", Text),
        ],
    ),
    (
        "leases",
        "name",
        &[("name", Text), ("holder", Text), ("expires_at", Time)],
    ),
    (
        "rejected_webhooks",
        "id",
        &[
            ("id", Int),
            ("received_at", Time),
            ("peer", Text),
            ("field", Text),
            ("error", Text),
            ("body", Bytes),
        ],
    ),
];

type Rows = Vec<(&'static str, Vec<Vec<Option<String>>>)>;

/// JSON re-serialized, so `["a", "b"]` (PostgreSQL's jsonb) and `["a","b"]` compare equal.
fn canonical_json(text: Option<String>) -> Option<String> {
    text.map(|t| {
        serde_json::from_str::<serde_json::Value>(&t)
            .map(|v| v.to_string())
            .unwrap_or(t)
    })
}

fn sqlite_rows(conn: &Connection) -> Rows {
    TABLES
        .iter()
        .map(|(table, order_by, columns)| {
            let list: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            let sql = format!(
                "SELECT {} FROM {table} ORDER BY {order_by}",
                list.join(", ")
            );
            let mut statement = conn.prepare(&sql).unwrap();
            let rows = statement
                .query_map([], |row| {
                    Ok(columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, kind))| {
                            let text = match row.get::<_, Value>(i).unwrap() {
                                Value::Null => None,
                                Value::Integer(n) => Some(n.to_string()),
                                Value::Real(x) => Some(x.to_string()),
                                Value::Text(t) => Some(t),
                                Value::Blob(b) => {
                                    Some(b.iter().map(|byte| format!("{byte:02x}")).collect())
                                }
                            };
                            match kind {
                                Json => canonical_json(text),
                                _ => text,
                            }
                        })
                        .collect())
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (*table, rows)
        })
        .collect()
}

async fn postgres_rows(client: &tokio_postgres::Client) -> Rows {
    let mut tables = Vec::new();
    for (table, order_by, columns) in TABLES {
        let list: Vec<String> = columns
            .iter()
            .map(|(name, kind)| match kind {
                Text | Int | Json => format!("{name}::text"),
                Bytes => format!("encode({name}, 'hex')"),
                Bool => format!("CASE WHEN {name} THEN '1' ELSE '0' END"),
                Time => format!(
                    "to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                ),
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {table} ORDER BY {order_by}",
            list.join(", ")
        );
        let rows = client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| {
                        let text: Option<String> = row.get(i);
                        match kind {
                            Json => canonical_json(text),
                            _ => text,
                        }
                    })
                    .collect()
            })
            .collect();
        tables.push((*table, rows));
    }
    tables
}

/// Rows whose arrival number does not name their order's or their item's.
const MISNUMBERED: &str = "SELECT
    (SELECT count(*) FROM order_items i
     WHERE i.order_seq IS DISTINCT FROM (SELECT o.seq FROM orders o WHERE o.order_uuid = i.order_uuid))
  + (SELECT count(*) FROM item_events e
     WHERE e.item_seq IS DISTINCT FROM (SELECT i.seq FROM order_items i WHERE i.item_uuid = e.item_uuid))";

fn run_sqlite(case: &Case) -> (Vec<Outcome>, Rows) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn =
        store::open_for_writing(&dir.path().join("t.db"), std::time::Duration::from_secs(5))
            .unwrap();
    for observation in &case.stored {
        store::apply(&conn, observation, &settings(), observation.received_at).unwrap();
    }
    for (n, sqlite, _) in bookkeeping(case) {
        conn.execute(sqlite, [order(n).to_string()]).unwrap();
    }
    let mut outcomes = Vec::new();
    for chunk in chunks(&case.batch, &case.cuts) {
        let tx = conn.transaction().unwrap();
        let observations: Vec<&Observation> = chunk.iter().collect();
        outcomes.extend(store::apply_batch(&tx, &observations, &settings(), now()).unwrap());
        tx.commit().unwrap();
    }
    let misnumbered: i64 = conn.query_row(MISNUMBERED, [], |r| r.get(0)).unwrap();
    assert_eq!(misnumbered, 0, "SQLite's arrival numbers");
    (outcomes, sqlite_rows(&conn))
}

async fn apply_in_one_transaction(
    client: &mut tokio_postgres::Client,
    observations: &[&Observation],
    at: DateTime<Utc>,
) -> Vec<Outcome> {
    let tx = client.transaction().await.unwrap();
    let statements = Statements::default();
    let outcomes = apply_batch(
        &Session::new(&tx, &statements),
        observations,
        &settings(),
        at,
        "test",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    outcomes
}

async fn run_postgres(client: &mut tokio_postgres::Client, case: &Case) -> (Vec<Outcome>, Rows) {
    client
        .batch_execute(
            "TRUNCATE orders, order_items, item_events, leases, rejected_webhooks RESTART IDENTITY",
        )
        .await
        .unwrap();
    for observation in &case.stored {
        apply_in_one_transaction(client, &[observation], observation.received_at).await;
    }
    for (n, _, postgres) in bookkeeping(case) {
        client.execute(postgres, &[&order(n)]).await.unwrap();
    }
    let mut outcomes = Vec::new();
    for chunk in chunks(&case.batch, &case.cuts) {
        let observations: Vec<&Observation> = chunk.iter().collect();
        outcomes.extend(apply_in_one_transaction(client, &observations, now()).await);
    }
    let misnumbered: i64 = client.query_one(MISNUMBERED, &[]).await.unwrap().get(0);
    assert_eq!(misnumbered, 0, "PostgreSQL's arrival numbers");
    (outcomes, postgres_rows(client).await)
}

#[test]
fn postgres_applies_every_batch_as_sqlite_does() {
    let Some(db) = pg::database("the differential apply test") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The runner's closure is `Fn`: the client is lent to each case through a lock.
    let client = std::sync::Mutex::new(runtime.block_on(db.migrated_client()));
    let mut runner = runner(64);
    runner
        .run(&cases(), |case| {
            let (expected_outcomes, expected_rows) = run_sqlite(&case);
            let mut client = client.lock().unwrap();
            let (outcomes, rows) = runtime.block_on(run_postgres(&mut client, &case));
            prop_assert_eq!(outcomes, expected_outcomes, "outcomes");
            for ((table, expected), (_, got)) in expected_rows.iter().zip(&rows) {
                prop_assert_eq!(got, expected, "rows of {}", table);
            }
            Ok(())
        })
        .unwrap();
}

/// A writer batch is cut into steps (consecutive webhooks; a readiness ping or a poll record
/// alone), and two writers of one instance share its heartbeat row. Batches whose steps name
/// the same orders in crossing order, with pings between them, run on four connections at
/// once: every batch locks all its orders up front, in UUID order, so none waits for another
/// in a cycle (before that, step by step, such batches deadlocked).
#[test]
fn batches_cut_into_steps_lock_all_their_orders_up_front_and_never_deadlock() {
    use orderwatch::store::commands::Command;

    let Some(db) = pg::database("batches cut into steps") else {
        return;
    };
    let webhook = |o: u8, version: i64| {
        Command::Apply(Box::new(Observation::bare(
            item(2 * o),
            order(o),
            Status::parse("PENDING"),
            Position::Webhook {
                version,
                updated: at(version * 1_000),
            },
            at(version),
        )))
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deadlocks = runtime.block_on(async {
        let mut client = db.migrated_client().await;
        // The orders exist already, as they mostly do: a webhook's order was seen before.
        let first: Vec<Command> = (0..3).map(|o| webhook(o, 1)).collect();
        let tx = client.transaction().await.unwrap();
        let statements = Statements::default();
        let commands: Vec<&Command> = first.iter().collect();
        pg_commands::execute_all(
            &Session::new(&tx, &statements),
            &commands,
            &settings(),
            now(),
            "test",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let mut writers = Vec::new();
        for writer in 0..4u64 {
            let url = db.url.clone();
            writers.push(tokio::spawn(async move {
                let mut client = pg::connect(&url).await;
                let statements = Statements::default();
                let mut rng = fastrand::Rng::with_seed(writer);
                for n in 0..60i64 {
                    let mut orders = vec![0u8, 1, 2];
                    rng.shuffle(&mut orders);
                    // One order, two or three; a ping first or not.
                    orders.truncate(rng.usize(1..=3));
                    let mut batch: Vec<Command> = orders
                        .iter()
                        .flat_map(|o| [webhook(*o, 2 + n), Command::Ping])
                        .collect();
                    if rng.bool() {
                        batch.insert(0, Command::Ping);
                    }
                    let commands: Vec<&Command> = batch.iter().collect();
                    let tx = client.transaction().await.unwrap();
                    let session = Session::new(&tx, &statements);
                    pg_commands::execute_all(&session, &commands, &settings(), now(), "test")
                        .await
                        .unwrap_or_else(|e| panic!("writer {writer}, batch {n}: {e}"));
                    tx.commit().await.unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        pg::deadlocks_once_alone(&client).await
    });
    assert_eq!(deadlocks, 0, "deadlocks reported by the server");
}

/// Four connections apply batches over the same three orders at once. Sorted order locks mean
/// no deadlock and no error; and the rows must be those of applying the batches one after the
/// other in the order PostgreSQL serialized them (a batch's events are inserted under its
/// orders' locks, so the last event id a batch got orders it against every batch it shared an
/// order with; batches that shared none commute).
#[test]
fn concurrent_batches_on_shared_orders_serialize_without_deadlocks() {
    use proptest::strategy::ValueTree;

    let Some(db) = pg::database("concurrent batches") else {
        return;
    };
    let mut runner = TestRunner::deterministic();
    let batches: Vec<Vec<Observation>> = (0..48)
        .map(|_| {
            prop::collection::vec(observation(), 1..24)
                .new_tree(&mut runner)
                .unwrap()
                .current()
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (applied, deadlocks) = runtime.block_on(async {
        let client = db.migrated_client().await;
        let mut writers = Vec::new();
        for writer in 0..4 {
            let url = db.url.clone();
            let mine: Vec<(usize, Vec<Observation>)> = batches
                .iter()
                .cloned()
                .enumerate()
                .filter(|(n, _)| n % 4 == writer)
                .collect();
            writers.push(tokio::spawn(async move {
                let mut client = pg::connect(&url).await;
                // Prepared once per connection, as the writer does.
                let statements = Statements::default();
                let mut applied = Vec::new();
                for (n, batch) in mine {
                    let observations: Vec<&Observation> = batch.iter().collect();
                    let tx = client.transaction().await.unwrap();
                    let session = Session::new(&tx, &statements);
                    let outcomes = apply_batch(&session, &observations, &settings(), now(), "test")
                        .await
                        .unwrap_or_else(|e| panic!("batch {n}: {e}"));
                    let last_event: i64 = tx
                        .query_one(
                            "SELECT currval(pg_get_serial_sequence('item_events', 'id'))",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    tx.commit().await.unwrap();
                    applied.push((last_event, n, outcomes));
                }
                applied
            }));
        }
        let mut applied = Vec::new();
        for writer in writers {
            applied.extend(writer.await.unwrap());
        }
        let deadlocks = pg::deadlocks_once_alone(&client).await;
        applied.sort_by_key(|(last_event, _, _)| *last_event);
        (applied, deadlocks)
    });
    assert_eq!(deadlocks, 0);

    let dir = tempfile::tempdir().unwrap();
    let mut conn =
        store::open_for_writing(&dir.path().join("t.db"), std::time::Duration::from_secs(5))
            .unwrap();
    for (_, n, outcomes) in &applied {
        let tx = conn.transaction().unwrap();
        let observations: Vec<&Observation> = batches[*n].iter().collect();
        let expected = store::apply_batch(&tx, &observations, &settings(), now()).unwrap();
        tx.commit().unwrap();
        assert_eq!(outcomes, &expected, "batch {n}'s outcomes");
    }
    let expected = sqlite_rows(&conn);
    let rows = runtime.block_on(async { postgres_rows(&db.client().await).await });
    for ((table, expected), (_, got)) in expected.iter().zip(&rows) {
        if *table == "item_events" {
            // Events of batches that shared no order may interleave; each item's are in order.
            let by_item = |rows: &Vec<Vec<Option<String>>>| {
                let mut rows = rows.clone();
                rows.sort_by(|a, b| a[0].cmp(&b[0])); // stable: keeps each item's id order
                rows
            };
            let (expected, got) = (by_item(expected), by_item(got));
            assert_eq!(got, expected, "rows of {table}");
        } else {
            assert_eq!(got, expected, "rows of {table}");
        }
    }
}

/// One thing the writer can be asked to do, on orders 0–2 (3: an order never seen otherwise).
#[derive(Debug, Clone)]
enum Op {
    Batch(Vec<Observation>),
    Poll {
        order: u8,
        /// When the GET was sent: this many seconds before the op's `now`.
        requested_back_s: i64,
        items: Vec<Observation>,
    },
    NotFound(u8),
    Failed {
        order: u8,
        retry_after_s: Option<i64>,
    },
    Watch(Vec<u8>),
    Expire(Vec<u8>),
    OverdueWarned(Vec<u8>),
    Lease {
        holder: u8,
        ttl_s: i64,
    },
    Release(u8),
    Reject(u8),
    /// Prune everything received before `at(cutoff_ms)`, `batch` rows per step, to the end.
    Prune {
        cutoff_ms: i64,
        batch: usize,
    },
}

/// What an op answered, as text, for comparing.
type Answer = String;

/// A poll's answer for order `n`: some of its two items, each as Musement would list it.
fn poll_items(n: u8) -> impl Strategy<Value = Vec<Observation>> {
    prop::collection::vec((0u8..2, statuses(), 0i64..40, item_facts()), 0..3).prop_map(
        move |listed| {
            let mut seen = HashSet::new();
            listed
                .into_iter()
                .filter(|(k, ..)| seen.insert(*k))
                .map(|(k, status, step, facts)| {
                    let as_of = at(step * 2_500);
                    let mut observation = Observation::bare(
                        item(2 * n + k),
                        order(n),
                        status,
                        Position::Poll { as_of },
                        as_of,
                    );
                    observation.item_facts = facts;
                    observation.raw = format!("{{\"poll\":{n}}}");
                    observation
                })
                .collect()
        },
    )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let orders = || prop::collection::vec(0u8..4, 1..3);
    let op = prop_oneof![
        3 => prop::collection::vec(observation(), 1..12).prop_map(Op::Batch),
        3 => (0u8..3, 0i64..20)
            .prop_flat_map(|(order, requested_back_s)| poll_items(order)
                .prop_map(move |items| Op::Poll { order, requested_back_s, items })),
        1 => (0u8..4).prop_map(Op::NotFound),
        1 => (0u8..4, proptest::option::of((1i64..4).prop_map(|n| n * STEP_S)))
            .prop_map(|(order, retry_after_s)| Op::Failed { order, retry_after_s }),
        1 => orders().prop_map(Op::Watch),
        1 => orders().prop_map(Op::Expire),
        1 => prop::collection::vec(0u8..6, 1..3).prop_map(Op::OverdueWarned),
        1 => (0u8..2, (1i64..4).prop_map(|n| n * STEP_S))
            .prop_map(|(holder, ttl_s)| Op::Lease { holder, ttl_s }),
        1 => (0u8..2).prop_map(Op::Release),
        1 => (0u8..4).prop_map(Op::Reject),
        1 => (0i64..120_000, 1usize..5).prop_map(|(cutoff_ms, batch)| Op::Prune { cutoff_ms, batch }),
    ];
    prop::collection::vec(op, 1..12)
}

/// Seconds between two ops: the skew margin, so that re-poll marks (the margin times a power
/// of two), leases and `Retry-After` waits (multiples of it) fall due exactly at a later op.
const STEP_S: i64 = 5;

/// Op `i`'s clock: after every generated time, [`STEP_S`] apart.
fn op_now(i: usize) -> DateTime<Utc> {
    now() + chrono::Duration::seconds(STEP_S * i as i64)
}

fn failure(op: &Op) -> Option<PollFailure> {
    match op {
        Op::NotFound(n) => Some(PollFailure::NotFound { order: order(*n) }),
        Op::Failed {
            order: n,
            retry_after_s,
        } => Some(PollFailure::Failed {
            order: order(*n),
            error: "HTTP 500".to_owned(),
            retry_after: retry_after_s.map(chrono::Duration::seconds),
            backoff: BackoffPolicy {
                base: chrono::Duration::seconds(30),
                cap: chrono::Duration::hours(1),
            },
            jitter: 0.75,
        }),
        _ => None,
    }
}

fn poll_record(order_n: u8, requested_at: DateTime<Utc>, items: &[Observation]) -> PollRecord {
    PollRecord {
        order: order(order_n),
        requested_at,
        items: items.to_vec(),
    }
}

fn orders_of(list: &[u8]) -> Vec<Uuid> {
    list.iter().map(|n| order(*n)).collect()
}

fn items_of(list: &[u8]) -> Vec<Uuid> {
    list.iter().map(|n| item(*n)).collect()
}

const LEASE: &str = "reconciler";

fn rejected(n: u8, now: DateTime<Utc>) -> RejectedWebhook {
    RejectedWebhook {
        received_at: now,
        peer: format!("127.0.0.{n}"),
        field: "status".to_owned(),
        error: format!("bad status {n}"),
        body: vec![n, 0xff, b'{'],
    }
}

fn sqlite_ops(ops: &[Op]) -> (Vec<Answer>, Rows) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn =
        store::open_for_writing(&dir.path().join("t.db"), std::time::Duration::from_secs(5))
            .unwrap();
    let mut answers = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let now = op_now(i);
        let tx = conn.transaction().unwrap();
        let answer = match op {
            Op::Batch(batch) => {
                let observations: Vec<&Observation> = batch.iter().collect();
                format!(
                    "{:?}",
                    store::apply_batch(&tx, &observations, &settings(), now).unwrap()
                )
            }
            Op::Poll {
                order,
                requested_back_s,
                items,
            } => {
                let requested = now - chrono::Duration::seconds(*requested_back_s);
                format!(
                    "{:?}",
                    store::record_poll(
                        &tx,
                        &poll_record(*order, requested, items),
                        &settings(),
                        now
                    )
                    .unwrap()
                )
            }
            Op::NotFound(_) | Op::Failed { .. } => format!(
                "{:?}",
                store::polls::record_poll_failure(&tx, &failure(op).unwrap(), &settings(), now)
                    .unwrap()
            ),
            Op::Watch(list) => format!(
                "{:?}",
                store::polls::watch(&tx, &orders_of(list), &settings(), now).unwrap()
            ),
            Op::Expire(list) => format!(
                "{:?}",
                store::polls::expire(&tx, &orders_of(list), now).unwrap()
            ),
            Op::OverdueWarned(list) => format!(
                "{:?}",
                store::polls::mark_overdue_warned(&tx, &items_of(list), now).unwrap()
            ),
            Op::Lease { holder, ttl_s } => format!(
                "{:?}",
                store::polls::acquire_lease(
                    &tx,
                    LEASE,
                    &format!("holder-{holder}"),
                    chrono::Duration::seconds(*ttl_s),
                    now
                )
                .unwrap()
            ),
            Op::Release(holder) => format!(
                "{:?}",
                store::polls::release_lease(&tx, LEASE, &format!("holder-{holder}")).unwrap()
            ),
            Op::Reject(n) => format!(
                "{:?}",
                store::record_rejected(&tx, &rejected(*n, now), settings().rejected_keep).unwrap()
            ),
            Op::Prune { cutoff_ms, batch } => {
                let mut cursor = PruneCursor::START;
                let mut steps = Vec::new();
                while !cursor.done() {
                    let step =
                        maintenance::prune_step(&tx, at(*cutoff_ms), cursor, *batch).unwrap();
                    cursor = step.next;
                    steps.push(step);
                }
                format!("{steps:?}")
            }
        };
        tx.commit().unwrap();
        answers.push(answer);
    }
    for now in read_times(ops.len()) {
        answers.push(normalized_reads(
            store::queries::due_orders(&conn, now).unwrap(),
            store::queries::orders_to_poll(&conn, now).unwrap(),
            store::queries::poll_backlog(
                &conn,
                now,
                now + chrono::Duration::minutes(2),
                &[order(0)],
            )
            .unwrap(),
            store::queries::unwarned_overdue(&conn, now).unwrap(),
            store::queries::state_snapshot(&conn, now).unwrap(),
        ));
        for filter in item_filters(now) {
            answers.push(format!(
                "{:?}",
                store::inspect::items(&conn, &filter, now).unwrap()
            ));
        }
        answers.push(format!(
            "{:?} {:?} {:?}",
            store::inspect::status_is_stored(&conn, "OK").unwrap(),
            store::inspect::rejected(&conn, 1).unwrap(),
            store::inspect::rejected(&conn, 10).unwrap()
        ));
        for key in show_keys() {
            answers.push(shown(&key, store::inspect::show(&conn, &key, now)));
        }
        for when in stats_times(now) {
            answers.push(stats_answer(
                store::inspect::stats(&conn, when).unwrap(),
                store::SCHEMA_VERSION,
            ));
        }
    }
    (answers, sqlite_rows(&conn))
}

/// What `orderwatch items` is asked in the differential test: every filter alone, and none.
fn item_filters(now: DateTime<Utc>) -> Vec<store::inspect::ItemFilter> {
    use store::inspect::ItemFilter;
    vec![
        ItemFilter::default(),
        ItemFilter {
            statuses: vec!["PENDING".into(), "ON_HOLD".into()],
            ..ItemFilter::default()
        },
        ItemFilter {
            order: Some(order(1).to_string()),
            ..ItemFilter::default()
        },
        ItemFilter {
            order: Some("not a uuid".into()),
            ..ItemFilter::default()
        },
        ItemFilter {
            changed_since: Some(now - chrono::Duration::seconds(STEP_S * 3)),
            ..ItemFilter::default()
        },
        ItemFilter {
            overdue: true,
            ..ItemFilter::default()
        },
        ItemFilter {
            limit: Some(2),
            ..ItemFilter::default()
        },
        // The API's pages: the first two in arrival order, then the rest after the second.
        ItemFilter {
            arrived_after: Some(0),
            limit: Some(2),
            ..ItemFilter::default()
        },
        ItemFilter {
            arrived_after: Some(2),
            ..ItemFilter::default()
        },
    ]
}

/// What `orderwatch show` is asked in the differential test: every order (3 is never seen
/// otherwise) and item by its UUID, then texts for the prefix rules. The UUIDs differ only in
/// their last characters, so a prefix is unique only while one order or one item is stored
/// ([`show_finds_a_unique_prefix_and_refuses_an_ambiguous_one_on_both_engines`] makes sure).
fn show_keys() -> Vec<String> {
    let item1 = item(1).to_string();
    let order0 = order(0).to_string();
    let mut keys: Vec<String> = (0..4)
        .map(|n| order(n).to_string())
        .chain((0..6).map(|n| item(n).to_string()))
        .collect();
    keys.extend([
        // Case and surrounding space do not matter.
        format!(" {} ", item1.to_uppercase()),
        // Every item; every order.
        item1[..35].to_owned(),
        order0[..34].to_owned(),
        // Items and orders alike; too short to be a prefix; nothing.
        "0000".to_owned(),
        "000".to_owned(),
        "ffff".to_owned(),
        String::new(),
        // Other spellings of a UUID, and one character too many: no stored text starts so.
        item1.replace('-', ""),
        format!("{{{item1}}}"),
        format!("urn:uuid:{item1}"),
        format!("{item1}0"),
        // LIKE's wildcards are characters like any other.
        "0000000_".to_owned(),
        "0000%".to_owned(),
        "00000000-0000-0000-0000-00000000_001".to_owned(),
        "not a uuid".to_owned(),
    ]);
    keys
}

/// `show`'s answer as text: what it shows, or why it shows nothing (a database error fails
/// the test).
fn shown(key: &str, result: Result<store::inspect::Shown, store::inspect::ShowError>) -> Answer {
    use store::inspect::ShowError;
    match result {
        Ok(shown) => format!("{key:?}: {shown:?}"),
        Err(error @ (ShowError::NotFound(_) | ShowError::Ambiguous(_))) => error.to_string(),
        Err(error) => panic!("show {key:?}: {error}"),
    }
}

/// When `stats` is asked besides the read time: also at an hour after the middle of the
/// generated receipt times, so the last hour holds some events and not others.
fn stats_times(now: DateTime<Utc>) -> [DateTime<Utc>; 2] {
    [now, at(50_000) + chrono::Duration::hours(1)]
}

/// `stats`' answer as text; the schema version is each engine's own (checked here), the rest
/// must be equal.
fn stats_answer(stats: store::inspect::Stats, schema_version: i64) -> Answer {
    assert_eq!(stats.schema_version, schema_version, "{stats:?}");
    format!(
        "{:?}",
        store::inspect::Stats {
            schema_version: 0,
            ..stats
        }
    )
}

/// When the read side is asked after the ops: right after, and later (marks, backoffs and
/// re-checks fall due).
fn read_times(ops: usize) -> [DateTime<Utc>; 3] {
    let end = op_now(ops);
    [
        end,
        end + chrono::Duration::hours(1),
        end + chrono::Duration::days(2),
    ]
}

/// The read side's answers as text; lists of orders and items sorted (ties in due time may
/// come in either engine's arrival order).
fn normalized_reads(
    mut due: Vec<store::queries::DueOrder>,
    mut to_poll: Vec<store::queries::DueOrder>,
    backlog: store::queries::PollBacklog,
    mut overdue: Vec<store::queries::OverdueItem>,
    snapshot: store::queries::StateSnapshot,
) -> Answer {
    due.sort_by_key(|d| (d.repoll, d.order));
    to_poll.sort_by_key(|d| (d.repoll, d.order));
    overdue.sort_by_key(|o| o.item);
    format!("due {due:?}; to poll {to_poll:?}; {backlog:?}; overdue {overdue:?}; {snapshot:?}")
}

async fn postgres_ops(client: &mut tokio_postgres::Client, ops: &[Op]) -> (Vec<Answer>, Rows) {
    client
        .batch_execute(
            "TRUNCATE orders, order_items, item_events, leases, rejected_webhooks RESTART IDENTITY",
        )
        .await
        .unwrap();
    let mut answers = Vec::new();
    // Prepared once for every transaction of the run, as the writer's connection keeps them.
    let statements = Statements::default();
    for (i, op) in ops.iter().enumerate() {
        let now = op_now(i);
        let tx = client.transaction().await.unwrap();
        let session = Session::new(&tx, &statements);
        let answer = match op {
            Op::Batch(batch) => {
                let observations: Vec<&Observation> = batch.iter().collect();
                format!(
                    "{:?}",
                    apply_batch(&session, &observations, &settings(), now, "test")
                        .await
                        .unwrap()
                )
            }
            Op::Poll {
                order,
                requested_back_s,
                items,
            } => {
                let requested = now - chrono::Duration::seconds(*requested_back_s);
                format!(
                    "{:?}",
                    pg_polls::record_poll(
                        &session,
                        &poll_record(*order, requested, items),
                        &settings(),
                        now,
                        "test"
                    )
                    .await
                    .unwrap()
                )
            }
            Op::NotFound(_) | Op::Failed { .. } => format!(
                "{:?}",
                pg_polls::record_poll_failure(&session, &failure(op).unwrap(), &settings(), now)
                    .await
                    .unwrap()
            ),
            Op::Watch(list) => format!(
                "{:?}",
                pg_polls::watch(&session, &orders_of(list), &settings(), now)
                    .await
                    .unwrap()
            ),
            Op::Expire(list) => format!(
                "{:?}",
                pg_polls::expire(&session, &orders_of(list), now)
                    .await
                    .unwrap()
            ),
            Op::OverdueWarned(list) => format!(
                "{:?}",
                pg_polls::mark_overdue_warned(&session, &items_of(list), now)
                    .await
                    .unwrap()
            ),
            Op::Lease { holder, ttl_s } => format!(
                "{:?}",
                pg_polls::acquire_lease(
                    &session,
                    LEASE,
                    &format!("holder-{holder}"),
                    chrono::Duration::seconds(*ttl_s),
                    now
                )
                .await
                .unwrap()
            ),
            Op::Release(holder) => format!(
                "{:?}",
                pg_polls::release_lease(&session, LEASE, &format!("holder-{holder}"))
                    .await
                    .unwrap()
            ),
            Op::Reject(n) => format!(
                "{:?}",
                pg_commands::record_rejected(
                    &session,
                    &rejected(*n, now),
                    settings().rejected_keep
                )
                .await
                .unwrap()
            ),
            Op::Prune { cutoff_ms, batch } => {
                let mut cursor = PruneCursor::START;
                let mut steps = Vec::new();
                while !cursor.done() {
                    let step = pg_commands::prune_step(&session, at(*cutoff_ms), cursor, *batch)
                        .await
                        .unwrap();
                    cursor = step.next;
                    steps.push(step);
                }
                format!("{steps:?}")
            }
        };
        tx.commit().await.unwrap();
        answers.push(answer);
    }
    for now in read_times(ops.len()) {
        let soon = now + chrono::Duration::minutes(2);
        answers.push(normalized_reads(
            pg_queries::due_orders(client, now).await.unwrap(),
            pg_queries::orders_to_poll(client, now).await.unwrap(),
            pg_queries::poll_backlog(client, now, soon, &[order(0)])
                .await
                .unwrap(),
            pg_queries::unwarned_overdue(client, now).await.unwrap(),
            pg_queries::state_snapshot(client, now).await.unwrap(),
        ));
        for filter in item_filters(now) {
            answers.push(format!(
                "{:?}",
                pg_inspect::items(client, &filter, now).await.unwrap()
            ));
        }
        answers.push(format!(
            "{:?} {:?} {:?}",
            pg_inspect::status_is_stored(client, "OK").await.unwrap(),
            pg_inspect::rejected(client, 1).await.unwrap(),
            pg_inspect::rejected(client, 10).await.unwrap()
        ));
        for key in show_keys() {
            answers.push(shown(&key, pg_inspect::show(client, &key, now).await));
        }
        for when in stats_times(now) {
            answers.push(stats_answer(
                pg_inspect::stats(client, when).await.unwrap(),
                i64::from(pg_migrate::SCHEMA_VERSION),
            ));
        }
    }
    (answers, postgres_rows(client).await)
}

/// Every command the writer carries out besides webhooks (polls recorded, failed polls,
/// watches, expiry, overdue marks, the lease, rejected webhooks, pruning) interleaved with
/// webhook batches: the same answers and the same rows on both engines, and then the same
/// answers from the read side (due orders, orders to poll, the backlog, overdue items, the
/// `/metrics` snapshot, `items` under each filter, `rejected`, `show` for every UUID and
/// several prefixes, `stats`) at three later times.
#[test]
fn postgres_carries_out_every_command_as_sqlite_does() {
    let Some(db) = pg::database("the differential command test") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = std::sync::Mutex::new(runtime.block_on(db.migrated_client()));
    let mut runner = runner(64);
    runner
        .run(&ops(), |ops| {
            let (expected_answers, expected_rows) = sqlite_ops(&ops);
            let mut client = client.lock().unwrap();
            let (answers, rows) = runtime.block_on(postgres_ops(&mut client, &ops));
            for (i, (got, expected)) in answers.iter().zip(&expected_answers).enumerate() {
                prop_assert_eq!(got, expected, "answer to op {}", i);
            }
            for ((table, expected), (_, got)) in expected_rows.iter().zip(&rows) {
                prop_assert_eq!(got, expected, "rows of {}", table);
            }
            Ok(())
        })
        .unwrap();
}

/// `show` with one order of one item stored: a prefix of either names it, one of both is
/// ambiguous, on both engines alike (the random sequences mostly store several of each, which
/// leaves every prefix ambiguous).
#[test]
fn show_finds_a_unique_prefix_and_refuses_an_ambiguous_one_on_both_engines() {
    use store::inspect::ShowError;

    let Some(db) = pg::database("show's prefixes") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(db.migrated_client());
    let ops = [Op::Batch(vec![Observation::bare(
        item(2),
        order(1),
        Status::parse("PENDING"),
        Position::Webhook {
            version: 1,
            updated: at(0),
        },
        at(0),
    )])];
    let (expected, _) = sqlite_ops(&ops);
    let shows = |key: &str| {
        expected
            .iter()
            .any(|a| a.starts_with(&format!("{key:?}: ")))
    };
    assert!(shows(&item(1).to_string()[..35]), "{expected:#?}");
    assert!(shows(&order(0).to_string()[..34]), "{expected:#?}");
    assert!(
        expected.contains(&ShowError::Ambiguous("0000".into()).to_string()),
        "{expected:#?}"
    );
    let (answers, _) = runtime.block_on(postgres_ops(&mut client, &ops));
    assert_eq!(answers, expected);
}

/// A lease falls free exactly at its expiry on both engines (a boundary the random sequences
/// rarely reach: two holders a lease's length apart).
#[test]
fn a_lease_falls_free_exactly_at_its_expiry_on_both_engines() {
    let Some(db) = pg::database("lease and mark boundaries") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(db.migrated_client());
    let leases = [
        Op::Lease {
            holder: 0,
            ttl_s: 2 * STEP_S,
        },
        Op::Lease {
            holder: 1,
            ttl_s: STEP_S,
        },
        Op::Lease {
            holder: 1,
            ttl_s: STEP_S,
        },
    ];
    let (expected, _) = sqlite_ops(&leases);
    assert!(expected[1].starts_with("Held"), "{expected:?}");
    assert!(expected[2].starts_with("Acquired"), "{expected:?}");
    let (answers, _) = runtime.block_on(postgres_ops(&mut client, &leases));
    assert_eq!(answers, expected);
}

/// The writer's prepared statements belong to its connection, not to a transaction: those
/// prepared in a batch that rolled back serve the next one, which prepares nothing new.
#[test]
fn prepared_statements_outlive_a_rolled_back_batch() {
    let Some(db) = pg::database("prepared statements") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(db.migrated_client());
    let webhook = |item: u64| {
        let body = crate::helpers::webhook(
            &crate::helpers::uuid(1, item),
            &crate::helpers::uuid(2, item),
            1,
            "PENDING",
        );
        Observation::from_webhook(body.as_bytes(), now()).unwrap()
    };
    let statements = Statements::default();
    let items_stored = runtime.block_on(async {
        let tx = client.transaction().await.unwrap();
        let session = Session::new(&tx, &statements);
        apply_batch(&session, &[&webhook(1)], &settings(), now(), "test")
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let prepared = statements.len();
        assert!(prepared >= 5, "{prepared} statements prepared");
        let tx = client.transaction().await.unwrap();
        let session = Session::new(&tx, &statements);
        let outcomes = apply_batch(&session, &[&webhook(2)], &settings(), now(), "test")
            .await
            .unwrap();
        assert_eq!(outcomes, [Outcome::Applied]);
        tx.commit().await.unwrap();
        assert_eq!(
            statements.len(),
            prepared,
            "the second batch prepared again"
        );
        client
            .query_one("SELECT count(*) FROM order_items", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    });
    assert_eq!(items_stored, 1);
}
