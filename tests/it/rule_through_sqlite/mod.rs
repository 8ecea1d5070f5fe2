//! Property tests of the ordering rule through the store, on a real SQLite file.
//!
//! `ordering_props` checks the pure rule; this module checks what ends up in the database. Every
//! webhook goes through `orderwatch::store::apply` and every poll, with its item facts (vouchers,
//! product, `max_confirmation_time`) and order facts (status, identifier), through
//! `orderwatch::store::record_poll`, each in its own transaction, as the writer runs them. After
//! every step the whole `order_items` row, the order's fact columns and the new `item_events`
//! row are read back.
//!
//! What is generated (times in milliseconds, often exactly at or one millisecond past the skew
//! margin or twice it):
//! - `skew_margin` of 5 s (mostly), 1 s, 0 s, or a multiple of 0.5 s up to 10 s;
//! - a true history: versions whose times rise (ties; gaps at, just past and twice the margin),
//!   each version's webhook delivered 0 to 3 times (dropped, duplicated), received up to 2 s
//!   before its time (our clock behind Musement's) or up to 2 h after (late retries);
//! - twists on single webhook copies: another status for the same version (a same-version
//!   conflict), a time moved back (within and beyond the margin), a time past the one-hour
//!   far-future clamp (exactly at it, just past it, days, year 9999), a bogus version (`+1000`,
//!   `i64::MAX`);
//! - polls that read the truth at some time and answer with a `Date` off by a clock skew that
//!   starts anywhere within ±2 × margin (at and beyond it) and drifts from poll to poll, some far
//!   in the future; each carries item facts and order facts, any of them missing;
//! - the deliveries in any order, polls interleaved with webhooks. Our clock (`now`,
//!   `received_at`) is each delivery's own, so it goes backwards whenever the order does.
//!
//! What is checked:
//! - after every step, the fuzzer's invariants (fuzz/fuzz_targets/ordering_rule.rs) on the rows
//!   read back (`invariants.rs`): a new item is applied; `as_of` never goes back; a poll never
//!   moves `item_version`, a webhook only raises it (to at least its own version) except by the
//!   bogus-version recovery; only a poll that is not stale writes item facts, later than the
//!   stored ones; stale, duplicate and conflict leave the row byte for byte; doubtful changes
//!   only `item_version` (with `item_updated`); applied stores the observed status, confirmed
//!   keeps it; the order's re-poll mark is set by a conflict or a doubt, kept by other
//!   webhooks, and cleared only by a poll in no doubt sent at or after it;
//! - after every step, the outcome, the whole item row (every column), the order's fact columns
//!   and the event row equal what the model (`model.rs`), written here from the README's table
//!   and not by calling `decide`, predicts;
//! - truthful webhooks alone: the whole row (all but our own clock's `first_seen_at`,
//!   `changed_at`, `updated_at`) and the order's facts are the same in three delivery orders;
//! - one piece of evidence more than 2 × margin newer than everything else (a poll, or a webhook
//!   with a version above every other) decides the row wherever it comes in the order.
//!
//! Cases: 64 per property by default, a few seconds in all. A deep run:
//! `PROPTEST_CASES=5000 cargo test --locked --test it rule_through_sqlite` (a failure prints the
//! minimal case, one delivery per line).

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rusqlite::types::Value;

use self::database::{Final, OUR_CLOCK, Row, Store};
use self::delivery::{Delivery, MAX_POLLS, text};
use self::generate::{case, evidence, evidence_for};
use self::invariants::without;

mod database;
mod delivery;
mod generate;
mod invariants;
mod model;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 64;

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    TestRunner::new(ProptestConfig {
        cases,
        // Keep the tree clean: a failure is reported with its minimal case instead of a file.
        failure_persistence: None,
        // Bound the search for a minimal case so a failure still reports within a minute.
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    })
}

/// Runs `property` over `strategy` against one database; panics with the minimal failing case.
fn check<S: Strategy>(
    strategy: S,
    property: impl Fn(&mut Store, S::Value) -> Result<(), TestCaseError>,
) {
    let store = RefCell::new(Store::new());
    if let Err(error) = runner().run(&strategy, |value| property(&mut store.borrow_mut(), value)) {
        panic!("{error}");
    }
}

/// Everything at once: twisted webhooks and skewed, drifting, far-future polls in any order.
/// The store agrees with the model and keeps the invariants at every step.
#[test]
fn every_step_matches_the_model_and_keeps_the_invariants() {
    check(case(true, MAX_POLLS), |store, case| {
        store.replay(&case, &case.deliveries)?;
        store.replay(&case, &case.reordered)?;
        Ok(())
    });
}

/// Truthful webhooks alone, dropped, duplicated, reordered, late: the row is the same whatever
/// the order, but for the columns that hold our own clock.
#[test]
fn truthful_webhooks_give_the_same_row_in_every_order() {
    check(case(false, 0), |store, case| {
        let reversed: Vec<Delivery> = case.deliveries.iter().rev().cloned().collect();
        let mut finals = Vec::new();
        for order in [&case.deliveries, &case.reordered, &reversed] {
            if order.is_empty() {
                return Ok(());
            }
            let Final { item, order } = store.replay(&case, order)?;
            finals.push((
                without(
                    &item,
                    &[&OUR_CLOCK[..], &["item_uuid", "order_uuid"]].concat(),
                ),
                without(&order, &["first_seen_at"]),
            ));
        }
        for other in &finals[1..] {
            prop_assert_eq!(
                &finals[0],
                other,
                "the delivery order changed the row\n{:?}",
                case
            );
        }
        Ok(())
    });
}

/// One piece of evidence more than 2 × margin newer than all others decides the row wherever
/// it comes: the status and `as_of` (and, from a webhook with the highest version, the
/// versions; from a poll, its item and order facts).
#[test]
fn evidence_clearly_newer_than_everything_decides_the_row() {
    check(
        (case(true, MAX_POLLS), evidence()),
        |store, (case, draw)| {
            let evidence = evidence_for(&case, &draw);
            let middle = draw.position.index(case.deliveries.len() + 1);
            for position in [0, case.deliveries.len(), middle] {
                let mut deliveries = case.deliveries.clone();
                deliveries.insert(position, evidence.clone());
                let Final { item, order } = store.replay(&case, &deliveries)?;
                let mismatch = evidence_mismatch(&evidence, &item, &order);
                prop_assert!(
                    mismatch.is_empty(),
                    "with the evidence at {}: {}\nevidence {:?}\nrow {:?}\norder {:?}\n{:?}",
                    position,
                    mismatch.join(", "),
                    evidence,
                    item,
                    order,
                    case
                );
            }
            Ok(())
        },
    );
}

/// The columns of the final rows that do not say what `evidence` said.
fn evidence_mismatch(evidence: &Delivery, item: &Row, order: &Row) -> Vec<String> {
    let time = Value::Text(text(evidence.time_ms()));
    let mut expected = vec![
        ("status", Value::Text(evidence.status().to_string())),
        ("as_of", time.clone()),
    ];
    let mut expected_order = Vec::new();
    let present = |value: &Option<String>| value.clone().map(Value::Text);
    match evidence {
        Delivery::Webhook(webhook) => {
            expected.extend([
                ("status_version", Value::Integer(webhook.version)),
                ("item_version", Value::Integer(webhook.version)),
                ("as_of_source", Value::Text("webhook".into())),
                ("source", Value::Text("webhook".into())),
                ("item_updated", time),
            ]);
            expected_order.extend([
                ("order_version", Value::Integer(webhook.version)),
                ("order_updated", Value::Text(text(webhook.updated_ms))),
            ]);
        }
        Delivery::Poll(poll) => {
            let vouchers = serde_json::to_string(&poll.facts.vouchers).expect("JSON");
            expected.extend([
                ("as_of_source", Value::Text("poll".into())),
                ("facts_as_of", time.clone()),
                ("vouchers", Value::Text(vouchers)),
            ]);
            let facts = &poll.facts;
            for (column, value) in [
                ("product_id", &facts.product_id),
                ("product_title", &facts.product_title),
                ("product_date", &facts.product_date),
                ("max_confirmation_time", &facts.max_confirmation_time),
            ] {
                expected.extend(present(value).map(|value| (column, value)));
            }
            for (column, value) in [
                ("order_status", &poll.order_status),
                ("identifier", &poll.identifier),
            ] {
                expected_order.extend(present(value).map(|value| (column, value)));
            }
            if poll.order_status.is_some() || poll.identifier.is_some() {
                expected_order.push(("order_polled_as_of", time));
            }
        }
    }
    let mut mismatch = Vec::new();
    for (row, columns) in [(item, expected), (order, expected_order)] {
        for (column, value) in columns {
            if row.get(column) != Some(&value) {
                mismatch.push(format!("{column} is {:?}, not {value:?}", row.get(column)));
            }
        }
    }
    mismatch
}
