//! What the real daemon logs about hostile input.

use serde_json::{Value, json};

use crate::helpers::db::value;
use crate::helpers::{Daemon, uuid, valid_webhook, webhook_at};

/// The daemon's config: loopback, JSON log.
const JSON_DAEMON: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n";

/// A timestamp far from now is stored (the future one clamped) and logged once, at WARN, in a
/// line naming the item.
#[tokio::test]
async fn a_far_future_or_far_past_timestamp_is_stored_and_logged_once() {
    let item = uuid(1, 1);
    // (row, the timestamp, what the warning says besides the item)
    let rows = [
        (
            "far future",
            "9999-12-31T23:59:59+0000",
            "far in the future",
        ),
        ("far past", "0001-01-01T00:00:00+0000", item.as_str()),
    ];
    for (name, at, says) in rows {
        let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), JSON_DAEMON);
        assert_eq!(daemon.post_webhook(webhook_at(1, at)).await, 200, "{name}");
        let lines = daemon.stop();
        let warned: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("\"WARN\"") && l.contains(says))
            .collect();
        assert_eq!(warned.len(), 1, "{name}: {lines:#?}");
        assert!(warned[0].contains(&item), "{name}: {}", warned[0]);
    }
}

/// A status with a newline is refused (400 naming the field, nothing stored, the body kept in
/// `rejected_webhooks`), so it never reaches a log line; the request and the rejection are each
/// logged on one line of their own.
#[tokio::test]
async fn a_status_with_a_newline_is_refused_and_cannot_forge_a_log_line() {
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n",
    );
    let forged = "2099-01-01T00:00:00.000000Z  INFO orderwatch::receiver: request method=POST \
                  status=200 forged=yes";
    let mut body: Value = serde_json::from_str(&valid_webhook(1)).unwrap();
    body["order_item_status"] = json!(format!("OK\n{forged}"));
    let response = daemon
        .webhook_request()
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    let lines = daemon.stop();
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "order_item_status", "{answer}");
    assert!(
        lines.iter().all(|l| !l.starts_with("2099-01-01")),
        "a forged line reached the log: {lines:#?}"
    );
    let rejected: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("rejected webhook"))
        .collect();
    assert_eq!(rejected.len(), 1, "{lines:#?}");
    assert!(rejected[0].contains("order_item_status"), "{}", rejected[0]);

    let db = daemon.db();
    let count = |table: &str| -> i64 { value(&db, &format!("SELECT count(*) FROM {table}"), []) };
    assert_eq!(count("order_items"), 0, "nothing stored");
    assert_eq!(count("item_events"), 0, "nothing stored");
    assert_eq!(
        count("rejected_webhooks"),
        1,
        "the body is kept for operators"
    );
}
