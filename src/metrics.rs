//! The daemon's Prometheus metrics: one [`Metrics`] per running app (no global registry, so
//! tests can run several apps in one process), shared as an `Arc` by the receiver, the writer,
//! the Musement client and the reconciler, and rendered by [`Metrics::render`] for `GET /metrics`.
//!
//! Counters and histograms are updated where things happen. The gauges about the stored state
//! (items by status, overdue items, orders in backoff) are read from the database at scrape
//! time through a read-only connection, with a deadline; when that read fails they are left out
//! of the answer and `orderwatch_metrics_scrape_errors_total` counts it, so a slow or locked
//! database never makes the whole scrape fail.
//!
//! Every series an alert reads is there from start-up, at 0 until its first event (a series
//! that appears only at its first increment hides that increment from `rate()`, and an absent
//! one cannot be told from a broken scrape). The standard `process_*` metrics come from
//! [`process`], read at scrape time.

pub mod process;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use self::process::ProcessStats;
use crate::build_info;
use crate::clock::Clock;
use crate::leadership::Leadership;
use crate::observation::Status;
use crate::store::deliveries::DestinationRow;
use crate::store::observer::{BatchStats, StoreObserver};
use crate::store::queries::StateSnapshot;
use crate::store::reads::Reads;

/// The `Content-Type` of the Prometheus text format (what `/metrics` answers by default).
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of the OpenMetrics text format (answered when a scraper asks for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest a scrape waits for the database gauges before leaving them out.
const SCRAPE_DB_DEADLINE: Duration = Duration::from_secs(2);

/// `code` and `outcome` of a webhook request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP status code sent, e.g. `200`.
    pub code: u16,
    /// What became of the request: `applied`, `duplicate`, `unauthorized`, `invalid`, …
    pub outcome: &'static str,
}

/// `route` and `code` of a partner API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The route's template, e.g. `/v1/items/{item_uuid}` (`unmatched` for unknown paths).
    pub route: String,
    /// HTTP status code sent.
    pub code: u16,
}

/// One word naming a result, e.g. `ok` / `failed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The result.
    pub result: &'static str,
}

/// A Musement API call: which endpoint and what came back.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    /// `login` or `order`.
    pub endpoint: &'static str,
    /// The HTTP status code, or `timeout` / `connect` / another error kind when no status
    /// came back.
    pub code: String,
}

/// Which API endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `login` or `order`.
    pub endpoint: &'static str,
}

/// Why a login happened and how it went.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `first` (no token yet), `expiring` (the token reached its renewal time) or `rejected`
    /// (Musement refused the token with a 401).
    pub reason: &'static str,
    /// `ok`, `refused` (credentials not accepted) or `failed` (timeout, 5xx, bad answer).
    pub result: &'static str,
}

/// An attempt to deliver a signed webhook out: to which destination, and what became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// `[[forward]] name`.
    pub destination: String,
    /// `delivered` (2xx), `failed` (tried again later), `parked` (past give_up_after) or
    /// `gone` (410: the destination is disabled).
    pub result: &'static str,
}

/// A destination of signed webhooks out.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// `[[forward]] name`.
    pub destination: String,
}

/// A SQLite checkpoint: which kind and how it went.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckpointLabels {
    /// `passive`, `restart` or `truncate`.
    pub mode: &'static str,
    /// `ok`, `busy` (a reader or the writer kept it from finishing) or `error`.
    pub result: &'static str,
}

/// What this binary is.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// The package version, e.g. `0.1.0`.
    version: &'static str,
    /// The commit it was built from, or `unknown`.
    commit: &'static str,
}

/// The modes and results a checkpoint is counted under (see [`CheckpointLabels`]).
const CHECKPOINT_MODES: [&str; 3] = ["passive", "restart", "truncate"];
const CHECKPOINT_RESULTS: [&str; 3] = ["ok", "busy", "error"];

/// The reasons and results a login is counted under (see [`LoginLabels`]).
const LOGIN_REASONS: [&str; 3] = ["first", "expiring", "rejected"];
const LOGIN_RESULTS: [&str; 3] = ["ok", "refused", "failed"];

/// A gauge holding a float (a time, a duration).
type FloatGauge = Gauge<f64, AtomicU64>;

/// An item status: one of the six documented ones, or `unknown` for anything else.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// `PENDING`, `OK`, `KO`, `REFUND_STARTED`, `REFUNDED`, `CANCELLATION_ERROR` or `unknown`.
    status: String,
}

impl StatusLabel {
    /// The label of a stored status. Undocumented values share `unknown`: a look-alike such as
    /// Cyrillic `ОК` or `OK` + U+200B would otherwise read as `OK` on a dashboard, and a sender
    /// could add a series per value. `orderwatch stats` and the intake WARN name them.
    fn of(stored: &str) -> Self {
        let status = Status::parse(stored);
        let status = if status.is_unknown() {
            "unknown"
        } else {
            status.as_str()
        };
        Self {
            status: status.to_owned(),
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one app, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by status code and outcome.
    pub webhook_requests: Family<RequestLabels, Counter>,
    /// Partner API requests by route and status.
    api_requests: Family<ApiLabels, Counter>,
    /// Time from a webhook request's arrival to its answer.
    pub webhook_duration: Histogram,
    /// Jobs per committed group-commit transaction (its count is the commits, its sum the jobs).
    pub batch_size: Histogram,
    /// Time to run and commit one batch.
    pub commit_duration: Histogram,
    /// Batches whose transaction failed (every job in them was answered with an error).
    pub failed_batches: Counter,
    /// Observations whose outcome was `conflict`.
    pub conflicts: Counter,
    /// Reconciler passes by result: `ok`, `stopped`, `paused`, `lease_held`, `failed`.
    pub passes: Family<ResultLabel, Counter>,
    /// Orders handled by passes, by result: `polled`, `failed`, `paused` (left for a later pass
    /// because Musement asked us to wait), `not_found`, `unauthorized`, `expired`.
    pub orders: Family<ResultLabel, Counter>,
    /// Musement API calls by endpoint and status code.
    pub api_calls: Family<ApiCallLabels, Counter>,
    /// Musement API latency by endpoint.
    pub api_duration: HistogramFamily<EndpointLabel>,
    /// Logins to the Musement API by reason and result.
    pub logins: Family<LoginLabels, Counter>,
    /// Attempts to deliver signed webhooks out, by destination and result.
    forward_attempts: Family<ForwardLabels, Counter>,
    /// Time of one delivery attempt, by destination.
    forward_duration: HistogramFamily<DestinationLabel>,
    /// Scrapes that could not read the database gauges.
    pub scrape_errors: Counter,
    /// Connections open on the webhook listener now.
    pub connections_open: Gauge,
    /// Until when (Unix seconds) the Musement client sends nothing because Musement asked us
    /// to wait; 0 when not paused (a past value is reset to 0 at the next scrape).
    pub musement_paused_until: Gauge,
    /// 1 while this instance exports the database-wide gauges (always on SQLite).
    cluster_lease_held: Gauge,
    /// Connections closed at `max_connections`, by result: `evicted_idle` (the longest-idle
    /// connection made room) or `refused_busy` (every connection had a request in progress).
    pub connections_closed_at_cap: Family<ResultLabel, Counter>,
    /// SQLite checkpoints by mode and result.
    pub sqlite_checkpoints: Family<CheckpointLabels, Counter>,
    /// Bytes in the SQLite write-ahead log now.
    pub sqlite_wal_bytes: Gauge,
    /// When (Unix seconds) the last webhook was received and stored (answered 200); 0 until
    /// the first one since start.
    pub last_webhook_received: FloatGauge,
    /// When (Unix seconds) the last reconciler pass ended `ok`; 0 until the first one since
    /// start.
    pub last_successful_pass: FloatGauge,
    /// Seconds between two scheduled reconciler passes; 0 while the reconciler is off.
    pub reconciler_interval: FloatGauge,
    /// 1 while the readiness check (`/readyz`) passes, 0 while it fails; checked at every
    /// scrape too.
    pub ready: Gauge,
    /// One scrape reads the database at a time.
    scraping: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero, registered under the `orderwatch_` prefix.
    pub fn new() -> Self {
        let seconds = || Histogram::new(exponential_buckets(0.0005, 2.0, 16)); // 0.5 ms … 16 s
        let mut registry = Registry::with_prefix("orderwatch");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: build_info::VERSION,
                commit: build_info::COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which version and commit is running",
            build_info,
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Partner API requests ([api] listen) by route and HTTP status code",
            api_requests.clone(),
        );
        let webhook_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by HTTP status code and outcome",
            webhook_requests.clone(),
        );
        let webhook_duration = seconds();
        registry.register_with_unit(
            "webhook_request_duration",
            "Time from a webhook request's arrival to its answer (the commit included)",
            Unit::Seconds,
            webhook_duration.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11)); // 1 … 1024
        registry.register(
            "store_batch_size",
            "Jobs per group-commit transaction (count = commits, sum = jobs)",
            batch_size.clone(),
        );
        let commit_duration = seconds();
        registry.register_with_unit(
            "store_commit_duration",
            "Time to run and commit one group-commit batch",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let failed_batches = Counter::default();
        registry.register(
            "store_failed_batches",
            "Group-commit batches that failed to commit (every waiter got an error)",
            failed_batches.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "store_conflicts",
            "Observations with two statuses for one version (outcome conflict)",
            conflicts.clone(),
        );
        let passes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciler_passes",
            "Reconciler passes by result (ok, stopped, paused, lease_held, failed)",
            passes.clone(),
        );
        let orders = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciler_orders",
            "Orders handled by reconciler passes by result (polled, failed, paused, not_found, unauthorized, expired)",
            orders.clone(),
        );
        let api_calls = Family::<ApiCallLabels, Counter>::default();
        registry.register(
            "musement_requests",
            "Musement API calls by endpoint and HTTP status code (or error kind: timeout, connect)",
            api_calls.clone(),
        );
        let api_duration: HistogramFamily<EndpointLabel> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register_with_unit(
            "musement_request_duration",
            "Musement API latency by endpoint, the body read included",
            Unit::Seconds,
            api_duration.clone(),
        );
        let forward_attempts = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "forward_attempts",
            "Attempts to deliver signed webhooks out ([[forward]]) by destination and result: delivered, failed (tried again later), parked, gone (410, destination disabled)",
            forward_attempts.clone(),
        );
        let forward_duration: HistogramFamily<DestinationLabel> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register_with_unit(
            "forward_attempt_duration",
            "Time of one delivery attempt of a signed webhook out, by destination",
            Unit::Seconds,
            forward_duration.clone(),
        );
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "musement_logins",
            "Musement API logins (token refreshes) by reason and result",
            logins.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "metrics_scrape_errors",
            "Scrapes whose database gauges could not be read (they were left out)",
            scrape_errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the webhook listener",
            connections_open.clone(),
        );
        let cluster_lease_held = Gauge::default();
        registry.register(
            "cluster_lease_held",
            "1 while this instance holds the cluster lease: it alone exports the database-wide \
             gauges (items, pending, overdue, backoff, oldest pending age) and prunes history",
            cluster_lease_held.clone(),
        );
        let musement_paused_until = Gauge::default();
        registry.register_with_unit(
            "musement_paused_until_timestamp",
            "Until when (Unix time) no Musement request is sent because it answered 429, or 503 with Retry-After (pause capped at 1h); 0 when not paused",
            Unit::Seconds,
            musement_paused_until.clone(),
        );
        let connections_closed_at_cap = Family::<ResultLabel, Counter>::default();
        registry.register(
            "connections_closed_at_cap",
            "Connections closed at max_connections (evicted_idle: the longest-idle one made room; refused_busy: all had a request in progress)",
            connections_closed_at_cap.clone(),
        );
        let sqlite_checkpoints = Family::<CheckpointLabels, Counter>::default();
        registry.register(
            "sqlite_checkpoints",
            "SQLite WAL checkpoints by mode (passive, restart, truncate) and result (ok, busy, error)",
            sqlite_checkpoints.clone(),
        );
        let sqlite_wal_bytes = Gauge::default();
        registry.register_with_unit(
            "sqlite_wal",
            "Size of the SQLite write-ahead log (counts toward [database] max_size_bytes)",
            Unit::Bytes,
            sqlite_wal_bytes.clone(),
        );
        let last_webhook_received = FloatGauge::default();
        registry.register_with_unit(
            "last_webhook_received_timestamp",
            "When (Unix time) the last webhook was received and stored (answered 200); 0 until the first one since start",
            Unit::Seconds,
            last_webhook_received.clone(),
        );
        let last_successful_pass = FloatGauge::default();
        registry.register_with_unit(
            "last_successful_pass_timestamp",
            "When (Unix time) the last reconciler pass ended ok; 0 until the first one since start",
            Unit::Seconds,
            last_successful_pass.clone(),
        );
        let reconciler_interval = FloatGauge::default();
        registry.register_with_unit(
            "reconciler_interval",
            "Time between two scheduled reconciler passes (for a cron schedule the longest gap within the next 7 days); 0 when the reconciler is off",
            Unit::Seconds,
            reconciler_interval.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the readiness check (GET /readyz) passes, 0 while it fails or takes longer than the scrape allows; checked at every scrape",
            ready.clone(),
        );
        for mode in CHECKPOINT_MODES {
            for result in CHECKPOINT_RESULTS {
                drop(sqlite_checkpoints.get_or_create(&CheckpointLabels { mode, result }));
            }
        }
        for reason in LOGIN_REASONS {
            for result in LOGIN_RESULTS {
                drop(logins.get_or_create(&LoginLabels { reason, result }));
            }
        }
        for result in ["evicted_idle", "refused_busy"] {
            drop(connections_closed_at_cap.get_or_create(&ResultLabel { result }));
        }
        Self {
            registry,
            last_webhook_received,
            last_successful_pass,
            reconciler_interval,
            ready,
            sqlite_checkpoints,
            sqlite_wal_bytes,
            connections_open,
            musement_paused_until,
            connections_closed_at_cap,
            webhook_requests,
            api_requests,
            webhook_duration,
            batch_size,
            commit_duration,
            failed_batches,
            conflicts,
            passes,
            orders,
            api_calls,
            api_duration,
            logins,
            forward_attempts,
            forward_duration,
            scrape_errors,
            cluster_lease_held,
            scraping: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one webhook request and its latency.
    pub fn webhook_request(&self, code: u16, outcome: &'static str, elapsed: Duration) {
        self.webhook_requests
            .get_or_create(&RequestLabels { code, outcome })
            .inc();
        self.webhook_duration.observe(elapsed.as_secs_f64());
    }

    /// Shows every `(code, outcome)` a webhook can be answered with at 0, so each series
    /// exists before its first request.
    pub fn expect_webhook_answers(&self, answers: &[(u16, &'static str)]) {
        for &(code, outcome) in answers {
            drop(
                self.webhook_requests
                    .get_or_create(&RequestLabels { code, outcome }),
            );
        }
    }

    /// Notes that a webhook was received and stored at `at`.
    pub fn webhook_stored(&self, at: chrono::DateTime<chrono::Utc>) {
        self.last_webhook_received.set(unix_seconds(at));
    }

    /// Notes that a reconciler pass ended `ok` at `at`.
    pub fn pass_succeeded(&self, at: chrono::DateTime<chrono::Utc>) {
        self.last_successful_pass.set(unix_seconds(at));
    }

    /// Counts one Musement API call. `code` is the status, or the error kind without one.
    pub fn api_call(&self, endpoint: &'static str, code: String, elapsed: Duration) {
        self.api_calls
            .get_or_create(&ApiCallLabels { endpoint, code })
            .inc();
        self.api_duration
            .get_or_create(&EndpointLabel { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one delivery attempt to `destination` and its time.
    pub fn forward_attempt(&self, destination: &str, result: &'static str, elapsed: Duration) {
        self.forward_attempts
            .get_or_create(&ForwardLabels {
                destination: destination.to_owned(),
                result,
            })
            .inc();
        self.forward_duration
            .get_or_create(&DestinationLabel {
                destination: destination.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request to the partner API by its route template and status.
    pub fn api_request(&self, route: &str, code: u16) {
        self.api_requests
            .get_or_create(&ApiLabels {
                route: route.to_owned(),
                code,
            })
            .inc();
    }

    pub fn cluster_lease_held(&self, held: bool) {
        self.cluster_lease_held.set(i64::from(held));
    }

    /// Shows that the Musement client sends nothing until `until` (rounded up to the second).
    pub fn musement_paused_until(&self, until: chrono::DateTime<chrono::Utc>) {
        let seconds = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
        self.musement_paused_until.set(seconds);
    }

    /// Counts one login.
    pub fn login(&self, reason: &'static str, result: &'static str) {
        self.logins
            .get_or_create(&LoginLabels { reason, result })
            .inc();
    }

    /// Successful logins so far, whatever their reason.
    pub fn successful_logins(&self) -> u64 {
        LOGIN_REASONS
            .into_iter()
            .filter_map(|reason| {
                self.logins
                    .get(&LoginLabels {
                        reason,
                        result: "ok",
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Shows the reconciler's pass and order counters at zero from the start (a series that
    /// appears only at its first increment hides that increment from `rate()`).
    pub fn reconciler_started(&self) {
        for result in ["ok", "stopped", "paused", "lease_held", "failed"] {
            drop(self.passes.get_or_create(&ResultLabel { result }));
        }
        for result in [
            "polled",
            "failed",
            "paused",
            "not_found",
            "unauthorized",
            "expired",
        ] {
            drop(self.orders.get_or_create(&ResultLabel { result }));
        }
    }

    /// Counts one reconciler pass.
    pub fn count_pass(&self, result: &'static str) {
        self.passes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts `n` orders handled with `result`.
    pub fn count_orders(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.orders
                .get_or_create(&ResultLabel { result })
                .inc_by(n as u64);
        }
    }

    /// The exposition: every metric, plus the database gauges read now from `database` (left
    /// out, and counted as a scrape error, if they cannot be read in time). OpenMetrics text
    /// when `openmetrics`, else the Prometheus text format.
    pub async fn render(&self, database: &StateSource, openmetrics: bool) -> String {
        let snapshot = {
            let _one_at_a_time = self.scraping.lock().await;
            match database.snapshot().await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    tracing::warn!(%error, "metrics: cannot read the database gauges; leaving them out");
                    self.scrape_errors.inc();
                    None
                }
            }
        };
        let now = database.clock.now();
        self.end_past_pause(now);
        let state = snapshot.map(|(state, destinations)| {
            let mut registry = state_registry(&state, now);
            register_destinations(&mut registry, &destinations, now);
            registry
        });
        let process = match ProcessStats::read() {
            Ok(stats) => Some(stats.registry()),
            Err(error) => {
                tracing::debug!(%error, "metrics: no process_* metrics");
                None
            }
        };
        let extra: Vec<&Registry> = state.iter().chain(process.iter()).collect();
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label.
        let encoded = if openmetrics {
            std::iter::once(&self.registry)
                .chain(extra)
                .try_for_each(|registry| text::encode_registry(&mut out, registry))
                .and_then(|()| text::encode_eof(&mut out))
        } else {
            std::iter::once(&self.registry)
                .chain(extra)
                .try_for_each(|registry| prometheus_text::encode(&mut out, registry))
        };
        if let Err(error) = encoded {
            tracing::error!(%error, "metrics: cannot encode");
        }
        out
    }

    /// Resets the pause gauge to 0 once its time has come, so a scrape never shows a pause that
    /// is over. Compare-and-swap: a pause the client starts meanwhile is kept.
    fn end_past_pause(&self, now: chrono::DateTime<chrono::Utc>) {
        let shown = self.musement_paused_until.get();
        if shown != 0 && shown <= now.timestamp() {
            let _ = self.musement_paused_until.inner().compare_exchange(
                shown,
                0,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            );
        }
    }
}

impl StoreObserver for Metrics {
    fn batch(&self, stats: BatchStats) {
        self.commit_duration.observe(stats.elapsed.as_secs_f64());
        if stats.committed {
            self.batch_size.observe(stats.jobs as f64);
            self.conflicts.inc_by(stats.conflicts as u64);
        } else {
            self.failed_batches.inc();
        }
    }

    fn checkpoint(&self, mode: &'static str, result: &'static str) {
        self.sqlite_checkpoints
            .get_or_create(&CheckpointLabels { mode, result })
            .inc();
    }

    fn wal_bytes(&self, bytes: u64) {
        self.sqlite_wal_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// `at` as Unix seconds, with its fraction.
fn unix_seconds(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// Where scrapes read the stored state from: the store's read side, within a deadline, with
/// the app's clock for ages and the overdue rule.
#[derive(Clone)]
pub struct StateSource {
    /// Reads the database, each read within the scrape deadline (lock waits included).
    reads: Reads,
    /// The app's clock.
    clock: Arc<dyn Clock>,
    /// Only the instance leading the cluster exports the database-wide gauges.
    leadership: Leadership,
}

impl std::fmt::Debug for StateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSource")
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

impl StateSource {
    /// Asks `reads` within the scrape deadline while `leadership` says this instance leads;
    /// ages are measured on `clock`.
    pub fn new(reads: Reads, clock: Arc<dyn Clock>, leadership: Leadership) -> Self {
        Self {
            reads: reads.with_deadline(SCRAPE_DB_DEADLINE),
            clock,
            leadership,
        }
    }

    /// The stored state, or `None` when another instance exports it.
    async fn snapshot(&self) -> Result<Option<(StateSnapshot, Vec<DestinationRow>)>, String> {
        if !self.leadership.leads() {
            return Ok(None);
        }
        let state = self
            .reads
            .state_snapshot(self.clock.now())
            .await
            .map_err(|e| e.to_string())?;
        let destinations = self.reads.destinations().await.map_err(|e| e.to_string())?;
        Ok(Some((state, destinations)))
    }
}

/// The outbox of signed webhooks out, per destination, into `registry`; ages run to `now`.
fn register_destinations(
    registry: &mut Registry,
    destinations: &[DestinationRow],
    now: chrono::DateTime<chrono::Utc>,
) {
    if destinations.is_empty() {
        return;
    }
    let undelivered = Family::<DestinationLabel, Gauge>::default();
    let parked = Family::<DestinationLabel, Gauge>::default();
    let disabled = Family::<DestinationLabel, Gauge>::default();
    let oldest = Family::<DestinationLabel, FloatGauge>::default();
    for destination in destinations {
        let label = DestinationLabel {
            destination: destination.name.clone(),
        };
        undelivered
            .get_or_create(&label)
            .set(destination.undelivered);
        parked.get_or_create(&label).set(destination.parked);
        disabled
            .get_or_create(&label)
            .set(i64::from(destination.disabled_at.is_some()));
        let age = destination
            .waiting_since()
            .and_then(|text| crate::clock::from_db_text(text).ok())
            .map_or(0.0, |since| {
                (now - since).num_milliseconds().max(0) as f64 / 1000.0
            });
        oldest.get_or_create(&label).set(age);
    }
    registry.register(
        "forward_undelivered",
        "Signed webhooks out not yet acknowledged (pending or parked), by destination",
        undelivered,
    );
    registry.register(
        "forward_parked",
        "Deliveries parked past give_up_after, holding back their items' later changes, by destination",
        parked,
    );
    registry.register(
        "forward_destination_disabled",
        "1 while a destination is disabled (it answered 410 Gone) until `orderwatch deliveries enable`",
        disabled,
    );
    registry.register_with_unit(
        "forward_oldest_undelivered_age",
        "How long the destination has been missing a change: since the oldest unacknowledged delivery was enqueued, or the oldest change not yet enqueued arrived (0 when none), by destination",
        Unit::Seconds,
        oldest,
    );
}

/// The stored state as a registry of its own, rendered after the main one; ages run to `now`.
fn state_registry(snapshot: &StateSnapshot, now: chrono::DateTime<chrono::Utc>) -> Registry {
    let mut registry = Registry::with_prefix("orderwatch");
    let items = Family::<StatusLabel, Gauge>::default();
    let mut pending = 0;
    for (status, count) in &snapshot.by_status {
        items.get_or_create(&StatusLabel::of(status)).inc_by(*count);
        if status == "PENDING" {
            pending = *count;
        }
    }
    registry.register("items", "Stored order items by status", items);
    let gauge = |value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        gauge
    };
    registry.register(
        "pending_items",
        "Items whose status is PENDING",
        gauge(pending),
    );
    let oldest = snapshot.oldest_pending.map_or(0.0, |since| {
        (now - since).num_milliseconds().max(0) as f64 / 1000.0
    });
    let age = Gauge::<f64, AtomicU64>::default();
    age.set(oldest);
    registry.register_with_unit(
        "oldest_pending_item_age",
        "How long the longest-PENDING item has been PENDING (0 when none is)",
        Unit::Seconds,
        age,
    );
    registry.register(
        "overdue_items",
        "PENDING items past their confirmation deadline (the overdue_items view, on the daemon's clock)",
        gauge(snapshot.overdue),
    );
    registry.register(
        "reconciler_orders_in_backoff",
        "Orders still polled whose last poll failed (waiting out a backoff)",
        gauge(snapshot.in_backoff),
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_units_and_suffixes() {
        let metrics = Metrics::new();
        metrics.webhook_request(200, "applied", Duration::from_millis(3));
        metrics.api_call("order", "503".into(), Duration::from_millis(20));
        metrics.login("first", "ok");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let missing = StateSource::new(
            Reads::new(
                "/nonexistent/orderwatch.db".as_ref(),
                SCRAPE_DB_DEADLINE,
                SCRAPE_DB_DEADLINE,
            ),
            Arc::new(crate::clock::SystemClock),
            Leadership::sole(),
        );
        let out = runtime.block_on(metrics.render(&missing, false));
        assert!(
            out.contains("orderwatch_webhook_requests_total{code=\"200\",outcome=\"applied\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE orderwatch_webhook_request_duration_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains("orderwatch_musement_requests_total{endpoint=\"order\",code=\"503\"} 1"),
            "{out}"
        );
        assert_eq!(metrics.successful_logins(), 1);
        // The database is missing: its gauges are left out and the error is counted.
        assert!(!out.contains("orderwatch_items"), "{out}");
        assert!(
            out.contains("orderwatch_metrics_scrape_errors_total 1"),
            "{out}"
        );
        let open = runtime.block_on(metrics.render(&missing, true));
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
