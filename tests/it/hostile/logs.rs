//! What the real daemon logs about hostile input.

use serde_json::{Value, json};

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
