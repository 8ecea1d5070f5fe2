//! Generation: a true history, what is delivered of it (twisted, skewed, reordered), and the
//! piece of evidence clearly newer than everything else.

use std::fmt;

use orderwatch::observation::{ItemFacts, Status};
use proptest::prelude::*;

use crate::helpers::strategies::{ReadAt, any_status, read_at};

use super::delivery::{
    Delivery, EPOCH_SECONDS, MAX_COPIES, MAX_DELIVERIES, MAX_FUTURE_MS, MAX_VERSIONS, Poll,
    Webhook, YEAR_9999_MS,
};

pub(super) fn margin_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(5_000i64),
        1 => Just(1_000i64),
        1 => Just(0i64),
        1 => (1i64..=20).prop_map(|halves| halves * 500),
    ]
}

/// A step in time, mostly measured in skew margins so the boundaries are hit exactly.
#[derive(Debug, Clone, Copy)]
pub(super) enum Gap {
    Zero,
    Margin,
    PastMargin,
    TwiceMargin,
    PastTwice,
    Ms(i64),
}

impl Gap {
    pub(super) fn ms(self, margin: i64) -> i64 {
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

pub(super) fn gap() -> impl Strategy<Value = Gap> {
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
pub(super) enum FarFuture {
    AtClamp,
    PastClamp(i64),
    Days(i64),
    Year9999,
}

impl FarFuture {
    pub(super) fn sent_ms(self, received_ms: i64) -> i64 {
        match self {
            Self::AtClamp => received_ms + MAX_FUTURE_MS,
            Self::PastClamp(ms) => received_ms + MAX_FUTURE_MS + ms,
            Self::Days(days) => received_ms + days * 86_400_000,
            Self::Year9999 => YEAR_9999_MS,
        }
    }
}

pub(super) fn far_future() -> impl Strategy<Value = FarFuture> {
    prop_oneof![
        Just(FarFuture::AtClamp),
        (1i64..=2_000).prop_map(FarFuture::PastClamp),
        (1i64..=3_650).prop_map(FarFuture::Days),
        Just(FarFuture::Year9999),
    ]
}

/// What is wrong with one webhook copy, if anything.
#[derive(Debug, Clone)]
pub(super) enum Twist {
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

pub(super) fn twist() -> impl Strategy<Value = Twist> {
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
pub(super) fn delay_ms() -> impl Strategy<Value = i64> {
    prop_oneof![-2_000i64..=0, 0i64..=10_000, 0i64..=7_200_000]
}

/// One version of the true history as drawn: its gap from the previous one, its status, and
/// each delivered copy's delay and twist.
pub(super) type VersionDraw = (Gap, Status, Vec<(i64, Twist)>);

pub(super) fn versions(twists: bool) -> impl Strategy<Value = Vec<VersionDraw>> {
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

/// A poll as drawn; see [`build`].
#[derive(Debug, Clone)]
pub(super) struct PollDraw {
    /// When it reads Musement.
    read: ReadAt,
    /// How much older the data is than the `Date`: 0 to 1 s.
    lag_ms: i64,
    /// How long the answer took: 0 to 3 s.
    rtt_ms: i64,
    /// A `Date` far in the future instead of the skewed one, sometimes.
    far: Option<FarFuture>,
    /// Whether the `Date` is in whole seconds, as HTTP dates are (so two polls within one
    /// second tie); else any millisecond, as when the header is missing and our clock stands in.
    whole_seconds: bool,
    /// Its item and order facts.
    facts: FactsDraw,
}

/// A poll's item and order facts, each from a small pool so equal and different values meet.
#[derive(Debug, Clone)]
pub(super) struct FactsDraw {
    /// Voucher numbers, 0 to 2 of 3.
    vouchers: Vec<u8>,
    /// `product.id`, one of 2, or none.
    product_id: Option<u8>,
    /// `product.title`, one of 2, or none.
    product_title: Option<u8>,
    /// `product.date`, one of 2, or none.
    product_date: Option<u8>,
    /// An index into [`CONFIRMATION_TIMES`], or none.
    max_confirmation_time: Option<u8>,
    /// The order's status, or none.
    order_status: Option<Status>,
    /// The order's identifier, one of 2, or none.
    identifier: Option<u8>,
}

/// `max_confirmation_time` values, with what they add to `first_seen_at` (`soon` does not
/// parse: no deadline from it).
pub(super) const CONFIRMATION_TIMES: [(&str, Option<i64>); 4] = [
    ("P0D", Some(0)),
    ("PT30M", Some(1_800_000)),
    ("P2D", Some(172_800_000)),
    ("soon", None),
];

impl FactsDraw {
    pub(super) fn item_facts(&self) -> ItemFacts {
        ItemFacts {
            vouchers: Some(
                self.vouchers
                    .iter()
                    .map(|n| format!("https://vouchers.example/{n}.pdf"))
                    .collect(),
            ),
            product_id: self.product_id.map(|n| format!("product-{n}")),
            product_title: self.product_title.map(|n| format!("Tour {n}")),
            product_date: self.product_date.map(|n| format!("2024-06-0{n} 15:30")),
            max_confirmation_time: self
                .max_confirmation_time
                .map(|n| CONFIRMATION_TIMES[usize::from(n)].0.to_owned()),
        }
    }
}

prop_compose! {
    pub(super) fn facts()(
        vouchers in prop::collection::vec(0u8..3, 0..=2),
        product_id in prop::option::of(0u8..2),
        product_title in prop::option::of(0u8..2),
        product_date in prop::option::of(1u8..3),
        max_confirmation_time in prop::option::of(0u8..4),
        order_status in prop::option::of(any_status()),
        identifier in prop::option::of(0u8..2),
    ) -> FactsDraw {
        FactsDraw {
            vouchers,
            product_id,
            product_title,
            product_date,
            max_confirmation_time,
            order_status,
            identifier,
        }
    }
}

prop_compose! {
    pub(super) fn poll_draw()(
        read in read_at(),
        lag_ms in prop_oneof![Just(0i64), 0i64..=1000],
        rtt_ms in 0i64..=3000,
        far in prop_oneof![6 => Just(None), 1 => far_future().prop_map(Some)],
        whole_seconds in prop::bool::weighted(0.75),
        facts in facts(),
    ) -> PollDraw {
        PollDraw {
            read,
            lag_ms,
            rtt_ms,
            far,
            whole_seconds,
            facts,
        }
    }
}

/// The polls' clock skew: it starts at `start_permille` of the margin plus `start_ms`, and
/// moves by `drift_permille` of the margin from one poll to the next.
#[derive(Debug, Clone, Copy)]
pub(super) struct Skew {
    /// The first poll's skew, in thousandths of the margin (±1000 is at it).
    start_permille: i64,
    /// Added to it, in milliseconds (so a zero margin still has skew).
    start_ms: i64,
    /// How much it moves from one poll to the next, in thousandths of the margin.
    drift_permille: i64,
}

impl Skew {
    pub(super) fn of_poll(self, index: usize, margin: i64) -> i64 {
        margin * (self.start_permille + index as i64 * self.drift_permille) / 1000 + self.start_ms
    }
}

prop_compose! {
    pub(super) fn skew()(
        start_permille in prop_oneof![
            Just(-1000i64),
            Just(1000i64),
            Just(-1001i64),
            Just(1001i64),
            -2000i64..=2000
        ],
        start_ms in prop_oneof![Just(0i64), -1000i64..=1000],
        drift_permille in prop_oneof![Just(0i64), -500i64..=500],
    ) -> Skew {
        Skew {
            start_permille,
            start_ms,
            drift_permille,
        }
    }
}

/// The piece of evidence more than 2 × margin newer than everything else.
#[derive(Debug, Clone)]
pub(super) struct EvidenceDraw {
    /// A poll, or a webhook (a poll when no version is left above the others).
    poll: bool,
    /// What it says.
    status: Status,
    /// How far past 2 × margin (and one millisecond) it leads.
    extra_ms: i64,
    /// Its item and order facts, as a poll.
    facts: FactsDraw,
    /// Where it comes in the drawn delivery order, besides first and last.
    pub(super) position: prop::sample::Index,
}

prop_compose! {
    pub(super) fn evidence()(
        poll in any::<bool>(),
        status in any_status(),
        extra_ms in prop_oneof![Just(0i64), 0i64..=10_000],
        facts in facts(),
        position in any::<prop::sample::Index>(),
    ) -> EvidenceDraw {
        EvidenceDraw {
            poll,
            status,
            extra_ms,
            facts,
            position,
        }
    }
}

/// Everything random about a case, drawn independently so it shrinks well; see [`build`].
#[derive(Debug, Clone)]
pub(super) struct Draw {
    /// `skew_margin`.
    margin_ms: i64,
    /// The first version's time.
    start_ms: i64,
    /// The true history's versions and their delivered copies.
    versions: Vec<VersionDraw>,
    /// The polls' clock skew.
    skew: Skew,
    /// The polls.
    polls: Vec<PollDraw>,
    /// Sort keys: the delivery order, and a second one.
    order: Vec<u16>,
    /// Sort keys giving a second delivery order.
    other_order: Vec<u16>,
}

prop_compose! {
    pub(super) fn draw(twists: bool, max_polls: usize)(
        margin_ms in margin_ms(),
        start_ms in prop_oneof![
            Just(0i64),
            (0i64..=100).prop_map(|s| s * 1000),
            0i64..=100_000
        ],
        versions in versions(twists),
        skew in skew(),
        polls in prop::collection::vec(poll_draw(), 0..=max_polls),
        order in prop::collection::vec(any::<u16>(), MAX_DELIVERIES),
        other_order in prop::collection::vec(any::<u16>(), MAX_DELIVERIES),
    ) -> Draw {
        Draw {
            margin_ms,
            start_ms,
            versions,
            skew,
            polls,
            order,
            other_order,
        }
    }
}

/// A generated case: the truth and what is delivered of it, in the drawn order.
#[derive(Clone)]
pub(super) struct Case {
    /// `skew_margin`.
    pub(super) margin_ms: i64,
    /// Each version's true time and status.
    history: Vec<(i64, Status)>,
    /// What is delivered, in the drawn order.
    pub(super) deliveries: Vec<Delivery>,
    /// The same deliveries in a second drawn order.
    pub(super) reordered: Vec<Delivery>,
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
pub(super) fn truth_at(history: &[(i64, Status)], read_ms: i64) -> Status {
    history
        .iter()
        .rev()
        .find(|(time, _)| *time <= read_ms)
        .map_or(history[0].1.clone(), |(_, status)| status.clone())
}

pub(super) fn webhook_copies(draw: &Draw, history: &[(i64, Status)]) -> Vec<Delivery> {
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

pub(super) fn polls(draw: &Draw, history: &[(i64, Status)]) -> Vec<Delivery> {
    let times_ms: Vec<i64> = history.iter().map(|(time, _)| *time).collect();
    draw.polls
        .iter()
        .enumerate()
        .map(|(index, poll)| {
            let read_ms = poll.read.resolve(&times_ms);
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
pub(super) fn ordered(deliveries: &[Delivery], keys: &[u16]) -> Vec<Delivery> {
    let mut keyed: Vec<(u16, Delivery)> = keys.iter().copied().zip(deliveries.to_vec()).collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, delivery)| delivery).collect()
}

/// Turns a draw into the deliveries it stands for.
pub(super) fn build(draw: Draw) -> Case {
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

pub(super) fn case(twists: bool, max_polls: usize) -> impl Strategy<Value = Case> {
    draw(twists, max_polls).prop_map(build)
}

/// The evidence for `case`: later than every delivery's time by more than 2 × margin, and, as
/// a webhook, with a version above every other (as a poll when none is left above them).
pub(super) fn evidence_for(case: &Case, draw: &EvidenceDraw) -> Delivery {
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
