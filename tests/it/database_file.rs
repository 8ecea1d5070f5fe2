//! The database file and its WAL under an operator's hands, on the real binary: the file
//! deleted or replaced while the daemon runs, a reader pinning the WAL, probes hammering
//! `/readyz`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::helpers::backend::sqlite_only;
use crate::helpers::db::value;
use crate::helpers::{Daemon, http_client, uuid, webhook};

const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The `n`th distinct webhook (its own item and order).
fn nth(n: u64) -> String {
    webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING")
}

/// Status and body of a webhook post.
async fn post(daemon: &Daemon, body: String) -> (u16, String) {
    let response = daemon.webhook_request().body(body).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// One sample of the daemon's `/metrics` (loopback clients may read it on the webhook port).
async fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
    let text = daemon.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn events(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM item_events", [], |r| r.get(0))
        .unwrap()
}

/// After `rm orderwatch.db*`, nothing is acknowledged any more: 503, one ERROR naming the
/// path, `/readyz` and `/healthz` fail; a restart opens a new file and takes Musement's
/// retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_gets_503_one_error_and_failing_probes_until_restarted() {
    if sqlite_only("the SQLite database file itself") {
        return;
    }
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), CONFIG);
    let db = daemon.db_path();
    assert_eq!(post(&daemon, nth(1)).await.0, 200);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&db, suffix));
    }

    let (status, body) = post(&daemon, nth(2)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database file replaced"), "{body}");
    assert!(body.contains("is gone"), "{body}");
    assert_eq!(daemon.status_of("/readyz").await, 503);
    assert_eq!(daemon.status_of("/healthz").await, 503);
    assert_eq!(post(&daemon, nth(3)).await.0, 503, "and it stays so");
    let log = daemon.stop();
    let errors = log
        .iter()
        .filter(|line| line.contains("ERROR") && line.contains("deleted or replaced"))
        .count();
    assert_eq!(errors, 1, "{log:#?}");
    assert!(
        log.iter()
            .any(|line| line.contains(&db.display().to_string())),
        "the error names the path: {log:#?}"
    );
    assert!(!db.exists(), "nothing recreated the deleted file");

    // The service manager restarts it: a new database, and Musement's retries land there.
    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());
    drop(daemon);
    let daemon = Daemon::start(dir, CONFIG);
    assert_eq!(post(&daemon, nth(2)).await.0, 200);
    assert_eq!(post(&daemon, nth(3)).await.0, 200);
    assert_eq!(events(&db), 2);
}

/// `cp backup.db orderwatch.db` over the live file (same inode, older contents) is caught
/// before anything is written into the copy: it stays intact and our WAL is set aside, so no
/// later start replays it onto the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_copied_over_the_live_file_is_never_written_through_the_old_connection() {
    if sqlite_only("the SQLite database file itself") {
        return;
    }
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), CONFIG);
    let db = daemon.db_path();
    for n in 0..20 {
        assert_eq!(post(&daemon, nth(n)).await.0, 200);
    }
    let backup = daemon.dir.path().join("backup.db");
    Connection::open(&db)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    for n in 20..400 {
        assert_eq!(post(&daemon, nth(n)).await.0, 200);
    }
    // Let the checkpointer copy the WAL back and truncate it (the writer is idle now), so the
    // copy lands on a quiet file.
    let deadline = Instant::now() + Duration::from_secs(5);
    while file_len(&with_suffix(&db, "-wal")) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::copy(&backup, &db).unwrap(); // truncates and rewrites the same inode
    let (status, body) = post(&daemon, nth(1000)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overwritten in place"), "{body}");
    assert_eq!(daemon.status_of("/readyz").await, 503);
    daemon.stop();

    let copy = Connection::open(&db).unwrap();
    let check: String = value(&copy, "PRAGMA integrity_check", []);
    assert_eq!(check, "ok");
    assert_eq!(events(&db), 20, "the copy holds what the backup held");
    let set_aside = std::fs::read_dir(daemon.dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("orderwatch.db-wal.replaced-"))
        .count();
    assert_eq!(set_aside, 1, "our WAL was renamed aside");
}

/// A reader holding a transaction open pins the WAL: it grows only to `max_size_bytes` (plus
/// its 4 MiB working size), then webhooks get 503 and a WARN names the cause; within 20 s of
/// the reader ending the WAL is back to its working size while webhooks keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_wal_stays_within_max_size_bytes_and_shrinks_once_the_reader_ends() {
    if sqlite_only("the SQLite database file itself") {
        return;
    }
    const MAX: u64 = 8_000_000;
    const WORKING_SIZE: u64 = 4 * 1024 * 1024;
    let daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        &format!("{CONFIG}[database]\nmax_size_bytes = {MAX}\n"),
    );
    let db = daemon.db_path();
    let wal = with_suffix(&db, "-wal");
    assert_eq!(post(&daemon, nth(0)).await.0, 200);

    let reader = Connection::open(&db).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM order_items;")
        .unwrap();
    let pinned_at = Instant::now();
    let mut refused = None;
    for n in 1..3_000 {
        let (status, body) = post(&daemon, nth(n)).await;
        if status != 200 {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("max_size_bytes"), "{body}");
            refused = Some(n);
            break;
        }
    }
    let refused = refused.expect("the pinned WAL never reached max_size_bytes");
    let grown = file_len(&wal);
    eprintln!("pinned: {refused} webhooks stored, then 503; WAL {grown} bytes");
    assert!(
        grown > WORKING_SIZE,
        "the WAL did grow while pinned: {grown}"
    );
    assert!(
        file_len(&db) + grown <= MAX + WORKING_SIZE + 1024 * 1024,
        "WAL {grown} bytes and database {} bytes",
        file_len(&db)
    );
    let warning = wait_for_line(&daemon, "has not been reset", Duration::from_secs(20));
    assert!(warning.contains("read transaction open"), "{warning}");
    eprintln!(
        "warned after {:?}: {warning}",
        pinned_at.elapsed().as_secs()
    );

    drop(reader);
    let ended = Instant::now();
    let mut n = 10_000;
    let mut stored_again = false;
    while file_len(&wal) > WORKING_SIZE || !stored_again {
        assert!(
            ended.elapsed() < Duration::from_secs(20),
            "WAL still {} bytes 20 s after the reader ended",
            file_len(&wal)
        );
        stored_again |= post(&daemon, nth(n)).await.0 == 200;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "WAL back to {} bytes {:?} after the reader ended",
        file_len(&wal),
        ended.elapsed()
    );
    let passive = metric(
        &daemon,
        "orderwatch_sqlite_checkpoints_total{mode=\"passive\",result=\"ok\"}",
    )
    .await;
    assert!(passive.unwrap_or(0.0) > 0.0, "{passive:?}");
    let wal_gauge = metric(&daemon, "orderwatch_sqlite_wal_bytes").await;
    assert!(
        wal_gauge.is_some_and(|bytes| bytes <= (MAX + WORKING_SIZE) as f64),
        "{wal_gauge:?}"
    );
}

/// The first log line containing `needle` within `limit`.
fn wait_for_line(daemon: &Daemon, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = daemon.drain_log().into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} logged within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/readyz` needs no credentials, so anyone can call it as fast as they like: one answer
/// is reused for a second, so that costs at most one heartbeat write per second, and probes
/// are not logged at INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_readyz_costs_one_write_per_second_and_no_log_lines() {
    if sqlite_only("the SQLite database file itself") {
        return;
    }
    let daemon = Daemon::start(tempfile::tempdir().unwrap(), CONFIG);
    let batches = "orderwatch_store_batch_size_count";
    let before = metric(&daemon, batches).await.unwrap();
    let started = Instant::now();
    let window = Duration::from_secs(2);
    let url = format!("http://{}/readyz", daemon.addr);
    let probes: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http_client();
                let mut answered = 0;
                while started.elapsed() < window {
                    let status = client.get(&url).send().await.unwrap().status();
                    assert_eq!(status, 200);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for probe in probes {
        answered += probe.await.unwrap();
    }
    let elapsed = started.elapsed();
    let writes = metric(&daemon, batches).await.unwrap() - before;
    eprintln!("{answered} probes in {elapsed:?} cost {writes} heartbeat writes");
    assert!(answered > 100, "the probes did run: {answered}");
    assert!(
        writes <= elapsed.as_secs_f64().ceil() + 1.0,
        "{writes} writes for {answered} probes in {elapsed:?}"
    );
    let probe_lines = daemon
        .drain_log()
        .into_iter()
        .filter(|line| line.contains("/readyz"))
        .count();
    assert_eq!(probe_lines, 0, "probes are logged at DEBUG only");
}
