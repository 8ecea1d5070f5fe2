//! The observations the batch and backend tests draw: three orders of two items each (so a
//! batch holds several observations of one item, several items of one order, and an order's
//! other items decide when it is polled); webhooks with versions 1–4 and times that tie, lead or
//! trail each other and the polls by less and more than the skew margin (duplicates, stale,
//! conflicts, doubts); polls with item facts (vouchers empty or not, an activity date long
//! past, recent or to come, a confirmation time, readable or not) and order facts, any of them
//! missing.

use chrono::{DateTime, Duration, Utc};
use orderwatch::observation::{ItemFacts, Observation, OrderFacts, Position, Status};
use proptest::prelude::*;
use uuid::Uuid;

/// `millis` after a fixed instant (2023-11-14T22:13:20Z).
pub fn at(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap() + Duration::milliseconds(millis)
}

/// Our clock for the batch: after every generated time.
pub fn now() -> DateTime<Utc> {
    at(600_000)
}

/// Order `n` (0–2).
pub fn order(n: u8) -> Uuid {
    Uuid::from_u128(0xA000 + u128::from(n))
}

/// Item `n` (0–5), of order `n / 2`.
pub fn item(n: u8) -> Uuid {
    Uuid::from_u128(0xB000 + u128::from(n))
}

/// Musement's statuses and one it may add.
pub fn statuses() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just("PENDING"),
        Just("OK"),
        Just("KO"),
        Just("REFUNDED"),
        Just("ON_HOLD")
    ]
    .prop_map(Status::parse)
}

fn maybe<T: std::fmt::Debug + Clone>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![Just(None), value.prop_map(Some)]
}

/// A poll's facts about an item, any of them missing.
pub fn item_facts() -> impl Strategy<Value = ItemFacts> {
    (
        maybe(prop_oneof![
            Just(Vec::<String>::new()),
            Just(vec!["https://example.com/v/1".to_owned()])
        ]),
        maybe(Just("product-1".to_owned())),
        maybe(prop_oneof![
            Just("2020-01-01 10:00".to_owned()),
            Just("2023-11-14 10:00".to_owned()),
            Just("2099-01-01 10:00".to_owned())
        ]),
        maybe(prop_oneof![
            Just("P0D".to_owned()),
            Just("PT30M".to_owned()),
            Just("soon".to_owned())
        ]),
    )
        .prop_map(
            |(vouchers, product_id, product_date, max_confirmation_time)| ItemFacts {
                vouchers,
                product_id,
                product_title: None,
                product_date,
                max_confirmation_time,
            },
        )
}

fn order_facts() -> impl Strategy<Value = OrderFacts> {
    (
        maybe(Just("1234".to_owned())),
        maybe(1i64..4),
        maybe(prop_oneof![
            Just("PENDING".to_owned()),
            Just("OK".to_owned())
        ]),
        maybe(Just("MUS0738876".to_owned())),
        0i64..100_000,
    )
        .prop_map(|(id, version, status, identifier, time)| OrderFacts {
            id,
            version,
            created: version.map(|_| at(0)),
            updated: version.map(|v| at(time + v)),
            status,
            identifier,
        })
}

/// One observation: which item (and its order), webhook or poll, status, time, facts.
pub fn observation() -> impl Strategy<Value = Observation> {
    let position = prop_oneof![
        (1i64..5, 0i64..40).prop_map(|(version, step)| Position::Webhook {
            version,
            updated: at(step * 2_500),
        }),
        (0i64..40).prop_map(|step| Position::Poll {
            as_of: at(step * 2_500),
        }),
    ];
    (
        0u8..6,
        statuses(),
        position,
        item_facts(),
        order_facts(),
        0i64..100_000,
    )
        .prop_map(|(n, status, position, facts, order_facts, received)| {
            let mut observation =
                Observation::bare(item(n), order(n / 2), status, position, at(received));
            observation.raw = format!("{{\"n\":{n}}}");
            match observation.position {
                Position::Poll { .. } => {
                    observation.item_facts = facts;
                    observation.order_facts = OrderFacts {
                        id: None,
                        version: None,
                        created: None,
                        updated: None,
                        ..order_facts
                    };
                }
                Position::Webhook { .. } => {
                    observation.item_created = Some(at(0));
                    observation.order_facts = OrderFacts {
                        status: None,
                        identifier: None,
                        ..order_facts
                    };
                }
            }
            observation
        })
}

/// `batch` cut at `cuts` (each taken modulo its length) into consecutive, non-empty chunks.
pub fn chunks<'a>(batch: &'a [Observation], cuts: &[usize]) -> Vec<&'a [Observation]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % batch.len()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([batch.len()]) {
        if cut > start {
            chunks.push(&batch[start..cut]);
            start = cut;
        }
    }
    chunks
}

/// A property test runner for `cases` cases (`PROPTEST_CASES` overrides it), without
/// persisted failures.
pub fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, TestRunner};
    TestRunner::new(Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    })
}
