//! Keeping the database small and safe: one batch of pruning old history (the writer runs it;
//! [`super::pruning`] loops over batches), and online backups.
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

use super::inspect::COMMIT_LAG;
use crate::clock::to_db_text;

/// Rows looked at in each table by one prune command: one short transaction, so webhooks never
/// wait long for the write lock.
pub const PRUNE_BATCH: usize = 1000;

/// Where a prune goes on: the last id looked at in each table, `None` once that table is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCursor {
    pub events: Option<i64>,
    pub rejected: Option<i64>,
    pub deliveries: Option<i64>,
}

impl PruneCursor {
    /// Before the first row of every table.
    pub const START: Self = Self {
        events: Some(0),
        rejected: Some(0),
        deliveries: Some(0),
    };

    /// Every table is done.
    pub fn done(&self) -> bool {
        self.events.is_none() && self.rejected.is_none() && self.deliveries.is_none()
    }
}

/// One batch's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    /// Events deleted.
    pub events: usize,
    /// Rejected webhooks deleted.
    pub rejected: usize,
    /// Signed webhooks out deleted (delivered or skipped ones only).
    pub deliveries: usize,
    /// Where the next batch starts.
    pub next: PruneCursor,
}

/// Totals of a whole prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub rejected: usize,
    pub deliveries: usize,
}

/// Deletes old rows among the next `batch` of each table after `after`, inside the caller's
/// transaction. Both tables are walked in id order without an index on `received_at`: ids
/// follow commit order, and a row is committed at most [`COMMIT_LAG`] after it was stamped
/// (the reasoning of `stats`' count of the last hour), so once a row received at
/// `cutoff + COMMIT_LAG` or later is seen, no later row is older than the cutoff and the
/// table is done. A step reads at most `batch` rows per table, however large the history.
pub fn prune_step(
    conn: &Connection,
    cutoff: DateTime<Utc>,
    after: PruneCursor,
    batch: usize,
) -> rusqlite::Result<PruneStep> {
    let walk = Walk {
        cutoff: to_db_text(cutoff),
        stop: to_db_text(cutoff + COMMIT_LAG),
        batch: batch.clamp(1, i64::MAX as usize) as i64,
    };
    // `deletable` is only worked out for old events; an item's newest event and newest
    // applied event are always kept, and so is an event a destination of signed webhooks out
    // has not fed yet.
    let (events, next_event) = walk.run(
        conn,
        after.events,
        "SELECT e.id, e.received_at,
                CASE WHEN e.received_at >= ?2 THEN 0
                     WHEN e.id = (SELECT max(l.id) FROM item_events l
                                  WHERE l.item_seq IS e.item_seq AND l.item_uuid = e.item_uuid)
                       THEN 0
                     WHEN e.id IS (SELECT max(a.id) FROM item_events a
                                   WHERE a.item_seq IS e.item_seq AND a.item_uuid = e.item_uuid
                                     AND a.outcome = 'applied')
                       THEN 0
                     WHEN e.id > (SELECT min(CAST(feed_cursor AS INTEGER))
                                  FROM forward_destinations)
                       THEN 0
                     ELSE 1 END
         FROM item_events e WHERE e.id > ?1 ORDER BY e.id LIMIT ?3",
        "DELETE FROM item_events WHERE id = ?1",
    )?;
    let (rejected, next_rejected) = walk.run(
        conn,
        after.rejected,
        "SELECT id, received_at, received_at < ?2
         FROM rejected_webhooks WHERE id > ?1 ORDER BY id LIMIT ?3",
        "DELETE FROM rejected_webhooks WHERE id = ?1",
    )?;
    let (deliveries, next_delivery) = walk.run(
        conn,
        after.deliveries,
        "SELECT id, created_at, state IN ('delivered', 'skipped') AND created_at < ?2
         FROM forward_deliveries WHERE id > ?1 ORDER BY id LIMIT ?3",
        "DELETE FROM forward_deliveries WHERE id = ?1",
    )?;
    Ok(PruneStep {
        events,
        rejected,
        deliveries,
        next: PruneCursor {
            events: next_event,
            rejected: next_rejected,
            deliveries: next_delivery,
        },
    })
}

/// One prune step's bounds.
struct Walk {
    cutoff: String,
    /// A row received at or after this ends the walk of its table.
    stop: String,
    batch: i64,
}

impl Walk {
    /// Reads up to `batch` rows after `after` with `select` (id, received_at, deletable; ?1 the
    /// id, ?2 the cutoff, ?3 the batch) and deletes the deletable ones with `delete`. Gives the
    /// rows deleted and where the table's walk goes on (`None`: done).
    fn run(
        &self,
        conn: &Connection,
        after: Option<i64>,
        select: &str,
        delete: &str,
    ) -> rusqlite::Result<(usize, Option<i64>)> {
        let Some(after) = after else {
            return Ok((0, None));
        };
        let mut rows = conn.prepare_cached(select)?;
        let mut rows = rows.query(params![after, self.cutoff, self.batch])?;
        let (mut read, mut last, mut old) = (0, after, Vec::new());
        while let Some(row) = rows.next()? {
            let received_at: String = row.get(1)?;
            if received_at >= self.stop {
                return Ok((self.delete(conn, delete, &old)?, None));
            }
            read += 1;
            last = row.get(0)?;
            if row.get(2)? {
                old.push(last);
            }
        }
        let next = (read == self.batch).then_some(last);
        Ok((self.delete(conn, delete, &old)?, next))
    }

    fn delete(&self, conn: &Connection, delete: &str, ids: &[i64]) -> rusqlite::Result<usize> {
        let mut statement = conn.prepare_cached(delete)?;
        let mut deleted = 0;
        for id in ids {
            deleted += statement.execute([id])?;
        }
        Ok(deleted)
    }
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; pass --force to replace it")]
    Exists(String),
    #[error("{0} is the database itself; back up to another file")]
    SameFile(String),
    #[error("the folder {folder} does not exist (create it first, or back up elsewhere)")]
    NoFolder { folder: String },
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
    #[error("the copy does not open: {0}")]
    CopyDoesNotOpen(String),
    #[error(
        "the database is PostgreSQL: back it up with pg_dump (pg_dump --format=custom \
         --file=orderwatch.dump DATABASE_URL) and restore with pg_restore; the README's \
         \"Backup and restore\" shows both"
    )]
    OnPostgres,
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
    // The copy is written beside the target: its folder must be there (`backup.db` alone
    // means the current folder).
    let folder = target
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(BackupError::NoFolder {
            folder: folder.display().to_string(),
        });
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
    use crate::store::testing::new_database;

    fn event(conn: &Connection, item: &str, outcome: &str, status: &str, received_at: &str) {
        conn.execute(
            "INSERT INTO item_events (item_uuid, order_uuid, source, status, as_of, received_at, outcome, payload)
             VALUES (?1, 'o', 'webhook', ?2, ?3, ?3, ?4, '{}')",
            [item, status, received_at, outcome],
        )
        .unwrap();
    }

    /// Runs prune steps until done; gives the events deleted and the largest number of rows
    /// a step read in `item_events`.
    fn prune_all(conn: &Connection, cutoff: DateTime<Utc>, batch: usize) -> (usize, i64) {
        let mut cursor = PruneCursor::START;
        let (mut deleted, mut widest) = (0, 0);
        while !cursor.done() {
            let step = prune_step(conn, cutoff, cursor, batch).unwrap();
            deleted += step.events;
            if let (Some(from), Some(to)) = (cursor.events, step.next.events) {
                widest = widest.max(to - from);
            }
            cursor = step.next;
        }
        (deleted, widest)
    }

    fn ids(conn: &Connection, table: &str) -> Vec<i64> {
        conn.prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn prune_stops_at_the_first_row_well_past_the_cutoff() {
        let (_dir, conn) = new_database();
        let old = "2021-01-01T00:00:00.000Z";
        event(&conn, "a", "applied", "OK", old); // 1: deleted
        // 2: committed after a newer one but stamped before the cutoff (within COMMIT_LAG).
        event(&conn, "b", "applied", "OK", "2021-01-01T00:59:00.000Z");
        event(&conn, "b", "applied", "OK", "2021-01-01T00:58:00.000Z"); // 3: deleted
        event(&conn, "b", "applied", "OK", "2021-01-01T01:05:00.000Z"); // 4: after the cutoff
        event(&conn, "b", "applied", "OK", "2021-01-01T01:20:00.000Z"); // 5: past the margin
        // 6: older than the cutoff but after a row past the margin: cannot happen in commit
        // order, so the walk never reaches it (this proves it stopped).
        event(&conn, "a", "applied", "OK", old);
        event(&conn, "a", "applied", "OK", "2030-01-01T00:00:00.000Z"); // 7
        conn.execute(
            "INSERT INTO rejected_webhooks (received_at, peer, field, error, body)
             VALUES ('2021-01-01T00:00:00.000Z', 'p', 'f', 'e', x''),
                    ('2021-01-01T01:30:00.000Z', 'p', 'f', 'e', x''),
                    ('2020-01-01T00:00:00.000Z', 'p', 'f', 'e', x'')",
            [],
        )
        .unwrap();
        let cutoff = "2021-01-01T01:00:00Z".parse().unwrap();
        let (deleted, widest) = prune_all(&conn, cutoff, 1);
        assert_eq!(deleted, 3);
        assert_eq!(widest, 1, "one row per step with batches of 1");
        assert_eq!(ids(&conn, "item_events"), [4, 5, 6, 7]);
        assert_eq!(ids(&conn, "rejected_webhooks"), [2, 3]);
        // A prune with nothing to delete reads one row: the first one is past the margin.
        let step = prune_step(&conn, cutoff, PruneCursor::START, 1000).unwrap();
        assert_eq!((step.events, step.next.events), (0, None));
    }

    #[test]
    fn prune_keeps_each_items_newest_and_newest_applied_event() {
        let (_dir, conn) = new_database();
        let old = "2020-01-01T00:00:00.000Z";
        event(&conn, "a", "applied", "PENDING", old); // 1: deleted
        event(&conn, "a", "applied", "OK", old); // 2: newest applied of a, kept
        event(&conn, "a", "stale", "PENDING", old); // 3: newest of a, kept
        event(&conn, "b", "applied", "OK", old); // 4: deleted
        event(&conn, "b", "duplicate", "OK", old); // 5: deleted
        event(&conn, "b", "applied", "KO", "2030-01-01T00:00:00.000Z"); // 6: new, kept
        let cutoff = "2021-01-01T00:00:00Z".parse().unwrap();
        // Batches of 2 walk the table in id order.
        let deleted = prune_all(&conn, cutoff, 2).0;
        assert_eq!(deleted, 3);
        assert_eq!(ids(&conn, "item_events"), [2, 3, 6]);
    }
}
