//! What the real daemon logs about hostile input.

use serde_json::{Value, json};

use crate::helpers::{Daemon, uuid, valid_webhook, webhook_at};

/// The daemon's config: loopback, JSON log.
const JSON_DAEMON: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n";

#[tokio::test]
async fn a_far_future_timestamp_is_stored_clamped_and_logged() {
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), JSON_DAEMON);
    assert_eq!(
        daemon
            .post_webhook(webhook_at(1, "9999-12-31T23:59:59+0000"))
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
            .post_webhook(webhook_at(1, "0001-01-01T00:00:00+0000"))
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
    let mut body: Value = serde_json::from_str(&valid_webhook(1)).unwrap();
    body["order_item_status"] = json!(format!("OK\n{forged}"));
    let status = daemon.post_webhook(body.to_string()).await;
    let lines = daemon.stop();
    assert!(
        status == 400 || lines.iter().all(|l| !l.starts_with("2099-01-01")),
        "answered {status}; a forged line reached the log: {lines:#?}"
    );
}
