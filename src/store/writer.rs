//! The single writer: one thread owns the write connection, drains a bounded queue, applies a
//! batch of jobs in one transaction, commits once, then answers every waiter (group commit).
//!
//! One fsync then covers a whole batch, so throughput does not collapse to one commit per
//! request, and nobody hears "stored" before the commit that stored it returned. A full queue
//! is refused at once ([`WriteError::QueueFull`], a 503 with `Retry-After`) instead of growing.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use chrono::Duration;
use uuid::Uuid;

use super::commands::{Command, Done, execute};
use super::maintenance::{PruneCursor, PruneStep};
use super::reconcile::{Backoff, LeaseAnswer, PollFailure, PollRecord, PollRecorded};
use super::rule::Outcome;
use super::{RejectedWebhook, StoreSettings};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::observation::Observation;

/// How the writer batches and what it keeps.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most jobs in one transaction (`1` = one commit per request, the naive baseline).
    pub max_batch: usize,
    /// Jobs that may wait for the writer before new webhooks are refused.
    pub queue_capacity: usize,
    /// What the store functions need to know.
    pub store: StoreSettings,
}

/// Why a write was not confirmed. Every variant means "not known to be stored": answer 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("write queue is full")]
    QueueFull,
    #[error("the writer is shut down")]
    Closed,
    #[error("could not store: {0}")]
    Storage(String),
}

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Done, WriteError>>,
}

/// Whether a full queue refuses at once (webhooks: answer 503 now) or waits (reconciler, CLI:
/// nobody is waiting on an HTTP answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    Refuse,
    Wait,
}

/// A cheap, cloneable handle for sending work to the writer thread.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

/// The writer thread. It stops when every [`Writer`] handle is dropped or when
/// [`WriterThread::shutdown`] asks it to.
pub struct WriterThread {
    handle: JoinHandle<()>,
    /// Used only to queue the shutdown request behind everything already queued.
    writer: Writer,
}

impl WriterThread {
    /// Lets the writer commit everything queued so far, stops it, and waits for the thread.
    /// Jobs sent after this are answered [`WriteError::Closed`] (a 503 for webhooks).
    pub async fn shutdown(self) {
        let _ = self.writer.submit(Command::Shutdown, WhenFull::Wait).await;
        drop(self.writer);
        let handle = self.handle;
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the writer thread panicked"),
        }
    }
}

/// Starts the writer thread on an open, migrated connection; it counts batches, commit time,
/// failures and conflicts in `metrics`.
pub fn spawn(
    conn: Connection,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Writer, WriterThread)> {
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
    let thread_metrics = metrics.clone();
    let handle = std::thread::Builder::new()
        .name("orderwatch-writer".into())
        .spawn(move || run(conn, receiver, settings, clock, &thread_metrics))?;
    let writer = Writer { sender, metrics };
    Ok((writer.clone(), WriterThread { handle, writer }))
}

impl Writer {
    /// Stores a webhook observation; resolves once it is committed (or known not to be).
    /// Refuses at once when the queue is full.
    pub async fn apply(&self, observation: Observation) -> Result<Outcome, WriteError> {
        match self
            .submit(Command::Apply(Box::new(observation)), WhenFull::Refuse)
            .await?
        {
            Done::Outcome(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Stores a rejected webhook for operators.
    pub async fn record_rejected(&self, rejected: RejectedWebhook) -> Result<(), WriteError> {
        self.submit(Command::Reject(rejected), WhenFull::Refuse)
            .await
            .map(drop)
    }

    /// Round-trips a write transaction through the writer (used by `/readyz`).
    pub async fn ping(&self) -> Result<(), WriteError> {
        self.submit(Command::Ping, WhenFull::Refuse).await.map(drop)
    }

    /// Stores a successful poll.
    pub async fn record_poll(&self, record: PollRecord) -> Result<PollRecorded, WriteError> {
        match self
            .submit(Command::RecordPoll(Box::new(record)), WhenFull::Wait)
            .await?
        {
            Done::Polled(recorded) => Ok(recorded),
            other => Err(unexpected(other)),
        }
    }

    /// Records a failed poll; returns the backoff (`None` after a 404).
    pub async fn record_poll_failure(
        &self,
        failure: PollFailure,
    ) -> Result<Option<Backoff>, WriteError> {
        match self
            .submit(Command::RecordPollFailure(failure), WhenFull::Wait)
            .await?
        {
            Done::BackedOff(backoff) => Ok(backoff),
            other => Err(unexpected(other)),
        }
    }

    /// Registers orders for polling; returns how many were new.
    pub async fn watch(&self, orders: Vec<Uuid>) -> Result<usize, WriteError> {
        match self.submit(Command::Watch(orders), WhenFull::Wait).await? {
            Done::Count(new) => Ok(new),
            other => Err(unexpected(other)),
        }
    }

    /// Stops polling orders past `max_age`; returns those newly expired.
    pub async fn expire(&self, orders: Vec<Uuid>) -> Result<Vec<Uuid>, WriteError> {
        match self.submit(Command::Expire(orders), WhenFull::Wait).await? {
            Done::Orders(expired) => Ok(expired),
            other => Err(unexpected(other)),
        }
    }

    /// Notes that overdue warnings for these items were logged.
    pub async fn mark_overdue_warned(&self, items: Vec<Uuid>) -> Result<(), WriteError> {
        self.submit(Command::MarkOverdueWarned(items), WhenFull::Wait)
            .await
            .map(drop)
    }

    /// Takes or renews a lease.
    pub async fn acquire_lease(
        &self,
        name: &'static str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseAnswer, WriteError> {
        let command = Command::AcquireLease {
            name,
            holder: holder.to_owned(),
            ttl,
        };
        match self.submit(command, WhenFull::Wait).await? {
            Done::Lease(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// Gives a lease back.
    pub async fn release_lease(&self, name: &'static str, holder: &str) -> Result<(), WriteError> {
        let command = Command::ReleaseLease {
            name,
            holder: holder.to_owned(),
        };
        self.submit(command, WhenFull::Wait).await.map(drop)
    }

    /// Deletes one batch of history received before `cutoff` after the cursor `after` (see
    /// [`super::maintenance::prune`], which loops over this).
    pub async fn prune_step(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        after: PruneCursor,
        batch: usize,
    ) -> Result<PruneStep, WriteError> {
        let command = Command::Prune {
            cutoff,
            after,
            batch,
        };
        match self.submit(command, WhenFull::Wait).await? {
            Done::Pruned(step) => Ok(step),
            other => Err(unexpected(other)),
        }
    }

    /// The metrics this writer counts into; the app's other parts share them.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn submit(&self, command: Command, when_full: WhenFull) -> Result<Done, WriteError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { command, reply };
        match when_full {
            WhenFull::Refuse => self.sender.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
            })?,
            WhenFull::Wait => self
                .sender
                .send(job)
                .await
                .map_err(|_| WriteError::Closed)?,
        }
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

fn unexpected(done: Done) -> WriteError {
    WriteError::Storage(format!("unexpected answer from the writer: {done:?}"))
}

fn run(
    mut conn: Connection,
    mut receiver: mpsc::Receiver<Job>,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
) {
    let mut batch = Vec::with_capacity(settings.max_batch);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < settings.max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let results = commit_batch(&mut conn, &batch, &settings, clock.as_ref());
        metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        match &results {
            Ok(done) => {
                metrics.batch_size.observe(batch.len() as f64);
                let conflicts = done
                    .iter()
                    .filter(|r| matches!(r, Ok(Done::Outcome(Outcome::Conflict))))
                    .count();
                metrics.conflicts.inc_by(conflicts as u64);
            }
            Err(error) => {
                metrics.failed_batches.inc();
                tracing::error!(%error, jobs = batch.len(), "could not commit a batch; answering 503");
            }
        }
        let stop = batch
            .iter()
            .any(|job| matches!(job.command, Command::Shutdown));
        answer(batch.drain(..), results);
        if stop {
            break;
        }
    }
}

type JobResult = Result<Done, WriteError>;

/// Runs every job of the batch in one transaction, each in its own savepoint so one failing job
/// does not sink the others, then commits once. A failed commit fails every job.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Job],
    settings: &WriterSettings,
    clock: &dyn Clock,
) -> Result<Vec<JobResult>, WriteError> {
    let storage = |e: rusqlite::Error| WriteError::Storage(e.to_string());
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    let now = clock.now();
    let mut results = Vec::with_capacity(batch.len());
    // Savepoint statements are prepared once and reused: parsing them anew for every job was a
    // visible share of the writer's time.
    let run = |sql: &str| {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
    };
    for job in batch {
        run("SAVEPOINT job").map_err(storage)?;
        match execute(&tx, &job.command, &settings.store, now) {
            Ok(done) => {
                run("RELEASE job").map_err(storage)?;
                results.push(Ok(done));
            }
            Err(error) => {
                if tx.is_autocommit() {
                    // SQLite rolled the whole transaction back (disk full, I/O error): no later
                    // job may run outside it, and the whole batch answers with this error.
                    return Err(storage(error));
                }
                // Undo this job only.
                run("ROLLBACK TO job")
                    .and_then(|()| run("RELEASE job"))
                    .map_err(storage)?;
                results.push(Err(storage(error)));
            }
        }
    }
    tx.commit().map_err(storage)?;
    Ok(results)
}

fn answer(jobs: impl Iterator<Item = Job>, results: Result<Vec<JobResult>, WriteError>) {
    match results {
        Ok(results) => {
            for (job, result) in jobs.zip(results) {
                let _ = job.reply.send(result); // the waiter may have timed out; nothing to do
            }
        }
        Err(error) => {
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
