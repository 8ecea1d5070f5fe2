//! `orderwatch deliveries`: the outbox of signed webhooks out (`[[forward]]`), and what an
//! operator does with it: retry or skip a parked delivery, enable a destination disabled by a
//! 410, replay the feed from a cursor.

use std::io::Write;
use std::process::ExitCode;

use super::output::{
    Format, column, fail, finish, minute, open_database, short_uuid, table, truncate, write_records,
};
use super::{
    ConfigFile, EXIT_CONFIG, EXIT_FAILURE, init_command_logging, load_database_config, with_writer,
};
use crate::store::deliveries::{DeliveryFilter, DeliveryRow, ForwardCommand, ForwardDone};
use crate::store::inspect::FeedPosition;

/// List signed webhooks out (newest first), or act on them.
///
/// A delivery is `pending` (due at NEXT, or being sent), `delivered` (acknowledged with a
/// 2xx), `parked` (failed until give_up_after; it holds back its item's later changes until
/// `retry` or `skip`) or `skipped`. The table gives WHEN (delivered, or due) and under it the
/// last answer; json/ndjson/csv give every field. `--destinations` shows each destination's place in the
/// feed, its backlog, and whether a 410 Gone disabled it.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Only parked deliveries and pending ones that failed at least once.
    #[arg(long)]
    failed: bool,
    /// Only this destination's (`[[forward]] name`).
    #[arg(long, value_name = "NAME")]
    destination: Option<String>,
    /// Only deliveries in this state (pending, delivered, parked, skipped); repeatable.
    #[arg(long, value_name = "STATE")]
    state: Vec<String>,
    /// Each destination with its backlog instead of deliveries.
    #[arg(long, conflicts_with_all = ["failed", "state"])]
    destinations: bool,
    /// At most this many rows.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Send parked (or pending) deliveries again now, their give-up time counted afresh.
    Retry {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
    /// Never send these parked (or pending) deliveries; their items' later changes go on.
    Skip {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
    /// Send to a destination again after it answered 410 Gone.
    Enable {
        #[arg(value_name = "NAME")]
        destination: String,
    },
    /// Delete a destination removed from the configuration, with its deliveries (its backlog
    /// would otherwise count in /metrics, and hold back pruning, for ever).
    Forget {
        #[arg(value_name = "NAME")]
        destination: String,
    },
    /// Enqueue the destination's changes again from a point in the change feed (a cursor from
    /// `orderwatch changes` or a delivery, or 0 for the whole feed); receivers deduplicate on
    /// webhook-id.
    Replay {
        #[arg(value_name = "NAME")]
        destination: String,
        /// Resume after this cursor (an event id, `TX.ID` on PostgreSQL, or 0).
        #[arg(long, value_name = "CURSOR")]
        from: FeedPosition,
    },
}

const DESTINATION_FIELDS: &[&str] = &[
    "name",
    "feed_cursor",
    "disabled_at",
    "disabled_reason",
    "undelivered",
    "parked",
    "oldest_undelivered_at",
    "oldest_unfed_at",
];

const STATES: [&str; 4] = ["pending", "delivered", "parked", "skipped"];

const FIELDS: &[&str] = &[
    "id",
    "destination",
    "event_id",
    "item",
    "cursor",
    "new_status",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "last_attempt_at",
    "last_status",
    "last_error",
    "delivered_at",
];

pub(super) fn deliveries(config_file: &ConfigFile, args: Args) -> ExitCode {
    if let Some(action) = args.action {
        return act(config_file, action);
    }
    if let Some(state) = args.state.iter().find(|s| !STATES.contains(&s.as_str())) {
        eprintln!(
            "orderwatch: --state {state:?} is not one of {}",
            STATES.join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let (_, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let written = if args.destinations {
        let rows = match database.destinations() {
            Ok(rows) => rows,
            Err(error) => return fail(format!("cannot read the destinations: {error}")),
        };
        if rows.is_empty() && args.format == Format::Table {
            println!(
                "no destination is registered (the daemon registers each [[forward]] of its config at start)"
            );
            return ExitCode::SUCCESS;
        }
        let columns = [
            column("DESTINATION", 16),
            column("CURSOR", 14),
            column("UNDELIVERED", 11),
            column("PARKED", 6),
            column("MISSING SINCE", 16),
            column("DISABLED", 8),
        ];
        write_records(
            &mut out,
            args.format,
            &rows,
            &columns,
            DESTINATION_FIELDS,
            |row| {
                vec![
                    row.name.clone(),
                    row.feed_cursor.clone(),
                    row.undelivered.to_string(),
                    row.parked.to_string(),
                    row.waiting_since().map_or("-".into(), minute),
                    if row.disabled_at.is_some() {
                        "yes"
                    } else {
                        "-"
                    }
                    .into(),
                ]
            },
        )
    } else {
        let filter = DeliveryFilter {
            destination: args.destination,
            failed: args.failed,
            states: args.state,
            limit: args.limit,
        };
        let rows = match database.deliveries(&filter) {
            Ok(rows) => rows,
            Err(error) => return fail(format!("cannot read the deliveries: {error}")),
        };
        if rows.is_empty() && args.format == Format::Table {
            println!("no deliveries match");
            return ExitCode::SUCCESS;
        }
        if args.format == Format::Table {
            // Two lines per delivery when it has a last answer, so both fit 80 columns.
            out.write_all(render(&rows).as_bytes())
        } else {
            write_records(&mut out, args.format, &rows, &[], FIELDS, |_| Vec::new())
        }
    };
    finish(written.and_then(|()| out.flush()))
}

/// The table: a line of facts per delivery (WHEN is when it was delivered, or when it is due),
/// and under it the last answer, if any.
fn render(rows: &[DeliveryRow]) -> String {
    let columns = [
        column("ID", 7),
        column("DESTINATION", 12),
        column("ITEM", 8),
        column("STATUS", 10),
        column("STATE", 9),
        column("TRIES", 5),
        column("WHEN (UTC)", 16),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.id.to_string(),
                row.destination.clone(),
                short_uuid(&row.item),
                row.new_status.clone(),
                row.state.clone(),
                row.attempts.to_string(),
                minute(row.delivered_at.as_deref().unwrap_or(&row.next_attempt_at)),
            ]
        })
        .collect();
    let aligned = table(&columns, &cells);
    let mut lines = aligned.lines();
    let mut text = format!("{}\n", lines.next().unwrap_or_default());
    for (line, row) in lines.zip(rows) {
        text.push_str(line);
        text.push('\n');
        let last = match (row.last_status, &row.last_error) {
            (Some(status), Some(error)) if error.starts_with(&format!("HTTP {status}")) => {
                error.clone()
            }
            (Some(status), Some(error)) => format!("{status}: {error}"),
            (Some(status), None) => format!("HTTP {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => continue,
        };
        text.push_str(&format!("        last answer: {}\n", truncate(&last, 59)));
    }
    text
}

/// Runs `action` through a writer, as the daemon writes; says what it changed.
fn act(config_file: &ConfigFile, action: Action) -> ExitCode {
    let config = match load_database_config(config_file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_command_logging(&config);
    if let Action::Forget { destination } = &action
        && config.forward.iter().any(|f| &f.name == destination)
    {
        eprintln!(
            "orderwatch: {destination} is a [[forward]] destination of {}: remove it there and restart the daemon first",
            config_file.path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let (command, what) = match action {
        Action::Retry { ids } => (ForwardCommand::Retry(ids), "retried"),
        Action::Skip { ids } => (ForwardCommand::Skip(ids), "skipped"),
        Action::Enable { destination } => (ForwardCommand::Enable(destination), "enabled"),
        Action::Forget { destination } => (ForwardCommand::Forget(destination), "forgot"),
        Action::Replay { destination, from } => {
            (ForwardCommand::Replay { destination, from }, "replaying")
        }
    };
    let asked = asked_for(&command);
    let answer = with_writer(&config, async |writer| Ok(writer.forward(command).await?));
    let done = match answer {
        Ok(done) => done,
        Err(error) => {
            eprintln!("orderwatch: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    report(what, &asked, done)
}

/// What the command names: the delivery ids, or the destination (and position).
fn asked_for(command: &ForwardCommand) -> Vec<String> {
    match command {
        ForwardCommand::Retry(ids) | ForwardCommand::Skip(ids) => {
            ids.iter().map(i64::to_string).collect()
        }
        ForwardCommand::Enable(destination) | ForwardCommand::Forget(destination) => {
            vec![destination.clone()]
        }
        ForwardCommand::Replay { destination, from } => {
            vec![format!("{destination} from {from}")]
        }
        _ => Vec::new(),
    }
}

/// Prints a line per thing changed and one on stderr per thing that was not (exit 1 then).
fn report(what: &str, asked: &[String], done: ForwardDone) -> ExitCode {
    match done {
        ForwardDone::Changed(ids) => {
            let mut missed = 0;
            for id in asked {
                if ids.iter().any(|changed| changed.to_string() == *id) {
                    println!("{what} delivery {id}");
                } else {
                    missed += 1;
                    eprintln!(
                        "orderwatch: no parked or waiting delivery {id} (delivered, skipped, being sent, or unknown: see orderwatch deliveries)"
                    );
                }
            }
            if missed > 0 {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        ForwardDone::Done(Ok(true)) => {
            println!("{what} {}", asked.join(" "));
            ExitCode::SUCCESS
        }
        ForwardDone::Done(Ok(false)) => {
            eprintln!(
                "orderwatch: no destination {} is registered (the daemon registers each [[forward]] at start; see orderwatch deliveries --destinations)",
                asked.join(" ")
            );
            ExitCode::from(EXIT_FAILURE)
        }
        ForwardDone::Done(Err(reason)) => {
            eprintln!("orderwatch: {reason}");
            ExitCode::from(EXIT_CONFIG)
        }
        other => fail(format!("unexpected answer: {other:?}")),
    }
}
