//! The store's read side for the inspection commands (`items`, `show`, `stats`, `changes`,
//! `rejected`, `backup`): one read-only session for a command that is not async, with one
//! method per question, on whichever engine `[database]` names. The commands never see a
//! connection, SQL or the engine.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio_postgres::Client;

use super::deliveries::{self, DeliveryFilter, DeliveryRow, DestinationRow};
use super::inspect::{
    self, ChangePage, FeedPosition, ItemFilter, ItemRow, RejectedRow, ShowError, Shown, Stats,
};
use super::maintenance::{self, BackupError};
use super::postgres::connect::PgConnect;
use super::postgres::feed;
use super::postgres::{self as pg, describe_error, migrate};
use super::{StoreError, open_read_only};
use crate::config::DatabaseConfig;

/// A read-only session on one database. Opening it refuses a missing SQLite file, an empty
/// one, a PostgreSQL database without the schema and a newer schema, and never creates
/// anything.
pub struct Inspection {
    engine: Engine,
}

enum Engine {
    Sqlite(Connection),
    /// A connection driven by the session's own runtime (the commands are not async).
    Postgres {
        runtime: tokio::runtime::Runtime,
        client: Client,
    },
}

/// A read that failed, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadFailed(String);

impl From<rusqlite::Error> for ReadFailed {
    fn from(error: rusqlite::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<tokio_postgres::Error> for ReadFailed {
    fn from(error: tokio_postgres::Error) -> Self {
        Self(describe_error(&error))
    }
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
    /// Opens the database `[database]` names: the SQLite file, waiting up to `busy_timeout`
    /// for a lock held by a writer, or a PostgreSQL connection (`instance` names it).
    pub fn open(database: &DatabaseConfig, instance: &str) -> Result<Self, StoreError> {
        if database.url.is_none() {
            return open_read_only(&database.path, database.busy_timeout).map(|conn| Self {
                engine: Engine::Sqlite(conn),
            });
        }
        let failed = |reason: String| StoreError::Postgres {
            url: database.describe(),
            reason,
        };
        let connect =
            PgConnect::from_config(database, instance).map_err(|e| failed(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
        let client = runtime.block_on(async {
            let client = connect
                .connect()
                .await
                .map_err(|e| failed(format!("cannot connect: {}", describe_error(&e))))?;
            migrate::check_readable(&client)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok::<_, StoreError>(client)
        })?;
        Ok(Self {
            engine: Engine::Postgres { runtime, client },
        })
    }

    /// Items matching `filter`, longest in their current status first.
    pub fn items(
        &self,
        filter: &ItemFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ItemRow>, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => inspect::items(conn, filter, now)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::inspect::items(client, filter, now))?
            }
        })
    }

    /// Whether any item is stored with exactly `status`.
    pub fn status_is_stored(&self, status: &str) -> Result<bool, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => inspect::status_is_stored(conn, status)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::inspect::status_is_stored(client, status))?
            }
        })
    }

    /// The item or order a UUID (or a unique prefix of one) names, with its events.
    pub fn show(&self, uuid: &str, now: DateTime<Utc>) -> Result<Shown, ShowError> {
        match &self.engine {
            Engine::Sqlite(conn) => inspect::show(conn, uuid, now),
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::inspect::show(client, uuid, now))
            }
        }
    }

    /// Counts and ages for `orderwatch stats`.
    pub fn stats(&self, now: DateTime<Utc>) -> Result<Stats, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => inspect::stats(conn, now)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::inspect::stats(client, now))?
            }
        })
    }

    /// The newest rejected webhooks, at most `limit`.
    pub fn rejected(&self, limit: usize) -> Result<Vec<RejectedRow>, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => inspect::rejected(conn, limit)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::inspect::rejected(client, limit))?
            }
        })
    }

    /// The deliveries of signed webhooks out matching `filter`, newest first.
    pub fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRow>, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => deliveries::deliveries(conn, filter)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::deliveries::deliveries(client, filter))?
            }
        })
    }

    /// Every destination of signed webhooks out with its backlog.
    pub fn destinations(&self) -> Result<Vec<DestinationRow>, ReadFailed> {
        Ok(match &self.engine {
            Engine::Sqlite(conn) => deliveries::destinations(conn)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(pg::deliveries::destinations(client))?
            }
        })
    }

    /// Up to `page` events after `after`, the status changes among them.
    pub fn changes(&self, after: FeedPosition, page: usize) -> Result<ChangePage, ReadFailed> {
        let found = match &self.engine {
            Engine::Sqlite(conn) => inspect::changes_from(conn, after, page)?,
            Engine::Postgres { runtime, client } => {
                runtime.block_on(feed::changes_from(client, after, page))?
            }
        };
        found.map_err(|unusable| ReadFailed(unusable.0))
    }

    /// A consistent copy of the SQLite database at `target` ([`maintenance::backup`]), then
    /// counted in the copy opened on its own. PostgreSQL is backed up with `pg_dump`.
    pub fn backup(
        &self,
        target: &Path,
        force: bool,
        busy_timeout: Duration,
    ) -> Result<BackupSummary, BackupError> {
        let Engine::Sqlite(conn) = &self.engine else {
            return Err(BackupError::OnPostgres);
        };
        let pages = maintenance::backup(conn, target, force)?;
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
