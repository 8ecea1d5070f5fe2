//! Signed webhooks out (`[[forward]]`, `scripts/bench-forward`): a receiver that stands in for a
//! partner's system, a plain client that posts to it directly (the baseline), an open-loop
//! webhook generator that times each change from the webhook to its delivery, and the report.
//!
//! - `forward receive`: a hyper server on a loopback port answering every POST with 204 (no
//!   signature check) and every other request with 200 (`wait-ready` polls it). It keeps the
//!   first arrival of each delivery by `(data.item, data.new_status)` and exits once all the
//!   expected ones came (the changes of `--db` / `--database-url`, else `--expect` distinct
//!   ones), or VOID (exit 3) when none new came for `--stall`. Deliveries/s are counted over
//!   the receiver's own clock, first arrival to last, for the daemon and the baseline alike.
//! - `forward post`: the baseline, N bodies of the daemon's shape and size (the envelope with a
//!   first-seen `PENDING` change, `webhook-*` headers) over `--concurrency` keep-alive
//!   connections, closed loop, as the daemon's `max_in_flight` attempts are.
//! - `forward lag`: the receiver in this process, then (once the daemon's `/readyz` answers 200)
//!   webhooks for new items at a fixed rate, open loop as `load --rate` does: webhook `i` is
//!   scheduled at `start + i / rate` and its lag is its delivery's arrival minus that time (the
//!   generator sends on time unless every connection is busy: the result says how late the
//!   latest send was). Every webhook answered 200 must be delivered, else VOID (exit 3).
//! - `forward report`: the tables, from a folder of their `--json` results.
//!
//! UUIDs are random v4 ones, never sequential.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use uuid::Uuid;

use crate::util::{
    BenchResult, LoopbackUrl, fail, get_status, loopback_listen, musement_time, parse_duration,
    percentile_ms, report_with_note, webhook_body, write_file,
};

/// Every webhook of the lag run is a new item at this status, so each is one status change.
const STATUS: &str = "PENDING";

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    #[command(subcommand)]
    command: ForwardCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ForwardCommand {
    /// A receiver answering 204 to every POST; exits once every expected delivery came.
    Receive(ReceiveArgs),
    /// The baseline: N delivery-shaped bodies posted straight to a receiver.
    Post(PostArgs),
    /// Webhooks at a fixed rate to a daemon forwarding to this process's receiver: the lag
    /// from each webhook to its delivery.
    Lag(LagArgs),
    /// The tables, from a folder of `receive --json` and `lag --json` results.
    Report(ReportArgs),
}

pub fn run(args: ForwardArgs) -> BenchResult<ExitCode> {
    match args.command {
        ForwardCommand::Receive(args) => receive(args),
        ForwardCommand::Post(args) => post(args),
        ForwardCommand::Lag(args) => lag(args),
        ForwardCommand::Report(args) => report(args),
    }
}

// ---- The receiver ----------------------------------------------------------------------------

/// The part of a delivery's body the receiver reads.
#[derive(Deserialize)]
struct Delivery {
    data: DeliveryData,
}

#[derive(Deserialize)]
struct DeliveryData {
    item: String,
    new_status: String,
}

/// A delivery's key: `(data.item, data.new_status)`.
type Key = (String, String);

/// What the receiver has seen so far.
#[derive(Default)]
struct Seen {
    /// Each delivery's first arrival.
    first: HashMap<Key, Instant>,
    /// POSTs answered.
    requests: u64,
    /// POSTs whose body has no `data.item` and `data.new_status`.
    unreadable: u64,
    /// The first POST's arrival.
    first_arrival: Option<Instant>,
    /// The latest first arrival of a delivery.
    last_new: Option<Instant>,
}

#[derive(Default)]
struct Receiver {
    seen: Mutex<Seen>,
}

impl Receiver {
    fn record(&self, body: &[u8], arrived: Instant) {
        let key = serde_json::from_slice::<Delivery>(body)
            .ok()
            .map(|d| (d.data.item, d.data.new_status));
        let mut seen = self.seen.lock().expect("the receiver's lock");
        seen.requests += 1;
        seen.first_arrival.get_or_insert(arrived);
        match key {
            Some(key) => {
                if let std::collections::hash_map::Entry::Vacant(slot) = seen.first.entry(key) {
                    slot.insert(arrived);
                    seen.last_new = Some(arrived);
                }
            }
            None => seen.unreadable += 1,
        }
    }

    fn distinct(&self) -> usize {
        self.seen.lock().expect("the receiver's lock").first.len()
    }

    /// Whether every key of `expected` has arrived.
    fn has_all(&self, expected: &HashSet<Key>) -> bool {
        let seen = self.seen.lock().expect("the receiver's lock");
        seen.first.len() >= expected.len() && expected.iter().all(|k| seen.first.contains_key(k))
    }

    fn last_new(&self) -> Option<Instant> {
        self.seen.lock().expect("the receiver's lock").last_new
    }
}

/// Binds `addr` (loopback only) and serves the receiver on the current runtime.
async fn start_receiver(addr: SocketAddr, receiver: Arc<Receiver>) -> BenchResult<SocketAddr> {
    let listener = TcpListener::bind(loopback_listen(addr)?).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let mut http = server_http1::Builder::new();
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
            let receiver = receiver.clone();
            let connection = http.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| answer(request, receiver.clone())),
            );
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    Ok(bound)
}

/// 204 to a POST (recorded once its body is read), 200 to anything else (readiness).
async fn answer(
    request: Request<Incoming>,
    receiver: Arc<Receiver>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.method() != Method::POST {
        return Ok(response);
    }
    let body = request.into_body().collect().await;
    let arrived = Instant::now();
    match body {
        Ok(body) => receiver.record(&body.to_bytes(), arrived),
        Err(_) => receiver.record(b"", arrived),
    }
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Waits until `done` says so, or until no new delivery came for `stall` (counted from
/// `since` until the first one); true when done. `on_tick` runs before each look.
async fn wait_for(
    receiver: &Receiver,
    since: Instant,
    stall: Duration,
    done: impl Fn(&Receiver) -> bool,
    mut on_tick: impl FnMut(&Receiver),
) -> bool {
    loop {
        on_tick(receiver);
        if done(receiver) {
            return true;
        }
        let quiet_since = receiver.last_new().unwrap_or(since).max(since);
        if quiet_since.elapsed() >= stall {
            return done(receiver);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, clap::Args)]
pub struct ReceiveArgs {
    /// Where to listen (loopback only), e.g. 127.0.0.1:8082.
    #[arg(long)]
    listen: SocketAddr,
    /// How many distinct deliveries to expect (with --db or --database-url: how many status
    /// changes the database must hold; each of them is then expected by item and status).
    #[arg(long)]
    expect: u64,
    /// The daemon's SQLite file: every status change in it must be delivered.
    #[arg(long, conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// The daemon's PostgreSQL database (a URL): the same.
    #[arg(long)]
    database_url: Option<String>,
    /// Give up (VOID) when no new delivery arrived for this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall: Duration,
    /// Keep answering this long after the last expected delivery, to count late duplicates.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    settle: Duration,
    /// Who posts: `orderwatch` or `baseline` (for the report).
    #[arg(long)]
    sender: String,
    /// The daemon's database engine, `sqlite` or `postgres` (for the report; the baseline
    /// run is labelled with the engine of the daemon run it is compared with).
    #[arg(long)]
    engine: String,
    /// The sender's attempts at once (`max_in_flight`, or `post --concurrency`).
    #[arg(long)]
    concurrency: usize,
    /// A file whose first line is the PID of a process to measure (the daemon's PID file,
    /// PostgreSQL's postmaster.pid): its CPU time and its descendants', from the first
    /// arrival to the last expected one, goes into the result's `cpu`; repeatable.
    #[arg(long)]
    cpu_pid_file: Vec<PathBuf>,
    /// Clock ticks a second (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100.0)]
    clk_tck: f64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// CPU time the `--cpu-pid-file` processes used while the deliveries came.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cpu {
    /// From the first arrival (20 ms at most later) to the last expected delivery.
    pub window_s: f64,
    /// Deliveries that arrived in the window.
    pub deliveries: u64,
    /// CPU seconds (user + system) of each process tree, in the order given.
    pub seconds: Vec<f64>,
}

/// What one throughput run measured at the receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputResult {
    /// Always `throughput`.
    pub kind: String,
    /// `orderwatch` or `baseline`.
    pub sender: String,
    pub engine: String,
    pub concurrency: usize,
    /// Distinct deliveries expected.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// POSTs received (duplicates included).
    pub requests: u64,
    /// POSTs of a delivery already received (at least once: allowed, but counted).
    pub duplicates: u64,
    /// POSTs whose body the receiver could not read.
    pub unreadable: u64,
    /// Expected deliveries that never came.
    pub missing: u64,
    /// Deliveries of changes the database does not hold (0 without a database).
    pub unexpected: u64,
    /// The receiver's first arrival to the last expected delivery's first arrival.
    pub elapsed_s: f64,
    /// Distinct deliveries per second over `elapsed_s` (arrivals after the first over it).
    pub per_s: f64,
    /// `ok`, or `VOID` when one is missing.
    pub ledger: String,
    /// With `--cpu-pid-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
}

fn receive(args: ReceiveArgs) -> BenchResult<ExitCode> {
    // The database's status changes, read before the daemon starts (it is stopped while the
    // receiver comes up): each must be delivered.
    let expected = database_changes(args.db.as_deref(), args.database_url.as_deref())?;
    if let Some(expected) = &expected
        && expected.len() as u64 != args.expect
    {
        return fail(format!(
            "the database holds {} status changes, not the {} expected (--expect)",
            expected.len(),
            args.expect
        ));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let receiver = Arc::new(Receiver::default());
        let bound = start_receiver(args.listen, receiver.clone()).await?;
        eprintln!("receiver listening on {bound}");
        let since = Instant::now();
        // The processes' CPU from the first arrival on (the files may not exist before).
        let mut cpu_from: Option<(Instant, u64, Vec<u64>)> = None;
        let mut sample = |r: &Receiver| {
            if cpu_from.is_none()
                && !args.cpu_pid_file.is_empty()
                && r.last_new().is_some()
                && let Some(ticks) = cpu_ticks(&args.cpu_pid_file)
            {
                cpu_from = Some((Instant::now(), r.distinct() as u64, ticks));
            }
        };
        let complete = match &expected {
            Some(expected) => {
                wait_for(
                    &receiver,
                    since,
                    args.stall,
                    |r| r.has_all(expected),
                    &mut sample,
                )
                .await
            }
            None => {
                let want = args.expect as usize;
                wait_for(
                    &receiver,
                    since,
                    args.stall,
                    |r| r.distinct() >= want,
                    &mut sample,
                )
                .await
            }
        };
        let cpu = cpu_from.and_then(|(from, before, ticks)| {
            let now = cpu_ticks(&args.cpu_pid_file)?;
            let used = now
                .iter()
                .zip(&ticks)
                .map(|(now, then)| now.saturating_sub(*then) as f64 / args.clk_tck)
                .collect();
            Some(Cpu {
                window_s: from.elapsed().as_secs_f64(),
                deliveries: (receiver.distinct() as u64).saturating_sub(before),
                seconds: used,
            })
        });
        if complete {
            tokio::time::sleep(args.settle).await;
        }
        let seen = receiver.seen.lock().expect("the receiver's lock");
        let mut result = throughput_result(&args, &seen, expected.as_ref());
        result.cpu = cpu;
        BenchResult::Ok(result)
    })?;
    drop(runtime);
    print_throughput(&result);
    if let Some(path) = &args.json {
        write_file(path, &serde_json::to_string_pretty(&result)?)?;
    }
    Ok(if result.ledger == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn throughput_result(
    args: &ReceiveArgs,
    seen: &Seen,
    expected: Option<&HashSet<Key>>,
) -> ThroughputResult {
    let (missing, unexpected, last) = match expected {
        Some(expected) => {
            let missing = expected
                .iter()
                .filter(|k| !seen.first.contains_key(*k))
                .count() as u64;
            let unexpected = seen.first.keys().filter(|k| !expected.contains(*k)).count() as u64;
            let last = expected.iter().filter_map(|k| seen.first.get(k)).max();
            (missing, unexpected, last.copied())
        }
        None => (
            args.expect.saturating_sub(seen.first.len() as u64),
            0,
            seen.last_new,
        ),
    };
    for key in expected
        .into_iter()
        .flatten()
        .filter(|k| !seen.first.contains_key(*k))
        .take(5)
    {
        eprintln!(
            "MISSING: the change of item {} to {} is in the database but was never delivered",
            key.0, key.1
        );
    }
    let delivered = seen.first.len() as u64;
    let elapsed_s = match (seen.first_arrival, last) {
        (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let counted = delivered.min(args.expect);
    ThroughputResult {
        kind: "throughput".into(),
        sender: args.sender.clone(),
        engine: args.engine.clone(),
        concurrency: args.concurrency,
        expected: args.expect,
        delivered,
        requests: seen.requests,
        duplicates: seen.requests - seen.unreadable - delivered,
        unreadable: seen.unreadable,
        missing,
        unexpected,
        elapsed_s,
        per_s: if elapsed_s > 0.0 && counted > 1 {
            (counted - 1) as f64 / elapsed_s
        } else {
            0.0
        },
        ledger: if missing == 0 { "ok" } else { "VOID" }.into(),
        cpu: None,
    }
}

fn print_throughput(r: &ThroughputResult) {
    println!(
        "{} ({}, {} at once): {} of {} deliveries in {:.2} s: {:.0}/s",
        r.sender, r.engine, r.concurrency, r.delivered, r.expected, r.elapsed_s, r.per_s
    );
    println!(
        "  requests {}, duplicates {}, unreadable {}, unexpected {}",
        r.requests, r.duplicates, r.unreadable, r.unexpected
    );
    if let Some(cpu) = &r.cpu {
        let seconds: Vec<String> = cpu.seconds.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "  CPU s over {:.2} s and {} deliveries: {}",
            cpu.window_s,
            cpu.deliveries,
            seconds.join(", ")
        );
    }
    match r.ledger.as_str() {
        "ok" => println!("  ledger: ok, every expected delivery arrived"),
        _ => println!(
            "  ledger: VOID: {} expected deliveries never arrived; this run is void",
            r.missing
        ),
    }
}

/// The `(item, status)` of every applied event (every status change: the benchmark's
/// databases hold first-seen items only), or `None` without a database.
fn database_changes(db: Option<&Path>, url: Option<&str>) -> BenchResult<Option<HashSet<Key>>> {
    if let Some(db) = db {
        let conn = orderwatch::store::open_read_only(db, Duration::from_secs(10))?;
        let mut statement =
            conn.prepare("SELECT item_uuid, status FROM item_events WHERE outcome = 'applied'")?;
        let changes = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<HashSet<Key>, _>>()?;
        return Ok(Some(changes));
    }
    let Some(url) = url else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client =
            orderwatch::store::postgres::connect::PgConnect::from_url(url, "orderwatch-bench")?
                .connect()
                .await?;
        let rows = client
            .query(
                "SELECT item_uuid::text, status FROM item_events WHERE outcome = 'applied'",
                &[],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
                .collect(),
        ))
    })
}

/// The CPU ticks so far of each process named by a PID file, with its descendants (live
/// ones, and the exited ones its processes waited for, such as PostgreSQL's finished
/// backends); `None` while a file or process is missing.
fn cpu_ticks(pid_files: &[PathBuf]) -> Option<Vec<u64>> {
    let pids = pid_files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).ok()?;
            text.lines().next()?.trim().parse::<u32>().ok()
        })
        .collect::<Option<Vec<u32>>>()?;
    let mut stats: HashMap<u32, (u32, u64)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
        {
            stats.insert(pid, stat);
        }
    }
    pids.iter()
        .map(|&pid| {
            stats.get(&pid)?;
            let (mut total, mut pending) = (0, vec![pid]);
            while let Some(pid) = pending.pop() {
                total += stats.get(&pid).map_or(0, |s| s.1);
                pending.extend(
                    stats
                        .iter()
                        .filter(|(child, s)| s.0 == pid && **child != pid)
                        .map(|(&child, _)| child),
                );
            }
            Some(total)
        })
        .collect()
}

/// `/proc/PID/stat`'s parent and utime + stime + cutime + cstime (the fields after the
/// command name, which may hold spaces and parentheses).
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
    let ticks = (11..=14).map(number).sum::<Option<i64>>()?;
    Some((
        u32::try_from(number(1)?).ok()?,
        u64::try_from(ticks).unwrap_or(0),
    ))
}

// ---- Clients ---------------------------------------------------------------------------------

type Sender = client_http1::SendRequest<Full<Bytes>>;

async fn connect(url: &LoopbackUrl) -> BenchResult<Sender> {
    let stream = TcpStream::connect(url.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.addr))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = client_http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer; its status.
async fn exchange(sender: &mut Sender, request: Request<Full<Bytes>>) -> BenchResult<u16> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// A random (version 4) UUID.
fn random_uuid() -> Uuid {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Milliseconds, UTC, as the daemon's feed writes its times.
fn feed_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A body of the daemon's shape and size: a first-seen item's change to `PENDING`.
fn delivery_body(id: u64, item: &Uuid, order: &Uuid, at: &str) -> String {
    format!(
        concat!(
            r#"{{"type":"order_item.status_changed","timestamp":"{at}","data":{{"id":{id},"#,
            r#""cursor":"{id}","item":"{item}","order":"{order}","old_status":null,"#,
            r#""new_status":"{status}","version":1,"source":"webhook","as_of":"{at}","#,
            r#""received_at":"{at}","vouchers":[]}}}}"#
        ),
        at = at,
        id = id,
        item = item,
        order = order,
        status = STATUS,
    )
}

#[derive(Debug, clap::Args)]
pub struct PostArgs {
    /// The receiver's URL (a loopback address).
    #[arg(long)]
    url: String,
    /// Bodies to post, each a different item.
    #[arg(long)]
    count: u64,
    /// Keep-alive connections, each posting its next body once the last was answered.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Give up on one request after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

/// The baseline: `count` delivery-shaped bodies with `webhook-*` headers (a signature of the
/// real one's length, not computed) over `concurrency` connections. Any answer but a 2xx, or
/// none, fails the run.
fn post(args: PostArgs) -> BenchResult<ExitCode> {
    let url = LoopbackUrl::parse(&args.url)?;
    if args.concurrency == 0 {
        return fail("--concurrency must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let (failed, elapsed) = runtime.block_on(async {
        let mut senders = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            senders.push(connect(&url).await?);
        }
        let next = Arc::new(AtomicU64::new(0));
        let url = Arc::new(url);
        let started = Instant::now();
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|mut sender| {
                let (next, url) = (next.clone(), url.clone());
                let (count, timeout) = (args.count, args.timeout);
                tokio::spawn(async move {
                    let at = feed_time(chrono::Utc::now());
                    let host = url.host();
                    let mut failed = 0u64;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count {
                            break;
                        }
                        let body = delivery_body(1000 + n, &random_uuid(), &random_uuid(), &at);
                        let request = Request::builder()
                            .method(Method::POST)
                            .uri(url.path.as_str())
                            .header(HOST, host.as_str())
                            .header(CONTENT_TYPE, "application/json")
                            .header(USER_AGENT, "orderwatch/0.0.0")
                            .header("webhook-id", format!("orderwatch-{}", 1000 + n))
                            .header("webhook-timestamp", chrono::Utc::now().timestamp())
                            .header(
                                "webhook-signature",
                                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                            )
                            .body(Full::new(Bytes::from(body)))
                            .expect("a request from valid parts");
                        match tokio::time::timeout(timeout, exchange(&mut sender, request)).await {
                            Ok(Ok(status)) if (200..300).contains(&status) => {}
                            Ok(Ok(_)) => failed += 1,
                            _ => {
                                failed += 1;
                                sender = match connect(&url).await {
                                    Ok(fresh) => fresh,
                                    Err(_) => return failed + count.saturating_sub(n + 1),
                                };
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            failed += task.await?;
        }
        BenchResult::Ok((failed, started.elapsed()))
    })?;
    eprintln!(
        "baseline: {} bodies over {} connections in {:.2} s, {failed} failed",
        args.count,
        args.concurrency,
        elapsed.as_secs_f64()
    );
    if failed > 0 {
        return fail(format!("{failed} baseline requests were not answered 2xx"));
    }
    Ok(ExitCode::SUCCESS)
}

// ---- Lag -------------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct LagArgs {
    /// Where the receiver listens (loopback only): the daemon's `[[forward]] url` points here.
    #[arg(long)]
    listen: SocketAddr,
    /// The daemon's webhook URL (a loopback address).
    #[arg(long)]
    url: String,
    /// The daemon's readiness URL: the webhooks start once it answers 200.
    #[arg(long)]
    ready_url: String,
    /// Wait this long at most for the daemon to be ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// Webhooks per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long to send for.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Keep-alive connections to the daemon.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Give up (VOID) when no new delivery arrived for this long after the last webhook.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall: Duration,
    /// Keep answering this long after the last delivery, to count late duplicates.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    settle: Duration,
    /// The daemon's database engine, `sqlite` or `postgres` (for the report).
    #[arg(long)]
    engine: String,
    /// Give up on one webhook after this long (counted as an error).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one lag run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagResult {
    /// Always `lag`.
    pub kind: String,
    pub engine: String,
    pub rate: f64,
    pub duration_s: f64,
    pub connections: usize,
    /// Webhooks scheduled.
    pub sent: u64,
    /// Of those, answered 200.
    pub acknowledged: u64,
    /// Other answers and how often.
    pub other_statuses: BTreeMap<u16, u64>,
    /// Webhooks without an answer.
    pub errors: u64,
    /// Acknowledged webhooks whose change was delivered.
    pub delivered: u64,
    /// Acknowledged webhooks whose change never was.
    pub missing: u64,
    /// POSTs of a delivery already received.
    pub duplicates: u64,
    /// Deliveries of anything but an acknowledged webhook's change.
    pub unexpected: u64,
    /// Delivery arrival minus the webhook's scheduled send time.
    pub lag_p50_ms: f64,
    pub lag_p90_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// The webhooks' own answer time (from the scheduled send).
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
    /// How late after its slot the latest webhook went out (the generator keeping up).
    pub max_send_late_ms: f64,
    /// The lag's p50 and max over the webhooks sent in each [`WINDOW`] of the run, in order:
    /// whether forwarding keeps up (flat) or falls behind (growing).
    #[serde(default)]
    pub windows: Vec<LagWindow>,
    /// `ok`, or `VOID` when an acknowledged webhook's change was not delivered.
    pub ledger: String,
}

/// The lag of the webhooks sent in one window of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagWindow {
    /// Seconds from the start to the window's start.
    pub from_s: f64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// The width of a [`LagWindow`].
const WINDOW: Duration = Duration::from_secs(5);

/// One webhook's outcome.
struct Sent {
    index: usize,
    /// `None`: no answer.
    status: Option<u16>,
    answer_ns: u64,
    late_ns: u64,
}

fn lag(args: LagArgs) -> BenchResult<ExitCode> {
    let url = LoopbackUrl::parse(&args.url)?;
    let ready = LoopbackUrl::parse(&args.ready_url)?;
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return fail("--rate must be a positive number");
    }
    if args.connections == 0 {
        return fail("--connections must be at least 1");
    }
    let count = (args.rate * args.duration.as_secs_f64()).ceil() as usize;
    let items: Arc<Vec<(Uuid, Uuid)>> =
        Arc::new((0..count).map(|_| (random_uuid(), random_uuid())).collect());
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let receiver = Arc::new(Receiver::default());
        let bound = start_receiver(args.listen, receiver.clone()).await?;
        eprintln!("receiver listening on {bound}; waiting for the daemon");
        let ready_timeout = args.ready_timeout;
        let is_ready = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            while started.elapsed() < ready_timeout {
                if get_status(&ready, Duration::from_secs(2)) == Some(200) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        })
        .await?;
        if !is_ready {
            return fail(format!(
                "{} did not answer 200 within {ready_timeout:?}",
                args.ready_url
            ));
        }
        let mut senders = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            senders.push(connect(&url).await?);
        }
        let url = Arc::new(url);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now() + Duration::from_millis(20);
        let updated = musement_time(chrono::Utc::now());
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|sender| {
                let (url, next, items) = (url.clone(), next.clone(), items.clone());
                let (updated, rate, timeout) = (updated.clone(), args.rate, args.timeout);
                tokio::spawn(async move {
                    generate(sender, &url, &next, &items, &updated, start, rate, timeout).await
                })
            })
            .collect();
        let mut sent = Vec::with_capacity(count);
        for task in tasks {
            sent.extend(task.await?);
        }
        // Every acknowledged webhook's change must arrive; the stall clock starts now.
        let acknowledged: HashSet<Key> = sent
            .iter()
            .filter(|s| s.status == Some(200))
            .map(|s| (items[s.index].0.to_string(), STATUS.to_owned()))
            .collect();
        let complete = wait_for(
            &receiver,
            Instant::now(),
            args.stall,
            |r| r.has_all(&acknowledged),
            |_| {},
        )
        .await;
        if complete {
            tokio::time::sleep(args.settle).await;
        }
        let seen = receiver.seen.lock().expect("the receiver's lock");
        BenchResult::Ok(lag_result(&args, &sent, &items, start, &seen))
    })?;
    drop(runtime);
    print_lag(&result);
    if let Some(path) = &args.json {
        write_file(path, &serde_json::to_string_pretty(&result)?)?;
    }
    Ok(if result.ledger == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// One connection's loop: claim the next webhook, wait for its slot, send, record.
#[allow(clippy::too_many_arguments)]
async fn generate(
    mut sender: Sender,
    url: &LoopbackUrl,
    next: &AtomicU64,
    items: &[(Uuid, Uuid)],
    updated: &str,
    start: Instant,
    rate: f64,
    timeout: Duration,
) -> Vec<Sent> {
    let host = url.host();
    let mut log = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed) as usize;
        let Some((item, order)) = items.get(index) else {
            break;
        };
        let slot = start + Duration::from_secs_f64(index as f64 / rate);
        tokio::time::sleep_until(slot).await;
        let late_ns = Instant::now().saturating_duration_since(slot).as_nanos() as u64;
        let body = webhook_body(item, order, 20_000_000 + index as u64, 1, STATUS, updated);
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.path.as_str())
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a request from valid parts");
        let status = match tokio::time::timeout(timeout, exchange(&mut sender, request)).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        };
        let answer_ns = Instant::now().saturating_duration_since(slot).as_nanos() as u64;
        log.push(Sent {
            index,
            status,
            answer_ns,
            late_ns,
        });
        if status.is_none() {
            // The connection is in an unknown state: a new one (or stop this connection).
            match connect(url).await {
                Ok(fresh) => sender = fresh,
                Err(_) => break,
            }
        }
    }
    log
}

fn lag_result(
    args: &LagArgs,
    sent: &[Sent],
    items: &[(Uuid, Uuid)],
    start: Instant,
    seen: &Seen,
) -> LagResult {
    let mut result = LagResult {
        kind: "lag".into(),
        engine: args.engine.clone(),
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        connections: args.connections,
        sent: items.len() as u64,
        ..LagResult::default()
    };
    let mut lags = Vec::new();
    let mut by_window: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut answers = Vec::new();
    let mut acknowledged = HashSet::new();
    for s in sent {
        answers.push(s.answer_ns);
        result.max_send_late_ms = result.max_send_late_ms.max(s.late_ns as f64 / 1e6);
        match s.status {
            Some(200) => {
                result.acknowledged += 1;
                let key = (items[s.index].0.to_string(), STATUS.to_owned());
                match seen.first.get(&key) {
                    Some(arrived) => {
                        let offset = Duration::from_secs_f64(s.index as f64 / args.rate);
                        let lag =
                            arrived.saturating_duration_since(start + offset).as_nanos() as u64;
                        lags.push(lag);
                        let window = (offset.as_secs_f64() / WINDOW.as_secs_f64()) as u64;
                        by_window.entry(window).or_default().push(lag);
                    }
                    None => {
                        result.missing += 1;
                        if result.missing <= 5 {
                            eprintln!(
                                "MISSING: webhook {} (item {}) was answered 200 but its change was never delivered",
                                s.index, key.0
                            );
                        }
                    }
                }
                acknowledged.insert(key);
            }
            Some(status) => *result.other_statuses.entry(status).or_default() += 1,
            None => result.errors += 1,
        }
    }
    result.delivered = lags.len() as u64;
    result.unexpected = seen
        .first
        .keys()
        .filter(|k| !acknowledged.contains(*k))
        .count() as u64;
    result.duplicates = seen.requests - seen.unreadable - seen.first.len() as u64;
    lags.sort_unstable();
    answers.sort_unstable();
    result.lag_p50_ms = percentile_ms(&lags, 0.50);
    result.lag_p90_ms = percentile_ms(&lags, 0.90);
    result.lag_p99_ms = percentile_ms(&lags, 0.99);
    result.lag_max_ms = percentile_ms(&lags, 1.0);
    result.windows = by_window
        .into_iter()
        .map(|(window, mut lags)| {
            lags.sort_unstable();
            LagWindow {
                from_s: window as f64 * WINDOW.as_secs_f64(),
                delivered: lags.len() as u64,
                p50_ms: percentile_ms(&lags, 0.5),
                max_ms: percentile_ms(&lags, 1.0),
            }
        })
        .collect();
    result.answer_p50_ms = percentile_ms(&answers, 0.50);
    result.answer_p99_ms = percentile_ms(&answers, 0.99);
    result.ledger = if result.missing == 0 && result.acknowledged > 0 {
        "ok"
    } else {
        "VOID"
    }
    .into();
    result
}

fn print_lag(r: &LagResult) {
    println!(
        "lag ({}): {} webhooks at {:.0}/s over {:.1} s, {} connections",
        r.engine, r.sent, r.rate, r.duration_s, r.connections
    );
    let others: Vec<String> = r
        .other_statuses
        .iter()
        .map(|(status, n)| format!(", {status}: {n}"))
        .collect();
    println!(
        "  answered 200: {}{}, errors {}; latest send {:.1} ms after its slot; answer p50 {:.2} ms, p99 {:.2} ms",
        r.acknowledged,
        others.concat(),
        r.errors,
        r.max_send_late_ms,
        r.answer_p50_ms,
        r.answer_p99_ms
    );
    println!(
        "  delivered {}, duplicates {}, unexpected {}; lag ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        r.delivered,
        r.duplicates,
        r.unexpected,
        r.lag_p50_ms,
        r.lag_p90_ms,
        r.lag_p99_ms,
        r.lag_max_ms
    );
    let windows: Vec<String> = r
        .windows
        .iter()
        .map(|w| format!("{:.0} s: {:.1} / {:.1}", w.from_s, w.p50_ms, w.max_ms))
        .collect();
    if !windows.is_empty() {
        println!(
            "  lag p50 / max ms of the webhooks sent from: {}",
            windows.join(", ")
        );
    }
    match r.ledger.as_str() {
        "ok" => println!(
            "  ledger: ok, every webhook answered 200 was delivered ({})",
            r.delivered
        ),
        _ => println!(
            "  ledger: VOID: {} webhooks answered 200 were never delivered; this run is void",
            r.missing
        ),
    }
}

// ---- Report ----------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Folder of `receive --json` and `lag --json` results.
    #[arg(long)]
    dir: PathBuf,
    /// Write the tables (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A paragraph about the machine and the run, put above the tables.
    #[arg(long, default_value = "")]
    note: String,
}

/// What the columns mean, under the tables.
const EXPLAIN: &str = "Throughput: the status changes were in the database before `orderwatch run` \
started with one `[[forward]]` destination at `start = \"beginning\"`; deliveries/s count on the \
receiver's clock, from its first arrival to the last change's first arrival, and every change in \
the database arrived (ledger). Baseline: the same receiver, just before, posted as many bodies \
of the same shape by a plain keep-alive hyper client with max_in_flight connections, from the \
daemon's CPU. Daemon CPU per delivery: the daemon's user + system CPU over that window divided \
by the deliveries in it; server side: the daemon's and (PostgreSQL) the cluster's CPU over the \
window as a share of one core, both pinned to the same one. Lag: a delivery's arrival at the \
receiver minus its webhook's scheduled send time (open loop, new items, a destination at \
`start = \"end\"`); webhook answer: the daemon's answer to the webhook, from the same time.";

fn engine_name(engine: &str) -> &str {
    match engine {
        "sqlite" => "SQLite",
        "postgres" => "PostgreSQL",
        other => other,
    }
}

/// SQLite first, then PostgreSQL, then anything else by name.
fn engine_rank(engine: &str) -> (u8, String) {
    match engine {
        "sqlite" => (0, String::new()),
        "postgres" => (1, String::new()),
        other => (2, other.to_owned()),
    }
}

fn report(args: ReportArgs) -> BenchResult<ExitCode> {
    let mut throughput = Vec::new();
    let mut lags = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args.dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let read = |e: serde_json::Error| format!("{}: {e}", path.display());
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("throughput") => {
                throughput.push(serde_json::from_value::<ThroughputResult>(value).map_err(read)?)
            }
            Some("lag") => lags.push(serde_json::from_value::<LagResult>(value).map_err(read)?),
            _ => {}
        }
    }
    if throughput.is_empty() && lags.is_empty() {
        return fail(format!("{}: no results", args.dir.display()));
    }
    let md = format!(
        "{}{}{}{EXPLAIN}\n",
        report_with_note(&args.note),
        throughput_table(&throughput),
        lag_table(&lags)
    );
    print!("{md}");
    if let Some(path) = &args.markdown {
        write_file(path, &md)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn throughput_table(runs: &[ThroughputResult]) -> String {
    let mut md = String::new();
    if runs.is_empty() {
        return md;
    }
    let mut points: Vec<(String, usize)> = runs
        .iter()
        .filter(|r| r.sender == "orderwatch")
        .map(|r| (r.engine.clone(), r.concurrency))
        .collect();
    points.sort_by_key(|(engine, c)| (engine_rank(engine), *c));
    points.dedup();
    let find = |sender: &str, engine: &str, c: usize| {
        runs.iter()
            .find(|r| r.sender == sender && r.engine == engine && r.concurrency == c)
    };
    let _ = writeln!(
        md,
        "| database | max_in_flight | status changes | orderwatch deliveries/s | baseline requests/s | orderwatch / baseline | daemon CPU per delivery | server side, % of one core | duplicates | ledger |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (engine, c) in &points {
        let Some(daemon) = find("orderwatch", engine, *c) else {
            continue;
        };
        let baseline = find("baseline", engine, *c);
        let (per_delivery, busy) = match &daemon.cpu {
            Some(cpu) if cpu.deliveries > 0 && cpu.window_s > 0.0 => (
                cpu.seconds.first().map_or("–".into(), |s| {
                    format!("{:.0} µs", s * 1e6 / cpu.deliveries as f64)
                }),
                format!(
                    "{:.0}%",
                    100.0 * cpu.seconds.iter().sum::<f64>() / cpu.window_s
                ),
            ),
            _ => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {c} | {} | {:.0} | {} | {} | {per_delivery} | {busy} | {} | {} |",
            engine_name(engine),
            daemon.expected,
            daemon.per_s,
            baseline.map_or("–".into(), |b| format!("{:.0}", b.per_s)),
            match baseline {
                Some(b) if b.per_s > 0.0 => format!("{:.3}", daemon.per_s / b.per_s),
                _ => "–".into(),
            },
            daemon.duplicates,
            if daemon.ledger == "ok" {
                "ok".to_owned()
            } else {
                format!("VOID ({} missing)", daemon.missing)
            },
        );
    }
    md.push('\n');
    md
}

fn lag_table(runs: &[LagResult]) -> String {
    let mut md = String::new();
    if runs.is_empty() {
        return md;
    }
    let mut runs: Vec<&LagResult> = runs.iter().collect();
    runs.sort_by_key(|r| engine_rank(&r.engine));
    let _ = writeln!(
        md,
        "| database | webhooks/s | for s | answered 200 | delivered | duplicates | lag p50 ms | lag p90 ms | lag p99 ms | lag max ms | webhook answer p99 ms | ledger |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
            engine_name(&r.engine),
            r.rate,
            r.duration_s,
            r.acknowledged,
            r.delivered,
            r.duplicates,
            r.lag_p50_ms,
            r.lag_p90_ms,
            r.lag_p99_ms,
            r.lag_max_ms,
            r.answer_p99_ms,
            if r.ledger == "ok" {
                "ok".to_owned()
            } else {
                format!("VOID ({} missing)", r.missing)
            },
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_bodies_read_like_deliveries() {
        let (item, order) = (random_uuid(), random_uuid());
        assert_eq!(item.get_version_num(), 4);
        assert_ne!(item, random_uuid());
        let body = delivery_body(7, &item, &order, &feed_time(chrono::Utc::now()));
        let delivery: Delivery = serde_json::from_str(&body).unwrap();
        assert_eq!(delivery.data.item, item.to_string());
        assert_eq!(delivery.data.new_status, STATUS);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["type"], "order_item.status_changed");
        assert_eq!(value["data"]["cursor"], "7");
    }

    #[test]
    fn the_receiver_keeps_first_arrivals_and_counts_the_rest() {
        let receiver = Receiver::default();
        let (a, b) = (random_uuid(), random_uuid());
        let at = feed_time(chrono::Utc::now());
        let t0 = Instant::now();
        receiver.record(delivery_body(1, &a, &b, &at).as_bytes(), t0);
        receiver.record(
            delivery_body(1, &a, &b, &at).as_bytes(),
            t0 + Duration::from_millis(5),
        );
        receiver.record(b"not json", t0 + Duration::from_millis(6));
        let expected = HashSet::from([(a.to_string(), STATUS.to_owned())]);
        assert!(receiver.has_all(&expected));
        assert_eq!(receiver.distinct(), 1);
        let seen = receiver.seen.lock().unwrap();
        assert_eq!(seen.first[&(a.to_string(), STATUS.to_owned())], t0);
        assert_eq!((seen.requests, seen.unreadable), (3, 1));
        let args = ReceiveArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            expect: 2,
            db: None,
            database_url: None,
            stall: Duration::from_secs(1),
            settle: Duration::ZERO,
            sender: "baseline".into(),
            engine: "sqlite".into(),
            concurrency: 8,
            cpu_pid_file: Vec::new(),
            clk_tck: 100.0,
            json: None,
        };
        let result = throughput_result(&args, &seen, None);
        assert_eq!((result.delivered, result.duplicates), (1, 1));
        assert_eq!((result.missing, result.ledger.as_str()), (1, "VOID"));
    }

    #[test]
    fn stat_lines_give_parent_and_ticks_and_pid_files_name_processes() {
        let line = "42 (post gres: a) b) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 5 2 20 0 1 0 9";
        assert_eq!(parse_stat(line), Some((7, 250 + 31 + 5 + 2)));
        assert_eq!(parse_stat("42 (x) S 7"), None);
        let dir = crate::util::TempDir::new("forward-test").unwrap();
        let file = dir.path().join("pid");
        assert_eq!(cpu_ticks(std::slice::from_ref(&file)), None);
        std::fs::write(&file, format!("{}\n/var/run\n", std::process::id())).unwrap();
        assert_eq!(cpu_ticks(&[file]).map(|t| t.len()), Some(1));
    }

    #[test]
    fn lags_count_from_the_slot_per_window_and_a_missing_delivery_voids_the_run() {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            lag: LagArgs,
        }
        let args = <Wrap as clap::Parser>::parse_from([
            "lag",
            "--listen=127.0.0.1:0",
            "--url=http://127.0.0.1:1/webhooks/musement",
            "--ready-url=http://127.0.0.1:1/readyz",
            "--rate=10",
            "--duration=10s",
            "--engine=sqlite",
        ])
        .lag;
        let items: Vec<(Uuid, Uuid)> = (0..100).map(|_| (random_uuid(), random_uuid())).collect();
        let start = Instant::now();
        let mut seen = Seen::default();
        let sent: Vec<Sent> = (0..100)
            .map(|index| {
                // 10 ms late in the first 5 s, 30 ms in the next; the last one never arrives.
                let late = if index < 50 { 10 } else { 30 };
                let slot = start + Duration::from_millis(index as u64 * 100);
                if index < 99 {
                    let key = (items[index].0.to_string(), STATUS.to_owned());
                    seen.first.insert(key, slot + Duration::from_millis(late));
                    seen.requests += 1;
                }
                Sent {
                    index,
                    status: Some(200),
                    answer_ns: 1_000_000,
                    late_ns: 0,
                }
            })
            .collect();
        let result = lag_result(&args, &sent, &items, start, &seen);
        assert_eq!((result.acknowledged, result.delivered), (100, 99));
        assert_eq!((result.missing, result.ledger.as_str()), (1, "VOID"));
        assert_eq!((result.lag_p50_ms, result.lag_max_ms), (10.0, 30.0));
        let windows: Vec<(f64, u64, f64)> = result
            .windows
            .iter()
            .map(|w| (w.from_s, w.delivered, w.max_ms))
            .collect();
        assert_eq!(windows, [(0.0, 50, 10.0), (5.0, 49, 30.0)]);
    }

    #[test]
    fn the_report_pairs_each_daemon_run_with_its_baseline() {
        let run = |sender: &str, engine: &str, c: usize, per_s: f64| ThroughputResult {
            kind: "throughput".into(),
            sender: sender.into(),
            engine: engine.into(),
            concurrency: c,
            expected: 100,
            delivered: 100,
            requests: 100,
            duplicates: 0,
            unreadable: 0,
            missing: 0,
            unexpected: 0,
            elapsed_s: 1.0,
            per_s,
            ledger: "ok".into(),
            cpu: None,
        };
        let table = throughput_table(&[
            run("orderwatch", "postgres", 8, 100.0),
            run("baseline", "postgres", 8, 1000.0),
            run("orderwatch", "sqlite", 8, 250.0),
            run("baseline", "sqlite", 8, 1000.0),
        ]);
        let rows: Vec<&str> = table.lines().skip(2).filter(|l| !l.is_empty()).collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(
            rows[0].starts_with("| SQLite | 8 | 100 | 250 | 1000 | 0.250 |"),
            "{table}"
        );
        assert!(rows[1].starts_with("| PostgreSQL | 8 |"), "{table}");
    }
}
