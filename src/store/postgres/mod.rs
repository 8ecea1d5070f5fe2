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
pub mod cluster;
pub mod commands;
pub mod connect;
pub mod deliveries;
pub mod feed;
pub mod inspect;
pub mod migrate;
pub mod polls;
pub mod queries;
pub mod session;

use std::sync::Arc;

use self::batches::{PgBatches, PgTarget};
use super::observer::StoreObserver;
use super::writer::{Engine, WriteError, Writer, WriterSettings, WriterThread, spawn_on};
use crate::clock::Clock;

/// The writer threads per instance, each with its own connection: while one batch's commit
/// is flushed, the next batch runs (PostgreSQL flushes concurrent commits together).
pub const WRITERS: usize = 2;

/// Starts the writer threads on PostgreSQL: [`WRITERS`] connections (opened here, off the async
/// threads), the same queue, batching and answers as on SQLite.
pub async fn start_writer(
    target: PgTarget,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<(Writer, WriterThread), WriteError> {
    let connections = tokio::task::spawn_blocking(move || {
        (0..WRITERS)
            .map(|_| PgBatches::connect(target.clone()))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| WriteError::Storage(format!("connecting the writers: {e}")))??;
    let engine = Engine {
        file: None,
        checkpointer: None,
    };
    spawn_on(connections, engine, settings, clock, observer)
        .map_err(|e| WriteError::Storage(format!("starting the writer threads: {e}")))
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
