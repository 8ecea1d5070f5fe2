//! The inspection and maintenance commands as the real binary, against a database filled by
//! the real ingest paths: webhooks posted to the running daemon and polls by `orderwatch
//! reconcile --once` against the fake Musement API. Also the v2 views and the v1 migration.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderwatch::clock::ManualClock;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::backend;
use crate::helpers::backend::sqlite_only;
use crate::helpers::db::{Query, TestDb, column, row, rows, value};
use crate::helpers::fake_musement::{FakeMusement, FakeResponse, new_uuid, order_json};
use crate::helpers::process::{lines_of, signal, wait_bounded};
use crate::helpers::{
    Daemon, assert_one_line_error, cli, config_file, config_for, fixture, read_repo_file,
    spawn_app_in, webhook, write_config_at,
};

/// Generous bound for anything the tests wait on.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `orderwatch ARGS --config CONFIG`; returns (exit code, stdout, stderr).
fn ow(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = cli(config, args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `ow` that must succeed; returns stdout.
fn ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = ow(config, args);
    assert_eq!(code, 0, "orderwatch {args:?}: {stderr}");
    stdout
}

/// A running daemon with a reconciler config pointing at a fake API, and what went in:
/// order A (webhooks only): a1 PENDING v1, OK v3, then v2 (stale) and v3 again (duplicate);
/// a2 PENDING v1. Order B, watched and polled through `reconcile --once`: b1 PENDING.
/// One rejected webhook.
struct Filled {
    /// The API the daemon's reconciler and `reconcile --once` poll.
    fake: FakeMusement,
    /// The real daemon the webhooks went to.
    daemon: Daemon,
    /// Its config file, for the commands under test.
    config: PathBuf,
    /// Its database.
    db: PathBuf,
    /// Order A (webhooks only).
    order_a: Uuid,
    /// Its item a1: PENDING v1, OK v3, then v2 (stale) and v3 again (duplicate).
    a1: Uuid,
    /// Its item a2: PENDING v1.
    a2: Uuid,
    /// Order B (watched and polled only).
    order_b: Uuid,
    /// Its item b1: PENDING, as polled.
    b1: Uuid,
}

impl Filled {
    async fn start() -> Self {
        let fake = FakeMusement::start().await;
        let config_text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            config_for(&fake, "")
        );
        let daemon = Daemon::start(tempfile::tempdir().unwrap(), &config_text);
        let config = daemon.dir.path().join("config.toml");
        let db = daemon.db_path();
        let filled = Self {
            fake,
            daemon,
            config,
            db,
            order_a: new_uuid(),
            a1: new_uuid(),
            a2: new_uuid(),
            order_b: new_uuid(),
            b1: new_uuid(),
        };
        let (a, a1, a2) = (filled.order_a, filled.a1, filled.a2);
        for (item, version, status) in [
            (a1, 1, "PENDING"),
            (a1, 3, "OK"),
            (a1, 2, "PENDING"),
            (a1, 3, "OK"),
            (a2, 1, "PENDING"),
        ] {
            filled.post(item, a, version, status).await;
        }
        let bad = fixture("webhooks/bad/missing-order-item-uuid.json");
        assert_eq!(filled.daemon.post_webhook(bad).await, 400);
        filled
            .fake
            .put_order(order_json(filled.order_b, &[(filled.b1, "PENDING")]));
        let config = filled.config.clone();
        let order_b = filled.order_b.to_string();
        tokio::task::spawn_blocking(move || {
            ok(&config, &["watch", &order_b]);
            let summary = ok(&config, &["reconcile", "--once"]);
            assert!(summary.contains("polled: 1"), "{summary}");
        })
        .await
        .unwrap();
        filled
    }

    async fn post(&self, item: Uuid, order: Uuid, version: u64, status: &str) {
        let body = webhook(&item.to_string(), &order.to_string(), version, status);
        assert_eq!(self.daemon.post_webhook(body).await, 200);
    }

    fn ow(&self, args: &[&str]) -> (i32, String, String) {
        ow(&self.config, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&self.config, args)
    }

    /// `orderwatch changes ARGS`, read again until it prints `lines` lines (bounded): on
    /// PostgreSQL the feed shows a change only once every older transaction has ended, and the
    /// daemon's own (a heartbeat, a lease) may still be open when the command reads.
    fn changes(&self, args: &[&str], lines: usize) -> String {
        let args: Vec<&str> = ["changes"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let text = self.ok(&args);
            if text.lines().count() >= lines || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }
}

/// Each element of the JSON array `array`, read by `read`.
fn each<T>(array: &Value, read: impl Fn(&Value) -> T) -> Vec<T> {
    let elements = array.as_array();
    let elements = elements.unwrap_or_else(|| panic!("not an array: {array}"));
    elements.iter().map(read).collect()
}

/// The JSON string `value`.
fn text(value: &Value) -> String {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    text.to_owned()
}

/// The element of the JSON array `items` that is about `item`.
fn item_in(items: &Value, item: Uuid) -> &Value {
    let elements = items.as_array().unwrap();
    let found = elements.iter().find(|i| i["item"] == item.to_string());
    found.unwrap_or_else(|| panic!("no {item} in {items}"))
}

/// `(item, status)` pairs of a JSON array of items, sorted.
fn statuses(items: &Value) -> Vec<(String, String)> {
    let mut pairs = each(items, |i| (text(&i["item"]), text(&i["status"])));
    pairs.sort();
    pairs
}

fn sorted(mut pairs: Vec<(Uuid, &str)>) -> Vec<(String, String)> {
    pairs.sort_by_key(|(u, _)| u.to_string());
    pairs
        .into_iter()
        .map(|(u, s)| (u.to_string(), s.to_owned()))
        .collect()
}

fn assert_fits_80_columns(text: &str) {
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "{} wide: {line}", line.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_lists_filters_and_formats_the_reconciled_rows() {
    let f = Filled::start().await;
    let all = f.json(&["items", "--format", "json"]);
    assert_eq!(
        statuses(&all),
        sorted(vec![(f.a1, "OK"), (f.a2, "PENDING"), (f.b1, "PENDING")])
    );
    let a1 = item_in(&all, f.a1);
    assert_eq!(a1["order"], f.order_a.to_string());
    assert_eq!(
        (a1["version"].as_i64(), a1["source"].as_str()),
        (Some(3), Some("webhook"))
    );
    assert_eq!(a1["as_of"], "2024-01-01T00:00:03.000Z");
    assert!(a1["age_seconds"].as_i64().unwrap() >= 0);
    let b1 = item_in(&all, f.b1);
    assert_eq!(
        (b1["source"].as_str(), b1["version"].as_i64()),
        (Some("poll"), None)
    );

    let pending = f.json(&["items", "--status", "pending", "--format", "json"]);
    assert_eq!(
        statuses(&pending),
        sorted(vec![(f.a2, "PENDING"), (f.b1, "PENDING")])
    );
    let several = f.json(&["items", "--status", "OK,PENDING", "--format", "json"]);
    assert_eq!(several.as_array().unwrap().len(), 3);
    let of_a = f.json(&[
        "items",
        "--order",
        &f.order_a.to_string(),
        "--format",
        "json",
    ]);
    assert_eq!(
        statuses(&of_a),
        sorted(vec![(f.a1, "OK"), (f.a2, "PENDING")])
    );
    let recent = f.json(&["items", "--since", "1h", "--format", "json"]);
    assert_eq!(recent.as_array().unwrap().len(), 3);
    let forever = f.json(&["items", "--since", "1000000years", "--format", "json"]);
    assert_eq!(forever.as_array().unwrap().len(), 3, "no overflow");
    let none = f.json(&["items", "--since", "0s", "--format", "json"]);
    assert_eq!(
        none.as_array().unwrap().len(),
        0,
        "every change is older than now"
    );
    let (code, _, stderr) = f.ow(&["items", "--since", "lately"]);
    assert_eq!(code, 2, "{stderr}");
    let overdue = f.json(&["items", "--overdue", "--format", "json"]);
    assert_eq!(
        overdue.as_array().unwrap().len(),
        0,
        "PT30M deadlines are ahead"
    );
    let limited = f.json(&["items", "--limit", "1", "--format", "json"]);
    assert_eq!(limited.as_array().unwrap().len(), 1);

    let ndjson = f.ok(&["items", "--format", "ndjson"]);
    let lines: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    let csv_text = f.ok(&["items", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "item",
            "order",
            "status",
            "version",
            "source",
            "as_of",
            "changed_at",
            "age_seconds",
            "confirm_deadline",
            "overdue"
        ]
    );
    let mut rows: Vec<(String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_owned(), r[2].to_owned())
        })
        .collect();
    rows.sort();
    assert_eq!(rows, statuses(&all));
    let empty = f.ok(&["items", "--status", "KO", "--format", "csv"]);
    assert_eq!(
        empty.lines().next(),
        csv_text.lines().next(),
        "header even when empty"
    );

    let table = f.ok(&["items"]);
    assert_fits_80_columns(&table);
    assert!(table.starts_with("ITEM"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    let a1_line = table
        .lines()
        .find(|l| l.starts_with(&f.a1.to_string()[..8]))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        a1_line.contains("OK") && a1_line.contains("webhook"),
        "{a1_line}"
    );
}

/// A status nobody stores and Musement does not document is a typo: with nothing else asked
/// for it is an error (exit 2) naming the documented statuses and the closest one; beside a
/// real status it is a warning. A documented status no item has is simply an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_with_an_unknown_status_says_so_instead_of_an_empty_table() {
    let f = Filled::start().await;
    let (code, stdout, stderr) = f.ow(&["items", "--status", "PENDNG"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--status PENDNG: no item has this status and it is not a documented one (PENDING, OK, KO, REFUND_STARTED, REFUNDED, CANCELLATION_ERROR); did you mean PENDING?"),
        "{stderr}"
    );
    let (code, stdout, stderr) = f.ow(&["items", "--status", "pendng,ok", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("orderwatch: warning: --status PENDNG: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(statuses(&listed), sorted(vec![(f.a1, "OK")]));
    let (code, stdout, stderr) = f.ow(&["items", "--status", "KO", "--format", "json"]);
    assert_eq!((code, stdout.trim(), stderr.as_str()), (0, "[]", ""));
    // Far from every documented status: no guess.
    let (code, _, stderr) = f.ow(&["items", "--status", "SHIPPED"]);
    assert_eq!(code, 2);
    assert!(!stderr.contains("did you mean"), "{stderr}");
}

/// `reconcile` runs one pass over the orders due now (as the schedule would) and says what it
/// left for later and why; `--all-due` polls those too; `--order` polls exactly the orders
/// named; `--once` is still accepted. Nothing prints the daemon's INFO lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_polls_the_due_orders_then_all_or_named_ones_and_says_what_is_left() {
    let f = Filled::start().await;
    f.fake
        .put_order(order_json(f.order_a, &[(f.a1, "OK"), (f.a2, "PENDING")]));
    let gets = |order: Uuid| f.fake.gets(order);
    let (a_before, b_before) = (gets(f.order_a), gets(f.order_b));
    let config = f.config.clone();
    let run = move |args: &[&str]| {
        let config = config.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ow(&config, &args)
        })
        .join()
        .unwrap()
    };

    // Order A had webhooks a moment ago: it waits out quiet_period (2m); B is due again.
    let (code, stdout, stderr) = run(&["reconcile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("orders due: 1, polled: 1,"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        "left for later: 1 order(s): 1 due within quiet_period = 2m (a webhook arrived lately, \
         so Musement is talking); `orderwatch reconcile --all-due` polls them now",
        "{stdout}"
    );
    assert!(!stderr.contains(" INFO "), "no daemon log lines: {stderr}");
    assert_eq!((gets(f.order_a), gets(f.order_b)), (a_before, b_before + 1));

    let (code, stdout, stderr) = run(&["reconcile", "--all-due"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("orders due: 2, polled: 2,"), "{stdout}");
    assert!(
        !stdout.contains("left for later"),
        "A and B stay unsettled, so due: {stdout}"
    );
    assert_eq!(
        (gets(f.order_a), gets(f.order_b)),
        (a_before + 1, b_before + 2)
    );

    // Named: exactly these, and an order we never heard of is polled too.
    let unknown = new_uuid();
    f.fake.put_order(order_json(unknown, &[(new_uuid(), "OK")]));
    let named = format!("{},{unknown}", f.order_a);
    let (code, stdout, stderr) = run(&["reconcile", "--order", &named]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("orders due: 2, polled: 2,"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        (gets(f.order_a), gets(f.order_b)),
        (a_before + 2, b_before + 2)
    );
    assert_eq!(gets(unknown), 1);

    let (code, stdout, stderr) = run(&["reconcile", "--once"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("orders due: "), "{stdout}");
    let (code, _, stderr) = run(&["reconcile", "--all-due", "--order", &f.order_a.to_string()]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = run(&["reconcile", "--order", "nope"]);
    assert_eq!(code, 2, "{stderr}");

    // A pass the rate limit makes long says so before it starts.
    let text = std::fs::read_to_string(&f.config).unwrap();
    let slow = f.daemon.dir.path().join("slow.toml");
    write_config_at(
        &slow,
        text.replace(
            "max_requests_per_second = 0.0",
            "max_requests_per_second = 0.4",
        ),
    )
    .unwrap();
    let both = format!("{},{}", f.order_a, f.order_b);
    let (code, stdout, stderr) = {
        let slow = slow.clone();
        std::thread::spawn(move || ow(&slow, &["reconcile", "--order", &both]))
            .join()
            .unwrap()
    };
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "polling 2 orders at most 0.4 per second ([reconciler] max_requests_per_second): \
             at least 5 s"
        ),
        "{stderr}"
    );

    // Credentials refused while several polls are in flight: said once.
    let refused = f.daemon.dir.path().join("refused.toml");
    write_config_at(
        &refused,
        text.replace(FakeMusement::CLIENT_SECRET, "not-the-secret"),
    )
    .unwrap();
    let (code, stdout, stderr) = {
        let refused = refused.clone();
        std::thread::spawn(move || ow(&refused, &["reconcile", "--all-due"]))
            .join()
            .unwrap()
    };
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stderr.matches("Invalid client credentials").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        stderr.contains("orderwatch: the pass stopped early: login refused (HTTP 401)"),
        "{stderr}"
    );
}

/// Issue 19: what `reconcile` says is left for later leaves out the orders it just polled
/// (now waiting for an OK item's re-check) or tried (now backing off), with or without
/// `--all-due`; a later pass that does not poll them counts them, with the reason. The
/// progress lines count successful polls only: refused credentials are not "polled 1/1".
#[test]
fn reconcile_does_not_count_what_it_just_polled_as_left_for_later() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeMusement::start());
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &config_for(&fake, ""));
    // An OK item with a voucher and its activity ahead: re-checked every recheck_interval.
    let (rechecked, failing, pending) = (new_uuid(), new_uuid(), new_uuid());
    let mut ahead = order_json(rechecked, &[(new_uuid(), "OK")]);
    ahead["items"][0]["product"]["date"] = "2099-06-01 10:00".into();
    fake.put_order(ahead);
    fake.put_order(order_json(failing, &[(new_uuid(), "PENDING")]));
    fake.put_order(order_json(pending, &[(new_uuid(), "PENDING")]));
    for _ in 0..2 {
        fake.push_response(&format!("/orders/{failing}"), FakeResponse::status(503));
    }
    let orders = [rechecked, failing, pending].map(|o| o.to_string());
    ok(&config, &["watch", &orders[0], &orders[1], &orders[2]]);

    for args in [&["reconcile"][..], &["reconcile", "--all-due"]] {
        let (code, stdout, stderr) = ow(&config, args);
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.starts_with("orders due: 3, polled: 2, items changed: ")
                && stdout.contains("failures: 1,"),
            "{args:?}: {stdout}"
        );
        assert!(
            !stdout.contains("left for later"),
            "{args:?}: the three were just polled or tried: {stdout}"
        );
        assert!(
            stderr.contains("polled 2/3 orders, 1 failed or skipped"),
            "{args:?}: {stderr}"
        );
    }
    // A pass over the orders due polls the PENDING one only: the other two are left for later.
    let (code, stdout, stderr) = ow(&config, &["reconcile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("orders due: 1, polled: 1,"), "{stdout}");
    let left = stdout
        .lines()
        .find(|l| l.starts_with("left for later: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        left.starts_with("left for later: 2 order(s): 1 due later (settled OK items, ")
            && left.contains("; 1 backing off after failed polls, the first due at "),
        "{left}"
    );

    // Refused credentials: the one order handled is not counted as polled.
    let refused = dir.path().join("refused.toml");
    write_config_at(
        &refused,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(FakeMusement::CLIENT_SECRET, "not-the-secret"),
    )
    .unwrap();
    let (code, stdout, stderr) = ow(&refused, &["reconcile", "--order", &orders[2]]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.starts_with("orders due: 1, polled: 0,"), "{stdout}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("polled "))
        .collect();
    assert_eq!(
        progress.last(),
        Some(&"polled 0/1 orders, 1 failed or skipped"),
        "{stderr}"
    );
    assert!(!stderr.contains("polled 1/1"), "{stderr}");
    runtime.block_on(async { drop(fake) });
}

/// `stats` says whether the configuration turns the reconciler on and counts the orders still
/// to poll as `orders_to_poll`, keeping `orders_polled` (deprecated) in the machine formats;
/// its help says what the JSON is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_says_whether_the_reconciler_is_on_and_counts_orders_to_poll() {
    let f = Filled::start().await;
    let stats = f.json(&["stats", "--format", "json"]);
    assert!(stats.is_object(), "{stats}");
    assert_eq!(stats["orders_to_poll"], 2, "{stats}");
    assert_eq!(stats["orders_polled"], stats["orders_to_poll"]);
    assert_eq!(
        stats["reconciler"],
        serde_json::json!({"on": true, "schedule": "every 1h", "off_because": null})
    );
    let table = f.ok(&["stats"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {table}"))
            .to_owned()
    };
    assert!(row("reconciler").ends_with("on, every 1h"), "{table}");
    assert!(row("orders_to_poll").ends_with(" 2"), "{table}");
    assert!(!table.contains("orders_polled"), "{table}");
    let csv_text = f.ok(&["stats", "--format", "csv"]);
    for line in ["orders_to_poll,2", "orders_polled,2", "reconciler.on,true"] {
        assert!(csv_text.lines().any(|l| l == line), "{line} in {csv_text}");
    }

    // Off in the configuration: said, with why, in every format.
    let off = f.daemon.dir.path().join("off.toml");
    write_config_at(
        &off,
        "[database]\npath = \"orderwatch.db\"\n[reconciler]\nenabled = false\n",
    )
    .unwrap();
    let stats: Value = serde_json::from_str(&ok(&off, &["stats", "--format", "json"])).unwrap();
    assert_eq!(stats["reconciler"]["on"], false);
    assert_eq!(
        stats["reconciler"]["off_because"],
        "[reconciler] enabled = false"
    );
    let table = ok(&off, &["stats"]);
    assert!(
        table.contains("off: [reconciler] enabled = false"),
        "{table}"
    );
    let without = f.daemon.dir.path().join("no-credentials.toml");
    write_config_at(&without, "").unwrap();
    let table = ok(&without, &["stats"]);
    assert!(
        table.contains("off: no Musement API credentials"),
        "{table}"
    );

    let help = f.ok(&["stats", "--help"]);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for said in [
        "json (one object)",
        "`orders_polled` is the same number under its old name, deprecated",
        "`reconciler` says whether the configuration turns polling on",
    ] {
        assert!(help.contains(said), "{said} in {help}");
    }
    assert!(!help.contains("JSON array"), "{help}");
}

/// `show` says no poll is coming when the reconciler is off (instead of a "next at" that will
/// never come), and keeps its history columns aligned whatever the status length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_says_when_no_poll_is_coming_and_keeps_long_statuses_aligned() {
    let f = Filled::start().await;
    f.post(f.a2, f.order_a, 2, "CANCELLATION_ERROR").await;
    f.post(f.a2, f.order_a, 3, "OK").await;
    let text = f.ok(&["show", &f.order_a.to_string()]);
    assert_fits_80_columns(&text);
    let polling = text
        .lines()
        .find(|l| l.trim_start().starts_with("polling"))
        .unwrap();
    assert!(
        polling.contains("next at"),
        "the reconciler is on: {polling}"
    );
    // The outcome column starts at the same place on every history line.
    let history: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(history.len(), 7, "{text}");
    let outcome_at = |line: &str| {
        ["APPLIED", "STALE", "DUPLICATE"]
            .iter()
            .filter_map(|o| line.rfind(o))
            .max()
            .unwrap_or_else(|| panic!("no outcome in {line}"))
    };
    let columns: Vec<usize> = history.iter().map(|l| outcome_at(l)).collect();
    assert!(
        columns.iter().all(|c| *c == columns[0]),
        "outcomes not aligned ({columns:?}):\n{text}"
    );
    assert!(text.contains("CANCELLATION_ERROR APPLIED"), "{text}");

    let off = f.daemon.dir.path().join("off.toml");
    write_config_at(&off, "[database]\npath = \"orderwatch.db\"\n").unwrap();
    let text = ok(&off, &["show", &f.order_b.to_string()]);
    let polling = text
        .lines()
        .find(|l| l.trim_start().starts_with("polling"))
        .unwrap();
    assert_eq!(
        polling.split_whitespace().collect::<Vec<_>>().join(" "),
        "polling none: the reconciler is off (no Musement API credentials)",
        "{text}"
    );
    assert!(!text.contains("next at"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_explains_stale_and_duplicate_observations() {
    let f = Filled::start().await;
    let text = f.ok(&["show", &f.a1.to_string()]);
    assert_fits_80_columns(&text);
    // Explanations wrap; read them as one line.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains(&format!("item {}", f.a1)), "{text}");
    assert!(text.contains(&format!("order {}", f.order_a)), "{text}");
    assert!(text.contains("STALE"), "{text}");
    assert!(
        text.contains(
            "older than what is stored: a version below the highest one seen (v3 seen before)"
        ),
        "{text}"
    );
    assert!(text.contains("DUPLICATE"), "{text}");
    assert!(text.contains("this version was already stored"), "{text}");

    let json = f.json(&["show", &f.a1.to_string(), "--format", "json"]);
    let outcomes: Vec<(&str, i64)> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("applied", 1),
            ("applied", 3),
            ("stale", 2),
            ("duplicate", 3)
        ]
    );
    assert_eq!(json["items"][0]["status"], "OK");
    assert!(json["events"][2]["why"].as_str().unwrap().contains("older"));

    // A prefix as the tables print it, and an order with all its items.
    let prefix = &f.order_a.to_string()[..8];
    let order = f.json(&["show", prefix, "--format", "json"]);
    assert_eq!(order["order"]["order"], f.order_a.to_string());
    assert_eq!(order["items"].as_array().unwrap().len(), 2);
    assert_eq!(order["events"].as_array().unwrap().len(), 5);

    // The polled item says where its status came from.
    let polled = f.json(&["show", &f.b1.to_string(), "--format", "json"]);
    assert_eq!(polled["events"][0]["source"], "poll");
    assert_eq!(polled["order"]["watched"], true);
    assert!(
        polled["order"]["identifier"]
            .as_str()
            .unwrap()
            .starts_with("MUS")
    );

    let (code, _, stderr) = f.ow(&["show", &new_uuid().to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no item or order matches"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_rejected_report_what_came_in() {
    let f = Filled::start().await;
    let stats = f.json(&["stats", "--format", "json"]);
    assert_eq!(stats["items"], 3);
    assert_eq!(stats["pending"], 2);
    assert_eq!(stats["orders"], 2);
    assert_eq!(stats["watched_orders"], 1);
    assert_eq!(stats["orders_in_backoff"], 0);
    assert_eq!(stats["rejected_webhooks"], 1);
    assert_eq!(stats["events"], 6);
    let schema_version = if backend::postgres() {
        i64::from(orderwatch::store::postgres::migrate::SCHEMA_VERSION)
    } else {
        orderwatch::store::SCHEMA_VERSION
    };
    assert_eq!(stats["schema_version"], schema_version);
    assert!(stats["last_webhook_at"].is_string() && stats["last_poll_at"].is_string());
    assert!(stats["oldest_pending_age_seconds"].as_i64().unwrap() >= 0);
    let by_status = each(&stats["items_by_status"], |s| {
        (text(&s["status"]), s["count"].as_i64().unwrap())
    });
    assert_eq!(by_status, [("PENDING".into(), 2), ("OK".into(), 1)]);
    let hour = each(&stats["events_last_hour"], |e| {
        let count = e["count"].as_i64().unwrap();
        (text(&e["source"]), text(&e["outcome"]), count)
    });
    assert_eq!(
        hour,
        [
            ("poll".into(), "applied".into(), 1),
            ("webhook".into(), "applied".into(), 3),
            ("webhook".into(), "duplicate".into(), 1),
            ("webhook".into(), "stale".into(), 1),
        ]
    );
    let table = f.ok(&["stats"]);
    assert_fits_80_columns(&table);
    assert!(table.contains("items_by_status.PENDING"), "{table}");
    let csv_text = f.ok(&["stats", "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(reader.headers().unwrap(), vec!["metric", "value"]);
    let pending = reader
        .records()
        .map(Result::unwrap)
        .find(|r| &r[0] == "pending")
        .unwrap();
    assert_eq!(&pending[1], "2");
    let ndjson = f.ok(&["stats", "--format", "ndjson"]);
    assert_eq!(ndjson.lines().count(), 1);

    let rejected = f.json(&["rejected", "--format", "json"]);
    let rejected = rejected.as_array().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["field"], "order_item_uuid");
    let body = String::from_utf8(fixture("webhooks/bad/missing-order-item-uuid.json")).unwrap();
    assert_eq!(rejected[0]["body"], body);
    assert!(
        rejected[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1")
    );
    let table = f.ok(&["rejected"]);
    assert_fits_80_columns(&table);
    assert!(
        table.contains("order_item_uuid") && table.contains("from 127.0.0.1"),
        "{table}"
    );
    let csv_text = f.ok(&["rejected", "--format", "csv"]);
    assert_eq!(
        csv::Reader::from_reader(csv_text.as_bytes())
            .records()
            .count(),
        1
    );
}

/// The change feed's lines as `(item, old, new)`.
fn feed(text: &str) -> Vec<(String, Option<String>, String)> {
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["item"].as_str().unwrap().into(),
                v["old_status"].as_str().map(String::from),
                v["new_status"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_lists_status_changes_with_a_stable_cursor() {
    let f = Filled::start().await;
    let text = f.changes(&[], 4);
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        feed(&text),
        [
            (f.a1.to_string(), None, "PENDING".into()),
            (f.a1.to_string(), some("PENDING"), "OK".into()),
            (f.a2.to_string(), None, "PENDING".into()),
            (f.b1.to_string(), None, "PENDING".into()),
        ]
    );
    let second: Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["version"], 3);
    assert_eq!(second["source"], "webhook");
    assert_eq!(second["order"], f.order_a.to_string());
    assert!(second["received_at"].is_string() && second["as_of"].is_string());
    let after = second["id"].as_i64().unwrap().to_string();
    let rest = f.changes(&["--after", &after], 2);
    assert_eq!(
        rest,
        text.lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    assert_eq!(f.ok(&["changes", "--limit", "1"]).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_sees_a_webhook_posted_after_it_started_and_exits_0_on_sigint() {
    let f = Filled::start().await;
    let mut child = spawn_changes(&f.config, &["--follow"]);
    let received = lines_of(child.stdout.take().unwrap());
    let next = || received.recv_timeout(LIMIT).expect("a change line in time");
    for _ in 0..4 {
        next(); // what was there before
    }
    f.post(f.a2, f.order_a, 2, "OK").await;
    let line = next();
    assert_eq!(
        feed(&line),
        [(f.a2.to_string(), Some("PENDING".into()), "OK".into())]
    );
    signal(child.id(), "INT");
    assert_eq!(wait(&mut child), Some(0), "SIGINT ends the feed cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_exits_0_when_its_reader_goes_away() {
    let f = Filled::start().await;
    let mut child = spawn_changes(&f.config, &["--follow"]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("PENDING"), "{first}");
    drop(stdout); // the reader closes the pipe, like `| head -1`
    f.post(f.a2, f.order_a, 2, "OK").await;
    assert_eq!(wait(&mut child), Some(0), "EPIPE is a clean end");
}

/// A database (and an empty config next to it) whose change feed holds `n` changes: ten
/// items flipping between PENDING and OK.
fn backlog(n: i64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let db = dir.path().join("orderwatch.db");
    if backend::postgres() {
        ok(&config, &["migrate"]);
        TestDb::open(dir.path(), &db)
            .execute(
                "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version,
                                          as_of, received_at, outcome, payload)
                 SELECT ('00000000-0000-4000-8000-' || lpad((x % 10)::text, 12, '0'))::uuid,
                        '00000000-0000-4000-8000-00000000ffff', 'webhook',
                        CASE (x / 10) % 2 WHEN 0 THEN 'PENDING' ELSE 'OK' END, x / 10 + 1,
                        '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00.000Z', 'applied', '{}'
                 FROM generate_series(1, ?1) AS x",
                [n],
            )
            .unwrap();
        return (dir, config);
    }
    let conn = orderwatch::store::open_for_writing(&db, Duration::from_secs(1)).unwrap();
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
         INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                  received_at, outcome, payload)
         SELECT 'item-' || (x % 10), 'order', 'webhook',
                CASE (x / 10) % 2 WHEN 0 THEN 'PENDING' ELSE 'OK' END, x / 10 + 1,
                '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00.000Z', 'applied', '{}'
         FROM c",
        [n],
    )
    .unwrap();
    (dir, config)
}

/// `orderwatch changes ARGS` on `config`, stdout piped.
fn spawn_changes(config: &Path, args: &[&str]) -> std::process::Child {
    cli(config, &[&["changes"], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// [`spawn_changes`], once it has printed its first line.
fn start_changes(
    config: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut child = spawn_changes(config, args);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"new_status\""), "{first}");
    (child, stdout)
}

#[test]
fn changes_without_follow_ends_on_sigint_while_printing_a_backlog() {
    let (_dir, config) = backlog(20_000);
    // Nobody reads on: the pipe fills and the command waits to write the rest.
    let (mut child, _stdout) = start_changes(&config, &[]);
    signal(child.id(), "INT");
    assert_eq!(wait(&mut child), None, "SIGINT ends it the default way");
}

#[test]
fn changes_follow_ends_on_sigint_within_a_page_of_a_backlog() {
    let total = 30_000;
    let (_dir, config) = backlog(total);
    let (mut child, stdout) = start_changes(&config, &["--follow"]);
    signal(child.id(), "INT");
    let printed = 1 + stdout.lines().map_while(Result::ok).count();
    assert_eq!(wait(&mut child), Some(0), "SIGINT ends the feed cleanly");
    assert!(
        printed < total as usize,
        "stopped after {printed} of {total} changes, not at the end of the backlog"
    );
}

#[test]
fn watch_exits_1_when_standard_input_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    // A directory opens but cannot be read (EISDIR): a run-time failure, not a usage error.
    let output = cli(&config, &["watch", "-"])
        .stdin(Stdio::from(std::fs::File::open(dir.path()).unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("orderwatch:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("cannot read standard input"), "{stderr}");
}

/// `watch -` as a partner's order feed: a line per order registered, new or known; a bad line
/// (not a UUID, not UTF-8) is reported with its number and skipped, the rest registered, and
/// the exit code is 1 at the end.
#[test]
fn watch_prints_a_line_per_order_and_skips_bad_lines_with_exit_1_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    write_config_at(&config, "[reconciler]\nenabled = false\n").unwrap();
    let (a, b, c) = (new_uuid(), new_uuid(), new_uuid());
    let watch = |args: &[&str], input: Vec<u8>| {
        let mut child = cli(&config, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, &input).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = watch(&["watch", &a.to_string()], Vec::new());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("watching {a} (new)").as_str(),
            "watching 1 order(s), 1 new"
        ]
    );

    let mut input = format!("{b}\nnot-a-uuid\n\n{a}\n").into_bytes();
    input.extend_from_slice(b"\xff\xfe\n");
    input.extend_from_slice(format!("  {c}  \n").as_bytes());
    let (code, stdout, stderr) = watch(&["watch", "-"], input);
    assert_eq!(
        code,
        Some(1),
        "bad lines make the end exit 1: {stdout}{stderr}"
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("watching {b} (new)").as_str(),
            format!("watching {a} (already known)").as_str(),
            format!("watching {c} (new)").as_str(),
            "watching 3 order(s), 2 new",
        ],
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(
        errors[0].contains("line 2: \"not-a-uuid\" is not an order UUID; skipped"),
        "{stderr}"
    );
    assert!(
        errors[1].contains("line 5: ") && errors[1].ends_with("skipped"),
        "{stderr}"
    );
    assert!(
        errors[2].contains("2 line(s) of standard input skipped"),
        "{stderr}"
    );
    assert!(!stderr.contains(" INFO "), "no daemon log lines: {stderr}");

    let watched: Vec<String> = TestDb::open(dir.path(), &dir.path().join("orderwatch.db"))
        .query_rows(
            "SELECT order_uuid FROM orders WHERE watched = 1 ORDER BY order_uuid",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut expected = vec![a.to_string(), b.to_string(), c.to_string()];
    expected.sort();
    assert_eq!(
        watched, expected,
        "the good lines around the bad ones are watched"
    );

    // --quiet: only the total.
    let (code, stdout, stderr) = watch(&["watch", "--quiet", "-"], format!("{a}\n").into_bytes());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "watching 1 order(s), 0 new\n");
}

/// Waits (bounded) for a child to exit; its exit code.
fn wait(child: &mut std::process::Child) -> Option<i32> {
    wait_bounded(child, LIMIT)
        .expect("the command did not exit in time")
        .code()
}

/// Every item (uuid, status, version) of the database at `db`, and how many events it holds.
fn items_and_events(db: &Path) -> (Vec<(String, String, Option<i64>)>, i64) {
    let folder = db.parent().expect("a database file is in a folder");
    let conn = TestDb::open(folder, db);
    let items = rows(
        &conn,
        "SELECT item_uuid, status, item_version FROM order_items ORDER BY item_uuid",
        [],
    );
    let events = value(&conn, "SELECT count(*) FROM item_events", []);
    (items, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_the_live_database_and_refuses_to_overwrite() {
    if sqlite_only("orderwatch backup (PostgreSQL: pg_dump)") {
        return;
    }
    let f = Filled::start().await;
    let target = f.daemon.dir.path().join("copy.db");
    let target_text = target.to_str().unwrap();
    let out = f.ok(&["backup", target_text]);
    assert!(out.contains("3 items, 6 events"), "{out}");
    let copy = orderwatch::store::open_read_only(&target, Duration::from_secs(1)).unwrap();
    let version: i64 = value(&copy, "PRAGMA user_version", []);
    assert_eq!(version, orderwatch::store::SCHEMA_VERSION);
    drop(copy);
    assert_eq!(items_and_events(&target), items_and_events(&f.db));
    assert_eq!(items_and_events(&target).0.len(), 3);
    assert!(
        !f.daemon.dir.path().join("copy.db-wal").exists(),
        "a standalone file"
    );

    let before = std::fs::read(&target).unwrap();
    f.post(f.a2, f.order_a, 2, "OK").await;
    let (code, _, stderr) = f.ow(&["backup", target_text]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exists; pass --force"), "{stderr}");
    assert_eq!(std::fs::read(&target).unwrap(), before, "left alone");
    let (code, _, stderr) = f.ow(&["backup", f.db.to_str().unwrap(), "--force"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is the database itself"), "{stderr}");
    let nowhere = f.daemon.dir.path().join("no-such-folder");
    let into_nowhere = nowhere.join("copy.db");
    let (code, _, stderr) = f.ow(&["backup", into_nowhere.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "orderwatch: the folder {} does not exist (create it first, or back up elsewhere)",
            nowhere.display()
        )
    );
    assert!(!nowhere.exists(), "not created either");
    f.ok(&["backup", target_text, "--force"]);
    assert_eq!(items_and_events(&target), items_and_events(&f.db));
    assert_eq!(
        items_and_events(&target).1,
        7,
        "the newer webhook is in the new copy"
    );
    let leftovers: Vec<_> = std::fs::read_dir(f.daemon.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The README's restore, step by step: stop the daemon, move the database and its -wal/-shm
/// aside, copy the backup in its place, start the daemon, and check that it serves the
/// backup's state and stores new webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_by_stop_copy_start_and_check() {
    if sqlite_only("orderwatch backup and restoring its copy (PostgreSQL: pg_dump)") {
        return;
    }
    let readme = read_repo_file("README.md");
    let restore = &readme[readme
        .find("**Restoring a backup.**")
        .expect("README says how")..];
    let restore = &restore[..restore.find("\n\n**").unwrap_or(restore.len())];
    for step in [
        "systemctl stop orderwatch",
        "mv orderwatch.db orderwatch.db-wal orderwatch.db-shm",
        "cp /backups/orderwatch-2026-01-31.db orderwatch.db",
        "systemctl start orderwatch",
        "orderwatch stats",
        "orderwatch reconcile --all-due",
    ] {
        assert!(
            restore.contains(step),
            "README restore lacks {step:?}:\n{restore}"
        );
    }

    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n";
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), config);
    let config_path = daemon.dir.path().join("config.toml");
    let db = daemon.dir.path().join("orderwatch.db");
    let (order, kept, lost) = (new_uuid(), new_uuid(), new_uuid());
    let post = |daemon: &Daemon, item: Uuid, version: u64, status: &'static str| {
        let body = webhook(&item.to_string(), &order.to_string(), version, status);
        let request = daemon.webhook_request().body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    post(&daemon, kept, 1, "PENDING").await;
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("orderwatch-2026-01-31.db");
    ok(&config_path, &["backup", backup.to_str().unwrap()]);
    // After the backup: an update of the kept item and a new item, which the restore loses.
    post(&daemon, kept, 2, "OK").await;
    post(&daemon, lost, 1, "PENDING").await;

    // 1. Stop. 2. Move the live files aside, copy the backup in. 3. Start. 4. Check.
    daemon.stop();
    let aside = daemon.dir.path().join("before-restore");
    std::fs::create_dir(&aside).unwrap();
    for name in ["orderwatch.db", "orderwatch.db-wal", "orderwatch.db-shm"] {
        let live = daemon.dir.path().join(name);
        if live.exists() {
            std::fs::rename(&live, aside.join(name)).unwrap();
        }
    }
    std::fs::copy(&backup, &db).unwrap();
    let restarted = Daemon::start(
        tempfile::tempdir().unwrap(),
        &format!("{config}[database]\npath = \"{}\"\n", db.display()),
    );
    restarted.wait_ready().await;
    let stats: Value =
        serde_json::from_str(&ok(&config_path, &["stats", "--format", "json"])).unwrap();
    assert_eq!(
        (stats["items"].as_i64(), stats["events"].as_i64()),
        (Some(1), Some(1))
    );
    let items: Value =
        serde_json::from_str(&ok(&config_path, &["items", "--format", "json"])).unwrap();
    assert_eq!(
        statuses(&items),
        sorted(vec![(kept, "PENDING")]),
        "the backup's state"
    );
    // Webhooks are stored on the restored database, and the aside copy still has the rest.
    post(&restarted, lost, 1, "PENDING").await;
    let items: Value =
        serde_json::from_str(&ok(&config_path, &["items", "--format", "json"])).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 2);
    assert!(aside.join("orderwatch.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_history_but_keeps_current_state_while_the_daemon_runs() {
    let f = Filled::start().await;
    let (items_before, events_before) = items_and_events(&f.db);
    assert_eq!(events_before, 6);
    // Everything so far is older than "0s": all but what must stay goes.
    let out = f.ok(&["prune", "--events-older-than", "0s"]);
    assert!(
        out.contains("deleted 2 event(s) and 1 rejected webhook(s)"),
        "{out}"
    );
    let (items_after, events_after) = items_and_events(&f.db);
    assert_eq!(items_after, items_before, "current state untouched");
    assert_eq!(events_after, 4);
    let shown = f.json(&["show", &f.a1.to_string(), "--format", "json"]);
    let kept: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        ["applied", "duplicate"],
        "newest applied and newest event stay"
    );
    // The daemon keeps writing, and the feed still knows the previous status.
    f.post(f.a1, f.order_a, 4, "REFUNDED").await;
    let feed_text = f.ok(&["changes"]);
    let last = feed(&feed_text).pop().unwrap();
    assert_eq!(
        last,
        (f.a1.to_string(), Some("OK".into()), "REFUNDED".into())
    );
    // Nothing is younger than a day.
    let out = f.ok(&["prune", "--events-older-than", "1d"]);
    assert!(out.contains("deleted 0 event(s) and 0 rejected"), "{out}");
    let (code, _, stderr) = f.ow(&["prune", "--events-older-than", "soon"]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn the_daemon_prunes_by_itself_with_events_keep() {
    let dir = tempfile::tempdir().unwrap();
    let then = chrono::Utc::now() - chrono::Duration::days(100);
    let app = spawn_app_in(dir, "", Arc::new(ManualClock::new(then))).await;
    let (order, item) = (new_uuid().to_string(), new_uuid().to_string());
    for (version, status) in [(1, "PENDING"), (2, "OK"), (1, "PENDING")] {
        let response = app
            .post_webhook(webhook(&item, &order, version, status))
            .await;
        assert_eq!(response.status(), 200);
    }
    let response = app
        .post_webhook(fixture("webhooks/bad/missing-order-item-uuid.json"))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.count("item_events"), 3);
    let dir = app.stop().await;

    let app = spawn_app_in(
        dir,
        "[store]\nevents_keep = \"90d\"\n",
        Arc::new(orderwatch::clock::SystemClock),
    )
    .await;
    let deadline = Instant::now() + LIMIT;
    while app.count("item_events") != 2 || app.count("rejected_webhooks") != 0 {
        assert!(Instant::now() < deadline, "the start-up prune never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes: Vec<String> =
        column(&app.db(), "SELECT outcome FROM item_events ORDER BY id", []);
    assert_eq!(outcomes, ["applied", "stale"]);
    assert_eq!(app.count("order_items WHERE status = 'OK'"), 1);
    app.stop().await;
}

#[test]
fn a_missing_or_newer_database_is_a_clear_error() {
    if sqlite_only("a missing or foreign SQLite file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let db = dir.path().join("orderwatch.db");
    let copy = dir.path().join("copy.db");
    let copy = copy.to_str().unwrap();
    let commands: [&[&str]; 8] = [
        &["items"],
        &["show", "0000"],
        &["stats"],
        &["rejected"],
        &["changes"],
        &["changes", "--follow"],
        &["prune", "--events-older-than", "90d"],
        &["backup", copy],
    ];
    for args in commands {
        let output = ow(&config, args);
        assert_one_line_error(&output, 1, &format!("{args:?}"));
        let stderr = output.2;
        assert!(
            stderr.contains(&format!("database {} does not exist", db.display())),
            "{stderr}"
        );
        assert!(!db.exists(), "{args:?} created the database");
    }
    let conn = orderwatch::store::open_for_writing(&db, Duration::from_secs(1)).unwrap();
    conn.pragma_update(None, "user_version", orderwatch::store::SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    for args in commands {
        let (code, _, stderr) = ow(&config, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("newer than this orderwatch knows"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn a_version_1_database_is_readable_then_migrated_to_the_views() {
    if sqlite_only("SQLite's schema versions 1 to 4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orderwatch.db");
    let config = config_file(dir.path(), "");
    // A database as orderwatch with schema version 1 left it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(include_str!("../../src/store/schema.sql"))
        .unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let (order, item) = (new_uuid().to_string(), new_uuid().to_string());
    let since = "2024-01-01T00:00:00.000Z";
    conn.execute(
        "INSERT INTO orders (order_uuid, first_seen_at) VALUES (?1, ?2)",
        [&order, since],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO order_items (item_uuid, order_uuid, status, item_version, status_version,
                                  as_of, as_of_source, source, first_seen_at, changed_at, updated_at)
         VALUES (?1, ?2, 'PENDING', 1, 1, ?3, 'webhook', 'webhook', ?3, ?3, ?3)",
        [&item, &order, since],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                                  received_at, outcome, payload)
         VALUES (?1, ?2, 'webhook', 'PENDING', 1, ?3, ?3, 'applied', '{}')",
        [&item, &order, since],
    )
    .unwrap();
    drop(conn);

    // The CLI reads it as it is (read-only: it never migrates).
    let items: Value = serde_json::from_str(&ok(&config, &["items", "--format", "json"])).unwrap();
    assert_eq!(items[0]["item"], item);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = value(&conn, "PRAGMA user_version", []);
    assert_eq!(version, 1);
    drop(conn);

    // The daemon migrates it at start.
    let app = spawn_app_in(dir, "", Arc::new(orderwatch::clock::SystemClock)).await;
    let conn = app.db();
    let version: i64 = value(&conn, "PRAGMA user_version", []);
    assert_eq!(version, orderwatch::store::SCHEMA_VERSION);
    let (pending, since_text, age, last): (String, String, i64, String) = row(
        &conn,
        "SELECT item_uuid, pending_since, age_seconds, last_outcome FROM pending_items",
        [],
    );
    assert_eq!(
        (pending.as_str(), since_text.as_str()),
        (item.as_str(), since)
    );
    assert!(age > 86_400 * 300, "{age}");
    assert_eq!(last, "applied");
    // New traffic shows up in item_history next to the current state.
    app.post_webhook(webhook(&item, &order, 2, "OK")).await;
    let (outcome, current, why): (String, String, String) = row(
        &conn,
        "SELECT outcome, current_status, why FROM item_history ORDER BY event_id DESC LIMIT 1",
        [],
    );
    assert_eq!((outcome.as_str(), current.as_str()), ("applied", "OK"));
    assert!(why.starts_with("set the status"), "{why}");
    let pending: i64 = value(&conn, "SELECT count(*) FROM pending_items", []);
    assert_eq!(pending, 0);
    drop(conn);
    app.stop().await;
}

/// Statuses that look like `OK` but are not: stored and exported exactly, shown escaped in
/// every human format, and named escaped in the intake WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_statuses_show_escaped_for_people_and_exact_in_exports() {
    let daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n",
    );
    let config = daemon.dir.path().join("config.toml");
    let order = new_uuid();
    // (stored status, how people must see it)
    let cases = [
        ("OK", "OK"),
        ("\u{41e}\u{41a}", "\\u{41e}\\u{41a}"),
        ("OK\u{200b}", "OK\\u{200b}"),
        ("\u{202e}KO", "\\u{202e}KO"),
    ];
    let items: Vec<Uuid> = cases.iter().map(|_| new_uuid()).collect();
    for (item, (status, shown)) in items.iter().zip(cases) {
        let body = webhook(&item.to_string(), &order.to_string(), 1, status);
        assert_eq!(daemon.post_webhook(body).await, 200, "{status:?}");
        if status != "OK" {
            let warned = daemon.wait_for_log(&item.to_string());
            assert!(
                warned.contains("WARN")
                    && warned
                        .split_whitespace()
                        .any(|field| field == format!("status={shown}")),
                "{warned}"
            );
        }
    }

    let (table, exported, csv, stats, stats_csv) = tokio::task::spawn_blocking(move || {
        (
            ok(&config, &["items"]),
            ok(&config, &["items", "--format", "json"]),
            ok(&config, &["items", "--format", "csv"]),
            ok(&config, &["stats"]),
            ok(&config, &["stats", "--format", "csv"]),
        )
    })
    .await
    .unwrap();
    let shows: Vec<String> = items
        .iter()
        .map(|item| {
            ok(
                &daemon.dir.path().join("config.toml"),
                &["show", &item.to_string()],
            )
        })
        .collect();

    // Tables: one row says OK, the others show their code points; nothing but ASCII.
    assert!(table.is_ascii(), "{table}");
    let shown_statuses: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().nth(2).unwrap())
        .collect();
    let mut expected: Vec<&str> = cases.iter().map(|(_, shown)| *shown).collect();
    let mut seen = shown_statuses.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "{table}");
    for ((status, shown), show) in cases.iter().zip(&shows) {
        assert!(show.is_ascii(), "{show}");
        let status_line = show
            .lines()
            .find(|l| l.trim_start().starts_with("status"))
            .unwrap();
        assert_eq!(
            status_line.split_whitespace().nth(1),
            Some(*shown),
            "{show}"
        );
        let history = show.lines().find(|l| l.starts_with('#')).unwrap();
        assert!(
            history.contains(&format!(" {shown} ")),
            "{status:?}: {history}"
        );
    }
    assert!(stats.is_ascii(), "{stats}");
    for (_, shown) in cases {
        let line = format!("items_by_status.{shown} ");
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(" 1")),
            "{stats}"
        );
    }

    // Exports keep the exact text.
    let exact: Vec<(String, String)> = items
        .iter()
        .zip(cases)
        .map(|(item, (status, _))| (item.to_string(), status.to_owned()))
        .collect();
    let mut exact_sorted = exact.clone();
    exact_sorted.sort();
    assert_eq!(
        statuses(&serde_json::from_str(&exported).unwrap()),
        exact_sorted
    );
    for (item, status) in &exact {
        assert!(csv.contains(&format!("{item},{order},{status},")), "{csv}");
        assert!(
            stats_csv.contains(&format!("items_by_status.{status},1\n")),
            "{stats_csv}"
        );
    }
}

/// The README says from which SQLite version a `sqlite3` shell opens the database (its tables
/// are `STRICT`), and the README's own `sqlite3` commands are run with the shell installed
/// here: they must work if it is that new, and fail as the README says if it is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_names_the_sqlite3_shells_that_open_the_database() {
    if sqlite_only("the sqlite3 shells") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = std::fs::read_to_string(root.join("src/store/schema.sql")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(schema.contains(") STRICT;"), "the premise: STRICT tables");
    // STRICT tables came with SQLite 3.37.0 (2021-11-27).
    let note = readme
        .split("\n\n")
        .find(|paragraph| paragraph.contains("`STRICT`") && paragraph.contains("sqlite3"))
        .expect("a README paragraph on STRICT tables and the sqlite3 shell");
    assert!(note.contains("3.37"), "names 3.37 as the minimum: {note}");
    assert!(
        note.contains("malformed database schema"),
        "says how older shells fail: {note}"
    );
    let commands: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("sqlite3 ") && line.contains("orderwatch.db"))
        .collect();
    assert!(commands.len() >= 2, "{commands:?}");

    let Some(version) = Command::new("sqlite3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
    else {
        crate::helpers::skip("the README's sqlite3 commands", "sqlite3 is not installed");
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let numbers: Vec<u32> = version
        .split_whitespace()
        .next()
        .unwrap()
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    let new_enough = numbers[..2] >= [3, 37][..];

    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir, "", Arc::new(orderwatch::clock::SystemClock)).await;
    let item = Uuid::new_v4().to_string();
    app.post_webhook(webhook(&item, &Uuid::new_v4().to_string(), 1, "PENDING"))
        .await;
    assert_eq!(app.db_path.file_name().unwrap(), "orderwatch.db");
    let folder = app.db_path.parent().unwrap().to_owned();
    for command in commands {
        let output = Command::new("sh")
            .args(["-c", command])
            .current_dir(&folder)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        if new_enough {
            assert!(
                output.status.success() && stderr.is_empty(),
                "sqlite3 {version}: {command}: {stderr}"
            );
        } else {
            assert!(
                stderr.contains("malformed database schema"),
                "sqlite3 {version}: {command}: {stderr}"
            );
        }
        eprintln!("sqlite3 {}: {command}\n{stdout}", version.trim());
    }
    app.stop().await;
}
