//! The PostgreSQL backend, selected by `[database] url`: how to reach the server
//! ([`connect`]: URL, password, TLS, session limits), the schema and its migrations
//! ([`migrate`]), [`apply::apply_batch`] (the fold of SQLite's batch path under sorted order
//! locks), the reconciler's store functions ([`polls`]), every writer command ([`commands`])
//! and how a batch of them commits ([`batches::PgBatches`], the writer's `Batches`), the
//! writer thread started on it ([`start_writer`]), the change feed in commit order ([`feed`]),
//! the daemon's reads ([`queries`]) and the inspection commands' ([`inspect`]). Each answers
//! as its SQLite twin does (the differential tests ask both), with the same pure rule;
//! `store::open`, `reads::Reads` and `inspection::Inspection` choose between the engines.

pub mod apply;
pub mod batches;
pub mod commands;
pub mod connect;
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

/// The error on one line, with its cause (tokio-postgres keeps the server's message in the source).
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}
