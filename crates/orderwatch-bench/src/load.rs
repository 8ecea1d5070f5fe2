//! The webhook load generator.
//!
//! N keep-alive HTTP/1.1 connections (hyper's client over a `TcpStream` each) share one request
//! counter. Request `i` carries a distinct, valid webhook for item `derived_uuid(seed, 0, i)`.
//! Closed loop (default): a connection sends its next request as soon as the previous answer
//! arrived. Open loop (`--rate R`): request `i` is *scheduled* at `start + i / R`; a free
//! connection claims the next index, waits for its slot and sends; latency is measured from the
//! slot, so a generator or server that falls behind shows up as latency instead of hiding it
//! (no coordinated omission). Every answer is recorded; at the end the ledger is checked: every
//! webhook answered 200 must be in `item_events` (item and version), otherwise the run is VOID.
//! With several `--url`s (instances sharing one database), connection `c` goes to URL `c % n`
//! for the whole run, reconnecting there after an error; the run still gives one result.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::util::{
    BenchResult, LoopbackUrl, derived_uuid, fail, musement_time, parse_duration, percentile_ms,
    rss_kib, webhook_body,
};

/// UUID kinds for [`derived_uuid`].
const ITEM: u64 = 0;
const ORDER: u64 = 1;
/// Every webhook of a run has this item version.
const VERSION: u64 = 1;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The webhook URL (a loopback address). Repeat it to spread the connections over several
    /// servers: connection i goes to the i-th URL modulo their number.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/musement")]
    url: Vec<String>,
    /// Keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Run for this long (default 5s when --count is not given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Send this many requests (with --duration, whichever ends first).
    #[arg(long)]
    count: Option<u64>,
    /// Open loop: schedule this many requests per second, latency from the scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    /// The server's SQLite file: check that every acknowledged webhook is stored.
    #[arg(long, conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// The server's PostgreSQL database (a URL): the same check there.
    #[arg(long)]
    database_url: Option<String>,
    /// The server's PID, to report its peak RSS (VmHWM).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A process whose CPU time during the load (its own and its descendants', in clock ticks)
    /// goes into the result's `cpu_ticks`, in the order given; repeatable. Measured from just
    /// before the first send (20 ms) to the last answer, so the ledger check is not in it.
    #[arg(long)]
    cpu_pid: Vec<u32>,
    /// A name for this run in reports (the scripts use noop, orderwatch, naive).
    #[arg(long, default_value = "run")]
    label: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give up on one request after this long (counted as an error).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

/// What one run measured; written with `--json` and read by `ingest-report`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    pub label: String,
    pub connections: usize,
    /// The open-loop rate, if any.
    pub rate: Option<f64>,
    /// From the first scheduled send to the last answer.
    pub elapsed_s: f64,
    /// Answers received (any status).
    pub responses: u64,
    /// Answers with status 200.
    pub ok: u64,
    /// Other statuses and how often.
    pub other_statuses: BTreeMap<u16, u64>,
    /// Outcomes in the 200 bodies (`applied`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Requests without an answer (connection errors, timeouts).
    pub errors: u64,
    /// Open loop only: scheduled before the end but never sent (the run was cut off).
    pub unsent: u64,
    /// 200 answers per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// `ok`, `VOID` or `skipped` (no database given).
    pub ledger: String,
    /// Acknowledged webhooks missing from `item_events`.
    pub missing: u64,
    /// Rows in `order_items` (one per acknowledged request in these runs).
    pub stored_items: Option<u64>,
    /// Distinct commit times (`order_items.first_seen_at`, millisecond resolution): a lower
    /// bound on the commits that stored them.
    pub commit_times: Option<u64>,
    /// `stored_items / commit_times`: the average group-commit batch (an upper bound; exact
    /// while commits are over 1 ms apart).
    pub avg_batch: Option<f64>,
    /// The server's peak RSS (VmHWM) in KiB after the run.
    pub server_peak_rss_kib: Option<u64>,
    /// The largest the database's `-wal` file was during the run, sampled every 50 ms (with
    /// `--db`; absent in results written before it was measured).
    #[serde(default)]
    pub wal_peak_bytes: Option<u64>,
    /// CPU time each `--cpu-pid` process tree used during the load (utime + stime in clock
    /// ticks, `getconf CLK_TCK` a second), in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_ticks: Vec<u64>,
}

/// One answered request.
#[derive(Clone, Copy)]
struct Sample {
    index: u64,
    latency_ns: u64,
    status: u16,
}

#[derive(Default)]
struct ConnectionLog {
    samples: Vec<Sample>,
    outcomes: BTreeMap<String, u64>,
    errors: u64,
    unsent: u64,
    last_done: Option<Instant>,
}

/// Where one connection sends its requests.
struct Target {
    url: LoopbackUrl,
    /// The `Host` header value.
    host: String,
}

impl Target {
    fn new(url: LoopbackUrl) -> Self {
        Self {
            host: url.host(),
            url,
        }
    }
}

struct Plan {
    seed: u64,
    updated: String,
    next: AtomicU64,
    count: Option<u64>,
    rate: Option<f64>,
    start: Instant,
    /// No request is sent (closed loop) or scheduled (open loop) at or after this.
    deadline: Option<Instant>,
    /// Open loop: stop sending late requests after this, even if some are still due.
    hard_stop: Option<Instant>,
    timeout: Duration,
}

pub fn run(args: LoadArgs) -> BenchResult<ExitCode> {
    let urls = parse_urls(&args.url)?;
    if args.connections == 0 {
        return fail("--connections must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return fail("--rate must be a positive number");
    }
    let duration = match (args.duration, args.count) {
        (None, None) => Some(Duration::from_secs(5)),
        (duration, _) => duration,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    // Rows first seen from here on are this run's (a prefilled database holds older ones).
    let started = chrono::Utc::now();
    let wal = args.db.as_deref().map(WalWatch::start);
    let (mut result, acknowledged, seed) = runtime.block_on(generate(&args, urls, duration))?;
    drop(runtime);
    result.wal_peak_bytes = wal.map(WalWatch::stop);

    match (&args.db, &args.database_url) {
        (Some(db), _) => check_ledger(db, &mut result, &acknowledged, seed, started)?,
        (None, Some(url)) => check_pg_ledger(url, &mut result, &acknowledged, seed, started)?,
        (None, None) => result.ledger = "skipped".into(),
    }
    if let Some(pid) = args.server_pid {
        result.server_peak_rss_kib = rss_kib(pid).map(|(peak, _)| peak);
    }
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    if result.ledger == "VOID" {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--url` values, parsed (at least one: clap gives the default when none is given).
fn parse_urls(texts: &[String]) -> BenchResult<Vec<LoopbackUrl>> {
    if texts.is_empty() {
        return fail("--url must be given at least once");
    }
    texts.iter().map(|text| LoopbackUrl::parse(text)).collect()
}

/// The target of every connection: connection `c` goes to URL `c % urls.len()`.
fn assign_targets(urls: Vec<LoopbackUrl>, connections: usize) -> Vec<Arc<Target>> {
    let targets: Vec<Arc<Target>> = urls.into_iter().map(|u| Arc::new(Target::new(u))).collect();
    (0..connections)
        .map(|c| targets[c % targets.len()].clone())
        .collect()
}

/// Runs the load; returns the result, the indexes answered 200, and the run's UUID seed.
async fn generate(
    args: &LoadArgs,
    urls: Vec<LoopbackUrl>,
    duration: Option<Duration>,
) -> BenchResult<(LoadResult, Vec<u64>, u64)> {
    // Connect everything first, so connection set-up is not part of the measurement.
    let targets = assign_targets(urls, args.connections);
    let mut senders = Vec::with_capacity(args.connections);
    for target in &targets {
        senders.push(connect(&target.url).await?);
    }
    // Read before the start is fixed, so reading /proc takes nothing from the first slots.
    let cpu_before = cpu_ticks_of(&args.cpu_pid)?;
    let seed = fastrand::u64(..);
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = duration.map(|d| start + d);
    let plan = Arc::new(Plan {
        seed,
        updated: musement_time(chrono::Utc::now()),
        next: AtomicU64::new(0),
        count: args.count,
        rate: args.rate,
        start,
        deadline,
        hard_stop: match (args.rate, duration) {
            (Some(_), Some(d)) => Some(start + d * 2 + Duration::from_secs(5)),
            _ => None,
        },
        timeout: args.timeout,
    });
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(targets)
        .map(|(sender, target)| tokio::spawn(drive(sender, target, plan.clone())))
        .collect();
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        logs.push(task.await?);
    }
    let cpu_after = cpu_ticks_of(&args.cpu_pid)?;
    let (mut result, acknowledged, seed) = summarize(args, &plan, logs);
    result.cpu_ticks = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();
    Ok((result, acknowledged, seed))
}

/// The CPU time used so far by each process and its descendants, in clock ticks: utime +
/// stime of the process and of every live descendant, plus the cutime + cstime of each (its
/// children already exited and reaped, such as a PostgreSQL server's finished backends).
fn cpu_ticks_of(pids: &[u32]) -> BenchResult<Vec<u64>> {
    if pids.is_empty() {
        return Ok(Vec::new());
    }
    let stats = process_stats()?;
    pids.iter()
        .map(|&pid| match stats.get(&pid) {
            Some(_) => Ok(tree_ticks(&stats, pid)),
            None => fail(format!("--cpu-pid {pid}: no such process")),
        })
        .collect()
}

/// What `/proc/PID/stat` says about one process.
struct ProcessStat {
    parent: u32,
    /// utime + stime + cutime + cstime.
    ticks: u64,
}

/// Every process's parent and CPU ticks, by PID.
fn process_stats() -> BenchResult<BTreeMap<u32, ProcessStat>> {
    let mut stats = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read.
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
        {
            stats.insert(pid, stat);
        }
    }
    Ok(stats)
}

/// Parses `/proc/PID/stat`: the fields after the command name (which may hold spaces and
/// parentheses) are state, ppid, …, utime (14th field), stime, cutime, cstime.
fn parse_stat(text: &str) -> Option<ProcessStat> {
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let ticks = (11..=14).map(number).sum::<Option<i64>>()?;
    Some(ProcessStat {
        parent: u32::try_from(number(1)?).ok()?,
        ticks: u64::try_from(ticks).unwrap_or(0),
    })
}

/// The ticks of `pid` and of all its live descendants.
fn tree_ticks(stats: &BTreeMap<u32, ProcessStat>, pid: u32) -> u64 {
    let mut total = 0;
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        total += stats.get(&pid).map_or(0, |s| s.ticks);
        pending.extend(
            stats
                .iter()
                .filter(|(child, s)| s.parent == pid && **child != pid)
                .map(|(&child, _)| child),
        );
    }
    total
}

async fn connect(url: &LoopbackUrl) -> BenchResult<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(url.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.addr))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One connection's loop: claim an index, wait for its slot (open loop), send to its target,
/// record.
async fn drive(
    mut sender: SendRequest<Full<Bytes>>,
    target: Arc<Target>,
    plan: Arc<Plan>,
) -> ConnectionLog {
    let mut log = ConnectionLog::default();
    loop {
        let index = plan.next.fetch_add(1, Ordering::Relaxed);
        if plan.count.is_some_and(|count| index >= count) {
            break;
        }
        let scheduled = match plan.rate {
            Some(rate) => {
                let slot = plan.start + Duration::from_secs_f64(index as f64 / rate);
                if plan.deadline.is_some_and(|d| slot >= d) {
                    break;
                }
                if plan.hard_stop.is_some_and(|stop| Instant::now() >= stop) {
                    log.unsent += 1;
                    continue;
                }
                tokio::time::sleep_until(slot).await;
                slot
            }
            None => {
                let now = Instant::now();
                if now < plan.start {
                    tokio::time::sleep_until(plan.start).await;
                    plan.start
                } else if plan.deadline.is_some_and(|d| now >= d) {
                    break;
                } else {
                    now
                }
            }
        };
        let request = build_request(&plan, &target, index);
        match tokio::time::timeout(plan.timeout, exchange(&mut sender, request)).await {
            Ok(Ok((status, outcome))) => {
                let done = Instant::now();
                log.samples.push(Sample {
                    index,
                    latency_ns: done.saturating_duration_since(scheduled).as_nanos() as u64,
                    status,
                });
                if let Some(outcome) = outcome {
                    *log.outcomes.entry(outcome).or_default() += 1;
                }
                log.last_done = Some(done);
            }
            _ => {
                log.errors += 1;
                // The connection is in an unknown state: start a new one to the same target
                // (for up to a second).
                let mut attempts = 0;
                loop {
                    match connect(&target.url).await {
                        Ok(fresh) => {
                            sender = fresh;
                            break;
                        }
                        Err(_) if attempts < 100 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => return log,
                    }
                }
            }
        }
    }
    log
}

fn build_request(plan: &Plan, target: &Target, index: u64) -> Request<Full<Bytes>> {
    let item = derived_uuid(plan.seed, ITEM, index);
    let order = derived_uuid(plan.seed, ORDER, index);
    let body = webhook_body(
        &item,
        &order,
        10_000_000 + index,
        VERSION,
        "PENDING",
        &plan.updated,
    );
    Request::builder()
        .method(Method::POST)
        .uri(target.url.path.as_str())
        .header(HOST, target.host.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a request from valid parts")
}

/// Sends one request and reads the whole answer; the status and the body's `outcome`.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> BenchResult<(u16, Option<String>)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let outcome = if status == 200 {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("outcome").and_then(|o| o.as_str()).map(str::to_owned))
    } else {
        None
    };
    Ok((status, outcome))
}

fn summarize(
    args: &LoadArgs,
    plan: &Plan,
    logs: Vec<ConnectionLog>,
) -> (LoadResult, Vec<u64>, u64) {
    let mut result = LoadResult {
        label: args.label.clone(),
        connections: args.connections,
        rate: args.rate,
        ..LoadResult::default()
    };
    let mut latencies = Vec::new();
    let mut acknowledged = Vec::new();
    let mut last_done = plan.start;
    for log in logs {
        result.errors += log.errors;
        result.unsent += log.unsent;
        for (outcome, n) in log.outcomes {
            *result.outcomes.entry(outcome).or_default() += n;
        }
        if let Some(done) = log.last_done {
            last_done = last_done.max(done);
        }
        for sample in log.samples {
            latencies.push(sample.latency_ns);
            if sample.status == 200 {
                acknowledged.push(sample.index);
            } else {
                *result.other_statuses.entry(sample.status).or_default() += 1;
            }
        }
    }
    latencies.sort_unstable();
    result.responses = latencies.len() as u64;
    result.ok = acknowledged.len() as u64;
    result.elapsed_s = last_done
        .saturating_duration_since(plan.start)
        .as_secs_f64();
    result.rps = if result.elapsed_s > 0.0 {
        result.ok as f64 / result.elapsed_s
    } else {
        0.0
    };
    result.p50_ms = percentile_ms(&latencies, 0.50);
    result.p90_ms = percentile_ms(&latencies, 0.90);
    result.p99_ms = percentile_ms(&latencies, 0.99);
    result.max_ms = percentile_ms(&latencies, 1.0);
    result.mean_ms = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&n| n as f64).sum::<f64>() / latencies.len() as f64 / 1e6
    };
    (result, acknowledged, plan.seed)
}

/// Every acknowledged webhook must be in `item_events` with its item and version. Also derives
/// the average group-commit batch from the rows' commit times.
fn check_ledger(
    db: &Path,
    result: &mut LoadResult,
    acknowledged: &[u64],
    seed: u64,
    started: chrono::DateTime<chrono::Utc>,
) -> BenchResult<()> {
    let conn = orderwatch::store::open_read_only(db, Duration::from_secs(10))?;
    let mut statement = conn.prepare(
        "SELECT item_uuid FROM item_events WHERE source = 'webhook' AND item_version = ?1",
    )?;
    let stored: HashSet<String> = statement
        .query_map([VERSION as i64], |row| row.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    let (items, commit_times): (i64, i64) = conn.query_row(
        "SELECT count(*), count(DISTINCT first_seen_at) FROM order_items WHERE first_seen_at >= ?1",
        [orderwatch::clock::to_db_text(started)],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let batches = (items as u64, commit_times as u64);
    record_ledger(result, acknowledged, seed, &stored, batches);
    Ok(())
}

/// [`check_ledger`] on PostgreSQL.
fn check_pg_ledger(
    url: &str,
    result: &mut LoadResult,
    acknowledged: &[u64],
    seed: u64,
    started: chrono::DateTime<chrono::Utc>,
) -> BenchResult<()> {
    let found = crate::postgres::ledger(url, VERSION as i64, started)?;
    let batches = (found.items, found.commit_times);
    record_ledger(result, acknowledged, seed, &found.stored, batches);
    Ok(())
}

/// Sets the ledger verdict from the items found for this run's version, and the average
/// group-commit batch from `(items, commit_times)`: the run's new items and their distinct
/// commit times.
fn record_ledger(
    result: &mut LoadResult,
    acknowledged: &[u64],
    seed: u64,
    stored: &HashSet<String>,
    (items, commit_times): (u64, u64),
) {
    let missing: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|&i| !stored.contains(&derived_uuid(seed, ITEM, i).to_string()))
        .collect();
    result.missing = missing.len() as u64;
    result.ledger = if missing.is_empty() { "ok" } else { "VOID" }.into();
    for index in missing.iter().take(5) {
        eprintln!(
            "MISSING: request {index} (item {}, version {VERSION}) was answered 200 but is not in item_events",
            derived_uuid(seed, ITEM, *index)
        );
    }
    result.stored_items = Some(items);
    result.commit_times = Some(commit_times);
    result.avg_batch = (commit_times > 0).then(|| items as f64 / commit_times as f64);
}

/// Samples the size of a database's `-wal` file on a thread of its own until stopped.
struct WalWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl WalWatch {
    fn start(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::Relaxed) {
                peak = peak.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        Self { stop, thread }
    }

    /// The largest size seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn print_result(r: &LoadResult) {
    let mode = match r.rate {
        Some(rate) => format!("open loop at {rate:.0} req/s"),
        None => "closed loop".into(),
    };
    println!(
        "{}: {} connections, {mode}, {:.2} s",
        r.label, r.connections, r.elapsed_s
    );
    let others: Vec<String> = r
        .other_statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    println!(
        "  responses {} (200: {}{}{}), errors {}{}",
        r.responses,
        r.ok,
        if others.is_empty() { "" } else { ", " },
        others.join(", "),
        r.errors,
        if r.unsent > 0 {
            format!(", never sent (cut off) {}", r.unsent)
        } else {
            String::new()
        }
    );
    println!("  throughput {:.0} req/s (200s)", r.rps);
    println!(
        "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms
    );
    let outcomes: Vec<String> = r.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
    if !outcomes.is_empty() {
        println!("  outcomes: {}", outcomes.join(", "));
    }
    match r.ledger.as_str() {
        "ok" => println!(
            "  ledger: ok, all {} acknowledged webhooks are in item_events",
            r.ok
        ),
        "VOID" => println!(
            "  ledger: VOID: {} acknowledged webhooks are missing from item_events; this run is void",
            r.missing
        ),
        _ => println!("  ledger: skipped (no --db)"),
    }
    if let (Some(items), Some(times), Some(batch)) = (r.stored_items, r.commit_times, r.avg_batch) {
        println!(
            "  group commit: {items} items over {times} distinct commit times: avg batch {batch:.1}"
        );
    }
    if let Some(kib) = r.server_peak_rss_kib {
        println!("  server peak RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    if let Some(bytes) = r.wal_peak_bytes {
        println!("  WAL peak {:.1} MiB", bytes as f64 / 1_048_576.0);
    }
    if !r.cpu_ticks.is_empty() {
        let ticks: Vec<String> = r.cpu_ticks.iter().map(u64::to_string).collect();
        println!("  CPU during the load (clock ticks): {}", ticks.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_over_the_urls() {
        let texts: Vec<String> = (1..=3)
            .map(|port| format!("http://127.0.0.1:{port}/webhooks/musement"))
            .collect();
        let targets = assign_targets(parse_urls(&texts).unwrap(), 7);
        let ports: Vec<u16> = targets.iter().map(|t| t.url.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(targets[4].host, "127.0.0.1:2");
        assert!(parse_urls(&[]).is_err());
        assert!(parse_urls(&["http://10.0.0.1:1/".into()]).is_err());
    }

    #[test]
    fn stat_lines_give_parent_and_ticks() {
        let line = "42 (post gres: a) b) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 5 2 20 0 1 0 9";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.parent, 7);
        assert_eq!(stat.ticks, 250 + 31 + 5 + 2);
        assert!(parse_stat("42 (x) S 7").is_none());
    }

    #[test]
    fn process_trees_add_up_their_descendants() {
        let stat = |parent, ticks| ProcessStat { parent, ticks };
        let stats = BTreeMap::from([
            (1, stat(0, 1000)),
            (10, stat(1, 100)),
            (11, stat(10, 20)),
            (12, stat(10, 3)),
            (20, stat(1, 7)),
        ]);
        assert_eq!(tree_ticks(&stats, 10), 123);
        assert_eq!(tree_ticks(&stats, 20), 7);
        assert_eq!(cpu_ticks_of(&[]).unwrap(), Vec::<u64>::new());
        let own = cpu_ticks_of(&[std::process::id()]).unwrap();
        assert_eq!(own.len(), 1);
    }
}
