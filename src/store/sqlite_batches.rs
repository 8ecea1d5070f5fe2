//! How the writer commits a batch on SQLite ([`Batches`]): one `IMMEDIATE` transaction, the
//! commands run together (consecutive observations as one [`super::apply_batch`]) in one
//! savepoint, undone and retried in halves when one fails so that it alone fails, one commit.
//! Around it, what only a SQLite file needs: the check that the file at the path is still the
//! one open (none is written or acknowledged once it was replaced), the `max_size_bytes` budget
//! measured on the file and its WAL, and the link to the checkpointer that runs beside the
//! writer on its own connection. Public for the benchmark that measures this storage path
//! alone (`orderwatch-bench store-alone`); the daemon reaches it only through the writer.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior};

use super::StoreSettings;
use super::checkpoint::{self, CheckpointSettings, CheckpointerThread, WriterLink};
use super::commands::{Command, execute_all};
use super::observer::StoreObserver;
use super::sqlite_file::{DatabaseFile, FileSizes};
use super::writer::{Batches, JobResult, WriteError};
use crate::clock::Clock;

/// The writer's SQLite connection and what watches over it.
pub struct SqliteBatches {
    conn: Connection,
    /// The database file, watched for deletion and replacement.
    file: Arc<DatabaseFile>,
    /// Shared with the checkpointer: told of every commit, and may hold the next batch.
    link: Arc<WriterLink>,
    /// `[database] max_size_bytes`: the database and its WAL together.
    max_size_bytes: Option<u64>,
}

/// What [`SqliteBatches::start`] sets up.
pub struct Started {
    /// Commits the batches.
    pub batches: SqliteBatches,
    /// The file the writer watches, for the writer's health too.
    pub file: Arc<DatabaseFile>,
    /// The checkpointer, stopped before the writer closes its connection.
    pub checkpointer: CheckpointerThread,
}

impl SqliteBatches {
    /// Takes the writer's open, migrated connection to `path`, leaves checkpoints to a
    /// checkpointer started beside it, and starts watching the file.
    pub fn start(
        mut conn: Connection,
        path: &Path,
        max_size_bytes: Option<u64>,
        checkpoints: CheckpointSettings,
        observer: Arc<dyn StoreObserver>,
    ) -> Result<Started, super::StoreError> {
        let file = Arc::new(
            DatabaseFile::watch(path).map_err(|source| super::StoreError::Io {
                path: path.display().to_string(),
                source,
            })?,
        );
        leave_checkpoints_to_the_checkpointer(&mut conn)?;
        let link = Arc::new(WriterLink::default());
        let checkpointer =
            checkpoint::spawn(path, file.clone(), link.clone(), checkpoints, observer)?;
        Ok(Started {
            batches: SqliteBatches {
                conn,
                file: file.clone(),
                link,
                max_size_bytes,
            },
            file,
            checkpointer,
        })
    }
}

impl Batches for SqliteBatches {
    /// [`commit_batch`] between two checks that the database file is still the one opened:
    /// none is written once it was replaced, and none is acknowledged that went into a file
    /// that was replaced meanwhile (it is answered 503, so Musement sends it again).
    fn commit(
        &mut self,
        batch: &[&Command],
        store: &StoreSettings,
        clock: &dyn Clock,
    ) -> Result<Vec<JobResult>, WriteError> {
        self.link.before_batch();
        let sizes = self.file.check().map_err(WriteError::Replaced)?;
        // The WAL's working size (reused, cut back to it after every reset) is not counted:
        // what counts is a WAL that grows because it cannot be reset.
        let over_budget = self
            .max_size_bytes
            .filter(|max| sizes.total() > max.saturating_add(checkpoint::JOURNAL_SIZE_LIMIT))
            .map(|max| over_budget(sizes, max));
        let results = commit_batch(&mut self.conn, batch, store, clock, over_budget.as_ref())?;
        if over_budget.is_none() || batch.iter().any(|command| !command.may_grow()) {
            // Something may have been written (a batch refused whole writes nothing).
            self.link.committed();
        }
        self.file.check().map_err(WriteError::Replaced)?;
        Ok(results)
    }

    fn close(self, defunct: bool) {
        if defunct {
            // Closing the last connection checkpoints into the file at the path: not ours.
            let _ = self.conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
        }
    }
}

/// No commit a webhook waits for runs a checkpoint; a WAL the checkpointer reset is cut back
/// to [`checkpoint::JOURNAL_SIZE_LIMIT`] by the next commit.
fn leave_checkpoints_to_the_checkpointer(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(
        None,
        "journal_size_limit",
        checkpoint::JOURNAL_SIZE_LIMIT as i64,
    )
}

/// The error for work refused because the database and its WAL outgrew `max_size_bytes`.
fn over_budget(sizes: FileSizes, max: u64) -> WriteError {
    WriteError::Storage(format!(
        "database or disk is full: the database ({} bytes) and its WAL ({} bytes) exceed [database] max_size_bytes ({max}) plus the WAL's working size ({} bytes); the WAL is not being reset (is a reader holding a transaction open?)",
        sizes.database,
        sizes.wal,
        checkpoint::JOURNAL_SIZE_LIMIT
    ))
}

/// Runs every command of the batch in one transaction and commits once; a command that fails
/// is undone alone ([`run_in_halves`]). A failed commit fails every command. With
/// `over_budget`, commands that may take space are answered with it instead of run.
fn commit_batch(
    conn: &mut Connection,
    batch: &[&Command],
    store: &StoreSettings,
    clock: &dyn Clock,
    over_budget: Option<&WriteError>,
) -> Result<Vec<JobResult>, WriteError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    // Our clock once the write lock is ours: the time of the commit the batch waits for.
    let now = clock.now();
    let mut results: Vec<Option<JobResult>> = vec![None; batch.len()];
    let mut runnable = Vec::with_capacity(batch.len());
    for (index, command) in batch.iter().enumerate() {
        match over_budget {
            Some(refusal) if command.may_grow() => results[index] = Some(Err(refusal.clone())),
            _ => runnable.push(index),
        }
    }
    run_in_halves(&tx, batch, &runnable, store, now, &mut results)?;
    tx.commit().map_err(storage)?;
    Ok(results
        .into_iter()
        .map(|result| result.expect("every command is answered"))
        .collect())
}

fn storage(error: rusqlite::Error) -> WriteError {
    WriteError::Storage(error.to_string())
}

/// Runs the commands at `jobs` (indexes into `batch`, in order) in one savepoint. When one
/// fails, all of them are undone and each half runs again on its own, down to the failing
/// command, which alone is answered with its error: one savepoint per batch while nothing
/// fails (a savepoint per command was a visible share of the writer's time, and PostgreSQL
/// stalls past ~64 subtransactions in one transaction), a few re-runs when something does.
fn run_in_halves(
    tx: &Connection,
    batch: &[&Command],
    jobs: &[usize],
    store: &StoreSettings,
    now: DateTime<Utc>,
    results: &mut [Option<JobResult>],
) -> Result<(), WriteError> {
    if jobs.is_empty() {
        return Ok(());
    }
    // Prepared once and reused: parsing them anew each time costs the writer.
    let run = |sql: &str| {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(storage)
    };
    run("SAVEPOINT jobs")?;
    let commands: Vec<&Command> = jobs.iter().map(|&index| batch[index]).collect();
    match execute_all(tx, &commands, store, now) {
        Ok(done) => {
            run("RELEASE jobs")?;
            for (&index, done) in jobs.iter().zip(done) {
                results[index] = Some(Ok(done));
            }
            Ok(())
        }
        Err(error) if tx.is_autocommit() => {
            // SQLite rolled the whole transaction back (disk full, I/O error): nothing may run
            // outside it, and the whole batch answers with this error.
            Err(storage(error))
        }
        Err(error) => {
            run("ROLLBACK TO jobs")?;
            run("RELEASE jobs")?;
            if let [index] = jobs {
                results[*index] = Some(Err(storage(error)));
                return Ok(());
            }
            let (first, second) = jobs.split_at(jobs.len() / 2);
            run_in_halves(tx, batch, first, store, now, results)?;
            run_in_halves(tx, batch, second, store, now, results)
        }
    }
}
