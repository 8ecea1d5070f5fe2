//! Durability through the HTTP path: commits under concurrency, storage faults, restarts, and
//! time from the injected clock.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderwatch::clock::ManualClock;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_in, spawn_app_with, uuid, webhook};

#[tokio::test]
async fn every_acknowledged_concurrent_webhook_is_in_the_table() {
    for config in ["", "[store]\nmax_batch = 1\n"] {
        let app = Arc::new(spawn_app_with(config).await);
        const TASKS: u64 = 50;
        const PER_TASK: u64 = 10;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..PER_TASK {
                    // Half the items are posted by two tasks with different versions.
                    let item = uuid(1, (task * PER_TASK + n) % (TASKS * PER_TASK / 2));
                    let version = task + 1;
                    let body = webhook(&item, &uuid(2, task), version, "OK");
                    let response = app.post_webhook(body).await;
                    assert_eq!(response.status(), 200);
                    acknowledged.push((item, version as i64));
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
        for (item, version) in &acknowledged {
            let stored: i64 = db
                .query_row(
                    "SELECT count(*) FROM item_events WHERE item_uuid = ?1 AND item_version = ?2",
                    rusqlite::params![item, version],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(stored, 1, "{item} v{version} was acknowledged ({config:?})");
            let highest: i64 = db
                .query_row(
                    "SELECT item_version FROM order_items WHERE item_uuid = ?1",
                    [item],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(highest >= *version);
        }
        assert_eq!(app.count("item_events"), (TASKS * PER_TASK) as i64);
        assert_eq!(app.count("order_items"), (TASKS * PER_TASK / 2) as i64);
    }
}

#[tokio::test]
async fn a_locked_database_gets_503_and_recovers_without_restart() {
    let app = spawn_app_with("[database]\nbusy_timeout = \"200ms\"\n").await;
    let (item, order) = (uuid(1, 9), uuid(2, 9));

    let other_process = app.db();
    other_process.execute_batch("BEGIN EXCLUSIVE").unwrap();
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
    other_process.execute_batch("ROLLBACK").unwrap();

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
    let (as_of, first_seen, changed): (String, String, String) = db
        .query_row(
            "SELECT as_of, first_seen_at, changed_at FROM order_items",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(as_of, "2030-01-01T01:00:00.000Z");
    assert_eq!(first_seen, "2030-01-01T00:00:00.000Z");
    assert_eq!(changed, "2030-01-01T00:00:00.000Z");
    let received: Vec<String> = db
        .prepare("SELECT received_at FROM item_events ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        received,
        ["2030-01-01T00:00:00.000Z", "2030-01-01T00:10:00.000Z"]
    );
    let repoll_at: String = db
        .query_row("SELECT repoll_at FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        repoll_at, "2030-01-01T00:10:05.000Z",
        "re-poll after skew_margin (5s)"
    );
}
