//! Property tests of the pure ordering rule, [`orderwatch::store::decide`], with no database.
//!
//! The model: one item has a TRUE history, versions `1..=n`, each set at a whole-second Musement
//! time `t_i` (non-decreasing, ties allowed) to any status. What orderwatch sees of it is
//! - webhooks: each version's webhook delivered 0 to 3 times (dropped, duplicated), received at
//!   or after `t_i`;
//! - polls: a read at a real (millisecond) time `r >= t_1` sees the status of the highest version
//!   with `t_i <= r` (a whole-second event happens at the start of its second); its `as_of` is
//!   `r + d + k`, where `d` in `0..=1 s` is how much older the data is than the `Date` header and
//!   `k` is one clock offset for the whole case, `|k| < skew_margin`;
//!
//! all shuffled together. Each case folds the deliveries over the state with `decide`.
//!
//! Properties, and why they matter:
//! - `item_version` never decreases: it is the dedup/staleness key for every later webhook; if it
//!   went back, an old webhook could be applied over a newer status.
//! - every outcome matches the state it returns (Stale/Duplicate keep the row, Doubtful only
//!   records the version, Applied stores the observed status, ...) and a truthful history never
//!   yields Conflict: the outcome is what the event log and the re-poll logic act on.
//! - with webhooks only, the stored status is that of the highest delivered version: versions
//!   alone must order webhooks, whatever the delivery order and duplication.
//! - after everything, one poll read clearly after the last change (and after every earlier
//!   poll) converges the row to the true final status: whatever the interleaving, orderwatch is
//!   never stuck on a wrong status once it polls again; and its item facts are that poll's.
//! - any permutation of the same truthful observations, each at least twice the margin away
//!   from the others, ends in the same item and order: status, versions, times and every fact
//!   (item facts, `item_created`/`item_updated`, order facts); only which source set the
//!   status may differ (see [`separated_observations`]).
//! - only a poll that is not stale writes item facts (vouchers, product, deadline), and only
//!   when later than the poll that wrote the stored ones: facts never go back to an older poll's.

use std::fmt;

use chrono::{DateTime, Utc};
use orderwatch::observation::{ItemFacts, Observation, OrderFacts, Position, Status};
use orderwatch::store::rule::musement_time;
use orderwatch::store::{ItemState, OrderState, Outcome, Rules, decide, decide_order};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use uuid::Uuid;

use crate::helpers::strategies::{ReadAt, any_status, read_at};

/// Musement time 0 of every case, in seconds since the Unix epoch.
const EPOCH_SECONDS: i64 = 1_700_000_000;
/// Most versions in a history.
const MAX_VERSIONS: usize = 12;
/// Most polls delivered before the final one.
const MAX_POLLS: usize = 8;

fn config() -> ProptestConfig {
    ProptestConfig {
        // Keep the tree clean: a failure is reported with its minimal case instead of a file.
        failure_persistence: None,
        // Bound the search for a minimal case so a failure still reports within seconds.
        max_shrink_time: 10_000,
        ..ProptestConfig::with_cases(512)
    }
}

fn margin_ms() -> i64 {
    Rules::default().skew_margin.num_milliseconds()
}

/// One version of the item's true history.
#[derive(Debug, Clone)]
struct Version {
    number: i64,
    /// `order_item_updated`, in whole seconds after [`EPOCH_SECONDS`].
    updated_s: i64,
    status: Status,
}

/// One thing delivered to orderwatch; times in milliseconds after [`EPOCH_SECONDS`].
#[derive(Clone)]
enum Delivery {
    Webhook {
        version: i64,
        updated_s: i64,
        received_s: i64,
        status: Status,
    },
    Poll {
        read_ms: i64,
        as_of_ms: i64,
        status: Status,
    },
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webhook {
                version,
                updated_s,
                received_s,
                status,
            } => write!(
                f,
                "webhook v{version} {status} updated={updated_s}s received={received_s}s"
            ),
            Self::Poll {
                read_ms,
                as_of_ms,
                status,
            } => write!(f, "poll {status} read={read_ms}ms as_of={as_of_ms}ms"),
        }
    }
}

impl Delivery {
    fn observation(&self) -> Observation {
        let (status, position, received_at) = match self {
            Self::Webhook {
                version,
                updated_s,
                received_s,
                status,
            } => (
                status,
                Position::Webhook {
                    version: *version,
                    updated: at_ms(updated_s * 1000),
                },
                at_ms(received_s * 1000),
            ),
            Self::Poll {
                read_ms,
                as_of_ms,
                status,
            } => (
                status,
                Position::Poll {
                    as_of: at_ms(*as_of_ms),
                },
                at_ms(*read_ms),
            ),
        };
        Observation::bare(
            Uuid::nil(),
            Uuid::nil(),
            status.clone(),
            position,
            received_at,
        )
    }
}

/// A generated case: the truth, the shuffled deliveries, and the final converging poll.
#[derive(Debug, Clone)]
struct Case {
    history: Vec<Version>,
    skew_ms: i64,
    deliveries: Vec<Delivery>,
    final_poll: Delivery,
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(EPOCH_SECONDS * 1000 + ms).expect("time in range")
}

/// A step between two versions' times, 0 to 20 s, often a tie or within the skew margin.
fn gap_s() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 0i64..=6, 0i64..=20]
}

/// The case's clock offset `k`, `|k| < skew_margin`, often at either extreme.
fn skew_ms() -> impl Strategy<Value = i64> {
    let skew = margin_ms() - 1;
    prop_oneof![Just(-skew), Just(skew), -skew..=skew]
}

/// How much later than its floor the final poll is read, often not at all.
fn final_extra_ms() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 0i64..=5000]
}

/// Versions `1..=n`: a start and, per version, the gap from the previous one and its status.
fn history() -> impl Strategy<Value = Vec<Version>> {
    (
        0i64..=100,
        prop::collection::vec((gap_s(), any_status()), 1..=MAX_VERSIONS),
    )
        .prop_map(|(start, steps)| {
            let mut updated_s = start;
            steps
                .into_iter()
                .enumerate()
                .map(|(index, (gap, status))| {
                    if index > 0 {
                        updated_s += gap;
                    }
                    Version {
                        number: index as i64 + 1,
                        updated_s,
                        status,
                    }
                })
                .collect()
        })
}

/// The status a read at `read_ms` sees: that of the highest version with `t_i <= r`.
fn truth_at(history: &[Version], read_ms: i64) -> Status {
    history
        .iter()
        .rev()
        .find(|version| version.updated_s * 1000 <= read_ms)
        .expect("polls are read at or after t_1")
        .status
        .clone()
}

/// Everything random about a case, drawn independently so it shrinks quickly; see [`build`].
#[derive(Debug, Clone)]
struct Draw {
    history: Vec<Version>,
    skew_ms: i64,
    /// Per version (first `n` used): the receive delays, in seconds, of its 0 to 3 deliveries.
    webhook_delays: Vec<Vec<i64>>,
    /// Each poll's read time and lag `d` (ms).
    polls: Vec<(ReadAt, i64)>,
    /// Sort keys giving the delivery order (one per possible delivery).
    order: Vec<u16>,
    final_extra_ms: i64,
    final_lag_ms: i64,
}

const MAX_DELIVERIES: usize = MAX_VERSIONS * 3 + MAX_POLLS;

prop_compose! {
    fn draw(max_polls: usize)(
        history in history(),
        skew_ms in skew_ms(),
        webhook_delays in prop::collection::vec(
            prop::collection::vec(0i64..=3600, 0..=3),
            MAX_VERSIONS,
        ),
        polls in prop::collection::vec((read_at(), 0i64..=1000), 0..=max_polls),
        order in prop::collection::vec(any::<u16>(), MAX_DELIVERIES),
        final_extra_ms in final_extra_ms(),
        final_lag_ms in 0i64..=1000,
    ) -> Draw {
        Draw {
            history,
            skew_ms,
            webhook_delays,
            polls,
            order,
            final_extra_ms,
            final_lag_ms,
        }
    }
}

fn last_change_ms(history: &[Version]) -> i64 {
    history[history.len() - 1].updated_s * 1000
}

/// Each version's webhook once per drawn delay, received that many seconds after its `t_i`.
fn webhook_deliveries(history: &[Version], delays: &[Vec<i64>]) -> Vec<Delivery> {
    history
        .iter()
        .zip(delays)
        .flat_map(|(version, delays)| {
            delays.iter().map(|delay| Delivery::Webhook {
                version: version.number,
                updated_s: version.updated_s,
                received_s: version.updated_s + delay,
                status: version.status.clone(),
            })
        })
        .collect()
}

/// A poll read at `read_ms`, its data `lag_ms` older than its `Date`, on a clock `skew_ms` off.
fn poll(history: &[Version], read_ms: i64, lag_ms: i64, skew_ms: i64) -> Delivery {
    Delivery::Poll {
        read_ms,
        as_of_ms: read_ms + lag_ms + skew_ms,
        status: truth_at(history, read_ms),
    }
}

/// The converging poll: read after `t_n + 2 * margin` and over 1 s after every earlier poll.
fn final_poll(history: &[Version], polls: &[Delivery], draw: &Draw) -> Delivery {
    let last_read_ms = polls
        .iter()
        .filter_map(|delivery| match delivery {
            Delivery::Poll { read_ms, .. } => Some(*read_ms),
            Delivery::Webhook { .. } => None,
        })
        .max()
        .unwrap_or(i64::MIN);
    let floor_ms =
        (last_change_ms(history) + 2 * margin_ms()).max(last_read_ms.saturating_add(1000));
    let read_ms = floor_ms + 1 + draw.final_extra_ms;
    poll(history, read_ms, draw.final_lag_ms, draw.skew_ms)
}

/// Turns a draw into the deliveries it stands for, ordered by the drawn sort keys.
fn build(draw: Draw) -> Case {
    let history = draw.history.clone();
    let times_ms: Vec<i64> = history.iter().map(|v| v.updated_s * 1000).collect();
    let polls: Vec<Delivery> = draw
        .polls
        .iter()
        .map(|(read, lag_ms)| poll(&history, read.resolve(&times_ms), *lag_ms, draw.skew_ms))
        .collect();
    let final_poll = final_poll(&history, &polls, &draw);
    let mut keyed: Vec<(u16, Delivery)> = draw
        .order
        .iter()
        .copied()
        .zip(
            webhook_deliveries(&history, &draw.webhook_delays)
                .into_iter()
                .chain(polls),
        )
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    Case {
        history,
        skew_ms: draw.skew_ms,
        deliveries: keyed.into_iter().map(|(_, delivery)| delivery).collect(),
        final_poll,
    }
}

/// A whole case with at most `max_polls` polls before the final one.
fn case(max_polls: usize) -> impl Strategy<Value = Case> {
    draw(max_polls).prop_map(build)
}

/// Checks that `outcome` agrees with the state it returns.
fn check_outcome(
    previous: Option<&ItemState>,
    observation: &Observation,
    outcome: Outcome,
    state: &ItemState,
) -> Result<(), String> {
    let Some(previous) = previous else {
        return match outcome {
            Outcome::Applied if state.status == observation.status => Ok(()),
            _ => Err(format!(
                "first observation gave {outcome:?}, state {state:?}"
            )),
        };
    };
    let ok = match outcome {
        Outcome::Conflict => return Err("a truthful history gave a Conflict".into()),
        Outcome::Stale | Outcome::Duplicate => state == previous,
        // Only the highest version seen may move, with the time of the webhook that set it
        // (and a creation time, when none was known).
        Outcome::Doubtful => {
            // A doubtful webhook raises the version; a doubtful poll changes nothing but the
            // item facts (checked below).
            let moved = match observation.position {
                Position::Webhook { .. } => {
                    state.item_version != previous.item_version
                        && state.item_updated == observation_updated(observation)
                }
                Position::Poll { .. } => {
                    ItemState {
                        facts: previous.facts.clone(),
                        facts_as_of: previous.facts_as_of,
                        ..state.clone()
                    } == *previous
                }
            };
            let created_kept = previous
                .item_created
                .is_none_or(|_| state.item_created == previous.item_created);
            moved
                && created_kept
                && ItemState {
                    item_version: previous.item_version,
                    item_updated: previous.item_updated,
                    item_created: previous.item_created,
                    facts: previous.facts.clone(),
                    facts_as_of: previous.facts_as_of,
                    ..state.clone()
                } == *previous
        }
        Outcome::Confirmed => state.status == previous.status && state.status == observation.status,
        Outcome::Applied => {
            state.status == observation.status
                && state.status_version == observation.position.version()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{outcome:?} inconsistent: previous {previous:?}, now {state:?}"
        ))
    }
}

/// A webhook's `order_item_updated`.
fn observation_updated(observation: &Observation) -> Option<DateTime<Utc>> {
    match observation.position {
        Position::Webhook { updated, .. } => Some(updated),
        Position::Poll { .. } => None,
    }
}

/// Folds `deliveries` over `state`, checking every step; returns the final state.
fn replay(
    mut state: Option<ItemState>,
    deliveries: &[Delivery],
    case: &Case,
) -> Result<Option<ItemState>, TestCaseError> {
    let rules = Rules::default();
    for (step, delivery) in deliveries.iter().enumerate() {
        let observation = delivery.observation();
        let decision = decide(state.as_ref(), &observation, &rules);
        let previous_version = state.as_ref().and_then(|s| s.item_version);
        prop_assert!(
            decision.state.item_version >= previous_version,
            "item_version went from {previous_version:?} to {:?} at step {step} ({delivery:?})\n{}",
            decision.state.item_version,
            describe(case)
        );
        let previous_facts = state.as_ref().and_then(|s| s.facts_as_of);
        let time = musement_time(&observation, &rules);
        if decision.writes_facts {
            prop_assert!(
                matches!(delivery, Delivery::Poll { .. })
                    && decision.outcome != Outcome::Stale
                    && decision.state.facts_as_of == Some(time)
                    && previous_facts.is_none_or(|before| time > before),
                "step {step} ({delivery:?}) wrote facts: {:?}, facts_as_of {previous_facts:?}\n{}",
                decision.outcome,
                describe(case)
            );
        } else {
            prop_assert_eq!(
                decision.state.facts_as_of,
                previous_facts,
                "step {} ({:?}) moved facts_as_of without writing facts\n{}",
                step,
                delivery,
                describe(case)
            );
        }
        if let Err(message) = check_outcome(
            state.as_ref(),
            &observation,
            decision.outcome,
            &decision.state,
        ) {
            return Err(TestCaseError::fail(format!(
                "step {step} ({delivery:?}): {message}\n{}",
                describe(case)
            )));
        }
        state = Some(decision.state);
    }
    Ok(state)
}

/// The case, one delivery per line, for failure messages.
fn describe(case: &Case) -> String {
    let mut text = format!("skew k = {} ms\nhistory:\n", case.skew_ms);
    for version in &case.history {
        text += &format!(
            "  v{} {} at {}s\n",
            version.number, version.status, version.updated_s
        );
    }
    text += "deliveries:\n";
    for (step, delivery) in case.deliveries.iter().enumerate() {
        text += &format!("  {step}: {delivery:?}\n");
    }
    text + &format!("final: {:?}", case.final_poll)
}

/// The highest version among the delivered webhooks, with its status.
fn highest_delivered(deliveries: &[Delivery]) -> Option<(i64, Status)> {
    deliveries
        .iter()
        .filter_map(|delivery| match delivery {
            Delivery::Webhook {
                version, status, ..
            } => Some((*version, status.clone())),
            Delivery::Poll { .. } => None,
        })
        .max_by_key(|(version, _)| *version)
}

/// Slots of [`separated_observations`]: a webhook or poll at slot `s` speaks for Musement time
/// `s × SLOT_MS`, twice the default margin, so every two observations are clearly ordered.
const SLOT_MS: i64 = 10_000;

/// A truthful set of observations of one item and its order, all at distinct slots: version
/// `k`'s webhook at slot `2k` (its order facts with `order_version` `k`), and polls at odd slots
/// reading the truth there, each with item facts (vouchers that depend on the slot, a product
/// that does not) and order facts (a status that depends on the slot, a fixed identifier).
/// Some observations are delivered twice.
///
/// Every permutation must end in the same state but for provenance: a poll that comes before
/// the webhooks it is newer than sets the status with no version, and those webhooks, not
/// clearly later, are then only recorded (doubtful) — the status and every fact are the same,
/// `status_version` and `source` say which path got there first.
fn separated_observations() -> impl Strategy<Value = Vec<Observation>> {
    let versions = prop::collection::vec(any_status(), 1..6);
    let poll_slots = prop::collection::btree_set(1usize..7, 0..5);
    let repeats = prop::collection::vec(any::<prop::sample::Index>(), 0..3);
    (versions, poll_slots, repeats).prop_map(|(statuses, poll_slots, repeats)| {
        let time = |slot: usize| at_ms(slot as i64 * SLOT_MS);
        let mut observations: Vec<Observation> = statuses
            .iter()
            .enumerate()
            .map(|(k, status)| {
                let version = k as i64 + 1;
                Observation {
                    item: Uuid::nil(),
                    order: Uuid::nil(),
                    status: status.clone(),
                    position: Position::Webhook {
                        version,
                        updated: time(2 * (k + 1)),
                    },
                    item_created: Some(at_ms(-1_000)),
                    order_facts: OrderFacts {
                        id: Some("4242".into()),
                        version: Some(version),
                        created: Some(at_ms(-2_000)),
                        updated: Some(time(2 * (k + 1))),
                        ..OrderFacts::default()
                    },
                    item_facts: ItemFacts::default(),
                    received_at: time(2 * (k + 1)),
                    raw: String::new(),
                }
            })
            .collect();
        for j in poll_slots {
            let slot = 2 * j + 1; // after version 1's slot 2: the item exists
            let truth = &statuses[(slot / 2).min(statuses.len()) - 1];
            observations.push(Observation {
                item: Uuid::nil(),
                order: Uuid::nil(),
                status: truth.clone(),
                position: Position::Poll { as_of: time(slot) },
                item_created: None,
                order_facts: OrderFacts {
                    status: Some(format!("STATUS_AT_{slot}")),
                    identifier: Some("MUS0738876".into()),
                    ..OrderFacts::default()
                },
                item_facts: ItemFacts {
                    vouchers: Some(vec![format!("https://vouchers.example/{slot}.pdf")]),
                    product_id: Some("product-1".into()),
                    product_title: Some("Tour".into()),
                    product_date: Some("2024-06-01 15:30".into()),
                    max_confirmation_time: Some("PT30M".into()),
                },
                received_at: time(slot),
                raw: String::new(),
            });
        }
        let again: Vec<Observation> = repeats
            .iter()
            .map(|index| index.get(&observations).clone())
            .collect();
        observations.extend(again);
        observations
    })
}

/// The item and order after `observations` in this order, through `decide` and `decide_order`.
fn folded(observations: &[Observation]) -> (Option<ItemState>, Option<OrderState>) {
    let rules = Rules::default();
    let (mut item, mut order) = (None, None);
    for observation in observations {
        item = Some(decide(item.as_ref(), observation, &rules).state);
        order = Some(decide_order(order.as_ref(), observation, &rules));
    }
    (item, order)
}

/// `state` without which path set the status (the one thing the delivery order may change).
fn without_provenance(state: Option<ItemState>) -> Option<ItemState> {
    state.map(|state| ItemState {
        status_version: None,
        source: orderwatch::observation::Source::Webhook,
        ..state
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any two permutations of the same separated observations give the same item (but for
    /// provenance) and the same order, facts included.
    #[test]
    fn any_delivery_order_ends_in_the_same_row_and_facts(
        (observations, first, second) in separated_observations().prop_flat_map(|observations| {
            let first = Just(observations.clone()).prop_shuffle();
            let second = Just(observations.clone()).prop_shuffle();
            (Just(observations), first, second)
        })
    ) {
        let (item, order) = folded(&observations);
        for permutation in [&first, &second] {
            let (other_item, other_order) = folded(permutation);
            prop_assert_eq!(
                without_provenance(other_item.clone()),
                without_provenance(item.clone()),
                "item after\n{:#?}\nvs in slot order\n{:#?}", permutation, observations
            );
            prop_assert_eq!(&other_order, &order, "order after\n{:#?}", permutation);
        }
        let item = item.expect("one webhook at least");
        let last_poll = observations.iter().filter_map(|o| match o.position {
            Position::Poll { as_of } => Some(as_of),
            Position::Webhook { .. } => None,
        }).max();
        prop_assert_eq!(item.facts_as_of, last_poll, "the facts are the last poll's");
        prop_assert_eq!(order.expect("an order").polled_as_of, last_poll);
    }

    /// Webhooks only: the highest delivered version's status is stored, whatever the order.
    #[test]
    fn webhooks_alone_store_the_highest_delivered_version(case in case(0)) {
        let state = replay(None, &case.deliveries, &case)?;
        match highest_delivered(&case.deliveries) {
            None => prop_assert!(state.is_none(), "nothing delivered yet a state\n{}", describe(&case)),
            Some((version, status)) => {
                let state = state.expect("a webhook was delivered");
                prop_assert_eq!(
                    (&state.status, state.item_version),
                    (&status, Some(version)),
                    "\n{}",
                    describe(&case)
                );
            }
        }
    }

    /// Webhooks and polls in any order: `item_version` never decreases, outcomes are
    /// consistent, and a final poll clearly after everything yields the true final status.
    #[test]
    fn a_late_clear_poll_converges_to_the_truth(case in case(MAX_POLLS)) {
        let state = replay(None, &case.deliveries, &case)?;
        let state = replay(state, std::slice::from_ref(&case.final_poll), &case)?
            .expect("the final poll leaves a state");
        let truth = &case.history[case.history.len() - 1].status;
        prop_assert_eq!(&state.status, truth, "final state {:?}\n{}", state, describe(&case));
        // Its item facts (vouchers, product, deadline) are the newest too.
        let final_time = musement_time(&case.final_poll.observation(), &Rules::default());
        prop_assert_eq!(state.facts_as_of, Some(final_time), "\n{}", describe(&case));
    }
}
