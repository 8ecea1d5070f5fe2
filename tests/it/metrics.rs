//! `GET /metrics`: known traffic in, the text exposition parsed (helpers/exposition.rs, strict
//! about the format), and every counter compared with the traffic and the database. Plus who
//! may scrape where, the reconciler's and API client's metrics after passes against the fake
//! API, and `reconcile --once`'s plain progress lines from the real binary.

use chrono::Duration;
use orderwatch::clock::Clock;
use orderwatch::reconciler::Progress;
use reqwest::Method;

use crate::helpers::backend::sqlite_only;
use crate::helpers::db::rows;
use crate::helpers::exposition::{Exposition, Sample};
use crate::helpers::fake_musement::{FakeMusement, FakeResponse, new_uuid, order_json};
use crate::helpers::{
    AUTH_CONFIG, Daemon, GOOD_BASIC, TestApp, cli, config_for, harness, json_post, spawn_app_with,
    spawn_app_with_metrics_listener, uuid, webhook,
};

/// `GET /metrics` on `base` (e.g. `http://127.0.0.1:PORT`), which must answer 200.
async fn scrape(client: &reqwest::Client, base: &str) -> Exposition {
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Exposition::parse(&response.text().await.unwrap())
}

async fn post(app: &TestApp, body: String) -> reqwest::StatusCode {
    app.webhook_request()
        .header("authorization", GOOD_BASIC)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// `(status, count)` of the stored items, as `sqlite3` would say.
fn items_by_status(app: &TestApp) -> Vec<(String, i64)> {
    rows(
        &app.db(),
        "SELECT status, count(*) FROM order_items GROUP BY status ORDER BY status",
        [],
    )
}

#[tokio::test]
async fn counters_and_gauges_match_the_traffic_and_the_database() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let order = uuid(2, 1);
    let (a, b, c) = (uuid(1, 1), uuid(1, 2), uuid(1, 3));
    assert_eq!(post(&app, webhook(&a, &order, 1, "PENDING")).await, 200);
    assert_eq!(post(&app, webhook(&b, &order, 1, "OK")).await, 200);
    assert_eq!(post(&app, webhook(&c, &order, 1, "PENDING")).await, 200);
    assert_eq!(post(&app, webhook(&a, &order, 1, "PENDING")).await, 200); // duplicate
    assert_eq!(post(&app, webhook(&b, &order, 1, "KO")).await, 200); // conflict
    assert_eq!(post(&app, "{\"order_uuid\": 7}".into()).await, 400);
    let unauthorized = app
        .post_webhook(webhook(&a, &order, 2, "OK"))
        .await
        .status();
    assert_eq!(unauthorized, 401);
    // Not webhooks: health checks and unknown paths are not counted as webhook requests.
    app.client.get(app.url("/healthz")).send().await.unwrap();
    app.client.get(app.url("/nope")).send().await.unwrap();

    let m = scrape(&app.client, &format!("http://{}", app.addr)).await;
    let requests = "orderwatch_webhook_requests_total";
    assert_eq!(m.types[requests], "counter");
    for (code, outcome, expected) in [
        ("200", "applied", 3.0),
        ("200", "duplicate", 1.0),
        ("200", "conflict", 1.0),
        ("400", "invalid", 1.0),
        ("401", "unauthorized", 1.0),
    ] {
        assert_eq!(
            m.get(requests, &[("code", code), ("outcome", outcome)]),
            Some(expected),
            "{code} {outcome}"
        );
    }
    // Every other answer a webhook can get is shown at 0 from the start.
    let nonzero = |m: &Exposition| -> Vec<Sample> {
        m.all(requests)
            .into_iter()
            .filter(|s| s.value != 0.0)
            .cloned()
            .collect()
    };
    assert_eq!(nonzero(&m).len(), 5, "{:?}", m.all(requests));
    assert!(m.all(requests).len() > 5, "{:?}", m.all(requests));
    assert_eq!(
        m.get("orderwatch_webhook_request_duration_seconds_count", &[]),
        Some(7.0)
    );
    assert_eq!(m.get("orderwatch_store_conflicts_total", &[]), Some(1.0));
    assert_eq!(
        m.get("orderwatch_store_failed_batches_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        m.get("orderwatch_metrics_scrape_errors_total", &[]),
        Some(0.0)
    );
    // 5 observations and the rejected body went through the writer (and /readyz pings).
    let jobs = m.get("orderwatch_store_batch_size_sum", &[]).unwrap();
    let commits = m.get("orderwatch_store_batch_size_count", &[]).unwrap();
    assert!(
        jobs >= 6.0 && commits >= 1.0 && commits <= jobs,
        "{jobs} {commits}"
    );
    assert_eq!(
        m.get("orderwatch_store_commit_duration_seconds_count", &[]),
        Some(commits)
    );

    // Gauges come from the database at scrape time.
    let stored = items_by_status(&app);
    assert_eq!(stored, [("OK".into(), 1), ("PENDING".into(), 2)]);
    for (status, count) in &stored {
        assert_eq!(
            m.get("orderwatch_items", &[("status", status)]),
            Some(*count as f64)
        );
    }
    assert_eq!(m.all("orderwatch_items").len(), stored.len());
    assert_eq!(m.types["orderwatch_items"], "gauge");
    assert_eq!(m.get("orderwatch_pending_items", &[]), Some(2.0));
    let age = m
        .get("orderwatch_oldest_pending_item_age_seconds", &[])
        .unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    let overdue = app.count("overdue_items") as f64;
    assert_eq!(m.get("orderwatch_overdue_items", &[]), Some(overdue));
    assert_eq!(
        m.get("orderwatch_reconciler_orders_in_backoff", &[]),
        Some(0.0)
    );

    // One more webhook is exactly one more request, one more job, one more commit.
    assert_eq!(post(&app, webhook(&a, &order, 2, "OK")).await, 200);
    let after = scrape(&app.client, &format!("http://{}", app.addr)).await;
    assert_eq!(
        after.get(requests, &[("code", "200"), ("outcome", "applied")]),
        Some(4.0)
    );
    assert_eq!(
        after.get("orderwatch_store_batch_size_sum", &[]),
        Some(jobs + 1.0)
    );
    assert_eq!(
        after.get("orderwatch_store_batch_size_count", &[]),
        Some(commits + 1.0)
    );
    assert_eq!(after.get("orderwatch_pending_items", &[]), Some(1.0));
    assert_eq!(
        after.get("orderwatch_items", &[("status", "OK")]),
        Some(2.0)
    );
}

/// Undocumented statuses, look-alikes of `OK` among them (Cyrillic `ОК`, `OK` + U+200B, a
/// bidi override), are stored as sent but counted under one `unknown` label: a dashboard never
/// shows a second `OK`, and a sender cannot add a series per value.
#[tokio::test]
async fn undocumented_and_look_alike_statuses_count_as_unknown() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let order = uuid(2, 1);
    let statuses = [
        "OK",
        "\u{41e}\u{41a}",
        "OK\u{200b}",
        "\u{202e}KO",
        "ON_HOLD_BY_SUPPLIER",
        "PENDING",
    ];
    for (n, status) in (1..).zip(statuses) {
        let body = webhook(&uuid(1, n), &order, 1, status);
        assert_eq!(post(&app, body).await, 200, "{status:?}");
    }
    let stored = items_by_status(&app);
    assert_eq!(stored.len(), statuses.len(), "stored as sent: {stored:?}");

    let m = scrape(&app.client, &format!("http://{}", app.addr)).await;
    let mut labelled: Vec<(String, f64)> = m
        .all("orderwatch_items")
        .iter()
        .map(|s| (s.labels["status"].clone(), s.value))
        .collect();
    labelled.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        labelled,
        [
            ("OK".to_owned(), 1.0),
            ("PENDING".to_owned(), 1.0),
            ("unknown".to_owned(), 4.0)
        ]
    );
    assert_eq!(m.get("orderwatch_pending_items", &[]), Some(1.0));
}

#[tokio::test]
async fn openmetrics_is_served_when_asked_for() {
    let app = spawn_app_with("").await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE orderwatch_metrics_scrape_errors counter\n"),
        "{text}"
    );
    assert!(
        text.contains("orderwatch_metrics_scrape_errors_total 0\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_database_that_cannot_be_read_leaves_the_gauges_out_and_counts_an_error() {
    if sqlite_only("the SQLite file moved away under the daemon") {
        return;
    }
    let app = spawn_app_with("").await;
    let before = scrape(&app.client, &format!("http://{}", app.addr)).await;
    assert!(before.get("orderwatch_pending_items", &[]).is_some());
    // The file moved away (the writer keeps its open handle): a scrape cannot open it.
    let moved = app.db_path.with_extension("moved");
    std::fs::rename(&app.db_path, &moved).unwrap();
    let during = scrape(&app.client, &format!("http://{}", app.addr)).await;
    std::fs::rename(&moved, &app.db_path).unwrap();
    assert_eq!(during.get("orderwatch_pending_items", &[]), None);
    assert!(during.all("orderwatch_items").is_empty());
    assert_eq!(
        during.get("orderwatch_metrics_scrape_errors_total", &[]),
        Some(1.0)
    );
    assert!(
        during
            .get("orderwatch_webhook_request_duration_seconds_count", &[])
            .is_some()
    );
    let after = scrape(&app.client, &format!("http://{}", app.addr)).await;
    assert_eq!(after.get("orderwatch_pending_items", &[]), Some(0.0));
    assert_eq!(
        after.get("orderwatch_oldest_pending_item_age_seconds", &[]),
        Some(0.0),
        "no PENDING item: no age"
    );
}

#[tokio::test]
async fn metrics_on_the_webhook_listener_are_for_direct_loopback_clients_only() {
    let app = spawn_app_with("").await;
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let relayed = app
            .client
            .get(app.url("/metrics"))
            .header(header, "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(relayed.status(), 403, "{header}");
        let body = relayed.text().await.unwrap();
        assert!(body.contains("metrics_listen"), "{body}");
    }
    let post = app.client.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let head = app.client.head(app.url("/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);

    // Behind a proxy "loopback" may be anyone: not served on the webhook listener at all.
    let proxied = spawn_app_with(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{AUTH_CONFIG}"
    ))
    .await;
    let response = proxied
        .client
        .get(proxied.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_there_and_only_there() {
    let app = spawn_app_with_metrics_listener("[server]\nmetrics_listen = \"127.0.0.1:0\"\n").await;
    let webhooks = format!("http://{}", app.addr);
    let metrics = format!("http://{}", app.metrics_addr.unwrap());
    let posted = json_post(&app.client, format!("{webhooks}/webhooks/musement"))
        .body(webhook(&uuid(1, 9), &uuid(2, 9), 1, "PENDING"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);

    let m = scrape(&app.client, &metrics).await;
    assert_eq!(
        m.get(
            "orderwatch_webhook_requests_total",
            &[("code", "200"), ("outcome", "applied")]
        ),
        Some(1.0)
    );
    assert_eq!(m.get("orderwatch_pending_items", &[]), Some(1.0));

    // Not on the webhook listener, even for loopback; the metrics listener serves nothing
    // else, and only reads. (what, method, URL, with a webhook body, status)
    let elsewhere = [
        (
            "/metrics on the webhook listener",
            Method::GET,
            format!("{webhooks}/metrics"),
            false,
            404,
        ),
        (
            "the webhook path",
            Method::GET,
            format!("{metrics}/webhooks/musement"),
            false,
            404,
        ),
        (
            "/healthz",
            Method::GET,
            format!("{metrics}/healthz"),
            false,
            404,
        ),
        (
            "/readyz",
            Method::GET,
            format!("{metrics}/readyz"),
            false,
            404,
        ),
        ("/", Method::GET, format!("{metrics}/"), false, 404),
        (
            "a webhook posted to the metrics listener",
            Method::POST,
            format!("{metrics}/webhooks/musement"),
            true,
            404,
        ),
        (
            "a POST to /metrics",
            Method::POST,
            format!("{metrics}/metrics"),
            false,
            405,
        ),
    ];
    for (what, method, url, with_body, status) in elsewhere {
        let mut request = app.client.request(method, &url);
        if with_body {
            request = request.body(webhook(&uuid(1, 8), &uuid(2, 8), 1, "PENDING"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}: {url}");
    }
    // Scrapes are not webhook requests: the one webhook is all they count.
    let again = scrape(&app.client, &metrics).await;
    let counted: f64 = again
        .all("orderwatch_webhook_requests_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        counted,
        1.0,
        "{:?}",
        again.all("orderwatch_webhook_requests_total")
    );

    app.stop().await;
}

#[tokio::test]
async fn reconciler_and_api_metrics_follow_the_passes() {
    let h = harness("concurrency = 1").await;
    let last_success = "orderwatch_last_successful_pass_timestamp_seconds";
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect("before any pass", &[(last_success, &[], 0.0)]);
    let orders = h.watch_new_orders(3).await;
    // The first pass: one login, two orders answered, one 503.
    h.fake()
        .push_response(&format!("/orders/{}", orders[1]), FakeResponse::status(503));
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (2, 1));
    assert_eq!(
        *h.reconciler.progress().borrow(),
        Progress {
            done: 3,
            polled: 2,
            total: 3
        }
    );
    let calls = "orderwatch_musement_requests_total";
    let logins = "orderwatch_musement_logins_total";
    let passes = "orderwatch_reconciler_passes_total";
    let handled = "orderwatch_reconciler_orders_total";
    let latency = "orderwatch_musement_request_duration_seconds_count";
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect(
        "the first pass",
        &[
            (calls, &[("endpoint", "login"), ("code", "200")], 1.0),
            (calls, &[("endpoint", "order"), ("code", "200")], 2.0),
            (calls, &[("endpoint", "order"), ("code", "503")], 1.0),
            (logins, &[("reason", "first"), ("result", "ok")], 1.0),
            (passes, &[("result", "ok")], 1.0),
            // Shown at zero.
            (passes, &[("result", "failed")], 0.0),
            (handled, &[("result", "polled")], 2.0),
            (handled, &[("result", "failed")], 1.0),
            ("orderwatch_reconciler_orders_in_backoff", &[], 1.0),
            ("orderwatch_items", &[("status", "PENDING")], 2.0),
            (latency, &[("endpoint", "order")], 3.0),
            (latency, &[("endpoint", "login")], 1.0),
            // Two of three polls went through: the reconciler works.
            (last_success, &[], h.clock.now().timestamp() as f64),
        ],
    );
    assert_eq!(m.all(calls).len(), 3, "{:?}", m.all(calls));
    // Musement drops our token: one 401, one re-login, then every order answers.
    h.fake().revoke_tokens();
    h.advance(Duration::minutes(5));
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (3, 0));
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect(
        "after a revoked token",
        &[
            (calls, &[("endpoint", "order"), ("code", "401")], 1.0),
            (calls, &[("endpoint", "order"), ("code", "200")], 5.0),
            (calls, &[("endpoint", "login"), ("code", "200")], 2.0),
            (logins, &[("reason", "rejected"), ("result", "ok")], 1.0),
            (passes, &[("result", "ok")], 2.0),
            (handled, &[("result", "polled")], 5.0),
            ("orderwatch_reconciler_orders_in_backoff", &[], 0.0),
            ("orderwatch_items", &[("status", "PENDING")], 3.0),
            // Two became PENDING at the first pass, five minutes ago on the harness clock.
            ("orderwatch_oldest_pending_item_age_seconds", &[], 300.0),
            (latency, &[("endpoint", "order")], 7.0),
            (last_success, &[], h.clock.now().timestamp() as f64),
        ],
    );
    let second_success = h.clock.now().timestamp() as f64;
    assert_eq!(
        m.count(logins, &[("reason", "expiring"), ("result", "ok")]),
        0.0
    );

    // The login itself fails: counted as refused, and the pass as stopped.
    h.fake().revoke_tokens();
    h.fake().push_response("/login", FakeResponse::status(401));
    h.advance(Duration::minutes(5));
    let summary = h.any_pass().await;
    assert!(summary.stopped.is_some(), "{summary:?}");
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect(
        "after a refused login",
        &[
            (
                logins,
                &[("reason", "rejected"), ("result", "refused")],
                1.0,
            ),
            (passes, &[("result", "stopped")], 1.0),
            (handled, &[("result", "unauthorized")], 1.0),
            // A stopped pass is no success.
            (last_success, &[], second_success),
        ],
    );
    h.close().await;
}

#[tokio::test]
async fn a_pass_whose_every_poll_failed_is_no_successful_pass() {
    let h = harness("concurrency = 1").await;
    let last_success = "orderwatch_last_successful_pass_timestamp_seconds";
    let orders = h.watch_new_orders(2).await;
    for order in &orders {
        h.fake()
            .push_response(&format!("/orders/{order}"), FakeResponse::status(503));
    }
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (0, 2), "{summary:?}");
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect(
        "after a pass whose every poll failed",
        &[
            (
                "orderwatch_reconciler_passes_total",
                &[("result", "ok")],
                1.0,
            ),
            (last_success, &[], 0.0),
        ],
    );
    // The orders recover after their backoff: now it counts.
    h.advance(Duration::hours(2));
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (2, 0), "{summary:?}");
    let m = Exposition::parse(&h.metrics_text().await);
    m.expect(
        "after a pass that polled",
        &[(last_success, &[], h.clock.now().timestamp() as f64)],
    );
    h.close().await;
}

/// A config for `fake` with `reconciler_extra`, in a temp dir, and `n` PENDING orders at the
/// fake watched through `orderwatch watch`: `(dir, config path)`.
fn watched_orders(
    fake: &FakeMusement,
    reconciler_extra: &str,
    n: usize,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_for(fake, reconciler_extra)).unwrap();
    let orders: Vec<String> = (0..n)
        .map(|_| {
            let order = new_uuid();
            fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));
            order.to_string()
        })
        .collect();
    let watched = cli(&config, &["watch"]).args(&orders).output().unwrap();
    assert!(watched.status.success(), "{watched:?}");
    (dir, config)
}

#[test]
fn reconcile_once_prints_plain_progress_lines_without_a_terminal() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeMusement::start());
    let (_dir, config) = watched_orders(&fake, "concurrency = 2", 5);

    let output = cli(&config, &["reconcile", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("polled: 5"), "{stdout}");
    let progress: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("polled ")?.strip_suffix(" orders")?;
            let (done, total) = rest.split_once('/')?;
            Some((done.parse().ok()?, total.parse().ok()?))
        })
        .collect();
    assert!(!progress.is_empty(), "{stderr}");
    assert_eq!(progress.last(), Some(&(5, 5)), "{stderr}");
    assert!(progress.iter().all(|&(_, total)| total == 5), "{stderr}");
    assert!(
        progress.windows(2).all(|w| w[0].0 < w[1].0),
        "each line once, counting up: {stderr}"
    );
    // No bar drawing without a terminal.
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    runtime.block_on(async { drop(fake) });
}

#[test]
fn reconcile_once_draws_a_bar_on_a_terminal() {
    // `script` (util-linux) runs the command on a pseudo-terminal; without it there is no
    // terminal to test on.
    let has_script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        crate::helpers::skip("progress bar on a terminal", "no `script` command");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeMusement::start());
    // Slow enough answers that the bar is drawn before the pass ends.
    fake.set_latency(std::time::Duration::from_millis(150));
    let (_dir, config) = watched_orders(&fake, "concurrency = 1", 4);
    let command = format!(
        "'{}' reconcile --once --config '{}'",
        crate::helpers::binary(),
        config.display()
    );
    let output = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    // `script` merges the command's stdout and stderr into its own stdout.
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{terminal}");
    assert!(terminal.contains("polled: 4"), "{terminal}");
    assert!(terminal.contains("polling "), "the bar: {terminal:?}");
    assert!(terminal.contains("/4 orders"), "the bar: {terminal:?}");
    assert!(
        !terminal
            .lines()
            .any(|l| l.trim_start().starts_with("polled ")),
        "no plain progress lines on a terminal: {terminal:?}"
    );
    runtime.block_on(async { drop(fake) });
}

#[tokio::test]
async fn a_full_database_shows_as_503s_and_stores_nothing_of_the_refused_webhook() {
    if sqlite_only("max_size_bytes, a limit on the SQLite file") {
        return;
    }
    // As in the durability tests: 64 pages, a ballast table fills most of them.
    let app = spawn_app_with("[database]\nmax_size_bytes = 262144\n").await;
    app.db()
        .execute_batch(
            "CREATE TABLE ballast (b BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 24)
             INSERT INTO ballast SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();
    let (mut stored, mut refused) = (0.0, 0.0);
    let mut refused_item = None;
    for n in 0..2_000 {
        let status = app
            .post_webhook(webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING"))
            .await
            .status();
        if status == 200 {
            stored += 1.0;
        } else {
            assert_eq!(status, 503);
            refused += 1.0;
            refused_item = Some(uuid(1, n));
            break;
        }
    }
    assert_eq!(refused, 1.0, "the database never filled up");
    let m = scrape(&app.client, &format!("http://{}", app.addr)).await;
    let requests = "orderwatch_webhook_requests_total";
    assert_eq!(
        m.get(requests, &[("code", "200"), ("outcome", "applied")]),
        Some(stored)
    );
    assert_eq!(
        m.get(
            requests,
            &[("code", "503"), ("outcome", "store_unavailable")]
        ),
        Some(refused)
    );
    // Whether SQLite undid the statement (the batch commits without the webhook) or the whole
    // transaction (a failed batch) is its choice; either way nothing of the webhook is stored.
    let failed_batches = m.get("orderwatch_store_failed_batches_total", &[]);
    assert!(
        matches!(failed_batches, Some(n) if n <= 1.0),
        "{failed_batches:?}"
    );
    let item = refused_item.unwrap();
    let rows: i64 = app
        .db()
        .query_row(
            "SELECT (SELECT count(*) FROM order_items WHERE item_uuid = ?1)
                  + (SELECT count(*) FROM item_events WHERE item_uuid = ?1)",
            [&item],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "the refused webhook left no row");
    // The gauges still read fine: a full database is still readable.
    assert_eq!(m.get("orderwatch_pending_items", &[]), Some(stored));
}

/// The seconds since the Unix epoch now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn alert_series_are_there_from_the_start_and_follow_their_events() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let base = format!("http://{}", app.addr);
    let m = scrape(&app.client, &base).await;
    m.expect(
        "at start-up",
        &[
            (
                "orderwatch_build_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("commit", orderwatch::build_info::COMMIT),
                ],
                1.0,
            ),
            (
                "orderwatch_last_webhook_received_timestamp_seconds",
                &[],
                0.0,
            ),
            (
                "orderwatch_last_successful_pass_timestamp_seconds",
                &[],
                0.0,
            ),
            // No API credentials: the reconciler is off.
            ("orderwatch_reconciler_interval_seconds", &[], 0.0),
            ("orderwatch_ready", &[], 1.0),
            (
                "orderwatch_webhook_requests_total",
                &[("code", "503"), ("outcome", "queue_full")],
                0.0,
            ),
            (
                "orderwatch_musement_logins_total",
                &[("reason", "first"), ("result", "refused")],
                0.0,
            ),
            (
                "orderwatch_sqlite_checkpoints_total",
                &[("mode", "passive"), ("result", "error")],
                0.0,
            ),
        ],
    );
    assert_eq!(m.types["orderwatch_build_info"], "gauge");
    // This process's own figures (the app runs inside the test binary).
    if cfg!(target_os = "linux") {
        let value = |name: &str| m.get(name, &[]).unwrap_or_else(|| panic!("no {name}"));
        let started = value("process_start_time_seconds");
        assert!(
            started <= unix_now() && started > unix_now() - 3600.0,
            "{started}"
        );
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        let open = value("process_open_fds");
        assert!(open >= 3.0 && open <= value("process_max_fds"), "{open}");
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert_eq!(m.types["process_cpu_seconds_total"], "counter");
    }

    // A webhook refused is not one received.
    let refused = app
        .post_webhook(webhook(&uuid(1, 1), &uuid(2, 1), 1, "PENDING"))
        .await
        .status();
    assert_eq!(refused, 401);
    let m = scrape(&app.client, &base).await;
    m.expect(
        "after a refused webhook",
        &[(
            "orderwatch_last_webhook_received_timestamp_seconds",
            &[],
            0.0,
        )],
    );
    let before = unix_now();
    let body = webhook(&uuid(1, 1), &uuid(2, 1), 1, "PENDING");
    assert_eq!(post(&app, body).await, 200);
    let after = unix_now();
    let m = scrape(&app.client, &base).await;
    let received = m
        .get("orderwatch_last_webhook_received_timestamp_seconds", &[])
        .unwrap();
    assert!(
        (before - 0.001..=after + 0.001).contains(&received),
        "{before} <= {received} <= {after}"
    );
    app.stop().await;
}

/// `GET /metrics` of the real daemon, parsed.
async fn scrape_daemon(daemon: &Daemon) -> Exposition {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    scrape(&client, &format!("http://{}", daemon.addr)).await
}

#[tokio::test]
async fn the_interval_gauge_follows_the_schedule_and_its_reloads() {
    // Credentials for a loopback port nobody listens on: the reconciler is on, which is all
    // this test needs.
    let config = |schedule: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[musement]\nbase_url = \"http://127.0.0.1:9\"\n\
             application = \"test\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n\
             [reconciler]\n{schedule}\n"
        )
    };
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), &config("interval = \"1h\""));
    let interval = "orderwatch_reconciler_interval_seconds";
    scrape_daemon(&daemon)
        .await
        .expect("interval 1h", &[(interval, &[], 3600.0)]);
    std::fs::write(
        daemon.dir.path().join("config.toml"),
        config("cron = \"0 */5 * * * *\""),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("schedule changed");
    scrape_daemon(&daemon)
        .await
        .expect("every fifth minute", &[(interval, &[], 300.0)]);
    daemon.stop();
}

#[tokio::test]
async fn the_ready_gauge_is_the_readiness_check_at_scrape_time() {
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nbusy_timeout = \"50ms\"\n",
    );
    scrape_daemon(&daemon)
        .await
        .expect("ready", &[("orderwatch_ready", &[], 1.0)]);
    // Another process holds the write lock, as a long sqlite3 session could: nothing probes
    // /readyz, yet the scrape shows it.
    let lock = daemon.db().lock_writes();
    // One readiness answer is reused for a second (src/receiver/readiness.rs).
    let ready_becomes = |wanted: f64, what: &'static str| {
        let daemon = &daemon;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while scrape_daemon(daemon).await.get("orderwatch_ready", &[]) != Some(wanted) {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    ready_becomes(0.0, "not ready while locked").await;
    drop(lock);
    ready_becomes(1.0, "ready again").await;
    daemon.stop();
}

/// The build script cargo compiled from `build.rs` for this test run (the newest one, beside the
/// test binary in `target/…/build/orderwatch-*/`).
fn build_script() -> std::path::PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile = test_binary.parent().unwrap().parent().unwrap(); // …/deps/it-HASH
    std::fs::read_dir(profile.join("build"))
        .unwrap()
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let name = dir.file_name()?.to_str()?.to_owned();
            let script = dir.join("build-script-build");
            let modified = script.metadata().ok()?.modified().ok()?;
            name.starts_with("orderwatch-")
                .then_some((modified, script))
        })
        .max()
        .map(|(_, script)| script)
        .expect("cargo compiled build.rs")
}

/// The commit `build.rs` records when run for a package in `dir` with `ORDERWATCH_COMMIT`
/// set to `argument`.
fn commit_recorded(dir: &std::path::Path, argument: Option<&str>) -> String {
    let mut command = std::process::Command::new(build_script());
    command
        .env("CARGO_MANIFEST_DIR", dir)
        .env_remove("ORDERWATCH_COMMIT")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    if let Some(argument) = argument {
        command.env("ORDERWATCH_COMMIT", argument);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("cargo:rustc-env=ORDERWATCH_COMMIT="))
        .unwrap_or_else(|| panic!("no ORDERWATCH_COMMIT in {stdout}"))
        .to_owned()
}

#[test]
fn the_build_records_the_git_commit_else_the_build_argument_else_unknown() {
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repository)
        .env_remove("GIT_DIR")
        .output();
    match head {
        Ok(head) if head.status.success() => {
            let head = String::from_utf8(head.stdout).unwrap().trim().to_owned();
            assert_eq!(orderwatch::build_info::COMMIT, head, "the binary's commit");
            assert_eq!(commit_recorded(repository, Some("ignored")), head);
        }
        _ => crate::helpers::skip("git", "no git checkout to compare the commit with"),
    }
    // Docker's build context: no .git.
    let copy = tempfile::tempdir().unwrap();
    assert_eq!(
        commit_recorded(copy.path(), Some("0123456789ab")),
        "0123456789ab"
    );
    assert_eq!(commit_recorded(copy.path(), None), "unknown");
    assert_eq!(
        commit_recorded(copy.path(), Some("a b\"}")),
        "unknown",
        "not label-safe"
    );
    // A folder inside another repository is not that repository's commit.
    assert_eq!(
        commit_recorded(&repository.join("src"), Some("fedcba987654")),
        "fedcba987654"
    );
}
