//! The real `orderwatch` binary on PostgreSQL, selected the way a partner selects it: the
//! shipped-style config file (SQLite's `path`) plus `ORDERWATCH_DATABASE__URL`.
//!
//! - `the_daemon_and_every_command_run_on_postgres`: webhooks in, then every inspection
//!   command, `migrate`, `watch`, `prune` and `backup` against the same database; the
//!   password in the URL never printed.
//! - `faults_cost_no_acknowledged_webhook`: under concurrent load, on a cluster of the test's
//!   own, the daemon's connections killed (`pg_terminate_backend`), the server restarted with
//!   `pg_ctl -m immediate`, and the daemon itself `kill -9`ed and restarted: every webhook
//!   answered 200 is in `item_events` afterwards, `/readyz` fails while the server is down,
//!   and the daemon takes webhooks again without a restart.
//! - `changes_follow_waits_for_an_open_transaction_and_skips_nothing`: the CLI's feed past a
//!   transaction held open while the daemon commits more.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::helpers::pg::{self, OwnCluster};
use crate::helpers::{Daemon, cli, http_client, uuid, webhook};

/// The daemon's config file as a deployment keeps it: SQLite's keys still there (they are
/// ignored once the URL comes from the environment), JSON log, no reconciler.
const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[database]\npath = \"orderwatch.db\"\n\
                      busy_timeout = \"5s\"\n[log]\nformat = \"json\"\n[reconciler]\nenabled = false\n";

/// The URL with a password written into it: trust authentication ignores it, so the test
/// can check that it is masked everywhere.
fn with_password(url: &str) -> String {
    url.replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1)
}

/// `orderwatch ARGS` on `dir`'s config with the URL in the environment: (exit code, stdout,
/// stderr).
fn ow(dir: &TempDir, url: &str, args: &[&str]) -> (i32, String, String) {
    let out = cli(&dir.path().join("config.toml"), args)
        .env("ORDERWATCH_DATABASE__URL", url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeeded(output: (i32, String, String), what: &str) -> String {
    let (code, stdout, stderr) = output;
    assert_eq!(code, 0, "{what}: {stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{what}"
    );
    stdout
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_every_command_run_on_postgres() {
    let Some(db) = pg::database("the daemon and every command") else {
        return;
    };
    let url = with_password(&db.url);
    let mut daemon = Daemon::launch(tempfile::tempdir().unwrap(), CONFIG)
        .env("ORDERWATCH_DATABASE__URL", &url)
        .env("RUST_LOG", "info")
        .start();
    daemon.wait_ready().await;
    let startup = format!("{:?}", daemon.startup_log);
    assert!(startup.contains("SQLite's keys are ignored"), "{startup}");
    assert!(startup.contains("postgres:********@"), "{startup}");
    assert!(!startup.contains("hunter2"), "{startup}");

    let (order, items) = (uuid(2, 1), [uuid(1, 1), uuid(1, 2)]);
    for (version, status) in [(1, "PENDING"), (2, "OK")] {
        for item in &items {
            let answer = daemon
                .webhook_request()
                .body(webhook(item, &order, version, status))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "{item} v{version}");
        }
    }
    let refused = daemon.webhook_request().body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let dir = &daemon.dir;

    let listed: Vec<Value> = serde_json::from_str(&succeeded(
        ow(dir, &url, &["items", "--format", "json"]),
        "items",
    ))
    .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|item| item["status"] == "OK"),
        "{listed:?}"
    );

    let shown = succeeded(ow(dir, &url, &["show", &items[0]]), "show");
    assert!(shown.contains("PENDING") && shown.contains("OK"), "{shown}");
    let stats: Value = serde_json::from_str(&succeeded(
        ow(dir, &url, &["stats", "--format", "json"]),
        "stats",
    ))
    .unwrap();
    assert_eq!(stats["items"], 2, "{stats}");
    assert_eq!(stats["rejected_webhooks"], 1, "{stats}");
    let rejected = succeeded(ow(dir, &url, &["rejected"]), "rejected");
    assert_eq!(
        rejected.lines().count(),
        3,
        "a header and one webhook: {rejected}"
    );

    // The feed: four changes, each with a commit-ordered cursor; resuming after the second
    // by its cursor or by its plain id gives the same last two.
    let changes = ndjson(&succeeded(ow(dir, &url, &["changes"]), "changes"));
    assert_eq!(changes.len(), 4, "{changes:?}");
    for change in &changes {
        let cursor = change["cursor"].as_str().unwrap();
        let (_, id) = cursor.split_once('.').expect("a TX.ID cursor");
        assert_eq!(id, change["id"].to_string(), "{change}");
    }
    let second = &changes[1];
    let by_cursor = ow(
        dir,
        &url,
        &["changes", "--after", second["cursor"].as_str().unwrap()],
    );
    let by_id = ow(
        dir,
        &url,
        &["changes", "--after", &second["id"].to_string()],
    );
    assert_eq!(ndjson(&succeeded(by_cursor, "by cursor")), changes[2..]);
    assert_eq!(ndjson(&succeeded(by_id, "by id")), changes[2..]);
    let (code, _, stderr) = ow(dir, &url, &["changes", "--after", "999999"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no event has id 999999"), "{stderr}");

    let migrated = succeeded(ow(dir, &url, &["migrate"]), "migrate");
    assert!(
        migrated.contains(&format!(
            "schema version {} (0 migration(s) applied now)",
            orderwatch::store::postgres::migrate::SCHEMA_VERSION
        )),
        "{migrated}"
    );
    assert!(migrated.contains("postgres:********@"), "{migrated}");
    succeeded(ow(dir, &url, &["watch", &uuid(2, 9)]), "watch");
    let watched = succeeded(ow(dir, &url, &["stats", "--format", "json"]), "stats");
    assert!(watched.contains("\"watched_orders\": 1"), "{watched}");
    succeeded(
        ow(dir, &url, &["prune", "--events-older-than", "30d"]),
        "prune",
    );
    let (code, stdout, stderr) = ow(dir, &url, &["backup", "copy.db"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("pg_dump"), "{stderr}");

    let checked = succeeded(ow(dir, &url, &["check-config"]), "check-config");
    assert!(
        checked.contains("url = \"postgres://postgres:********@"),
        "{checked}"
    );
    let (_, _, warned) = ow(dir, &url, &["check-config"]);
    assert!(
        warned.contains("database.url contains a password"),
        "{warned}"
    );
    let log = daemon.stop().join("\n");
    assert!(!log.contains("hunter2"), "{log}");
}

/// Start-up lines and warnings only: a line per request would cost more than the requests.
const LOG_FILTER: &str = "warn,orderwatch::app=info,orderwatch::store=info";

/// Concurrent senders for the fault test.
const SENDERS: usize = 8;

/// What the senders saw.
#[derive(Default)]
struct Ledger {
    /// (item, version) pairs answered 200.
    acknowledged: HashSet<(String, u64)>,
    /// Answers other than 200 (503 while the server was away), and requests that failed.
    not_200: usize,
}

/// Sends webhooks from [`SENDERS`] tasks until `stop`, each its own items with rising
/// versions, to whichever address `target` holds (the daemon's changes on a restart).
fn start_load(
    target: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    sent: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|sender| {
            let (target, stop, ledger, sent) =
                (target.clone(), stop.clone(), ledger.clone(), sent.clone());
            tokio::spawn(async move {
                let client = http_client();
                let mut version = 0;
                while !stop.load(Ordering::SeqCst) {
                    version += 1;
                    let item = uuid(1, (sender as u64) << 32 | (version % 16));
                    let order = uuid(2, sender as u64);
                    let url = target.lock().await.clone();
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(webhook(&item, &order, version, "PENDING"))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    let mut ledger = ledger.lock().await;
                    match answer {
                        Ok(answer) if answer.status() == 200 => {
                            ledger.acknowledged.insert((item, version));
                        }
                        Ok(_) | Err(_) => {
                            ledger.not_200 += 1;
                            drop(ledger);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until `more` further webhooks were answered 200 (bounded).
async fn until_acknowledged(ledger: &Mutex<Ledger>, more: usize, what: &str) {
    let target = ledger.lock().await.acknowledged.len() + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.lock().await.acknowledged.len() < target {
        assert!(Instant::now() < deadline, "{what}: no progress in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/readyz`'s status code, or 0 when there is no answer.
async fn readyz(daemon: &Daemon) -> u16 {
    match http_client()
        .get(daemon.url("/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_cost_no_acknowledged_webhook() {
    let Some(cluster) = OwnCluster::start("faults under load") else {
        return;
    };
    let url = cluster.url.clone();
    let launch = |dir: TempDir| {
        Daemon::launch(dir, CONFIG)
            .env("ORDERWATCH_DATABASE__URL", &url)
            .env("RUST_LOG", LOG_FILTER)
            .start()
    };
    let mut daemon = launch(tempfile::tempdir().unwrap());
    daemon.wait_ready().await;
    let target = Arc::new(Mutex::new(daemon.webhook_url()));
    let (stop, ledger, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Ledger::default())),
        Arc::new(AtomicUsize::new(0)),
    );
    let senders = start_load(target.clone(), stop.clone(), ledger.clone(), sent.clone());
    until_acknowledged(&ledger, 200, "before the faults").await;

    // 1. The daemon's connections are killed by an administrator.
    let admin = pg::connect(&cluster.admin_url).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name LIKE 'orderwatch%') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the writer's connection was there to kill");
    until_acknowledged(&ledger, 200, "after pg_terminate_backend").await;

    // 2. The server stops at once (a crash) and comes back: not ready meanwhile.
    drop(admin);
    cluster.stop_immediately();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut said_not_ready = false;
    while Instant::now() < deadline && !said_not_ready {
        said_not_ready = readyz(&daemon).await == 503;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        said_not_ready,
        "/readyz kept saying ready with the server down"
    );
    cluster.restart();
    until_acknowledged(&ledger, 200, "after the server's restart").await;
    assert_eq!(readyz(&daemon).await, 200, "ready again, without a restart");

    // 3. The daemon itself is killed and restarted on the same database.
    let dir = daemon.sigkill();
    daemon = launch(dir);
    *target.lock().await = daemon.webhook_url();
    until_acknowledged(&ledger, 200, "after kill -9").await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }

    let stored = pg::stored_versions(&pg::connect(&cluster.url).await).await;
    let ledger = ledger.lock().await;
    let lost: Vec<_> = ledger.acknowledged.difference(&stored).collect();
    eprintln!(
        "PostgreSQL faults: {} webhooks sent, {} acknowledged, {} checked, {} lost, {} answered \
         other than 200",
        sent.load(Ordering::SeqCst),
        ledger.acknowledged.len(),
        ledger.acknowledged.len(),
        lost.len(),
        ledger.not_200
    );
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    drop(daemon);
}

/// `orderwatch changes --follow` on PostgreSQL while a test transaction that wrote a change
/// stays open and the daemon commits more: the feed waits at the open transaction (what
/// committed after it began is not printed yet, so nothing is skipped), then prints the held
/// change first and every change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_waits_for_an_open_transaction_and_skips_nothing() {
    let Some(db) = pg::database("changes --follow past an open transaction") else {
        return;
    };
    let mut daemon = Daemon::launch(tempfile::tempdir().unwrap(), CONFIG)
        .env("ORDERWATCH_DATABASE__URL", &db.url)
        .env("RUST_LOG", LOG_FILTER)
        .start();
    daemon.wait_ready().await;
    let post = |item: u64| {
        daemon
            .webhook_request()
            .body(webhook(&uuid(1, item), &uuid(2, item), 1, "PENDING"))
            .send()
    };
    assert_eq!(post(1).await.unwrap().status(), 200);

    // The test's own writer: a change stored in a transaction it keeps open.
    let mut held = pg::connect(&db.url).await;
    let tx = held.transaction().await.unwrap();
    pg::store_webhook_in(&tx, &webhook(&uuid(1, 2), &uuid(2, 2), 1, "PENDING")).await;
    for item in 3..=5 {
        assert_eq!(post(item).await.unwrap().status(), 200);
    }

    let mut follow = cli(
        &daemon.dir.path().join("config.toml"),
        &["changes", "--follow"],
    )
    .env("ORDERWATCH_DATABASE__URL", &db.url)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let lines = crate::helpers::process::lines_of(follow.stdout.take().unwrap());
    let item_of = |line: &str| {
        serde_json::from_str::<Value>(line).unwrap()["item"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        item_of(&first),
        uuid(1, 1),
        "committed before the open transaction began"
    );
    // Items 3 to 5 are committed, but after the open transaction began: held back with it.
    assert!(
        lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "printed past a transaction still open"
    );
    tx.commit().await.unwrap();
    let mut after = Vec::new();
    while after.len() < 4 {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("every change once the transaction committed");
        after.push(item_of(&line));
    }
    assert_eq!(
        after,
        [uuid(1, 2), uuid(1, 3), uuid(1, 4), uuid(1, 5)],
        "in commit order, the held change first"
    );
    assert!(
        lines.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing printed twice"
    );
    crate::helpers::process::signal(follow.id(), "INT");
    let status = crate::helpers::process::wait_bounded(&mut follow, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    drop(held);
    daemon.stop();
}

/// Two writers: while one batch waits for an order row that another transaction holds locked,
/// webhooks for other orders are stored and answered by the second writer; the held one is
/// answered 200 as soon as the lock is released, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_order_holds_back_one_writer_while_the_other_goes_on() {
    let Some(db) = pg::database("two writers past a locked order") else {
        return;
    };
    let mut daemon = Daemon::launch(tempfile::tempdir().unwrap(), CONFIG)
        .env("ORDERWATCH_DATABASE__URL", &db.url)
        // Above the time this test holds the lock.
        .env("ORDERWATCH_DATABASE__LOCK_TIMEOUT", "30s")
        .env("RUST_LOG", LOG_FILTER)
        .start();
    daemon.wait_ready().await;
    let post = |order: u64, item: u64| {
        daemon
            .webhook_request()
            .body(webhook(&uuid(1, item), &uuid(2, order), 1, "PENDING"))
            .send()
    };
    assert_eq!(post(1, 1).await.unwrap().status(), 200);

    let mut holder = pg::connect(&db.url).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM orders WHERE order_uuid = $1::text::uuid FOR UPDATE",
        &[&uuid(2, 1)],
    )
    .await
    .unwrap();
    let held = tokio::spawn(post(1, 2));
    // The held webhook's batch is taken and waits for the lock before the others arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "answered while its order was locked");
    let started = Instant::now();
    for item in 3..=12 {
        let answer = tokio::time::timeout(Duration::from_secs(10), post(2 + item, item))
            .await
            .unwrap_or_else(|_| panic!("webhook {item} waited for another order's lock"))
            .unwrap();
        assert_eq!(answer.status(), 200, "webhook {item}");
    }
    let others_took = started.elapsed();
    assert!(!held.is_finished(), "the lock was never held");
    tx.commit().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered once the lock is released")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let stored: i64 = holder
        .query_one("SELECT count(*) FROM order_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 12);
    println!("10 webhooks for other orders answered in {others_took:?} while one order was locked");
    daemon.stop();
}
