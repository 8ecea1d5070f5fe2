//! `store::apply_batch` against `store::apply` one observation at a time: the same
//! observations, in the same order, at the same `now`, on the same stored rows must leave
//! every table identical (every column of `orders`, `order_items` and `item_events`) and give
//! the same outcomes, whether they come as one batch, in random chunks, or one by one.
//!
//! What is generated: three orders of two items each (so a batch holds several observations of
//! one item, several items of one order, and an order's other items decide when it is polled);
//! webhooks with versions 1–4 and times that tie, lead or trail each other and the polls by
//! less and more than the skew margin (duplicates, stale, conflicts, doubts); polls with item
//! facts (vouchers empty or not, an activity date long past, recent or to come, a confirmation
//! time, readable or not) and order facts, any of them missing; a prefix applied one by one
//! before the batch, so the batch meets stored rows (some orders already polled, some after a
//! failed poll, some due only tomorrow); and sometimes an unreadable cell in a stored row
//! (`first_seen_at`, `status`, `vouchers`, `next_poll_at`, `repoll_at`) that the write path must
//! treat as unknown and repair.

use orderwatch::observation::Observation;
use orderwatch::store::{self, Outcome, StoreSettings};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use rusqlite::Connection;
use rusqlite::types::Value;
use tempfile::TempDir;

use crate::helpers::observations::{chunks, item, now, observation, order, runner};

/// An unreadable cell put into a stored row before the batch.
#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    FirstSeen(u8),
    Status(u8),
    /// Voucher URLs that are not a JSON list: unknown to the rule, yet "has vouchers" to the
    /// question whether the order is still polled.
    Vouchers(u8),
    NextPoll(u8),
    RepollAt(u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        1 => (0u8..6).prop_map(Damage::FirstSeen),
        1 => (0u8..6).prop_map(Damage::Status),
        1 => (0u8..6).prop_map(Damage::Vouchers),
        1 => (0u8..3).prop_map(Damage::NextPoll),
        1 => (0u8..3).prop_map(Damage::RepollAt),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    stored: Vec<Observation>,
    /// Orders (bit n: order n) whose last poll succeeded, so that only their items decide
    /// whether they are polled again.
    polled: u8,
    /// Orders whose last poll failed (a webhook then keeps a later `next_poll_at`).
    failing: u8,
    /// Orders due only tomorrow (a webhook keeps that unless an item is unsettled).
    due_later: u8,
    damage: Damage,
    batch: Vec<Observation>,
    /// Where the batch is cut into chunks for the third database.
    cuts: Vec<usize>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(observation(), 0..8),
        0u8..8,
        0u8..8,
        0u8..8,
        damage(),
        prop::collection::vec(observation(), 1..24),
        prop::collection::vec(0usize..24, 0..4),
    )
        .prop_map(
            |(stored, polled, failing, due_later, damage, batch, cuts)| Case {
                stored,
                polled,
                failing,
                due_later,
                damage,
                batch,
                cuts,
            },
        )
}

fn settings() -> StoreSettings {
    StoreSettings::default()
}

/// A database holding `case.stored` (applied one by one, each at its own `received_at`) and
/// its damage.
fn prepared(case: &Case) -> (TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = store::open_for_writing(&dir.path().join("t.db"), std::time::Duration::from_secs(5))
        .unwrap();
    for observation in &case.stored {
        store::apply(&conn, observation, &settings(), observation.received_at).unwrap();
    }
    for n in 0..3u8 {
        let key = order(n).to_string();
        if case.polled & (1 << n) != 0 {
            conn.execute(
                "UPDATE orders SET last_polled_at = '2023-11-14T22:20:00.000Z' WHERE order_uuid = ?1",
                [&key],
            )
            .unwrap();
        }
        if case.due_later & (1 << n) != 0 {
            conn.execute(
                "UPDATE orders SET next_poll_at = '2023-11-15T12:00:00.000Z' WHERE order_uuid = ?1",
                [&key],
            )
            .unwrap();
        }
        if case.failing & (1 << n) != 0 {
            conn.execute(
                "UPDATE orders SET poll_failures = 1, next_poll_at = '2023-11-15T00:00:00.000Z'
                 WHERE order_uuid = ?1",
                [&key],
            )
            .unwrap();
        }
    }
    let (sql, key) = match case.damage {
        Damage::None => return (dir, conn),
        Damage::FirstSeen(n) => (
            "UPDATE order_items SET first_seen_at = 'long ago' WHERE item_uuid = ?1",
            item(n),
        ),
        Damage::Status(n) => (
            "UPDATE order_items SET status = '' WHERE item_uuid = ?1",
            item(n),
        ),
        Damage::Vouchers(n) => (
            "UPDATE order_items SET vouchers = 'not json' WHERE item_uuid = ?1",
            item(n),
        ),
        Damage::NextPoll(n) => (
            "UPDATE orders SET next_poll_at = 'soon' WHERE order_uuid = ?1",
            order(n),
        ),
        Damage::RepollAt(n) => (
            "UPDATE orders SET repoll_at = 'later' WHERE order_uuid = ?1",
            order(n),
        ),
    };
    conn.execute(sql, [key.to_string()]).unwrap();
    (dir, conn)
}

/// Every row of the tables the write path writes, every column.
fn dump(conn: &Connection) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT * FROM orders ORDER BY order_uuid",
        "SELECT * FROM order_items ORDER BY item_uuid",
        "SELECT * FROM item_events ORDER BY id",
    ] {
        let mut statement = conn.prepare(sql).unwrap();
        let columns = statement.column_count();
        let mut result = statement.query([]).unwrap();
        while let Some(row) = result.next().unwrap() {
            rows.push(
                (0..columns)
                    .map(|i| row.get::<_, Value>(i).unwrap())
                    .collect(),
            );
        }
    }
    rows
}

/// Applies `chunks` of the batch, each chunk through `apply_batch` in one transaction.
fn apply_in_chunks(conn: &mut Connection, chunks: &[&[Observation]]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for chunk in chunks {
        let tx = conn.transaction().unwrap();
        let observations: Vec<&Observation> = chunk.iter().collect();
        outcomes.extend(store::apply_batch(&tx, &observations, &settings(), now()).unwrap());
        tx.commit().unwrap();
    }
    outcomes
}

#[test]
fn a_batch_leaves_the_rows_that_applying_it_one_by_one_leaves() {
    let mut runner = runner(128);
    runner
        .run(&cases(), |case| {
            let (_one_dir, mut one_by_one) = prepared(&case);
            let singles: Vec<&[Observation]> =
                case.batch.iter().map(std::slice::from_ref).collect();
            let expected_outcomes = apply_in_chunks(&mut one_by_one, &singles);
            let expected = dump(&one_by_one);

            let (_whole_dir, mut whole) = prepared(&case);
            let outcomes = apply_in_chunks(&mut whole, &[&case.batch]);
            prop_assert_eq!(&outcomes, &expected_outcomes, "outcomes of one batch");
            prop_assert_eq!(dump(&whole), expected.clone(), "rows after one batch");

            let (_chunked_dir, mut chunked) = prepared(&case);
            let outcomes = apply_in_chunks(&mut chunked, &chunks(&case.batch, &case.cuts));
            prop_assert_eq!(&outcomes, &expected_outcomes, "outcomes in chunks");
            prop_assert_eq!(dump(&chunked), expected, "rows after chunks");
            Ok(())
        })
        .unwrap();
}

/// The generator reaches what the batch must get right: several observations of one item, a
/// re-poll mark, an unreadable cell, items of one order in one batch, and both answers to
/// "is this order still polled?" after a batch.
#[test]
fn the_generated_batches_reach_doubts_repairs_and_shared_orders() {
    let mut runner = TestRunner::deterministic();
    let (mut doubts, mut repairs, mut shared) = (0, 0, 0);
    let (mut polled, mut settled) = (0, 0);
    for _ in 0..200 {
        let case = cases().new_tree(&mut runner).unwrap().current();
        let (_dir, mut conn) = prepared(&case);
        let outcomes = apply_in_chunks(&mut conn, &[&case.batch]);
        doubts += usize::from(outcomes.iter().any(|o| o.needs_repoll()));
        repairs += usize::from(!matches!(case.damage, Damage::None));
        let items: std::collections::HashSet<_> = case.batch.iter().map(|o| o.item).collect();
        shared += usize::from(items.len() < case.batch.len());
        let needs_poll: Vec<bool> = conn
            .prepare("SELECT needs_poll FROM orders")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        polled += needs_poll.iter().filter(|&&n| n).count();
        settled += needs_poll.iter().filter(|&&n| !n).count();
    }
    assert!(
        settled > 20,
        "{settled} orders no longer polled after a batch"
    );
    assert!(polled > 20, "{polled} orders still polled after a batch");
    assert!(
        doubts > 20,
        "{doubts} of 200 batches had a doubt or conflict"
    );
    assert!(repairs > 20, "{repairs} of 200 had an unreadable cell");
    assert!(shared > 100, "{shared} of 200 named an item twice");
}
