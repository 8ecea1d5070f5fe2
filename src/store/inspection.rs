//! The store's read side for the inspection commands (`items`, `show`, `stats`, `changes`,
//! `rejected`, `backup`): one read-only session for a command that is not async, with one
//! method per question. The commands never see a connection or SQL.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::inspect::{self, ChangePage, ItemFilter, ItemRow, RejectedRow, ShowError, Shown, Stats};
use super::maintenance::{self, BackupError};
use super::{StoreError, open_read_only};

/// A read-only session on one database. Opening it refuses a missing file, an empty one and a
/// newer schema, and never creates anything.
pub struct Inspection {
    conn: Connection,
}

/// What `backup` wrote, counted in the copy itself (so the numbers prove it opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Database pages copied.
    pub pages: u64,
    /// Rows of `orders`, `order_items` and `item_events` in the copy.
    pub orders: i64,
    pub items: i64,
    pub events: i64,
}

impl Inspection {
    /// Opens `database`, waiting up to `busy_timeout` for a lock held by a writer.
    pub fn open(database: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        open_read_only(database, busy_timeout).map(|conn| Self { conn })
    }

    /// Items matching `filter`, longest in their current status first.
    pub fn items(&self, filter: &ItemFilter, now: DateTime<Utc>) -> rusqlite::Result<Vec<ItemRow>> {
        inspect::items(&self.conn, filter, now)
    }

    /// Whether any item is stored with exactly `status`.
    pub fn status_is_stored(&self, status: &str) -> rusqlite::Result<bool> {
        inspect::status_is_stored(&self.conn, status)
    }

    /// The item or order a UUID (or a unique prefix of one) names, with its events.
    pub fn show(&self, uuid: &str, now: DateTime<Utc>) -> Result<Shown, ShowError> {
        inspect::show(&self.conn, uuid, now)
    }

    /// Counts and ages for `orderwatch stats`.
    pub fn stats(&self, now: DateTime<Utc>) -> rusqlite::Result<Stats> {
        inspect::stats(&self.conn, now)
    }

    /// The newest rejected webhooks, at most `limit`.
    pub fn rejected(&self, limit: usize) -> rusqlite::Result<Vec<RejectedRow>> {
        inspect::rejected(&self.conn, limit)
    }

    /// Up to `page` events after the cursor `after`.
    pub fn changes(&self, after: i64, page: usize) -> rusqlite::Result<ChangePage> {
        inspect::changes(&self.conn, after, page)
    }

    /// A consistent copy of the database at `target` ([`maintenance::backup`]), then counted
    /// in the copy opened on its own.
    pub fn backup(
        &self,
        target: &Path,
        force: bool,
        busy_timeout: Duration,
    ) -> Result<BackupSummary, BackupError> {
        let pages = maintenance::backup(&self.conn, target, force)?;
        let copy = open_read_only(target, busy_timeout)
            .map_err(|error| BackupError::CopyDoesNotOpen(error.to_string()))?;
        let count = |table: &str| {
            copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(-1)
        };
        Ok(BackupSummary {
            pages,
            orders: count("orders"),
            items: count("order_items"),
            events: count("item_events"),
        })
    }
}
