//! "A 200 means stored", tested by breaking things on purpose and counting:
//!
//! - `kill_9_under_load_never_loses_an_acknowledged_update`: the real binary under concurrent
//!   load, SIGKILLed at a random moment, restarted on the same database; every acknowledged
//!   webhook must be there with its version, and the state table must agree with the event log.
//! - `storage_faults_answer_503_and_recover_without_restart`: disk full (`max_size_bytes`), a
//!   second process holding the write lock, and a real I/O error (`RLIMIT_FSIZE` on the daemon);
//!   each gets 503 + `Retry-After`, never a 200, stores nothing it refused, and takes webhooks
//!   again once the fault is gone, without a restart.
//! - `a_file_size_limit_gives_503_and_never_kills_the_daemon`: the daemon started under
//!   `RLIMIT_FSIZE` with `SIGXFSZ` at its default action; past the limit, 503 and alive.
//! - `a_full_write_queue_refuses_at_once_with_retry_after`: saturation of the writer's queue.
//!
//! The kill test prints its seeds; `ORDERWATCH_KILL_SEED=<seed>` replays one of them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orderwatch::observation::Status;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::backend::{self, sqlite_only};
use crate::helpers::db::TestDb;
use crate::helpers::db::{rows, value};
use crate::helpers::{Daemon, http_client, json_post, spawn_app_with, uuid, webhook};

/// Keeps the daemon's stderr to start-up lines and warnings: a request line per webhook would
/// cost more than the webhooks under load.
const DAEMON_LOG_FILTER: &str = "warn,orderwatch::app=info,orderwatch::store=info";

/// The real `orderwatch run` on `config` in `dir`, with [`DAEMON_LOG_FILTER`], once it
/// answers `/readyz`.
async fn start_daemon(dir: TempDir, config: &str) -> Daemon {
    let daemon = Daemon::launch(dir, config)
        .env("RUST_LOG", DAEMON_LOG_FILTER)
        .start();
    daemon.wait_ready().await;
    daemon
}

/// A config for the real binary (JSON log, no reconciler), with `extra` TOML appended.
fn daemon_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n[reconciler]\nenabled = false\n{extra}"
    )
}

fn read_only(db: &Path) -> Connection {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// The start-up half of the power-loss promise: WAL journal and `synchronous=FULL`.
///
/// `journal_mode` is persistent in a WAL database, so another connection reads it. `synchronous`
/// is per connection and cannot be read from outside the daemon: it is checked from the
/// daemon's start-up log when the daemon reports it there (fields `journal_mode` and
/// `synchronous`), and said so when it does not.
fn assert_wal_and_full_sync(daemon: &Daemon, db: &Path) {
    let mode: String = read_only(db)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal", "journal_mode on disk");
    let reported = daemon
        .startup_log
        .iter()
        .find(|entry| !entry["synchronous"].is_null());
    match reported {
        Some(entry) => {
            assert_eq!(
                entry["synchronous"], "FULL",
                "the daemon's write connection runs with synchronous=FULL, said by its name: {entry}"
            );
            if let Some(mode) = entry["journal_mode"].as_str() {
                assert!(mode.eq_ignore_ascii_case("wal"), "{entry}");
            }
        }
        None => panic!("the daemon did not log `database opened for writing` with its pragmas"),
    }
}

// ----------------------------------------------------------------------------------------------
// kill -9 under load
// ----------------------------------------------------------------------------------------------

/// Seeds per run (each a fresh database); `ORDERWATCH_KILL_SEED` runs just that one.
const SEEDS: usize = 3;
/// No further seed is started after this long, so a slow machine still finishes in bounded time.
const TIME_BUDGET: Duration = Duration::from_secs(60);
/// Kill / restart cycles per seed, on the same database.
const KILLS_PER_SEED: usize = 3;
/// Concurrent connections sending webhooks.
const CONNECTIONS: usize = 32;
/// Webhooks planned per cycle (the kill cuts each cycle short).
const PLANNED_PER_CYCLE: usize = 2048;
/// Distinct items per seed (so items get many versions, sent out of order across connections).
const ITEMS: u64 = 128;

/// One webhook the load sends: every version is unique within a seed.
#[derive(Debug, Clone)]
struct Planned {
    version: u64,
    item: String,
    order: String,
    status: &'static str,
}

#[derive(Debug, Default)]
struct KillStats {
    kills: usize,
    sent: usize,
    acknowledged: usize,
    /// Stored though never answered 200: the kill fell between the commit and the answer.
    stored_unacknowledged: usize,
    not_200: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_never_loses_an_acknowledged_update() {
    if sqlite_only(
        "kill -9 with a WAL recovery check on the SQLite file (PostgreSQL's: postgres_daemon::faults_cost_no_acknowledged_webhook)",
    ) {
        return;
    }
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("ORDERWATCH_KILL_SEED") {
        Ok(seed) => vec![
            seed.trim()
                .parse()
                .expect("ORDERWATCH_KILL_SEED is a number"),
        ],
        Err(_) => (0..SEEDS).map(|_| fastrand::u64(..)).collect(),
    };
    let mut total = KillStats::default();
    for seed in seeds {
        if total.kills > 0 && started.elapsed() > TIME_BUDGET {
            eprintln!("kill -9: time budget spent; seed {seed} not run");
            continue;
        }
        eprintln!(
            "kill -9 seed {seed} (replay: ORDERWATCH_KILL_SEED={seed} cargo test --test it kill_9)"
        );
        let stats = kill_cycles(seed).await;
        eprintln!("kill -9 seed {seed}: {stats:?}");
        total.kills += stats.kills;
        total.sent += stats.sent;
        total.acknowledged += stats.acknowledged;
        total.stored_unacknowledged += stats.stored_unacknowledged;
        total.not_200 += stats.not_200;
    }
    eprintln!(
        "kill -9: {} kills, {} webhooks sent, {} acknowledged and found after restart, {} stored \
         but cut off before their answer, {} answered other than 200, in {:.1?}",
        total.kills,
        total.sent,
        total.acknowledged,
        total.stored_unacknowledged,
        total.not_200,
        started.elapsed()
    );
    assert!(total.acknowledged > 0, "the load got no 200 at all");
}

/// One seed: `KILLS_PER_SEED` times, load the daemon, SIGKILL it mid-stream, restart it on the
/// same database and check every acknowledged update; then one more webhook on what is left.
async fn kill_cycles(seed: u64) -> KillStats {
    let mut rng = fastrand::Rng::with_seed(seed);
    let config = daemon_config("");
    let mut sent: HashMap<u64, Planned> = HashMap::new();
    let mut acknowledged: HashSet<u64> = HashSet::new();
    let mut stats = KillStats::default();

    let mut daemon = start_daemon(tempfile::tempdir().unwrap(), &config).await;
    let db_path = daemon.db_path();
    assert_wal_and_full_sync(&daemon, &db_path);
    for cycle in 0..KILLS_PER_SEED {
        let plans = plan_cycle(&mut rng, cycle);
        // Kill once this many webhooks were acknowledged: somewhere in the middle of the stream.
        let kill_after = rng.usize(PLANNED_PER_CYCLE / 10..=PLANNED_PER_CYCLE * 9 / 10);
        let acks = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let url = daemon.webhook_url();
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                for p in &plan {
                    sent.insert(p.version, p.clone());
                }
                tokio::spawn(send_all(url.clone(), plan, acks.clone(), finished.clone()))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::SeqCst) < kill_after
            && finished.load(Ordering::SeqCst) < CONNECTIONS
        {
            assert!(
                Instant::now() < deadline,
                "seed {seed} cycle {cycle}: only {} of {kill_after} acknowledged in 60 s",
                acks.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            acks.load(Ordering::SeqCst) >= kill_after,
            "seed {seed} cycle {cycle}: the load ended before the kill point"
        );
        let dir = daemon.sigkill();
        stats.kills += 1;
        for task in tasks {
            let (acked, attempted, not_200) = task.await.unwrap();
            acknowledged.extend(acked);
            stats.sent += attempted;
            stats.not_200 += not_200;
        }
        daemon = start_daemon(dir, &config).await;
        assert_wal_and_full_sync(&daemon, &db_path);
        let stored = check_acknowledged(&db_path, &sent, &acknowledged, seed, cycle);
        stats.stored_unacknowledged = stored - acknowledged.len();
    }
    // The database the kills left behind still takes webhooks.
    let (item, order) = (uuid(1, 999_999), uuid(2, 999_999));
    let response = daemon
        .webhook_request()
        .body(webhook(&item, &order, 1, "OK"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "seed {seed}: after the last restart"
    );
    drop(daemon);
    stats.acknowledged = acknowledged.len();
    stats
}

/// The webhooks each connection sends in `cycle`: random items and statuses, unique versions.
fn plan_cycle(rng: &mut fastrand::Rng, cycle: usize) -> Vec<Vec<Planned>> {
    let per_connection = PLANNED_PER_CYCLE / CONNECTIONS;
    (0..CONNECTIONS)
        .map(|connection| {
            (0..per_connection)
                .map(|n| {
                    let item = rng.u64(..ITEMS);
                    Planned {
                        version: (cycle as u64 + 1) * 1_000_000
                            + connection as u64 * 10_000
                            + n as u64,
                        item: uuid(1, item),
                        order: uuid(2, item % 16),
                        status: Status::DOCUMENTED[rng.usize(..Status::DOCUMENTED.len())],
                    }
                })
                .collect()
        })
        .collect()
}

/// Sends `plan` in order on one connection until the daemon dies; returns the acknowledged
/// versions, the number of requests attempted and the number answered with a status other
/// than 200.
async fn send_all(
    url: String,
    plan: Vec<Planned>,
    acks: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
) -> (Vec<u64>, usize, usize) {
    // Bounded: a request caught by the kill once waited forever here (no socket left, nothing
    // to wake it), which hung the whole test run; past the bound it counts as "the daemon is
    // gone", like any other error.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    let (mut attempted, mut not_200) = (0, 0);
    for p in plan {
        attempted += 1;
        let body = webhook(&p.item, &p.order, p.version, p.status);
        match json_post(&client, &url).body(body).send().await {
            Ok(response) if response.status() == 200 => {
                acknowledged.push(p.version);
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => not_200 += 1,
            Err(_) => break, // the daemon is gone
        }
    }
    finished.fetch_add(1, Ordering::SeqCst);
    (acknowledged, attempted, not_200)
}

/// After a restart: the database is intact, every acknowledged version is in `item_events`
/// exactly as sent, nothing is there that was not sent, and every `order_items` row holds the
/// highest version logged for its item with that version's status (the row and its event were
/// committed together). Returns how many webhooks are stored.
fn check_acknowledged(
    db: &Path,
    sent: &HashMap<u64, Planned>,
    acknowledged: &HashSet<u64>,
    seed: u64,
    cycle: usize,
) -> usize {
    let context = format!("seed {seed} after kill {}", cycle + 1);
    let conn = read_only(db);
    let integrity: String = value(&conn, "PRAGMA integrity_check", []);
    assert_eq!(integrity, "ok", "{context}");

    let mut logged: HashMap<u64, (String, String)> = HashMap::new();
    let mut highest: HashMap<String, u64> = HashMap::new();
    let events: Vec<(String, i64, String, String)> = rows(
        &conn,
        "SELECT item_uuid, item_version, status, source FROM item_events",
        [],
    );
    for (item, version, status, source) in events {
        let version = version as u64;
        assert_eq!(source, "webhook", "{context}");
        let planned = sent
            .get(&version)
            .unwrap_or_else(|| panic!("{context}: version {version} was never sent"));
        assert_eq!(
            (item.as_str(), status.as_str()),
            (planned.item.as_str(), planned.status),
            "{context}: version {version} stored with other content"
        );
        assert!(
            logged.insert(version, (item.clone(), status)).is_none(),
            "{context}: version {version} logged twice though sent once"
        );
        let top = highest.entry(item).or_default();
        *top = (*top).max(version);
    }
    for version in acknowledged {
        assert!(
            logged.contains_key(version),
            "{context}: version {version} of {} was answered 200 but is not in item_events",
            sent[version].item
        );
    }

    let rows: Vec<(String, i64, i64, String)> = rows(
        &conn,
        "SELECT item_uuid, item_version, status_version, status FROM order_items",
        [],
    );
    let mut items = 0;
    for (item, version, status_version, status) in rows {
        items += 1;
        let top = highest
            .get(&item)
            .unwrap_or_else(|| panic!("{context}: {item} has a row but no event"));
        assert_eq!(
            version as u64, *top,
            "{context}: {item} holds version {version}, its highest logged is {top}"
        );
        assert_eq!(status_version, version, "{context}: {item}");
        assert_eq!(
            status, logged[top].1,
            "{context}: {item} holds the status of another version"
        );
    }
    assert_eq!(items, highest.len(), "{context}: an event without its row");
    logged.len()
}

// ----------------------------------------------------------------------------------------------
// storage faults
// ----------------------------------------------------------------------------------------------

/// What became of one fault case.
#[derive(Debug)]
enum Case {
    Ran {
        acknowledged: usize,
        refused: usize,
    },
    /// Only where a case cannot run at all (prlimit(2) outside Linux).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Skipped(String),
}

impl Case {
    fn describe(&self) -> String {
        match self {
            Self::Ran {
                acknowledged,
                refused,
            } => format!("ran: {refused} refused with 503, {acknowledged} answered 200 and found"),
            Self::Skipped(reason) => format!("SKIPPED: {reason}"),
        }
    }
}

/// A webhook that nobody else posts: item and order from `n`.
fn fresh_webhook(n: u64) -> (String, String) {
    let item = uuid(5, n);
    (item.clone(), webhook(&item, &uuid(6, n % 7), 1, "PENDING"))
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, Option<String>, Value) {
    let response = json_post(client, url).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// Events stored for `item`, read through a connection of our own.
fn events_of(db: &Path, item: &str) -> i64 {
    let folder = db.parent().expect("a database file is in a folder");
    let db = if backend::postgres() {
        TestDb::open(folder, db)
    } else {
        TestDb::Sqlite(read_only(db))
    };
    db.query_row(
        "SELECT count(*) FROM item_events WHERE item_uuid = ?1",
        [item],
        |r| r.get(0),
    )
    .unwrap()
}

/// A refusal as the promise wants it: 503, `Retry-After`, a reason, nothing stored.
fn assert_refused(
    answer: &(u16, Option<String>, Value),
    reason: &str,
    db: &Path,
    item: &str,
    case: &str,
) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, 503, "{case}: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{case}: Retry-After");
    let said = body["reason"].as_str().unwrap_or_default();
    assert!(said.contains(reason), "{case}: reason {said:?}");
    assert_eq!(
        events_of(db, item),
        0,
        "{case}: a refused webhook was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_answer_503_and_recover_without_restart() {
    if sqlite_only("a full SQLite file, its write lock and RLIMIT_FSIZE on it") {
        return;
    }
    let disk_full = disk_full_case().await;
    let (lock, io_error) = lock_and_io_error_cases().await;
    let cases = [
        ("disk full (max_page_count)", disk_full),
        ("write lock held by another process", lock),
        ("I/O error (RLIMIT_FSIZE -> EFBIG)", io_error),
    ];
    for (name, case) in &cases {
        eprintln!("storage fault {name}: {}", case.describe());
        if let Case::Skipped(why) = case {
            crate::helpers::skip(name, why)
        }
    }
    // Only the I/O error case may skip, and only where prlimit(2) does not exist.
    let may_skip = |name: &str| !cfg!(target_os = "linux") && name.starts_with("I/O error");
    for (name, case) in &cases {
        assert!(
            matches!(case, Case::Ran { .. }) || may_skip(name),
            "storage fault {name}: {}",
            case.describe()
        );
    }
}

/// The database reaches `max_size_bytes` (SQLite's `max_page_count`, so it works as root):
/// 503 until another program frees space, then 200 again.
async fn disk_full_case() -> Case {
    // 64 pages of 4 KiB; the schema takes about 20, the ballast below 24.
    let app = spawn_app_with("[database]\nmax_size_bytes = 262144\n").await;
    let url = app.url(&app.path);
    let other_program = app.db();
    other_program
        .execute_batch(
            "CREATE TABLE ballast (b BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 24)
             INSERT INTO ballast SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();

    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for n in 0..2_000 {
        let (item, body) = fresh_webhook(n);
        let answer = post(&app.client, &url, body.clone()).await;
        if answer.0 == 200 {
            acknowledged.push(item);
            continue;
        }
        // The reason is not checked: it names whatever SQLite reported last, which for a full
        // database is not always "database or disk is full" (see the report of issue 5).
        assert_refused(&answer, "full", &app.db_path, &item, "disk full");
        eprintln!("disk full: refused with {}", answer.2);
        refused.push((item, body));
        break;
    }
    assert_eq!(refused.len(), 1, "the database never filled up");
    // It stays refused (no flapping), whatever the webhook.
    for n in 10_000..10_003 {
        let (item, body) = fresh_webhook(n);
        let answer = post(&app.client, &url, body.clone()).await;
        assert_refused(&answer, "full", &app.db_path, &item, "still full");
        refused.push((item, body));
    }
    // The heartbeat still fits in the WAL; readiness counts the failed writes of real work.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    eprintln!(
        "disk full: {} acknowledged before the cap, /readyz answered {} while full",
        acknowledged.len(),
        ready.status()
    );
    assert_eq!(ready.status(), 503, "not ready while every write fails");
    let reason = ready.text().await.unwrap();
    assert!(reason.contains("batches of writes failed"), "{reason}");

    other_program.execute_batch("DROP TABLE ballast").unwrap();
    for (item, body) in &refused {
        let answer = post(&app.client, &url, body.clone()).await;
        assert_eq!(
            answer.0, 200,
            "Musement's retry once space is free: {}",
            answer.2
        );
        acknowledged.push(item.clone());
    }
    for n in 20_000..20_010 {
        let (item, body) = fresh_webhook(n);
        assert_eq!(
            post(&app.client, &url, body).await.0,
            200,
            "after the fault"
        );
        acknowledged.push(item);
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once writes go through");
    for item in &acknowledged {
        assert_eq!(events_of(&app.db_path, item), 1, "{item} was answered 200");
    }
    Case::Ran {
        acknowledged: acknowledged.len(),
        refused: refused.len(),
    }
}

/// The real daemon and the test as a second process: first the test holds `BEGIN EXCLUSIVE`
/// past `busy_timeout`, then the daemon's file-size limit is lowered to 0 so every write fails
/// with `EFBIG` (an I/O error, whoever runs the test) and raised again.
async fn lock_and_io_error_cases() -> (Case, Case) {
    let config = daemon_config("[database]\nbusy_timeout = \"300ms\"\n");
    let daemon = start_daemon(tempfile::tempdir().unwrap(), &config).await;
    let db = daemon.db_path();
    let url = daemon.webhook_url();
    let client = http_client();
    let mut acknowledged = Vec::new();

    // A second process holds the write lock past the busy timeout.
    let other_process = Connection::open(&db).unwrap();
    other_process.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (item, body) = fresh_webhook(1);
    let answer = post(&client, &url, body.clone()).await;
    let ready = client.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while locked");
    other_process.execute_batch("ROLLBACK").unwrap();
    assert_refused(&answer, "locked", &db, &item, "locked");
    assert_eq!(post(&client, &url, body).await.0, 200, "retry after unlock");
    acknowledged.push(item);
    let lock = Case::Ran {
        acknowledged: 1,
        refused: 1,
    };

    #[cfg(target_os = "linux")]
    let io_error = io_error_case(&daemon, &db, &client, &mut acknowledged).await;
    #[cfg(not(target_os = "linux"))]
    let io_error = Case::Skipped("needs prlimit(2), which only Linux has".into());
    for item in &acknowledged {
        assert_eq!(events_of(&db, item), 1, "{item} was answered 200");
    }
    (lock, io_error)
}

#[cfg(target_os = "linux")]
async fn io_error_case(
    daemon: &Daemon,
    db: &Path,
    client: &reqwest::Client,
    acknowledged: &mut Vec<String>,
) -> Case {
    use rlimit::Resource;

    let url = daemon.webhook_url();
    let pid = daemon.pid() as i32;
    // The daemon is our own child: reading and lowering its limit cannot be refused.
    let (mut soft, mut hard) = (0, 0);
    rlimit::prlimit(pid, Resource::FSIZE, None, Some((&mut soft, &mut hard)))
        .expect("read the daemon's RLIMIT_FSIZE");
    // A limit of 0 fails every write to any file, at any offset. (A limit above the WAL's size
    // left room for a write after a checkpoint restarted the WAL at its start, so a webhook
    // during the fault could be stored: the checkpointer runs on its own.)
    rlimit::prlimit(pid, Resource::FSIZE, Some((0, hard)), None)
        .expect("lower the daemon's RLIMIT_FSIZE");
    let mut refused = Vec::new();
    for n in [100, 1_000, 1_001, 1_002] {
        let (item, body) = fresh_webhook(n);
        let answer = post(client, &url, body.clone()).await;
        assert_refused(&answer, "I/O error", db, &item, "I/O error");
        refused.push((item, body));
    }
    let ready = client.get(daemon.url("/readyz")).send().await.unwrap();
    let status = ready.status();
    let reason = ready.text().await.unwrap();
    eprintln!("I/O error: /readyz answered {status} while writes failed: {reason}");
    assert_eq!(status, 503, "not ready while every write fails: {reason}");

    rlimit::prlimit(pid, Resource::FSIZE, Some((soft, hard)), None)
        .expect("restore the daemon's RLIMIT_FSIZE");
    for (item, body) in &refused {
        let answer = post(client, &url, body.clone()).await;
        assert_eq!(answer.0, 200, "retry once writes work again: {}", answer.2);
        acknowledged.push(item.clone());
    }
    for n in 2_000..2_010 {
        let (item, body) = fresh_webhook(n);
        assert_eq!(post(client, &url, body).await.0, 200, "after the I/O error");
        acknowledged.push(item);
    }
    let ready = client.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once writes go through");
    Case::Ran {
        acknowledged: acknowledged.len(),
        refused: refused.len(),
    }
}

/// The daemon started under a file-size limit (`prlimit --fsize`, `ulimit -f`, a container's
/// limit) with `SIGXFSZ` at its default action: once a write would pass the limit, the kernel
/// sends `SIGXFSZ`, which kills a process that does not ignore it, dropping every webhook in
/// flight. The daemon must ignore it itself, so the write fails with `EFBIG` and the webhook
/// gets a 503 like any storage error.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_gives_503_and_never_kills_the_daemon() {
    if sqlite_only("RLIMIT_FSIZE on the SQLite file") {
        return;
    }
    // The schema and the start-up writes take about 80 KiB of WAL; each webhook adds tens of KiB.
    const LIMIT: u64 = 256 * 1024;
    /// Webhooks in flight at once, so the one that meets the limit is not alone.
    const CONCURRENT: u64 = 4;
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n";
    let mut daemon =
        Daemon::start_with_file_size_limit(tempfile::tempdir().unwrap(), config, LIMIT);
    let db = daemon.db_path();
    let url = daemon.webhook_url();
    let client = http_client();

    // One round: CONCURRENT fresh webhooks at once; (item, status) for each, 0 for no answer.
    let round = |first: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let sent = (first..first + CONCURRENT).map(|n| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let (item, body) = fresh_webhook(n);
                    let answer = json_post(&client, &url).body(body).send().await;
                    (item, answer.map_or(0, |r| r.status().as_u16()))
                }
            });
            futures_util::future::join_all(sent).await
        }
    };

    let mut acknowledged = Vec::new();
    let mut past_the_limit = Vec::new();
    for first in (0..2_000).step_by(CONCURRENT as usize) {
        let answers = round(first).await;
        let limit_reached = answers.iter().any(|(_, status)| *status != 200);
        for (item, status) in answers {
            if status == 200 {
                acknowledged.push(item);
            } else {
                past_the_limit.push((item, status));
            }
        }
        if limit_reached {
            break;
        }
    }
    // A few more rounds once the limit is reached: still refused, still alive.
    for first in (10_000..10_000 + 3 * CONCURRENT).step_by(CONCURRENT as usize) {
        past_the_limit.extend(round(first).await);
    }
    let exit = daemon.exit_status();
    let wal = std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len());
    eprintln!(
        "file-size limit {LIMIT} bytes: {} acknowledged, then {} answered {:?}; WAL at {wal} \
         bytes; daemon exit status {exit:?}",
        acknowledged.len(),
        past_the_limit.len(),
        past_the_limit.iter().map(|(_, s)| *s).collect::<Vec<_>>()
    );
    assert_eq!(
        exit,
        None,
        "the daemon died under a file-size limit (SIGXFSZ is signal {})",
        libc::SIGXFSZ
    );
    assert!(
        !acknowledged.is_empty(),
        "no webhook fitted under the limit"
    );
    assert!(
        past_the_limit.len() > 3 * CONCURRENT as usize,
        "the file-size limit was never reached"
    );
    // The checkpointer may truncate the WAL meanwhile, which makes room again: a webhook past
    // the first refusal is either refused (503, not stored) or stored (200), never dropped.
    assert!(
        past_the_limit.iter().any(|(_, status)| *status == 503),
        "no webhook was refused at the limit"
    );
    for (item, status) in &past_the_limit {
        match status {
            503 => assert_eq!(events_of(&db, item), 0, "{item} was refused but stored"),
            200 => assert_eq!(events_of(&db, item), 1, "{item} was answered 200"),
            other => panic!(
                "{item}: past the limit, 503 or 200 and nothing else, got {other} (0: no answer)"
            ),
        }
    }
    for item in &acknowledged {
        assert_eq!(events_of(&db, item), 1, "{item} was answered 200");
    }
    let ready = client
        .get(format!("http://{}/readyz", daemon.addr))
        .send()
        .await;
    assert!(ready.is_ok(), "the daemon still answers: {ready:?}");
    assert_eq!(daemon.exit_status(), None, "still running");
}

// ----------------------------------------------------------------------------------------------
// saturation
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_refuses_at_once_with_retry_after() {
    const QUEUE: usize = 2;
    const REQUESTS: u64 = 50;
    let app = Arc::new(
        spawn_app_with(&format!(
            "[database]\nbusy_timeout = \"20s\"\n[store]\nqueue_capacity = {QUEUE}\n"
        ))
        .await,
    );
    // Each writer (SQLite's one, PostgreSQL's two) takes one job (plus what is queued at that
    // moment) and then waits for the lock; the queue fills behind them. At most this many
    // webhooks can be waiting; every other one must be refused while the lock is still held.
    let writers = if backend::postgres() {
        orderwatch::store::postgres::WRITERS
    } else {
        1
    };
    let can_wait = writers * (1 + QUEUE) + QUEUE;

    let lock = app.db().lock_writes();
    let answered = Arc::new(AtomicUsize::new(0));
    let url = app.url(&app.path);
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|n| {
            let (app, url, answered) = (app.clone(), url.clone(), answered.clone());
            tokio::spawn(async move {
                let (item, body) = fresh_webhook(n);
                let answer = post(&app.client, &url, body).await;
                answered.fetch_add(1, Ordering::SeqCst);
                (item, answer)
            })
        })
        .collect();
    // Refusals come while the writer is still blocked: the lock is released only once they all
    // arrived (the deadline only bounds a broken run; the busy timeout is longer).
    let deadline = Instant::now() + Duration::from_secs(15);
    while answered.load(Ordering::SeqCst) < REQUESTS as usize - can_wait {
        assert!(
            Instant::now() < deadline,
            "only {} of {REQUESTS} answered while the writer was blocked",
            answered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused_while_blocked = answered.load(Ordering::SeqCst);
    drop(lock);

    let (mut stored, mut queue_full) = (0, 0);
    for task in tasks {
        let (item, answer) = task.await.unwrap();
        match answer.0 {
            200 => {
                assert_eq!(events_of(&app.db_path, &item), 1, "{item} answered 200");
                stored += 1;
            }
            _ => {
                assert_refused(&answer, "", &app.db_path, &item, "saturated");
                if answer.2["reason"] == "write queue is full" {
                    queue_full += 1;
                }
            }
        }
    }
    eprintln!(
        "saturation: {REQUESTS} concurrent webhooks, queue_capacity {QUEUE}: {queue_full} refused \
         (queue full, {refused_while_blocked} answered while the writer was blocked), {stored} \
         stored after the lock was released"
    );
    assert!(
        queue_full >= REQUESTS as usize - can_wait,
        "only {queue_full} refused for a full queue"
    );
    assert_eq!(
        stored + queue_full,
        REQUESTS as usize,
        "every webhook answered"
    );
    assert!(
        stored >= 1,
        "the waiting webhooks were stored once the lock went"
    );

    // Nothing is stuck: new webhooks are stored at once.
    let (item, body) = fresh_webhook(1_000);
    assert_eq!(post(&app.client, &url, body).await.0, 200);
    assert_eq!(events_of(&app.db_path, &item), 1);
}
