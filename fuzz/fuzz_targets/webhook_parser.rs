//! Fuzzes the webhook parser, `Observation::from_webhook`, with arbitrary bytes.
//!
//! Properties (a failed `assert!` is a finding, like a panic):
//! - it never panics, whatever the bytes (it runs on every request before anything is stored);
//! - what it accepts is what the store expects: the raw body kept verbatim, the receive time
//!   ours, versions non-negative, `order_id` all digits, a webhook position;
//! - the ordering rule accepts what it produced (`decide` on a new item: `applied`, its status,
//!   its version, a time at most `max_future` after receipt);
//! - the Musement time the store will write as the row's `as_of` reads back through the store's
//!   own `to_db_text` / `from_db_text` (millisecond precision): if it did not, the item row could
//!   be written once and never read again, and every later update of that item would fail.
#![no_main]

use chrono::{DateTime, Timelike, Utc};
use libfuzzer_sys::fuzz_target;
use orderwatch::clock::{from_db_text, to_db_text};
use orderwatch::observation::{Observation, Position};
use orderwatch::store::rule::musement_time;
use orderwatch::store::{Outcome, Rules, decide};

fuzz_target!(|data: &[u8]| {
    // Our clock is not attacker-controlled: a fixed, realistic receive time.
    let now = DateTime::<Utc>::from_timestamp(1_750_000_000, 123_000_000).expect("in range");
    let Ok(observation) = Observation::from_webhook(data, now) else {
        return;
    };
    assert_eq!(
        observation.raw.as_bytes(),
        data,
        "the body is kept verbatim"
    );
    assert_eq!(observation.received_at, now);
    let Position::Webhook { version, .. } = observation.position else {
        panic!("a webhook parsed into a poll position");
    };
    assert!(version >= 0, "negative item version {version}");
    let facts = &observation.order_facts;
    assert!(
        facts.version.is_some_and(|v| v >= 0),
        "order version {facts:?}"
    );
    assert!(
        facts
            .id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())),
        "order_id {facts:?}"
    );
    assert!(!observation.status.as_str().is_empty(), "empty status");

    let rules = Rules::default();
    let decision = decide(None, &observation, &rules);
    assert_eq!(decision.outcome, Outcome::Applied);
    assert_eq!(decision.state.status, observation.status);
    assert_eq!(decision.state.item_version, Some(version));
    assert_eq!(decision.state.status_version, Some(version));
    assert!(decision.state.as_of <= now + rules.max_future);

    let as_of = musement_time(&observation, &rules);
    assert_eq!(as_of, decision.state.as_of);
    let stored = to_db_text(as_of);
    let millis = as_of
        .with_nanosecond(as_of.nanosecond() / 1_000_000 * 1_000_000)
        .expect("truncation to milliseconds");
    assert_eq!(
        from_db_text(&stored).ok(),
        Some(millis),
        "as_of {as_of:?} is stored as {stored:?}, which the store cannot read back"
    );
});
