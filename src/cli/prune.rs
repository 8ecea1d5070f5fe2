//! `orderwatch prune`: delete old history by hand (the daemon can do it itself, see
//! `[store] events_keep`).

use std::process::ExitCode;

use chrono::Utc;

use super::output::{fail, open_database};
use super::{ConfigFile, init_command_logging, with_writer};
use crate::clock::to_db_text;
use crate::store::pruning;

/// Delete item_events and rejected_webhooks rows received before a cutoff, and the records of
/// signed webhooks out (delivered or skipped) enqueued before it.
///
/// Never deletes current state (order_items, orders), nor an item's newest event or its newest
/// `applied` event, so `show` still explains every row and `changes` cursors stay valid; nor a
/// pending or parked delivery. Runs
/// while the daemon does: deletes in short batches through its own writer, each a brief
/// transaction. Freed pages are reused by SQLite; the file does not shrink (VACUUM does that,
/// with the daemon stopped).
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Delete what was received longer ago than this, e.g. 90d, 12h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, required = true)]
    events_older_than: std::time::Duration,
}

pub(super) fn prune(config_file: &ConfigFile, args: Args) -> ExitCode {
    // Read-only first: refuses a missing or newer database instead of creating one.
    let config = match open_database(config_file) {
        Ok((config, _)) => config,
        Err(code) => return code,
    };
    let keep = chrono::Duration::from_std(args.events_older_than).unwrap_or(chrono::Duration::MAX);
    let cutoff = Utc::now().checked_sub_signed(keep).unwrap_or_default();
    init_command_logging(&config);
    let result = with_writer(&config, async |writer| {
        Ok(pruning::prune(writer, cutoff).await?)
    });
    match result {
        Ok(pruned) => {
            println!(
                "deleted {} event(s) and {} rejected webhook(s) received before {}, and {} \
                 delivered or skipped webhook(s) out enqueued before it",
                pruned.events,
                pruned.rejected,
                to_db_text(cutoff),
                pruned.deliveries,
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}
