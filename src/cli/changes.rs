//! `orderwatch changes`: the change feed, one JSON object per status change.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use super::output::{fail, finish, open_database};
use super::{ConfigFile, runtime};
use crate::store::inspect::FeedPosition;

/// How often `--follow` looks for new changes: a cheap indexed read.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// Applied events looked at per query.
const PAGE: usize = 500;

/// Print every status change as NDJSON, oldest first; `--follow` keeps printing new ones.
///
/// A change is an `applied` observation whose status differs from the item's previous one:
/// {"id", "cursor", "item", "order", "old_status" (null for a new item), "new_status",
/// "version" (null when a poll set it), "source", "as_of", "received_at"}. Store the `cursor`
/// of the last one you processed and resume with `--after CURSOR`. On SQLite the cursor is the
/// event id; on PostgreSQL it is `TX.ID` (the feed is in commit order, so nothing committed
/// late is skipped), and `--after` takes a plain event id there too. Pruning keeps each item's
/// newest events, so a cursor stays valid, but older changes may be gone.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Only changes after this cursor (or event id); 0 is the start.
    #[arg(long, value_name = "CURSOR", default_value = "0", value_parser = position)]
    after: FeedPosition,
    /// Keep running and print changes as they are committed, until SIGINT or SIGTERM (exit 0;
    /// checked after every page of the backlog too).
    #[arg(long)]
    follow: bool,
    /// Stop after this many changes.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

fn position(text: &str) -> Result<FeedPosition, String> {
    text.parse()
}

pub(super) fn changes(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (_, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    // For the signals and the waits between polls; the reads are the session's own.
    let runtime = runtime();
    // Only `--follow` handles the signals; without it SIGINT ends the command the default
    // way, even in the middle of a large backlog.
    let mut stop = if args.follow {
        let _entered = runtime.enter();
        match Stop::new() {
            Ok(stop) => Some(stop),
            Err(error) => return fail(format!("cannot listen for signals: {error}")),
        }
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let (mut cursor, mut left) = (args.after, args.limit.unwrap_or(usize::MAX));
    while left > 0 {
        let page = match database.changes(cursor, PAGE) {
            Ok(page) => page,
            Err(error) => return fail(format!("cannot read changes: {error}")),
        };
        for change in page.changes.iter().take(left) {
            // One line at a time, flushed, so a consumer sees each change as it happens.
            let line = serde_json::to_string(change).unwrap_or_default();
            if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                return finish(Err(error));
            }
            left -= 1;
        }
        cursor = page.scanned_to.unwrap_or(cursor);
        let Some(stop) = stop.as_mut() else {
            if page.caught_up {
                break;
            }
            continue;
        };
        // After every page, so a signal during a long backlog ends it within a page.
        let wait = if page.caught_up {
            FOLLOW_EVERY
        } else {
            Duration::ZERO
        };
        let signalled = runtime.block_on(async {
            tokio::select! {
                biased;
                () = stop.signalled() => true,
                () = tokio::time::sleep(wait) => false,
            }
        });
        if signalled {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, listened for from the start so none is missed between polls.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn signalled(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
