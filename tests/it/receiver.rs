//! The webhook endpoint over real HTTP: what is stored, and every status it answers.

use base64::Engine;
use serde_json::Value;

use crate::helpers::db::{column, row, value};
use crate::helpers::{
    AUTH_CONFIG, GOOD_BASIC, fixture, spawn_app, spawn_app_in, spawn_app_with, uuid, webhook,
};

const EXAMPLE_ITEM: &str = "11045e18-e3ca-42e1-acb4-0d5be75036fd";
const EXAMPLE_ORDER: &str = "8e9e5c6e-ea7d-4934-8753-f00954f30d00";

async fn json(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn documented_example_is_stored_exactly() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let response = app
        .webhook_request()
        .header("authorization", GOOD_BASIC)
        .body(fixture("webhooks/documented-example.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        json(response).await,
        serde_json::json!({ "outcome": "applied" })
    );

    let db = app.db();
    let item: (
        String,
        String,
        String,
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
    ) = db
        .query_row(
            "SELECT item_uuid, order_uuid, status, item_version, status_version, item_created,
                    item_updated, as_of, as_of_source, source FROM order_items",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            },
        )
        .unwrap();
    let at = "2018-12-10T13:12:40.000Z".to_string();
    assert_eq!(
        item,
        (
            EXAMPLE_ITEM.into(),
            EXAMPLE_ORDER.into(),
            "OK".into(),
            22,
            22,
            at.clone(),
            at.clone(),
            at.clone(),
            "webhook".into(),
            "webhook".into()
        )
    );
    let order: (String, i64, String, String) = row(
        &db,
        "SELECT order_id, order_version, order_created, order_updated FROM orders WHERE order_uuid = ?1",
        [EXAMPLE_ORDER],
    );
    assert_eq!(order, ("13459345".into(), 16, at.clone(), at.clone()));
    let event: (String, String, i64, String, String) = row(
        &db,
        "SELECT source, status, item_version, outcome, payload FROM item_events",
        [],
    );
    let raw = String::from_utf8(fixture("webhooks/documented-example.json")).unwrap();
    assert_eq!(
        event,
        ("webhook".into(), "OK".into(), 22, "applied".into(), raw)
    );
}

#[tokio::test]
async fn duplicates_and_out_of_order_versions_are_harmless() {
    let app = spawn_app().await;
    let (item, order) = (uuid(1, 1), uuid(2, 1));
    let mut outcomes = Vec::new();
    for (version, status) in [
        (3, "OK"),
        (3, "OK"),
        (1, "PENDING"),
        (2, "PENDING"),
        (5, "REFUNDED"),
        (3, "OK"),
    ] {
        let response = app
            .post_webhook(webhook(&item, &order, version, status))
            .await;
        assert_eq!(response.status(), 200);
        outcomes.push(json(response).await["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        outcomes,
        ["applied", "duplicate", "stale", "stale", "applied", "stale"]
    );
    let (status, version): (String, i64) = row(
        &app.db(),
        "SELECT status, item_version FROM order_items WHERE item_uuid = ?1",
        [&item],
    );
    assert_eq!((status.as_str(), version), ("REFUNDED", 5));
    assert_eq!(app.count("item_events"), 6, "every observation is kept");
    assert_eq!(app.count("order_items"), 1);
    let order_version: i64 = value(&app.db(), "SELECT order_version FROM orders", []);
    assert_eq!(
        order_version, 5,
        "order_version follows the highest webhook"
    );
}

#[tokio::test]
async fn conflicting_copy_of_a_version_keeps_the_row_and_marks_a_repoll() {
    let app = spawn_app().await;
    let (item, order) = (uuid(1, 2), uuid(2, 2));
    app.post_webhook(webhook(&item, &order, 4, "OK")).await;
    let response = app.post_webhook(webhook(&item, &order, 4, "KO")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["outcome"], "conflict");
    let (status, repoll): (String, Option<String>) = row(
        &app.db(),
        "SELECT i.status, o.repoll_at FROM order_items i JOIN orders o USING (order_uuid)",
        [],
    );
    assert_eq!(status, "OK");
    assert!(repoll.is_some(), "a conflict asks for a poll to settle it");
}

#[tokio::test]
async fn accepts_bare_numbers_rfc3339_times_and_unknown_statuses() {
    let app = spawn_app().await;
    let response = app
        .post_webhook(fixture("webhooks/bare-numbers.json"))
        .await;
    assert_eq!(json(response).await["outcome"], "applied");
    let response = app
        .post_webhook(fixture("webhooks/unknown-status-rfc3339.json"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["outcome"], "applied");
    let (status, version, updated): (String, i64, String) = row(
        &app.db(),
        "SELECT status, item_version, item_updated FROM order_items",
        [],
    );
    assert_eq!((status.as_str(), version), ("ON_HOLD", 23));
    assert_eq!(updated, "2018-12-10T13:20:00.000Z");
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_field_and_are_kept_as_rejected() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let cases = [
        ("malformed-json.json", "body"),
        ("not-an-object.json", "body"),
        ("invalid-utf8.json", "body"),
        ("missing-order-item-uuid.json", "order_item_uuid"),
        ("missing-order-item-status.json", "order_item_status"),
        ("null-order-uuid.json", "order_uuid"),
        ("version-not-numeric.json", "order_item_version"),
        ("version-negative.json", "order_item_version"),
        ("version-fraction.json", "order_item_version"),
        ("version-above-i64.json", "order_item_version"),
        ("version-overflows-u64.json", "order_item_version"),
        ("order-version-empty.json", "order_version"),
        ("order-id-not-digits.json", "order_id"),
        ("timestamp-unparseable.json", "order_item_updated"),
        ("timestamp-negative-year.json", "order_item_updated"),
        ("order-uuid-not-a-uuid.json", "order_uuid"),
        ("status-empty.json", "order_item_status"),
        ("status-not-a-string.json", "order_item_status"),
    ];
    let on_disk = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/webhooks/bad"
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "json")
    })
    .count();
    assert_eq!(on_disk, cases.len(), "every bad fixture has a case here");
    for (file, field) in cases {
        let response = app
            .webhook_request()
            .header("authorization", GOOD_BASIC)
            .body(fixture(&format!("webhooks/bad/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{file}");
        let body = json(response).await;
        assert_eq!(body["field"], field, "{file}: {body}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{file}: {body}"
        );
    }
    assert_eq!(app.count("order_items"), 0);
    assert_eq!(app.count("item_events"), 0);
    assert_eq!(app.count("rejected_webhooks"), cases.len() as i64);
    let (field, body): (String, Vec<u8>) = row(
        &app.db(),
        "SELECT field, body FROM rejected_webhooks ORDER BY id LIMIT 1",
        [],
    );
    assert_eq!(
        (field.as_str(), body),
        ("body", fixture("webhooks/bad/malformed-json.json"))
    );
}

#[tokio::test]
async fn rejected_webhooks_are_pruned_to_the_configured_count() {
    let app = spawn_app_with("[store]\nrejected_keep = 3\n").await;
    for n in 0..7 {
        let response = app.post_webhook(format!("{{\"n\": {n}}}")).await;
        assert_eq!(response.status(), 400);
    }
    let kept: Vec<Vec<u8>> = column(
        &app.db(),
        "SELECT body FROM rejected_webhooks ORDER BY id",
        [],
    );
    assert_eq!(
        kept,
        [
            b"{\"n\": 4}".to_vec(),
            b"{\"n\": 5}".to_vec(),
            b"{\"n\": 6}".to_vec()
        ]
    );
}

#[tokio::test]
async fn credentials_are_required_and_checked() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let engine = base64::engine::general_purpose::STANDARD;
    let wrong = [
        None,
        Some("Basic".to_owned()),
        Some("Basic %%%".to_owned()),
        Some(format!("Basic {}", engine.encode("JohnSmith"))),
        Some(format!("Basic {}", engine.encode("JohnSmith:Swordfisi"))),
        Some(format!("Basic {}", engine.encode("JohnSmitH:Swordfish"))),
        Some("Bearer Sm9oblNtaXRoOlN3b3JkZmlzaA==".to_owned()),
    ];
    for header in wrong {
        let mut request = app
            .webhook_request()
            .body(fixture("webhooks/documented-example.json"));
        if let Some(header) = &header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{header:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"orderwatch\""
        );
    }
    assert_eq!(app.count("order_items"), 0);
    assert_eq!(
        app.count("rejected_webhooks"),
        0,
        "unauthenticated bodies are not kept"
    );
}

#[tokio::test]
async fn allowlist_refuses_other_peers_and_believes_only_trusted_proxies() {
    let app = spawn_app_with("[server]\nallow_ips = [\"203.0.113.0/24\"]\n").await;
    let body = fixture("webhooks/documented-example.json");
    let response = app.post_webhook(body.clone()).await;
    assert_eq!(response.status(), 403, "127.0.0.1 is not allowed");
    let spoofed = app
        .webhook_request()
        .header("x-forwarded-for", "203.0.113.5")
        .body(body.clone());
    assert_eq!(
        spoofed.send().await.unwrap().status(),
        403,
        "an untrusted peer's X-Forwarded-For is ignored"
    );

    let app = spawn_app_with(
        "[server]\nallow_ips = [\"203.0.113.0/24\", \"2001:db8::/32\"]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    let via_proxy = |xff: &'static str| {
        app.webhook_request()
            .header("x-forwarded-for", xff)
            .body(body.clone())
    };
    assert_eq!(via_proxy("203.0.113.5").send().await.unwrap().status(), 200);
    assert_eq!(
        via_proxy("2001:db8::7, 127.0.0.1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        via_proxy("198.51.100.1").send().await.unwrap().status(),
        403
    );
    assert_eq!(via_proxy("garbage").send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn routing_methods_media_types_and_size_limits() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1024\n").await;
    let example = fixture("webhooks/documented-example.json");

    let response = app
        .client
        .post(app.url("/elsewhere"))
        .body(example.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = app.client.get(app.url(&app.path)).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");

    let response = app
        .client
        .post(app.url(&app.path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(example.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    for accepted in [
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/vnd.musement+json",
    ] {
        let response = app
            .client
            .post(app.url(&app.path))
            .header("content-type", accepted)
            .body(example.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accepted}");
    }
    let response = app
        .client
        .post(app.url(&app.path))
        .body(example.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "no Content-Type at all is accepted");

    let response = app.post_webhook(vec![b' '; 1025]).await;
    assert_eq!(response.status(), 413, "declared length over the limit");
    let mut chunked = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.path
    )
    .into_bytes();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("200\r\n{}\r\n", " ".repeat(512)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(app.addr, &chunked).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked body over the limit: {answer}"
    );
    assert_eq!(app.count("rejected_webhooks"), 0);
    assert_eq!(
        app.count("item_events"),
        4,
        "only the four accepted posts were stored"
    );
}

/// Writes `request` on a fresh connection and reads until the server closes it.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    );
    read.await.expect("the server closed the connection").ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// `/healthz` and `/readyz` answer 200, and "ready" was earned: the readiness check wrote the
/// heartbeat row (on the app's clock) through the writer.
#[tokio::test]
async fn health_and_readiness() {
    let started: chrono::DateTime<chrono::Utc> = "2031-02-03T04:05:06Z".parse().unwrap();
    let clock = std::sync::Arc::new(orderwatch::clock::ManualClock::new(started));
    let app = spawn_app_in(tempfile::tempdir().unwrap(), "", clock).await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "ok");
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "ok");
    let heartbeat: String = app
        .db()
        .query_row("SELECT at FROM heartbeat", [], |r| r.get(0))
        .expect("a readiness check writes the heartbeat row");
    assert_eq!(heartbeat, orderwatch::clock::to_db_text(started));
}

#[tokio::test]
async fn slow_bodies_get_408_and_slow_headers_are_cut_off() {
    let app =
        spawn_app_with("[server]\nrequest_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"\n")
            .await;
    let partial = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"order_id\"",
        app.path
    );
    let answer = raw_exchange(app.addr, partial.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers that never finish: raw_exchange fails unless the server closes the connection.
    // (10 s, more than 30 times `header_read_timeout`; hyper's own default would be 30 s.)
    // Cut off, not answered: at most a 408, never a response to a request that never came.
    let answer = raw_exchange(app.addr, b"POST /webhooks/musement HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(app.count("item_events"), 0);
}
