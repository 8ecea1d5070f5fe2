//! `orderwatch stats`: the numbers an operator looks at first.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use chrono::Utc;

use super::ConfigFile;
use super::output::{self, Format, column, fail, finish, human_age, open_database, second, table};
use crate::observation::escape_status;
use crate::reconciler::{ReconcilerState, StatsShown};
use crate::store::inspect::seconds_since;

/// Counts by status, pending and overdue items, polling and whether the reconciler is on,
/// latest traffic.
///
/// table: one metric per line, times UTC with their age, statuses that are not printable ASCII
/// escaped (`\u{41e}`). json: one object (pretty); ndjson: the same object on one line; csv:
/// `metric,value` rows with dotted names such as `items_by_status.PENDING`, statuses exact.
///
/// `reconciler` says whether the configuration turns polling on (and its schedule) or why not;
/// `last_poll_at` says when an order was last polled. `orders_to_poll` counts the orders the
/// reconciler still has to poll, due now or later; `orders_polled` is the same number under
/// its old name, deprecated and removed in the next release.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Output format: table, json (one object), ndjson (that object on one line) or csv
    /// (`metric,value` rows).
    #[arg(long, value_enum, default_value_t, hide_possible_values = true)]
    format: Format,
}

pub(super) fn stats(config_file: &ConfigFile, args: Args) -> ExitCode {
    let (config, database) = match open_database(config_file) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let stats = match database.stats(Utc::now()) {
        Ok(stats) => stats,
        Err(error) => return fail(format!("cannot read the statistics: {error}")),
    };
    let shown = StatsShown {
        stats: &stats,
        reconciler: ReconcilerState::of(&config),
    };
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &shown)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Ndjson => serde_json::to_writer(&mut out, &shown)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Csv => write_csv(&mut out, &metrics(&shown, false)),
        Format::Table => {
            let rows: Vec<Vec<String>> = metrics(&shown, true)
                .into_iter()
                .map(|(name, value)| vec![name, value])
                .collect();
            out.write_all(table(&[column("METRIC", 40), column("VALUE", 38)], &rows).as_bytes())
        }
    };
    finish(written.and_then(|()| out.flush()))
}

/// A `metric,value` row of the CSV.
#[derive(Serialize)]
struct Metric<'a> {
    metric: &'a str,
    value: &'a str,
}

/// `metric,value` rows through the CSV writer every command shares (a reader that went away
/// stays a broken pipe, a normal end).
fn write_csv(out: &mut impl Write, metrics: &[(String, String)]) -> std::io::Result<()> {
    let rows: Vec<Metric<'_>> = metrics
        .iter()
        .map(|(metric, value)| Metric { metric, value })
        .collect();
    output::write_csv(out, &rows, &["metric", "value"])
}

/// Every number as a `(name, value)` pair; `human` shows times with their age for a table.
fn metrics(shown: &StatsShown<'_>, human: bool) -> Vec<(String, String)> {
    let stats = shown.stats;
    let now = stats.at.parse().unwrap_or_else(|_| Utc::now());
    let time = |t: &Option<String>| match t {
        None if human => "never".to_owned(),
        None => String::new(),
        Some(t) if human => format!("{} ({} ago)", second(t), human_age(seconds_since(t, now))),
        Some(t) => t.clone(),
    };
    let mut pairs: Vec<(String, String)> = vec![
        (
            "at".into(),
            if human {
                second(&stats.at)
            } else {
                stats.at.clone()
            },
        ),
        ("items".into(), stats.items.to_string()),
    ];
    let reconciler = &shown.reconciler;
    if human {
        pairs.push(("reconciler".into(), reconciler.summary()));
    } else {
        pairs.extend([
            ("reconciler.on".into(), reconciler.on.to_string()),
            (
                "reconciler.schedule".into(),
                reconciler.schedule.clone().unwrap_or_default(),
            ),
            (
                "reconciler.off_because".into(),
                reconciler.off_because.clone().unwrap_or_default(),
            ),
        ]);
    }
    for count in &stats.items_by_status {
        let status = if human {
            escape_status(&count.status)
        } else {
            count.status.as_str().into()
        };
        pairs.push((format!("items_by_status.{status}"), count.count.to_string()));
    }
    pairs.extend([
        ("pending".into(), stats.pending.to_string()),
        (
            "oldest_pending_since".into(),
            time(&stats.oldest_pending_since),
        ),
        (
            "oldest_pending_age_seconds".into(),
            stats
                .oldest_pending_age_seconds
                .map_or_else(String::new, |s| s.to_string()),
        ),
        ("overdue".into(), stats.overdue.to_string()),
        ("orders".into(), stats.orders.to_string()),
        ("watched_orders".into(), stats.watched_orders.to_string()),
        ("orders_to_poll".into(), stats.orders_to_poll.to_string()),
        (
            "orders_in_backoff".into(),
            stats.orders_in_backoff.to_string(),
        ),
        (
            "orders_not_found".into(),
            stats.orders_not_found.to_string(),
        ),
        ("orders_expired".into(), stats.orders_expired.to_string()),
        (
            "orders_unwatched".into(),
            stats.orders_unwatched.to_string(),
        ),
        ("last_webhook_at".into(), time(&stats.last_webhook_at)),
        ("last_poll_at".into(), time(&stats.last_poll_at)),
    ]);
    for count in &stats.events_last_hour {
        pairs.push((
            format!("events_last_hour.{}.{}", count.source, count.outcome),
            count.count.to_string(),
        ));
    }
    pairs.extend([
        ("events".into(), stats.events.to_string()),
        (
            "rejected_webhooks".into(),
            stats.rejected_webhooks.to_string(),
        ),
        ("schema_version".into(), stats.schema_version.to_string()),
    ]);
    if human {
        pairs.retain(|(name, _)| name != "oldest_pending_age_seconds");
    } else {
        // Deprecated, for one release: machine formats only, where a script may read it.
        pairs.push(("orders_polled".into(), stats.orders_polled.to_string()));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn csv_keeps_a_broken_pipe_a_broken_pipe() {
        // More than the CSV writer's buffer, so a row's write meets the closed pipe.
        let metrics: Vec<(String, String)> = (0..2000)
            .map(|n| (format!("events_last_hour.webhook.{n}"), n.to_string()))
            .collect();
        let error = write_csv(&mut Closed, &metrics).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
        let mut out = Vec::new();
        write_csv(&mut out, &metrics[..1]).unwrap();
        assert_eq!(out, b"metric,value\nevents_last_hour.webhook.0,0\n");
    }
}
