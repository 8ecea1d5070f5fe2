//! Fuzzes the ordering rule, `orderwatch::store::decide`, over arbitrary sequences of webhook and
//! poll observations of one item, from a new item or from an arbitrary stored row.
//!
//! The inputs cover what `decide` can really be given, and more: any version (negative too),
//! any webhook `order_item_updated` chrono can represent (the parser passes far past and far
//! future through; the rule clamps the future), statuses from a small pool so that "same" and
//! "other" status both happen often, times mostly close together so the skew margin matters,
//! `skew_margin` anywhere in its allowed 0 s ..= 1 h. Our receive clock, a poll's `Date` and a
//! stored `as_of` are kept within years 0000 ..= 9999, the range the HTTP date and the store's
//! RFC 3339 text can hold.
//!
//! Properties checked at every step (a failed `assert!` is a finding, like a panic):
//! - `decide` never panics;
//! - `item_version` never decreases, and never moves on a poll, except that a webhook with a
//!   lower version whose time leads the stored `as_of` by more than the margin is `applied`
//!   and brings it down to its own (the recovery from a bogus version);
//! - after a webhook, `item_version` is at least that webhook's version, or exactly it after
//!   that recovery;
//! - only a poll that is not `stale` writes item facts, and `facts_as_of` then becomes its
//!   time, later than before; nothing else moves `facts_as_of`;
//! - `stale`, `duplicate` and `conflict` leave the state exactly as it was;
//! - `doubtful` changes nothing but `item_version` (with `item_updated`), a poll's facts and an
//!   unknown `item_created`;
//! - `applied` stores the observed status, `confirmed` keeps the stored one;
//! - `as_of` never goes backwards;
//! - a new item is always `applied`.
#![no_main]

use arbitrary::Arbitrary;
use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use orderwatch::observation::{ItemFacts, Observation, Position, Source, Status};
use orderwatch::store::{ItemState, Outcome, Rules, decide};
use uuid::Uuid;

/// 2025-06-15T16:26:40Z: the centre of the "close together" times.
const BASE_SECONDS: i64 = 1_750_000_000;
/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const YEAR_0000: i64 = -62_167_219_200;
const YEAR_9999_END: i64 = 253_402_300_799;

#[derive(Debug, Arbitrary)]
struct Case {
    skew_margin_ms: u32,
    initial: Option<StoredRow>,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct StoredRow {
    status: u8,
    status_version: Option<i64>,
    item_version: Option<i64>,
    as_of: Time,
    as_of_from_poll: bool,
    set_by_poll: bool,
    facts_as_of: Option<Time>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Webhook {
        version: Version,
        status: u8,
        updated: Time,
        received: Time,
    },
    Poll {
        status: u8,
        date: Time,
    },
}

/// Versions mostly small, so equal and neighbouring versions are common.
#[derive(Debug, Arbitrary)]
enum Version {
    Small(u8),
    Any(i64),
}

impl Version {
    fn value(&self) -> i64 {
        match self {
            Self::Small(v) => i64::from(*v % 16),
            Self::Any(v) => *v,
        }
    }
}

/// A time near `BASE_SECONDS` (milliseconds off, within about ±24 days) or anywhere.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Time {
    Near(i32),
    Far(i64),
}

impl Time {
    /// Any time chrono can represent.
    fn unbounded(self) -> DateTime<Utc> {
        match self {
            Self::Near(ms) => base() + Duration::milliseconds(i64::from(ms)),
            Self::Far(seconds) => DateTime::from_timestamp(seconds, 0).unwrap_or(if seconds < 0 {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            }),
        }
    }

    /// A time in years 0000 ..= 9999 (a clock reading, an HTTP date, a stored `as_of`).
    fn four_digit_year(self) -> DateTime<Utc> {
        match self {
            Self::Near(_) => self.unbounded(),
            Self::Far(seconds) => {
                let span = YEAR_9999_END - YEAR_0000 + 1;
                DateTime::from_timestamp(YEAR_0000 + seconds.rem_euclid(span), 0)
                    .expect("years 0000 ..= 9999 are representable")
            }
        }
    }
}

fn base() -> DateTime<Utc> {
    DateTime::from_timestamp(BASE_SECONDS, 0).expect("in range")
}

fn status(pick: u8) -> Status {
    match pick % 8 {
        0 => Status::Pending,
        1 => Status::Ok,
        2 => Status::Ko,
        3 => Status::RefundStarted,
        4 => Status::Refunded,
        5 => Status::CancellationError,
        6 => Status::Other("ON_HOLD".into()),
        _ => Status::Other(String::new()),
    }
}

fn source(poll: bool) -> Source {
    if poll { Source::Poll } else { Source::Webhook }
}

fn observation(step: &Step) -> Observation {
    let (status_pick, position, received_at) = match step {
        Step::Webhook {
            version,
            status,
            updated,
            received,
        } => (
            *status,
            Position::Webhook {
                version: version.value(),
                updated: updated.unbounded(),
            },
            received.four_digit_year(),
        ),
        Step::Poll { status, date } => (
            *status,
            Position::Poll {
                as_of: date.four_digit_year(),
            },
            date.four_digit_year(),
        ),
    };
    Observation::bare(
        Uuid::nil(),
        Uuid::nil(),
        status(status_pick),
        position,
        received_at,
    )
}

fuzz_target!(|case: Case| {
    let rules = Rules {
        skew_margin: Duration::milliseconds(i64::from(case.skew_margin_ms % 3_600_001)),
        ..Rules::default()
    };
    let mut state = case.initial.as_ref().map(|row| ItemState {
        status: status(row.status),
        status_version: row.status_version,
        item_version: row.item_version,
        as_of: row.as_of.four_digit_year(),
        as_of_source: source(row.as_of_from_poll),
        source: source(row.set_by_poll),
        facts_as_of: row.facts_as_of.map(Time::four_digit_year),
        facts: ItemFacts::default(),
        item_created: None,
        item_updated: None,
    });
    for step in &case.steps {
        let observation = observation(step);
        let decision = decide(state.as_ref(), &observation, &rules);
        let new = &decision.state;
        let Some(old) = &state else {
            assert_eq!(decision.outcome, Outcome::Applied, "a new item");
            assert_eq!(new.status, observation.status);
            assert_eq!(new.item_version, observation.position.version());
            state = Some(decision.state);
            continue;
        };
        let time = orderwatch::store::rule::musement_time(&observation, &rules);
        let recovered = match observation.position {
            Position::Webhook { version, .. } => {
                old.item_version.is_some_and(|seen| version < seen)
                    && decision.outcome == Outcome::Applied
            }
            Position::Poll { .. } => false,
        };
        if recovered {
            assert!(
                time > old.as_of + rules.skew_margin,
                "a lower version was applied without leading as_of by the margin: {observation:?}"
            );
            assert_eq!(new.item_version, observation.position.version());
        } else if let Some(before) = old.item_version {
            assert!(
                new.item_version.is_some_and(|after| after >= before),
                "item_version went from {before} to {:?} on {observation:?}",
                new.item_version
            );
        }
        match observation.position {
            Position::Webhook { version, .. } => assert!(
                new.item_version.is_some_and(|after| after >= version),
                "item_version {:?} below the webhook's {version}",
                new.item_version
            ),
            Position::Poll { .. } => assert_eq!(
                new.item_version, old.item_version,
                "a poll moved item_version"
            ),
        }
        if decision.writes_facts {
            assert!(
                observation.position.source() == Source::Poll && decision.outcome != Outcome::Stale,
                "{:?} wrote facts on {observation:?}",
                decision.outcome
            );
            assert_eq!(new.facts_as_of, Some(time));
            assert!(old.facts_as_of.is_none_or(|before| time > before));
        } else {
            assert_eq!(new.facts_as_of, old.facts_as_of, "facts_as_of moved");
        }
        assert!(
            new.as_of >= old.as_of,
            "as_of went back from {} to {}",
            old.as_of,
            new.as_of
        );
        match decision.outcome {
            Outcome::Stale | Outcome::Duplicate | Outcome::Conflict => assert_eq!(
                new, old,
                "{:?} changed the state on {observation:?}",
                decision.outcome
            ),
            // What a doubt records: a webhook's version with its `order_item_updated`, a
            // poll's facts (checked above), a creation time when none was known.
            Outcome::Doubtful => assert_eq!(
                &ItemState {
                    item_version: new.item_version,
                    item_updated: new.item_updated,
                    item_created: old.item_created.or(new.item_created),
                    facts: new.facts.clone(),
                    facts_as_of: new.facts_as_of,
                    ..old.clone()
                },
                new,
                "doubtful changed more than item_version, item_updated and the facts"
            ),
            Outcome::Applied => assert_eq!(new.status, observation.status),
            Outcome::Confirmed => assert_eq!(new.status, old.status),
        }
        state = Some(decision.state);
    }
});
