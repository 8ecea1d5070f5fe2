//! The partner API (`[api]`): its routes on both engines, bearer tokens and their scopes,
//! problem+json errors, and its metrics; the app in this process, the API on `127.0.0.1:0`.

use std::sync::Arc;

use orderwatch::clock::SystemClock;
use orderwatch::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::app::{TestApp, spawn_app_in};
use crate::helpers::{uuid, webhook};

/// Tokens of the tests: a writer, its replacement during a rotation, and a reader.
const WRITER: &str = "w-1f0c8e6a2d";
const NEXT_WRITER: &str = "w-77ab90c3e5";
const READER: &str = "r-5d2e4b9a10";

/// `[api]` on loopback with the three tokens, each from a file beside the config.
const WITH_TOKENS: &str = r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "booking-system"
token_file = "writer.token"
scope = "write"
[[api.tokens]]
name = "booking-system-next"
token_file = "next-writer.token"
scope = "write"
[[api.tokens]]
name = "dashboard"
token_file = "reader.token"
"#;

/// The app with [`WITH_TOKENS`], the token files written first.
async fn app_with_tokens() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    for (file, token) in [
        ("writer.token", WRITER),
        ("next-writer.token", NEXT_WRITER),
        ("reader.token", READER),
    ] {
        std::fs::write(dir.path().join(file), format!("{token}\n")).unwrap();
    }
    spawn_app_in(dir, WITH_TOKENS, Arc::new(SystemClock)).await
}

/// The app with `[api]` on loopback and no token: every route open.
async fn open_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn_app_in(
        dir,
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        Arc::new(SystemClock),
    )
    .await
}

/// A request to the API of `app`, with `token` as bearer when given.
fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let url = format!(
        "http://{}{path}",
        app.api_addr.expect("[api] listen is set")
    );
    let request = app.client.request(method, url);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Sends it; the status, the content type and the body as JSON (`Null` when empty).
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String, Value) {
    let response = request(app, method, path, token).send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, content_type, body)
}

/// Asserts a problem+json answer with `status` whose detail contains `words`.
fn assert_problem(answer: &(StatusCode, String, Value), status: u16, words: &str) {
    let (got, content_type, body) = answer;
    assert_eq!(got.as_u16(), status, "{body}");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["status"], status, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(words), "detail {detail:?} lacks {words:?}");
}

#[tokio::test]
async fn every_route_needs_a_configured_token_and_writes_need_scope_write() {
    use reqwest::Method;
    let app = app_with_tokens().await;
    let order = uuid(2, 1);
    let watch = format!("/v1/orders/{order}/watch");

    let none = call(&app, Method::GET, "/v1/stats", None).await;
    assert_problem(&none, 401, "no Authorization header");
    let response = request(&app, Method::GET, "/v1/stats", None)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"orderwatch\""
    );
    let wrong = call(&app, Method::GET, "/v1/stats", Some("w-1f0c8e6a2e")).await;
    assert_problem(&wrong, 401, "not one of [[api.tokens]]");
    let basic = request(&app, Method::GET, "/v1/stats", None)
        .basic_auth("booking-system", Some(WRITER))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "Basic is not Bearer");
    // Unknown routes too: nothing is served to a caller without a token.
    let unknown = call(&app, Method::GET, "/v1/nothing", None).await;
    assert_problem(&unknown, 401, "no Authorization header");

    let (status, _, _) = call(&app, Method::GET, "/v1/stats", Some(READER)).await;
    assert_eq!(status, 200, "a read token reads");
    let forbidden = call(&app, Method::PUT, &watch, Some(READER)).await;
    assert_problem(&forbidden, 403, "\"dashboard\" has scope read");

    // Rotation: the old and the new writer token both work until the old one is removed.
    let (status, _, body) = call(&app, Method::PUT, &watch, Some(WRITER)).await;
    assert_eq!(
        (status.as_u16(), &body["new"]),
        (201, &Value::Bool(true)),
        "{body}"
    );
    let (status, _, body) = call(&app, Method::PUT, &watch, Some(NEXT_WRITER)).await;
    assert_eq!(
        (status.as_u16(), &body["new"]),
        (200, &Value::Bool(false)),
        "{body}"
    );

    let metrics = app.metrics_text().await;
    for line in [
        "orderwatch_api_requests_total{route=\"/v1/stats\",code=\"401\"} 4",
        "orderwatch_api_requests_total{route=\"/v1/stats\",code=\"200\"} 1",
        "orderwatch_api_requests_total{route=\"/v1/orders/{order_uuid}/watch\",code=\"403\"} 1",
        "orderwatch_api_requests_total{route=\"/v1/orders/{order_uuid}/watch\",code=\"201\"} 1",
        "orderwatch_api_requests_total{route=\"unmatched\",code=\"401\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn orders_and_items_read_as_show_reads_them() {
    use reqwest::Method;
    let app = open_app().await;
    let (order, item) = (uuid(2, 7), uuid(1, 7));

    let (status, _, body) = call(
        &app,
        Method::PUT,
        &format!("/v1/orders/{order}/watch"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = call(&app, Method::GET, &format!("/v1/orders/{order}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["order"], order);
    assert_eq!(body["order"]["watched"], true);
    assert_eq!(body["items"], Value::Array(Vec::new()));

    for (version, status) in [(1, "PENDING"), (2, "OK")] {
        let answer = app
            .post_webhook(webhook(&item, &order, version, status))
            .await;
        assert_eq!(answer.status(), 200);
    }
    let (status, _, body) = call(&app, Method::GET, &format!("/v1/items/{item}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item"]["item"], item);
    assert_eq!(
        (&body["item"]["status"], &body["item"]["version"]),
        (&Value::from("OK"), &Value::from(2))
    );
    assert_eq!(body["order"]["order"], order);
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{body}");
    assert_eq!(history[1]["outcome"], "applied");
    let why = history[1]["why"].as_str().unwrap();
    assert!(why.starts_with("set the status"), "{why}");

    let (_, _, body) = call(&app, Method::GET, &format!("/v1/orders/{order}"), None).await;
    assert_eq!(body["items"][0]["item"], item, "{body}");

    // An item's UUID is no order, an order's no item; unknown and malformed ones.
    let not_order = call(&app, Method::GET, &format!("/v1/orders/{item}"), None).await;
    assert_problem(&not_order, 404, &format!("no order {item}"));
    let not_item = call(&app, Method::GET, &format!("/v1/items/{order}"), None).await;
    assert_problem(&not_item, 404, &format!("no item {order}"));
    let unknown = uuid(9, 9);
    let missing = call(&app, Method::GET, &format!("/v1/items/{unknown}"), None).await;
    assert_problem(&missing, 404, &unknown);
    let malformed = call(&app, Method::GET, "/v1/items/11045e18", None).await;
    assert_problem(&malformed, 400, "item_uuid: \"11045e18\" is not a UUID");
    let bad_watch = call(&app, Method::PUT, "/v1/orders/not-a-uuid/watch", None).await;
    assert_problem(&bad_watch, 400, "order_uuid: \"not-a-uuid\" is not a UUID");
    let undecodable = call(&app, Method::GET, "/v1/items/%FF", None).await;
    assert_problem(&undecodable, 400, "item_uuid: ");
    let no_route = call(&app, Method::GET, "/v2/items", None).await;
    assert_problem(&no_route, 404, "no such route");
    let wrong_method = call(&app, Method::POST, "/v1/stats", None).await;
    assert_problem(&wrong_method, 405, "does not take that method");
}

#[tokio::test]
async fn stats_answers_what_the_stats_command_prints() {
    use reqwest::Method;
    let app = open_app().await;
    let answer = app
        .post_webhook(webhook(&uuid(1, 3), &uuid(2, 3), 1, "PENDING"))
        .await;
    assert_eq!(answer.status(), 200);
    let (status, content_type, body) = call(&app, Method::GET, "/v1/stats", None).await;
    assert_eq!(
        (status.as_u16(), content_type.as_str()),
        (200, "application/json")
    );
    let output = crate::helpers::cli(
        &app.dir.path().join("config.toml"),
        &["stats", "--format", "json"],
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys = |value: &Value| -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&body), keys(&printed));
    assert_eq!(body["items_by_status"], printed["items_by_status"]);
    assert_eq!(body["reconciler"], printed["reconciler"]);
}

#[test]
fn an_api_beyond_loopback_needs_tokens_and_each_token_one_source() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        Config::from_toml(text, &dir.path().join("config.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let error = load("[api]\nlisten = \"0.0.0.0:8081\"\n").unwrap_err();
    assert!(
        error.contains("api.listen") && error.contains("needs [[api.tokens]]"),
        "{error}"
    );
    let both = "[api]\nlisten = \"127.0.0.1:8081\"\n[[api.tokens]]\nname = \"a\"\n\
                token_env = \"A\"\ntoken_file = \"a.token\"\n";
    let error = load(both).unwrap_err();
    assert!(
        error.contains("api.tokens[0]") && error.contains("exactly one of token_env, token_file"),
        "{error}"
    );
    let twice = "[api]\nlisten = \"127.0.0.1:8081\"\n[[api.tokens]]\nname = \"a\"\n\
                 token_file = \"a.token\"\n[[api.tokens]]\nname = \"a\"\ntoken_file = \"b.token\"\n";
    std::fs::write(dir.path().join("a.token"), "tok-secret-aaa").unwrap();
    std::fs::write(dir.path().join("b.token"), "tok-secret-bbb").unwrap();
    let error = load(twice).unwrap_err();
    assert!(
        error.contains("api.tokens[1].name") && error.contains("names two tokens"),
        "{error}"
    );
    assert!(!error.contains("tok-secret"), "no token in errors: {error}");
}

/// Pages of `GET /v1/items` while webhooks keep changing and adding items: every item stored
/// before the first page is on exactly one page, in arrival order, whatever changed
/// meanwhile; the last page says so with a null `next_cursor`.
#[tokio::test]
async fn item_pages_skip_and_repeat_nothing_while_webhooks_arrive() {
    use reqwest::Method;
    let app = open_app().await;
    let before: Vec<String> = (0..25u64).map(|n| uuid(1, 100 + n)).collect();
    for (n, item) in before.iter().enumerate() {
        let order = uuid(2, 100 + n as u64);
        let answer = app.post_webhook(webhook(item, &order, 1, "PENDING")).await;
        assert_eq!(answer.status(), 200);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/items?limit=10&cursor={cursor}"),
            None => "/v1/items?limit=10".to_owned(),
        };
        let (status, _, body) = call(&app, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        seen.extend(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["item"].as_str().unwrap().to_owned()),
        );
        // Between pages: an item already read changes, one not read yet changes, one is new.
        let n = pages as u64;
        for (item, order, version) in [
            (before[0].clone(), uuid(2, 100), 1 + n),
            (before[24].clone(), uuid(2, 124), 1 + n),
            (uuid(1, 500 + n), uuid(2, 500 + n), 1),
        ] {
            let answer = app
                .post_webhook(webhook(&item, &order, version, "OK"))
                .await;
            assert_eq!(answer.status(), 200);
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 20, "pages never end: {body}");
    }
    let original: Vec<&String> = seen.iter().filter(|item| before.contains(item)).collect();
    assert_eq!(
        original,
        before.iter().collect::<Vec<_>>(),
        "each once, in arrival order"
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "nothing twice: {seen:?}");

    // Filters, and a page size past the first page's.
    let (_, _, body) = call(&app, Method::GET, "/v1/items?status=ok&limit=1000", None).await;
    let statuses: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["status"].as_str().unwrap())
        .collect();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == "OK"),
        "{body}"
    );
    let (_, _, body) = call(&app, Method::GET, "/v1/items?overdue=true", None).await;
    assert_eq!(body["items"], Value::Array(Vec::new()), "{body}");
    assert_eq!(body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_item_page_parameters_are_400_naming_the_parameter() {
    use reqwest::Method;
    let app = open_app().await;
    for (query, words) in [
        ("limit=1001", "limit: 1001 is not between 1 and 1000"),
        ("limit=0", "limit: 0 is not between 1 and 1000"),
        ("limit=ten", "limit: \"ten\" is not a whole number"),
        (
            "cursor=abc",
            "cursor: \"abc\" is not a cursor this API gave",
        ),
        ("overdue=yes", "overdue: \"yes\" is neither true nor false"),
        ("order=x", "unknown parameter \"order\""),
    ] {
        let answer = call(&app, Method::GET, &format!("/v1/items?{query}"), None).await;
        assert_problem(&answer, 400, words);
    }
}

/// Reads the feed through `GET /v1/changes`, `limit` at a time from the start, until it holds
/// at least `expected` changes and a page comes back empty; every page's changes, in order,
/// and the last cursor. (On PostgreSQL a change shows once every older transaction has ended:
/// while fewer than `expected` came, an empty page is asked again with a wait.)
async fn read_feed(app: &TestApp, limit: usize, expected: usize) -> (Vec<Value>, String) {
    let (mut changes, mut cursor) = (Vec::new(), "0".to_owned());
    loop {
        let wait = if changes.len() < expected { "5s" } else { "0s" };
        let path = format!("/v1/changes?after={cursor}&limit={limit}&wait={wait}");
        let (status, _, body) = call(app, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        let page = body["changes"].as_array().unwrap().clone();
        assert!(page.len() <= limit, "{body}");
        cursor = body["cursor"].as_str().unwrap().to_owned();
        if page.is_empty() && changes.len() >= expected {
            return (changes, cursor);
        }
        assert!(
            !page.is_empty() || changes.len() >= expected,
            "only {} of {expected} changes after a wait",
            changes.len()
        );
        changes.extend(page);
    }
}

/// The feed through the API, a page at a time, is what `orderwatch changes` prints: each status
/// change once, in commit order, without the events that changed no status; its last cursor
/// answers an empty page and itself.
#[tokio::test]
async fn change_pages_are_the_feed_the_changes_command_prints() {
    let app = open_app().await;
    let order = uuid(2, 40);
    for (n, version, status) in [
        (0, 1, "PENDING"),
        (1, 1, "PENDING"),
        (2, 1, "PENDING"),
        (0, 2, "OK"),
        // A newer version with the same status: applied, but no change.
        (0, 3, "OK"),
        (1, 2, "KO"),
        (2, 2, "OK"),
        (2, 3, "REFUNDED"),
    ] {
        let answer = app
            .post_webhook(webhook(&uuid(1, 40 + n), &order, version, status))
            .await;
        assert_eq!(answer.status(), 200);
    }
    let (changes, last) = read_feed(&app, 2, 7).await;
    let output = crate::helpers::cli(&app.dir.path().join("config.toml"), &["changes"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(changes.len(), 7, "{changes:#?}");
    assert_eq!(changes, printed);
    let (status, _, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/changes?after={last}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({ "changes": [], "cursor": last }));
}

/// A request with nothing new waits (`wait`) and answers within a second of the commit that
/// brings a change; with nothing at all it answers empty when its wait is over.
#[tokio::test]
async fn a_waiting_change_request_answers_within_a_second_of_a_commit() {
    let app = open_app().await;
    let order = uuid(2, 60);
    let answer = app
        .post_webhook(webhook(&uuid(1, 60), &order, 1, "PENDING"))
        .await;
    assert_eq!(answer.status(), 200);
    let (_, cursor) = read_feed(&app, 100, 1).await;

    let waiting = request(
        &app,
        reqwest::Method::GET,
        &format!("/v1/changes?after={cursor}&wait=30s"),
        None,
    )
    .send();
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "it waits while nothing is new");
    let answer = app
        .post_webhook(webhook(&uuid(1, 60), &order, 2, "OK"))
        .await;
    assert_eq!(answer.status(), 200);
    let committed = std::time::Instant::now();
    let response = waiting.await.unwrap().unwrap();
    let woken_after = committed.elapsed();
    println!("a waiting change request answered {woken_after:?} after the commit");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["changes"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["changes"][0]["new_status"], "OK", "{body}");
    assert!(
        woken_after < std::time::Duration::from_secs(1),
        "answered {woken_after:?} after the commit"
    );

    let cursor = body["cursor"].as_str().unwrap();
    let started = std::time::Instant::now();
    let (status, _, body) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/changes?after={cursor}&wait=1s"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({ "changes": [], "cursor": cursor }));
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

/// Stopping the daemon answers a waiting request at once (an empty page), so a long-poll never
/// holds the shutdown for its `wait`; nor does a client that sent half a request head.
#[tokio::test]
async fn stopping_answers_waiting_change_requests_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = open_app().await;
    let waiting =
        tokio::spawn(request(&app, reqwest::Method::GET, "/v1/changes?wait=60s", None).send());
    let mut half = tokio::net::TcpStream::connect(app.api_addr.unwrap())
        .await
        .unwrap();
    half.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    let response = waiting.await.unwrap().unwrap();
    let answered = started.elapsed();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["changes"], Value::Array(Vec::new()), "{body}");
    assert!(
        answered < std::time::Duration::from_secs(2),
        "the waiting request was answered {answered:?} after the stop began"
    );
    // The half-sent head holds its connection until header_read_timeout (10 s), never longer.
    let _dir = stopping.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the stop took {:?}",
        started.elapsed()
    );
    drop(half);
}

/// Bad change parameters are 400s naming the parameter, and so is a cursor of the other
/// engine's kind (or, on PostgreSQL, an event id no event has).
#[tokio::test]
async fn bad_change_parameters_are_400_naming_the_parameter() {
    use reqwest::Method;
    let app = open_app().await;
    for (query, words) in [
        ("after=abc", "after: \"abc\" is neither an event id"),
        ("after=1.x", "after: \"1.x\" is not a feed cursor"),
        ("limit=1001", "limit: 1001 is not between 1 and 1000"),
        ("wait=61s", "wait: 61s is longer than 60s"),
        ("wait=soon", "wait: \"soon\" is not a duration"),
        ("since=5", "unknown parameter \"since\""),
        ("after=%FF", "after: \"\u{fffd}\" is neither"),
    ] {
        let answer = call(&app, Method::GET, &format!("/v1/changes?{query}"), None).await;
        assert_problem(&answer, 400, words);
    }
    let (query, words) = if crate::helpers::backend::postgres() {
        ("after=424242", "after: no event has id 424242")
    } else {
        ("after=7412.1093", "after: 7412.1093 is a PostgreSQL cursor")
    };
    let answer = call(&app, Method::GET, &format!("/v1/changes?{query}"), None).await;
    assert_problem(&answer, 400, words);
}

/// The app with `[api]` open on loopback and a reconciler polling `fake` every second.
async fn polling_app(fake: &crate::helpers::fake_musement::FakeMusement) -> TestApp {
    use crate::helpers::fake_musement::{APPLICATION, CLIENT_ID, CLIENT_SECRET};
    let config = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n\n\
         [musement]\nbase_url = \"{}\"\napplication = \"{APPLICATION}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\n\
         [reconciler]\ninterval = \"1s\"\nquiet_period = \"0s\"\n",
        fake.base_url()
    );
    spawn_app_in(tempfile::tempdir().unwrap(), &config, Arc::new(SystemClock)).await
}

/// Polls `check` every 50 ms for up to 15 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

/// An order watched through the API is polled, and its item answers with the facts and the
/// voucher the poll brought; `DELETE …/watch` (204) stops the polls while webhooks still
/// update it, `PUT …/watch` (200, known) resumes them; unknown orders are 404, and `orderwatch
/// unwatch` does what the DELETE does.
#[tokio::test]
async fn unwatching_stops_the_polls_and_watching_again_resumes_them() {
    use crate::helpers::fake_musement::{FakeMusement, new_uuid, order_json};
    use reqwest::Method;
    let fake = FakeMusement::start().await;
    // `order` is unwatched below; `control` lives the same life, watched throughout.
    let (order, item) = (new_uuid(), new_uuid());
    let (control, control_item) = (new_uuid(), new_uuid());
    for (order, item) in [(order, item), (control, control_item)] {
        fake.put_order(order_json(order, &[(item, "PENDING")]));
        fake.set_item_status(order, item, "OK");
    }
    // Musement's clock an hour back, so a webhook sent now is clearly newer than the poll.
    let now = chrono::Utc::now();
    fake.set_date(Some(now - chrono::Duration::hours(1)));
    let app = polling_app(&fake).await;
    let watch = format!("/v1/orders/{order}/watch");
    let (status, _, body) = call(&app, Method::PUT, &watch, None).await;
    assert_eq!(status, 201, "{body}");
    let control_watch = format!("/v1/orders/{control}/watch");
    assert_eq!(call(&app, Method::PUT, &control_watch, None).await.0, 201);

    let item_path = format!("/v1/items/{item}");
    eventually("the polls store both items", async || {
        let control_path = format!("/v1/items/{control_item}");
        call(&app, Method::GET, &item_path, None).await.0 == 200
            && call(&app, Method::GET, &control_path, None).await.0 == 200
    })
    .await;
    let (_, _, body) = call(&app, Method::GET, &item_path, None).await;
    assert_eq!(body["item"]["status"], "OK", "{body}");
    let facts = &body["facts"];
    assert_eq!(facts["product_title"], "Test activity 0", "{body}");
    assert_eq!(facts["max_confirmation_time"], "PT30M", "{body}");
    assert_eq!(facts["product_date"], "2024-02-01 15:30", "{body}");
    assert!(facts["facts_as_of"].is_string(), "{body}");
    let vouchers = facts["vouchers"].as_array().expect("vouchers once OK");
    assert_eq!(vouchers.len(), 1, "{body}");
    let history = body["history"].as_array().unwrap();
    assert_eq!(history[0]["source"], "poll", "{body}");
    assert!(history[0]["payload"].is_object(), "payload as JSON: {body}");

    // Stopped: a refund starts on both orders, which makes them due (quiet_period 0, one pass
    // a second); in three seconds the control order is polled, the unwatched one is not.
    let answer = call(&app, Method::DELETE, &watch, None).await;
    assert_eq!((answer.0.as_u16(), &answer.2), (204, &Value::Null));
    let (_, _, body) = call(&app, Method::GET, &format!("/v1/orders/{order}"), None).await;
    assert!(body["order"]["unwatched_at"].is_string(), "{body}");
    for (order, item) in [(order, item), (control, control_item)] {
        let mut refund: Value = serde_json::from_str(&webhook(
            &item.to_string(),
            &order.to_string(),
            5,
            "REFUND_STARTED",
        ))
        .unwrap();
        let sent = (now - chrono::Duration::minutes(1)).format("%Y-%m-%dT%H:%M:%S+0000");
        refund["order_item_updated"] = Value::from(sent.to_string());
        let answer = app.post_webhook(refund.to_string()).await;
        assert_eq!(answer.status(), 200, "webhooks still update it");
        fake.set_item_status(order, item, "REFUNDED");
    }
    let (_, _, body) = call(&app, Method::GET, &format!("/v1/orders/{order}"), None).await;
    assert_eq!(body["order"]["needs_poll"], false, "{body}");
    let (_, _, body) = call(&app, Method::GET, &format!("/v1/orders/{control}"), None).await;
    assert_eq!(
        body["order"]["needs_poll"], true,
        "the control is due: {body}"
    );
    let polls_of = |order: uuid::Uuid| fake.count("GET", &format!("/orders/{order}"));
    let (polls, control_polls) = (polls_of(order), polls_of(control));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        polls_of(control) > control_polls,
        "the control order was polled"
    );
    assert_eq!(polls_of(order), polls, "the unwatched order was not");
    let (_, _, body) = call(&app, Method::GET, &item_path, None).await;
    assert_eq!(body["item"]["status"], "REFUND_STARTED", "{body}");
    let again = call(&app, Method::DELETE, &watch, None).await;
    assert_eq!(again.0, 204, "unwatching twice is no error");

    // Watched again: the next pass polls it and stores what Musement says (its clock now
    // past the webhook's time).
    fake.set_date(None);
    let (status, _, body) = call(&app, Method::PUT, &watch, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["new"], false, "{body}");
    eventually("a poll after watching again", async || {
        let (_, _, body) = call(&app, Method::GET, &item_path, None).await;
        body["item"]["status"] == "REFUNDED"
    })
    .await;

    let unknown = new_uuid();
    let missing = call(
        &app,
        Method::DELETE,
        &format!("/v1/orders/{unknown}/watch"),
        None,
    )
    .await;
    assert_problem(&missing, 404, &format!("no order {unknown} is stored"));
    let malformed = call(&app, Method::DELETE, "/v1/orders/nope/watch", None).await;
    assert_problem(&malformed, 400, "order_uuid: \"nope\" is not a UUID");

    // The CLI: the same stop, and an unknown order named on stderr with exit 1.
    let config = app.dir.path().join("config.toml");
    let output = crate::helpers::cli(&config, &["unwatch", &order.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("unwatched {order}\n")
    );
    let (_, _, body) = call(&app, Method::GET, &format!("/v1/orders/{order}"), None).await;
    assert!(body["order"]["unwatched_at"].is_string(), "{body}");
    let output = crate::helpers::cli(&config, &["unwatch", &unknown.to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!("no order {unknown} is stored")),
        "{output:?}"
    );
}

/// `docs/openapi.json`, parsed.
fn openapi() -> Value {
    serde_json::from_str(&crate::helpers::read_repo_file("docs/openapi.json")).unwrap()
}

/// The document's routes: method and path.
fn documented_routes(document: &Value) -> std::collections::BTreeSet<(String, String)> {
    let mut routes = std::collections::BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Asserts that `value` has every property `schema` requires, following `$ref`s into
/// `document` and through objects and arrays; `at` says where, for the message.
fn assert_has_required(document: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &document["components"]["schemas"][name]
        }
        None => schema,
    };
    if let Some(choices) = schema["oneOf"].as_array() {
        if !value.is_null() {
            let object = choices.iter().find(|c| c["type"] != "null").unwrap();
            assert_has_required(document, object, value, at);
        }
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (n, element) in values.iter().enumerate() {
            assert_has_required(document, items, element, &format!("{at}[{n}]"));
        }
    }
    let Some(object) = value.as_object() else {
        return;
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        let key = required.as_str().unwrap();
        assert!(object.contains_key(key), "{at}: no {key:?} in {value}");
    }
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(inner) = object.get(key) {
            assert_has_required(document, property, inner, &format!("{at}.{key}"));
        }
    }
}

/// The OpenAPI document lists exactly the routes the API serves (a route missing from it, or
/// documented but absent, fails), each documented route answers from its handler (not the
/// fallback), the API serves the same document, real answers carry every property it says
/// they have, and a real validator accepts it.
#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes_that_exist() {
    use reqwest::Method;
    let document = openapi();
    let served: std::collections::BTreeSet<(String, String)> = orderwatch::api::routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_owned()))
        .collect();
    assert_eq!(documented_routes(&document), served);

    let app = open_app().await;
    let (order, item) = (uuid(2, 80), uuid(1, 80));
    for (version, status) in [(1, "PENDING"), (2, "OK")] {
        let answer = app
            .post_webhook(webhook(&item, &order, version, status))
            .await;
        assert_eq!(answer.status(), 200);
    }
    for (method, path) in &served {
        let concrete = path
            .replace("{order_uuid}", &order)
            .replace("{item_uuid}", &item);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _, body) = call(&app, method.clone(), &concrete, None).await;
        assert!(status.is_success(), "{method} {concrete}: {status} {body}");
        // The documented answer for that status, where it has a body.
        let verb = method.as_str().to_lowercase();
        let answer = &document["paths"][path][&verb]["responses"][status.as_str()];
        assert!(
            answer.is_object(),
            "{method} {path}: {status} is not documented"
        );
        if let Some(schema) = answer["content"]["application/json"].get("schema") {
            assert_has_required(&document, schema, &body, &format!("{method} {path}"));
        }
    }
    let (_, content_type, body) = call(&app, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(body, document);

    let path = crate::helpers::repo_file("docs/openapi.json");
    let Some(output) = crate::helpers::tool("openapi-spec-validator", &[path.to_str().unwrap()])
    else {
        return crate::helpers::skip(
            "openapi-spec-validator",
            "openapi-spec-validator is not installed (pip install openapi-spec-validator)",
        );
    };
    crate::helpers::process::assert_succeeded("openapi-spec-validator", &output);
}

/// A database that cannot answer is a 503 problem, worth retrying, never a 200 or a panic:
/// here the SQLite file is gone from under the daemon (the reads open it per request, and the
/// writer refuses a file that was replaced).
#[tokio::test]
async fn a_database_that_cannot_answer_is_a_503_problem() {
    use reqwest::Method;
    if crate::helpers::backend::sqlite_only("moving the SQLite file away") {
        return;
    }
    let app = open_app().await;
    let (order, item) = (uuid(2, 90), uuid(1, 90));
    let answer = app.post_webhook(webhook(&item, &order, 1, "PENDING")).await;
    assert_eq!(answer.status(), 200);
    let aside = app.dir.path().join("moved-away.db");
    std::fs::rename(&app.db_path, &aside).unwrap();
    for path in [
        "/v1/stats".to_owned(),
        format!("/v1/items/{item}"),
        "/v1/items".to_owned(),
        "/v1/changes".to_owned(),
    ] {
        let answer = call(&app, Method::GET, &path, None).await;
        assert_problem(&answer, 503, "the database did not answer");
    }
    // Nor is a write to a replaced file ever acknowledged.
    let watch = call(
        &app,
        Method::PUT,
        &format!("/v1/orders/{order}/watch"),
        None,
    )
    .await;
    assert_problem(&watch, 503, "the order was not registered");
}
