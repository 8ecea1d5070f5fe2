//! The ordering rule: one pure function, [`decide`], with no I/O. The store calls it for every
//! observation from every path; proptests and the fuzzer call it directly.
//!
//! Webhooks carry Musement's per-item version, which orders them among themselves. Polls carry
//! no version, only the Musement server time of the response, which can trail or lead the
//! webhooks' `order_item_updated` by clock offset and read lag. So: between webhooks the version
//! decides; across sources the time decides, but only when it leads by more than `skew_margin`;
//! in between we keep what we have and ask for a fresh poll (see README "The ordering rule").
//!
//! The rule also decides everything else an observation may write, so the store only carries
//! decisions out: the item's `item_created` (first known) and `item_updated` (of the webhook
//! that set `item_version`), a poll's item facts (vouchers, product, confirmation time;
//! [`Decision::writes_facts`], "the later poll wins" like the status), and the order's facts
//! ([`decide_order`]: webhook facts by `order_version`, poll facts by the later poll).

use chrono::{DateTime, Duration, Utc};

use crate::clock::later;
use crate::observation::{ItemFacts, Observation, OrderFacts, Position, Source, Status};

/// Tuning of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How far one source's time must lead the other's before it is believed (`[store] skew_margin`).
    pub skew_margin: Duration,
    /// A webhook's `order_item_updated` is clamped to at most `received_at` plus this, so a
    /// far-future timestamp cannot freeze the row.
    pub max_future: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            skew_margin: Duration::seconds(5),
            max_future: Duration::hours(1),
        }
    }
}

/// The reconciled state of one item, as stored in `order_items`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    /// Current status.
    pub status: Status,
    /// Version of the webhook that set `status`; `None` when a poll set it.
    pub status_version: Option<i64>,
    /// Highest webhook version seen; `None` while only polls have been seen.
    pub item_version: Option<i64>,
    /// Musement time up to which `status` is known to hold.
    pub as_of: DateTime<Utc>,
    /// Which path `as_of` came from.
    pub as_of_source: Source,
    /// Which path set `status`.
    pub source: Source,
    /// Musement time (`Date`) of the poll whose item facts are stored (vouchers, product,
    /// confirmation deadline); `None` before any, or when unknown (rows older than schema
    /// version 3), so that the next applied or confirmed poll's facts replace them.
    pub facts_as_of: Option<DateTime<Utc>>,
    /// The poll facts stored (vouchers, product, confirmation time), as of `facts_as_of`.
    pub facts: ItemFacts,
    /// Webhook `order_item_created`: the first one known.
    pub item_created: Option<DateTime<Utc>>,
    /// `order_item_updated` of the webhook that set `item_version`.
    pub item_updated: Option<DateTime<Utc>>,
}

/// The order-level facts stored in `orders`, as the rule decides them: the same facts an
/// observation brings ([`OrderFacts`]: `id` and `created` the first known, `version` the
/// highest webhook `order_version` with its `updated`, `status` and `identifier` of the latest
/// poll that had them), and the time of that poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderState {
    /// The facts kept.
    pub facts: OrderFacts,
    /// Musement time of the poll that last wrote `status`/`identifier`.
    pub polled_as_of: Option<DateTime<Utc>>,
}

/// What the rule made of an observation; stored in `item_events.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The observation set the status (new item, newer version, or a poll clearly later).
    Applied,
    /// A poll agreed with the current status (and advanced `as_of` when clearly later).
    Confirmed,
    /// Already known: the same version again.
    Duplicate,
    /// Older than what is stored.
    Stale,
    /// Same version as the one that set the status, but another status. Kept the row; re-poll.
    Conflict,
    /// Sources disagree within the skew margin. Kept the status; re-poll to settle it.
    Doubtful,
}

impl Outcome {
    /// The database and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Confirmed => "confirmed",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Conflict => "conflict",
            Self::Doubtful => "doubtful",
        }
    }

    /// Whether the order must be polled again because the sources disagree.
    pub fn needs_repoll(self) -> bool {
        matches!(self, Self::Conflict | Self::Doubtful)
    }
}

/// The rule's verdict: the outcome and the state to store (equal to the current one when
/// nothing changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the observation was, measured against the stored state.
    pub outcome: Outcome,
    /// The state to store.
    pub state: ItemState,
    /// Whether the poll's item facts replace the stored ones (`state.facts` and
    /// `state.facts_as_of` are then the poll's). Never for a webhook, which has none.
    pub writes_facts: bool,
}

/// The Musement time an observation speaks for: a webhook's `order_item_updated` (clamped to
/// `received_at + max_future`) or a poll's `Date`.
pub fn musement_time(observation: &Observation, rules: &Rules) -> DateTime<Utc> {
    match observation.position {
        Position::Webhook { updated, .. } => {
            updated.min(later(observation.received_at, rules.max_future))
        }
        Position::Poll { as_of } => as_of.min(later(observation.received_at, rules.max_future)),
    }
}

/// Decides what `observation` does to an item whose stored state is `current` (`None`: a new
/// item, or a row the store could not read): the status (by version between webhooks, by time
/// across sources), then what else the observation writes with it.
pub fn decide(current: Option<&ItemState>, observation: &Observation, rules: &Rules) -> Decision {
    let decision = decide_status(current, observation, rules);
    with_item_details(decision, current, observation)
}

fn decide_status(
    current: Option<&ItemState>,
    observation: &Observation,
    rules: &Rules,
) -> Decision {
    let time = musement_time(observation, rules);
    let Some(current) = current else {
        let from_poll = observation.position.source() == Source::Poll;
        return Decision {
            outcome: Outcome::Applied,
            state: ItemState {
                status: observation.status.clone(),
                status_version: observation.position.version(),
                item_version: observation.position.version(),
                as_of: time,
                as_of_source: observation.position.source(),
                source: observation.position.source(),
                facts_as_of: from_poll.then_some(time),
                facts: ItemFacts::default(),
                item_created: None,
                item_updated: None,
            },
            writes_facts: from_poll,
        };
    };
    match observation.position {
        Position::Webhook { version, .. } => {
            decide_webhook(current, &observation.status, version, time, rules)
        }
        Position::Poll { .. } => {
            with_facts(decide_poll(current, &observation.status, time, rules), time)
        }
    }
}

/// What a decision writes besides the status:
/// - a poll's item facts, over the stored ones, when the poll is later than the one that
///   wrote them ([`with_facts`]);
/// - `item_updated`, when this webhook's version becomes `item_version`;
/// - `item_created`, the first one known, filled in by any observation that writes the row.
///
/// An observation that changes nothing else (stale, duplicate, conflict) leaves every one of
/// them as it was.
fn with_item_details(
    mut decision: Decision,
    current: Option<&ItemState>,
    observation: &Observation,
) -> Decision {
    if decision.writes_facts {
        let stored = current.map(|c| c.facts.clone()).unwrap_or_default();
        decision.state.facts = observation.item_facts.over(&stored);
    }
    if let Position::Webhook { version, updated } = observation.position
        && decision.state.item_version == Some(version)
        && current.and_then(|c| c.item_version) != Some(version)
    {
        decision.state.item_updated = Some(updated);
    }
    if current != Some(&decision.state) && decision.state.item_created.is_none() {
        decision.state.item_created = observation.item_created;
    }
    decision
}

/// Decides the order's facts after `observation` (`current`: `None` for a new order, or a
/// row the store could not read):
/// - webhook facts: `order_version` and its `order_updated` from the highest version seen,
///   `order_id` and `order_created` the first ones known;
/// - a poll's `status` and `identifier`, when the poll is later than the one that wrote them
///   ([`later_poll`]); one it leaves out keeps its stored value.
pub fn decide_order(
    current: Option<&OrderState>,
    observation: &Observation,
    rules: &Rules,
) -> OrderState {
    let seen = &observation.order_facts;
    let mut next = current.cloned().unwrap_or_default();
    let kept = &mut next.facts;
    kept.id = kept.id.take().or_else(|| seen.id.clone());
    kept.created = kept.created.or(seen.created);
    if let Some(version) = seen.version
        && kept.version.is_none_or(|stored| version > stored)
    {
        kept.version = Some(version);
        kept.updated = seen.updated;
    }
    let says_something = seen.status.is_some() || seen.identifier.is_some();
    if says_something && poll_writes_order_facts(next.polled_as_of, observation, rules) {
        let kept = &mut next.facts;
        kept.status = seen.status.clone().or(kept.status.take());
        kept.identifier = seen.identifier.clone().or(kept.identifier.take());
        next.polled_as_of = Some(musement_time(observation, rules));
    }
    next
}

/// Between two polls the later `Date` wins; nothing stored (or an unreadable time) loses to
/// any poll.
pub fn later_poll(stored: Option<DateTime<Utc>>, time: DateTime<Utc>) -> bool {
    stored.is_none_or(|stored| time > stored)
}

/// Whether a poll's order facts (`order_status`, `identifier`) replace the stored ones, whose
/// poll was at `polled_as_of` (`orders.order_polled_as_of`).
pub fn poll_writes_order_facts(
    polled_as_of: Option<DateTime<Utc>>,
    observation: &Observation,
    rules: &Rules,
) -> bool {
    observation.position.source() == Source::Poll
        && later_poll(polled_as_of, musement_time(observation, rules))
}

/// Lets a poll at `time` write its item facts when it is later than the poll that wrote the
/// stored ones: item facts follow the later poll, as the order's poll facts do, whatever the
/// poll says about the status (webhooks carry no facts, so a webhook newer than the poll says
/// nothing against them). Voucher URLs, product and confirmation time never go back to an
/// older poll's, and the facts end the same in whatever order the polls arrive. A `stale`
/// poll writes nothing at all.
fn with_facts(mut decision: Decision, time: DateTime<Utc>) -> Decision {
    let stale = decision.outcome == Outcome::Stale;
    decision.writes_facts = !stale && later_poll(decision.state.facts_as_of, time);
    if decision.writes_facts {
        decision.state.facts_as_of = Some(time);
    }
    decision
}

fn decide_webhook(
    current: &ItemState,
    status: &Status,
    version: i64,
    time: DateTime<Utc>,
    rules: &Rules,
) -> Decision {
    let keep = |outcome| Decision {
        outcome,
        state: current.clone(),
        writes_facts: false,
    };
    let clearly_later = time > current.as_of + rules.skew_margin;
    match current.item_version {
        // A lower version whose time leads the stored `as_of` by more than the margin: versions
        // and times rise together in every genuine history, so the stored version is the one
        // not to believe (e.g. a bogus 9223372036854775807 that would make every later webhook
        // stale). Time decides, and `item_version` comes down to this webhook's.
        Some(seen) if version < seen && clearly_later => {
            return Decision {
                outcome: Outcome::Applied,
                state: ItemState {
                    status: status.clone(),
                    status_version: Some(version),
                    item_version: Some(version),
                    as_of: time,
                    as_of_source: Source::Webhook,
                    source: Source::Webhook,
                    ..current.clone()
                },
                writes_facts: false,
            };
        }
        Some(seen) if version < seen => return keep(Outcome::Stale),
        Some(seen) if version == seen => {
            let set_status = current.status_version == Some(version);
            return keep(if set_status && current.status != *status {
                Outcome::Conflict
            } else {
                Outcome::Duplicate
            });
        }
        _ => {}
    }
    // A version above everything seen. Against another webhook it wins outright; against a poll
    // it must be clearly later than what the poll saw.
    if current.as_of_source == Source::Webhook || clearly_later {
        Decision {
            outcome: Outcome::Applied,
            state: ItemState {
                status: status.clone(),
                status_version: Some(version),
                item_version: Some(version),
                as_of: if current.as_of_source == Source::Webhook {
                    time.max(current.as_of)
                } else {
                    time
                },
                as_of_source: Source::Webhook,
                source: Source::Webhook,
                ..current.clone()
            },
            writes_facts: false,
        }
    } else {
        Decision {
            outcome: Outcome::Doubtful,
            state: ItemState {
                item_version: Some(version),
                ..current.clone()
            },
            writes_facts: false,
        }
    }
}

fn decide_poll(
    current: &ItemState,
    status: &Status,
    time: DateTime<Utc>,
    rules: &Rules,
) -> Decision {
    let same_status = current.status == *status;
    let keep = |outcome| Decision {
        outcome,
        state: current.clone(),
        writes_facts: false,
    };
    // Against a poll, any later response wins; against a webhook it must lead by the margin.
    let later = match current.as_of_source {
        Source::Poll => time > current.as_of,
        Source::Webhook => time > current.as_of + rules.skew_margin,
    };
    if later {
        let state = if same_status {
            ItemState {
                as_of: time,
                as_of_source: Source::Poll,
                ..current.clone()
            }
        } else {
            ItemState {
                status: status.clone(),
                status_version: None,
                as_of: time,
                as_of_source: Source::Poll,
                source: Source::Poll,
                ..current.clone()
            }
        };
        let outcome = if same_status {
            Outcome::Confirmed
        } else {
            Outcome::Applied
        };
        return Decision {
            outcome,
            state,
            writes_facts: false,
        };
    }
    match current.as_of_source {
        Source::Poll => keep(Outcome::Stale),
        Source::Webhook if same_status => keep(Outcome::Confirmed),
        Source::Webhook => keep(Outcome::Doubtful),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::OrderFacts;
    use uuid::Uuid;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn webhook(version: i64, status: Status, updated: i64) -> Observation {
        Observation::bare(
            Uuid::nil(),
            Uuid::nil(),
            status,
            Position::Webhook {
                version,
                updated: at(updated),
            },
            at(updated),
        )
    }

    fn poll(status: Status, as_of: i64) -> Observation {
        Observation {
            position: Position::Poll { as_of: at(as_of) },
            ..webhook(0, status, as_of)
        }
    }

    fn after(steps: &[Observation]) -> (Option<ItemState>, Vec<Outcome>) {
        let rules = Rules::default();
        let mut state = None;
        let mut outcomes = Vec::new();
        for step in steps {
            let decision = decide(state.as_ref(), step, &rules);
            outcomes.push(decision.outcome);
            state = Some(decision.state);
        }
        (state, outcomes)
    }

    use Outcome::*;
    use Status::{Ok as OK, Pending, Refunded};

    #[test]
    fn webhooks_order_by_version() {
        let (state, outcomes) = after(&[
            webhook(2, OK, 10),
            webhook(1, Pending, 5),
            webhook(2, OK, 10),
            webhook(3, Refunded, 20),
        ]);
        assert_eq!(outcomes, [Applied, Stale, Duplicate, Applied]);
        let state = state.unwrap();
        assert_eq!(state.status, Refunded);
        assert_eq!(
            (state.item_version, state.status_version),
            (Some(3), Some(3))
        );
    }

    #[test]
    fn same_version_other_status_is_a_conflict_that_keeps_the_row() {
        let (state, outcomes) = after(&[webhook(4, OK, 10), webhook(4, Refunded, 10)]);
        assert_eq!(outcomes, [Applied, Conflict]);
        assert_eq!(state.unwrap().status, OK);
    }

    #[test]
    fn poll_must_lead_a_webhook_by_the_margin() {
        // Webhook at t=10; margin 5 s.
        let (state, outcomes) = after(&[webhook(1, Pending, 10), poll(OK, 14)]);
        assert_eq!(outcomes, [Applied, Doubtful]);
        assert_eq!(state.unwrap().status, Pending);

        let (state, outcomes) = after(&[webhook(1, Pending, 10), poll(Pending, 14)]);
        assert_eq!(outcomes, [Applied, Confirmed]);
        assert_eq!(
            state.unwrap().as_of,
            at(10),
            "within the margin as_of does not move"
        );

        let (state, outcomes) = after(&[webhook(1, Pending, 10), poll(OK, 16)]);
        assert_eq!(outcomes, [Applied, Applied]);
        let state = state.unwrap();
        assert_eq!(
            (state.status, state.status_version, state.source),
            (OK, None, Source::Poll)
        );
        assert_eq!(
            state.item_version,
            Some(1),
            "the highest version seen is kept"
        );
    }

    #[test]
    fn late_webhook_older_than_a_poll_does_not_undo_it() {
        // Poll at t=30 says REFUNDED; a webhook for version 2 (OK at t=20) arrives late.
        let (state, outcomes) = after(&[
            webhook(1, Pending, 10),
            poll(Refunded, 30),
            webhook(2, OK, 20),
        ]);
        assert_eq!(outcomes, [Applied, Applied, Doubtful]);
        let state = state.unwrap();
        assert_eq!(state.status, Refunded);
        assert_eq!(state.item_version, Some(2));
        // Its duplicate is recognised as already recorded.
        let decision = decide(Some(&state), &webhook(2, OK, 20), &Rules::default());
        assert_eq!(decision.outcome, Duplicate);
    }

    #[test]
    fn newer_webhook_beats_an_older_poll() {
        let (state, outcomes) = after(&[poll(Pending, 10), webhook(5, OK, 20)]);
        assert_eq!(outcomes, [Applied, Applied]);
        assert_eq!(state.unwrap().status, OK);
    }

    #[test]
    fn polls_order_by_time() {
        let (state, outcomes) =
            after(&[poll(OK, 20), poll(Pending, 10), poll(OK, 20), poll(OK, 21)]);
        assert_eq!(outcomes, [Applied, Stale, Stale, Confirmed]);
        assert_eq!(state.unwrap().as_of, at(21));
    }

    #[test]
    fn far_future_poll_date_is_clamped_too() {
        let mut far = poll(OK, 0);
        far.position = Position::Poll {
            as_of: at(10 * 365 * 86_400),
        };
        let (state, _) = after(&[webhook(1, Pending, 0), far]);
        assert_eq!(state.as_ref().unwrap().as_of, at(3600));
        // A webhook an hour and a bit later still wins: the row is not frozen.
        let decision = decide(
            state.as_ref(),
            &webhook(2, Refunded, 3700),
            &Rules::default(),
        );
        assert_eq!(decision.outcome, Applied);
    }

    /// What each step did to the item facts: `Some(time)` when it wrote them.
    fn facts_written(steps: &[Observation]) -> Vec<Option<DateTime<Utc>>> {
        let rules = Rules::default();
        let mut state = None;
        let mut written = Vec::new();
        for step in steps {
            let decision = decide(state.as_ref(), step, &rules);
            assert_eq!(
                decision.writes_facts,
                decision.state.facts_as_of != state.as_ref().and_then(|s| s.facts_as_of),
                "writes_facts says whether facts_as_of moves"
            );
            written.push(decision.state.facts_as_of.filter(|_| decision.writes_facts));
            state = Some(decision.state);
        }
        written
    }

    #[test]
    fn item_facts_follow_the_later_poll() {
        // A poll at 30, then one answered with an older Date (20): stale, facts untouched.
        assert_eq!(
            facts_written(&[poll(OK, 30), poll(Pending, 20), poll(OK, 30), poll(OK, 31)]),
            [Some(at(30)), None, None, Some(at(31))]
        );
        // Webhooks never write facts and keep the facts' time.
        assert_eq!(
            facts_written(&[poll(Pending, 10), webhook(3, OK, 40), poll(OK, 20)]),
            [Some(at(10)), None, Some(at(20))],
            "a poll confirming a webhook's status within the margin is still newer than the \
             poll that wrote the facts"
        );
        // A poll in doubt about the status (another one than a webhook's, within the margin) is
        // still the later poll: its facts are written, and the re-poll's after them.
        assert_eq!(
            facts_written(&[
                poll(Pending, 10),
                webhook(3, OK, 40),
                poll(Pending, 42),
                poll(OK, 50)
            ]),
            [Some(at(10)), None, Some(at(42)), Some(at(50))]
        );
        // So the facts do not depend on the order: the poll before a newer webhook writes its
        // facts whether it comes before or after it.
        assert_eq!(
            facts_written(&[
                webhook(1, Pending, 20),
                poll(Pending, 30),
                webhook(2, OK, 40)
            ]),
            [None, Some(at(30)), None]
        );
        assert_eq!(
            facts_written(&[
                webhook(2, OK, 40),
                poll(Pending, 30),
                webhook(1, Pending, 20)
            ]),
            [None, Some(at(30)), None]
        );
        // A Date older than the facts' poll writes nothing, even when it confirms a webhook.
        assert_eq!(
            facts_written(&[poll(OK, 30), webhook(3, OK, 40), poll(OK, 25)]),
            [Some(at(30)), None, None]
        );
    }

    #[test]
    fn order_facts_follow_the_later_poll() {
        let rules = Rules::default();
        assert!(poll_writes_order_facts(None, &poll(OK, 10), &rules));
        assert!(poll_writes_order_facts(Some(at(9)), &poll(OK, 10), &rules));
        assert!(!poll_writes_order_facts(
            Some(at(10)),
            &poll(OK, 10),
            &rules
        ));
        assert!(!poll_writes_order_facts(
            Some(at(11)),
            &poll(OK, 10),
            &rules
        ));
        assert!(!poll_writes_order_facts(None, &webhook(1, OK, 10), &rules));
    }

    #[test]
    fn decide_order_takes_webhook_facts_by_version_and_poll_facts_by_time() {
        let rules = Rules::default();
        let order_webhook = |version: i64, updated: i64, id: &str| Observation {
            order_facts: OrderFacts {
                id: Some(id.into()),
                version: Some(version),
                created: Some(at(1)),
                updated: Some(at(updated)),
                ..OrderFacts::default()
            },
            ..webhook(1, OK, updated)
        };
        let order_poll = |as_of: i64, status: Option<&str>, identifier: Option<&str>| Observation {
            order_facts: OrderFacts {
                status: status.map(str::to_owned),
                identifier: identifier.map(str::to_owned),
                ..OrderFacts::default()
            },
            ..poll(OK, as_of)
        };
        let fold = |steps: &[Observation]| {
            steps
                .iter()
                .fold(None, |order, step| {
                    Some(decide_order(order.as_ref(), step, &rules))
                })
                .unwrap()
        };
        let expected = OrderState {
            facts: OrderFacts {
                id: Some("7".into()),
                version: Some(3),
                created: Some(at(1)),
                updated: Some(at(30)),
                status: Some("OK".into()),
                identifier: Some("MUS1".into()),
            },
            polled_as_of: Some(at(40)),
        };
        let steps = [
            order_webhook(2, 20, "7"),
            order_poll(25, Some("PENDING"), Some("MUS1")),
            order_webhook(3, 30, "7"),
            order_poll(40, Some("OK"), None),
            order_webhook(3, 35, "8"),
            order_webhook(1, 10, "9"),
            order_poll(39, Some("KO"), Some("MUS2")),
            order_poll(50, None, None),
        ];
        assert_eq!(fold(&steps), expected, "in arrival order");
        let mut reversed = steps.to_vec();
        reversed.reverse();
        let mut expected_reversed = expected.clone();
        // The first known order_id wins, and the same version keeps the first order_updated.
        // A field the latest poll leaves out keeps what an earlier-arriving poll wrote: the
        // one order-dependent fact, for values Musement never changes (id, identifier).
        expected_reversed.facts.id = Some("9".into());
        expected_reversed.facts.updated = Some(at(35));
        expected_reversed.facts.identifier = Some("MUS2".into());
        assert_eq!(fold(&reversed), expected_reversed, "reversed");
    }

    #[test]
    fn a_bogus_huge_version_does_not_make_later_webhooks_stale_forever() {
        let bogus = webhook(i64::MAX, Refunded, 10);
        // Genuine webhooks within the margin of the bogus one's time are still stale ...
        let (state, outcomes) =
            after(&[webhook(22, Pending, 5), bogus.clone(), webhook(23, OK, 14)]);
        assert_eq!(outcomes, [Applied, Applied, Stale]);
        assert_eq!(state.unwrap().item_version, Some(i64::MAX));
        // ... but one clearly later is believed, and versions count from it again.
        let (state, outcomes) = after(&[
            webhook(22, Pending, 5),
            bogus.clone(),
            webhook(24, OK, 16),
            webhook(25, Refunded, 20),
            webhook(24, OK, 16),
        ]);
        assert_eq!(outcomes, [Applied, Applied, Applied, Applied, Stale]);
        let state = state.unwrap();
        assert_eq!((state.status, state.item_version), (Refunded, Some(25)));
        // The same after a poll set the row: a lower version clearly later than the poll wins.
        let (state, outcomes) = after(&[bogus, poll(OK, 30), webhook(23, Refunded, 40)]);
        assert_eq!(outcomes, [Applied, Applied, Applied]);
        let state = state.unwrap();
        assert_eq!(
            (state.status, state.status_version, state.item_version),
            (Refunded, Some(23), Some(23))
        );
    }

    #[test]
    fn far_future_webhook_time_is_clamped() {
        let mut far = webhook(1, OK, 0);
        far.position = Position::Webhook {
            version: 1,
            updated: at(10 * 365 * 86_400),
        };
        let (state, _) = after(&[far]);
        assert_eq!(state.unwrap().as_of, at(3600));
    }

    /// `observation`, its Musement time `ms` milliseconds later.
    fn plus_ms(mut observation: Observation, ms: i64) -> Observation {
        observation.position = match observation.position {
            Position::Webhook { version, updated } => Position::Webhook {
                version,
                updated: updated + Duration::milliseconds(ms),
            },
            Position::Poll { as_of } => Position::Poll {
                as_of: as_of + Duration::milliseconds(ms),
            },
        };
        observation
    }

    #[test]
    fn leading_by_exactly_the_margin_is_not_enough() {
        // Margin 5 s. A newer webhook exactly 5 s after a poll's Date is in doubt; 1 ms more wins.
        let (_, outcomes) = after(&[poll(Pending, 10), webhook(1, OK, 15)]);
        assert_eq!(outcomes, [Applied, Doubtful]);
        let (_, outcomes) = after(&[poll(Pending, 10), plus_ms(webhook(1, OK, 15), 1)]);
        assert_eq!(outcomes, [Applied, Applied]);
        // A poll exactly 5 s after a webhook's time: in doubt, or confirmed without moving as_of.
        let (_, outcomes) = after(&[webhook(1, Pending, 10), poll(OK, 15)]);
        assert_eq!(outcomes, [Applied, Doubtful]);
        let (state, outcomes) = after(&[webhook(1, Pending, 10), poll(Pending, 15)]);
        assert_eq!(outcomes, [Applied, Confirmed]);
        assert_eq!(
            (state.as_ref().unwrap().as_of, state.unwrap().as_of_source),
            (at(10), Source::Webhook)
        );
        let (_, outcomes) = after(&[webhook(1, Pending, 10), plus_ms(poll(OK, 15), 1)]);
        assert_eq!(outcomes, [Applied, Applied]);
        // A lower version exactly 5 s later is stale; 1 ms more and the stored version is the
        // one not believed.
        let (_, outcomes) = after(&[webhook(2, OK, 10), webhook(1, Pending, 15)]);
        assert_eq!(outcomes, [Applied, Stale]);
        let (_, outcomes) = after(&[webhook(2, OK, 10), plus_ms(webhook(1, Pending, 15), 1)]);
        assert_eq!(outcomes, [Applied, Applied]);
    }

    #[test]
    fn the_same_version_clearly_later_is_still_a_duplicate_or_a_conflict() {
        let (state, outcomes) = after(&[
            webhook(3, OK, 10),
            webhook(3, OK, 30),
            webhook(3, Refunded, 30),
        ]);
        assert_eq!(outcomes, [Applied, Duplicate, Conflict]);
        let state = state.unwrap();
        assert_eq!((state.status, state.as_of), (OK, at(10)));
    }

    #[test]
    fn as_of_does_not_go_back_when_a_higher_version_has_an_earlier_time() {
        // Versions order webhooks, so version 2 is applied; but the status held at least
        // until version 1's time.
        let (state, outcomes) = after(&[webhook(1, OK, 20), webhook(2, Refunded, 10)]);
        assert_eq!(outcomes, [Applied, Applied]);
        let state = state.unwrap();
        assert_eq!((state.status, state.as_of), (Refunded, at(20)));
    }

    #[test]
    fn a_clearly_later_poll_that_agrees_puts_as_of_on_the_polls_clock() {
        let (state, outcomes) = after(&[webhook(1, OK, 10), poll(OK, 20)]);
        assert_eq!(outcomes, [Applied, Confirmed]);
        let state = state.unwrap();
        assert_eq!(
            (state.as_of, state.as_of_source),
            (at(20), Source::Poll),
            "as_of moves to the poll's Date, on the poll's clock"
        );
        assert_eq!(
            (state.source, state.status_version),
            (Source::Webhook, Some(1)),
            "the webhook still set the status"
        );
    }
}
