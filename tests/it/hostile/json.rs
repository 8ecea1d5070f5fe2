//! JSON shapes: escapes that name no character, nesting, duplicate keys, bare numbers, empty
//! strings and control characters.

use serde_json::Value;

use crate::helpers::db::{rows, value};
use crate::helpers::wire::{exchange, post};
use crate::helpers::{spawn_app_with, uuid, valid_webhook, webhook_with_field};

#[tokio::test]
async fn invalid_unicode_escapes_inside_json_strings_get_400() {
    // Raw invalid UTF-8 inside a string is the `invalid-utf8.json` fixture (receiver.rs); here
    // the same through escapes that name no character.
    let app = spawn_app_with("").await;
    for (case, status) in [
        ("lone high surrogate", r#""\ud800""#),
        ("lone low surrogate", r#""\udc00OK""#),
        ("truncated escape", r#""\u00""#),
    ] {
        let body = webhook_with_field("order_item_status", status);
        let (answers, _) = exchange(app.addr, &post(&body, "Connection: close\r\n")).await;
        assert_eq!(answers.first().map(|a| a.status), Some(400), "{case}");
        assert_eq!(
            answers[0].json()["field"],
            "body",
            "{case}: {}",
            answers[0].body
        );
    }
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), 3);
}

#[tokio::test]
async fn deeply_nested_json_gets_400_and_the_server_stays_up() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1048576\n").await;
    let deep = 100_000;
    let cases = [
        ("100k unclosed [", "[".repeat(deep)),
        (
            "100k balanced []",
            format!("{}{}", "[".repeat(deep), "]".repeat(deep)),
        ),
        (
            "100k nested objects",
            format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep)),
        ),
        (
            "a valid webhook with a 100k-deep extra field",
            valid_webhook(1).replacen(
                '{',
                &format!("{{\"extra\":{}{},", "[".repeat(deep), "]".repeat(deep)),
                1,
            ),
        ),
    ];
    for (case, body) in &cases {
        let response = app.post_webhook(body.clone()).await;
        assert_eq!(response.status(), 400, "{case}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], "body", "{case}: {answer}");
        assert!(
            answer["reason"]
                .as_str()
                .unwrap_or("")
                .contains("recursion"),
            "{case}: {answer}"
        );
    }
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), cases.len() as i64);
    // No stack overflow took anything down: the next webhook is stored.
    assert_eq!(app.post_webhook(valid_webhook(2)).await.status(), 200);
}

#[tokio::test]
async fn duplicate_json_keys_keep_the_last_value_and_the_raw_body() {
    // serde_json keeps the last of duplicate keys. Accepted: only an authenticated sender can
    // post, Musement never repeats a key, and item_events keeps the body exactly as received.
    let app = spawn_app_with("").await;
    let (first, second) = (uuid(1, 10), uuid(1, 11));
    let body = valid_webhook(1)
        .replacen(
            "\"order_item_status\":\"PENDING\"",
            "\"order_item_status\":\"PENDING\",\"order_item_status\":\"OK\"",
            1,
        )
        .replacen(
            &format!("\"order_item_uuid\":\"{}\"", uuid(1, 1)),
            &format!("\"order_item_uuid\":\"{first}\",\"order_item_uuid\":\"{second}\""),
            1,
        );
    assert!(body.matches("order_item_status").count() == 2, "{body}");
    assert!(body.matches("order_item_uuid").count() == 2, "{body}");
    let response = app.post_webhook(body.clone()).await;
    assert_eq!(response.status(), 200);
    let stored: Vec<(String, String)> =
        rows(&app.db(), "SELECT item_uuid, status FROM order_items", []);
    assert_eq!(stored, [(second.clone(), "OK".to_owned())], "the last wins");
    let payload: String = value(&app.db(), "SELECT payload FROM item_events", []);
    assert_eq!(payload, body, "the event keeps both copies, as received");
}

#[tokio::test]
async fn huge_and_negative_bare_numbers_in_versions_and_ids_get_400() {
    // Fixtures in receiver.rs cover `-3` for order_item_version and too-large versions sent as
    // strings; these are the bare-number forms and the other numeric fields.
    let app = spawn_app_with("").await;
    // (field, bare number, the field the 400 names); 1e400 is out of f64 range: not JSON serde
    // accepts, so the 400 names the body.
    let mut cases = vec![("order_item_version", "1e400", "body")];
    let named_after_their_field: [(&str, &[&str]); 3] = [
        (
            "order_item_version",
            &[
                "18446744073709551616", // u64::MAX + 1
                "99999999999999999999999999999999999999",
                "9223372036854775808", // i64::MAX + 1
                "1e3",
                "-0", // a float to serde_json
                "-1",
                "-9223372036854775809",
            ],
        ),
        ("order_version", &["18446744073709551616", "-1"]),
        ("order_id", &["18446744073709551616", "-5"]),
    ];
    for (field, numbers) in named_after_their_field {
        cases.extend(numbers.iter().map(|number| (field, *number, field)));
    }
    for &(field, number, named) in &cases {
        let body = webhook_with_field(field, number);
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 400, "{field} = {number}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], named, "{field} = {number}: {answer}");
    }
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), cases.len() as i64);

    // The largest version that fits is stored exactly.
    let response = app
        .post_webhook(webhook_with_field(
            "order_item_version",
            "9223372036854775807",
        ))
        .await;
    assert_eq!(response.status(), 200);
    let version: i64 = value(&app.db(), "SELECT item_version FROM order_items", []);
    assert_eq!(version, i64::MAX);
}

#[tokio::test]
async fn an_empty_string_in_any_field_gets_400_naming_it() {
    let app = spawn_app_with("").await;
    let fields = [
        "order_id",
        "order_uuid",
        "order_created",
        "order_updated",
        "order_version",
        "order_item_uuid",
        "order_item_created",
        "order_item_updated",
        "order_item_version",
        "order_item_status",
    ];
    for field in fields {
        let response = app.post_webhook(webhook_with_field(field, "\"\"")).await;
        assert_eq!(response.status(), 400, "{field}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["field"], field, "{answer}");
        if field != "order_item_status" {
            // Whitespace is no UUID, number or time either.
            let response = app.post_webhook(webhook_with_field(field, "\" \"")).await;
            assert_eq!(response.status(), 400, "{field} = \" \"");
        }
    }
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), 2 * fields.len() as i64 - 1);
}

#[tokio::test]
async fn a_blank_or_control_character_status_gets_400() {
    let app = spawn_app_with("").await;
    for status in [" ", "\\t", "OK\\n", "OK\\u0000", "\\u001b[31mOK"] {
        let response = app
            .post_webhook(webhook_with_field(
                "order_item_status",
                &format!("\"{status}\""),
            ))
            .await;
        assert_eq!(response.status(), 400, "order_item_status = {status:?}");
    }
    app.assert_nothing_stored();
}
