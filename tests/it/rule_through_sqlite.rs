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
//!   read back ([`check_invariants`]): a new item is applied; `as_of` never goes back; a poll never
//!   moves `item_version`, a webhook only raises it (to at least its own version) except by the
//!   bogus-version recovery; only an applied or confirmed poll writes item facts, later than the
//!   stored ones; stale, duplicate and conflict leave the row byte for byte; doubtful changes
//!   only `item_version`; applied stores the observed status, confirmed keeps it; conflict and
//!   doubt leave a re-poll mark;
//! - after every step, the outcome, the whole item row (every column), the order's fact columns
//!   and the event row equal what [`Model`], written here from the README's table and not by
//!   calling `decide`, predicts;
//! - truthful webhooks alone: the whole row (all but our own clock's `first_seen_at`,
//!   `changed_at`, `updated_at`) and the order's facts are the same in three delivery orders;
//! - one piece of evidence more than 2 × margin newer than everything else (a poll, or a webhook
//!   with a version above every other) decides the row wherever it comes in the order.
//!
//! Cases: 64 per property by default, a few seconds in all. A deep run:
//! `PROPTEST_CASES=5000 cargo test --locked --test it rule_through_sqlite` (a failure prints the
//! minimal case, one delivery per line).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::{from_db_text, to_db_text};
use orderwatch::observation::{Observation, OrderFacts, Position, Status};
use orderwatch::store::{self, Outcome, PollRecord, PolledItemFacts, Rules, StoreSettings};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

/// Time 0 of every case, in seconds since the Unix epoch.
const EPOCH_SECONDS: i64 = 1_700_000_000;
/// The far-future clamp: a Musement time counts for at most this long after we received it
/// (README "The ordering rule"). The store under test is configured with it too.
const MAX_FUTURE_MS: i64 = 3_600_000;
/// 9999-12-31T23:59:59Z, the latest time the store's text holds.
const YEAR_9999_MS: i64 = (253_402_300_799 - EPOCH_SECONDS) * 1000;
/// `order_item_created` and `order_created` of every case.
const CREATED_MS: i64 = -60_000;
/// Most versions in a history, webhook copies per version, polls per case.
const MAX_VERSIONS: usize = 8;
const MAX_COPIES: usize = 3;
const MAX_POLLS: usize = 6;
/// Sort keys drawn per case: one per possible delivery, plus the evidence.
const MAX_DELIVERIES: usize = MAX_VERSIONS * MAX_COPIES + MAX_POLLS + 1;
/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 64;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(EPOCH_SECONDS * 1000 + ms).expect("time in range")
}

fn text(ms: i64) -> String {
    to_db_text(at(ms))
}

// ---------------------------------------------------------------------------------------------
// What is delivered
// ---------------------------------------------------------------------------------------------

/// A webhook as delivered; its order facts follow from it ([`Webhook::order_facts`]).
#[derive(Clone)]
struct Webhook {
    version: i64,
    status: Status,
    /// `order_item_updated` (and `order_updated`), as sent.
    updated_ms: i64,
    /// Our clock when it arrived (and when it was committed).
    received_ms: i64,
}

/// A poll of the item's order as delivered.
#[derive(Clone)]
struct Poll {
    /// Our clock when the GET was sent.
    requested_ms: i64,
    /// The response's `Date`, as sent.
    date_ms: i64,
    /// Our clock when the answer arrived (and was committed).
    received_ms: i64,
    status: Status,
    facts: PolledItemFacts,
    order_status: Option<String>,
    identifier: Option<String>,
}

#[derive(Clone)]
enum Delivery {
    Webhook(Webhook),
    Poll(Poll),
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webhook(w) => write!(
                f,
                "webhook v{} {} updated={} received={}",
                w.version, w.status, w.updated_ms, w.received_ms
            ),
            Self::Poll(p) => write!(
                f,
                "poll {} date={} requested={} received={} vouchers={:?} product=({:?} {:?} {:?} {:?}) order=({:?} {:?})",
                p.status,
                p.date_ms,
                p.requested_ms,
                p.received_ms,
                p.facts.vouchers,
                p.facts.product_id,
                p.facts.product_title,
                p.facts.product_date,
                p.facts.max_confirmation_time,
                p.order_status,
                p.identifier
            ),
        }
    }
}

impl Webhook {
    fn order_facts(&self) -> OrderFacts {
        OrderFacts {
            id: Some("4711".into()),
            version: Some(self.version),
            created: Some(at(CREATED_MS)),
            updated: Some(at(self.updated_ms)),
            status: None,
            identifier: None,
        }
    }
}

impl Delivery {
    fn received_ms(&self) -> i64 {
        match self {
            Self::Webhook(w) => w.received_ms,
            Self::Poll(p) => p.received_ms,
        }
    }

    /// The Musement time it speaks for: as sent, at most [`MAX_FUTURE_MS`] after we received it.
    fn time_ms(&self) -> i64 {
        let sent = match self {
            Self::Webhook(w) => w.updated_ms,
            Self::Poll(p) => p.date_ms,
        };
        sent.min(self.received_ms() + MAX_FUTURE_MS)
    }

    fn status(&self) -> &Status {
        match self {
            Self::Webhook(w) => &w.status,
            Self::Poll(p) => &p.status,
        }
    }

    fn version(&self) -> Option<i64> {
        match self {
            Self::Webhook(w) => Some(w.version),
            Self::Poll(_) => None,
        }
    }

    /// The event log's payload: the delivery itself, so each event row names its delivery.
    fn raw(&self) -> String {
        format!("{self:?}")
    }

    fn observation(&self, item: Uuid, order: Uuid) -> Observation {
        let (position, item_created, order_facts) = match self {
            Self::Webhook(w) => (
                Position::Webhook {
                    version: w.version,
                    updated: at(w.updated_ms),
                },
                Some(at(CREATED_MS)),
                w.order_facts(),
            ),
            Self::Poll(p) => (
                Position::Poll {
                    as_of: at(p.date_ms),
                },
                None,
                OrderFacts {
                    status: p.order_status.clone(),
                    identifier: p.identifier.clone(),
                    ..OrderFacts::default()
                },
            ),
        };
        Observation {
            item,
            order,
            status: self.status().clone(),
            position,
            item_created,
            order_facts,
            received_at: at(self.received_ms()),
            raw: self.raw(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

fn any_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Pending),
        Just(Status::Ok),
        Just(Status::Ko),
        Just(Status::RefundStarted),
        Just(Status::Refunded),
        Just(Status::CancellationError),
        Just(Status::Other("ON_HOLD".into())),
    ]
}

fn margin_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(5_000i64),
        1 => Just(1_000i64),
        1 => Just(0i64),
        1 => (1i64..=20).prop_map(|halves| halves * 500),
    ]
}

/// A step in time, mostly measured in skew margins so the boundaries are hit exactly.
#[derive(Debug, Clone, Copy)]
enum Gap {
    Zero,
    Margin,
    PastMargin,
    TwiceMargin,
    PastTwice,
    Ms(i64),
}

impl Gap {
    fn ms(self, margin: i64) -> i64 {
        match self {
            Self::Zero => 0,
            Self::Margin => margin,
            Self::PastMargin => margin + 1,
            Self::TwiceMargin => 2 * margin,
            Self::PastTwice => 2 * margin + 1,
            Self::Ms(ms) => ms,
        }
    }
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        Just(Gap::Zero),
        Just(Gap::Margin),
        Just(Gap::PastMargin),
        Just(Gap::TwiceMargin),
        Just(Gap::PastTwice),
        (1i64..=12_000).prop_map(Gap::Ms),
    ]
}

/// A Musement time past the far-future clamp, relative to when it was received.
#[derive(Debug, Clone, Copy)]
enum FarFuture {
    AtClamp,
    PastClamp(i64),
    Days(i64),
    Year9999,
}

impl FarFuture {
    fn sent_ms(self, received_ms: i64) -> i64 {
        match self {
            Self::AtClamp => received_ms + MAX_FUTURE_MS,
            Self::PastClamp(ms) => received_ms + MAX_FUTURE_MS + ms,
            Self::Days(days) => received_ms + days * 86_400_000,
            Self::Year9999 => YEAR_9999_MS,
        }
    }
}

fn far_future() -> impl Strategy<Value = FarFuture> {
    prop_oneof![
        Just(FarFuture::AtClamp),
        (1i64..=2_000).prop_map(FarFuture::PastClamp),
        (1i64..=3_650).prop_map(FarFuture::Days),
        Just(FarFuture::Year9999),
    ]
}

/// What is wrong with one webhook copy, if anything.
#[derive(Debug, Clone)]
enum Twist {
    Truthful,
    /// Another status for the same version: a same-version conflict (or a plain duplicate).
    Status(Status),
    /// Its time moved back by this much: times no longer rise with versions.
    Earlier(Gap),
    /// Its time far in the future, past the clamp.
    FarFuture(FarFuture),
    /// Its version 1000 higher, or `i64::MAX`.
    Version(bool),
}

fn twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        8 => Just(Twist::Truthful),
        1 => any_status().prop_map(Twist::Status),
        1 => gap().prop_map(Twist::Earlier),
        1 => far_future().prop_map(Twist::FarFuture),
        1 => any::<bool>().prop_map(Twist::Version),
    ]
}

/// How long after its time a webhook copy is received: our clock up to 2 s behind, seconds,
/// or a retry up to 2 h later.
fn delay_ms() -> impl Strategy<Value = i64> {
    prop_oneof![-2_000i64..=0, 0i64..=10_000, 0i64..=7_200_000]
}

/// One version of the true history as drawn: its gap from the previous one, its status, and
/// each delivered copy's delay and twist.
type VersionDraw = (Gap, Status, Vec<(i64, Twist)>);

fn versions(twists: bool) -> impl Strategy<Value = Vec<VersionDraw>> {
    let twist = if twists {
        twist().boxed()
    } else {
        Just(Twist::Truthful).boxed()
    };
    prop::collection::vec(
        (
            gap(),
            any_status(),
            prop::collection::vec((delay_ms(), twist), 0..=MAX_COPIES),
        ),
        1..=MAX_VERSIONS,
    )
}

/// When a poll reads Musement, drawn independently of the history and resolved against it.
#[derive(Debug, Clone)]
enum ReadAt {
    /// Within a second of some version's time, not before the first.
    NearVersion(prop::sample::Index, i64),
    /// Anywhere from the first version's time to a minute after the last, in millionths.
    Anywhere(i64),
}

fn read_at() -> impl Strategy<Value = ReadAt> {
    prop_oneof![
        (any::<prop::sample::Index>(), -1000i64..=1000)
            .prop_map(|(index, offset)| ReadAt::NearVersion(index, offset)),
        (0i64..=1_000_000).prop_map(ReadAt::Anywhere),
    ]
}

/// A poll as drawn; see [`build`].
#[derive(Debug, Clone)]
struct PollDraw {
    read: ReadAt,
    /// How much older the data is than the `Date`: 0 to 1 s.
    lag_ms: i64,
    /// How long the answer took: 0 to 3 s.
    rtt_ms: i64,
    far: Option<FarFuture>,
    /// Whether the `Date` is in whole seconds, as HTTP dates are (so two polls within one
    /// second tie); else any millisecond, as when the header is missing and our clock stands in.
    whole_seconds: bool,
    facts: FactsDraw,
}

/// A poll's item and order facts, each from a small pool so equal and different values meet.
#[derive(Debug, Clone)]
struct FactsDraw {
    vouchers: Vec<u8>,
    product_id: Option<u8>,
    product_title: Option<u8>,
    product_date: Option<u8>,
    max_confirmation_time: Option<u8>,
    order_status: Option<Status>,
    identifier: Option<u8>,
}

/// `max_confirmation_time` values, with what they add to `first_seen_at` (`soon` does not
/// parse: no deadline from it).
const CONFIRMATION_TIMES: [(&str, Option<i64>); 4] = [
    ("P0D", Some(0)),
    ("PT30M", Some(1_800_000)),
    ("P2D", Some(172_800_000)),
    ("soon", None),
];

impl FactsDraw {
    fn item_facts(&self) -> PolledItemFacts {
        PolledItemFacts {
            vouchers: self
                .vouchers
                .iter()
                .map(|n| format!("https://vouchers.example/{n}.pdf"))
                .collect(),
            product_id: self.product_id.map(|n| format!("product-{n}")),
            product_title: self.product_title.map(|n| format!("Tour {n}")),
            product_date: self.product_date.map(|n| format!("2024-06-0{n} 15:30")),
            max_confirmation_time: self
                .max_confirmation_time
                .map(|n| CONFIRMATION_TIMES[usize::from(n)].0.to_owned()),
        }
    }
}

fn facts() -> impl Strategy<Value = FactsDraw> {
    (
        prop::collection::vec(0u8..3, 0..=2),
        prop::option::of(0u8..2),
        prop::option::of(0u8..2),
        prop::option::of(1u8..3),
        prop::option::of(0u8..4),
        prop::option::of(any_status()),
        prop::option::of(0u8..2),
    )
        .prop_map(
            |(
                vouchers,
                product_id,
                product_title,
                product_date,
                max_confirmation_time,
                order_status,
                identifier,
            )| FactsDraw {
                vouchers,
                product_id,
                product_title,
                product_date,
                max_confirmation_time,
                order_status,
                identifier,
            },
        )
}

fn poll_draw() -> impl Strategy<Value = PollDraw> {
    (
        read_at(),
        prop_oneof![Just(0i64), 0i64..=1000],
        0i64..=3000,
        prop_oneof![6 => Just(None), 1 => far_future().prop_map(Some)],
        prop::bool::weighted(0.75),
        facts(),
    )
        .prop_map(
            |(read, lag_ms, rtt_ms, far, whole_seconds, facts)| PollDraw {
                read,
                lag_ms,
                rtt_ms,
                far,
                whole_seconds,
                facts,
            },
        )
}

/// The polls' clock skew: it starts at `start_permille` of the margin plus `start_ms`, and
/// moves by `drift_permille` of the margin from one poll to the next.
#[derive(Debug, Clone, Copy)]
struct Skew {
    start_permille: i64,
    start_ms: i64,
    drift_permille: i64,
}

impl Skew {
    fn of_poll(self, index: usize, margin: i64) -> i64 {
        margin * (self.start_permille + index as i64 * self.drift_permille) / 1000 + self.start_ms
    }
}

fn skew() -> impl Strategy<Value = Skew> {
    (
        prop_oneof![
            Just(-1000i64),
            Just(1000i64),
            Just(-1001i64),
            Just(1001i64),
            -2000i64..=2000
        ],
        prop_oneof![Just(0i64), -1000i64..=1000],
        prop_oneof![Just(0i64), -500i64..=500],
    )
        .prop_map(|(start_permille, start_ms, drift_permille)| Skew {
            start_permille,
            start_ms,
            drift_permille,
        })
}

/// The piece of evidence more than 2 × margin newer than everything else.
#[derive(Debug, Clone)]
struct EvidenceDraw {
    poll: bool,
    status: Status,
    /// How far past 2 × margin (and one millisecond) it leads.
    extra_ms: i64,
    facts: FactsDraw,
    /// Where it comes in the drawn delivery order, besides first and last.
    position: prop::sample::Index,
}

fn evidence() -> impl Strategy<Value = EvidenceDraw> {
    (
        any::<bool>(),
        any_status(),
        prop_oneof![Just(0i64), 0i64..=10_000],
        facts(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(poll, status, extra_ms, facts, position)| EvidenceDraw {
            poll,
            status,
            extra_ms,
            facts,
            position,
        })
}

/// Everything random about a case, drawn independently so it shrinks well; see [`build`].
#[derive(Debug, Clone)]
struct Draw {
    margin_ms: i64,
    start_ms: i64,
    versions: Vec<VersionDraw>,
    skew: Skew,
    polls: Vec<PollDraw>,
    /// Sort keys: the delivery order, and a second one.
    order: Vec<u16>,
    other_order: Vec<u16>,
}

fn draw(twists: bool, max_polls: usize) -> impl Strategy<Value = Draw> {
    (
        margin_ms(),
        prop_oneof![
            Just(0i64),
            (0i64..=100).prop_map(|s| s * 1000),
            0i64..=100_000
        ],
        versions(twists),
        skew(),
        prop::collection::vec(poll_draw(), 0..=max_polls),
        prop::collection::vec(any::<u16>(), MAX_DELIVERIES),
        prop::collection::vec(any::<u16>(), MAX_DELIVERIES),
    )
        .prop_map(
            |(margin_ms, start_ms, versions, skew, polls, order, other_order)| Draw {
                margin_ms,
                start_ms,
                versions,
                skew,
                polls,
                order,
                other_order,
            },
        )
}

/// A generated case: the truth and what is delivered of it, in the drawn order.
#[derive(Clone)]
struct Case {
    margin_ms: i64,
    /// Each version's true time and status.
    history: Vec<(i64, Status)>,
    deliveries: Vec<Delivery>,
    /// The same deliveries in a second drawn order.
    reordered: Vec<Delivery>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "skew_margin = {} ms; history:", self.margin_ms)?;
        for (number, (time, status)) in self.history.iter().enumerate() {
            writeln!(f, "  v{} {status} at {time}", number + 1)?;
        }
        writeln!(f, "deliveries (ms after {EPOCH_SECONDS} s):")?;
        for (step, delivery) in self.deliveries.iter().enumerate() {
            writeln!(f, "  {step}: {delivery:?}")?;
        }
        Ok(())
    }
}

/// The status a read at `read_ms` sees: that of the highest version whose time has come.
fn truth_at(history: &[(i64, Status)], read_ms: i64) -> Status {
    history
        .iter()
        .rev()
        .find(|(time, _)| *time <= read_ms)
        .map_or(history[0].1.clone(), |(_, status)| status.clone())
}

fn webhook_copies(draw: &Draw, history: &[(i64, Status)]) -> Vec<Delivery> {
    let mut copies = Vec::new();
    for (index, (_, _, drawn)) in draw.versions.iter().enumerate() {
        let (time, status) = &history[index];
        for (delay, twist) in drawn {
            let mut webhook = Webhook {
                version: index as i64 + 1,
                status: status.clone(),
                updated_ms: *time,
                received_ms: time + delay,
            };
            match twist {
                Twist::Truthful => {}
                Twist::Status(other) => webhook.status = other.clone(),
                Twist::Earlier(gap) => webhook.updated_ms -= gap.ms(draw.margin_ms).max(1),
                Twist::FarFuture(far) => webhook.updated_ms = far.sent_ms(webhook.received_ms),
                Twist::Version(max) => {
                    webhook.version = if *max {
                        i64::MAX
                    } else {
                        webhook.version + 1000
                    }
                }
            }
            copies.push(Delivery::Webhook(webhook));
        }
    }
    copies
}

fn polls(draw: &Draw, history: &[(i64, Status)]) -> Vec<Delivery> {
    let first_ms = history[0].0;
    let last_ms = history[history.len() - 1].0;
    draw.polls
        .iter()
        .enumerate()
        .map(|(index, poll)| {
            let read_ms = match &poll.read {
                ReadAt::NearVersion(version, offset) => {
                    (version.get(history).0 + offset).max(first_ms)
                }
                ReadAt::Anywhere(millionths) => {
                    first_ms + (last_ms + 60_000 - first_ms) * millionths / 1_000_000
                }
            };
            let received_ms = read_ms + poll.rtt_ms;
            let date_ms = match poll.far {
                Some(far) => far.sent_ms(received_ms),
                None => read_ms + poll.lag_ms + draw.skew.of_poll(index, draw.margin_ms),
            };
            let date_ms = if poll.whole_seconds {
                date_ms.div_euclid(1000) * 1000
            } else {
                date_ms
            };
            Delivery::Poll(Poll {
                requested_ms: read_ms - 100,
                date_ms,
                received_ms,
                status: truth_at(history, read_ms),
                facts: poll.facts.item_facts(),
                order_status: poll.facts.order_status.as_ref().map(|s| s.to_string()),
                identifier: poll.facts.identifier.map(|n| format!("MUS{n:07}")),
            })
        })
        .collect()
}

/// `deliveries` sorted by `keys` (one key per delivery; ties keep the drawn order).
fn ordered(deliveries: &[Delivery], keys: &[u16]) -> Vec<Delivery> {
    let mut keyed: Vec<(u16, Delivery)> = keys.iter().copied().zip(deliveries.to_vec()).collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, delivery)| delivery).collect()
}

/// Turns a draw into the deliveries it stands for.
fn build(draw: Draw) -> Case {
    let mut time = draw.start_ms;
    let history: Vec<(i64, Status)> = draw
        .versions
        .iter()
        .enumerate()
        .map(|(index, (gap, status, _))| {
            if index > 0 {
                time += gap.ms(draw.margin_ms);
            }
            (time, status.clone())
        })
        .collect();
    let mut deliveries = webhook_copies(&draw, &history);
    deliveries.extend(polls(&draw, &history));
    Case {
        margin_ms: draw.margin_ms,
        deliveries: ordered(&deliveries, &draw.order),
        reordered: ordered(&deliveries, &draw.other_order),
        history,
    }
}

fn case(twists: bool, max_polls: usize) -> impl Strategy<Value = Case> {
    draw(twists, max_polls).prop_map(build)
}

/// The evidence for `case`: later than every delivery's time by more than 2 × margin, and, as
/// a webhook, with a version above every other (as a poll when none is left above them).
fn evidence_for(case: &Case, draw: &EvidenceDraw) -> Delivery {
    let latest = case
        .deliveries
        .iter()
        .map(Delivery::time_ms)
        .max()
        .unwrap_or(0);
    let time = latest + 2 * case.margin_ms + 1 + draw.extra_ms;
    let highest = case.deliveries.iter().filter_map(Delivery::version).max();
    let version = highest.map_or(Some(1), |v| v.checked_add(1));
    match version {
        Some(version) if !draw.poll => Delivery::Webhook(Webhook {
            version,
            status: draw.status.clone(),
            updated_ms: time,
            received_ms: time,
        }),
        _ => Delivery::Poll(Poll {
            requested_ms: time - 100,
            date_ms: time,
            received_ms: time,
            status: draw.status.clone(),
            facts: draw.facts.item_facts(),
            order_status: draw.facts.order_status.as_ref().map(|s| s.to_string()),
            identifier: draw.facts.identifier.map(|n| format!("MUS{n:07}")),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The model: README "The ordering rule", written out here, independent of `decide`
// ---------------------------------------------------------------------------------------------

/// The item row the model expects; times in ms after [`EPOCH_SECONDS`].
#[derive(Debug, Clone, PartialEq)]
struct ModelItem {
    status: Status,
    status_version: Option<i64>,
    item_version: Option<i64>,
    as_of: i64,
    /// `"webhook"` or `"poll"`.
    as_of_source: &'static str,
    source: &'static str,
    facts_as_of: Option<i64>,
    item_created: Option<i64>,
    item_updated: Option<i64>,
    first_seen_at: i64,
    changed_at: i64,
    updated_at: i64,
    vouchers: Option<Vec<String>>,
    product_id: Option<String>,
    product_title: Option<String>,
    product_date: Option<String>,
    max_confirmation_time: Option<String>,
    confirm_deadline: Option<i64>,
}

/// The order's fact columns the model expects.
#[derive(Debug, Clone, PartialEq)]
struct ModelOrder {
    first_seen_at: i64,
    order_id: Option<String>,
    order_version: Option<i64>,
    order_created: Option<i64>,
    order_updated: Option<i64>,
    order_status: Option<String>,
    identifier: Option<String>,
    order_polled_as_of: Option<i64>,
}

/// What an observation does to the status part of the row (the table's "effect" column).
enum Effect {
    None,
    /// Doubtful webhook: only the highest version seen moves.
    RecordVersion(i64),
    /// The webhook sets the status: both versions, `as_of`, both sources.
    WebhookSets {
        version: i64,
        as_of: i64,
    },
    /// The poll moves `as_of`; a new status gets `status_version` NULL.
    PollSets {
        as_of: i64,
    },
}

/// One item and its order, as README "The ordering rule" and "Schema" describe them.
struct Model {
    margin: i64,
    item: Option<ModelItem>,
    order: Option<ModelOrder>,
}

impl Model {
    fn new(margin: i64) -> Self {
        Self {
            margin,
            item: None,
            order: None,
        }
    }

    /// Takes one delivery; returns its outcome.
    fn step(&mut self, delivery: &Delivery) -> Outcome {
        let now = delivery.received_ms();
        let time = delivery.time_ms();
        self.order_step(delivery, time, now);
        let Some(row) = &self.item else {
            self.item = Some(new_row(delivery, time, now));
            if let Delivery::Poll(poll) = delivery {
                self.store_facts(poll);
            }
            return Outcome::Applied;
        };
        let (outcome, effect) = match delivery {
            Delivery::Webhook(webhook) => self.webhook_verdict(row, webhook, time),
            Delivery::Poll(poll) => self.poll_verdict(row, &poll.status, time),
        };
        let mut next = row.clone();
        match effect {
            Effect::None => {}
            Effect::RecordVersion(version) => next.item_version = Some(version),
            Effect::WebhookSets { version, as_of } => {
                next.status = delivery.status().clone();
                next.status_version = Some(version);
                next.item_version = Some(version);
                next.as_of = as_of;
                next.as_of_source = "webhook";
                next.source = "webhook";
            }
            Effect::PollSets { as_of } => {
                if next.status != *delivery.status() {
                    next.status = delivery.status().clone();
                    next.status_version = None;
                    next.source = "poll";
                }
                next.as_of = as_of;
                next.as_of_source = "poll";
            }
        }
        // "Item facts ... a poll writes them when it is applied or confirmed and its Date is
        // later than that of the poll that wrote the stored ones."
        let writes_facts = matches!(delivery, Delivery::Poll(_))
            && matches!(outcome, Outcome::Applied | Outcome::Confirmed)
            && row.facts_as_of.is_none_or(|stored| time > stored);
        if writes_facts {
            next.facts_as_of = Some(time);
        }
        if rule_part(&next) != rule_part(row) {
            // The row is written: `changed_at` moves with the status, `item_updated` with the
            // webhook that set `item_version`, `item_created` is kept once known.
            if next.status != row.status {
                next.changed_at = now;
            }
            next.updated_at = now;
            if let Delivery::Webhook(webhook) = delivery
                && next.item_version == Some(webhook.version)
            {
                next.item_updated = Some(webhook.updated_ms);
            }
            if next.item_created.is_none() && matches!(delivery, Delivery::Webhook(_)) {
                next.item_created = Some(CREATED_MS);
            }
        }
        self.item = Some(next);
        if let (true, Delivery::Poll(poll)) = (writes_facts, delivery) {
            self.store_facts(poll);
        }
        outcome
    }

    /// README's table, the rows for a webhook, in the table's order.
    fn webhook_verdict(&self, row: &ModelItem, webhook: &Webhook, time: i64) -> (Outcome, Effect) {
        let clearly_later = time > row.as_of + self.margin;
        let version = webhook.version;
        let sets = |as_of| Effect::WebhookSets { version, as_of };
        match row.item_version {
            // "webhook, version < item_version | its time ≤ as_of + margin | stale"
            // "webhook, version < item_version | its time > as_of + margin | applied | as a
            //  newer version; item_version comes down to its version"
            Some(seen) if version < seen => {
                if clearly_later {
                    (Outcome::Applied, sets(time))
                } else {
                    (Outcome::Stale, Effect::None)
                }
            }
            // "webhook, version = item_version | it set the status and says the same, or it
            //  was recorded without setting the status | duplicate"; "... this copy says
            //  another | conflict"
            Some(seen) if version == seen => {
                if row.status_version == Some(version) && row.status != webhook.status {
                    (Outcome::Conflict, Effect::None)
                } else {
                    (Outcome::Duplicate, Effect::None)
                }
            }
            // "version > item_version": against a webhook, "as_of = the later time"; against
            // a poll, applied only when clearly later, else doubtful.
            _ if row.as_of_source == "webhook" => (Outcome::Applied, sets(time.max(row.as_of))),
            _ if clearly_later => (Outcome::Applied, sets(time)),
            _ => (Outcome::Doubtful, Effect::RecordVersion(version)),
        }
    }

    /// README's table, the rows for a poll.
    fn poll_verdict(&self, row: &ModelItem, status: &Status, time: i64) -> (Outcome, Effect) {
        let agrees = row.status == *status;
        let newer = if agrees {
            Outcome::Confirmed
        } else {
            Outcome::Applied
        };
        if row.as_of_source == "poll" {
            // "Date ≤ as_of | stale"; "Date > as_of | confirmed / applied | as_of = Date"
            if time > row.as_of {
                (newer, Effect::PollSets { as_of: time })
            } else {
                (Outcome::Stale, Effect::None)
            }
        } else if time > row.as_of + self.margin {
            (newer, Effect::PollSets { as_of: time })
        } else if agrees {
            (Outcome::Confirmed, Effect::None)
        } else {
            (Outcome::Doubtful, Effect::None)
        }
    }

    /// A poll's item facts land on the row: the vouchers as sent, product facts only when sent,
    /// the deadline `first_seen_at` plus `max_confirmation_time` when that parses.
    fn store_facts(&mut self, poll: &Poll) {
        let item = self.item.as_mut().expect("facts land on a row");
        let facts = &poll.facts;
        item.vouchers = Some(facts.vouchers.clone());
        let keep = |new: &Option<String>, old: &mut Option<String>| {
            if new.is_some() {
                old.clone_from(new);
            }
        };
        keep(&facts.product_id, &mut item.product_id);
        keep(&facts.product_title, &mut item.product_title);
        keep(&facts.product_date, &mut item.product_date);
        keep(
            &facts.max_confirmation_time,
            &mut item.max_confirmation_time,
        );
        let allowed = facts.max_confirmation_time.as_deref().and_then(|sent| {
            CONFIRMATION_TIMES
                .iter()
                .find(|(text, _)| *text == sent)
                .and_then(|(_, ms)| *ms)
        });
        if let Some(allowed) = allowed {
            item.confirm_deadline = Some(item.first_seen_at + allowed);
        }
    }

    /// Order facts: webhook facts follow the highest `order_version`; a poll's status and
    /// identifier follow the later poll (README "The ordering rule", last paragraphs).
    fn order_step(&mut self, delivery: &Delivery, time: i64, now: i64) {
        let order = self.order.get_or_insert(ModelOrder {
            first_seen_at: now,
            order_id: None,
            order_version: None,
            order_created: None,
            order_updated: None,
            order_status: None,
            identifier: None,
            order_polled_as_of: None,
        });
        match delivery {
            Delivery::Webhook(webhook) => {
                order.order_id.get_or_insert_with(|| "4711".into());
                order.order_created.get_or_insert(CREATED_MS);
                if order
                    .order_version
                    .is_none_or(|stored| webhook.version > stored)
                {
                    order.order_version = Some(webhook.version);
                    order.order_updated = Some(webhook.updated_ms);
                }
            }
            Delivery::Poll(poll) => {
                let says_something = poll.order_status.is_some() || poll.identifier.is_some();
                if says_something && order.order_polled_as_of.is_none_or(|stored| time > stored) {
                    if poll.order_status.is_some() {
                        order.order_status.clone_from(&poll.order_status);
                    }
                    if poll.identifier.is_some() {
                        order.identifier.clone_from(&poll.identifier);
                    }
                    order.order_polled_as_of = Some(time);
                }
            }
        }
    }

    /// The item row as `SELECT *` gives it.
    fn item_row(&self, item: Uuid, order: Uuid) -> Option<Row> {
        let m = self.item.as_ref()?;
        let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
        let time = |v: Option<i64>| v.map_or(Value::Null, |ms| Value::Text(text(ms)));
        let string = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
        let vouchers = m
            .vouchers
            .as_ref()
            .map(|list| serde_json::to_string(list).expect("JSON"));
        Some(Row::from([
            ("item_uuid".into(), Value::Text(item.to_string())),
            ("order_uuid".into(), Value::Text(order.to_string())),
            ("status".into(), Value::Text(m.status.to_string())),
            ("item_version".into(), int(m.item_version)),
            ("status_version".into(), int(m.status_version)),
            ("item_created".into(), time(m.item_created)),
            ("item_updated".into(), time(m.item_updated)),
            ("as_of".into(), Value::Text(text(m.as_of))),
            ("as_of_source".into(), Value::Text(m.as_of_source.into())),
            ("source".into(), Value::Text(m.source.into())),
            ("first_seen_at".into(), Value::Text(text(m.first_seen_at))),
            ("changed_at".into(), Value::Text(text(m.changed_at))),
            ("updated_at".into(), Value::Text(text(m.updated_at))),
            ("vouchers".into(), string(&vouchers)),
            ("product_id".into(), string(&m.product_id)),
            ("product_title".into(), string(&m.product_title)),
            ("product_date".into(), string(&m.product_date)),
            (
                "max_confirmation_time".into(),
                string(&m.max_confirmation_time),
            ),
            ("confirm_deadline".into(), time(m.confirm_deadline)),
            ("overdue_warned_at".into(), Value::Null),
            ("facts_as_of".into(), time(m.facts_as_of)),
            ("missing_since".into(), Value::Null),
        ]))
    }

    /// The order's fact columns, as [`ORDER_FACTS`] selects them.
    fn order_row(&self) -> Option<Row> {
        let o = self.order.as_ref()?;
        let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
        let time = |v: Option<i64>| v.map_or(Value::Null, |ms| Value::Text(text(ms)));
        let string = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
        Some(Row::from([
            ("first_seen_at".into(), Value::Text(text(o.first_seen_at))),
            ("order_id".into(), string(&o.order_id)),
            ("order_version".into(), int(o.order_version)),
            ("order_created".into(), time(o.order_created)),
            ("order_updated".into(), time(o.order_updated)),
            ("order_status".into(), string(&o.order_status)),
            ("identifier".into(), string(&o.identifier)),
            ("order_polled_as_of".into(), time(o.order_polled_as_of)),
        ]))
    }
}

/// A new item: "none | any | applied | row created".
fn new_row(delivery: &Delivery, time: i64, now: i64) -> ModelItem {
    let (webhook, poll) = match delivery {
        Delivery::Webhook(w) => (Some(w), false),
        Delivery::Poll(_) => (None, true),
    };
    let source = if poll { "poll" } else { "webhook" };
    ModelItem {
        status: delivery.status().clone(),
        status_version: delivery.version(),
        item_version: delivery.version(),
        as_of: time,
        as_of_source: source,
        source,
        facts_as_of: poll.then_some(time),
        item_created: webhook.map(|_| CREATED_MS),
        item_updated: webhook.map(|w| w.updated_ms),
        first_seen_at: now,
        changed_at: now,
        updated_at: now,
        vouchers: None,
        product_id: None,
        product_title: None,
        product_date: None,
        max_confirmation_time: None,
        confirm_deadline: None,
    }
}

/// The part of the row the rule decides; the row is written when it changes.
fn rule_part(
    item: &ModelItem,
) -> (
    &Status,
    Option<i64>,
    Option<i64>,
    i64,
    &str,
    &str,
    Option<i64>,
) {
    (
        &item.status,
        item.status_version,
        item.item_version,
        item.as_of,
        item.as_of_source,
        item.source,
        item.facts_as_of,
    )
}

// ---------------------------------------------------------------------------------------------
// The store under test
// ---------------------------------------------------------------------------------------------

/// A row read back, column by column.
type Row = BTreeMap<String, Value>;

/// The order columns the rule's order facts decide.
const ORDER_FACTS: &str = "first_seen_at, order_id, order_version, order_created, order_updated,
                           order_status, identifier, order_polled_as_of";

/// Columns of `order_items` that hold our own clock, not Musement's: they legitimately depend
/// on when each delivery arrived.
const OUR_CLOCK: [&str; 3] = ["first_seen_at", "changed_at", "updated_at"];

/// A real database file, shared by a property's cases; each replay uses a fresh item and order.
struct Store {
    _dir: tempfile::TempDir,
    conn: Connection,
    replays: u128,
}

/// The rows a replay ended with.
#[derive(Debug, PartialEq)]
struct Final {
    item: Row,
    order: Row,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = store::open_for_writing(
            &dir.path().join("rule.db"),
            std::time::Duration::from_secs(5),
        )
        .expect("open the database");
        // Every step is its own committed transaction, as in the daemon; only the fsync is
        // skipped (durability is tested elsewhere; here it would only cost minutes).
        conn.pragma_update(None, "synchronous", "OFF")
            .expect("synchronous = OFF");
        Self {
            _dir: dir,
            conn,
            replays: 0,
        }
    }

    /// Delivers `deliveries` to a fresh item in order, checking the invariants and the model
    /// after every step; returns the final rows.
    fn replay(&mut self, case: &Case, deliveries: &[Delivery]) -> Result<Final, TestCaseError> {
        self.replays += 1;
        let item = Uuid::from_u128(self.replays << 1);
        let order = Uuid::from_u128((self.replays << 1) | 1);
        let settings = StoreSettings {
            rules: Rules {
                skew_margin: Duration::milliseconds(case.margin_ms),
                max_future: Duration::milliseconds(MAX_FUTURE_MS),
            },
            ..StoreSettings::default()
        };
        let mut model = Model::new(case.margin_ms);
        let fail = |step: usize, message: String| {
            TestCaseError::fail(format!(
                "step {step} ({:?}): {message}\nreplayed order:\n{}\n{case:?}",
                deliveries[step],
                numbered(deliveries)
            ))
        };
        for (step, delivery) in deliveries.iter().enumerate() {
            let before = read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            );
            let mark_before = self.repoll_at(order);
            let outcome = self.deliver(delivery, item, order, &settings);
            let after = read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            )
            .ok_or_else(|| fail(step, "no item row".into()))?;
            check_invariants(before.as_ref(), &after, delivery, outcome, case.margin_ms)
                .map_err(|message| fail(step, format!("invariant: {message}")))?;
            check_repoll_mark(mark_before, self.repoll_at(order), delivery, outcome)
                .map_err(|message| fail(step, message))?;
            let expected = model.step(delivery);
            let order_row = read_row(
                &self.conn,
                &format!("SELECT {ORDER_FACTS} FROM orders WHERE order_uuid = ?1"),
                order,
            );
            let event = self.last_event(item, step);
            let expected_event = event_row(delivery, expected);
            let checks = [
                (
                    "outcome",
                    outcome == expected,
                    format!("store {outcome:?}, model {expected:?}"),
                ),
                (
                    "item row",
                    Some(&after) == model.item_row(item, order).as_ref(),
                    diff(Some(&after), model.item_row(item, order).as_ref()),
                ),
                (
                    "order facts",
                    order_row == model.order_row(),
                    diff(order_row.as_ref(), model.order_row().as_ref()),
                ),
                (
                    "event row",
                    event.as_ref() == Some(&expected_event),
                    diff(event.as_ref(), Some(&expected_event)),
                ),
            ];
            for (what, same, detail) in checks {
                if !same {
                    return Err(fail(
                        step,
                        format!("{what} differs from the model: {detail}"),
                    ));
                }
            }
        }
        Ok(Final {
            item: read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            )
            .unwrap_or_default(),
            order: read_row(
                &self.conn,
                &format!("SELECT {ORDER_FACTS} FROM orders WHERE order_uuid = ?1"),
                order,
            )
            .unwrap_or_default(),
        })
    }

    /// One delivery through the store's public entry points, in its own transaction.
    fn deliver(
        &self,
        delivery: &Delivery,
        item: Uuid,
        order: Uuid,
        settings: &StoreSettings,
    ) -> Outcome {
        let tx = self.conn.unchecked_transaction().expect("begin");
        let observation = delivery.observation(item, order);
        let now = at(delivery.received_ms());
        let outcome = match delivery {
            Delivery::Webhook(_) => store::apply(&tx, &observation, settings, now).expect("apply"),
            Delivery::Poll(poll) => {
                let record = PollRecord {
                    order,
                    requested_at: at(poll.requested_ms),
                    items: vec![(observation, poll.facts.clone())],
                };
                let recorded = store::record_poll(&tx, &record, settings, now).expect("record");
                assert_eq!(recorded.outcomes.len(), 1, "one item polled, one outcome");
                recorded.outcomes[0]
            }
        };
        tx.commit().expect("commit");
        outcome
    }

    /// The order's re-poll mark (`None` also before the order row exists).
    fn repoll_at(&self, order: Uuid) -> Option<DateTime<Utc>> {
        let mark: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT repoll_at FROM orders WHERE order_uuid = ?1",
                [order.to_string()],
                |r| r.get(0),
            )
            .optional()
            .expect("read the order");
        mark.flatten()
            .map(|text| from_db_text(&text).expect("a readable mark"))
    }

    /// The item's newest event row, when the log holds exactly `step + 1` of them.
    fn last_event(&self, item: Uuid, step: usize) -> Option<Row> {
        let count: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM item_events WHERE item_uuid = ?1",
                [item.to_string()],
                |r| r.get(0),
            )
            .expect("count events");
        if count != step as i64 + 1 {
            return None;
        }
        read_row(
            &self.conn,
            "SELECT source, status, item_version, as_of, received_at, outcome, payload
             FROM item_events WHERE item_uuid = ?1 ORDER BY id DESC LIMIT 1",
            item,
        )
    }
}

/// The event row a delivery should leave: what it said, its (clamped) time, the outcome.
fn event_row(delivery: &Delivery, outcome: Outcome) -> Row {
    let source = match delivery {
        Delivery::Webhook(_) => "webhook",
        Delivery::Poll(_) => "poll",
    };
    Row::from([
        ("source".into(), Value::Text(source.into())),
        ("status".into(), Value::Text(delivery.status().to_string())),
        (
            "item_version".into(),
            delivery.version().map_or(Value::Null, Value::Integer),
        ),
        ("as_of".into(), Value::Text(text(delivery.time_ms()))),
        (
            "received_at".into(),
            Value::Text(text(delivery.received_ms())),
        ),
        ("outcome".into(), Value::Text(outcome_text(outcome).into())),
        ("payload".into(), Value::Text(delivery.raw())),
    ])
}

/// The event log's spelling of an outcome (README "Schema", `item_events.outcome`).
fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Confirmed => "confirmed",
        Outcome::Duplicate => "duplicate",
        Outcome::Stale => "stale",
        Outcome::Conflict => "conflict",
        Outcome::Doubtful => "doubtful",
    }
}

/// The order's re-poll mark moves only with doubt: a conflict or a doubt leaves one; any other
/// webhook leaves it as it was; a poll in no doubt clears it when it was sent at or after the
/// mark, and leaves it otherwise (README "The ordering rule", "Polling Musement").
fn check_repoll_mark(
    before: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    delivery: &Delivery,
    outcome: Outcome,
) -> Result<(), String> {
    let in_doubt = matches!(outcome, Outcome::Conflict | Outcome::Doubtful);
    let holds = match delivery {
        _ if in_doubt => after.is_some(),
        Delivery::Webhook(_) => after == before,
        Delivery::Poll(poll) => match before {
            Some(mark) if at(poll.requested_ms) < mark => after == before,
            _ => after.is_none(),
        },
    };
    if holds {
        Ok(())
    } else {
        Err(format!(
            "{outcome:?} moved the re-poll mark from {before:?} to {after:?}"
        ))
    }
}

/// The one row `sql` selects for `key`, column by column.
fn read_row(conn: &Connection, sql: &str, key: Uuid) -> Option<Row> {
    let mut statement = conn.prepare_cached(sql).expect("prepare");
    let names: Vec<String> = statement.column_names().map(String::from).collect();
    let mut rows = statement.query([key.to_string()]).expect("query");
    let row = rows.next().expect("read")?;
    Some(
        names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.clone(), row.get::<_, Value>(index).expect("cell")))
            .collect(),
    )
}

/// The columns where `found` and `expected` differ.
fn diff(found: Option<&Row>, expected: Option<&Row>) -> String {
    let (Some(found), Some(expected)) = (found, expected) else {
        return format!("store {found:?}, model {expected:?}");
    };
    let mut names: Vec<&String> = found.keys().chain(expected.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| found.get(*name) != expected.get(*name))
        .map(|name| {
            format!(
                "\n  {name}: store {:?}, model {:?}",
                found.get(name),
                expected.get(name)
            )
        })
        .collect()
}

fn numbered(deliveries: &[Delivery]) -> String {
    deliveries
        .iter()
        .enumerate()
        .map(|(step, delivery)| format!("  {step}: {delivery:?}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fuzzer's invariants, on the rows read back
// ---------------------------------------------------------------------------------------------

fn cell_int(row: &Row, column: &str) -> Option<i64> {
    match row.get(column) {
        Some(Value::Integer(value)) => Some(*value),
        _ => None,
    }
}

fn cell_time(row: &Row, column: &str) -> Option<DateTime<Utc>> {
    match row.get(column) {
        Some(Value::Text(value)) => Some(from_db_text(value).expect("stored time parses")),
        _ => None,
    }
}

fn cell_text<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    match row.get(column) {
        Some(Value::Text(value)) => Some(value),
        _ => None,
    }
}

/// The item-fact columns; only a poll that writes facts moves them.
const FACTS: [&str; 7] = [
    "facts_as_of",
    "vouchers",
    "product_id",
    "product_title",
    "product_date",
    "max_confirmation_time",
    "confirm_deadline",
];

/// What a doubtful webhook writes: the version it records, with its `order_item_updated` (and
/// `order_item_created` when a poll made the row), and the time of the write.
const RECORDING_A_VERSION: [&str; 4] =
    ["item_version", "item_updated", "item_created", "updated_at"];

/// `row` without `columns`.
fn without(row: &Row, columns: &[&str]) -> Row {
    row.iter()
        .filter(|(name, _)| !columns.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// fuzz/fuzz_targets/ordering_rule.rs's invariants, checked on the rows before and after one
/// delivery, as read from the database.
fn check_invariants(
    before: Option<&Row>,
    after: &Row,
    delivery: &Delivery,
    outcome: Outcome,
    margin_ms: i64,
) -> Result<(), String> {
    let status = delivery.status().as_str();
    let time = at(delivery.time_ms());
    let Some(before) = before else {
        let ok = outcome == Outcome::Applied
            && cell_text(after, "status") == Some(status)
            && cell_int(after, "item_version") == delivery.version();
        return if ok {
            Ok(())
        } else {
            Err(format!("a new item gave {outcome:?}, row {after:?}"))
        };
    };
    let ensure = |holds: bool, what: &str| {
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{what} ({outcome:?})\n  before {before:?}\n  after  {after:?}"
            ))
        }
    };
    ensure(
        cell_time(after, "as_of") >= cell_time(before, "as_of"),
        "as_of went back",
    )?;
    let (seen, now_seen) = (
        cell_int(before, "item_version"),
        cell_int(after, "item_version"),
    );
    match delivery {
        Delivery::Poll(_) => ensure(now_seen == seen, "a poll moved item_version")?,
        Delivery::Webhook(webhook) => {
            let recovered =
                seen.is_some_and(|seen| webhook.version < seen) && outcome == Outcome::Applied;
            if recovered {
                let stored_as_of = cell_time(before, "as_of").expect("as_of");
                ensure(
                    time > stored_as_of + Duration::milliseconds(margin_ms),
                    "a lower version was applied without leading as_of by the margin",
                )?;
                ensure(
                    now_seen == Some(webhook.version),
                    "the recovery did not bring item_version down to the webhook's",
                )?;
            } else {
                ensure(
                    seen.is_none_or(|seen| now_seen.is_some_and(|now| now >= seen)),
                    "item_version went down",
                )?;
                ensure(
                    now_seen.is_some_and(|now| now >= webhook.version),
                    "item_version below the webhook's",
                )?;
            }
        }
    }
    ensure(
        cell_text(before, "item_created")
            .is_none_or(|known| cell_text(after, "item_created") == Some(known)),
        "item_created changed once known",
    )?;
    let facts_moved = cell_time(after, "facts_as_of") != cell_time(before, "facts_as_of");
    if facts_moved {
        ensure(
            matches!(delivery, Delivery::Poll(_))
                && matches!(outcome, Outcome::Applied | Outcome::Confirmed)
                && cell_time(after, "facts_as_of") == Some(time)
                && cell_time(before, "facts_as_of").is_none_or(|stored| time > stored),
            "facts were written by something other than a later applied or confirmed poll",
        )?;
    } else {
        ensure(
            FACTS
                .iter()
                .all(|column| after.get(*column) == before.get(*column)),
            "item facts moved without facts_as_of",
        )?;
    }
    match outcome {
        Outcome::Stale | Outcome::Duplicate | Outcome::Conflict => {
            ensure(after == before, "the row changed")
        }
        Outcome::Doubtful => ensure(
            without(after, &RECORDING_A_VERSION) == without(before, &RECORDING_A_VERSION),
            "doubtful changed more than item_version",
        ),
        Outcome::Applied => ensure(
            cell_text(after, "status") == Some(status),
            "applied did not store the observed status",
        ),
        Outcome::Confirmed => ensure(
            cell_text(after, "status") == cell_text(before, "status")
                && cell_text(after, "status") == Some(status),
            "confirmed changed the status or confirmed another",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

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
