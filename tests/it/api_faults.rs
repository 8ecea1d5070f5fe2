//! Musement API faults in the reconciler (issue 5, item 6), against the fake API: connection
//! refused, a reset mid-body, a body that never ends, a 200 HTML page, `items` missing, an
//! unknown item status, a token endpoint that is down. For each: the pass records a failure and
//! backs off (or stores what it can), nothing from a failed answer changes an item, and the state
//! converges once the API recovers. Time is a `ManualClock` except in the daemon test, which
//! runs the real binary and reads its JSON log.
//!
//! A 429 with `Retry-After` pausing every request is at the end (issue 11 #8).
//!
//! Already covered in `reconciler.rs`: 429 with `Retry-After` for one order, 500, a truncated
//! JSON body, a slow answer past `request_timeout`, 404, revoked tokens and refused credentials.

use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::{Clock, ManualClock};
use orderwatch::config::Config;
use orderwatch::observation::Observation;
use orderwatch::reconciler::{PassSummary, Reconciler};
use orderwatch::startup;
use orderwatch::store::writer::{Writer, WriterThread};
use rusqlite::Connection;
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

use crate::helpers::Daemon;
use crate::helpers::fake_musement::{
    APPLICATION, CLIENT_ID, CLIENT_SECRET, FakeFault, FakeMusement, FakeResponse, new_uuid,
    order_json,
};

/// The rig's clock starts here.
const START: &str = "2024-01-01T12:00:00Z";

/// A reconciler on a `ManualClock` whose API may be a fake or nothing at all.
struct Rig {
    /// `None` while nothing listens at the configured base URL.
    fake: Option<FakeMusement>,
    clock: Arc<ManualClock>,
    reconciler: Reconciler,
    writer: Writer,
    writer_thread: Option<WriterThread>,
    config: Config,
    _dir: TempDir,
}

/// `[musement]` pointing at `base_url` with the fake's credentials, and `[reconciler]` with
/// `extra` appended (as `reconciler::config_for`, but for any base URL).
fn config_text(base_url: &str, extra: &str) -> String {
    format!(
        "[musement]\nbase_url = \"{base_url}\"\napplication = \"{APPLICATION}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\n[reconciler]\n\
         interval = \"1h\"\nmax_requests_per_second = 0.0\nbackoff_base = \"30s\"\n\
         backoff_cap = \"10m\"\n{extra}\n"
    )
}

async fn rig_at(base_url: &str, extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(base_url, extra)).unwrap();
    let config = Config::load(&path).unwrap();
    let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
    let (writer, writer_thread) = startup::open_store(&config, clock.clone()).await.unwrap();
    let reconciler =
        startup::build_reconciler(&config, writer.clone(), clock.clone(), "test").unwrap();
    Rig {
        fake: None,
        clock,
        reconciler,
        writer,
        writer_thread: Some(writer_thread),
        config,
        _dir: dir,
    }
}

/// A rig against a running fake.
async fn rig(extra: &str) -> Rig {
    let fake = FakeMusement::start().await;
    let mut rig = rig_at(&fake.base_url(), extra).await;
    rig.fake = Some(fake);
    rig
}

/// Rows as text (`NULL` as `None`).
type Rows = Vec<Vec<Option<String>>>;

/// Item rows, order facts and the event count: what a failed answer must leave as it was.
type Snapshot = (Rows, Rows, i64);

/// What an order row says about polling it.
#[derive(Debug)]
struct PollState {
    failures: i64,
    last_error: Option<String>,
    next_poll_at: Option<DateTime<Utc>>,
}

impl Rig {
    fn fake(&self) -> &FakeMusement {
        self.fake.as_ref().expect("the fake is running")
    }

    /// Runs a pass (the fake's `Date` follows the rig's clock).
    async fn pass(&self) -> PassSummary {
        if let Some(fake) = &self.fake {
            fake.set_date(Some(self.clock.now()));
        }
        let summary = self.reconciler.run_once().await.unwrap();
        assert_eq!(summary.stopped, None, "{summary:?}");
        summary
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn db(&self) -> Connection {
        Connection::open(&self.config.database.path).unwrap()
    }

    /// Stores a `PENDING` webhook for `item` of `order`, then lets the quiet period pass so
    /// the order is due: a known state that a failed poll must not touch.
    async fn seed(&self, order: Uuid, item: Uuid) {
        let updated = self.clock.now().to_rfc3339();
        let body = json!({
            "order_id": "1", "order_uuid": order.to_string(), "order_created": updated,
            "order_updated": updated, "order_version": "1",
            "order_item_uuid": item.to_string(), "order_item_created": updated,
            "order_item_updated": updated, "order_item_version": "1",
            "order_item_status": "PENDING",
        });
        let observation =
            Observation::from_webhook(body.to_string().as_bytes(), self.clock.now()).unwrap();
        self.writer.apply(observation).await.unwrap();
        self.advance(Duration::minutes(3));
    }

    /// Every item row and order fact a poll could change, and the number of events: what a
    /// failed answer must leave exactly as it was.
    fn snapshot(&self) -> Snapshot {
        let db = self.db();
        let rows = |sql: &str| -> Rows {
            let mut statement = db.prepare(sql).unwrap();
            let columns = statement.column_count();
            statement
                .query_map([], |r| {
                    (0..columns)
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let items = rows(
            "SELECT item_uuid, status, CAST(item_version AS TEXT), CAST(status_version AS TEXT),
                    as_of, as_of_source, source, changed_at, updated_at, vouchers, product_id,
                    product_title, product_date, max_confirmation_time
             FROM order_items ORDER BY item_uuid",
        );
        let orders = rows(
            "SELECT order_uuid, order_status, identifier, order_polled_as_of, last_polled_at
             FROM orders ORDER BY order_uuid",
        );
        let events = db
            .query_row("SELECT count(*) FROM item_events", [], |r| r.get(0))
            .unwrap();
        (items, orders, events)
    }

    fn poll_state(&self, order: Uuid) -> PollState {
        self.db()
            .query_row(
                "SELECT poll_failures, last_error, next_poll_at FROM orders WHERE order_uuid = ?1",
                [order.to_string()],
                |r| {
                    Ok(PollState {
                        failures: r.get(0)?,
                        last_error: r.get(1)?,
                        next_poll_at: r.get::<_, Option<String>>(2)?.map(|t| t.parse().unwrap()),
                    })
                },
            )
            .unwrap()
    }

    /// `(status, source)` of an item.
    fn item(&self, item: Uuid) -> (String, String) {
        self.db()
            .query_row(
                "SELECT status, source FROM order_items WHERE item_uuid = ?1",
                [item.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    /// Asserts the pass just run failed `order` for the `nth` time in a row with an error
    /// containing every one of `words`, backed off by `30 s × 2^(nth-1) × [0.5, 1]`, and left
    /// `before` untouched.
    fn assert_failed(
        &self,
        summary: &PassSummary,
        order: Uuid,
        nth: i64,
        words: &[&str],
        before: &Snapshot,
    ) {
        assert_eq!((summary.polled, summary.failures), (0, 1), "{summary:?}");
        let state = self.poll_state(order);
        assert_eq!(state.failures, nth, "{state:?}");
        let error = state.last_error.clone().unwrap_or_default();
        eprintln!("failure {nth} of {order}: last_error = {error:?}");
        for word in words {
            assert!(
                error.to_lowercase().contains(&word.to_lowercase()),
                "last_error {error:?} lacks {word:?}"
            );
        }
        let base = Duration::seconds(30) * 2i32.pow(nth as u32 - 1);
        let now = self.clock.now();
        let next = state.next_poll_at.expect("a failed order has a next poll");
        assert!(
            next >= now + base / 2 && next <= now + base,
            "next poll {next} is not now + {base} × [0.5, 1]"
        );
        assert_eq!(
            &self.snapshot(),
            before,
            "nothing from a failed answer changes an item"
        );
    }

    /// The API answers normally again: after the backoff the order is polled, its item takes
    /// Musement's status and the order's failure count and error are cleared.
    async fn assert_converges(&self, order: Uuid, item: Uuid, status: &str) {
        self.advance(Duration::minutes(10));
        let summary = self.pass().await;
        assert_eq!((summary.polled, summary.failures), (1, 0), "{summary:?}");
        assert_eq!(self.item(item), (status.to_owned(), "poll".to_owned()));
        let state = self.poll_state(order);
        assert_eq!((state.failures, state.last_error), (0, None));
    }

    /// `orderwatch_musement_paused_until_timestamp_seconds` as `/metrics` shows it now.
    async fn paused_gauge(&self) -> i64 {
        let source = orderwatch::metrics::StateSource::new(
            self.config.database.path.clone(),
            self.clock.clone(),
        );
        let text = self.writer.metrics().render(&source, false).await;
        let series = "orderwatch_musement_paused_until_timestamp_seconds ";
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    }

    async fn close(mut self) {
        drop(self.reconciler);
        self.writer_thread.take().unwrap().shutdown().await;
    }
}

/// An address where nothing listens (a port that was just free).
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn connection_refused_backs_off_then_converges_when_the_api_comes_up() {
    let addr = closed_port();
    let mut rig = rig_at(&format!("http://{addr}/api/v3"), "").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    let before = rig.snapshot();

    let summary = rig.pass().await;
    rig.assert_failed(&summary, order, 1, &["cannot reach musement"], &before);
    assert_eq!(
        rig.pass().await.due,
        0,
        "backing off: not due again at once"
    );
    rig.advance(Duration::seconds(31));
    let summary = rig.pass().await;
    rig.assert_failed(&summary, order, 2, &["cannot reach musement"], &before);

    // The API comes up where the client points.
    let fake = FakeMusement::start_on(addr).await;
    fake.put_order(order_json(order, &[(item, "OK")]));
    rig.fake = Some(fake);
    rig.assert_converges(order, item, "OK").await;
    rig.close().await;
}

#[tokio::test]
async fn a_reset_mid_body_is_a_failure_that_changes_nothing() {
    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    // Musement's truth moved on; the half body that arrives must not leak it into the store.
    rig.fake().put_order(order_json(order, &[(item, "OK")]));
    rig.fake()
        .push_fault(&format!("/orders/{order}"), FakeFault::ResetMidBody);
    let before = rig.snapshot();
    let summary = rig.pass().await;
    rig.assert_failed(
        &summary,
        order,
        1,
        &["cannot reach musement", "body", "reset"],
        &before,
    );
    assert_eq!(
        rig.fake().count("GET", &format!("/orders/{order}")),
        1,
        "the GET was answered (then cut)"
    );
    rig.assert_converges(order, item, "OK").await;
    rig.close().await;
}

#[tokio::test]
async fn a_body_that_never_ends_times_out_and_changes_nothing() {
    let rig = rig("request_timeout = \"300ms\"").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    rig.fake().put_order(order_json(order, &[(item, "OK")]));
    rig.fake()
        .push_fault(&format!("/orders/{order}"), FakeFault::NeverEnds);
    let before = rig.snapshot();
    let started = Instant::now();
    let summary = rig.pass().await;
    let took = started.elapsed();
    assert!(
        took < StdDuration::from_secs(3),
        "the pass waited {took:?} for a body that never ends"
    );
    rig.assert_failed(&summary, order, 1, &["timed out"], &before);
    rig.assert_converges(order, item, "OK").await;
    rig.close().await;
}

#[tokio::test]
async fn a_200_html_error_page_is_a_failure_that_keeps_its_first_bytes() {
    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    rig.fake().put_order(order_json(order, &[(item, "OK")]));
    let page = format!(
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>{}</body></html>",
        "<p>upstream error</p>".repeat(50)
    );
    rig.fake().push_response(
        &format!("/orders/{order}"),
        FakeResponse::status(200)
            .with_header("content-type", "text/html; charset=utf-8")
            .with_body(page),
    );
    let before = rig.snapshot();
    let summary = rig.pass().await;
    rig.assert_failed(
        &summary,
        order,
        1,
        &["malformed", "not json", "<!DOCTYPE html>"],
        &before,
    );
    let error = rig.poll_state(order).last_error.unwrap();
    assert!(
        error.len() < 600,
        "only the first bytes are kept: {} bytes",
        error.len()
    );
    rig.assert_converges(order, item, "OK").await;
    rig.close().await;
}

#[tokio::test]
async fn an_order_without_items_stores_what_it_can_and_is_polled_again() {
    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    let path = format!("/orders/{order}");
    let full = order_json(order, &[(item, "OK")]);
    rig.fake().put_order(full.clone());
    let before = rig.snapshot();

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
        rig.fake()
            .push_response(&path, FakeResponse::json(200, body));
        let summary = rig.pass().await;
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
        let (items_now, orders_now, events_now) = rig.snapshot();
        assert_eq!(
            (&items_now, events_now),
            (&before.0, before.2),
            "no item changed"
        );
        assert_ne!(orders_now, before.1, "the order's own facts were stored");
        assert_eq!(rig.item(item).0, "PENDING");
        rig.advance(Duration::minutes(1));
    }

    // `items` of the wrong type is malformed: a failure like any other.
    let mut body = full.clone();
    body["items"] = json!({ "0": { "uuid": item.to_string(), "status": "OK" } });
    rig.fake()
        .push_response(&path, FakeResponse::json(200, body));
    let before = rig.snapshot();
    let summary = rig.pass().await;
    rig.assert_failed(&summary, order, 1, &["items: expected an array"], &before);

    rig.assert_converges(order, item, "OK").await;
    rig.close().await;
}

#[tokio::test]
async fn an_unknown_item_status_is_stored_as_sent_and_the_order_keeps_being_polled() {
    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    rig.fake()
        .put_order(order_json(order, &[(item, "ON_HOLD_BY_SUPPLIER")]));
    let path = format!("/orders/{order}");
    for n in 1..=3 {
        let summary = rig.pass().await;
        assert_eq!(
            (summary.due, summary.polled, summary.failures),
            (1, 1, 0),
            "pass {n}: {summary:?}"
        );
        assert_eq!(
            rig.item(item),
            ("ON_HOLD_BY_SUPPLIER".to_owned(), "poll".to_owned())
        );
        assert_eq!(rig.fake().count("GET", &path), n);
        rig.advance(Duration::minutes(1));
    }
    // Settled at Musement: polled once more, then no longer due.
    rig.fake().set_item_status(order, item, "OK");
    assert_eq!(rig.pass().await.polled, 1);
    assert_eq!(rig.item(item).0, "OK");
    rig.advance(Duration::minutes(1));
    assert_eq!(rig.pass().await.due, 0, "OK with a voucher is settled");
    rig.close().await;
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_fails_every_due_order_and_then_recovers() {
    let rig = rig("").await;
    let orders: Vec<(Uuid, Uuid)> = (0..3).map(|_| (new_uuid(), new_uuid())).collect();
    for (order, item) in &orders {
        rig.seed(*order, *item).await;
        rig.fake().put_order(order_json(*order, &[(*item, "OK")]));
    }
    let before = rig.snapshot();

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
        rig.fake().set_outage("/login", Some(outage));
        let logins_before = rig.fake().count("POST", "/login");
        let summary = rig.pass().await;
        assert_eq!(
            (summary.due, summary.polled, summary.failures),
            (3, 0, 3),
            "{summary:?}"
        );
        let logins = rig.fake().count("POST", "/login") - logins_before;
        eprintln!("token endpoint down ({word}): {logins} login attempts for 3 due orders");
        assert!(
            (1..=3).contains(&logins),
            "{logins} login attempts for 3 orders"
        );
        assert_eq!(
            rig.fake().count("GET", "/orders/"),
            0,
            "no GET without a token"
        );
        for (order, _) in &orders {
            let state = rig.poll_state(*order);
            assert_eq!(state.failures, nth as i64 + 1);
            let error = state.last_error.unwrap_or_default().to_lowercase();
            assert!(error.contains(word), "{error}");
        }
        assert_eq!(rig.snapshot(), before, "no item changed");
        rig.advance(Duration::minutes(10));
    }

    rig.fake().set_outage("/login", None);
    let summary = rig.pass().await;
    assert_eq!((summary.polled, summary.failures), (3, 0), "{summary:?}");
    assert_eq!(rig.fake().tokens_issued(), 1, "one login for the pass");
    for (order, item) in &orders {
        assert_eq!(rig.item(*item).0, "OK");
        assert_eq!(rig.poll_state(*order).failures, 0);
    }
    rig.close().await;
}

#[tokio::test]
async fn a_hanging_token_endpoint_costs_one_timeout_per_pass_not_one_per_order() {
    let rig = rig("request_timeout = \"250ms\"\nconcurrency = 4").await;
    let orders: Vec<(Uuid, Uuid)> = (0..8).map(|_| (new_uuid(), new_uuid())).collect();
    for (order, item) in &orders {
        rig.seed(*order, *item).await;
    }
    rig.fake().set_outage(
        "/login",
        Some(FakeResponse::status(200).delayed(StdDuration::from_secs(5))),
    );
    let started = Instant::now();
    let summary = rig.pass().await;
    let took = started.elapsed();
    let logins = rig.fake().count("POST", "/login");
    eprintln!("hanging token endpoint: 8 due orders, {logins} logins, pass took {took:?}");
    assert_eq!(summary.failures, 8);
    assert_eq!(logins, 1, "one login attempt per pass, not one per order");
    rig.close().await;
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
            .filter(|l| l["fields"]["order"] == order.to_string())
            .map(|l| {
                (
                    l["level"].as_str().unwrap_or("").to_owned(),
                    l["fields"]["message"].as_str().unwrap_or("").to_owned(),
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

    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    rig.fake()
        .put_order(order_json(order, &[(item, "PENDING")]));
    let path = format!("/orders/{order}");
    let down = || Some(FakeResponse::fixture(503, "error-service-unavailable.json"));

    // Five failed polls in a row: one warning, then debug lines.
    rig.fake().set_outage(&path, down());
    for _ in 0..5 {
        assert_eq!(rig.pass().await.failures, 1);
        rig.advance(Duration::minutes(10));
    }
    let lines = captured.about(order);
    assert_eq!(
        count(&lines, "WARN", "poll failed; backing off"),
        1,
        "{lines:#?}"
    );
    assert_eq!(count(&lines, "DEBUG", "poll failed again"), 4, "{lines:#?}");

    // Recovery: said once, at INFO; further good polls say nothing about the order.
    rig.fake().set_outage(&path, None);
    for _ in 0..3 {
        assert_eq!(rig.pass().await.polled, 1);
        rig.advance(Duration::minutes(10));
    }
    let lines = captured.about(order);
    assert_eq!(
        count(&lines, "INFO", "polling works again"),
        1,
        "{lines:#?}"
    );

    // A second outage is a new state change: one more warning.
    rig.fake().set_outage(&path, down());
    for _ in 0..3 {
        assert_eq!(rig.pass().await.failures, 1);
        rig.advance(Duration::minutes(10));
    }
    let lines = captured.about(order);
    assert_eq!(
        count(&lines, "WARN", "poll failed; backing off"),
        2,
        "{lines:#?}"
    );
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
    rig.close().await;
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
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n{}",
        config_text(&fake.base_url(), "")
            .replace("interval = \"1h\"", "interval = \"1s\"")
            .replace("backoff_base = \"30s\"", "backoff_base = \"100ms\"")
            .replace("backoff_cap = \"10m\"", "backoff_cap = \"200ms\"")
    );
    // Register the order before the daemon starts, as `orderwatch watch` would.
    {
        std::fs::write(dir.path().join("config.toml"), &config).unwrap();
        let loaded = Config::load(&dir.path().join("config.toml")).unwrap();
        let (writer, thread) =
            startup::open_store(&loaded, Arc::new(orderwatch::clock::SystemClock))
                .await
                .unwrap();
        writer.watch(vec![order]).await.unwrap();
        drop(writer);
        thread.shutdown().await;
    }
    let daemon = Daemon::start(dir, &config);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // While the API is down (several passes, each failing), webhooks are answered 200 at once.
    let mut n = 0;
    let deadline = Instant::now() + StdDuration::from_secs(15);
    while fake.count("POST", "/login") < 4 {
        assert!(Instant::now() < deadline, "the reconciler never retried");
        n += 1;
        let started = Instant::now();
        let response = client
            .post(daemon.webhook_url())
            .header("content-type", "application/json")
            .body(crate::helpers::webhook(
                &crate::helpers::uuid(1, n),
                &crate::helpers::uuid(2, n),
                1,
                "PENDING",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < StdDuration::from_secs(1),
            "a webhook took {:?} while the API was down",
            started.elapsed()
        );
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    let retries = fake.count("POST", "/login");

    // The API recovers: the watched order converges without any webhook.
    fake.set_outage("", None);
    let db = Connection::open(daemon.dir.path().join("orderwatch.db")).unwrap();
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
    let stored: i64 = db
        .query_row(
            "SELECT count(*) FROM order_items WHERE source = 'webhook'",
            [],
            |r| r.get(0),
        )
        .unwrap();
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
        .filter(|l| l["fields"]["order"] == order.to_string())
        .collect();
    let said = |level: &str, message: &str| {
        about
            .iter()
            .filter(|l| l["level"] == level && l["fields"]["message"] == message)
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
    let rig = rig("").await;
    let (order, item) = (new_uuid(), new_uuid());
    rig.seed(order, item).await;
    // Valid JSON with the customer object up front, as Musement sends it, and one field of the
    // wrong type further down.
    let mut body = order_json(order, &[(item, "OK")]);
    body["items"] = json!("not a list");
    rig.fake()
        .push_response(&format!("/orders/{order}"), FakeResponse::json(200, body));
    assert_eq!(rig.pass().await.failures, 1);
    let error = rig.poll_state(order).last_error.unwrap_or_default();
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    for personal in crate::helpers::fake_musement::PERSONAL_VALUES {
        assert!(
            !error.contains(personal),
            "{personal} in orders.last_error: {error}"
        );
        assert!(!log.contains(personal), "{personal} in the log: {log}");
    }
    rig.close().await;
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
    let rig = rig(&format!("concurrency = {concurrency}")).await;
    let orders: Vec<Uuid> = (0..20).map(|_| new_uuid()).collect();
    for order in &orders {
        rig.fake()
            .put_order(order_json(*order, &[(new_uuid(), "PENDING")]));
        rig.fake().set_outage(
            &format!("/orders/{order}"),
            Some(FakeResponse::status(429).with_header("retry-after", "120")),
        );
    }
    rig.writer.watch(orders.clone()).await.unwrap();
    let order_gets = || {
        rig.fake()
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/orders/"))
            .count()
    };

    // The daemon's scheduled pass, which logs its summary.
    rig.fake().set_date(Some(rig.clock.now()));
    rig.reconciler.tick().await;
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
        .find(|l| l["level"] == "INFO" && l["fields"].get("due").is_some())
        .expect("a pass summary line");
    let fields = &summary["fields"];
    assert_eq!(
        fields["message"], "reconciler pass; paused until 2024-01-01T12:02:00Z",
        "{summary}"
    );
    assert_eq!(
        [
            &fields["due"],
            &fields["polled"],
            &fields["failures"],
            &fields["paused_orders"]
        ],
        [&json!(20), &json!(0), &json!(gets), &json!(20 - gets)],
        "only the polls that got the 429 failed: {summary}"
    );
    assert_eq!(rig.paused_gauge().await, until.timestamp());
    // The orders not polled are neither failed nor backed off: they are due as before.
    let backed_off = orders
        .iter()
        .filter(|o| rig.poll_state(**o).failures > 0)
        .count();
    assert_eq!(backed_off, gets);
    for order in &orders {
        let state = rig.poll_state(*order);
        if state.failures == 0 {
            assert_eq!(state.last_error, None, "{state:?}");
            assert!(
                state.next_poll_at.is_none_or(|next| next <= start),
                "{order} was backed off: {state:?}"
            );
        }
    }

    // A pass during the wait sends nothing at all, not even a login.
    rig.fake().revoke_tokens();
    rig.advance(Duration::seconds(119));
    let sent = rig.fake().requests().len();
    let summary = rig.pass().await;
    assert_eq!(rig.fake().requests().len(), sent, "{summary:?}");
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
        rig.fake().set_outage(&format!("/orders/{order}"), None);
    }
    rig.advance(Duration::seconds(1));
    assert_eq!(rig.paused_gauge().await, 0);
    let summary = rig.pass().await;
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
    rig.close().await;
}
