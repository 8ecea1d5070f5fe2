//! `orderwatch backup PATH`: a consistent copy of the database, taken while the daemon runs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigFile;
use super::output::{fail, open_database};
use crate::store::maintenance;
use crate::store::reader::Reader;

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
    let (config, conn) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let pages = match maintenance::backup(&conn, &args.path, args.force) {
        Ok(pages) => pages,
        Err(error) => return fail(error),
    };
    let copy = match Reader::new(&args.path, config.database.busy_timeout).open() {
        Ok(copy) => copy,
        Err(error) => return fail(format!("the copy does not open: {error}")),
    };
    let count = |table: &str| {
        copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(-1)
    };
    println!(
        "backed up to {}: {pages} pages, {} orders, {} items, {} events",
        args.path.display(),
        count("orders"),
        count("order_items"),
        count("item_events")
    );
    ExitCode::SUCCESS
}
