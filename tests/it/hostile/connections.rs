//! Thousands of idle connections: capped, evicted at the cap, never at the cost of a request
//! in progress, and a new request is still served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::backend;
use crate::helpers::db::value;
use crate::helpers::wire::{LIMIT, assert_answered, exchange, post};
use crate::helpers::{Daemon, spawn_app_with, uuid, valid_webhook};

struct Flood {
    /// How long the new request took from connect to its answer.
    latency: Duration,
    /// Its status.
    status: u16,
    /// Its outcome (`applied`, …), or empty when it got no answer.
    outcome: String,
    /// Events stored for its item, read from the database once the flood was over.
    stored: i64,
    /// The most connections the daemon held at once (sockets in its descriptor table).
    max_held: usize,
    /// Idle connections the daemon says it closed to make room (its `/metrics`).
    evicted: u64,
    /// Connections open by its own count (`/metrics`), the scrape's included.
    open_gauge: u64,
    /// Peak growth of the daemon's resident memory during the flood.
    rss_growth_kb: i64,
}

/// Sockets the process `pid` holds open: its listener and the connections it accepted (the
/// daemon under test makes no other connections). Counted from its descriptor table, which only
/// the daemon changes, so a sample never mixes two moments the way /proc/net/tcp reads can.
fn sockets_held(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens `idle` connections that never send a byte to the real daemon capped at `cap`
/// connections with `header_timeout`, then times a real webhook on a new connection. With
/// `persistent`, every idle connection the server closes is opened again at once, as an
/// attacker would.
async fn idle_flood(idle: usize, cap: usize, header_timeout: Duration, persistent: bool) -> Flood {
    // This process holds the client ends, up to two per attacker while it reconnects.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= 2 * idle as u64 + 256,
        "RLIMIT_NOFILE is only {limit}"
    );
    // The daemon inherits the raised limit, so the cap, not EMFILE, is what bounds it.
    let daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = {cap}\n\
             header_read_timeout = \"{}ms\"\n",
            header_timeout.as_millis()
        ),
    );
    let (addr, pid) = (daemon.addr, daemon.pid());
    let listener_only = sockets_held(pid);
    let rss_before = rss_kb(pid);
    let opening = Instant::now();
    let idlers: Vec<TcpStream> =
        futures_util::future::join_all((0..idle).map(|_| TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    eprintln!(
        "opened {idle} idle connections in {:?}; the daemon holds {} of them",
        opening.elapsed(),
        sockets_held(pid) - listener_only
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for mut stream in idlers {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            loop {
                // Wait until the server hangs up, then (if persistent) come straight back.
                let _ = stream.read(&mut byte).await;
                if !persistent || stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                match TcpStream::connect(addr).await {
                    Ok(again) => stream = again,
                    Err(_) => return,
                }
            }
        }));
    }
    let sampling = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut max_held, mut max_rss) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                max_held = max_held.max(sockets_held(pid).saturating_sub(listener_only));
                max_rss = max_rss.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            (max_held, max_rss)
        }
    });
    let started = Instant::now();
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        exchange(addr, &post(&valid_webhook(1), "Connection: close\r\n")),
    )
    .await;
    let latency = started.elapsed();
    let (scraped, _) = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let scraped = scraped
        .first()
        .map(|answer| answer.body.clone())
        .unwrap_or_default();
    let sample = |name: &str| -> u64 {
        scraped
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let evicted = sample("orderwatch_connections_closed_at_cap_total{result=\"evicted_idle\"}");
    let open_gauge = sample("orderwatch_connections_open ");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (max_held, max_rss) = sampling.join().unwrap();
    for attacker in attackers {
        attacker.abort();
    }
    let stored = value(
        &daemon.db(),
        "SELECT count(*) FROM item_events WHERE item_uuid = ?1",
        [uuid(1, 1)],
    );
    drop(daemon);
    let answer = answered
        .ok()
        .and_then(|(mut answers, _)| (!answers.is_empty()).then(|| answers.swap_remove(0)));
    Flood {
        latency,
        status: answer.as_ref().map_or(0, |a| a.status),
        outcome: answer.as_ref().map_or(String::new(), |a| {
            a.json()["outcome"].as_str().unwrap_or_default().to_owned()
        }),
        stored,
        max_held,
        evicted,
        open_gauge,
        rss_growth_kb: max_rss - rss_before,
    }
}

/// The cap of 64 in the idle floods, plus the one just accepted while the connection it evicts
/// is being closed.
const HELD_AT_MOST: usize = 64 + 1;

/// The sockets the daemon holds besides HTTP connections, beyond those it held at the start:
/// on PostgreSQL the read pool's connections, opened as reads come (at most `pool_size`, 5).
fn database_sockets() -> usize {
    if backend::postgres() { 5 } else { 0 }
}

#[tokio::test]
async fn a_thousand_idle_connections_are_capped_and_closed_after_header_read_timeout() {
    let timeout = Duration::from_millis(200);
    let flood = idle_flood(1000, 64, timeout, false).await;
    eprintln!(
        "1000 idle connections, max_connections = 64, header_read_timeout = {timeout:?}: the new \
         webhook was answered {} after {:?}; the server held at most {} connections; RSS grew by \
         {} kB",
        flood.status, flood.latency, flood.max_held, flood.rss_growth_kb
    );
    assert_eq!(flood.status, 200, "the webhook was served eventually");
    assert_eq!(flood.outcome, "applied");
    assert_eq!(flood.stored, 1, "the webhook answered 200 is stored once");
    // Memory is bounded by the cap, not by the flood (measured: a few MiB).
    assert!(
        flood.rss_growth_kb < 64 * 1024,
        "the daemon grew by {} kB",
        flood.rss_growth_kb
    );
    assert!(
        flood.max_held <= HELD_AT_MOST + database_sockets(),
        "the connection table caps connections: {}",
        flood.max_held
    );
    // The kernel queues every connection (listen backlog 4096); the server accepts them in
    // order, closing the longest-idle one each time it is at the cap, until it reaches the new
    // webhook's connection.
    assert!(
        flood.latency < LIMIT,
        "waited {:?} behind idle connections that were not coming back",
        flood.latency
    );
}

#[tokio::test]
async fn a_new_request_is_served_despite_a_thousand_idle_connections_reopened() {
    let timeout = Duration::from_millis(200);
    let flood = idle_flood(1000, 64, timeout, true).await;
    eprintln!(
        "1000 idle connections re-opened as soon as closed, max_connections = 64, \
         header_read_timeout = {timeout:?}: the new webhook got {} after {:?} (0 = no answer \
         within 30 s); the server held at most {} connections and evicted {} idle ones",
        flood.status, flood.latency, flood.max_held, flood.evicted
    );
    // Before idle connections were evicted at the cap, this webhook got no answer within 30 s:
    // accept() waited for a free slot and every freed slot went to a returning idler.
    assert_eq!(
        flood.status, 200,
        "a new webhook got no answer within 30 s behind idle connections"
    );
    assert_eq!(flood.outcome, "applied");
    assert_eq!(flood.stored, 1, "the webhook answered 200 is stored once");
    assert!(
        flood.evicted > 0,
        "/metrics counts the idle connections closed at the cap"
    );
    assert!(
        (1..=HELD_AT_MOST as u64).contains(&flood.open_gauge),
        "/metrics counts the open connections: {}",
        flood.open_gauge
    );
    assert!(
        flood.max_held <= HELD_AT_MOST + database_sockets(),
        "connections stay capped while idle ones are evicted: {}",
        flood.max_held
    );
}

#[tokio::test]
async fn a_request_in_progress_is_never_evicted_for_idle_connections() {
    let app =
        spawn_app_with("[server]\nmax_connections = 8\nheader_read_timeout = \"10s\"\n").await;
    // The head asks for `100 Continue`, which the server sends once the handler has started
    // (the request is in progress) and reads the body: the flood waits for that, not for a
    // guessed delay. Then half the body: the request is being handled, waiting for the rest.
    let body = valid_webhook(7);
    let request = post(&body, "Connection: close\r\nExpect: 100-continue\r\n");
    let head = request.len() - body.len();
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(&request[..head]).await.unwrap();
    assert_answered(&mut slow, 100, "the handler did not start").await;
    let split = request.len() - body.len() / 2;
    slow.write_all(&request[head..split]).await.unwrap();
    // Far more idle connections than slots: each newcomer evicts the longest-idle one.
    let mut idlers = Vec::new();
    for _ in 0..64 {
        idlers.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // A fresh webhook still gets through, and so does the slow one once its body completes.
    let (answers, _) = exchange(app.addr, &post(&valid_webhook(8), "Connection: close\r\n")).await;
    assert_eq!(answers.first().map(|a| a.status), Some(200));
    slow.write_all(&request[split..]).await.unwrap();
    assert_answered(&mut slow, 200, "the request in progress was cut off").await;
    assert_eq!(app.count("order_items"), 2);
    drop(idlers);
}
