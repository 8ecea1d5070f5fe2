//! The writer: a thread owns a write connection, drains a bounded queue, applies a batch of
//! jobs in one transaction, commits once, then answers every waiter (group commit). SQLite has
//! one such thread (one writer is all SQLite allows); PostgreSQL two on one queue, so one batch
//! runs while the other's commit is flushed (the order locks keep them apart). How a batch is
//! committed is the database engine's ([`Batches`]; SQLite's is `sqlite_batches.rs`); the
//! queue, batching, answers and health are here, the same for all.
//!
//! One fsync then covers a whole batch, so throughput does not collapse to one commit per
//! request, and nobody hears "stored" before the commit that stored it returned. A full queue
//! is refused at once ([`WriteError::QueueFull`], a 503 with `Retry-After`) instead of growing.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::checkpoint::{CheckpointSettings, CheckpointerThread};
use super::commands::{Command, Done};
use super::deliveries::{ForwardCommand, ForwardDone};
use super::maintenance::{PruneCursor, PruneStep};
use super::observer::{BatchStats, StoreObserver};
use super::polls::{Backoff, LeaseAnswer, PollFailure, PollRecord, PollRecorded};
use super::rule::Outcome;
use super::sqlite_batches::SqliteBatches;
use super::sqlite_file::DatabaseFile;
use super::{RejectedWebhook, StoreSettings};
use crate::clock::Clock;
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
    /// `[database] max_size_bytes`: the database and its WAL together; past it, only work
    /// that frees space runs.
    pub max_size_bytes: Option<u64>,
    /// When the checkpointer runs.
    pub checkpoints: CheckpointSettings,
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
    /// The database file was deleted or replaced while the daemon ran; final.
    #[error("database file replaced: {0}")]
    Replaced(String),
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
    health: Arc<Health>,
}

/// The writer threads. They stop when every [`Writer`] handle is dropped or when
/// [`WriterThread::shutdown`] asks them to.
pub struct WriterThread {
    handles: Vec<JoinHandle<()>>,
    /// Used only to queue the shutdown request behind everything already queued.
    writer: Writer,
    /// SQLite's checkpointer, stopped before the writer closes its connection, so the
    /// writer's close (the last one of this process) checkpoints what is left.
    checkpointer: Option<CheckpointerThread>,
}

impl WriterThread {
    /// Lets the writers commit everything queued so far, stops them, and waits for the
    /// threads. Jobs sent after this are answered [`WriteError::Closed`] (a 503 for webhooks).
    pub async fn shutdown(self) {
        if let Some(checkpointer) = self.checkpointer {
            checkpointer.stop().await;
        }
        let _ = self.writer.submit(Command::Shutdown, WhenFull::Wait).await;
        drop(self.writer);
        for handle in self.handles {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!("a writer thread panicked"),
            }
        }
    }
}

/// Consecutive failed batches of real work (not heartbeats) after which the writer counts
/// as unhealthy: a heartbeat can still commit on a full disk (it fits in the existing WAL).
const FAILED_BATCHES_UNREADY: u32 = 3;

/// How long such a run of failures keeps the writer unhealthy when no new work arrives (a
/// load balancer that stopped sending must be able to try again).
const FAILURES_REMEMBERED: StdDuration = StdDuration::from_secs(30);

/// What the writer knows about its own health, for readiness and liveness checks.
#[derive(Debug)]
pub struct Health {
    /// SQLite's database file, watched for deletion and replacement.
    file: Option<Arc<DatabaseFile>>,
    /// The current run of failed batches of real work.
    failing: Mutex<Failures>,
    /// Batches with any failure so far (a "ready" found before the last one is stale).
    batches_with_failures: AtomicU64,
    /// Batches that committed every job so far (a "not ready" found before one is stale).
    batches_without_failures: AtomicU64,
    /// Counts committed batches that stored observations: the partner API's long-polls and
    /// the feeders of signed webhooks out wait on it for new changes.
    commits: tokio::sync::watch::Sender<u64>,
}

/// A run of consecutive failed batches of real work.
#[derive(Debug, Default)]
struct Failures {
    /// How many in a row (0: the last one committed).
    consecutive: u32,
    /// The last one's error and when it came.
    last: Option<(String, Instant)>,
}

impl Health {
    /// Why the writer can never store again (the database file was replaced), if so.
    pub fn defunct(&self) -> Option<String> {
        self.file
            .as_ref()?
            .replaced()
            .map(|reason| format!("database file replaced: {reason}"))
    }

    /// Why the writer should not be sent work now, if so: a replaced file, or the last
    /// [`FAILED_BATCHES_UNREADY`] batches of real work failed within [`FAILURES_REMEMBERED`].
    pub fn unready(&self) -> Option<String> {
        if let Some(defunct) = self.defunct() {
            return Some(defunct);
        }
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match &failing.last {
            Some((error, at))
                if failing.consecutive >= FAILED_BATCHES_UNREADY
                    && at.elapsed() < FAILURES_REMEMBERED =>
            {
                Some(format!(
                    "the last {} batches of writes failed: {error}",
                    failing.consecutive
                ))
            }
            _ => None,
        }
    }

    /// How many batches had a failure so far: a "ready" found before this number last
    /// changed may be out of date.
    pub fn batches_with_failures(&self) -> u64 {
        self.batches_with_failures.load(Ordering::Relaxed)
    }

    /// How many batches committed every job so far: a "not ready" found before this number
    /// last changed may be out of date.
    pub fn batches_without_failures(&self) -> u64 {
        self.batches_without_failures.load(Ordering::Relaxed)
    }

    /// Changes each time a batch of this instance's writer that stored observations (webhooks,
    /// polls) commits: what may have added to the change feed. Other instances' commits are
    /// not seen here, and neither are batches of other work (claims and records of signed
    /// webhooks out, heartbeats), so the feed's readers are not woken by their own writes.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Notes how a batch went; batches holding only heartbeats say nothing about real work.
    fn batch_done(&self, batch: &[Job], results: &Result<Vec<JobResult>, WriteError>) {
        let observed =
            |job: &Job| matches!(job.command, Command::Apply(_) | Command::RecordPoll(_));
        if results.is_ok() && batch.iter().any(observed) {
            self.commits.send_modify(|n| *n += 1);
        }
        let any_failure = match results {
            Err(_) => true,
            Ok(results) => results.iter().any(Result::is_err),
        };
        if any_failure {
            self.batches_with_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.batches_without_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        let real = |job: &&Job| !matches!(job.command, Command::Ping | Command::Shutdown);
        if !batch.iter().any(|job| real(&job)) {
            return;
        }
        let failure = match results {
            Err(error) => Some(error.to_string()),
            Ok(results) => {
                // Failed only if every real job did: one bad job is not a sick store.
                let errors: Vec<Option<&WriteError>> = batch
                    .iter()
                    .zip(results)
                    .filter(|(job, _)| real(job))
                    .map(|(_, result)| result.as_ref().err())
                    .collect();
                match errors.first() {
                    Some(Some(first)) if errors.iter().all(Option::is_some) => {
                        Some(first.to_string())
                    }
                    _ => None,
                }
            }
        };
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some(error) => {
                failing.consecutive += 1;
                failing.last = Some((error, Instant::now()));
            }
            None => *failing = Failures::default(),
        }
    }
}

/// Starts the writer thread on an open, migrated connection to `path`, and the checkpointer
/// beside it; they report every batch and checkpoint to `observer`.
pub fn spawn(
    conn: Connection,
    path: &Path,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<(Writer, WriterThread), super::StoreError> {
    let sqlite = SqliteBatches::start(
        conn,
        path,
        settings.max_size_bytes,
        settings.checkpoints.clone(),
        observer.clone(),
    )?;
    let engine = Engine {
        file: Some(sqlite.file.clone()),
        checkpointer: Some(sqlite.checkpointer),
    };
    spawn_on(vec![sqlite.batches], engine, settings, clock, observer).map_err(|source| {
        super::StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

/// What the writer keeps of its engine besides [`Batches`]: SQLite's file (health) and
/// checkpointer (stopped first at shutdown); an engine without them passes `None`s.
pub struct Engine {
    /// The database file, watched for deletion and replacement (SQLite).
    pub file: Option<Arc<DatabaseFile>>,
    /// The checkpointer thread (SQLite).
    pub checkpointer: Option<CheckpointerThread>,
}

/// Starts a writer thread on each of `connections` (one [`Batches`] per connection, whichever
/// engine commits them), all taking batches from one queue.
pub fn spawn_on<B: Batches>(
    connections: Vec<B>,
    engine: Engine,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> std::io::Result<(Writer, WriterThread)> {
    let health = Arc::new(Health {
        file: engine.file,
        failing: Mutex::new(Failures::default()),
        batches_with_failures: AtomicU64::new(0),
        batches_without_failures: AtomicU64::new(0),
        commits: tokio::sync::watch::Sender::new(0),
    });
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
    let queue = Arc::new(Mutex::new(receiver));
    let mut handles = Vec::with_capacity(connections.len());
    for (n, batches) in connections.into_iter().enumerate() {
        let name = match n {
            0 => "orderwatch-writer".to_owned(),
            n => format!("orderwatch-writer-{}", n + 1),
        };
        let (settings, clock, observer) = (settings.clone(), clock.clone(), observer.clone());
        let (thread_health, thread_queue) = (health.clone(), queue.clone());
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let context = Context {
                settings,
                clock,
                observer: observer.as_ref(),
                health: &thread_health,
            };
            run(batches, &thread_queue, &context)
        });
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                // The threads already started see the queue end and stop (one may be waiting
                // on it with the lock held, so it is ended by its sender, not closed).
                drop(sender);
                return Err(error);
            }
        }
    }
    let writer = Writer { sender, health };
    Ok((
        writer.clone(),
        WriterThread {
            handles,
            writer,
            checkpointer: engine.checkpointer,
        },
    ))
}

/// The queue the writer threads share; one at a time takes a batch from it.
type Queue = Mutex<mpsc::Receiver<Job>>;

fn lock(queue: &Queue) -> std::sync::MutexGuard<'_, mpsc::Receiver<Job>> {
    // A thread that panicked while holding it left the receiver whole.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// How one database engine commits the writer's batches: every command of a batch in one
/// transaction, each on its own so that one failing does not sink the others, then one commit.
/// The rest of the writer (the queue, batching, answers, health, metrics) is the same for
/// every engine; SQLite's is [`SqliteBatches`].
pub trait Batches: Send + 'static {
    /// Runs `batch` and commits it, at `clock`'s time once the batch holds the write lock: a
    /// result per command, or one error for all of them (nothing of the batch is stored then).
    fn commit(
        &mut self,
        batch: &[&Command],
        store: &StoreSettings,
        clock: &dyn Clock,
    ) -> Result<Vec<JobResult>, WriteError>;

    /// After the last batch; `defunct`: the database must not be written any more (not even
    /// by closing it).
    fn close(self, defunct: bool);
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

    /// Runs a command on the outbox of signed webhooks out (waits when the queue is full:
    /// nobody is waiting on an HTTP answer).
    pub async fn forward(&self, command: ForwardCommand) -> Result<ForwardDone, WriteError> {
        match self
            .submit(Command::Forward(command), WhenFull::Wait)
            .await?
        {
            Done::Forward(done) => Ok(done),
            other => Err(unexpected(other)),
        }
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

    /// Registers orders for polling; returns those that were new.
    pub async fn watch(&self, orders: Vec<Uuid>) -> Result<Vec<Uuid>, WriteError> {
        match self.submit(Command::Watch(orders), WhenFull::Wait).await? {
            Done::Orders(new) => Ok(new),
            other => Err(unexpected(other)),
        }
    }

    /// Stops polling orders the partner no longer wants watched; returns those stored (the
    /// others are unknown).
    pub async fn unwatch(&self, orders: Vec<Uuid>) -> Result<Vec<Uuid>, WriteError> {
        match self
            .submit(Command::Unwatch(orders), WhenFull::Wait)
            .await?
        {
            Done::Orders(known) => Ok(known),
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
    /// [`super::pruning::prune`], which loops over this).
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

    /// What the writer knows about its health (readiness and liveness checks ask).
    pub fn health(&self) -> &Health {
        &self.health
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

/// What the writer thread works with besides its connection and queue.
struct Context<'a> {
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: &'a dyn StoreObserver,
    health: &'a Health,
}

fn run(mut batches: impl Batches, queue: &Queue, context: &Context<'_>) {
    let mut batch = Vec::with_capacity(context.settings.max_batch);
    while take_batch(queue, context.settings.max_batch, &mut batch) {
        let started = Instant::now();
        let commands: Vec<&Command> = batch.iter().map(|job| &job.command).collect();
        let results = batches.commit(&commands, &context.settings.store, context.clock.as_ref());
        let conflicts = match &results {
            Ok(done) => done
                .iter()
                .filter(|r| matches!(r, Ok(Done::Outcome(Outcome::Conflict))))
                .count(),
            // Logged once, by the check.
            Err(WriteError::Replaced(_)) => 0,
            Err(error) => {
                tracing::error!(%error, jobs = batch.len(), "could not commit a batch; answering 503");
                0
            }
        };
        context.observer.batch(BatchStats {
            jobs: batch.len(),
            elapsed: started.elapsed(),
            committed: results.is_ok(),
            conflicts,
        });
        context.health.batch_done(&batch, &results);
        let stop = batch
            .iter()
            .any(|job| matches!(job.command, Command::Shutdown));
        answer(batch.drain(..), results);
        if stop {
            break;
        }
    }
    batches.close(context.health.defunct().is_some());
}

/// Waits for a job, then adds whatever else is queued, up to `max` jobs; `false` once the queue
/// is closed and empty. A shutdown request closes the queue for every thread: what was queued
/// before it is still taken, anything sent after it is refused ([`WriteError::Closed`]).
fn take_batch(queue: &Queue, max: usize, batch: &mut Vec<Job>) -> bool {
    let mut receiver = lock(queue);
    let Some(first) = receiver.blocking_recv() else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    if batch
        .iter()
        .any(|job| matches!(job.command, Command::Shutdown))
    {
        receiver.close();
    }
    true
}

/// What one command of a batch produced, or why it did not.
pub type JobResult = Result<Done, WriteError>;

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
