//! The single writer: one thread owns the write connection, drains a bounded queue, applies a
//! batch of jobs in one transaction, commits once, then answers every waiter (group commit).
//!
//! One fsync then covers a whole batch, so throughput does not collapse to one commit per
//! request, and nobody hears "stored" before the commit that stored it returned. A full queue
//! is refused at once ([`WriteError::QueueFull`], a 503 with `Retry-After`) instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::apply::{RejectedWebhook, apply, record_rejected};
use super::rule::{Outcome, Rules};
use crate::clock::Clock;
use crate::observation::Observation;

/// How the writer batches and what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// Most jobs in one transaction (`1` = one commit per request, the naive baseline).
    pub max_batch: usize,
    /// Jobs that may wait for the writer before new ones are refused.
    pub queue_capacity: usize,
    /// The ordering rule's tuning.
    pub rules: Rules,
    /// Newest rejected webhooks kept.
    pub rejected_keep: u32,
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

/// Counters a benchmark or `/metrics` can read.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Jobs confirmed by those commits.
    pub jobs: AtomicU64,
    /// Batches that failed to commit.
    pub failed_batches: AtomicU64,
}

enum Op {
    Apply(Box<Observation>),
    Reject(RejectedWebhook),
    /// Proves the writer is alive and can take the write lock and commit.
    Ping,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Option<Outcome>, WriteError>>,
}

/// A cheap, cloneable handle for sending work to the writer thread.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

/// The writer thread; [`WriterThread::join`] waits until every queued job is answered, which
/// happens once every [`Writer`] handle is dropped.
pub struct WriterThread {
    handle: JoinHandle<()>,
}

impl WriterThread {
    /// Waits for the thread to drain its queue and exit.
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// Starts the writer thread on an open, migrated connection.
pub fn spawn(
    conn: Connection,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
) -> std::io::Result<(Writer, WriterThread)> {
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
    let stats = Arc::new(WriterStats::default());
    let thread_stats = stats.clone();
    let handle = std::thread::Builder::new()
        .name("orderwatch-writer".into())
        .spawn(move || run(conn, receiver, settings, clock, &thread_stats))?;
    Ok((Writer { sender, stats }, WriterThread { handle }))
}

impl Writer {
    /// Stores an observation; resolves once it is committed (or known not to be).
    pub async fn apply(&self, observation: Observation) -> Result<Outcome, WriteError> {
        let outcome = self.submit(Op::Apply(Box::new(observation))).await?;
        outcome.ok_or_else(|| WriteError::Storage("no outcome returned".into()))
    }

    /// Stores a rejected webhook for operators.
    pub async fn record_rejected(&self, rejected: RejectedWebhook) -> Result<(), WriteError> {
        self.submit(Op::Reject(rejected)).await.map(|_| ())
    }

    /// Round-trips a write transaction through the writer (used by `/readyz`).
    pub async fn ping(&self) -> Result<(), WriteError> {
        self.submit(Op::Ping).await.map(|_| ())
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    async fn submit(&self, op: Op) -> Result<Option<Outcome>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Job { op, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
            })?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

fn run(
    mut conn: Connection,
    mut receiver: mpsc::Receiver<Job>,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    stats: &WriterStats,
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
        let results = commit_batch(&mut conn, &batch, &settings, clock.as_ref());
        match &results {
            Ok(_) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, jobs = batch.len(), "could not commit a batch; answering 503");
            }
        }
        answer(batch.drain(..), results);
    }
}

type JobResult = Result<Option<Outcome>, WriteError>;

/// Runs every job of the batch in one transaction, each in its own savepoint so one failing job
/// does not sink the others, then commits once. A failed commit fails every job.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Job],
    settings: &WriterSettings,
    clock: &dyn Clock,
) -> Result<Vec<JobResult>, WriteError> {
    let storage = |e: rusqlite::Error| WriteError::Storage(e.to_string());
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    let now = clock.now();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = tx.savepoint().map_err(storage)?;
        let result = match &job.op {
            Op::Apply(observation) => {
                apply(&savepoint, observation, &settings.rules, now).map(Some)
            }
            Op::Reject(rejected) => {
                record_rejected(&savepoint, rejected, settings.rejected_keep).map(|()| None)
            }
            Op::Ping => Ok(None),
        };
        match result {
            Ok(outcome) => {
                savepoint.commit().map_err(storage)?;
                results.push(Ok(outcome));
            }
            Err(error) => {
                drop(savepoint); // rolls back this job only
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
