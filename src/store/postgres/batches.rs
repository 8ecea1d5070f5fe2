//! How one batch of writer commands commits on PostgreSQL: the engine half of the writer
//! thread (`writer::Batches`), as `sqlite_batches.rs` is SQLite's.
//!
//! - One transaction per batch (READ COMMITTED, `synchronous_commit = on`, the session's
//!   `lock_timeout` so a stuck lock becomes an error, never a hang); our clock is read once the transaction
//!   is open.
//! - The batch runs in one savepoint; when a command fails, it is undone and each half runs
//!   again, down to the failing command, which alone gets its error (no savepoint per command:
//!   PostgreSQL stalls past ~64 subtransactions in one transaction).
//! - A deadlock or a serialization failure undoes the whole batch and runs it again (twice at
//!   most); after that its commands are answered with the error (503). A lock timeout fails
//!   the batch at once ("the database is locked", 503): it already waited `lock_timeout`.
//! - A failed `COMMIT` fails every command: its outcome is unknown, and the retry Musement
//!   sends comes back as `duplicate`.
//! - A lost connection fails the batch it happened in; the next batch connects again, and
//!   after a failed attempt batches are refused at once for a wait that doubles per failure
//!   (100 ms up to 5 s), so `/readyz` says "not ready" meanwhile without asking the server.
//!
//! - Statements run prepared, once per connection ([`Session`]), and the connection plans
//!   without sequential scans (see [`open`]).
//!
//! The writer thread is synchronous; this owns a current-thread runtime to drive its client.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::super::StoreSettings;
use super::super::commands::Command;
use super::super::writer::{Batches, JobResult, WriteError};
use super::commands::execute_all;
use super::connect::PgConnect;
use super::describe_error;
use super::session::{Session, Statements};
use crate::clock::Clock;

/// How the writer reaches the database.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The server, with the session's `lock_timeout` and `statement_timeout`.
    pub connect: PgConnect,
    /// This instance's name (heartbeat row, `item_events.receiver`).
    pub instance: String,
}

/// The writer's connection and what it needs to open it again.
pub struct PgBatches {
    runtime: tokio::runtime::Runtime,
    target: PgTarget,
    connection: Option<Connection>,
    reconnect: Reconnect,
}

/// A connection and the statements prepared on it, which die with it.
struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    fn new(client: Client) -> Self {
        Self {
            client,
            statements: Statements::default(),
        }
    }
}

/// The first wait before connecting again after a failed attempt; it doubles up to
/// [`RECONNECT_CAP`].
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// When the writer may try to connect again: after a failed attempt, batches are answered
/// at once (503) until a wait that doubles per failure has passed, so a server that is down
/// is not asked once per batch.
#[derive(Debug, Default)]
struct Reconnect {
    failures: u32,
    not_before: Option<Instant>,
}

impl Reconnect {
    /// A new connection, unless the last attempt failed too recently.
    async fn open(&mut self, target: &PgTarget) -> Result<Client, WriteError> {
        if let Some(at) = self.not_before.filter(|at| Instant::now() < *at) {
            let wait = at.saturating_duration_since(Instant::now());
            return Err(WriteError::Storage(format!(
                "PostgreSQL unreachable; connecting again in {} ms",
                wait.as_millis()
            )));
        }
        match open(target).await {
            Ok(client) => {
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, "the writer is connected again");
                }
                *self = Self::default();
                Ok(client)
            }
            Err(error) => {
                let wait = RECONNECT_BASE
                    .saturating_mul(1 << self.failures.min(16))
                    .min(RECONNECT_CAP);
                self.failures += 1;
                self.not_before = Some(Instant::now() + wait);
                Err(error)
            }
        }
    }
}

/// How many times a batch runs when PostgreSQL asks for a retry (deadlock, serialization
/// failure).
const ATTEMPTS: usize = 3;

impl PgBatches {
    /// Connects (from the writer thread, before it takes batches).
    pub fn connect(target: PgTarget) -> Result<Self, WriteError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WriteError::Storage(format!("the writer's runtime: {e}")))?;
        let client = runtime.block_on(open(&target))?;
        Ok(Self {
            runtime,
            target,
            connection: Some(Connection::new(client)),
            reconnect: Reconnect::default(),
        })
    }
}

/// A connection to `target`, driven on the current runtime, committing synchronously (a 200
/// is only sent for a commit that is on disk, whatever the server's default), and planning
/// without sequential scans: every statement of the write path reaches its rows by key, yet on
/// a table growing faster than autovacuum's ANALYZE the planner judged a scan cheaper, and a
/// prepared statement's generic plan, made once while the tables were small, kept it (with
/// the prepared statements, on an empty database at 64 connections: 4,000–4,900 webhooks/s
/// before, 6,600–7,100 after; BENCHMARKS.md has the million-item runs). `enable_seqscan = off`
/// only prices a scan out where an index serves; a table without one is still scanned.
async fn open(target: &PgTarget) -> Result<Client, WriteError> {
    let client = target
        .connect
        .connect()
        .await
        .map_err(|e| unreachable_database(&e))?;
    client
        .batch_execute("SET synchronous_commit = on; SET enable_seqscan = off")
        .await
        .map_err(|e| storage(&e))?;
    Ok(client)
}

fn storage(error: &tokio_postgres::Error) -> WriteError {
    if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        // Said as SQLite's busy timeout is, so operators and alerts read one thing.
        return WriteError::Storage(format!(
            "the database is locked (a row or table lock held longer than lock_timeout): {}",
            describe_error(error)
        ));
    }
    WriteError::Storage(describe_error(error))
}

fn unreachable_database(error: &tokio_postgres::Error) -> WriteError {
    WriteError::Storage(format!("PostgreSQL unreachable: {}", describe_error(error)))
}

/// Whether PostgreSQL asks for the transaction to be run again. A lock timeout is not among
/// them: the batch already waited as long as `lock_timeout` allows (running it again would
/// triple the wait a webhook sees); it fails with 503 and Musement retries.
fn asks_for_retry(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Whether the error means the connection is gone (closed, or ended by the server: an
/// administrator's `pg_terminate_backend`, a shutdown, a connection failure), so the next batch
/// must open a new one.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error.code().is_some_and(|code| {
            let class = &code.code()[..2];
            class == "08" || code.code().starts_with("57P")
        })
}

/// Why a batch did not run to its commit.
enum Failed {
    /// Run the whole batch again.
    Retry(tokio_postgres::Error),
    /// Answer every command with this.
    Batch(WriteError),
    /// The connection is gone: answer every command with this, and connect again.
    Lost(WriteError),
}

/// A failure of the batch as a whole.
fn whole_batch(error: &tokio_postgres::Error) -> Failed {
    if connection_lost(error) {
        Failed::Lost(storage(error))
    } else {
        Failed::Batch(storage(error))
    }
}

impl Batches for PgBatches {
    fn commit(
        &mut self,
        batch: &[&Command],
        store: &StoreSettings,
        clock: &dyn Clock,
    ) -> Result<Vec<JobResult>, WriteError> {
        let Self {
            runtime,
            target,
            connection,
            reconnect,
        } = self;
        runtime.block_on(async {
            if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
                *connection = None;
                *connection = Some(Connection::new(reconnect.open(target).await?));
            }
            let open = connection.as_mut().expect("connected just above");
            let mut last = None;
            for _ in 0..ATTEMPTS {
                match commit_batch(open, batch, store, clock, &target.instance).await {
                    Ok(results) => return Ok(results),
                    Err(Failed::Batch(error)) => return Err(error),
                    Err(Failed::Lost(error)) => {
                        *connection = None;
                        return Err(error);
                    }
                    Err(Failed::Retry(error)) => {
                        tracing::info!(error = %describe_error(&error), "batch run again");
                        last = Some(error);
                    }
                }
            }
            Err(storage(&last.expect("at least one attempt")))
        })
    }

    fn close(self, _defunct: bool) {}
}

/// Runs every command of the batch in one transaction and commits once.
async fn commit_batch(
    connection: &mut Connection,
    batch: &[&Command],
    store: &StoreSettings,
    clock: &dyn Clock,
    instance: &str,
) -> Result<Vec<JobResult>, Failed> {
    let tx = connection
        .client
        .transaction()
        .await
        .map_err(|e| whole_batch(&e))?;
    let now = clock.now();
    let mut results: Vec<Option<JobResult>> = vec![None; batch.len()];
    let jobs: Vec<usize> = (0..batch.len()).collect();
    let session = Session::new(&tx, &connection.statements);
    run_in_halves(&session, batch, &jobs, store, now, instance, &mut results).await?;
    tx.commit().await.map_err(|e| {
        let error = WriteError::Storage(format!(
            "COMMIT failed, its outcome unknown: {}",
            describe_error(&e)
        ));
        if connection_lost(&e) {
            Failed::Lost(error)
        } else {
            Failed::Batch(error)
        }
    })?;
    Ok(results
        .into_iter()
        .map(|result| result.expect("every command is answered"))
        .collect())
}

type Halves<'a> = Pin<Box<dyn Future<Output = Result<(), Failed>> + Send + 'a>>;

/// Runs the commands at `jobs` in one savepoint; when one fails, all are undone and each half
/// runs again on its own, down to the failing command, answered alone with its error.
fn run_in_halves<'a>(
    tx: &'a Session<'_>,
    batch: &'a [&Command],
    jobs: &'a [usize],
    store: &'a StoreSettings,
    now: chrono::DateTime<chrono::Utc>,
    instance: &'a str,
    results: &'a mut [Option<JobResult>],
) -> Halves<'a> {
    Box::pin(async move {
        if jobs.is_empty() {
            return Ok(());
        }
        let run = |sql: &'static str| async move {
            tx.batch_execute(sql).await.map_err(|e| whole_batch(&e))
        };
        run("SAVEPOINT jobs").await?;
        let commands: Vec<&Command> = jobs.iter().map(|&index| batch[index]).collect();
        match execute_all(tx, &commands, store, now, instance).await {
            Ok(done) => {
                run("RELEASE SAVEPOINT jobs").await?;
                for (&index, done) in jobs.iter().zip(done) {
                    results[index] = Some(Ok(done));
                }
                Ok(())
            }
            Err(error) if asks_for_retry(&error) => Err(Failed::Retry(error)),
            Err(error) if connection_lost(&error) || error.code().is_none() => {
                // The connection is gone (or the server sent no SQL error): nothing here runs.
                Err(whole_batch(&error))
            }
            Err(error) => {
                run("ROLLBACK TO SAVEPOINT jobs").await?;
                run("RELEASE SAVEPOINT jobs").await?;
                if let [index] = jobs {
                    results[*index] = Some(Err(storage(&error)));
                    return Ok(());
                }
                let (first, second) = jobs.split_at(jobs.len() / 2);
                run_in_halves(tx, batch, first, store, now, instance, results).await?;
                run_in_halves(tx, batch, second, store, now, instance, results).await
            }
        }
    })
}
