//! The PostgreSQL backend (issue 15, in progress): the schema and its migrations,
//! [`apply::apply_batch`] (the fold of SQLite's batch path under sorted order locks), the
//! reconciler's store functions ([`polls`]), every writer command ([`commands`]) and how a
//! batch of them commits ([`batches::PgBatches`], the writer's `Batches`), and the writer
//! thread started on it ([`start_writer`]), the change feed in commit order ([`feed`]) and the
//! daemon's read-side questions ([`queries`]) and some of the inspection commands' ([`inspect`])
//! so far. The rest of the inspection reads (`show`, `stats`), the configuration and the CLI
//! come next, behind the same interfaces as SQLite's (`reads::Reads`,
//! `inspection::Inspection`), with the same pure rule.

pub mod apply;
pub mod batches;
pub mod commands;
pub mod feed;
pub mod inspect;
pub mod migrate;
pub mod polls;
pub mod queries;

use std::sync::Arc;

use self::batches::{PgBatches, PgTarget};
use super::observer::StoreObserver;
use super::writer::{Engine, WriteError, Writer, WriterSettings, WriterThread, spawn_on};
use crate::clock::Clock;

/// Starts the writer thread on PostgreSQL: its own connection (opened here, off the async
/// threads), the same queue, batching and answers as on SQLite.
pub async fn start_writer(
    target: PgTarget,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<(Writer, WriterThread), WriteError> {
    let batches = tokio::task::spawn_blocking(move || PgBatches::connect(target))
        .await
        .map_err(|e| WriteError::Storage(format!("connecting the writer: {e}")))??;
    let engine = Engine {
        file: None,
        checkpointer: None,
    };
    spawn_on(batches, engine, settings, clock, observer)
        .map_err(|e| WriteError::Storage(format!("starting the writer thread: {e}")))
}
