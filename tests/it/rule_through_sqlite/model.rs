//! The model: README "The ordering rule", its table written out here, independent of
//! `decide`; it predicts every step's outcome, the whole item row and the order's facts.

use orderwatch::observation::Status;
use orderwatch::store::Outcome;
use rusqlite::types::Value;
use uuid::Uuid;

use super::database::Row;
use super::delivery::{CREATED_MS, Delivery, Poll, Webhook, text};
use super::generate::CONFIRMATION_TIMES;

/// The item row the model expects; times in ms after `delivery::EPOCH_SECONDS`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ModelItem {
    /// `status`.
    status: Status,
    /// `status_version`: the version of the webhook that set the status.
    status_version: Option<i64>,
    /// `item_version`: the highest version seen (but for the bogus-version recovery).
    item_version: Option<i64>,
    /// `as_of`: the Musement time up to which the status is known to hold.
    as_of: i64,
    /// `"webhook"` or `"poll"`.
    as_of_source: &'static str,
    /// `source`: what set the status, `"webhook"` or `"poll"`.
    source: &'static str,
    /// `facts_as_of`: the `Date` of the poll whose item facts are stored.
    facts_as_of: Option<i64>,
    /// `item_created`: a webhook's `order_item_created`, kept once known.
    item_created: Option<i64>,
    /// `item_updated`: `order_item_updated` of the webhook that set `item_version`.
    item_updated: Option<i64>,
    /// `first_seen_at`: our clock, first delivery.
    first_seen_at: i64,
    /// `changed_at`: our clock, last status change.
    changed_at: i64,
    /// `updated_at`: our clock, last write of the row.
    updated_at: i64,
    /// `vouchers`: the last written poll's voucher URLs (`None`: never written).
    vouchers: Option<Vec<String>>,
    /// `product_id`, kept when a poll leaves it out.
    product_id: Option<String>,
    /// `product_title`, likewise.
    product_title: Option<String>,
    /// `product_date`, likewise.
    product_date: Option<String>,
    /// `max_confirmation_time`, likewise.
    max_confirmation_time: Option<String>,
    /// `confirm_deadline`: `first_seen_at` plus `max_confirmation_time`.
    confirm_deadline: Option<i64>,
}

/// The order's fact columns the model expects.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ModelOrder {
    /// Our clock, first delivery.
    first_seen_at: i64,
    /// The first webhook's `order_id`.
    order_id: Option<String>,
    /// The highest webhook `order_version`.
    order_version: Option<i64>,
    /// The first webhook's `order_created`.
    order_created: Option<i64>,
    /// `order_updated` of the highest `order_version`.
    order_updated: Option<i64>,
    /// The latest poll's order status (kept when a later poll leaves it out).
    order_status: Option<String>,
    /// The latest poll's identifier, likewise.
    identifier: Option<String>,
    /// The `Date` of the poll those two came from.
    order_polled_as_of: Option<i64>,
}

/// What an observation does to the status part of the row (the table's "effect" column).
pub(super) enum Effect {
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
pub(super) struct Model {
    /// `skew_margin`, in milliseconds.
    margin: i64,
    /// The item row (`None` before the first delivery).
    item: Option<ModelItem>,
    /// The order row (`None` before the first delivery).
    order: Option<ModelOrder>,
}

impl Model {
    pub(super) fn new(margin: i64) -> Self {
        Self {
            margin,
            item: None,
            order: None,
        }
    }

    /// Takes one delivery; returns its outcome.
    pub(super) fn step(&mut self, delivery: &Delivery) -> Outcome {
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
        // "Item facts ... a poll writes them when its Date is later than that of the poll that
        // wrote the stored ones ... A stale poll never changes them."
        let writes_facts = matches!(delivery, Delivery::Poll(_))
            && outcome != Outcome::Stale
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
    pub(super) fn webhook_verdict(
        &self,
        row: &ModelItem,
        webhook: &Webhook,
        time: i64,
    ) -> (Outcome, Effect) {
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
    pub(super) fn poll_verdict(
        &self,
        row: &ModelItem,
        status: &Status,
        time: i64,
    ) -> (Outcome, Effect) {
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

    /// A poll's item facts land on the row: each one only when sent (a poll always sends the
    /// vouchers, maybe none),
    /// the deadline `first_seen_at` plus `max_confirmation_time` when that parses.
    pub(super) fn store_facts(&mut self, poll: &Poll) {
        let item = self.item.as_mut().expect("facts land on a row");
        let facts = &poll.facts;
        fn keep<T: Clone>(new: &Option<T>, old: &mut Option<T>) {
            if new.is_some() {
                old.clone_from(new);
            }
        }
        keep(&facts.vouchers, &mut item.vouchers);
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
    pub(super) fn order_step(&mut self, delivery: &Delivery, time: i64, now: i64) {
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
    pub(super) fn item_row(&self, item: Uuid, order: Uuid) -> Option<Row> {
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
    pub(super) fn order_row(&self) -> Option<Row> {
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
pub(super) fn new_row(delivery: &Delivery, time: i64, now: i64) -> ModelItem {
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
pub(super) fn rule_part(
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
