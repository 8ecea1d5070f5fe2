//! The reconciler against the fake Musement API on 127.0.0.1:0, on a `ManualClock`: one
//! [`Harness`] for every test that drives passes by hand (reconciler, API faults, metrics).
//! It builds the store and the reconciler the way the daemon does, so a pass here is a pass
//! there; what it adds is a clock the test moves and the database read back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::db::{Query, TestDb};
use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::{Clock, ManualClock};
use orderwatch::config::Config;
use orderwatch::metrics::Metrics;
use orderwatch::observation::Observation;
use orderwatch::reconciler::{self, PassSummary, Reconciler};
use orderwatch::store;
use orderwatch::store::Outcome;
use orderwatch::store::reads::Reads;
use orderwatch::store::writer::{Writer, WriterThread};
use tempfile::TempDir;
use uuid::Uuid;

use super::fake_musement::{
    APPLICATION, CLIENT_ID, CLIENT_SECRET, FakeMusement, new_uuid, order_json,
};

/// The harness's clock starts here; the fake's activity dates (February 2024) are ahead of it.
pub const START: &str = "2024-01-01T12:00:00Z";

/// Config text pointing at `fake`, with `reconciler_extra` appended to `[reconciler]`.
pub fn config_for(fake: &FakeMusement, reconciler_extra: &str) -> String {
    config_at(&fake.base_url(), reconciler_extra)
}

/// `[musement]` pointing at `base_url` with the fake's credentials, and `[reconciler]` with an
/// hourly interval, no rate limit and `reconciler_extra` appended.
pub fn config_at(base_url: &str, reconciler_extra: &str) -> String {
    // No ceiling on requests unless the test sets one.
    let ceiling = if reconciler_extra.contains("max_requests_per_second") {
        ""
    } else {
        "max_requests_per_second = 0.0\n"
    };
    format!(
        "[musement]\nbase_url = \"{base_url}\"\napplication = \"{APPLICATION}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\n[reconciler]\n\
         interval = \"1h\"\n{ceiling}{reconciler_extra}\n"
    )
}

/// `text` as a timestamp.
pub fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// A reconciler and its store on a `ManualClock`, and the fake API it polls (or nothing at all).
pub struct Harness {
    /// `None` while nothing listens at the configured base URL.
    fake: Option<FakeMusement>,
    /// Unless a test pins it, the fake's `Date` header follows the harness clock, as Musement's
    /// server time follows real time.
    date_pinned: AtomicBool,
    /// The clock the reconciler and the store read; the test moves it.
    pub clock: Arc<ManualClock>,
    /// The reconciler under test.
    pub reconciler: Reconciler,
    /// The store's writer, shared with the reconciler.
    pub writer: Writer,
    writer_thread: Option<WriterThread>,
    /// The store's read side, as the daemon's.
    pub reads: Reads,
    /// What the writer, the reconciler and its API client count into.
    pub metrics: Arc<Metrics>,
    /// The loaded config (`dir/config.toml`).
    pub config: Config,
    /// The folder holding the config and the database.
    pub dir: TempDir,
}

/// A harness against a fresh fake, with `reconciler_extra` appended to `[reconciler]`.
pub async fn harness(reconciler_extra: &str) -> Harness {
    let fake = FakeMusement::start().await;
    let mut harness = harness_at(&fake.base_url(), reconciler_extra).await;
    harness.fake = Some(fake);
    harness
}

/// A harness whose API is `base_url`, where nothing may listen yet (see
/// [`Harness::start_fake_on`]).
pub async fn harness_at(base_url: &str, reconciler_extra: &str) -> Harness {
    harness_on(&config_at(base_url, reconciler_extra)).await
}

/// A harness on the config `text` (written to `dir/config.toml`), with no fake attached; its
/// reconciler runs in the role `"test"` (see [`Harness::reconciler_as`] for others).
pub async fn harness_on(text: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = super::config_file(dir.path(), text);
    let config = Config::load(&path).unwrap();
    let clock = Arc::new(ManualClock::new(at(START)));
    let metrics = Arc::new(Metrics::new());
    let store::Opened {
        writer,
        writer_thread,
        reads,
    } = store::open(&config, clock.clone(), metrics.clone())
        .await
        .unwrap();
    Harness {
        fake: None,
        date_pinned: AtomicBool::new(false),
        reconciler: reconciler_as(&config, &writer, &reads, &clock, &metrics, "test"),
        clock,
        writer,
        writer_thread: Some(writer_thread),
        reads,
        metrics,
        config,
        dir,
    }
}

/// A reconciler built the way the daemon builds it, in `role` (`reconciler::DAEMON_ROLE`, or
/// a command's name), on `writer`, `reads` and `clock`, counting into `metrics`.
fn reconciler_as(
    config: &Config,
    writer: &Writer,
    reads: &Reads,
    clock: &Arc<ManualClock>,
    metrics: &Arc<Metrics>,
    role: &str,
) -> Reconciler {
    reconciler::build(
        config,
        writer.clone(),
        reads.clone(),
        clock.clone(),
        metrics.clone(),
        role,
    )
    .unwrap()
}

/// Rows as text (`NULL` as `None`).
pub type Rows = Vec<Vec<Option<String>>>;

/// Item rows, order facts and the event count: what a failed answer must leave as it was.
pub type Snapshot = (Rows, Rows, i64);

/// What an order row says about polling it.
#[derive(Debug)]
pub struct PollState {
    /// Failed polls in a row.
    pub failures: i64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When the order is due again.
    pub next_poll_at: Option<DateTime<Utc>>,
}

impl Harness {
    /// The fake API (panics while nothing listens).
    pub fn fake(&self) -> &FakeMusement {
        self.fake.as_ref().expect("the fake is running")
    }

    /// Starts the fake API at `addr`, where the config already points.
    pub async fn start_fake_on(&mut self, addr: SocketAddr) -> &FakeMusement {
        self.fake.insert(FakeMusement::start_on(addr).await)
    }

    /// A second reconciler on this harness's store and clock, in `role` (the lease holder's
    /// name depends on it).
    pub fn reconciler_as(&self, role: &str) -> Reconciler {
        reconciler_as(
            &self.config,
            &self.writer,
            &self.reads,
            &self.clock,
            &self.metrics,
            role,
        )
    }

    /// Runs a pass that must not stop early.
    pub async fn pass(&self) -> PassSummary {
        let summary = self.any_pass().await;
        assert_eq!(summary.stopped, None, "{summary:?}");
        summary
    }

    /// Runs a pass, whatever its outcome.
    pub async fn any_pass(&self) -> PassSummary {
        if let Some(fake) = &self.fake
            && !self.date_pinned.load(Ordering::SeqCst)
        {
            fake.set_date(Some(self.clock.now()));
        }
        self.reconciler.run_once().await.unwrap()
    }

    /// Fixes the fake's `Date` header.
    pub fn pin_date(&self, date: DateTime<Utc>) {
        self.date_pinned.store(true, Ordering::SeqCst);
        self.fake().set_date(Some(date));
    }

    /// Registers `orders` as `orderwatch watch` does.
    pub async fn watch(&self, orders: &[Uuid]) {
        self.writer.watch(orders.to_vec()).await.unwrap();
    }

    /// Puts `order` with `items` at the fake and watches it.
    pub async fn watch_order(&self, order: Uuid, items: &[(Uuid, &str)]) {
        self.fake().put_order(order_json(order, items));
        self.watch(&[order]).await;
    }

    /// A new watched order with one item in `status` at the fake: `(order, item)`.
    pub async fn watch_new_order(&self, status: &str) -> (Uuid, Uuid) {
        let (order, item) = (new_uuid(), new_uuid());
        self.watch_order(order, &[(item, status)]).await;
        (order, item)
    }

    /// `n` new watched orders, each with one `PENDING` item at the fake.
    pub async fn watch_new_orders(&self, n: usize) -> Vec<Uuid> {
        let orders: Vec<Uuid> = (0..n).map(|_| new_uuid()).collect();
        for order in &orders {
            self.fake()
                .put_order(order_json(*order, &[(new_uuid(), "PENDING")]));
        }
        self.watch(&orders).await;
        orders
    }

    /// Delivers a webhook through the same store function the receiver uses.
    pub async fn webhook(
        &self,
        item: Uuid,
        order: Uuid,
        version: i64,
        status: &str,
        updated: DateTime<Utc>,
    ) -> Outcome {
        let body = serde_json::json!({
            "order_id": "1", "order_uuid": order.to_string(), "order_created": "2024-01-01T10:00:00+0000",
            "order_updated": updated.to_rfc3339(), "order_version": version.to_string(),
            "order_item_uuid": item.to_string(), "order_item_created": "2024-01-01T10:00:00+0000",
            "order_item_updated": updated.to_rfc3339(), "order_item_version": version.to_string(),
            "order_item_status": status,
        });
        let observation =
            Observation::from_webhook(body.to_string().as_bytes(), self.clock.now()).unwrap();
        self.writer.apply(observation).await.unwrap()
    }

    /// Stores a `PENDING` webhook for `item` of `order`, then lets the quiet period pass so
    /// the order is due: a known state that a failed poll must not touch.
    pub async fn seed_pending(&self, order: Uuid, item: Uuid) {
        let outcome = self
            .webhook(item, order, 1, "PENDING", self.clock.now())
            .await;
        assert_eq!(outcome, Outcome::Applied);
        self.advance(Duration::minutes(3));
    }

    /// [`Harness::seed_pending`] for a new order with one item: `(order, item)`.
    pub async fn seed_new_pending(&self) -> (Uuid, Uuid) {
        let (order, item) = (new_uuid(), new_uuid());
        self.seed_pending(order, item).await;
        (order, item)
    }

    /// Moves the clock on.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// A separate connection to the database, as an operator's `sqlite3` would have.
    pub fn db(&self) -> TestDb {
        TestDb::open(self.dir.path(), &self.config.database.path)
    }

    /// `(status, source)` of an item.
    pub fn item(&self, item: Uuid) -> (String, String) {
        self.db()
            .query_row(
                "SELECT status, source FROM order_items WHERE item_uuid = ?1",
                [item.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    /// One text column of an order row.
    pub fn order_field(&self, order: Uuid, column: &str) -> Option<String> {
        self.field("orders", "order_uuid", order, column)
    }

    /// One text column of an item row.
    pub fn item_field(&self, item: Uuid, column: &str) -> Option<String> {
        self.field("order_items", "item_uuid", item, column)
    }

    /// `column` of the `table` row whose `key_column` is `key`.
    fn field(&self, table: &str, key_column: &str, key: Uuid, column: &str) -> Option<String> {
        self.db()
            .query_row(
                &format!("SELECT {column} FROM {table} WHERE {key_column} = ?1"),
                [key.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// GETs of `order` the fake received.
    pub fn gets(&self, order: Uuid) -> usize {
        self.fake().gets(order)
    }

    /// Every item row and order fact a poll could change, and the number of events: what a
    /// failed answer must leave exactly as it was.
    pub fn snapshot(&self) -> Snapshot {
        let db = self.db();
        let rows = |sql: &str| -> Rows {
            db.query_rows(sql, [], |r| {
                (0..r.as_ref().column_count())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
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

    /// What the order row says about polling `order`.
    pub fn poll_state(&self, order: Uuid) -> PollState {
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

    /// Asserts (naming `case`) the pass just run failed `order` for the `nth` time in a row with
    /// an error containing every one of `words`, backed off by `30 s × 2^(nth-1) × [0.5, 1]`
    /// (the default `backoff_base`), and left `before` untouched.
    pub fn assert_failed(
        &self,
        case: &str,
        summary: &PassSummary,
        order: Uuid,
        nth: i64,
        words: &[&str],
        before: &Snapshot,
    ) {
        assert_eq!(
            (summary.polled, summary.failures),
            (0, 1),
            "{case}: {summary:?}"
        );
        let state = self.poll_state(order);
        assert_eq!(state.failures, nth, "{case}: {state:?}");
        let error = state.last_error.clone().unwrap_or_default();
        eprintln!("{case}: failure {nth} of {order}: last_error = {error:?}");
        for word in words {
            assert!(
                error.to_lowercase().contains(&word.to_lowercase()),
                "{case}: last_error {error:?} lacks {word:?}"
            );
        }
        let base = Duration::seconds(30) * 2i32.pow(nth as u32 - 1);
        let now = self.clock.now();
        let next = state.next_poll_at.expect("a failed order has a next poll");
        assert!(
            next >= now + base / 2 && next <= now + base,
            "{case}: next poll {next} is not now + {base} × [0.5, 1]"
        );
        assert_eq!(
            &self.snapshot(),
            before,
            "{case}: nothing from a failed answer changes an item"
        );
    }

    /// The API answers normally again: after the backoff the order is polled, its item takes
    /// Musement's status and the order's failure count and error are cleared.
    pub async fn assert_converges(&self, case: &str, order: Uuid, item: Uuid, status: &str) {
        self.advance(Duration::minutes(10));
        let summary = self.pass().await;
        assert_eq!(
            (summary.polled, summary.failures),
            (1, 0),
            "{case}: {summary:?}"
        );
        assert_eq!(
            self.item(item),
            (status.to_owned(), "poll".to_owned()),
            "{case}"
        );
        let state = self.poll_state(order);
        assert_eq!((state.failures, state.last_error), (0, None), "{case}");
    }

    /// The `/metrics` text as the daemon would render it now (plain Prometheus format).
    pub async fn metrics_text(&self) -> String {
        let source = orderwatch::metrics::StateSource::new(
            self.reads.clone(),
            self.clock.clone(),
            orderwatch::leadership::Leadership::sole(),
        );
        self.metrics.render(&source, false).await
    }

    /// `orderwatch ARGS --config` this harness's config, as a command ready to run.
    pub fn cli(&self, args: &[&str]) -> std::process::Command {
        super::cli(&self.dir.path().join("config.toml"), args)
    }

    /// Drops the reconciler and shuts the writer down.
    pub async fn close(mut self) {
        drop(self.reconciler);
        self.writer_thread.take().unwrap().shutdown().await;
    }
}
