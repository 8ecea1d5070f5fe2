//! `orderwatch backup PATH`: a consistent copy of the database, taken while the daemon runs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigFile;
use super::output::{fail, open_database};

/// Copy the database to PATH with SQLite's online backup API (safe while the daemon writes).
///
/// The copy is one snapshot, checked with `PRAGMA quick_check`, written beside PATH and moved
/// into place, and is a standalone database (no -wal file). An existing PATH is kept unless
/// --force.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Where to write the copy.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Replace PATH if it exists.
    #[arg(long)]
    force: bool,
}

pub(super) fn backup(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (config, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let copied = match database.backup(&args.path, args.force, config.database.busy_timeout) {
        Ok(copied) => copied,
        Err(error) => return fail(error),
    };
    println!(
        "backed up to {}: {} pages, {} orders, {} items, {} events",
        args.path.display(),
        copied.pages,
        copied.orders,
        copied.items,
        copied.events
    );
    ExitCode::SUCCESS
}
