//! The fallback Musement asks for: poll `GET /orders/{uuid}` for orders whose items are not
//! settled, and feed every item through the same store function as webhooks.
//!
//! A pass reads the due orders from a partial index (re-poll marks first), expires those past
//! `max_age`, polls the rest with bounded concurrency and a request-rate ceiling, records each
//! answer or failure through the writer, and finally warns about overdue items. Within the
//! process passes never overlap (a mutex: a tick that finds a pass running waits for it, a
//! third is dropped). Across processes, on SQLite a lease row lets one pass run at a time; on
//! PostgreSQL every instance runs passes and they split the work instead: each claims due
//! orders a chunk at a time (`store::cluster`), draws on one request budget, and pauses when
//! Musement asked any of them to wait.

pub mod build;
mod cluster;
pub mod schedule;

pub use build::{DAEMON_ROLE, ReconcilerOff, ReconcilerState, StatsShown, build, configured_off};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::backoff::BackoffPolicy;
use crate::clock::{Clock, later};
use crate::metrics::Metrics;
use crate::musement::{ApiError, MusementClient, PolledOrder};
use crate::observation::{ItemFacts, Observation, OrderFacts, Position};
use crate::store::cluster::Cluster;
use crate::store::queries::DueOrder;
use crate::store::reader::ReadError;
use crate::store::reads::Reads;
use crate::store::writer::{WriteError, Writer};
use crate::store::{LeaseAnswer, Outcome, PollFailure, PollRecord};
use crate::telemetry;

/// The lease row's name.
const LEASE: &str = "reconciler";
/// How long a lease holds without renewal; a pass renews it at a third of this.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// The longest one of a pass's reads may take (they read partial indexes: milliseconds).
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// How the reconciler polls (from `[reconciler]`).
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// Orders polled at once.
    pub concurrency: usize,
    /// Ceiling on GET calls per second (0 = none).
    pub max_requests_per_second: f64,
    /// Orders first seen longer ago than this are no longer polled (unless marked for re-poll).
    pub max_age: chrono::Duration,
    /// How long an order waits after failed polls.
    pub backoff: BackoffPolicy,
    /// The store's read side (each read within [`READ_DEADLINE`] is set here).
    pub reads: Reads,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Orders that were due.
    pub due: usize,
    /// Orders polled successfully.
    pub polled: usize,
    /// Items whose stored state a poll set (`applied` outcomes, new items included).
    pub items_changed: usize,
    /// Polls that failed (timeouts, 5xx, 429, bad bodies); those orders back off.
    pub failures: usize,
    /// Orders Musement answered 404 for; no longer polled.
    pub not_found: usize,
    /// Orders past `max_age`, no longer polled.
    pub expired: usize,
    /// Items newly found past their confirmation deadline.
    pub overdue: usize,
    /// Set when the pass stopped early, e.g. because the API refused our credentials.
    pub stopped: Option<String>,
    /// Set when Musement asked us to wait (429, or 503 with `Retry-After`): the client sends
    /// nothing until then, so the pass ended early and the next one polls after this time.
    pub paused_until: Option<DateTime<Utc>>,
    /// Due orders this pass left unpolled because of that pause. They are not failures and do
    /// not back off: they stay due and are polled once the pause ends.
    pub paused_orders: usize,
    /// The orders whose poll this pass recorded (polled, failed, or not found), in no order:
    /// they are scheduled for their next poll now, which `orderwatch reconcile` does not count
    /// as left for later.
    pub recorded: Vec<Uuid>,
}

impl PassSummary {
    /// When Musement's pause ends, in RFC 3339 to the second, for the log and the CLI alike;
    /// `None` when it did not ask us to wait.
    pub fn paused_until_text(&self) -> Option<String> {
        let until = self.paused_until?;
        Some(until.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    /// Whether the pass showed the reconciler working: nothing failed, or at least one poll
    /// went through. A pass whose every poll failed (Musement down, a network cut) does not
    /// count, or `orderwatch_last_successful_pass_timestamp_seconds` would hide an outage.
    pub fn reached_musement(&self) -> bool {
        self.failures == 0 || self.polled > 0
    }
}

/// How far the running (or last) pass is: `done` of `total` orders handled, `polled` of them
/// successfully. A new pass starts at `0/total` once it knows what is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Orders handled so far in this pass: polled, failed, not found, or skipped.
    pub done: usize,
    /// Of those, the orders polled successfully (what [`PassSummary::polled`] counts).
    pub polled: usize,
    /// Orders this pass polls (due and not past `max_age`).
    pub total: usize,
}

/// Which orders a pass polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// The orders due now, re-poll marks first: what a scheduled pass polls.
    #[default]
    Due,
    /// Every order still to poll (`orders.needs_poll`), due now or scheduled for later: in
    /// its quiet period after a webhook, backing off after failed polls, or waiting for an
    /// OK item's re-check. Orders past `max_age` are expired instead, as in any pass.
    AllToPoll,
    /// Exactly these orders, whatever their state (settled, not found by Musement, past
    /// `max_age`, or not known yet).
    Orders(Vec<Uuid>),
}

/// Why a pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("another reconciler pass is running ({holder}, lease until {until})")]
    LeaseHeld {
        holder: String,
        until: DateTime<Utc>,
    },
    #[error("database: {0}")]
    Store(String),
}

impl From<WriteError> for PassError {
    fn from(error: WriteError) -> Self {
        Self::Store(error.to_string())
    }
}

/// The reconciler: owns the API client and a handle to the writer.
pub struct Reconciler {
    client: MusementClient,
    writer: Writer,
    clock: Arc<dyn Clock>,
    settings: ReconcilerSettings,
    /// Who we are in the lease table.
    holder: String,
    /// Held for the whole of a pass.
    pass: Mutex<()>,
    /// A tick is waiting for the running pass; further ticks are dropped.
    queued: AtomicBool,
    /// Shutdown asked: start no new polls.
    stopping: AtomicBool,
    limiter: RateLimiter,
    /// How long the lease holds without renewal ([`LEASE_TTL`] unless a test shortened it).
    lease_ttl: Duration,
    /// Passes and orders are counted here.
    metrics: Arc<Metrics>,
    /// On PostgreSQL, the work shared with other instances: due orders are claimed per order
    /// instead of under a pass-wide lease, and the request budget and pauses are the cluster's.
    cluster: Option<Cluster>,
    /// Requests the shared budget granted this instance and it has not sent yet.
    granted: std::sync::Mutex<u32>,
    /// The latest [`Progress`], for whoever watches (e.g. `orderwatch reconcile`'s progress bar).
    progress: watch::Sender<Progress>,
}

/// One order's poll, as the pass counts it.
enum PollResult {
    Polled {
        changed: usize,
    },
    Failed,
    NotFound,
    /// The API refused our credentials even after a fresh login: stop the pass.
    Credentials(String),
    /// Not polled: Musement asked us to wait, and the client sends nothing until then.
    Paused,
    Skipped,
}

impl Reconciler {
    /// A reconciler polling through `client` and storing through `writer`, counting into
    /// `metrics`; `holder` names this process in the lease table (e.g. `orderwatch run (pid 42)`).
    pub fn new(
        client: MusementClient,
        writer: Writer,
        clock: Arc<dyn Clock>,
        settings: ReconcilerSettings,
        holder: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = RateLimiter::new(settings.max_requests_per_second);
        let cluster = settings.reads.with_deadline(READ_DEADLINE).cluster(&holder);
        metrics.reconciler_started();
        Self {
            client,
            writer,
            clock,
            settings,
            holder,
            pass: Mutex::new(()),
            queued: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            limiter,
            lease_ttl: LEASE_TTL,
            metrics,
            cluster,
            granted: std::sync::Mutex::new(0),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// The same reconciler holding its lease (SQLite), or its claims on orders (PostgreSQL),
    /// for `ttl` instead of [`LEASE_TTL`] (a lease is renewed at a third of it). A seam for
    /// tests: renewal waits on real time, not on the [`Clock`] that judges expiry, so a test
    /// of renewals would otherwise wait 20 s for each; a claim's expiry is on the database
    /// clock, so a test of a takeover would wait a minute.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Follows the progress of passes: the receiver sees each update of `(done, total)`.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The scheduler's entry point: runs a pass unless one is running and another already
    /// waits for it, and logs the result.
    pub async fn tick(&self) {
        if self.queued.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "a reconciler pass is running and another is queued; skipping this tick"
            );
            return;
        }
        let guard = self.pass.lock().await;
        self.queued.store(false, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        match self.pass_for(&Selection::Due).await {
            Ok(summary) => {
                if let Some(reason) = &summary.stopped {
                    tracing::error!(%reason, "the Musement API refused our credentials; this pass stopped");
                }
                log_summary(&summary);
            }
            Err(PassError::LeaseHeld { holder, until }) => {
                let until = telemetry::rfc3339(until);
                tracing::info!(%holder, %until, "another process is reconciling; skipping this pass");
            }
            Err(error) => tracing::error!(%error, "reconciler pass failed"),
        }
        drop(guard);
    }

    /// Runs one pass now (waiting for a running one to finish first).
    pub async fn run_once(&self) -> Result<PassSummary, PassError> {
        self.run_once_for(&Selection::Due).await
    }

    /// Runs one pass over `selection` now (waiting for a running one to finish first).
    pub async fn run_once_for(&self, selection: &Selection) -> Result<PassSummary, PassError> {
        let _guard = self.pass.lock().await;
        self.pass_for(selection).await
    }

    /// Asks a running pass to start no new polls, then waits for it to end.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.pass.lock().await;
    }

    /// A pass over `selection`; the caller holds [`Self::pass`]. On PostgreSQL a scheduled
    /// pass claims its orders a chunk at a time, so instances split the due orders, and a pass
    /// over orders named by a person polls them without a lease (a second poll of an order is
    /// harmless: the rule makes the older answer stale); on SQLite a pass holds the lease.
    async fn pass_for(&self, selection: &Selection) -> Result<PassSummary, PassError> {
        let Some(cluster) = &self.cluster else {
            return self.leased_pass(selection).await;
        };
        let result = match selection {
            Selection::Due => self.poll_claimed(cluster).await,
            _ => self.poll_selected(selection).await,
        };
        self.count_pass(&result);
        result
    }

    /// A pass over `selection` under the pass-wide lease (SQLite).
    async fn leased_pass(&self, selection: &Selection) -> Result<PassSummary, PassError> {
        let started = std::time::Instant::now();
        let lease = self
            .writer
            .acquire_lease(LEASE, &self.holder, self.chrono_lease_ttl())
            .await;
        let lease = match lease {
            Ok(lease) => lease,
            Err(error) => {
                // The database is locked or full: the pass failed before it began.
                self.metrics.count_pass("failed");
                return Err(error.into());
            }
        };
        match lease {
            LeaseAnswer::Acquired { .. } => {}
            LeaseAnswer::Held { holder, until } => {
                self.metrics.count_pass("lease_held");
                return Err(PassError::LeaseHeld { holder, until });
            }
        }
        let result = tokio::select! {
            result = self.poll_selected(selection) => result,
            error = self.keep_lease() => Err(error),
        };
        self.count_pass(&result);
        if let Err(error) = self.writer.release_lease(LEASE, &self.holder).await {
            tracing::warn!(%error, "could not release the reconciler lease; it expires by itself");
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciler pass ended"
        );
        result
    }

    /// Counts a pass that ran in the metrics.
    fn count_pass(&self, result: &Result<PassSummary, PassError>) {
        let label = match result {
            Ok(summary) if summary.stopped.is_some() => "stopped",
            Ok(summary) if summary.paused_until.is_some() => "paused",
            Ok(_) => "ok",
            Err(PassError::LeaseHeld { .. }) => "lease_held",
            Err(PassError::Store(_)) => "failed",
        };
        self.metrics.count_pass(label);
        if let Ok(summary) = result
            && label == "ok"
            && summary.reached_musement()
        {
            self.metrics.pass_succeeded(self.clock.now());
        }
    }

    /// Counts one order's poll as soon as it is done, so long passes show in the metrics and
    /// the progress as they go.
    fn count_order(&self, result: &PollResult) {
        let label = match result {
            PollResult::Polled { .. } => Some("polled"),
            PollResult::Failed => Some("failed"),
            PollResult::NotFound => Some("not_found"),
            PollResult::Credentials(_) => Some("unauthorized"),
            PollResult::Paused => Some("paused"),
            PollResult::Skipped => None,
        };
        if let Some(label) = label {
            self.metrics.count_orders(label, 1);
        }
        let polled = matches!(result, PollResult::Polled { .. });
        self.progress.send_modify(|p| {
            p.done += 1;
            p.polled += usize::from(polled);
        });
    }

    /// Renews the lease until the pass ends (this future is dropped then); resolves only if
    /// the lease was lost.
    async fn keep_lease(&self) -> PassError {
        loop {
            tokio::time::sleep(self.lease_ttl / 3).await;
            match self
                .writer
                .acquire_lease(LEASE, &self.holder, self.chrono_lease_ttl())
                .await
            {
                Ok(LeaseAnswer::Acquired { .. }) => {}
                Ok(LeaseAnswer::Held { holder, until }) => {
                    return PassError::LeaseHeld { holder, until };
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the reconciler lease; retrying")
                }
            }
        }
    }

    async fn poll_selected(&self, selection: &Selection) -> Result<PassSummary, PassError> {
        self.client.forget_login_failure().await;
        let now = self.clock.now();
        let due = match selection {
            Selection::Due => self.reads().due_orders(now).await.map_err(read_error)?,
            Selection::AllToPoll => self.reads().orders_to_poll(now).await.map_err(read_error)?,
            Selection::Orders(orders) => {
                let mut seen = std::collections::HashSet::new();
                orders
                    .iter()
                    .filter(|order| seen.insert(**order))
                    // Asked for by name: no filter applies, `max_age` included.
                    .map(|&order| DueOrder {
                        order,
                        repoll: true,
                        first_seen_at: now,
                    })
                    .collect()
            }
        };
        let mut summary = PassSummary {
            due: due.len(),
            ..PassSummary::default()
        };
        let (too_old, to_poll): (Vec<DueOrder>, Vec<DueOrder>) = due
            .into_iter()
            .partition(|d| !d.repoll && later(d.first_seen_at, self.settings.max_age) < now);
        summary.expired = self.expire(too_old).await?;
        self.metrics.count_orders("expired", summary.expired);

        let total = to_poll.len();
        self.progress.send_replace(Progress {
            total,
            ..Progress::default()
        });
        let credentials_refused = AtomicBool::new(false);
        let results = self.poll_all(to_poll, &credentials_refused).await;
        add_results(&mut summary, results);
        summary.paused_until = self.client.paused_until();
        summary.overdue = self.warn_overdue().await?;
        Ok(summary)
    }

    /// Polls `orders`, `concurrency` at a time, counting each as it ends.
    async fn poll_all(
        &self,
        orders: Vec<DueOrder>,
        credentials_refused: &AtomicBool,
    ) -> Vec<(Uuid, PollResult)> {
        futures_util::stream::iter(orders)
            .map(|due| async move {
                let order = due.order;
                (order, self.poll_one(order, credentials_refused).await)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .inspect(|(_, result)| self.count_order(result))
            .collect()
            .await
    }

    async fn poll_one(&self, order: Uuid, credentials_refused: &AtomicBool) -> PollResult {
        if let Some(skip) = self.not_now(credentials_refused) {
            return skip;
        }
        self.limiter.wait().await;
        if let Some(cluster) = &self.cluster
            && !self.shared_request(cluster).await
        {
            return PollResult::Paused;
        }
        if let Some(skip) = self.not_now(credentials_refused) {
            return skip;
        }
        let requested_at = self.clock.now();
        let answer = self.client.get_order(order).await;
        if let (Some(cluster), Err(error)) = (&self.cluster, &answer)
            && (error.retry_after().is_some() || matches!(error, ApiError::RateLimited { .. }))
        {
            self.share_pause(cluster).await;
        }
        match self.store_answer(order, requested_at, answer).await {
            Ok(PollResult::Credentials(message)) => {
                // Said once, with the pass's result (the scheduler logs it, `reconcile`
                // prints it), not once per poll that was in flight.
                credentials_refused.store(true, Ordering::SeqCst);
                PollResult::Credentials(message)
            }
            Ok(result) => result,
            Err(error) => {
                // Back the order off like any failed poll, or it would be retried every pass.
                tracing::error!(%order, %error, "could not store a poll result");
                let failure =
                    self.failed_poll(order, format!("could not store the answer: {error}"), None);
                if let Err(error) = self.writer.record_poll_failure(failure).await {
                    tracing::error!(%order, %error, "could not record the failure either");
                }
                PollResult::Failed
            }
        }
    }

    /// Why an order is not to be polled now, if it is not: shutdown, refused credentials, or a
    /// pause Musement asked for (checked before the rate limiter's wait too, so a paused pass
    /// ends at once instead of queueing for slots it will not use).
    fn not_now(&self, credentials_refused: &AtomicBool) -> Option<PollResult> {
        if self.stopping.load(Ordering::SeqCst) || credentials_refused.load(Ordering::SeqCst) {
            Some(PollResult::Skipped)
        } else if self.client.paused_until().is_some() {
            Some(PollResult::Paused)
        } else {
            None
        }
    }

    async fn store_answer(
        &self,
        order: Uuid,
        requested_at: DateTime<Utc>,
        answer: Result<PolledOrder, ApiError>,
    ) -> Result<PollResult, WriteError> {
        match answer {
            Ok(polled) => {
                let record = self.poll_record(polled, requested_at);
                let recorded = self.writer.record_poll(record).await?;
                if recorded.previous_failures > 0 {
                    tracing::info!(%order, failures = recorded.previous_failures, "polling works again");
                }
                let changed = recorded
                    .outcomes
                    .iter()
                    .filter(|o| **o == Outcome::Applied)
                    .count();
                Ok(PollResult::Polled { changed })
            }
            Err(ApiError::NotFound) => {
                tracing::warn!(%order, "Musement does not know this order (404); no longer polling it");
                self.writer
                    .record_poll_failure(PollFailure::NotFound { order })
                    .await?;
                Ok(PollResult::NotFound)
            }
            Err(ApiError::Unauthorized { message }) => Ok(PollResult::Credentials(message)),
            // Nothing was sent (a pause began while this poll waited): not a failed poll.
            Err(ApiError::Paused { .. }) => Ok(PollResult::Paused),
            Err(error) => {
                let retry_after = error
                    .retry_after()
                    .and_then(|d| chrono::Duration::from_std(d).ok());
                let failure = self.failed_poll(order, error.to_string(), retry_after);
                let backoff = self.writer.record_poll_failure(failure).await?;
                // Logged when the order starts failing, not on every retry; the row keeps the rest.
                match backoff {
                    Some(b) if b.failures == 1 => {
                        let next_poll_at = telemetry::rfc3339(b.next_poll_at);
                        tracing::warn!(%order, %error, %next_poll_at, "poll failed; backing off")
                    }
                    Some(b) => {
                        let next_poll_at = telemetry::rfc3339(b.next_poll_at);
                        tracing::debug!(%order, %error, %next_poll_at, failures = b.failures, "poll failed again")
                    }
                    None => tracing::debug!(%order, %error, "poll failed again"),
                }
                Ok(PollResult::Failed)
            }
        }
    }

    /// A failed poll of `order`, backing off with fresh jitter.
    fn failed_poll(
        &self,
        order: Uuid,
        error: String,
        retry_after: Option<chrono::Duration>,
    ) -> PollFailure {
        PollFailure::Failed {
            order,
            error,
            retry_after,
            backoff: self.settings.backoff,
            jitter: 0.5 + fastrand::f64() * 0.5,
        }
    }

    /// Turns an API answer to a GET sent at `requested_at` into observations: every item is a
    /// poll at the response's `Date` (our clock when Musement sent none).
    fn poll_record(&self, polled: PolledOrder, requested_at: DateTime<Utc>) -> PollRecord {
        let received_at = self.clock.now();
        let as_of = polled.server_time.unwrap_or(received_at);
        let order_facts = OrderFacts {
            status: polled.status.clone(),
            identifier: polled.identifier.clone(),
            ..OrderFacts::default()
        };
        let items = polled
            .items
            .into_iter()
            .map(|item| Observation {
                item: item.uuid,
                order: polled.uuid,
                status: item.status,
                position: Position::Poll { as_of },
                item_created: None,
                order_facts: order_facts.clone(),
                item_facts: ItemFacts {
                    vouchers: Some(item.vouchers),
                    product_id: item.product_id,
                    product_title: item.product_title,
                    product_date: item.product_date,
                    max_confirmation_time: item.max_confirmation_time,
                },
                received_at,
                raw: item.raw,
            })
            .collect();
        PollRecord {
            order: polled.uuid,
            requested_at,
            items,
        }
    }

    async fn expire(&self, orders: Vec<DueOrder>) -> Result<usize, PassError> {
        if orders.is_empty() {
            return Ok(0);
        }
        let expired = self
            .writer
            .expire(orders.into_iter().map(|d| d.order).collect())
            .await?;
        for order in &expired {
            tracing::warn!(%order, "order is past [reconciler] max_age; no longer polled");
        }
        Ok(expired.len())
    }

    async fn warn_overdue(&self) -> Result<usize, PassError> {
        let now = self.clock.now();
        if let Some(cluster) = &self.cluster {
            // Taken and marked in one statement: each item is reported by one instance.
            let overdue = cluster.take_overdue(now).await.map_err(read_error)?;
            log_overdue(&overdue);
            return Ok(overdue.len());
        }
        let overdue = self
            .reads()
            .unwarned_overdue(now)
            .await
            .map_err(read_error)?;
        log_overdue(&overdue);
        if !overdue.is_empty() {
            self.writer
                .mark_overdue_warned(overdue.iter().map(|o| o.item).collect())
                .await?;
        }
        Ok(overdue.len())
    }

    /// The lease's lifetime as the store computes with it.
    fn chrono_lease_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.lease_ttl).unwrap_or(chrono::Duration::seconds(60))
    }

    /// The store's read side, each read within [`READ_DEADLINE`].
    fn reads(&self) -> Reads {
        self.settings.reads.with_deadline(READ_DEADLINE)
    }
}

/// A failed read stops the pass like any store error.
fn read_error(error: ReadError) -> PassError {
    PassError::Store(error.to_string())
}

/// One WARN line per item newly found past its confirmation deadline.
fn log_overdue(overdue: &[crate::store::queries::OverdueItem]) {
    for item in overdue {
        tracing::warn!(item = %item.item, order = %item.order, deadline = %item.deadline,
            "item is still PENDING past its confirmation deadline");
    }
}

/// Adds the polls of (part of) a pass to its summary.
fn add_results(summary: &mut PassSummary, results: Vec<(Uuid, PollResult)>) {
    for (order, result) in results {
        if matches!(
            result,
            PollResult::Polled { .. } | PollResult::Failed | PollResult::NotFound
        ) {
            summary.recorded.push(order);
        }
        match result {
            PollResult::Polled { changed } => {
                summary.polled += 1;
                summary.items_changed += changed;
            }
            PollResult::Failed => summary.failures += 1,
            PollResult::NotFound => summary.not_found += 1,
            PollResult::Credentials(message) => summary.stopped = Some(message),
            PollResult::Paused => summary.paused_orders += 1,
            PollResult::Skipped => {}
        }
    }
}

/// The pass's INFO line; `stopped` only when something stopped it.
fn log_summary(summary: &PassSummary) {
    let paused = summary
        .paused_until_text()
        .map(|until| format!("; paused until {until}"))
        .unwrap_or_default();
    tracing::info!(
        due = summary.due,
        polled = summary.polled,
        items_changed = summary.items_changed,
        failures = summary.failures,
        not_found = summary.not_found,
        expired = summary.expired,
        overdue = summary.overdue,
        // An `Option` field is left out of the line when it is `None`.
        stopped = summary.stopped.as_deref(),
        paused_orders = summary.paused_orders,
        "reconciler pass{paused}"
    );
}

/// Spaces requests at least `1 / max_requests_per_second` apart across all concurrent polls.
struct RateLimiter {
    /// Gap between two requests; zero means no ceiling.
    gap: Duration,
    /// The earliest time the next request may start.
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(per_second: f64) -> Self {
        let gap = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        Self {
            gap,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        if self.gap.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.gap;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}
