//! Hostile HTTP input (issue 5, item 3): whatever arrives on the socket, the answer is one precise
//! status, nothing half-read is stored, and the server neither reads forever nor hangs. Wire-level
//! cases use a raw `TcpStream`; every read is bounded by a timeout so a hang fails the test.
//!
//! Already covered in `receiver.rs` (not repeated here): the bad-body fixtures (malformed JSON, not
//! an object, invalid UTF-8 inside a JSON string, missing/null fields, non-numeric, fractional,
//! negative (`-3`) and too large string versions, non-digit `order_id`, unparseable timestamps,
//! non-UUIDs, empty status and `order_version`), missing auth, `Basic` alone, bad base64, no
//! colon, one byte off in user or password, `Bearer`, 413 for a declared and a small chunked body,
//! 408 for a body that stops, headers that never finish, 415, 404 and 405.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Daemon, TestApp, spawn_app_with, uuid, webhook};

/// Every wait in this module is bounded by this, so a hang fails instead of blocking CI.
const LIMIT: Duration = Duration::from_secs(10);

const AUTH: &str = "[server.auth]\nusername = \"JohnSmith\"\npassword = \"Swordfish\"\n";
/// `JohnSmith:Swordfish`.
const GOOD_BASIC: &str = "Basic Sm9oblNtaXRoOlN3b3JkZmlzaA==";

/// One parsed HTTP/1 response.
#[derive(Debug)]
struct Answer {
    version: String,
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The complete responses at the start of `bytes`, in order (an incomplete tail is ignored).
fn parse_answers(bytes: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or("").splitn(3, ' ');
        let version = status_line.next().unwrap_or("").to_owned();
        let status = status_line.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = end + 4;
        if rest.len() < body_start + length {
            break;
        }
        let body = String::from_utf8_lossy(&rest[body_start..body_start + length]).into_owned();
        answers.push(Answer {
            version,
            status,
            headers,
            body,
        });
        rest = &rest[body_start + length..];
    }
    answers
}

/// How a read loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the connection (FIN).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Enough answers arrived; the connection may still be open.
    Answered,
    /// Neither within the time limit.
    TimedOut,
}

/// Reads until the server closes the connection, `want` answers are complete, or `limit`
/// passes. Returns what was read and why the loop ended.
async fn read_answers<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    want: usize,
    limit: Duration,
) -> (Vec<u8>, End) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if parse_answers(&bytes).len() >= want {
            return (bytes, End::Answered);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (bytes, End::TimedOut),
            Ok(Ok(0)) => return (bytes, End::Closed),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (bytes, End::Reset),
        }
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it (bounded).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (Vec<Answer>, End) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (bytes, end) = read_answers(&mut stream, usize::MAX, LIMIT).await;
    (parse_answers(&bytes), end)
}

/// A request head for the webhook path with `extra` header lines (each ending in CRLF).
fn post_head(version: &str, extra: &str) -> String {
    format!(
        "POST /webhooks/musement {version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

/// A complete HTTP/1.1 webhook request with `body` and `extra` header lines.
fn post(body: &str, extra: &str) -> Vec<u8> {
    let mut request = post_head(
        "HTTP/1.1",
        &format!("Content-Length: {}\r\n{extra}", body.len()),
    );
    request.push_str(body);
    request.into_bytes()
}

fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.count("order_items"), 0, "no item row");
    assert_eq!(app.count("item_events"), 0, "no event");
    assert_eq!(app.count("orders"), 0, "no order row");
}

/// A valid webhook for a fresh item `n`.
fn good(n: u64) -> String {
    webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING")
}

/// A valid webhook body with `field` replaced by `value` (raw JSON text).
fn with_field(field: &str, value: &str) -> String {
    let mut body: Value = serde_json::from_str(&good(1)).unwrap();
    body[field] = Value::String("@@".into());
    body.to_string().replace("\"@@\"", value)
}

// ---------------------------------------------------------------------------------------------
// Size limits: 10 MB bodies and an endless stream.

/// Writes `head` then up to `total` body bytes produced by `chunk` (or forever when `None`)
/// on a write half, while the read half waits for the answer. Returns the answers, how the read
/// ended, how many body bytes were written and whether writing failed (the server hung up).
async fn flood(
    addr: SocketAddr,
    head: String,
    chunk: Vec<u8>,
    total: Option<usize>,
) -> (Vec<Answer>, End, usize, bool) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        let mut written = 0usize;
        // A gigabyte is "forever" here: the server must hang up long before.
        let cap = total.unwrap_or(1 << 30);
        while written < cap {
            if write.write_all(&chunk).await.is_err() {
                return (written, true);
            }
            written += chunk.len();
        }
        (written, false)
    });
    let (bytes, end) = read_answers(&mut read, 1, LIMIT).await;
    // After the answer the server closes: the next read sees EOF or a reset, never more data.
    let (_, after) = read_answers(&mut read, usize::MAX, Duration::from_secs(5)).await;
    let end = if end == End::Answered { after } else { end };
    let (written, failed) = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("the writer stopped: the server hung up or took everything")
        .unwrap();
    (parse_answers(&bytes), end, written, failed)
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[tokio::test]
async fn ten_megabytes_with_a_declared_length_get_413_unread_and_the_connection_closed() {
    let app = spawn_app_with("").await;
    let started = Instant::now();
    let (answers, end, written, _) = flood(
        app.addr,
        post_head("HTTP/1.1", &format!("Content-Length: {TEN_MB}\r\n")),
        vec![b' '; 64 * 1024],
        Some(TEN_MB),
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(started.elapsed() < LIMIT);
    eprintln!(
        "declared 10 MB: 413 after {:?}; the client managed to write {written} bytes",
        started.elapsed()
    );
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 0);
}

#[tokio::test]
async fn ten_megabytes_chunked_are_cut_at_the_limit_with_413() {
    let app = spawn_app_with("").await;
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend_from_slice(&[b' '; 64 * 1024]);
    chunk.extend_from_slice(b"\r\n");
    let (answers, end, written, _) = flood(
        app.addr,
        post_head("HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
        chunk,
        Some(TEN_MB),
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    eprintln!("chunked 10 MB: 413; the client managed to write {written} bytes");
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 0);
}

#[tokio::test]
async fn an_endless_chunked_stream_gets_413_and_is_not_read_forever() {
    let app = spawn_app_with("").await;
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend_from_slice(&[b'['; 64 * 1024]);
    chunk.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let (answers, end, written, failed) = flood(
        app.addr,
        post_head("HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
        chunk,
        None,
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        failed,
        "the server hung up, so writing failed (wrote {written})"
    );
    // What was written beyond the 64 KiB limit sits in socket buffers, never in the server.
    assert!(
        written < 64 * 1024 * 1024,
        "the server kept reading: {written} bytes"
    );
    eprintln!(
        "endless chunked stream: 413 and hang-up after {:?}, {written} bytes written in all",
        started.elapsed()
    );
    assert_nothing_stored(&app);
}

// ---------------------------------------------------------------------------------------------
// Slow clients.

#[tokio::test]
async fn headers_trickled_byte_by_byte_are_cut_off_at_header_read_timeout() {
    let app = spawn_app_with("[server]\nheader_read_timeout = \"400ms\"\n").await;
    // Each byte arrives well within any per-byte idle timeout; the whole head would take ~6 s.
    let head = post(&good(1), &format!("X-Pad: {}\r\n", "a".repeat(200)));
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    let end = loop {
        if started.elapsed() > LIMIT {
            break End::TimedOut;
        }
        if sent < head.len() && stream.write_all(&head[sent..=sent]).await.is_err() {
            break End::Reset;
        }
        sent += 1;
        match tokio::time::timeout(Duration::from_millis(25), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    let elapsed = started.elapsed();
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        sent < head.len(),
        "cut off before the head was complete ({sent}/{})",
        head.len()
    );
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, expected about 400ms"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    eprintln!("slow-loris head: closed after {elapsed:?} having sent {sent} bytes");
    assert_nothing_stored(&app);
}

#[tokio::test]
async fn a_body_trickled_slower_than_request_timeout_gets_408_and_is_closed() {
    let app = spawn_app_with("[server]\nrequest_timeout = \"500ms\"\n").await;
    let body = good(1);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(post_head("HTTP/1.1", &format!("Content-Length: {}\r\n", body.len())).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let body_bytes = body.into_bytes();
    // One byte every 20 ms: data keeps coming, the whole body would take ~10 s.
    let trickle = tokio::spawn(async move {
        for byte in body_bytes {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (bytes, end) = read_answers(&mut read, usize::MAX, LIMIT).await;
    let elapsed = started.elapsed();
    trickle.abort();
    let answers = parse_answers(&bytes);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 408);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "408 after {elapsed:?}, expected about 500ms"
    );
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 0);
}

// ---------------------------------------------------------------------------------------------
// Thousands of idle connections.

struct Flood {
    /// How long the new request took from connect to its answer.
    latency: Duration,
    /// Its status.
    status: u16,
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
        exchange(addr, &post(&good(1), "Connection: close\r\n")),
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
    drop(daemon);
    Flood {
        latency,
        status: answered.map_or(0, |(answers, _)| answers.first().map_or(0, |a| a.status)),
        max_held,
        evicted,
        open_gauge,
        rss_growth_kb: max_rss - rss_before,
    }
}

/// The cap of 64 in the idle floods, plus the one just accepted while the connection it evicts
/// is being closed.
const HELD_AT_MOST: usize = 64 + 1;

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
    // Memory is bounded by the cap, not by the flood (measured: a few MiB).
    assert!(
        flood.rss_growth_kb < 64 * 1024,
        "the daemon grew by {} kB",
        flood.rss_growth_kb
    );
    assert!(
        flood.max_held <= HELD_AT_MOST,
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
        flood.max_held <= HELD_AT_MOST,
        "connections stay capped while idle ones are evicted: {}",
        flood.max_held
    );
}

#[tokio::test]
async fn a_request_in_progress_is_never_evicted_for_idle_connections() {
    let app =
        spawn_app_with("[server]\nmax_connections = 8\nheader_read_timeout = \"10s\"\n").await;
    // Headers and half the body: the request is being handled, waiting for the rest.
    let body = good(7);
    let request = post(&body, "Connection: close\r\n");
    let split = request.len() - body.len() / 2;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(&request[..split]).await.unwrap();
    // Let the server start handling it before the flood.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Far more idle connections than slots: each newcomer evicts the longest-idle one.
    let mut idlers = Vec::new();
    for _ in 0..64 {
        idlers.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // A fresh webhook still gets through, and so does the slow one once its body completes.
    let (answers, _) = exchange(app.addr, &post(&good(8), "Connection: close\r\n")).await;
    assert_eq!(answers.first().map(|a| a.status), Some(200));
    slow.write_all(&request[split..]).await.unwrap();
    let (bytes, _) = read_answers(&mut slow, 1, LIMIT).await;
    let answers = parse_answers(&bytes);
    assert_eq!(
        answers.first().map(|a| a.status),
        Some(200),
        "the request in progress was cut off: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(app.count("order_items"), 2);
    drop(idlers);
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8 and control bytes in headers.

#[tokio::test]
async fn invalid_utf8_and_control_bytes_in_headers() {
    // Auth, an allowlist and a trusted proxy, so every header the receiver reads is in play.
    let app = spawn_app_with(&format!(
        "[server]\nallow_ips = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n{AUTH}"
    ))
    .await;
    let body = good(1);
    let head = |lines: &[u8]| {
        let mut request = format!(
            "POST /webhooks/musement HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(lines);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body.as_bytes());
        request
    };
    let proxy = b"X-Forwarded-For: 203.0.113.5\r\n".as_slice();
    let auth = format!("Authorization: {GOOD_BASIC}\r\n").into_bytes();
    let join = |parts: &[&[u8]]| parts.concat();
    let password_with_ff = {
        let mut raw = b"JohnSmith:Swordfish".to_vec();
        raw.push(0xff);
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "Authorization value with raw 0xFF bytes",
            join(&[proxy, b"Authorization: Basic \xff\xfe\r\n"]),
            401,
        ),
        (
            "Basic credentials whose decoded password has a 0xFF byte",
            join(&[proxy, &password_with_ff]),
            401,
        ),
        (
            "Content-Type with a raw 0xFF byte",
            join(&[proxy, &auth, b"Content-Type: application/json\xff\r\n"]),
            415,
        ),
        (
            "X-Forwarded-For with raw 0xFF bytes from a trusted proxy",
            join(&[&auth, b"X-Forwarded-For: 203.0.113.5\xff\r\n"]),
            403,
        ),
        (
            "a header name with a 0xFF byte",
            join(&[proxy, &auth, b"X-Bad\xff: 1\r\n"]),
            400,
        ),
        (
            "a NUL byte in a header value",
            join(&[proxy, &auth, b"X-Note: a\x00b\r\n"]),
            400,
        ),
        (
            "a bare CR inside a header value",
            join(&[proxy, &auth, b"X-Note: a\rb\r\n"]),
            400,
        ),
    ];
    for (case, lines, expected) in &cases {
        let (answers, end) = exchange(app.addr, &head(lines)).await;
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(*expected),
            "{case}: {answers:?} {end:?}"
        );
        if *expected == 400 {
            assert!(matches!(end, End::Closed | End::Reset), "{case}: {end:?}");
        }
    }
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 0);

    // Raw non-UTF-8 bytes in a header the receiver does not read are harmless: stored.
    let (answers, _) = exchange(
        app.addr,
        &head(&join(&[proxy, &auth, b"X-Note: caf\xe9 \xff\r\n"])),
    )
    .await;
    assert_eq!(answers.first().map(|a| a.status), Some(200), "{answers:?}");
    assert_eq!(app.count("order_items"), 1);
}

#[tokio::test]
async fn invalid_unicode_escapes_inside_json_strings_get_400() {
    // Raw invalid UTF-8 inside a string is the `invalid-utf8.json` fixture (receiver.rs); here
    // the same through escapes that name no character.
    let app = spawn_app_with("").await;
    for (case, status) in [
        ("lone high surrogate", r#""\ud800""#),
        ("lone low surrogate", r#""\udc00OK""#),
        ("truncated escape", r#""\u00""#),
    ] {
        let body = with_field("order_item_status", status);
        let (answers, _) = exchange(app.addr, &post(&body, "Connection: close\r\n")).await;
        assert_eq!(answers.first().map(|a| a.status), Some(400), "{case}");
        assert_eq!(
            answers[0].json()["field"],
            "body",
            "{case}: {}",
            answers[0].body
        );
    }
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 3);
}

// ---------------------------------------------------------------------------------------------
// JSON shapes: nesting, duplicate keys, numbers, empty strings.

#[tokio::test]
async fn deeply_nested_json_gets_400_and_the_server_stays_up() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1048576\n").await;
    let deep = 100_000;
    let cases = [
        ("100k unclosed [", "[".repeat(deep)),
        (
            "100k balanced []",
            format!("{}{}", "[".repeat(deep), "]".repeat(deep)),
        ),
        (
            "100k nested objects",
            format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep)),
        ),
        (
            "a valid webhook with a 100k-deep extra field",
            good(1).replacen(
                '{',
                &format!("{{\"extra\":{}{},", "[".repeat(deep), "]".repeat(deep)),
                1,
            ),
        ),
    ];
    for (case, body) in &cases {
        let response = app.post_webhook(body.clone()).await;
        assert_eq!(response.status(), 400, "{case}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], "body", "{case}: {answer}");
        assert!(
            answer["reason"]
                .as_str()
                .unwrap_or("")
                .contains("recursion"),
            "{case}: {answer}"
        );
    }
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), cases.len() as i64);
    // No stack overflow took anything down: the next webhook is stored.
    assert_eq!(app.post_webhook(good(2)).await.status(), 200);
}

#[tokio::test]
async fn duplicate_json_keys_keep_the_last_value_and_the_raw_body() {
    // serde_json keeps the last of duplicate keys. Accepted: only an authenticated sender can
    // post, Musement never repeats a key, and item_events keeps the body exactly as received.
    let app = spawn_app_with("").await;
    let (first, second) = (uuid(1, 10), uuid(1, 11));
    let body = good(1)
        .replacen(
            "\"order_item_status\":\"PENDING\"",
            "\"order_item_status\":\"PENDING\",\"order_item_status\":\"OK\"",
            1,
        )
        .replacen(
            &format!("\"order_item_uuid\":\"{}\"", uuid(1, 1)),
            &format!("\"order_item_uuid\":\"{first}\",\"order_item_uuid\":\"{second}\""),
            1,
        );
    assert!(body.matches("order_item_status").count() == 2, "{body}");
    assert!(body.matches("order_item_uuid").count() == 2, "{body}");
    let response = app.post_webhook(body.clone()).await;
    assert_eq!(response.status(), 200);
    let stored: Vec<(String, String)> = app
        .db()
        .prepare("SELECT item_uuid, status FROM order_items")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored, [(second.clone(), "OK".to_owned())], "the last wins");
    let payload: String = app
        .db()
        .query_row("SELECT payload FROM item_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(payload, body, "the event keeps both copies, as received");
}

#[tokio::test]
async fn huge_and_negative_bare_numbers_in_versions_and_ids_get_400() {
    // Fixtures in receiver.rs cover `-3` for order_item_version and too-large versions sent as
    // strings; these are the bare-number forms and the other numeric fields.
    let app = spawn_app_with("").await;
    let cases = [
        (
            "order_item_version",
            "18446744073709551616",
            "order_item_version",
        ), // u64::MAX + 1
        (
            "order_item_version",
            "99999999999999999999999999999999999999",
            "order_item_version",
        ),
        (
            "order_item_version",
            "9223372036854775808",
            "order_item_version",
        ), // i64::MAX + 1
        ("order_item_version", "1e400", "body"), // out of f64 range: not JSON serde accepts
        ("order_item_version", "1e3", "order_item_version"),
        ("order_item_version", "-0", "order_item_version"), // a float to serde_json
        ("order_item_version", "-1", "order_item_version"),
        (
            "order_item_version",
            "-9223372036854775809",
            "order_item_version",
        ),
        ("order_version", "18446744073709551616", "order_version"),
        ("order_version", "-1", "order_version"),
        ("order_id", "18446744073709551616", "order_id"),
        ("order_id", "-5", "order_id"),
    ];
    for (field, number, named) in cases {
        let body = with_field(field, number);
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 400, "{field} = {number}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], named, "{field} = {number}: {answer}");
    }
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), cases.len() as i64);

    // The largest version that fits is stored exactly.
    let response = app
        .post_webhook(with_field("order_item_version", "9223372036854775807"))
        .await;
    assert_eq!(response.status(), 200);
    let version: i64 = app
        .db()
        .query_row("SELECT item_version FROM order_items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::MAX);
}

#[tokio::test]
async fn an_empty_string_in_any_field_gets_400_naming_it() {
    let app = spawn_app_with("").await;
    let fields = [
        "order_id",
        "order_uuid",
        "order_created",
        "order_updated",
        "order_version",
        "order_item_uuid",
        "order_item_created",
        "order_item_updated",
        "order_item_version",
        "order_item_status",
    ];
    for field in fields {
        let response = app.post_webhook(with_field(field, "\"\"")).await;
        assert_eq!(response.status(), 400, "{field}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], field, "{answer}");
        if field != "order_item_status" {
            // Whitespace is no UUID, number or time either.
            let response = app.post_webhook(with_field(field, "\" \"")).await;
            assert_eq!(response.status(), 400, "{field} = \" \"");
        }
    }
    assert_nothing_stored(&app);
    assert_eq!(app.count("rejected_webhooks"), 2 * fields.len() as i64 - 1);
}

#[tokio::test]
async fn a_blank_or_control_character_status_gets_400() {
    let app = spawn_app_with("").await;
    for status in [" ", "\\t", "OK\\n", "OK\\u0000", "\\u001b[31mOK"] {
        let response = app
            .post_webhook(with_field("order_item_status", &format!("\"{status}\"")))
            .await;
        assert_eq!(response.status(), 400, "order_item_status = {status:?}");
    }
    assert_nothing_stored(&app);
}

// ---------------------------------------------------------------------------------------------
// Timestamps far from now.

#[tokio::test]
async fn timestamps_far_in_the_past_or_future_are_stored_and_the_future_is_clamped() {
    let app = spawn_app_with("").await;
    let times = [
        "order_created",
        "order_updated",
        "order_item_created",
        "order_item_updated",
    ];
    let body = |n: u64, at: &str| {
        let mut body: Value = serde_json::from_str(&good(n)).unwrap();
        for field in times {
            body[field] = json!(at);
        }
        body.to_string()
    };
    let before = chrono::Utc::now();
    for (n, at) in [
        (1, "0001-01-01T00:00:00+0000"),
        (2, "1970-01-01T00:00:00+0000"),
        (3, "9999-12-31T23:59:59+0000"),
        (4, "2999-01-01T00:00:00Z"),
    ] {
        let response = app.post_webhook(body(n, at)).await;
        assert_eq!(response.status(), 200, "{at}");
    }
    let after = chrono::Utc::now();
    let row = |n: u64| -> (String, String, String) {
        app.db()
            .query_row(
                "SELECT item_updated, item_created, as_of FROM order_items WHERE item_uuid = ?1",
                [uuid(1, n)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    let past = "0001-01-01T00:00:00.000Z".to_owned();
    assert_eq!(row(1), (past.clone(), past.clone(), past), "stored as sent");
    let epoch = "1970-01-01T00:00:00.000Z".to_owned();
    assert_eq!(row(2), (epoch.clone(), epoch.clone(), epoch));
    for (n, sent) in [
        (3, "9999-12-31T23:59:59.000Z"),
        (4, "2999-01-01T00:00:00.000Z"),
    ] {
        let (updated, created, as_of) = row(n);
        assert_eq!((updated.as_str(), created.as_str()), (sent, sent));
        // The rule's time is clamped to received + 1 h so the row cannot freeze.
        let as_of: chrono::DateTime<chrono::Utc> = as_of.parse().unwrap();
        let hour = chrono::Duration::hours(1);
        assert!(
            as_of >= before + hour - chrono::Duration::seconds(1) && as_of <= after + hour,
            "{sent}: as_of {as_of} is not received + 1 h"
        );
    }
    let order_updated: String = app
        .db()
        .query_row(
            "SELECT order_updated FROM orders WHERE order_uuid = ?1",
            [uuid(2, 3)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(order_updated, "9999-12-31T23:59:59.000Z");
    // A far-future item is not frozen: a newer version later is applied normally.
    let next = webhook(&uuid(1, 3), &uuid(2, 3), 2, "OK");
    let response = app.post_webhook(next).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "applied");
}

#[tokio::test]
async fn odd_timestamps_are_refused_or_stored_readably() {
    // chrono's `%Y` could take a signed year beyond 0000..=9999, which to_rfc3339 would write
    // as "-0001-…" / "+10000-…" (not fixed-width, not readable back): those must be refused.
    // A leap second and extreme offsets are valid and must leave the item usable afterwards.
    let app = spawn_app_with("").await;
    let cases = [
        (1, "-0001-01-01T00:00:00+0000", 400),
        (2, "+10000-01-01T00:00:00+0000", 400),
        (3, "2018-12-10T13:12:40+2400", 400),
        (4, "2016-12-31T23:59:60+0000", 200),
        (5, "2018-12-10T13:12:40-2359", 200),
        (6, "0000-01-01T00:00:00+0000", 200),
    ];
    for (n, at, expected) in cases {
        let mut body: Value = serde_json::from_str(&good(n)).unwrap();
        body["order_item_updated"] = json!(at);
        let status = app.post_webhook(body.to_string()).await.status();
        assert_eq!(status, expected, "{at}");
        if expected == 200 {
            // The stored time is read back by the next observation of the same item.
            let next = webhook(&uuid(1, n), &uuid(2, n), 2, "OK");
            let status = app.post_webhook(next).await.status();
            assert_eq!(
                status, 200,
                "{at}: the next webhook for the item got {status}"
            );
        } else {
            let stored = app.count(&format!("order_items WHERE item_uuid = '{}'", uuid(1, n)));
            assert_eq!(stored, 0, "{at}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization headers beyond the ones receiver.rs covers.

#[tokio::test]
async fn garbled_authorization_headers_get_401() {
    let app = spawn_app_with(AUTH).await;
    let b64 = |text: &[u8]| base64::engine::general_purpose::STANDARD.encode(text);
    let good_b64 = b64(b"JohnSmith:Swordfish");
    let wrong: Vec<(&str, String)> = vec![
        ("empty value", String::new()),
        ("only spaces", "   ".into()),
        ("scheme glued to the token", format!("Basic{good_b64}")),
        ("tab instead of space", format!("Basic\t{good_b64}")),
        ("Digest scheme", format!("Digest {good_b64}")),
        (
            "base64 without padding",
            format!("Basic {}", good_b64.trim_end_matches('=')),
        ),
        (
            "base64url alphabet",
            format!(
                "Basic {}",
                b64(b"JohnSmith:Swordfish?>")
                    .replace('+', "-")
                    .replace('/', "_")
            ),
        ),
        (
            "trailing garbage after the token",
            format!("Basic {good_b64} x"),
        ),
        ("two tokens", format!("Basic {good_b64} {good_b64}")),
        ("empty user and password", format!("Basic {}", b64(b":"))),
        ("empty password", format!("Basic {}", b64(b"JohnSmith:"))),
        (
            "password prefix",
            format!("Basic {}", b64(b"JohnSmith:Swordfis")),
        ),
        (
            "password plus a byte",
            format!("Basic {}", b64(b"JohnSmith:Swordfish1")),
        ),
        (
            "password with a trailing newline",
            format!("Basic {}", b64(b"JohnSmith:Swordfish\n")),
        ),
        (
            "password with a trailing NUL",
            format!("Basic {}", b64(b"JohnSmith:Swordfish\0")),
        ),
        (
            "user in another case",
            format!("Basic {}", b64(b"johnsmith:Swordfish")),
        ),
        (
            "user and password swapped",
            format!("Basic {}", b64(b"Swordfish:JohnSmith")),
        ),
        (
            "extra colon part",
            format!("Basic {}", b64(b"JohnSmith:Swordfish:x")),
        ),
        (
            "8 KiB of base64",
            format!("Basic {}", b64(&[b'A'; 6 * 1024])),
        ),
    ];
    for (case, value) in &wrong {
        let response = app
            .webhook_request()
            .header("authorization", value.as_str())
            .body(good(1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case}: {value:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"orderwatch\""
        );
    }
    // Two Authorization headers: the first one decides (hyper's `get`). A wrong first header is
    // refused even when a right one follows.
    let request = post(
        &good(1),
        &format!(
            "Authorization: Basic {}\r\nAuthorization: {GOOD_BASIC}\r\nConnection: close\r\n",
            b64(b"x:y")
        ),
    );
    let (answers, _) = exchange(app.addr, &request).await;
    assert_eq!(answers.first().map(|a| a.status), Some(401), "{answers:?}");
    assert_nothing_stored(&app);
    assert_eq!(
        app.count("rejected_webhooks"),
        0,
        "unauthenticated bodies are not kept"
    );

    // Accepted on purpose: the scheme is case-insensitive (RFC 7617) and surrounding spaces
    // are optional whitespace.
    for (n, value) in [
        (1, format!("BASIC {good_b64}")),
        (2, format!("  Basic   {good_b64}  ")),
    ] {
        let response = app
            .webhook_request()
            .header("authorization", value.as_str())
            .body(good(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{value:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol corners: HTTP/1.0, pipelining, Expect: 100-continue, header limits, smuggling.

#[tokio::test]
async fn http_1_0_requests_are_served_and_closed_unless_kept_alive() {
    let app = spawn_app_with("").await;
    let one = good(1);
    let request = |body: &str, extra: &str| {
        format!(
            "{}{body}",
            post_head(
                "HTTP/1.0",
                &format!("Content-Length: {}\r\n{extra}", body.len())
            )
        )
        .into_bytes()
    };
    // Without keep-alive: answered in HTTP/1.0 and closed.
    let (answers, end) = exchange(app.addr, &request(&one, "")).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0].version.as_str(), answers[0].status),
        ("HTTP/1.0", 200)
    );
    assert_eq!(answers[0].json()["outcome"], "applied");
    assert_eq!(end, End::Closed);

    // With keep-alive: the connection stays open for a second request.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(&request(&one, "Connection: keep-alive\r\n"))
        .await
        .unwrap();
    let (bytes, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered);
    let answers = parse_answers(&bytes);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].json()["outcome"], "duplicate");
    assert_eq!(
        answers[0]
            .header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive")
    );
    stream.write_all(&request(&good(2), "")).await.unwrap();
    let (bytes, end) = read_answers(&mut stream, usize::MAX, LIMIT).await;
    let answers = parse_answers(&bytes);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].json()["outcome"], "applied");
    assert_eq!(end, End::Closed);
    assert_eq!(app.count("order_items"), 2);

    // HTTP/1.0 has no chunked encoding: refused before anything is read.
    let mut chunked = post_head("HTTP/1.0", "Transfer-Encoding: chunked\r\n");
    chunked.push_str(&format!("{:x}\r\n{}\r\n0\r\n\r\n", good(3).len(), good(3)));
    let (answers, end) = exchange(app.addr, chunked.as_bytes()).await;
    assert_eq!(answers.first().map(|a| a.status), Some(400), "{answers:?}");
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(
        app.count("order_items"),
        2,
        "the chunked 1.0 body was not stored"
    );
    assert_eq!(app.count("item_events"), 3);
}

#[tokio::test]
async fn pipelined_webhooks_are_answered_in_order_and_all_stored() {
    let app = spawn_app_with("").await;
    let (a, b) = (good(1), good(2));
    // Three requests in one write: A, A again, then B (which closes the connection).
    let mut batch = post(&a, "");
    batch.extend(post(&a, ""));
    batch.extend(post(&b, "Connection: close\r\n"));
    let (answers, end) = exchange(app.addr, &batch).await;
    assert_eq!(end, End::Closed);
    let outcomes: Vec<(u16, Value)> = answers
        .iter()
        .map(|a| (a.status, a.json()["outcome"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (200, json!("applied")),
            (200, json!("duplicate")),
            (200, json!("applied"))
        ]
    );
    assert_eq!(app.count("order_items"), 2);
    assert_eq!(app.count("item_events"), 3);

    // A pipelined request behind an oversized one is never parsed from the unread body.
    let mut batch = post_head("HTTP/1.1", "Content-Length: 100000\r\n").into_bytes();
    batch.extend(post(&good(3), ""));
    let (answers, end) = exchange(app.addr, &batch).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(
        app.count("order_items"),
        2,
        "the smuggled webhook was not stored"
    );
}

#[tokio::test]
async fn expect_100_continue_is_honoured_and_refusals_skip_it() {
    let app = spawn_app_with(&format!("[server]\nmax_body_bytes = 4096\n{AUTH}")).await;
    let body = good(1);
    let head = |length: usize, auth: bool| {
        let auth = if auth {
            format!("Authorization: {GOOD_BASIC}\r\n")
        } else {
            String::new()
        };
        post_head(
            "HTTP/1.1",
            &format!("Expect: 100-continue\r\nContent-Length: {length}\r\n{auth}"),
        )
    };
    // Accepted: 100 Continue first, then (after the body) 200.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(head(body.len(), true).as_bytes())
        .await
        .unwrap();
    let (bytes, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered, "no interim answer before the body");
    let interim = parse_answers(&bytes);
    assert_eq!(interim[0].status, 100, "{interim:?}");
    assert_eq!(
        app.count("order_items"),
        0,
        "nothing stored before the body"
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let (more, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered);
    let finals = parse_answers(&more);
    assert_eq!(finals[0].status, 200, "{finals:?}");
    assert_eq!(finals[0].json()["outcome"], "applied");
    assert_eq!(app.count("order_items"), 1);

    // Refused before the body: 413 for an oversized declared length, 401 without credentials,
    // each as the first and only answer, never a 100.
    for (length, auth, expected) in [(10 * 1024 * 1024, true, 413), (body.len(), false, 401)] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(head(length, auth).as_bytes())
            .await
            .unwrap();
        let (bytes, _) = read_answers(&mut stream, 1, LIMIT).await;
        let answers = parse_answers(&bytes);
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(expected),
            "{answers:?}"
        );
    }
    assert_eq!(app.count("order_items"), 1);
    assert_eq!(app.count("item_events"), 1);
}

#[tokio::test]
async fn oversized_header_blocks_and_ambiguous_framing_are_refused() {
    let app = spawn_app_with("").await;
    let body = good(1);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a 1 MiB header",
            post(&body, &format!("X-Pad: {}\r\n", "a".repeat(1024 * 1024))),
            431,
        ),
        (
            "200 headers",
            post(
                &body,
                &(0..200)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            431,
        ),
        (
            "two different Content-Lengths",
            {
                let mut r = post_head(
                    "HTTP/1.1",
                    &format!("Content-Length: {}\r\nContent-Length: 5\r\n", body.len()),
                );
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a Content-Length that is not a number",
            {
                let mut r = post_head("HTTP/1.1", "Content-Length: 12a\r\n");
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a transfer coding other than chunked",
            {
                let mut r = post_head("HTTP/1.1", "Transfer-Encoding: gzip\r\n");
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a request line that is not HTTP",
            b"HELLO\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (case, request, expected) in &cases {
        let (answers, end) = exchange(app.addr, request).await;
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(*expected),
            "{case}: {answers:?}"
        );
        assert!(matches!(end, End::Closed | End::Reset), "{case}: {end:?}");
    }
    assert_nothing_stored(&app);

    // Content-Length and Transfer-Encoding together: the chunked framing wins (RFC 9112), so a
    // request hidden in the "rest" of the declared length is never parsed; the connection is
    // closed after the answer.
    let hidden = post(&good(9), "");
    let mut smuggle = post_head(
        "HTTP/1.1",
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len() + 7 + hidden.len()
        ),
    )
    .into_bytes();
    smuggle.extend(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes());
    smuggle.extend(&hidden);
    let (answers, end) = exchange(app.addr, &smuggle).await;
    assert_eq!(
        answers.len(),
        1,
        "one answer, the hidden request is not served: {answers:?}"
    );
    assert_eq!(answers[0].status, 200);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(app.count("order_items"), 1);
    assert_eq!(
        app.count(&format!("order_items WHERE item_uuid = '{}'", uuid(1, 9))),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// What the real daemon logs about hostile input.

/// A webhook for item `n` with every timestamp set to `at`.
fn at_time(n: u64, at: &str) -> String {
    let mut body: Value = serde_json::from_str(&good(n)).unwrap();
    for field in [
        "order_created",
        "order_updated",
        "order_item_created",
        "order_item_updated",
    ] {
        body[field] = json!(at);
    }
    body.to_string()
}

const JSON_DAEMON: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n";

#[tokio::test]
async fn a_far_future_timestamp_is_stored_clamped_and_logged() {
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), JSON_DAEMON);
    assert_eq!(
        daemon
            .post_webhook(at_time(1, "9999-12-31T23:59:59+0000"))
            .await,
        200
    );
    let lines = daemon.stop();
    let warned: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("far in the future"))
        .collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    assert!(warned[0].contains(&uuid(1, 1)), "{}", warned[0]);
}

#[tokio::test]
async fn a_far_past_timestamp_is_stored_and_logged() {
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), JSON_DAEMON);
    assert_eq!(
        daemon
            .post_webhook(at_time(1, "0001-01-01T00:00:00+0000"))
            .await,
        200
    );
    let lines = daemon.stop();
    let warned = lines
        .iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains(&uuid(1, 1)))
        .count();
    assert_eq!(warned, 1, "{lines:#?}");
}

#[tokio::test]
async fn a_status_with_a_newline_cannot_forge_a_log_line() {
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n",
    );
    let forged = "2099-01-01T00:00:00.000000Z  INFO orderwatch::receiver: request method=POST \
                  status=200 forged=yes";
    let mut body: Value = serde_json::from_str(&good(1)).unwrap();
    body["order_item_status"] = json!(format!("OK\n{forged}"));
    let status = daemon.post_webhook(body.to_string()).await;
    let lines = daemon.stop();
    assert!(
        status == 400 || lines.iter().all(|l| !l.starts_with("2099-01-01")),
        "answered {status}; a forged line reached the log: {lines:#?}"
    );
}
