//! The ingest benchmark's server side and report: the no-op server (the HTTP ceiling) and the
//! table and chart comparing it with orderwatch and the naive one-commit-per-request variant.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::load::LoadResult;
use crate::svg::{self, Panel, Series};
use crate::util::{BenchResult, fail, loopback_listen, report_with_note, write_file};

#[derive(Debug, clap::Args)]
pub struct NoopArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// Serves until killed: every request's body is read to the end and answered 200 with the same
/// small JSON body orderwatch sends, over the same hyper HTTP/1 settings and the same default
/// multi-threaded tokio runtime (one worker per CPU the process may run on).
pub fn noop(args: NoopArgs) -> BenchResult<ExitCode> {
    let addr = loopback_listen(args.listen)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("no-op server listening on {}", listener.local_addr()?);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .keep_alive(true);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = http.serve_connection(TokioIo::new(stream), service_fn(answer));
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    })
}

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"outcome":"applied"}"#)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("a valid header"),
    );
    Ok(response)
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Folder of `load --json` results (labels noop, orderwatch, naive; others are listed too).
    #[arg(long)]
    dir: PathBuf,
    /// Write the chart here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write the tables (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A line about the machine and the run, put above the tables.
    #[arg(long, default_value = "")]
    note: String,
    /// A `store-alone --json` result: the storage limit (d) is compared with.
    #[arg(long)]
    store_alone: Option<PathBuf>,
}

/// The part of a `store-alone --json` result the report uses.
#[derive(Debug, serde::Deserialize)]
struct StoreAlone {
    batch: usize,
    rows_per_s: f64,
    commit_p99_ms: f64,
    wal_peak_bytes: u64,
}

const VARIANTS: [(&str, &str, &str); 6] = [
    ("noop", "(a) no-op hyper server", "#888888"),
    ("orderwatch", "(b) orderwatch, group commit", "#1f77b4"),
    ("naive", "(c) naive, max_batch = 1", "#d62728"),
    (
        "prefilled",
        "(d) orderwatch on a prefilled database",
        "#2ca02c",
    ),
    ("postgres", "(f) orderwatch on PostgreSQL, empty", "#9467bd"),
    (
        "postgres-prefilled",
        "(g) orderwatch on a prefilled PostgreSQL database",
        "#8c564b",
    ),
];

pub fn report(args: ReportArgs) -> BenchResult<ExitCode> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(&args.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let run: LoadResult =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            runs.push(run);
        }
    }
    if runs.is_empty() {
        return fail(format!("{}: no results", args.dir.display()));
    }
    let closed: BTreeMap<(String, usize), &LoadResult> = runs
        .iter()
        .filter(|r| r.rate.is_none())
        .map(|r| ((r.label.clone(), r.connections), r))
        .collect();
    let mut connections: Vec<usize> = closed.keys().map(|(_, c)| *c).collect();
    connections.sort_unstable();
    connections.dedup();
    let get = |label: &str, c: usize| closed.get(&(label.to_owned(), c)).copied();

    let mut md = report_with_note(&args.note);
    let _ = writeln!(
        md,
        "| conns | (a) no-op req/s | (a) p50 / p99 ms | (b) orderwatch req/s | (b) p50 / p99 ms | (b) avg batch | (b) peak RSS | (c) naive req/s | (c) p50 / p99 ms | b/a | b/c | (d) prefilled req/s | (d) p50 / p99 ms | (d) WAL peak | d/b |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rps = |r: Option<&LoadResult>| r.map_or("–".into(), |r| format!("{:.0}", r.rps));
    let lat = |r: Option<&LoadResult>| {
        r.map_or("–".into(), |r| {
            format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms)
        })
    };
    let ratio = |x: Option<&LoadResult>, y: Option<&LoadResult>| match (x, y) {
        (Some(x), Some(y)) if y.rps > 0.0 => format!("{:.2}", x.rps / y.rps),
        _ => "–".into(),
    };
    for &c in &connections {
        let (a, b, n) = (get("noop", c), get("orderwatch", c), get("naive", c));
        let d = get("prefilled", c);
        let _ = writeln!(
            md,
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rps(a),
            lat(a),
            rps(b),
            lat(b),
            b.and_then(|b| b.avg_batch)
                .map_or("–".into(), |x| format!("{x:.1}")),
            b.and_then(|b| b.server_peak_rss_kib)
                .map_or("–".into(), mib),
            rps(n),
            lat(n),
            ratio(b, a),
            ratio(b, n),
            rps(d),
            lat(d),
            d.and_then(|d| d.wal_peak_bytes)
                .map_or("–".into(), |bytes| mib(bytes / 1024)),
            ratio(d, b),
        );
    }

    if connections.iter().any(|&c| {
        get("postgres", c)
            .or(get("postgres-prefilled", c))
            .is_some()
    }) {
        let _ = writeln!(
            md,
            "\nPostgreSQL (one local server sharing the daemon's core, durable commits):\n"
        );
        let _ = writeln!(
            md,
            "| conns | (f) empty req/s | (f) p50 / p99 ms | (f) avg batch | (g) prefilled req/s | (g) p50 / p99 ms | (g) avg batch | f/b | g/d |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in &connections {
            let (f, g) = (get("postgres", c), get("postgres-prefilled", c));
            let batch = |r: Option<&LoadResult>| {
                r.and_then(|r| r.avg_batch)
                    .map_or("–".into(), |x| format!("{x:.1}"))
            };
            let _ = writeln!(
                md,
                "| {c} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rps(f),
                lat(f),
                batch(f),
                rps(g),
                lat(g),
                batch(g),
                ratio(f, get("orderwatch", c)),
                ratio(g, get("prefilled", c)),
            );
        }
        if let Some(g) = get("postgres-prefilled", 64) {
            let met = |ok: bool| if ok { "met" } else { "MISSED" };
            let _ = writeln!(
                md,
                "\nTarget (issue 15), (g) at 64 connections: ≥ 5,000 req/s: {:.0}, {}; p99 ≤ 30 ms: {:.2} ms, {}.",
                g.rps,
                met(g.rps >= 5_000.0),
                g.p99_ms,
                met(g.p99_ms <= 30.0)
            );
        }
    }

    let _ = writeln!(md, "\nEvery run:\n");
    let _ = writeln!(
        md,
        "| variant | conns | mode | req/s | p50 | p90 | p99 | max ms | 200s | other / errors | ledger | avg batch | server peak RSS | WAL peak |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
    );
    let mut ordered: Vec<&LoadResult> = runs.iter().collect();
    let rank = |label: &str| VARIANTS.iter().position(|v| v.0 == label).unwrap_or(9);
    ordered.sort_by(|x, y| {
        (
            x.rate.is_some(),
            x.connections,
            rank(&x.label),
            x.label.as_str(),
        )
            .cmp(&(
                y.rate.is_some(),
                y.connections,
                rank(&y.label),
                y.label.as_str(),
            ))
    });
    for r in &ordered {
        let others: u64 = r.other_statuses.values().sum();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} / {}{} | {} | {} | {} | {} |",
            r.label,
            r.connections,
            r.rate.map_or("closed loop".into(), |rate| format!(
                "{rate:.0} req/s fixed"
            )),
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.ok,
            others,
            r.errors,
            if r.unsent > 0 {
                format!(" ({} never sent)", r.unsent)
            } else {
                String::new()
            },
            r.ledger,
            r.avg_batch.map_or("–".into(), |x| format!("{x:.1}")),
            r.server_peak_rss_kib.map_or("–".into(), mib),
            r.wal_peak_bytes
                .map_or("–".into(), |bytes| mib(bytes / 1024)),
        );
    }

    if let Some(path) = &args.store_alone {
        let text = std::fs::read_to_string(path)?;
        let alone: StoreAlone =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = writeln!(
            md,
            "\nSQLite alone (the store's batch path called directly, no HTTP, no queue, on the same prefilled database, batches of {}): {:.0} webhooks/s, commit p99 {:.2} ms, WAL peak {}.",
            alone.batch,
            alone.rows_per_s,
            alone.commit_p99_ms,
            mib(alone.wal_peak_bytes / 1024)
        );
        let widest = connections.iter().rev().find_map(|&c| get("prefilled", c));
        if let Some(d) = widest {
            let _ = writeln!(
                md,
                "(d) at {} connections reached {:.0}% of it.",
                d.connections,
                100.0 * d.rps / alone.rows_per_s.max(f64::MIN_POSITIVE)
            );
        }
    }

    let _ = writeln!(md, "\nTargets (issue 6), at 64 connections:\n");
    let void = runs.iter().filter(|r| r.ledger == "VOID").count();
    match (get("noop", 64), get("orderwatch", 64), get("naive", 64)) {
        (Some(a), Some(b), Some(n)) => {
            let met = |ok: bool| if ok { "met" } else { "MISSED" };
            let ba = b.rps / a.rps.max(f64::MIN_POSITIVE);
            let bn = b.rps / n.rps.max(f64::MIN_POSITIVE);
            let peak = runs
                .iter()
                .filter(|r| r.label == "orderwatch")
                .filter_map(|r| r.server_peak_rss_kib)
                .max()
                .unwrap_or(0);
            let _ = writeln!(md, "- b/a = {ba:.2} (target ≥ 0.50): {}", met(ba >= 0.5));
            let _ = writeln!(md, "- b/c = {bn:.1} (target ≥ 10): {}", met(bn >= 10.0));
            let _ = writeln!(
                md,
                "- (b) p99 = {:.2} ms (target < 10 ms): {}",
                b.p99_ms,
                met(b.p99_ms < 10.0)
            );
            let _ = writeln!(
                md,
                "- (b) peak RSS = {} over every orderwatch run (target < 64 MiB): {}",
                mib(peak),
                met(peak > 0 && peak < 64 * 1024)
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "- not measured (no 64-connection runs of all three variants)"
            );
        }
    }
    let _ = writeln!(
        md,
        "- ledger: {}",
        if void == 0 {
            "every acknowledged webhook was found in the database in every run".to_owned()
        } else {
            format!("{void} run(s) VOID: acknowledged webhooks missing from the database")
        }
    );
    print!("{md}");

    if let Some(path) = &args.svg {
        let xs: Vec<f64> = connections.iter().map(|&c| c as f64).collect();
        let panel = |title: &str, y_label: &str, log_y: bool, pick: fn(&LoadResult) -> f64| Panel {
            title: title.into(),
            y_label: y_label.into(),
            log_y,
            series: VARIANTS
                .iter()
                .map(|(label, name, color)| Series {
                    name: (*name).into(),
                    color,
                    values: connections
                        .iter()
                        .map(|&c| get(label, c).map(pick))
                        .collect(),
                })
                .collect(),
        };
        let chart = svg::chart(
            "orderwatch ingest: closed-loop load, server and load generator on one core each",
            "keep-alive connections (log scale)",
            &xs,
            &[
                panel("Throughput", "req/s, 200s (log scale)", true, |r| r.rps),
                panel("p99 latency", "p99 ms (log scale)", true, |r| r.p99_ms),
            ],
        );
        write_file(path, &chart)?;
        println!("\nchart: {}", path.display());
    }
    if let Some(path) = &args.markdown {
        write_file(path, &md)?;
    }
    Ok(if void == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints one field of a result file: a number, a string (`ledger`), or a list of numbers
/// separated by spaces (`cpu_ticks`).
pub fn result_field(json: &Path, field: &str) -> BenchResult<ExitCode> {
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    match value.get(field).and_then(field_text) {
        Some(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        None => fail(format!(
            "{}: no numeric, text or number list field {field:?}",
            json.display()
        )),
    }
}

/// A number, a string, or numbers separated by spaces, as `result-field` prints them.
fn field_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Number(_) => value.as_f64().map(|n| n.to_string()),
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_f64().map(|n| n.to_string()))
            .collect::<Option<Vec<_>>>()
            .map(|numbers| numbers.join(" ")),
        _ => None,
    }
}
