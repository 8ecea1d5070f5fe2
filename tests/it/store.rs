//! Durability through the HTTP path: commits under concurrency, storage faults, restarts, and
//! time from the injected clock.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderwatch::clock::ManualClock;
use orderwatch::observation::Status;
use serde_json::Value;

use crate::helpers::backend::sqlite_only;
use crate::helpers::db::{TestDb, column, row, value};
use crate::helpers::{spawn_app, spawn_app_in, spawn_app_with, uuid, webhook};

/// The status version `v` is sent with: the `v % 6`th documented one, so two versions of one
/// item carry different statuses and a row holding the wrong one shows.
fn status_of(version: u64) -> &'static str {
    Status::DOCUMENTED[(version % 6) as usize]
}

/// 500 webhooks from 50 concurrent tasks, half the items posted twice with different versions
/// and statuses: every 200 is one event with what was answered, and every row holds exactly the
/// highest version with its status, whatever order the two arrived in.
#[tokio::test]
async fn every_acknowledged_concurrent_webhook_is_in_the_table() {
    for config in ["", "[store]\nmax_batch = 1\n"] {
        let app = Arc::new(spawn_app_with(config).await);
        const TASKS: u64 = 50;
        const PER_TASK: u64 = 10;
        const ITEMS: u64 = TASKS * PER_TASK / 2;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..PER_TASK {
                    // Task t and task t + 25 post the same items with versions t + 1, t + 26.
                    let index = (task * PER_TASK + n) % ITEMS;
                    let (item, order) = (uuid(1, index), uuid(2, index % 7));
                    let version = task + 1;
                    let body = webhook(&item, &order, version, status_of(version));
                    let response = app.post_webhook(body).await;
                    assert_eq!(response.status(), 200);
                    let answer: Value = response.json().await.unwrap();
                    let outcome = answer["outcome"].as_str().unwrap().to_owned();
                    acknowledged.push((item, order, version, outcome));
                }
                acknowledged
            }));
        }
        let mut acknowledged = Vec::new();
        for task in tasks {
            acknowledged.extend(task.await.unwrap());
        }
        assert_eq!(acknowledged.len() as u64, TASKS * PER_TASK);
        let db = app.db();
        let mut highest = std::collections::HashMap::new();
        for (item, order, version, outcome) in &acknowledged {
            let (status, stored_outcome): (String, String) = db
                .query_row(
                    "SELECT status, outcome FROM item_events \
                     WHERE item_uuid = ?1 AND order_uuid = ?2 AND item_version = ?3",
                    rusqlite::params![item, order, *version as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap_or_else(|e| panic!("{item} v{version} was acknowledged ({config:?}): {e}"));
            assert_eq!(status, status_of(*version), "{item} v{version}");
            assert_eq!(
                &stored_outcome, outcome,
                "{item} v{version}: answered {outcome}"
            );
            let top = highest.entry(item.clone()).or_insert(0);
            *top = (*top).max(*version);
        }
        for (item, order, version, outcome) in &acknowledged {
            // The higher version is applied whenever it comes; the lower one only if first.
            let expected: &[&str] = if *version == highest[item] {
                &["applied"]
            } else {
                &["applied", "stale"]
            };
            assert!(
                expected.contains(&outcome.as_str()),
                "{item} v{version}: {outcome}"
            );
            let row: (String, i64, i64, String) = row(
                &db,
                "SELECT status, item_version, status_version, order_uuid FROM order_items \
                 WHERE item_uuid = ?1",
                [item],
            );
            let top = highest[item];
            let expected = (
                status_of(top).to_owned(),
                top as i64,
                top as i64,
                order.clone(),
            );
            assert_eq!(row, expected, "{item} ({config:?})");
        }
        assert_eq!(app.count("item_events"), (TASKS * PER_TASK) as i64);
        assert_eq!(app.count("order_items"), ITEMS as i64);
    }
}

#[tokio::test]
async fn a_locked_database_gets_503_and_recovers_without_restart() {
    let app = spawn_app_with("[database]\nbusy_timeout = \"200ms\"\n").await;
    let (item, order) = (uuid(1, 9), uuid(2, 9));

    let lock = app.db().lock_writes();
    let response = app.post_webhook(webhook(&item, &order, 1, "PENDING")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("locked"),
        "{body}"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready while the database cannot be written"
    );
    drop(lock);

    assert_eq!(
        app.count("item_events"),
        0,
        "nothing from the refused request was stored"
    );
    let response = app.post_webhook(webhook(&item, &order, 1, "PENDING")).await;
    assert_eq!(
        response.status(),
        200,
        "the retry is stored once the lock is gone"
    );
    assert_eq!(app.count("order_items"), 1);
}

/// "200 means stored; any other answer means retry, and a retry is always safe." A commit that
/// outlasts `request_timeout` is answered 503 (`commit_timeout`), but the job stays with the
/// writer and commits once the lock is gone, so a 503 does not mean "not stored"; Musement's
/// retry of the same body is then a `duplicate` that leaves the row as it was.
#[tokio::test]
async fn a_commit_past_request_timeout_gets_503_commits_later_and_the_retry_is_a_duplicate() {
    // The lock below is held from before the webhook until after its answer: past
    // request_timeout by construction, and far within busy_timeout on any machine.
    let app = spawn_app_with(
        "[server]\nrequest_timeout = \"300ms\"\n[database]\nbusy_timeout = \"120s\"\n",
    )
    .await;
    let (item, order) = (uuid(1, 31), uuid(2, 31));
    let body = webhook(&item, &order, 3, "OK");
    let events = |db: &TestDb| -> Vec<String> {
        let sql = "SELECT outcome FROM item_events WHERE item_uuid = ?1 ORDER BY id";
        column(db, sql, [&item])
    };

    let other_process = app.db();
    let lock = other_process.lock_writes();
    let response = app.post_webhook(body.clone()).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["error"], "not confirmed stored, retry later",
        "{answer}"
    );
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("request_timeout"), "{answer}");
    assert!(events(&app.db()).is_empty(), "not committed while locked");
    drop(lock);

    // The job was not dropped with its request: it commits now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while events(&other_process).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the webhook answered 503 was never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(events(&other_process), ["applied"]);
    let row = |db: &TestDb| -> Vec<rusqlite::types::Value> {
        db.query_row(
            "SELECT * FROM order_items WHERE item_uuid = ?1",
            [&item],
            |r| (0..r.as_ref().column_count()).map(|i| r.get(i)).collect(),
        )
        .unwrap()
    };
    let committed = row(&other_process);

    // Musement retries the same body: a duplicate, and nothing in the row moves.
    let retry = app.post_webhook(body).await;
    assert_eq!(retry.status(), 200);
    let answer: Value = retry.json().await.unwrap();
    assert_eq!(answer["outcome"], "duplicate", "{answer}");
    assert_eq!(row(&other_process), committed, "the retry changed the row");
    assert_eq!(events(&other_process), ["applied", "duplicate"]);

    let metrics = app.metrics_text().await;
    let counted = "orderwatch_webhook_requests_total{code=\"503\",outcome=\"commit_timeout\"} 1";
    assert!(
        metrics.lines().any(|line| line == counted),
        "no `{counted}` in:\n{metrics}"
    );
}

#[tokio::test]
async fn restart_keeps_state() {
    let app = spawn_app().await;
    let (item, order) = (uuid(1, 7), uuid(2, 7));
    assert_eq!(
        app.post_webhook(webhook(&item, &order, 2, "OK"))
            .await
            .status(),
        200
    );
    let dir = app.stop().await;

    let app = spawn_app_in(dir, "", Arc::new(orderwatch::clock::SystemClock)).await;
    let response = app.post_webhook(webhook(&item, &order, 2, "OK")).await;
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body["outcome"], "duplicate",
        "the state survived the restart"
    );
    let response = app.post_webhook(webhook(&item, &order, 1, "PENDING")).await;
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["outcome"], "stale");
    assert_eq!(app.count("item_events"), 3);
}

#[tokio::test]
async fn times_come_from_the_injected_clock() {
    let start: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = spawn_app_in(tempfile::tempdir().unwrap(), "", clock.clone()).await;
    let (item, order) = (uuid(1, 3), uuid(2, 3));

    // A webhook claiming an update ten years after our clock is clamped to clock + 1h.
    let mut body: Value = serde_json::from_str(&webhook(&item, &order, 1, "PENDING")).unwrap();
    body["order_item_updated"] = "2040-01-01T00:00:00+0000".into();
    assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);
    clock.advance(chrono::Duration::minutes(10));
    // A second copy of version 1 with another status: a conflict, which marks a re-poll.
    body["order_item_status"] = "KO".into();
    assert_eq!(app.post_webhook(body.to_string()).await.status(), 200);

    let db = app.db();
    let (as_of, first_seen, changed): (String, String, String) = row(
        &db,
        "SELECT as_of, first_seen_at, changed_at FROM order_items",
        [],
    );
    assert_eq!(as_of, "2030-01-01T01:00:00.000Z");
    assert_eq!(first_seen, "2030-01-01T00:00:00.000Z");
    assert_eq!(changed, "2030-01-01T00:00:00.000Z");
    let received: Vec<String> = column(&db, "SELECT received_at FROM item_events ORDER BY id", []);
    assert_eq!(
        received,
        ["2030-01-01T00:00:00.000Z", "2030-01-01T00:10:00.000Z"]
    );
    let repoll_at: String = value(&db, "SELECT repoll_at FROM orders", []);
    assert_eq!(
        repoll_at, "2030-01-01T00:10:05.000Z",
        "re-poll after skew_margin (5s)"
    );
}

/// Posts `body` and returns `(HTTP status, outcome)`.
async fn outcome_of(app: &crate::helpers::TestApp, body: String) -> (u16, String) {
    let response = app.post_webhook(body).await;
    let status = response.status().as_u16();
    let answer: Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or_default();
    (status, answer["outcome"].as_str().unwrap_or("").to_owned())
}

/// A hand edit in `sqlite3` must not block an item: SQLite's own time format is read as a time,
/// and a cell the store cannot read at all is unknown state that the next webhook overwrites
/// (issue 11, defect 5).
#[tokio::test]
async fn hand_edited_cells_never_block_an_items_webhooks() {
    if sqlite_only(
        "cells SQLite's loose typing lets a hand edit break (PostgreSQL's column types refuse them)",
    ) {
        return;
    }
    let app = spawn_app().await;
    let (item, order) = (uuid(1, 50), uuid(2, 50));
    assert_eq!(
        outcome_of(&app, webhook(&item, &order, 1, "PENDING")).await,
        (200, "applied".into())
    );
    let db = app.db();
    let edit = |sql: &str| {
        db.execute(sql, [&item]).unwrap();
    };

    // datetime() turns the stored time into SQLite's `YYYY-MM-DD HH:MM:SS`: still that time.
    edit("UPDATE order_items SET as_of = datetime(as_of) WHERE item_uuid = ?1");
    assert_eq!(
        outcome_of(&app, webhook(&item, &order, 1, "PENDING")).await,
        (200, "duplicate".into()),
        "the row was read as it was"
    );
    edit("UPDATE order_items SET as_of = datetime('now') WHERE item_uuid = ?1");
    assert_eq!(
        outcome_of(&app, webhook(&item, &order, 2, "OK")).await,
        (200, "applied".into())
    );

    // Unreadable cells, one kind after the other: each time the next webhook is stored as if
    // the item were new, and the row is readable again after it.
    let unreadable = [
        "UPDATE order_items SET as_of = 'yesterday' WHERE item_uuid = ?1",
        "UPDATE order_items SET status = CAST(x'ff' AS TEXT) WHERE item_uuid = ?1",
        "UPDATE order_items SET status = '' WHERE item_uuid = ?1",
        "UPDATE order_items SET facts_as_of = 'later' WHERE item_uuid = ?1",
        "UPDATE order_items SET first_seen_at = 'long ago' WHERE item_uuid = ?1",
    ];
    for (n, sql) in unreadable.iter().enumerate() {
        edit(sql);
        let version = 3 + n as u64;
        assert_eq!(
            outcome_of(&app, webhook(&item, &order, version, "OK")).await,
            (200, "applied".into()),
            "{sql}"
        );
        assert_eq!(
            outcome_of(&app, webhook(&item, &order, version - 1, "PENDING")).await,
            (200, "stale".into()),
            "after {sql}, the overwritten row is read again"
        );
    }
    // The CHECK constraints keep `source` readable unless someone switches them off.
    db.execute_batch("PRAGMA ignore_check_constraints = 1")
        .unwrap();
    edit("UPDATE order_items SET source = 'carrier pigeon' WHERE item_uuid = ?1");
    db.execute_batch("PRAGMA ignore_check_constraints = 0")
        .unwrap();
    assert_eq!(
        outcome_of(&app, webhook(&item, &order, 20, "REFUNDED")).await,
        (200, "applied".into())
    );

    // Order cells the webhook path reads: the next webhook rewrites them.
    db.execute(
        "UPDATE orders SET next_poll_at = 'soon', repoll_at = 'later' WHERE order_uuid = ?1",
        [&order],
    )
    .unwrap();
    assert_eq!(
        outcome_of(&app, webhook(&item, &order, 21, "REFUNDED")).await,
        (200, "applied".into())
    );
    let next_poll_at: String = value(
        &db,
        "SELECT next_poll_at FROM orders WHERE order_uuid = ?1",
        [&order],
    );
    assert!(
        orderwatch::clock::from_db_text(&next_poll_at).is_ok(),
        "{next_poll_at}"
    );

    let (first_seen, as_of, source): (String, String, String) = row(
        &db,
        "SELECT first_seen_at, as_of, source FROM order_items WHERE item_uuid = ?1",
        [&item],
    );
    let first_event: String = value(
        &db,
        "SELECT received_at FROM item_events WHERE item_uuid = ?1 ORDER BY id LIMIT 1",
        [&item],
    );
    assert_eq!(
        first_seen, first_event,
        "an unreadable first_seen_at comes back from the item's first event"
    );
    assert_eq!(
        (as_of.as_str(), source.as_str()),
        ("2024-01-01T00:00:21.000Z", "webhook")
    );
    // The event log kept every observation.
    assert_eq!(
        app.count("item_events"),
        3 + 2 * unreadable.len() as i64 + 2
    );
}

/// A webhook with version 9223372036854775807 is accepted (it fits), but must not make every
/// later genuine webhook of the item stale forever: a lower version whose time leads the
/// stored one by more than skew_margin is believed (issue 11, suspected; README "The ordering
/// rule").
#[tokio::test]
async fn a_huge_bogus_version_does_not_make_later_webhooks_stale_forever() {
    let app = spawn_app().await;
    let (item, order) = (uuid(1, 60), uuid(2, 60));
    // `webhook(.., v, ..)` is updated v seconds after 2024-01-01T00:00:00Z.
    let mut bogus: Value = serde_json::from_str(&webhook(&item, &order, 30, "KO")).unwrap();
    bogus["order_item_version"] = i64::MAX.to_string().into();
    let version = |v: u64, status: &str| webhook(&item, &order, v, status);
    // The webhooks in the order they arrive, each with the outcome it must get.
    let steps = [
        ("the first webhook", version(22, "PENDING"), "applied"),
        ("the bogus version", bogus.to_string(), "applied"),
        (
            "a lower one within skew_margin (5 s)",
            version(34, "OK"),
            "stale",
        ),
        ("a lower one past skew_margin", version(40, "OK"), "applied"),
        (
            "versions count from it again",
            version(41, "REFUNDED"),
            "applied",
        ),
        ("an older one than that", version(40, "OK"), "stale"),
    ];
    for (step, body, outcome) in steps {
        assert_eq!(
            outcome_of(&app, body).await,
            (200, outcome.into()),
            "{step}"
        );
    }
    let (status, version): (String, i64) = row(
        &app.db(),
        "SELECT status, item_version FROM order_items WHERE item_uuid = ?1",
        [&item],
    );
    assert_eq!((status.as_str(), version), ("REFUNDED", 41));
}

/// A file of every earlier version keeps every row when the daemon migrates it: version 3's
/// two item columns start NULL, version 4's arrival numbers are filled in and link each item to
/// its order and each event to its item, and its items take webhooks as before.
#[tokio::test]
async fn older_databases_migrate_to_the_current_version_keeping_their_rows() {
    if sqlite_only("SQLite's schema versions 1 to 4") {
        return;
    }
    let shipped = [
        include_str!("../../src/store/schema.sql"),
        include_str!("../../src/store/schema_v2.sql"),
        include_str!("../../src/store/schema_v3.sql"),
    ];
    for from in 1..=shipped.len() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("orderwatch.db")).unwrap();
        for script in &shipped[..from] {
            conn.execute_batch(script).unwrap();
        }
        conn.pragma_update(None, "user_version", from as i64)
            .unwrap();
        let (item, order) = (uuid(1, 70), uuid(2, 70));
        let at = "2024-01-01T00:00:01.000Z";
        conn.execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES (?1, ?2)",
            [&order, at],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO order_items (item_uuid, order_uuid, status, item_version, status_version,
                                      as_of, as_of_source, source, first_seen_at, changed_at,
                                      updated_at, vouchers, product_title)
             VALUES (?1, ?2, 'PENDING', 1, 1, ?3, 'webhook', 'webhook', ?3, ?3, ?3, '[]', 'Tour')",
            [&item, &order, at],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                      received_at, outcome, payload)
             VALUES (?1, ?2, 'webhook', 'PENDING', 1, ?3, ?3, 'applied', '{}')",
            [&item, &order, at],
        )
        .unwrap();
        drop(conn);

        let app = spawn_app_in(dir, "", Arc::new(orderwatch::clock::SystemClock)).await;
        let db = app.db();
        let version: i64 = value(&db, "PRAGMA user_version", []);
        assert_eq!(version, orderwatch::store::SCHEMA_VERSION);
        let linked: i64 = value(
            &db,
            "SELECT count(*) FROM orders o
             JOIN order_items i ON i.order_seq = o.seq AND i.order_uuid = o.order_uuid
             JOIN item_events e ON e.item_seq = i.seq AND e.item_uuid = i.item_uuid
             WHERE o.seq IS NOT NULL AND i.seq IS NOT NULL",
            [],
        );
        assert_eq!(
            linked, 1,
            "from {from}: the arrival numbers link the stored rows"
        );
        let row: (String, Option<String>, Option<String>, String) = row(
            &db,
            "SELECT status, facts_as_of, missing_since, product_title FROM order_items",
            [],
        );
        assert_eq!(
            row,
            ("PENDING".into(), None, None, "Tour".into()),
            "from {from}"
        );
        assert_eq!(
            outcome_of(&app, webhook(&item, &order, 1, "PENDING")).await,
            (200, "duplicate".into()),
            "from {from}"
        );
        assert_eq!(
            outcome_of(&app, webhook(&item, &order, 2, "OK")).await,
            (200, "applied".into()),
            "from {from}"
        );
        let events: i64 = value(
            &app.db(),
            "SELECT count(*) FROM item_events e JOIN order_items i
               ON e.item_seq = i.seq AND e.item_uuid = i.item_uuid",
            [],
        );
        assert_eq!(
            events, 3,
            "from {from}: the new events name their item's seq"
        );
        app.stop().await;
    }
}
