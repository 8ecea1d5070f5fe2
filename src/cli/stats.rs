//! `orderwatch stats`: the numbers an operator looks at first.

use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;

use super::ConfigArg;
use serde::Serialize;

use super::output::{self, Format, column, fail, finish, human_age, open_database, second, table};
use crate::observation::escape_status;
use crate::store::inspect::{self, Stats, seconds_since};

/// Counts by status, pending and overdue items, polling trouble, latest traffic.
///
/// table: one metric per line, times UTC with their age, statuses that are not printable ASCII
/// escaped (`\u{41e}`). json/ndjson: one object (ndjson on one line). csv: `metric,value` rows
/// with dotted names such as `items_by_status.PENDING`, statuses exact.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(super) fn stats(args: Args) -> ExitCode {
    let (_, conn) = match open_database(&args.config.config) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let stats = match inspect::stats(&conn, Utc::now()) {
        Ok(stats) => stats,
        Err(error) => return fail(format!("cannot read the statistics: {error}")),
    };
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &stats)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Ndjson => serde_json::to_writer(&mut out, &stats)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Csv => write_csv(&mut out, &metrics(&stats, false)),
        Format::Table => {
            let rows: Vec<Vec<String>> = metrics(&stats, true)
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
fn metrics(stats: &Stats, human: bool) -> Vec<(String, String)> {
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
        ("orders_polled".into(), stats.orders_polled.to_string()),
        (
            "orders_in_backoff".into(),
            stats.orders_in_backoff.to_string(),
        ),
        (
            "orders_not_found".into(),
            stats.orders_not_found.to_string(),
        ),
        ("orders_expired".into(), stats.orders_expired.to_string()),
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
