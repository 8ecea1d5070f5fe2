//! The PostgreSQL backend (issue 15, in progress): the schema and its migrations,
//! [`apply::apply_batch`] (the fold of SQLite's batch path under sorted order locks), the
//! reconciler's store functions ([`polls`]), every writer command ([`commands`]) and how a
//! batch of them commits ([`batches::PgBatches`], the writer's `Batches`) so far. Starting the
//! writer on it, the reads and the CLI come next, behind the same interfaces as SQLite's
//! (`reads::Reads`, `inspection::Inspection`), with the same pure rule.

pub mod apply;
pub mod batches;
pub mod commands;
pub mod migrate;
pub mod polls;
