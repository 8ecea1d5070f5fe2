//! What is delivered: webhooks and polls of one item, as the store receives them, and the
//! times they carry.

use std::fmt;

use chrono::{DateTime, Utc};
use orderwatch::clock::to_db_text;
use orderwatch::observation::{ItemFacts, Observation, OrderFacts, Position, Status};
use uuid::Uuid;

/// Time 0 of every case, in seconds since the Unix epoch.
pub(super) const EPOCH_SECONDS: i64 = 1_700_000_000;
/// The far-future clamp: a Musement time counts for at most this long after we received it
/// (README "The ordering rule"). The store under test is configured with it too.
pub(super) const MAX_FUTURE_MS: i64 = 3_600_000;
/// 9999-12-31T23:59:59Z, the latest time the store's text holds.
pub(super) const YEAR_9999_MS: i64 = (253_402_300_799 - EPOCH_SECONDS) * 1000;
/// `order_item_created` and `order_created` of every case.
pub(super) const CREATED_MS: i64 = -60_000;
/// Most versions in a history, webhook copies per version, polls per case.
pub(super) const MAX_VERSIONS: usize = 8;
pub(super) const MAX_COPIES: usize = 3;
pub(super) const MAX_POLLS: usize = 6;
/// Sort keys drawn per case: one per possible delivery, plus the evidence.
pub(super) const MAX_DELIVERIES: usize = MAX_VERSIONS * MAX_COPIES + MAX_POLLS + 1;

pub(super) fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(EPOCH_SECONDS * 1000 + ms).expect("time in range")
}

pub(super) fn text(ms: i64) -> String {
    to_db_text(at(ms))
}

/// A webhook as delivered; its order facts follow from it ([`Webhook::order_facts`]).
#[derive(Clone)]
pub(super) struct Webhook {
    /// `order_item_version` (and `order_version`).
    pub(super) version: i64,
    /// `order_item_status`.
    pub(super) status: Status,
    /// `order_item_updated` (and `order_updated`), as sent.
    pub(super) updated_ms: i64,
    /// Our clock when it arrived (and when it was committed).
    pub(super) received_ms: i64,
}

/// A poll of the item's order as delivered.
#[derive(Clone)]
pub(super) struct Poll {
    /// Our clock when the GET was sent.
    pub(super) requested_ms: i64,
    /// The response's `Date`, as sent.
    pub(super) date_ms: i64,
    /// Our clock when the answer arrived (and was committed).
    pub(super) received_ms: i64,
    /// The item status the response gives.
    pub(super) status: Status,
    /// The item facts the response gives.
    pub(super) facts: ItemFacts,
    /// The order's `status`, when the response gives one.
    pub(super) order_status: Option<String>,
    /// The order's `identifier` (`MUS…`), when the response gives one.
    pub(super) identifier: Option<String>,
}

#[derive(Clone)]
pub(super) enum Delivery {
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
    pub(super) fn order_facts(&self) -> OrderFacts {
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
    pub(super) fn received_ms(&self) -> i64 {
        match self {
            Self::Webhook(w) => w.received_ms,
            Self::Poll(p) => p.received_ms,
        }
    }

    /// The Musement time it speaks for: as sent, at most [`MAX_FUTURE_MS`] after we received it.
    pub(super) fn time_ms(&self) -> i64 {
        let sent = match self {
            Self::Webhook(w) => w.updated_ms,
            Self::Poll(p) => p.date_ms,
        };
        sent.min(self.received_ms() + MAX_FUTURE_MS)
    }

    pub(super) fn status(&self) -> &Status {
        match self {
            Self::Webhook(w) => &w.status,
            Self::Poll(p) => &p.status,
        }
    }

    pub(super) fn version(&self) -> Option<i64> {
        match self {
            Self::Webhook(w) => Some(w.version),
            Self::Poll(_) => None,
        }
    }

    /// The event log's payload: the delivery itself, so each event row names its delivery.
    pub(super) fn raw(&self) -> String {
        format!("{self:?}")
    }

    pub(super) fn observation(&self, item: Uuid, order: Uuid) -> Observation {
        let (position, item_created, order_facts, item_facts) = match self {
            Self::Webhook(w) => (
                Position::Webhook {
                    version: w.version,
                    updated: at(w.updated_ms),
                },
                Some(at(CREATED_MS)),
                w.order_facts(),
                ItemFacts::default(),
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
                p.facts.clone(),
            ),
        };
        Observation {
            item,
            order,
            status: self.status().clone(),
            position,
            item_created,
            order_facts,
            item_facts,
            received_at: at(self.received_ms()),
            raw: self.raw(),
        }
    }
}
