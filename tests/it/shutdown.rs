//! SIGTERM under load, on the real binary: 32 webhooks waiting for a commit and a reconciler
//! pass waiting for Musement when the signal comes. The daemon stops accepting, says "not
//! ready" to anyone who still asks, lets every request in flight and the running pass finish,
//! and exits 0; every 200 it gave is stored exactly once, and any other answer is a 503.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::helpers::api::config_for;
use crate::helpers::db::{Query, value};
use crate::helpers::fake_musement::{FakeMusement, new_uuid, order_json};
use crate::helpers::wire::{End, parse_answers, read_answers};
use crate::helpers::{Daemon, uuid, watch_before_start, webhook};

/// Webhooks in flight when SIGTERM arrives.
const IN_FLIGHT: u64 = 32;

/// Webhooks sent during the drain on connections opened before it.
const LATE: u64 = 2;

/// The webhook whose body is still arriving after the pass has ended.
const SLOW: u64 = 2_000;

/// Bound on every wait here; generous for a loaded machine, and well inside `shutdown_grace`.
const LIMIT: Duration = Duration::from_secs(30);

/// One webhook on a connection of its own: its item, and the task reading the answer (the
/// status, 0 when the connection ended without one).
struct Posted {
    item: String,
    answer: JoinHandle<u16>,
}

/// The first line of a webhook request. A connection that has sent it has a request in
/// progress: graceful shutdown lets it finish, where it closes a connection that has sent
/// nothing yet.
const POST_LINE: &str = "POST /webhooks/musement HTTP/1.1\r\n";

/// The first line of a readiness probe (see [`POST_LINE`]).
const READYZ_LINE: &str = "GET /readyz HTTP/1.1\r\n";

/// The webhook request for a fresh item `n`: the item and the request's bytes.
fn webhook_request(n: u64) -> (String, String) {
    let item = uuid(21, n);
    let body = webhook(&item, &uuid(22, n), 1, "PENDING");
    let request = format!(
        "{POST_LINE}Host: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (item, request)
}

/// Writes the webhook for item `n` on `stream`, which has sent its first `sent` bytes
/// already, and reads the answer in a task.
async fn post(mut stream: TcpStream, n: u64, sent: usize) -> Posted {
    let (item, request) = webhook_request(n);
    stream.write_all(&request.as_bytes()[sent..]).await.unwrap();
    let answer = tokio::spawn(async move {
        let (bytes, _) = read_answers(&mut stream, 1, LIMIT).await;
        parse_answers(&bytes).first().map_or(0, |a| a.status)
    });
    Posted { item, answer }
}

/// Sends the rest of `GET path` (`sent` of it went before) on `stream` and returns status
/// and body.
async fn get(stream: &mut TcpStream, path: &str, sent: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let rest = request.strip_prefix(sent).expect("a start of the request");
    stream.write_all(rest.as_bytes()).await.unwrap();
    let (bytes, end) = read_answers(stream, 1, LIMIT).await;
    let answer = parse_answers(&bytes)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("GET {path}: no answer ({end:?})"));
    (answer.status, answer.body)
}

/// `orderwatch_connections_open` as `/metrics` on `stream` says.
async fn connections_open(stream: &mut TcpStream) -> u64 {
    let (status, text) = get(stream, "/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix("orderwatch_connections_open "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connections gauge in {text}"))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Events stored for `item`.
fn events(db: &impl Query, item: &str) -> i64 {
    value(
        db,
        "SELECT count(*) FROM item_events WHERE item_uuid = ?1",
        [item],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_and_a_running_pass_finish_then_exits_0() {
    // Musement holds every order poll, so the daemon's first pass is running when the signal
    // comes; one order at a time, so two orders have not been polled yet.
    let fake = FakeMusement::start().await;
    let orders: Vec<_> = (0..3).map(|_| new_uuid()).collect();
    let items: Vec<_> = (0..3).map(|_| new_uuid()).collect();
    for (order, item) in orders.iter().zip(&items) {
        fake.put_order(order_json(*order, &[(*item, "OK")]));
    }
    let order_paths: Vec<String> = orders.iter().map(|o| format!("/orders/{o}")).collect();
    for path in &order_paths {
        fake.hold(path);
    }
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"60s\"\n\
         header_read_timeout = \"60s\"\n[database]\nbusy_timeout = \"60s\"\n{}",
        config_for(&fake, "concurrency = 1\nrequest_timeout = \"5m\"")
    );
    let dir = tempfile::tempdir().unwrap();
    watch_before_start(dir.path(), &config, &orders).await;
    let mut daemon = Daemon::start(dir, &config);
    daemon.wait_ready().await;
    let deadline = Instant::now() + LIMIT;
    while fake.count("GET", "") == 0 {
        assert!(Instant::now() < deadline, "the first pass never polled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + LIMIT;

    // A connection that has served a request and sits idle (graceful shutdown closes it
    // first: its end tells the test the drain began), one for a readiness probe during the
    // drain and a few for late webhooks, each with the first line of its request sent, and
    // one webhook whose body stops halfway until after the pass has ended.
    let mut idle = connect(daemon.addr).await;
    // Start from a known count: the readiness checks' connections have gone.
    while connections_open(&mut idle).await != 1 {
        assert!(
            Instant::now() < deadline,
            "connections left from the start-up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut probe = connect(daemon.addr).await;
    probe.write_all(READYZ_LINE.as_bytes()).await.unwrap();
    let mut late = Vec::new();
    for _ in 0..LATE {
        let mut stream = connect(daemon.addr).await;
        stream.write_all(POST_LINE.as_bytes()).await.unwrap();
        late.push(stream);
    }
    let mut slow = connect(daemon.addr).await;
    let (_, slow_request) = webhook_request(SLOW);
    let halfway = slow_request.len() - 100;
    slow.write_all(&slow_request.as_bytes()[..halfway])
        .await
        .unwrap();

    // Another process holds the write lock: webhooks wait for their commit.
    let db = daemon.db();
    let lock = db.lock_writes();
    let mut in_flight = Vec::new();
    for n in 0..IN_FLIGHT {
        in_flight.push(post(connect(daemon.addr).await, n, 0).await);
    }
    let everyone = 3 + LATE + IN_FLIGHT;
    while connections_open(&mut idle).await < everyone {
        assert!(
            Instant::now() < deadline,
            "the daemon never took every connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for posted in &in_flight {
        assert!(
            !posted.answer.is_finished(),
            "answered while the lock was held"
        );
    }

    daemon.signal("TERM");
    let (_, end) = read_answers(&mut idle, usize::MAX, LIMIT).await;
    assert_eq!(
        end,
        End::Closed,
        "the idle connection is closed once draining begins"
    );
    assert!(
        TcpStream::connect(daemon.addr).await.is_err(),
        "no new connection is accepted"
    );
    let (status, body) = get(&mut probe, "/readyz", READYZ_LINE).await;
    assert_eq!(status, 503, "not ready while draining: {body}");
    assert!(body.contains("shutting down"), "{body}");
    let mut late_posts = Vec::new();
    for (n, stream) in late.into_iter().enumerate() {
        late_posts.push(post(stream, 1_000 + n as u64, POST_LINE.len()).await);
    }

    // The lock goes: everything waiting commits. The pass is still running, so the daemon is
    // still there; once Musement answers, the pass finishes, and the daemon still waits for
    // the slow webhook; once that is answered it exits.
    drop(lock);
    let mut answers = Vec::new();
    for posted in in_flight {
        answers.push((posted.item, posted.answer.await.unwrap()));
    }
    let mut late_answers = Vec::new();
    for posted in late_posts {
        late_answers.push((posted.item, posted.answer.await.unwrap()));
    }
    assert_eq!(daemon.exit_status(), None, "waits for the running pass");
    for path in &order_paths {
        fake.release(path);
    }
    tokio::task::block_in_place(|| daemon.wait_for_log("reconciler pass due="));
    // Without a wait for open requests, "stopped" would follow within milliseconds.
    let after_pass =
        tokio::task::block_in_place(|| daemon.log_lines_for(Duration::from_millis(500)));
    assert!(
        !after_pass.iter().any(|l| l.contains("stopped")),
        "{after_pass:#?}"
    );
    assert_eq!(daemon.exit_status(), None, "waits for the slow webhook");
    let slow = post(slow, SLOW, halfway).await;
    let slow_answer = slow.answer.await.unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = daemon.exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "clean exit");
    let log = daemon.drain_log();
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:#?}");
    assert!(
        !log.iter().any(|l| l.contains("stopping anyway")),
        "finished within the grace: {log:#?}"
    );

    for (item, status) in &answers {
        assert_eq!(
            *status, 200,
            "{item}: in flight at SIGTERM, stored before the exit"
        );
        assert_eq!(events(&db, item), 1, "{item}: answered 200, stored once");
    }
    for (item, status) in &late_answers {
        match status {
            200 => assert_eq!(events(&db, item), 1, "{item}: answered 200, stored once"),
            503 => assert!(events(&db, item) <= 1, "{item}: a retry is safe"),
            other => panic!("{item}: during the drain, 200 or 503 and nothing else, got {other}"),
        }
    }
    eprintln!("sent during the drain: {late_answers:?}");
    assert_eq!(
        slow_answer, 200,
        "the slow webhook, finished after the pass"
    );
    assert_eq!(events(&db, &slow.item), 1, "stored once");

    // The pass finished the poll it had started and started no other.
    assert_eq!(fake.count("GET", ""), 1, "{:?}", fake.requests());
    let polled: Vec<(String, String)> = items
        .iter()
        .filter_map(|item| {
            db.query_row(
                "SELECT status, source FROM order_items WHERE item_uuid = ?1",
                [item.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
        })
        .collect();
    assert_eq!(
        polled,
        [("OK".to_owned(), "poll".to_owned())],
        "the poll in flight was stored"
    );
    let leases: i64 = value(&db, "SELECT count(*) FROM leases", []);
    assert_eq!(leases, 0, "the pass gave its lease back");
}
