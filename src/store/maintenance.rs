//! Keeping the database small and safe: pruning old history in short batches through the
//! writer, and online backups.
//!
//! Pruning deletes only `item_events` and `rejected_webhooks` rows received before a cutoff,
//! never `order_items`/`orders` (the current state), and never an item's newest event nor its
//! newest `applied` event: `show` still explains the current row, the change feed still knows
//! an item's previous status, and the newest event id is never freed for reuse, so
//! `item_events.id` stays a stable cursor.

use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::writer::{WriteError, Writer};
use crate::clock::to_db_text;

/// Rows looked at in one prune command: one short transaction, so webhooks never wait long
/// for the write lock.
pub const PRUNE_BATCH: usize = 1000;

/// One batch's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Events deleted.
    pub events: usize,
    /// Rejected webhooks deleted.
    pub rejected: usize,
    /// The last event id looked at: the next batch starts after it.
    pub scanned_to: Option<i64>,
    /// Nothing older than the cutoff remains after `scanned_to`.
    pub done: bool,
}

/// Totals of a whole prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub rejected: usize,
}

/// Deletes up to `batch` old events after id `after` (and old rejected webhooks), inside the
/// caller's transaction. Candidates come in id order, so the whole prune reads the table once.
pub fn prune_step(
    conn: &Connection,
    cutoff: DateTime<Utc>,
    after: i64,
    batch: usize,
) -> rusqlite::Result<PruneStep> {
    let cutoff = to_db_text(cutoff);
    let batch = batch.clamp(1, i64::MAX as usize) as i64;
    let mut candidates = conn.prepare_cached(
        "SELECT e.id,
                e.id = (SELECT max(l.id) FROM item_events l WHERE l.item_uuid = e.item_uuid)
                OR e.id IS (SELECT max(a.id) FROM item_events a
                            WHERE a.item_uuid = e.item_uuid AND a.outcome = 'applied')
         FROM item_events e WHERE e.id > ?1 AND e.received_at < ?2 ORDER BY e.id LIMIT ?3",
    )?;
    let rows: Vec<(i64, bool)> = candidates
        .query_map(params![after, cutoff, batch], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare_cached("DELETE FROM item_events WHERE id = ?1")?;
    let mut events = 0;
    for (id, keep) in &rows {
        if !keep {
            events += delete.execute([id])?;
        }
    }
    let rejected = conn
        .prepare_cached(
            "DELETE FROM rejected_webhooks WHERE id IN
               (SELECT id FROM rejected_webhooks WHERE received_at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![cutoff, batch])?;
    Ok(PruneStep {
        events,
        rejected,
        scanned_to: rows.last().map(|(id, _)| *id),
        done: (rows.len() as i64) < batch && (rejected as i64) < batch,
    })
}

/// Prunes everything received before `cutoff`, one short writer command at a time.
pub async fn prune(writer: &Writer, cutoff: DateTime<Utc>) -> Result<Pruned, WriteError> {
    let mut total = Pruned::default();
    let mut after = 0;
    loop {
        let step = writer.prune_step(cutoff, after, PRUNE_BATCH).await?;
        total.events += step.events;
        total.rejected += step.rejected;
        after = step.scanned_to.unwrap_or(after);
        if step.done {
            return Ok(total);
        }
    }
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; pass --force to replace it")]
    Exists(String),
    #[error("{0} is the database itself; back up to another file")]
    SameFile(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("backup to {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the copy at {path} failed its integrity check: {report}")]
    Corrupt { path: String, report: String },
}

/// Copies the database open on `source` to `target` with SQLite's online backup API, as one
/// step inside one read transaction: a consistent snapshot that does not block the daemon's
/// writer (WAL). The copy is written beside `target`, checked, synced, then moved into place, so
/// `target` is never a half-written file; without `force` an existing `target` is kept.
pub fn backup(source: &Connection, target: &Path, force: bool) -> Result<u64, BackupError> {
    let shown = target.display().to_string();
    let live = source
        .path()
        .map(Path::new)
        .and_then(|p| p.canonicalize().ok());
    if live.is_some() && target.canonicalize().ok() == live {
        // --force would rename the copy over the file the daemon is writing.
        return Err(BackupError::SameFile(shown));
    }
    if !force && target.exists() {
        return Err(BackupError::Exists(shown));
    }
    let partial = target.with_file_name(format!(
        ".{}.partial-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = copy_to(source, &partial).and_then(|pages| {
        place(&partial, target, force)?;
        Ok(pages)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn copy_to(source: &Connection, partial: &Path) -> Result<u64, BackupError> {
    let shown = partial.display().to_string();
    let sqlite = |source| BackupError::Sqlite {
        path: shown.clone(),
        source,
    };
    let _ = std::fs::remove_file(partial);
    let mut copy = Connection::open(partial).map_err(sqlite)?;
    {
        let backup = rusqlite::backup::Backup::new(source, &mut copy).map_err(sqlite)?;
        // -1: every page in one step, so the copy is one snapshot and never restarts because
        // the daemon committed meanwhile.
        let mut busy_retries = 200; // 10 s of a locked source (WAL recovery) at most
        loop {
            match backup.step(-1).map_err(sqlite)? {
                rusqlite::backup::StepResult::Done => break,
                _ if busy_retries > 0 => {
                    busy_retries -= 1;
                    std::thread::sleep(StdDuration::from_millis(50));
                }
                _ => {
                    return Err(sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the source stayed locked".into()),
                    )));
                }
            }
        }
    }
    // The copy keeps the source's WAL flag; make it one self-contained file.
    let _: String = copy
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(sqlite)?;
    let report: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sqlite)?;
    if report != "ok" {
        return Err(BackupError::Corrupt {
            path: shown,
            report,
        });
    }
    let pages: i64 = copy
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sqlite)?;
    copy.close().map_err(|(_, e)| sqlite(e))?;
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(|source| BackupError::Io {
            path: shown,
            source,
        })?;
    Ok(pages as u64)
}

/// Moves the finished copy to `target`: a rename when replacing is allowed, else a hard link,
/// which fails rather than replace a file that appeared meanwhile.
fn place(partial: &Path, target: &Path, force: bool) -> Result<(), BackupError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            BackupError::Exists(target.display().to_string())
        } else {
            BackupError::Io {
                path: target.display().to_string(),
                source,
            }
        }
    };
    if force {
        std::fs::rename(partial, target).map_err(io)?;
    } else {
        std::fs::hard_link(partial, target).map_err(io)?;
        let _ = std::fs::remove_file(partial);
    }
    if let Some(folder) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The new directory entry survives a crash too.
        let _ = std::fs::File::open(folder).and_then(|f| f.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(conn: &Connection, item: &str, outcome: &str, status: &str, received_at: &str) {
        conn.execute(
            "INSERT INTO item_events (item_uuid, order_uuid, source, status, as_of, received_at, outcome, payload)
             VALUES (?1, 'o', 'webhook', ?2, ?3, ?3, ?4, '{}')",
            [item, status, received_at, outcome],
        )
        .unwrap();
    }

    #[test]
    fn prune_keeps_each_items_newest_and_newest_applied_event() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::open_for_writing(&dir.path().join("t.db"), Duration::ZERO).unwrap();
        let old = "2020-01-01T00:00:00.000Z";
        event(&conn, "a", "applied", "PENDING", old); // 1: deleted
        event(&conn, "a", "applied", "OK", old); // 2: newest applied of a, kept
        event(&conn, "a", "stale", "PENDING", old); // 3: newest of a, kept
        event(&conn, "b", "applied", "OK", old); // 4: deleted
        event(&conn, "b", "duplicate", "OK", old); // 5: deleted
        event(&conn, "b", "applied", "KO", "2030-01-01T00:00:00.000Z"); // 6: new, kept
        let cutoff = "2021-01-01T00:00:00Z".parse().unwrap();
        // Batches of 2 walk the table in id order.
        let mut after = 0;
        let mut deleted = 0;
        loop {
            let step = prune_step(&conn, cutoff, after, 2).unwrap();
            deleted += step.events;
            after = step.scanned_to.unwrap_or(after);
            if step.done {
                break;
            }
        }
        assert_eq!(deleted, 3);
        let left: Vec<i64> = conn
            .prepare("SELECT id FROM item_events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, [2, 3, 6]);
    }
}
