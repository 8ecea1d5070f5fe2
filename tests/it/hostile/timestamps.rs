//! Timestamps far from now, and odd ones: refused, or stored readably, the future clamped.

use serde_json::{Value, json};

use crate::helpers::db::{row, value};
use crate::helpers::{spawn_app_with, uuid, valid_webhook, webhook, webhook_at};

#[tokio::test]
async fn timestamps_far_in_the_past_or_future_are_stored_and_the_future_is_clamped() {
    let app = spawn_app_with("").await;
    let before = chrono::Utc::now();
    for (n, at) in [
        (1, "0001-01-01T00:00:00+0000"),
        (2, "1970-01-01T00:00:00+0000"),
        (3, "9999-12-31T23:59:59+0000"),
        (4, "2999-01-01T00:00:00Z"),
    ] {
        let response = app.post_webhook(webhook_at(n, at)).await;
        assert_eq!(response.status(), 200, "{at}");
    }
    let after = chrono::Utc::now();
    let times = |n: u64| -> (String, String, String) {
        row(
            &app.db(),
            "SELECT item_updated, item_created, as_of FROM order_items WHERE item_uuid = ?1",
            [uuid(1, n)],
        )
    };
    let past = "0001-01-01T00:00:00.000Z".to_owned();
    assert_eq!(
        times(1),
        (past.clone(), past.clone(), past),
        "stored as sent"
    );
    let epoch = "1970-01-01T00:00:00.000Z".to_owned();
    assert_eq!(times(2), (epoch.clone(), epoch.clone(), epoch));
    for (n, sent) in [
        (3, "9999-12-31T23:59:59.000Z"),
        (4, "2999-01-01T00:00:00.000Z"),
    ] {
        let (updated, created, as_of) = times(n);
        assert_eq!((updated.as_str(), created.as_str()), (sent, sent));
        // The rule's time is clamped to received + 1 h so the row cannot freeze.
        let as_of: chrono::DateTime<chrono::Utc> = as_of.parse().unwrap();
        let hour = chrono::Duration::hours(1);
        assert!(
            as_of >= before + hour - chrono::Duration::seconds(1) && as_of <= after + hour,
            "{sent}: as_of {as_of} is not received + 1 h"
        );
    }
    let order_updated: String = value(
        &app.db(),
        "SELECT order_updated FROM orders WHERE order_uuid = ?1",
        [uuid(2, 3)],
    );
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
        let mut body: Value = serde_json::from_str(&valid_webhook(n)).unwrap();
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
