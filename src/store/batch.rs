//! A batch of observations folded over the rows it touches, with no I/O: an engine loads the
//! stored rows of every order and item the batch names (and every item of those orders, which
//! decide when the order is polled) into [`Loaded`], [`plan`] runs the pure rule over the
//! observations in queue order, and the engine writes the [`Plan`]: each touched row once,
//! each observation's event, in as few statements as the engine can. The result is the one a
//! row-by-row application in the same order gives (the batch tests check it against
//! `apply` one observation at a time), so a network database pays a round trip per table,
//! not per webhook.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::StoreSettings;
use super::cells::Read;
use super::poll_state::{self, ItemPollView, PollFields, PollPlan, Trigger};
use super::rule::{Decision, ItemState, OrderState, Outcome, Rules, decide, decide_order};
use crate::backoff::BackoffPolicy;
use crate::clock::later;
use crate::observation::{ItemFacts, Observation, Source};

/// The longest a persistent doubt pushes an order's re-poll out.
const MAX_REPOLL_DELAY: Duration = Duration::hours(1);

/// An `orders` row as the batch needs it.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    /// Its facts (an unreadable cell is unknown: `None`).
    pub state: OrderState,
    /// Its polling bookkeeping.
    pub poll: PollFields,
    /// `repoll_at`.
    pub repoll_mark: Read<DateTime<Utc>>,
    /// `repoll_attempts`.
    pub repoll_attempts: i64,
}

/// An `order_items` row as the batch needs it.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// The order it is stored under (`order_items.order_uuid`, as text).
    pub order_key: String,
    /// The rule's view of the row; `None` when a cell the status rule needs could not be
    /// read: the state is unknown, and the next decision replaces it whole.
    pub state: Option<ItemState>,
    /// The poll facts' columns as read (an unreadable one is `None`), also when `state` is
    /// unknown: a decision that does not write facts leaves these columns as they are.
    pub facts: ItemFacts,
    /// `first_seen_at`; `None` when unreadable (the write repairs it).
    pub first_seen: Option<DateTime<Utc>>,
    /// When its first event arrived: loaded only when `first_seen` is unreadable, to repair it
    /// (`None`: no readable event either, and `now` is used).
    pub first_event: Option<DateTime<Utc>>,
    /// What decides when its order is polled.
    pub poll_view: ItemPollView,
}

/// The stored rows a batch touches, keyed by UUID text as stored.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The orders the observations name (absent: no row yet).
    pub orders: HashMap<String, StoredOrder>,
    /// The items the observations name and every item of their orders.
    pub items: HashMap<String, StoredItem>,
}

/// What to write for one order.
#[derive(Debug, Clone)]
pub struct OrderWrite {
    /// `order_uuid`.
    pub key: String,
    /// Facts to write when they changed, creating the row if there is none (`first_seen_at`
    /// = now); `None`: leave them.
    pub facts: Option<OrderState>,
    /// A re-poll mark to set: `repoll_at` and `repoll_attempts`.
    pub repoll: Option<(DateTime<Utc>, i64)>,
    /// Whether and when it is polled next.
    pub poll: PollPlan,
}

/// What to write for one item whose row changed.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    /// `item_uuid`.
    pub key: String,
    /// `order_uuid` for a new row (an existing row keeps its own).
    pub order_key: String,
    /// The decided state.
    pub state: ItemState,
    /// `first_seen_at` (now for a new item): dates the confirmation deadline.
    pub first_seen: DateTime<Utc>,
    /// Whether `first_seen` replaces an unreadable stored one.
    pub repaired_first_seen: bool,
    /// Whether the status changed (moves `changed_at`).
    pub status_changed: bool,
    /// Whether the poll facts' columns are written (`state.facts` is then a poll's).
    pub writes_facts: bool,
    /// The confirmation deadline the newest facts that had one give (`first_seen_at` plus
    /// `max_confirmation_time`); `None`: keep the stored one.
    pub confirm_deadline: Option<DateTime<Utc>>,
}

/// What to log once the batch is stored.
#[derive(Debug, Clone)]
pub struct Note {
    /// Index of the observation in the batch.
    pub index: usize,
    /// The item's state before it.
    pub before: Option<ItemState>,
    /// What the rule made of it.
    pub decision: Decision,
}

/// What a batch writes and answers.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Each observation's outcome, in batch order (also each event's).
    pub outcomes: Vec<Outcome>,
    /// Every order the batch names, in order of first mention.
    pub orders: Vec<OrderWrite>,
    /// Every item whose row changes, in order of first change.
    pub items: Vec<ItemWrite>,
    /// The rule's decisions, for the log lines.
    pub notes: Vec<Note>,
}

/// An item while the batch is folded over it: what reading its row back would give.
struct ItemInFold {
    stored: Option<StoredItem>,
    state: Option<ItemState>,
    /// The poll facts' columns.
    facts: ItemFacts,
    order_key: String,
    first_seen: Option<DateTime<Utc>>,
    poll_view: Option<ItemPollView>,
    write: Option<ItemWrite>,
}

/// An order while the batch is folded over it.
struct OrderInFold {
    stored: Option<StoredOrder>,
    state: Option<OrderState>,
    facts_changed: bool,
    repoll_mark: Read<DateTime<Utc>>,
    repoll_attempts: i64,
    repoll: Option<(DateTime<Utc>, i64)>,
    poll: Option<PollPlan>,
}

/// Folds `observations` (in queue order) over `loaded` at our clock `now`, as if each were
/// applied alone in that order.
pub fn plan(
    loaded: Loaded,
    observations: &[&Observation],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> Plan {
    let Loaded {
        orders: stored_orders,
        items: stored_items,
    } = loaded;
    let mut items: HashMap<String, ItemInFold> = HashMap::new();
    let mut item_order: Vec<String> = Vec::new();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (key, stored) in stored_items {
        members
            .entry(stored.order_key.clone())
            .or_default()
            .push(key.clone());
        items.insert(
            key,
            ItemInFold {
                state: stored.state.clone(),
                facts: stored.facts.clone(),
                order_key: stored.order_key.clone(),
                first_seen: stored.first_seen,
                poll_view: Some(stored.poll_view.clone()),
                stored: Some(stored),
                write: None,
            },
        );
    }
    let mut orders: HashMap<String, OrderInFold> = HashMap::new();
    let mut order_keys: Vec<String> = Vec::new();
    let mut plan = Plan::default();
    for (index, observation) in observations.iter().enumerate() {
        let order_key = observation.order.to_string();
        let item_key = observation.item.to_string();
        let order = orders.entry(order_key.clone()).or_insert_with(|| {
            order_keys.push(order_key.clone());
            let stored = stored_orders.get(&order_key).cloned();
            OrderInFold {
                state: stored.as_ref().map(|s| s.state.clone()),
                repoll_mark: stored.as_ref().map_or(Ok(None), |s| s.repoll_mark),
                repoll_attempts: stored.as_ref().map_or(0, |s| s.repoll_attempts),
                stored,
                facts_changed: false,
                repoll: None,
                poll: None,
            }
        });
        let decided_order = decide_order(order.state.as_ref(), observation, &settings.rules);
        if order.state.as_ref() != Some(&decided_order) {
            order.facts_changed = true;
            order.state = Some(decided_order);
        }
        let item = items.entry(item_key.clone()).or_insert_with(|| {
            members
                .entry(order_key.clone())
                .or_default()
                .push(item_key.clone());
            ItemInFold {
                stored: None,
                state: None,
                facts: ItemFacts::default(),
                order_key: order_key.clone(),
                first_seen: None,
                poll_view: None,
                write: None,
            }
        });
        let before = item.state.clone();
        let decision = decide(before.as_ref(), observation, &settings.rules);
        fold_item(item, &item_key, &decision, &mut item_order, now);
        if decision.outcome.needs_repoll() {
            mark_for_repoll(order, &settings.rules, now);
        }
        let trigger = match observation.position.source() {
            Source::Webhook => Trigger::Webhook,
            Source::Poll => Trigger::Other, // the caller that polled says when the order is due again
        };
        let fields = order.poll_fields();
        let views = members
            .get(&order_key)
            .into_iter()
            .flatten()
            .filter_map(|key| items.get(key).and_then(|i| i.poll_view.as_ref()));
        order.poll = Some(poll_state::plan(
            &fields,
            views,
            &settings.policy,
            trigger,
            now,
        ));
        plan.outcomes.push(decision.outcome);
        plan.notes.push(Note {
            index,
            before,
            decision,
        });
    }
    plan.orders = order_keys
        .into_iter()
        .map(|key| {
            let order = orders.remove(&key).expect("every named order is folded");
            OrderWrite {
                facts: order.facts_changed.then(|| order.state.clone()).flatten(),
                repoll: order.repoll,
                poll: order.poll.expect("every named order is planned"),
                key,
            }
        })
        .collect();
    plan.items = item_order
        .into_iter()
        .filter_map(|key| items.remove(&key).and_then(|item| item.write))
        .collect();
    plan
}

impl OrderInFold {
    /// The polling fields as a row-by-row application would read them now.
    fn poll_fields(&self) -> PollFields {
        let mut fields = self
            .stored
            .as_ref()
            .map_or_else(PollFields::new_order, |s| s.poll.clone());
        if let Some(poll) = &self.poll {
            fields.next = Some(poll.next);
        }
        fields
    }
}

/// Folds one decision into its item: its row as written and read back (state, facts' columns,
/// poll view), and what its one write must carry. A row is written when a decision changes
/// its state, or to repair an unreadable `first_seen_at`; `changed_at` moves when any
/// decision in the batch changed the status; the facts' columns are written by a new row and
/// by a decision that writes facts, and are kept otherwise (also when the decision's state,
/// made from an unreadable row, carries none).
fn fold_item(
    item: &mut ItemInFold,
    key: &str,
    decision: &Decision,
    item_order: &mut Vec<String>,
    now: DateTime<Utc>,
) {
    let before = item.state.as_ref();
    let repairs_first_seen = item.stored.is_some() && item.first_seen.is_none();
    if before == Some(&decision.state) && !repairs_first_seen {
        return;
    }
    let status_changed = before.map(|b| &b.status) != Some(&decision.state.status);
    let first_seen = match (item.first_seen, &item.stored) {
        (Some(first_seen), _) => first_seen,
        (None, Some(stored)) => stored.first_event.unwrap_or(now),
        (None, None) => now,
    };
    let inserts = item.stored.is_none() && item.write.is_none();
    let writes_facts = inserts || decision.writes_facts;
    if writes_facts {
        item.facts = decision.state.facts.clone();
    }
    let deadline = writes_facts
        .then(|| confirm_deadline(&item.facts, first_seen))
        .flatten();
    item.first_seen = Some(first_seen);
    item.state = Some(ItemState {
        facts: item.facts.clone(),
        ..decision.state.clone()
    });
    let write = item.write.get_or_insert_with(|| {
        item_order.push(key.to_owned());
        ItemWrite {
            key: key.to_owned(),
            order_key: item.order_key.clone(),
            state: decision.state.clone(),
            first_seen,
            repaired_first_seen: false,
            status_changed: false,
            writes_facts: false,
            confirm_deadline: None,
        }
    });
    write.state = item.state.clone().expect("just decided");
    write.first_seen = first_seen;
    write.repaired_first_seen |= repairs_first_seen;
    write.status_changed |= status_changed;
    write.writes_facts |= decision.writes_facts;
    write.confirm_deadline = deadline.or(write.confirm_deadline);
    // The poll view as the row reads back: the facts' part is kept with the columns (an
    // unreadable voucher list still counts as having vouchers, like the SQL that reads it).
    let status = decision.state.status.clone();
    item.poll_view = Some(match item.poll_view.take() {
        Some(kept) if !writes_facts => ItemPollView { status, ..kept },
        _ => ItemPollView {
            status,
            has_vouchers: item.facts.vouchers.as_ref().is_some_and(|v| !v.is_empty()),
            product_date: item.facts.product_date.clone(),
        },
    });
}

/// `first_seen` plus the facts' `max_confirmation_time` (`None` without a readable one).
fn confirm_deadline(facts: &ItemFacts, first_seen: DateTime<Utc>) -> Option<DateTime<Utc>> {
    facts
        .max_confirmation_time
        .as_deref()
        .and_then(super::polls::parse_iso_duration)
        .map(|allowed| later(first_seen, allowed))
}

/// Asks for a poll of the order after `skew_margin`, doubling the wait each time the doubt
/// comes back while a mark is already due (Musement's state settles it; see the reconciler).
fn mark_for_repoll(order: &mut OrderInFold, rules: &Rules, now: DateTime<Utc>) {
    // An unreadable mark is unknown: this one replaces it.
    if order
        .repoll_mark
        .is_ok_and(|at| at.is_some_and(|at| at > now))
    {
        return; // already marked for a future poll; one poll settles every item
    }
    let backoff = BackoffPolicy {
        base: rules.skew_margin.max(Duration::seconds(1)),
        cap: MAX_REPOLL_DELAY,
    };
    let at = later(now, backoff.delay(order.repoll_attempts));
    order.repoll_attempts += 1;
    order.repoll_mark = Ok(Some(at));
    order.repoll = Some((at, order.repoll_attempts));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Position, Status};
    use uuid::Uuid;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    /// A stored `OK` item of a polled order whose activity is long past: settled, unless it
    /// has no vouchers.
    fn loaded(has_vouchers: bool, vouchers: Option<Vec<String>>) -> Loaded {
        let facts = ItemFacts {
            vouchers,
            product_date: Some("2020-01-01 10:00".into()),
            ..ItemFacts::default()
        };
        let state = ItemState {
            status: Status::Ok,
            status_version: Some(1),
            item_version: Some(1),
            as_of: at(0),
            as_of_source: Source::Webhook,
            source: Source::Webhook,
            facts_as_of: None,
            facts: facts.clone(),
            item_created: None,
            item_updated: Some(at(0)),
        };
        let order = StoredOrder {
            state: OrderState::default(),
            poll: PollFields {
                failures: 0,
                next: Some(at(86_400)),
                never_polled: false,
                stopped: false,
            },
            repoll_mark: Ok(None),
            repoll_attempts: 0,
        };
        let item = StoredItem {
            order_key: Uuid::from_u128(2).to_string(),
            state: Some(state),
            facts,
            first_seen: Some(at(0)),
            first_event: None,
            poll_view: ItemPollView {
                status: Status::Ok,
                has_vouchers,
                product_date: Some("2020-01-01 10:00".into()),
            },
        };
        Loaded {
            orders: [(Uuid::from_u128(2).to_string(), order)].into(),
            items: [(Uuid::from_u128(1).to_string(), item)].into(),
        }
    }

    fn webhook_version_2() -> Observation {
        Observation::bare(
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Status::Ok,
            Position::Webhook {
                version: 2,
                updated: at(10),
            },
            at(10),
        )
    }

    #[test]
    fn a_webhook_keeps_the_stored_voucher_columns_deciding_whether_the_order_is_polled() {
        let observation = webhook_version_2();
        let settings = StoreSettings::default();
        // Vouchers the rule cannot read (not a JSON list) still count as vouchers, as the
        // store's SQL reads the column: the item is settled and the order no longer polled.
        let plan = super::plan(loaded(true, None), &[&observation], &settings, at(20));
        assert!(!plan.orders[0].poll.needs_poll, "{:?}", plan.orders[0]);
        assert!(!plan.items[0].writes_facts);
        // Without vouchers, an OK item waits for them: polled.
        let plan = super::plan(loaded(false, None), &[&observation], &settings, at(20));
        assert!(plan.orders[0].poll.needs_poll, "{:?}", plan.orders[0]);
    }

    fn poll_at(seconds: i64, facts: ItemFacts) -> Observation {
        let mut observation = Observation::bare(
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Status::Ok,
            Position::Poll { as_of: at(seconds) },
            at(seconds),
        );
        observation.item_facts = facts;
        observation
    }

    #[test]
    fn a_poll_that_writes_vouchers_settles_the_order_in_the_same_batch() {
        let settings = StoreSettings::default();
        let poll = poll_at(
            100,
            ItemFacts {
                vouchers: Some(vec!["https://example.com/v/1".into()]),
                product_date: Some("2020-01-01 10:00".into()),
                ..ItemFacts::default()
            },
        );
        let plan = super::plan(loaded(false, None), &[&poll], &settings, at(120));
        assert!(plan.items[0].writes_facts);
        assert!(!plan.orders[0].poll.needs_poll, "{:?}", plan.orders[0]);
    }

    #[test]
    fn facts_a_webhook_on_an_unreadable_row_keeps_are_the_next_polls_to_build_on() {
        let settings = StoreSettings::default();
        let mut stored = loaded(false, None);
        let item = stored.items.values_mut().next().unwrap();
        item.state = None;
        item.facts.max_confirmation_time = Some("P0D".into());
        let webhook = webhook_version_2();
        let poll = poll_at(100, ItemFacts::default());
        let plan = super::plan(stored, &[&webhook, &poll], &settings, at(120));
        let written = &plan.items[0];
        assert!(written.writes_facts);
        assert_eq!(
            written.state.facts.max_confirmation_time.as_deref(),
            Some("P0D"),
            "the webhook left the column as it was, and the poll gave no confirmation time"
        );
    }
}
