//! What the simulator counts, and the truth it writes: every item's final status and version,
//! which of its versions were delivered (got a 200), and the counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::world::{World, musement_time};

/// Webhook counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WebhookCounts {
    /// Status changes that call for a webhook (re-sends asked through the API included).
    pub generated: u64,
    /// Of those, dropped for good: never sent.
    pub dropped: u64,
    /// Extra copies sent because of the duplicate fault.
    pub duplicated: u64,
    /// Copies sent at least once (`generated - dropped + duplicated`).
    pub sent: u64,
    /// HTTP requests made, retries included.
    pub attempts: u64,
    /// Of those, retries after a non-200 answer or no answer.
    pub retried: u64,
    /// Copies acknowledged with 200.
    pub delivered: u64,
    /// Copies abandoned after the last retry.
    pub given_up: u64,
    /// REFUND_STARTED changes not pushed (`--no-refund-started-webhook`).
    pub suppressed: u64,
    /// Re-sends asked with `POST /orders/{o}/items/{i}/notifications`.
    pub resend_requests: u64,
    /// Attempts by answer: a status (`"200"`, `"503"`), or why there was none (`"connect"`
    /// refused, `"timeout"`, `"error"` such as a connection closed mid-request).
    pub answers: BTreeMap<String, u64>,
}

/// Everything counted, behind one lock.
#[derive(Debug, Default)]
pub struct Stats {
    pub webhooks: WebhookCounts,
    /// API requests by endpoint (`login`, `get_order`, `notifications`, `other`), then by
    /// answer (`"200"`, `"401"`, `"timeout"`, …).
    pub api: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Versions acknowledged with 200, per item.
    pub delivered: HashMap<Uuid, BTreeSet<u64>>,
    /// Versions with an attempt that got no answer (timed out, or the connection broke after
    /// it was sent), per item: the receiver may have stored them all the same.
    pub unanswered: HashMap<Uuid, BTreeSet<u64>>,
    /// How the `GET /orders/{uuid}` requests came in time.
    pub polls: PollTimes,
}

/// When `GET /orders/{uuid}` requests arrived: what shows several reconciling instances
/// sharing the work (few repeats) and the request budget (the peak second).
#[derive(Debug, Default)]
pub struct PollTimes {
    /// The first request's arrival; seconds are counted from it.
    first: Option<Instant>,
    /// Each order's latest request.
    last: HashMap<String, Instant>,
    /// Requests for an order that came within [`REPEAT_WINDOW`] of its previous one: polled
    /// twice in one pass.
    repeats: u64,
    /// Requests per whole second since the first.
    per_second: HashMap<u64, u64>,
}

/// Two polls of one order this close are one pass polling it twice (passes are a second
/// apart or more; a failed poll backs off longer).
pub const REPEAT_WINDOW: Duration = Duration::from_millis(100);

impl PollTimes {
    /// Counts a request for `order` arriving `at`.
    fn count(&mut self, order: &str, at: Instant) {
        let first = *self.first.get_or_insert(at);
        *self
            .per_second
            .entry(at.duration_since(first).as_secs())
            .or_default() += 1;
        if let Some(previous) = self.last.insert(order.to_owned(), at)
            && at.duration_since(previous) < REPEAT_WINDOW
        {
            self.repeats += 1;
        }
    }
}

/// [`Stats`], shared.
#[derive(Debug, Default)]
pub struct Counters(Mutex<Stats>);

impl Counters {
    /// The stats, locked (poisoning ignored: counters stay usable).
    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a `GET /orders/{order}` arriving now.
    pub fn get_order_arrived(&self, order: &str) {
        self.lock().polls.count(order, Instant::now());
    }

    /// Counts one API request on `endpoint` answered `answer`.
    pub fn api(&self, endpoint: &'static str, answer: impl Into<String>) {
        *self
            .lock()
            .api
            .entry(endpoint)
            .or_default()
            .entry(answer.into())
            .or_default() += 1;
    }

    /// The counters as JSON (also served at `GET /sim/stats`).
    pub fn json(&self) -> Value {
        let stats = self.lock();
        let get_orders: u64 = stats
            .api
            .get("get_order")
            .map_or(0, |answers| answers.values().sum());
        json!({
            "webhooks": stats.webhooks,
            "api": stats.api,
            "get_orders": get_orders,
            "get_order_repeats": stats.polls.repeats,
            "get_order_peak_per_second": stats.polls.per_second.values().max().copied().unwrap_or(0),
        })
    }
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Lifecycles are still being played: statuses are not final (rewritten every second).
    Running,
    /// Every lifecycle ended and every webhook was delivered or given up; still serving.
    Settled,
    /// Done: the simulator exited after settling.
    Finished,
    /// Stopped by a signal before settling: the statuses are not final.
    Interrupted,
}

/// The truth as JSON.
pub fn truth(world: &World, counters: &Counters, seed: u64, phase: Phase) -> Value {
    let (delivered, unanswered) = {
        let stats = counters.lock();
        (stats.delivered.clone(), stats.unanswered.clone())
    };
    let items: Vec<Value> = world
        .created
        .iter()
        .filter_map(|uuid| world.orders.get(uuid))
        .flat_map(|order| {
            order.items.iter().map(|item| {
                let current = item.current();
                let versions = delivered.get(&item.uuid).cloned().unwrap_or_default();
                json!({
                    "order": order.uuid.to_string(),
                    "item": item.uuid.to_string(),
                    "kind": item.kind,
                    "status": current.status.as_str(),
                    "version": current.version,
                    "final_version_delivered": versions.contains(&current.version),
                    "delivered_versions": versions,
                    "unanswered_versions": unanswered.get(&item.uuid).cloned().unwrap_or_default(),
                    "history": item.history.iter().map(|c| json!({
                        "version": c.version,
                        "status": c.status.as_str(),
                        "at": musement_time(c.at),
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let mut truth = counters.json();
    truth["seed"] = json!(seed);
    truth["phase"] = json!(phase);
    truth["orders"] = json!(world.created.len());
    truth["items"] = json!(items);
    truth
}

/// Writes `value` to `path` atomically (a temporary file renamed over it), so a reader never
/// sees half a file.
pub fn write(path: &Path, value: &Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)
}
