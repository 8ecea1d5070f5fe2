//! `orderwatch show`: an item or an order, its current state and every observation with what
//! the ordering rule made of it and why.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;

use super::ConfigFile;
use super::output::{
    fail, finish, human_age, open_database, second, second_or_dash, short_uuid, truncate, wrap,
};
use crate::observation::escape_status;
use crate::reconciler::configured_off;
use crate::store::inspect::{EventRow, ItemRow, OrderRow, Shown};

/// Show an item or an order: current state and full history, each outcome explained.
///
/// Takes an item or order UUID, or a unique prefix of at least 4 characters (as tables print
/// them). Times are UTC; statuses that are not printable ASCII show escaped (`\u{41e}`).
/// `--format json` prints one object: {"order", "items", "events"}, statuses exact.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Item or order UUID (or a unique prefix).
    #[arg(value_name = "ITEM_UUID|ORDER_UUID")]
    uuid: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: ShowFormat,
}

/// `show` prints one document, so no row formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum ShowFormat {
    /// Readable text, up to 80 columns wide.
    #[default]
    Table,
    /// One JSON object.
    Json,
}

pub(super) fn show(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (config, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let shown = match database.show(&args.uuid, Utc::now()) {
        Ok(shown) => shown,
        Err(error) => return fail(error),
    };
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        ShowFormat::Json => serde_json::to_writer_pretty(&mut out, &shown)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        ShowFormat::Table => {
            let polling_off = configured_off(&config).map(|off| off.brief());
            out.write_all(render(&shown, polling_off).as_bytes())
        }
    };
    finish(written.and_then(|()| out.flush()))
}

/// The text `show` prints; `polling_off` says why the configuration leaves the reconciler off.
fn render(shown: &Shown, polling_off: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(order) = &shown.order {
        render_order(&mut text, order, polling_off);
    }
    for item in &shown.items {
        render_item(&mut text, item);
    }
    let several = shown.items.len() > 1;
    let _ = writeln!(
        text,
        "\nhistory, oldest first ({} events; times UTC):",
        shown.events.len()
    );
    // The highest webhook version each item had before an event, to say what a stale or
    // duplicate webhook was measured against.
    let mut highest: HashMap<&str, i64> = HashMap::new();
    // Wide enough for the longest status shown (CANCELLATION_ERROR is 18), so the outcomes
    // stay in one column.
    let status_width = shown
        .events
        .iter()
        .map(|e| escape_status(&e.status).chars().count())
        .max()
        .unwrap_or(0);
    for event in &shown.events {
        let before = highest.get(event.item.as_str()).copied();
        render_event(&mut text, event, several, before, status_width);
        if let Some(version) = event.version {
            let seen = highest.entry(event.item.as_str()).or_insert(version);
            *seen = (*seen).max(version);
        }
    }
    text
}

fn render_order(text: &mut String, order: &OrderRow, polling_off: Option<&str>) {
    let _ = writeln!(text, "order {}", order.order);
    let polling = if let Some(off) = polling_off {
        // No poll is coming, whatever the order's bookkeeping says.
        format!("none: the reconciler is off ({off})")
    } else if let Some(at) = &order.not_found_at {
        format!("stopped, Musement said 404 at {}", second(at))
    } else if let Some(at) = &order.expired_at {
        format!("stopped, past max_age at {}", second(at))
    } else if let Some(at) = &order.unwatched_at {
        format!("stopped, unwatched at {}", second(at))
    } else if order.needs_poll {
        format!("next at {}", second_or_dash(order.next_poll_at.as_deref()))
    } else {
        "not needed (settled)".into()
    };
    let mut lines = vec![
        (
            "identifier",
            format!(
                "{} (order status {})",
                order.identifier.as_deref().unwrap_or("-"),
                order
                    .order_status
                    .as_deref()
                    .map_or("-".into(), escape_status)
            ),
        ),
        ("first seen", second(&order.first_seen_at)),
        ("polling", polling),
        (
            "last poll",
            format!(
                "{}{}",
                second_or_dash(order.last_polled_at.as_deref()),
                if order.watched { " (watched)" } else { "" }
            ),
        ),
    ];
    if order.poll_failures > 0 {
        lines.push((
            "backing off",
            format!(
                "{} failed poll(s): {}",
                order.poll_failures,
                order.last_error.as_deref().unwrap_or("-")
            ),
        ));
    }
    if let Some(at) = &order.repoll_at {
        lines.push(("re-poll at", second(at)));
    }
    key_values(text, &lines);
}

fn render_item(text: &mut String, item: &ItemRow) {
    let _ = writeln!(text, "\nitem {}", item.item);
    let mut lines = vec![
        (
            "status",
            format!(
                "{}{}",
                escape_status(&item.status),
                if item.overdue { " (OVERDUE)" } else { "" }
            ),
        ),
        (
            "set by",
            match item.version {
                Some(v) => format!("{}; highest webhook version seen {v}", item.source),
                None => item.source.clone(),
            },
        ),
        ("as of", format!("{} (Musement time)", second(&item.as_of))),
        (
            "since",
            format!(
                "{} ({} in this status)",
                second(&item.changed_at),
                human_age(item.age_seconds)
            ),
        ),
    ];
    if let Some(deadline) = &item.confirm_deadline {
        lines.push(("confirm by", second(deadline)));
    }
    if let Some(since) = &item.missing_since {
        lines.push((
            "missing",
            format!("not in Musement's order since {}", second(since)),
        ));
    }
    key_values(text, &lines);
}

/// Indented `key  value` lines, values aligned and cut to fit 80 columns.
fn key_values(text: &mut String, lines: &[(&str, String)]) {
    for (key, value) in lines {
        let _ = writeln!(text, "  {key:<12}{}", truncate(value, 80 - 14));
    }
}

fn render_event(
    text: &mut String,
    event: &EventRow,
    several: bool,
    highest_before: Option<i64>,
    status_width: usize,
) {
    let version = event
        .version
        .map_or_else(|| "-".into(), |v| format!("v{v}"));
    let item = if several {
        format!("{}  ", short_uuid(&event.item))
    } else {
        String::new()
    };
    let _ = writeln!(
        text,
        "#{:<5} {}  {item}{:<7} {:>4}  {:<status_width$} {}",
        event.id,
        second(&event.received_at),
        event.source,
        version,
        escape_status(&event.status),
        event.outcome.to_uppercase()
    );
    let measured = match (event.outcome.as_str(), highest_before) {
        ("stale" | "duplicate" | "conflict", Some(seen)) if event.source == "webhook" => {
            format!(" (v{seen} seen before)")
        }
        _ => String::new(),
    };
    let _ = write!(
        text,
        "{}",
        wrap(
            &format!("as of {}: {}{measured}", second(&event.as_of), event.why),
            7,
            80
        )
    );
}
