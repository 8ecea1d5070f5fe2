//! `orderwatch items`: one row per order item, filtered.

use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;
use uuid::Uuid;

use super::output::{
    Format, column, fail, finish, human_age, minute, open_database, short_uuid, write_records,
};
use super::{ConfigFile, EXIT_CONFIG};
use crate::observation::{Status, escape_status};
use crate::store::inspect::{ItemFilter, ItemRow};

/// List order items with their current status, longest in that status first.
///
/// Tables show the first 8 characters of each UUID (`show` accepts them) and times in UTC to
/// the minute; AGE is the time in the current status; `PENDING!` is past its confirmation
/// deadline; a status that is not printable ASCII shows escaped (`\u{41e}\u{41a}` for a
/// Cyrillic look-alike of OK). json/ndjson/csv give full, exact values. A --status that is
/// neither documented nor stored is a warning, and an error (exit 2) when no other status is
/// asked for.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Only items in this status (repeat or comma-separate for several; case-insensitive).
    #[arg(long, value_name = "S", value_delimiter = ',')]
    status: Vec<String>,
    /// Only the items of this order.
    #[arg(long, value_name = "UUID", value_parser = Uuid::try_parse)]
    order: Option<Uuid>,
    /// Only items whose status changed within this long, e.g. 30m, 2h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<std::time::Duration>,
    /// Only PENDING items past their confirmation deadline.
    #[arg(long)]
    overdue: bool,
    /// At most this many rows (0 = all).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

const FIELDS: &[&str] = &[
    "item",
    "order",
    "status",
    "version",
    "source",
    "as_of",
    "changed_at",
    "age_seconds",
    "confirm_deadline",
    "overdue",
];

pub(super) fn items(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (_, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let now = Utc::now();
    let filter = ItemFilter {
        statuses: args
            .status
            .iter()
            .map(|s| s.trim().to_uppercase())
            .collect(),
        order: args.order.map(|o| o.to_string()),
        changed_since: args.since.map(|since| {
            chrono::Duration::from_std(since)
                .ok()
                .and_then(|since| now.checked_sub_signed(since))
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
        }),
        overdue: args.overdue,
        // One more than asked, to know whether rows were left out.
        limit: (args.limit > 0).then(|| args.limit.saturating_add(1)),
        arrived_after: None,
    };
    let mut unknown = Vec::new();
    for status in &filter.statuses {
        match database.status_is_stored(status) {
            Ok(false) if Status::parse(status).is_unknown() => unknown.push(unknown_status(status)),
            Ok(_) => {}
            Err(error) => return fail(format!("cannot read items: {error}")),
        }
    }
    if !unknown.is_empty() && unknown.len() == filter.statuses.len() {
        eprintln!("orderwatch: {}", unknown.join("; "));
        return ExitCode::from(EXIT_CONFIG);
    }
    for warning in &unknown {
        eprintln!("orderwatch: warning: {warning}");
    }
    let mut rows = match database.items(&filter, now) {
        Ok(rows) => rows,
        Err(error) => return fail(format!("cannot read items: {error}")),
    };
    let more = args.limit > 0 && rows.len() > args.limit;
    rows.truncate(if args.limit > 0 {
        args.limit
    } else {
        rows.len()
    });
    let columns = [
        column("ITEM", 8),
        column("ORDER", 8),
        column("STATUS", 18),
        column("VER", 6),
        column("SOURCE", 7),
        column("AS OF (UTC)", 16),
        column("AGE", 8),
    ];
    let mut out = std::io::stdout().lock();
    let written = write_records(&mut out, args.format, &rows, &columns, FIELDS, cells)
        .and_then(|()| out.flush());
    if more {
        eprintln!(
            "orderwatch: showing the first {} items; --limit 0 shows all",
            args.limit
        );
    }
    finish(written)
}

fn cells(row: &ItemRow) -> Vec<String> {
    vec![
        short_uuid(&row.item),
        short_uuid(&row.order),
        if row.overdue {
            format!("{}!", escape_status(&row.status))
        } else {
            escape_status(&row.status).into_owned()
        },
        row.version.map_or_else(|| "-".into(), |v| v.to_string()),
        row.source.clone(),
        minute(&row.as_of),
        human_age(row.age_seconds),
    ]
}

/// Why `--status STATUS` cannot match: no item has it and it is not a documented status; with
/// the documented one it is closest to, if one is close.
fn unknown_status(status: &str) -> String {
    let closest = Status::DOCUMENTED
        .iter()
        .map(|known| (strsim::damerau_levenshtein(status, known), known))
        .filter(|(distance, known)| *distance <= 2.max(known.len() / 4))
        .min();
    let hint = closest.map_or_else(String::new, |(_, known)| format!("; did you mean {known}?"));
    format!(
        "--status {}: no item has this status and it is not a documented one ({}){hint}",
        escape_status(status),
        Status::DOCUMENTED.join(", ")
    )
}
