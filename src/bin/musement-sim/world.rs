//! The simulated Musement: orders and their items, planned from the seed ([`plan`]), then played
//! in real time ([`World::apply`]): each status change bumps the item's `order_item_version` and
//! `order_item_updated` and the order's `order_version`, and becomes a webhook body.
//!
//! Musement's clock is the real clock (`Utc::now()`); timestamps go out in Musement's format
//! with whole seconds, as documented.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use musement_wire::{self as wire, Customer, Product, voucher_url};
use orderwatch::observation::Status;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{Kind, Settings};

/// One planned status change: `after` the order's creation, the item takes `status`.
#[derive(Debug, Clone)]
pub struct Step {
    pub after: Duration,
    pub status: Status,
}

/// An item as planned: its lifecycle from `PENDING` (step 0) to its final status.
#[derive(Debug, Clone)]
pub struct ItemPlan {
    pub uuid: Uuid,
    pub kind: Kind,
    pub steps: Vec<Step>,
    /// From `OK` until the voucher URL appears.
    pub voucher_delay: Duration,
}

/// An order as planned.
#[derive(Debug, Clone)]
pub struct OrderPlan {
    pub uuid: Uuid,
    /// Musement's numeric order id (the webhook's `order_id`).
    pub id: u64,
    /// Created this long after the start.
    pub created_after: Duration,
    pub items: Vec<ItemPlan>,
}

/// Plans every order and item lifecycle from the seed.
pub fn plan(settings: &Settings, rng: &mut fastrand::Rng) -> Vec<OrderPlan> {
    let args = &settings.args;
    let mut sizes = vec![1usize; args.orders];
    for _ in 0..settings.items - args.orders {
        sizes[rng.usize(..args.orders)] += 1;
    }
    let total_weight: u32 = settings.mix.iter().map(|(_, w)| w).sum();
    let mut orders: Vec<OrderPlan> = sizes
        .into_iter()
        .enumerate()
        .map(|(n, size)| {
            let created_after =
                Duration::from_micros(rng.u64(0..=args.create_over.as_micros() as u64));
            let items = (0..size)
                .map(|_| {
                    let mut pick = rng.u32(0..total_weight);
                    let kind = settings
                        .mix
                        .iter()
                        .find(|(_, weight)| {
                            let hit = pick < *weight;
                            pick = pick.saturating_sub(*weight);
                            hit
                        })
                        .map_or(Kind::Instant, |(kind, _)| *kind);
                    ItemPlan {
                        uuid: random_uuid(rng),
                        kind,
                        steps: lifecycle(kind, settings, rng),
                        voucher_delay: args.voucher_delay.sample(rng),
                    }
                })
                .collect();
            OrderPlan {
                uuid: random_uuid(rng),
                id: 13_000_000 + n as u64,
                created_after,
                items,
            }
        })
        .collect();
    orders.sort_by_key(|o| o.created_after);
    orders
}

/// The steps of one item's lifecycle, times relative to its order's creation.
fn lifecycle(kind: Kind, settings: &Settings, rng: &mut fastrand::Rng) -> Vec<Step> {
    let args = &settings.args;
    let mut at = Duration::ZERO;
    let mut steps = vec![Step {
        after: at,
        status: Status::Pending,
    }];
    let mut then = |wait: Duration, status: Status, steps: &mut Vec<Step>| {
        at += wait;
        steps.push(Step { after: at, status });
    };
    match kind {
        Kind::Instant => then(args.instant_delay.sample(rng), Status::Ok, &mut steps),
        Kind::Confirm => then(args.confirm_delay.sample(rng), Status::Ok, &mut steps),
        Kind::Ko => then(args.confirm_delay.sample(rng), Status::Ko, &mut steps),
        Kind::Refund | Kind::CancelError => {
            // Either kind of product; what follows is the cancellation.
            let confirm = if rng.bool() {
                args.instant_delay
            } else {
                args.confirm_delay
            };
            then(confirm.sample(rng), Status::Ok, &mut steps);
            if kind == Kind::Refund {
                then(
                    args.cancel_after.sample(rng),
                    Status::RefundStarted,
                    &mut steps,
                );
                then(args.refund_delay.sample(rng), Status::Refunded, &mut steps);
            } else {
                then(
                    args.cancel_after.sample(rng),
                    Status::CancellationError,
                    &mut steps,
                );
                let resolved = if rng.bool() {
                    Status::Ok
                } else {
                    Status::Refunded
                };
                then(args.resolve_delay.sample(rng), resolved, &mut steps);
            }
        }
    }
    steps
}

/// A version 4 UUID from the seeded generator.
fn random_uuid(rng: &mut fastrand::Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid()
}

/// One change of an item, as Musement recorded it.
#[derive(Debug, Clone)]
pub struct Change {
    pub version: u64,
    pub status: Status,
    pub at: DateTime<Utc>,
}

/// An item as it is now.
#[derive(Debug, Clone)]
pub struct Item {
    pub uuid: Uuid,
    pub kind: Kind,
    /// `P0D` for instant confirmation.
    pub max_confirmation_time: String,
    /// Every change so far, oldest first (never empty).
    pub history: Vec<Change>,
    /// When the voucher URL appears (set when the item first becomes `OK`).
    pub vouchers_at: Option<DateTime<Utc>>,
}

impl Item {
    /// The latest change at or before `at` (the first one if none: an order never disappears).
    pub fn as_of(&self, at: DateTime<Utc>) -> &Change {
        self.history
            .iter()
            .rev()
            .find(|c| c.at <= at)
            .unwrap_or(&self.history[0])
    }

    /// The current change.
    pub fn current(&self) -> &Change {
        self.history.last().expect("an item has a history")
    }
}

/// An order as it is now.
#[derive(Debug, Clone)]
pub struct Order {
    pub uuid: Uuid,
    pub id: u64,
    pub created: DateTime<Utc>,
    /// `order_version`: 1 at creation, plus one per item change.
    pub version: u64,
    pub updated: DateTime<Utc>,
    pub items: Vec<Item>,
    /// The activity date of every item (local time, no offset).
    pub product_date: String,
}

/// Every order created so far.
#[derive(Debug, Default)]
pub struct World {
    pub orders: HashMap<Uuid, Order>,
    /// Creation order, for the truth.
    pub created: Vec<Uuid>,
}

/// A webhook to push: the item, its version, the body.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub item: Uuid,
    pub version: u64,
    pub status: Status,
    pub body: String,
}

impl World {
    /// Creates `plan`'s order now, every item `PENDING` at version 1; returns their webhooks.
    pub fn create(&mut self, plan: &OrderPlan, settings: &Settings) -> Vec<Webhook> {
        let now = Utc::now();
        let items = plan
            .items
            .iter()
            .map(|item| Item {
                uuid: item.uuid,
                kind: item.kind,
                max_confirmation_time: if item.kind == Kind::Instant {
                    "P0D".into()
                } else {
                    settings.args.max_confirmation_time.clone()
                },
                history: vec![Change {
                    version: 1,
                    status: Status::Pending,
                    at: now,
                }],
                vouchers_at: None,
            })
            .collect();
        let order = Order {
            uuid: plan.uuid,
            id: plan.id,
            created: now,
            version: 1,
            updated: now,
            items,
            product_date: (now + chrono::Duration::days(30))
                .format("%Y-%m-%d 15:30")
                .to_string(),
        };
        let webhooks = order
            .items
            .iter()
            .map(|item| webhook(&order, item))
            .collect();
        self.created.push(order.uuid);
        self.orders.insert(order.uuid, order);
        webhooks
    }

    /// Moves item `item` of `order` to `status` now; returns its webhook.
    pub fn apply(
        &mut self,
        order: Uuid,
        item: usize,
        status: Status,
        voucher_delay: Duration,
    ) -> Option<Webhook> {
        let now = Utc::now();
        let order = self.orders.get_mut(&order)?;
        order.version += 1;
        order.updated = now;
        let entry = order.items.get_mut(item)?;
        let version = entry.current().version + 1;
        if status == Status::Ok && entry.vouchers_at.is_none() {
            entry.vouchers_at = Some(now + chrono::Duration::from_std(voucher_delay).ok()?);
        }
        entry.history.push(Change {
            version,
            status,
            at: now,
        });
        let entry = &order.items[item];
        Some(webhook(order, entry))
    }

    /// The current webhook of one item (for `POST …/notifications`).
    pub fn current_webhook(&self, order: Uuid, item: Uuid) -> Option<Webhook> {
        let order = self.orders.get(&order)?;
        let item = order.items.iter().find(|i| i.uuid == item)?;
        Some(webhook(order, item))
    }
}

pub use musement_wire::musement_time;

/// The ten-field webhook body for the item's current state.
fn webhook(order: &Order, item: &Item) -> Webhook {
    let change = item.current();
    let body = json!({
        "order_id": order.id.to_string(),
        "order_uuid": order.uuid.to_string(),
        "order_created": musement_time(order.created),
        "order_updated": musement_time(order.updated),
        "order_version": order.version.to_string(),
        "order_item_uuid": item.uuid.to_string(),
        "order_item_created": musement_time(item.history[0].at),
        "order_item_updated": musement_time(change.at),
        "order_item_version": change.version.to_string(),
        "order_item_status": change.status.as_str(),
    });
    Webhook {
        item: item.uuid,
        version: change.version,
        status: change.status.clone(),
        body: body.to_string(),
    }
}

/// The `GET /orders/{uuid}` body (reference §9 shape, personal data included as Musement
/// sends it) showing every item as of `at`; vouchers appear once due and the item is `OK`.
pub fn order_json(order: &Order, at: DateTime<Utc>) -> Value {
    let customer = Customer {
        email: format!("sim.customer.{}@example.com", order.id),
        firstname: "Simona".into(),
        lastname: "Customer".into(),
        phone: "+39 02 5555 0100".into(),
        participant: "Simona Customer".into(),
    };
    let items = order
        .items
        .iter()
        .enumerate()
        .map(|(n, item)| wire_item(order, n, item, at))
        .collect();
    wire::Order {
        uuid: order.uuid,
        number: order.id,
        date: order.created,
        customer,
        items,
    }
    .to_json()
}

/// Item `n` of `order` as of `at`.
fn wire_item(order: &Order, n: usize, item: &Item, at: DateTime<Utc>) -> wire::Item {
    let change = item.as_of(at);
    let vouchers = match item.vouchers_at {
        Some(due) if due <= at && change.status == Status::Ok => vec![voucher_url(item.uuid)],
        _ => Vec::new(),
    };
    let product = if item.max_confirmation_time == "P0D" {
        Product {
            max_confirmation_time: item.max_confirmation_time.clone(),
            date: order.product_date.clone(),
            id: "434696107".into(),
            title: "Instant confirmation test activity".into(),
            api_url: "https://sandbox.musement.com/api/v3/activities/4e451a8a-2ee5-493f-aa12-a39f13d7253e".into(),
        }
    } else {
        Product {
            max_confirmation_time: item.max_confirmation_time.clone(),
            date: order.product_date.clone(),
            id: "434696106".into(),
            title: "Guided visit (needs confirmation)".into(),
            api_url: "https://sandbox.musement.com/api/v3/activities/0f5821c5-2046-11e7-9cc9-06a7e332783f".into(),
        }
    };
    wire::Item {
        uuid: item.uuid,
        code: format!("C{:07}-{n}", order.id % 10_000_000),
        transaction_code: item.uuid.to_string(),
        product,
        status: change.status.as_str().into(),
        vouchers,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Args;

    fn settings(extra: &[&str]) -> Settings {
        let mut args = vec!["musement-sim", "--orders", "50", "--items", "120"];
        args.extend_from_slice(extra);
        Settings::check(Args::parse_from(args)).unwrap()
    }

    #[test]
    fn a_seed_gives_the_same_plan() {
        let settings = settings(&[]);
        let one = plan(&settings, &mut fastrand::Rng::with_seed(3));
        let two = plan(&settings, &mut fastrand::Rng::with_seed(3));
        let other = plan(&settings, &mut fastrand::Rng::with_seed(4));
        assert_eq!(one.len(), 50);
        assert_eq!(one.iter().map(|o| o.items.len()).sum::<usize>(), 120);
        let uuids = |p: &[OrderPlan]| p.iter().map(|o| o.uuid).collect::<Vec<_>>();
        assert_eq!(uuids(&one), uuids(&two));
        assert_ne!(uuids(&one), uuids(&other));
    }

    #[test]
    fn lifecycles_end_where_their_kind_says() {
        let settings = settings(&[]);
        for order in plan(&settings, &mut fastrand::Rng::with_seed(9)) {
            for item in order.items {
                let statuses: Vec<&str> = item.steps.iter().map(|s| s.status.as_str()).collect();
                assert_eq!(statuses[0], "PENDING");
                let last = *statuses.last().unwrap();
                match item.kind {
                    Kind::Instant | Kind::Confirm => assert_eq!(statuses, ["PENDING", "OK"]),
                    Kind::Ko => assert_eq!(statuses, ["PENDING", "KO"]),
                    Kind::Refund => {
                        assert_eq!(statuses, ["PENDING", "OK", "REFUND_STARTED", "REFUNDED"])
                    }
                    Kind::CancelError => {
                        assert_eq!(statuses[..3], ["PENDING", "OK", "CANCELLATION_ERROR"]);
                        assert!(last == "OK" || last == "REFUNDED");
                    }
                }
                assert!(item.steps.windows(2).all(|w| w[0].after <= w[1].after));
            }
        }
    }

    #[test]
    fn changes_bump_versions_and_vouchers_follow_ok() {
        let settings = settings(&[]);
        let plans = plan(&settings, &mut fastrand::Rng::with_seed(1));
        let mut world = World::default();
        let created = world.create(&plans[0], &settings);
        assert!(created.iter().all(|w| w.version == 1));
        let order = plans[0].uuid;
        let hook = world
            .apply(order, 0, Status::Ok, Duration::ZERO)
            .expect("a change");
        assert_eq!(hook.version, 2);
        let body: Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(body["order_item_version"], "2");
        assert_eq!(body["order_version"], "2");
        assert_eq!(body["order_item_status"], "OK");
        let json = order_json(&world.orders[&order], Utc::now());
        assert_eq!(json["items"][0]["status"], "OK");
        assert_eq!(json["items"][0]["vouchers"].as_array().unwrap().len(), 1);
        // As of before the change, the item was still PENDING, without vouchers.
        let before = world.orders[&order].created - chrono::Duration::seconds(1);
        let json = order_json(&world.orders[&order], before);
        assert_eq!(json["items"][0]["status"], "PENDING");
        assert!(json["items"][0]["vouchers"].as_array().unwrap().is_empty());
    }
}
