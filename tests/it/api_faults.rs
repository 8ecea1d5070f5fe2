//! Musement API faults in the reconciler (issue 5, item 6), against the fake API: connection
//! refused; the failed answers of one table (a reset mid-body, a body that never ends, a 200
//! HTML page, a truncated JSON body, an answer slower than `request_timeout`); `items` missing,
//! an unknown item status, a token endpoint that is down. For each: the pass records a failure
//! and backs off (or stores what it can), nothing from a failed answer changes an item, and the
//! state converges once the API recovers. Time is a `ManualClock` except in the daemon test,
//! which runs the real binary and reads its JSON log.
//!
//! A 429 with `Retry-After` pausing every request is at the end (issue 11 #8).
//!
//! Already covered in `reconciler.rs`: 429 with `Retry-After` for one order, 500, a redirect,
//! an absurd `Retry-After`, 404, revoked tokens and refused credentials.

use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::Clock;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::api::{Harness, START, config_at, harness, harness_at};
use crate::helpers::db::value;
use crate::helpers::fake_musement::{
    FakeFault, FakeMusement, FakeResponse, PERSONAL_VALUES, new_uuid, order_json,
};
use crate::helpers::{Daemon, free_port, json_post, uuid, watch_before_start, webhook};

/// The backoff every case here assumes: 30 s doubling per failure, capped at 10 min (so a
/// harness advanced by 10 min is always past it).
const BACKOFF: &str = "backoff_base = \"30s\"\nbackoff_cap = \"10m\"\n";

/// A harness against a running fake, with [`BACKOFF`] and `extra` in `[reconciler]`.
async fn harness_with_backoff(extra: &str) -> Harness {
    harness(&format!("{BACKOFF}{extra}")).await
}

/// `orderwatch_musement_paused_until_timestamp_seconds` as `/metrics` shows it now.
async fn paused_gauge(h: &Harness) -> i64 {
    let text = h.metrics_text().await;
    let series = "orderwatch_musement_paused_until_timestamp_seconds ";
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

/// An address where nothing listens (a port that was just free).
fn closed_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test]
async fn connection_refused_backs_off_then_converges_when_the_api_comes_up() {
    let addr = closed_port();
    let case = "connection refused";
    let mut h = harness_at(&format!("http://{addr}/api/v3"), BACKOFF).await;
    let (order, item) = h.seed_new_pending().await;
    let before = h.snapshot();

    for nth in 1..=2 {
        let summary = h.pass().await;
        let words = ["cannot reach musement"];
        h.assert_failed(case, &summary, order, nth, &words, &before);
        assert_eq!(
            h.pass().await.due,
            0,
            "backing off after failure {nth}: not due again at once"
        );
        h.advance(Duration::seconds(31));
    }

    // The API comes up where the client points.
    let fake = h.start_fake_on(addr).await;
    fake.put_order(order_json(order, &[(item, "OK")]));
    h.assert_converges(case, order, item, "OK").await;
    h.close().await;
}

/// What the fake answers to an order's next GET instead of the order.
enum BadAnswer {
    /// A connection-level fault after the head and half the body.
    Fault(FakeFault),
    /// A scripted response, built for the order.
    Response(fn(Uuid) -> FakeResponse),
}

/// One failed answer: the pass records a failure naming it and backs off, nothing from the
/// answer reaches the store, and the order converges once the API answers normally again.
struct FailedAnswer {
    /// Names the row in every assertion message.
    name: &'static str,
    /// Extra `[reconciler]` settings.
    config: &'static str,
    /// What the fake answers to the order's GET, once.
    answer: BadAnswer,
    /// Words `last_error` must contain (any case).
    words: &'static [&'static str],
    /// What only this row checks after the failed pass.
    also: fn(&FailedPass),
}

/// What a row's own check sees after the failed pass.
struct FailedPass<'a> {
    /// The row's name.
    name: &'static str,
    /// The harness, after the failed pass.
    h: &'a Harness,
    /// The order whose GET failed.
    order: Uuid,
    /// How long the failed pass took.
    took: StdDuration,
}

/// An HTML error page, as a proxy in front of the API answers with status 200.
fn html_error_page(_: Uuid) -> FakeResponse {
    let page = format!(
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>{}</body></html>",
        "<p>upstream error</p>".repeat(50)
    );
    FakeResponse::status(200)
        .with_header("content-type", "text/html; charset=utf-8")
        .with_body(page)
}

fn failed_answers() -> [FailedAnswer; 5] {
    [
        FailedAnswer {
            name: "a reset mid-body",
            config: "",
            answer: BadAnswer::Fault(FakeFault::ResetMidBody),
            words: &["cannot reach musement", "body", "reset"],
            also: |f| {
                assert_eq!(
                    f.h.gets(f.order),
                    1,
                    "{}: the GET was answered (then cut)",
                    f.name
                );
            },
        },
        FailedAnswer {
            name: "a body that never ends",
            config: "request_timeout = \"300ms\"",
            answer: BadAnswer::Fault(FakeFault::NeverEnds),
            words: &["timed out"],
            also: |f| {
                assert!(
                    f.took < StdDuration::from_secs(3),
                    "{}: the pass waited {:?} for a body that never ends",
                    f.name,
                    f.took
                );
            },
        },
        FailedAnswer {
            name: "a 200 HTML error page",
            config: "",
            answer: BadAnswer::Response(html_error_page),
            words: &["malformed", "not json", "<!DOCTYPE html>"],
            also: |f| {
                let error = f.h.poll_state(f.order).last_error.unwrap();
                assert!(
                    error.len() < 600,
                    "{}: only the first bytes are kept: {} bytes",
                    f.name,
                    error.len()
                );
            },
        },
        // The first bytes of a truncated body are recorded.
        FailedAnswer {
            name: "a truncated JSON body",
            config: "",
            answer: BadAnswer::Response(|_| {
                FakeResponse::status(200)
                    .with_body("{\"uuid\": \"oops")
                    .delayed(StdDuration::ZERO)
            }),
            words: &["uuid", "oops"],
            also: |_| {},
        },
        FailedAnswer {
            name: "an answer slower than request_timeout",
            config: "request_timeout = \"300ms\"",
            answer: BadAnswer::Response(|order| {
                FakeResponse::json(200, order_json(order, &[(new_uuid(), "OK")]))
                    .delayed(StdDuration::from_secs(2))
            }),
            words: &["time"],
            also: |_| {},
        },
    ]
}

#[tokio::test]
async fn a_failed_answer_changes_nothing_backs_off_and_converges() {
    for row in failed_answers() {
        let h = harness_with_backoff(row.config).await;
        let (order, item) = h.seed_new_pending().await;
        // Musement's truth moved on; a failed answer must not leak it into the store.
        h.fake().put_order(order_json(order, &[(item, "OK")]));
        let path = format!("/orders/{order}");
        match row.answer {
            BadAnswer::Fault(fault) => h.fake().push_fault(&path, fault),
            BadAnswer::Response(response) => h.fake().push_response(&path, response(order)),
        }
        let before = h.snapshot();
        let started = Instant::now();
        let summary = h.pass().await;
        let took = started.elapsed();
        h.assert_failed(row.name, &summary, order, 1, row.words, &before);
        (row.also)(&FailedPass {
            name: row.name,
            h: &h,
            order,
            took,
        });
        h.assert_converges(row.name, order, item, "OK").await;
        h.close().await;
    }
}

#[tokio::test]
async fn an_order_without_items_stores_what_it_can_and_is_polled_again() {
    let h = harness_with_backoff("").await;
    let (order, item) = h.seed_new_pending().await;
    let path = format!("/orders/{order}");
    let full = order_json(order, &[(item, "OK")]);
    h.fake().put_order(full.clone());
    let before = h.snapshot();

    // `items` missing or null: lenient, the order facts are stored, no item is touched, and
    // the order stays due because its item is still PENDING here.
    for items in [None, Some(Value::Null)] {
        let mut body = full.clone();
        match items {
            None => {
                body.as_object_mut().unwrap().remove("items");
            }
            Some(value) => body["items"] = value,
        }
        h.fake().push_response(&path, FakeResponse::json(200, body));
        let summary = h.pass().await;
        assert_eq!(
            (
                summary.due,
                summary.polled,
                summary.items_changed,
                summary.failures
            ),
            (1, 1, 0, 0),
            "{summary:?}"
        );
        let (items_now, orders_now, events_now) = h.snapshot();
        assert_eq!(
            (&items_now, events_now),
            (&before.0, before.2),
            "no item changed"
        );
        assert_ne!(orders_now, before.1, "the order's own facts were stored");
        assert_eq!(h.item(item).0, "PENDING");
        h.advance(Duration::minutes(1));
    }

    // `items` of the wrong type is malformed: a failure like any other.
    let mut body = full.clone();
    body["items"] = json!({ "0": { "uuid": item.to_string(), "status": "OK" } });
    h.fake().push_response(&path, FakeResponse::json(200, body));
    let before = h.snapshot();
    let summary = h.pass().await;
    let case = "items of the wrong type";
    h.assert_failed(
        case,
        &summary,
        order,
        1,
        &["items: expected an array"],
        &before,
    );

    h.assert_converges(case, order, item, "OK").await;
    h.close().await;
}

#[tokio::test]
async fn an_unknown_item_status_is_stored_as_sent_and_the_order_keeps_being_polled() {
    let h = harness_with_backoff("").await;
    let (order, item) = h.seed_new_pending().await;
    h.fake()
        .put_order(order_json(order, &[(item, "ON_HOLD_BY_SUPPLIER")]));
    let path = format!("/orders/{order}");
    for n in 1..=3 {
        let summary = h.pass().await;
        assert_eq!(
            (summary.due, summary.polled, summary.failures),
            (1, 1, 0),
            "pass {n}: {summary:?}"
        );
        assert_eq!(
            h.item(item),
            ("ON_HOLD_BY_SUPPLIER".to_owned(), "poll".to_owned())
        );
        assert_eq!(h.fake().count("GET", &path), n);
        h.advance(Duration::minutes(1));
    }
    // Settled at Musement: polled once more, then no longer due.
    h.fake().set_item_status(order, item, "OK");
    assert_eq!(h.pass().await.polled, 1);
    assert_eq!(h.item(item).0, "OK");
    h.advance(Duration::minutes(1));
    assert_eq!(h.pass().await.due, 0, "OK with a voucher is settled");
    h.close().await;
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_fails_every_due_order_and_then_recovers() {
    let h = harness_with_backoff("").await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let (order, item) = h.seed_new_pending().await;
        h.fake().put_order(order_json(order, &[(item, "OK")]));
        orders.push((order, item));
    }
    let before = h.snapshot();

    // 503, then a 200 that is an HTML page: neither gives a token.
    let html = FakeResponse::status(200)
        .with_header("content-type", "text/html")
        .with_body("<html><body>Maintenance</body></html>");
    let outages = [
        (
            FakeResponse::fixture(503, "error-service-unavailable.json"),
            "http 503",
        ),
        (html, "malformed"),
    ];
    for (nth, (outage, word)) in outages.into_iter().enumerate() {
        h.fake().set_outage("/login", Some(outage));
        let logins_before = h.fake().count("POST", "/login");
        let summary = h.pass().await;
        assert_eq!(
            (summary.due, summary.polled, summary.failures),
            (3, 0, 3),
            "{summary:?}"
        );
        let logins = h.fake().count("POST", "/login") - logins_before;
        eprintln!("token endpoint down ({word}): {logins} login attempts for 3 due orders");
        assert!(
            (1..=3).contains(&logins),
            "{logins} login attempts for 3 orders"
        );
        assert_eq!(
            h.fake().count("GET", "/orders/"),
            0,
            "no GET without a token"
        );
        for (order, _) in &orders {
            let state = h.poll_state(*order);
            assert_eq!(state.failures, nth as i64 + 1);
            let error = state.last_error.unwrap_or_default().to_lowercase();
            assert!(error.contains(word), "{error}");
        }
        assert_eq!(h.snapshot(), before, "no item changed");
        h.advance(Duration::minutes(10));
    }

    h.fake().set_outage("/login", None);
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (3, 0), "{summary:?}");
    assert_eq!(h.fake().tokens_issued(), 1, "one login for the pass");
    for (order, item) in &orders {
        assert_eq!(h.item(*item).0, "OK");
        assert_eq!(h.poll_state(*order).failures, 0);
    }
    h.close().await;
}

#[tokio::test]
async fn a_hanging_token_endpoint_costs_one_timeout_per_pass_not_one_per_order() {
    let h = harness_with_backoff("request_timeout = \"250ms\"\nconcurrency = 4").await;
    for _ in 0..8 {
        h.seed_new_pending().await;
    }
    h.fake().set_outage(
        "/login",
        Some(FakeResponse::status(200).delayed(StdDuration::from_secs(5))),
    );
    let started = Instant::now();
    let summary = h.pass().await;
    let took = started.elapsed();
    let logins = h.fake().count("POST", "/login");
    eprintln!("hanging token endpoint: 8 due orders, {logins} logins, pass took {took:?}");
    assert_eq!(summary.failures, 8);
    assert_eq!(logins, 1, "one login attempt per pass, not one per order");
    h.close().await;
}

// ---------------------------------------------------------------------------------------------
// Logging once per state change.

/// A `MakeWriter` that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// Every JSON line.
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// `(level, message)` of every JSON line about `order`.
    fn about(&self, order: Uuid) -> Vec<(String, String)> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["order"] == order.to_string())
            .map(|l| {
                (
                    l["level"].as_str().unwrap_or("").to_owned(),
                    l["message"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// Routes this thread's logs (JSON, `orderwatch=debug`) into a [`Captured`] until the returned
/// guard is dropped. Use on a current-thread runtime, where the reconciler runs on this thread.
fn capture_logs() -> (
    Captured,
    (tracing::dispatcher::DefaultGuard, tracing::Dispatch),
) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(captured.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("orderwatch=debug"))
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    let guard = tracing::dispatcher::set_default(&dispatch);
    // With a single dispatcher registered, tracing computes a callsite's interest from the
    // default of whichever thread hits it first: another test's thread, with no subscriber,
    // would switch the reconciler's warning off for good. A second live dispatcher makes
    // tracing ask every registered one, this one included.
    let second = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish(),
    );
    tracing::callsite::rebuild_interest_cache();
    (captured, (guard, second))
}

fn count(lines: &[(String, String)], level: &str, message: &str) -> usize {
    lines
        .iter()
        .filter(|(l, m)| l == level && m == message)
        .count()
}

// A current-thread runtime: the reconciler's logging runs on this thread, under the guard.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_order_is_logged_once_per_state_change_not_per_retry() {
    let (captured, _logging) = capture_logs();

    let h = harness_with_backoff("").await;
    let (order, item) = h.seed_new_pending().await;
    h.fake().put_order(order_json(order, &[(item, "PENDING")]));
    let path = format!("/orders/{order}");
    let down = || FakeResponse::fixture(503, "error-service-unavailable.json");
    // (what happens, whether the API is down, passes, then: (level, message, lines so far))
    type Said = &'static [(&'static str, &'static str, usize)];
    let phases: [(&str, bool, usize, Said); 3] = [
        (
            "five failed polls in a row: one warning, then debug lines",
            true,
            5,
            &[
                ("WARN", "poll failed; backing off", 1),
                ("DEBUG", "poll failed again", 4),
            ],
        ),
        (
            "recovery: said once, at INFO; further good polls say nothing about the order",
            false,
            3,
            &[("INFO", "polling works again", 1)],
        ),
        (
            "a second outage is a new state change: one more warning",
            true,
            3,
            &[("WARN", "poll failed; backing off", 2)],
        ),
    ];
    let mut lines = Vec::new();
    for (phase, api_down, passes, said) in phases {
        h.fake().set_outage(&path, api_down.then(down));
        for _ in 0..passes {
            let summary = h.pass().await;
            let expected = if api_down { (0, 1) } else { (1, 0) };
            assert_eq!((summary.polled, summary.failures), expected, "{phase}");
            h.advance(Duration::minutes(10));
        }
        lines = captured.about(order);
        for &(level, message, times) in said {
            assert_eq!(count(&lines, level, message), times, "{phase}: {lines:#?}");
        }
    }
    // (The item also went past its 30-minute confirmation deadline meanwhile: a state change
    // of its own, said once.)
    let about_polling = lines
        .iter()
        .filter(|(level, _)| level != "DEBUG" && level != "TRACE")
        .filter(|(_, message)| !message.contains("past its confirmation deadline"))
        .count();
    assert_eq!(
        about_polling, 3,
        "two warnings and one recovery, nothing per retry: {lines:#?}"
    );
    h.close().await;
}

// ---------------------------------------------------------------------------------------------
// The real daemon while the API is down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_taking_webhooks_while_the_api_is_down_and_logs_each_change_once() {
    let fake = FakeMusement::start().await;
    let (order, item) = (new_uuid(), new_uuid());
    fake.put_order(order_json(order, &[(item, "OK")]));
    // Down for everything, login included.
    fake.set_outage(
        "",
        Some(FakeResponse::fixture(503, "error-service-unavailable.json")),
    );
    // And the first login never finishes (the client gives up after its request_timeout, 10 s):
    // a webhook answered while it hangs did not wait for Musement.
    fake.push_fault("/login", FakeFault::NeverEnds);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n{}",
        config_at(
            &fake.base_url(),
            "backoff_base = \"100ms\"\nbackoff_cap = \"200ms\""
        )
        .replace("interval = \"1h\"", "interval = \"1s\"")
    );
    watch_before_start(dir.path(), &config, &[order]).await;
    let daemon = Daemon::start(dir, &config);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_secs(60))
        .build()
        .unwrap();
    // Logins the daemon's client has finished (answered, failed or timed out), by its /metrics.
    let logins_finished = || async {
        let text = daemon.metrics_text().await;
        text.lines()
            .filter(|line| line.starts_with("orderwatch_musement_requests_total{"))
            .filter(|line| line.contains("endpoint=\"login\""))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };

    // While the API is down (several passes, each failing), a webhook after each login is
    // answered 200, the first while that login hangs.
    let mut n = 0;
    let deadline = Instant::now() + StdDuration::from_secs(60);
    while n < 4 {
        while fake.count("POST", "/login") <= n as usize {
            assert!(Instant::now() < deadline, "the reconciler never retried");
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        n += 1;
        let response = json_post(&client, daemon.webhook_url())
            .body(webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if n == 1 {
            assert_eq!(
                logins_finished().await,
                0.0,
                "answered while the login hangs"
            );
        }
    }
    assert!(
        logins_finished().await >= 3.0,
        "the logins after the first failed"
    );
    let retries = fake.count("POST", "/login");

    // The API recovers: the watched order converges without any webhook.
    fake.set_outage("", None);
    let db = daemon.db();
    let deadline = Instant::now() + StdDuration::from_secs(15);
    loop {
        let status: Option<String> = db
            .query_row(
                "SELECT status FROM order_items WHERE item_uuid = ?1",
                [item.to_string()],
                |r| r.get(0),
            )
            .ok();
        if status.as_deref() == Some("OK") {
            break;
        }
        assert!(Instant::now() < deadline, "never converged after recovery");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let stored: i64 = value(
        &db,
        "SELECT count(*) FROM order_items WHERE source = 'webhook'",
        [],
    );
    assert_eq!(stored, n as i64, "every webhook answered 200 is stored");

    let lines = tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        daemon.stop()
    })
    .await
    .unwrap();
    let about: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["order"] == order.to_string())
        .collect();
    let said = |level: &str, message: &str| {
        about
            .iter()
            .filter(|l| l["level"] == level && l["message"] == message)
            .count()
    };
    eprintln!("{retries} failed polls of the order before recovery; its log lines: {about:#?}");
    assert_eq!(
        said("WARN", "poll failed; backing off"),
        1,
        "one warning for {retries} failed polls: {about:#?}"
    );
    assert_eq!(said("INFO", "polling works again"), 1, "{about:#?}");
    assert_eq!(about.len(), 2, "nothing else about the order: {about:#?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_order_body_puts_no_personal_data_in_last_error_or_the_log() {
    let (captured, _logging) = capture_logs();
    let h = harness_with_backoff("").await;
    let (order, item) = h.seed_new_pending().await;
    // Valid JSON with the customer object up front, as Musement sends it, and one field of the
    // wrong type further down.
    let mut body = order_json(order, &[(item, "OK")]);
    body["items"] = json!("not a list");
    h.fake()
        .push_response(&format!("/orders/{order}"), FakeResponse::json(200, body));
    assert_eq!(h.pass().await.failures, 1);
    let error = h.poll_state(order).last_error.unwrap_or_default();
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    for personal in PERSONAL_VALUES {
        assert!(
            !error.contains(personal),
            "{personal} in orders.last_error: {error}"
        );
        assert!(!log.contains(personal), "{personal} in the log: {log}");
    }
    h.close().await;
}

// ---------------------------------------------------------------------------------------------
// Musement asking us to wait.

/// Issue 11 defect #8: once a 429 with `Retry-After` arrives, no GET (nor login) leaves the
/// process until the wait ends, except requests already in flight; the orders not polled are
/// neither failed nor backed off, and polling resumes after the wait.
#[tokio::test(flavor = "current_thread")]
async fn a_429_with_retry_after_pauses_every_request_until_the_wait_ends() {
    let (captured, _logging) = capture_logs();
    let concurrency = 4;
    let h = harness_with_backoff(&format!("concurrency = {concurrency}")).await;
    let orders: Vec<Uuid> = (0..20).map(|_| new_uuid()).collect();
    for order in &orders {
        h.fake()
            .put_order(order_json(*order, &[(new_uuid(), "PENDING")]));
        h.fake().set_outage(
            &format!("/orders/{order}"),
            Some(FakeResponse::status(429).with_header("retry-after", "120")),
        );
    }
    h.writer.watch(orders.clone()).await.unwrap();
    let order_gets = || {
        h.fake()
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/orders/"))
            .count()
    };

    // The daemon's scheduled pass, which logs its summary.
    h.fake().set_date(Some(h.clock.now()));
    h.reconciler.tick().await;
    let gets = order_gets();
    assert!(
        (1..=concurrency).contains(&gets),
        "{gets} GETs reached Musement after it asked to wait; at most the {concurrency} in flight may"
    );
    let start: DateTime<Utc> = START.parse().unwrap();
    let until = start + Duration::seconds(120);
    let summary = captured
        .lines()
        .into_iter()
        .find(|l| l["level"] == "INFO" && l.get("due").is_some())
        .expect("a pass summary line");
    assert_eq!(
        summary["message"], "reconciler pass; paused until 2024-01-01T12:02:00Z",
        "{summary}"
    );
    assert_eq!(
        [
            &summary["due"],
            &summary["polled"],
            &summary["failures"],
            &summary["paused_orders"]
        ],
        [&json!(20), &json!(0), &json!(gets), &json!(20 - gets)],
        "only the polls that got the 429 failed: {summary}"
    );
    assert_eq!(paused_gauge(&h).await, until.timestamp());
    // The orders not polled are neither failed nor backed off: they are due as before.
    let backed_off = orders
        .iter()
        .filter(|o| h.poll_state(**o).failures > 0)
        .count();
    assert_eq!(backed_off, gets);
    for order in &orders {
        let state = h.poll_state(*order);
        if state.failures == 0 {
            assert_eq!(state.last_error, None, "{state:?}");
            assert!(
                state.next_poll_at.is_none_or(|next| next <= start),
                "{order} was backed off: {state:?}"
            );
        }
    }

    // A pass during the wait sends nothing at all, not even a login.
    h.fake().revoke_tokens();
    h.advance(Duration::seconds(119));
    let sent = h.fake().requests().len();
    let summary = h.pass().await;
    assert_eq!(h.fake().requests().len(), sent, "{summary:?}");
    assert_eq!(
        (
            summary.due,
            summary.polled,
            summary.failures,
            summary.paused_orders
        ),
        (20 - gets, 0, 0, 20 - gets),
        "{summary:?}"
    );
    assert_eq!(summary.paused_until, Some(until));

    // The wait is over and Musement answers again: every order is polled, the gauge is 0.
    for order in &orders {
        h.fake().set_outage(&format!("/orders/{order}"), None);
    }
    h.advance(Duration::seconds(1));
    assert_eq!(paused_gauge(&h).await, 0);
    let summary = h.pass().await;
    assert_eq!(
        (
            summary.due,
            summary.polled,
            summary.failures,
            summary.paused_until
        ),
        (20, 20, 0, None),
        "{summary:?}"
    );
    h.close().await;
}
