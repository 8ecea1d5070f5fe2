//! `orderwatch migrate`: bring the database's schema up to this binary's, and nothing else.

use std::process::ExitCode;

use super::output::fail;
use super::{ConfigFile, load_database_config, runtime};
use crate::store;

/// Create or upgrade the database schema, then exit (the daemon does the same at start).
///
/// On PostgreSQL the migrations run in one transaction under an advisory lock, so running
/// this while instances start or run is safe; they are expand-only, so running binaries keep
/// working on the new schema. A schema newer than this binary is left alone if this binary
/// can still run on it, and refused otherwise. On SQLite, upgrading is one-way: take a
/// `backup` first.
#[derive(Debug, clap::Args)]
pub(super) struct Args {}

pub(super) fn migrate(config_file: &ConfigFile, _args: Args) -> ExitCode {
    let config = match load_database_config(config_file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match runtime().block_on(store::migrate_schema(&config)) {
        Ok(schema) => {
            println!(
                "{}: schema version {} ({} migration(s) applied now)",
                config.database.describe(),
                schema.version,
                schema.applied
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}
