//! The reconciler against a fake Musement API on 127.0.0.1:0: what a pass polls, what it stores,
//! how it fails and backs off, and how polls and webhooks race. Time is a `ManualClock`, so
//! nothing here sleeps through an interval.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::{Clock, SystemClock};
use orderwatch::store::Outcome;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::api::{Harness, at, config_for, harness, harness_on};
use crate::helpers::backend::sqlite_only;
use crate::helpers::db::{column, row, value};
use crate::helpers::fake_musement::{
    APPLICATION, CLIENT_ID, CLIENT_SECRET, FakeMusement, FakeResponse, PERSONAL_VALUES, httpdate,
    new_uuid, order_json, voucher_url,
};
use crate::helpers::process::lines_of;
use crate::helpers::{Daemon, read_repo_file, spawn_app_in, watch_before_start, webhook};

#[tokio::test]
async fn watch_then_poll_discovers_items_and_converges_without_webhooks() {
    let h = harness("").await;
    let (order, pending, ok) = (new_uuid(), new_uuid(), new_uuid());
    h.watch_order(order, &[(pending, "PENDING"), (ok, "OK")])
        .await;

    let summary = h.pass().await;
    assert_eq!(
        (summary.due, summary.polled, summary.items_changed),
        (1, 1, 2)
    );
    assert_eq!(h.item(pending), ("PENDING".into(), "poll".into()));
    assert_eq!(h.item(ok).0, "OK");
    assert_eq!(h.gets(order), 1, "one GET per order, never per item");
    assert_eq!(
        h.order_field(order, "order_status").as_deref(),
        Some("PENDING")
    );
    assert!(
        h.order_field(order, "identifier")
            .unwrap()
            .starts_with("MUS")
    );

    // The PENDING item keeps the order due every pass; Musement confirms it without a webhook.
    h.fake().set_item_status(order, pending, "OK");
    h.advance(Duration::minutes(1));
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.items_changed), (1, 1));
    assert_eq!(h.item(pending).0, "OK");
    let vouchers = h.item_field(pending, "vouchers").unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&vouchers).unwrap(),
        [voucher_url(pending)]
    );
    let product: (String, String, String) = row(
        &h.db(),
        "SELECT product_id, product_title, product_date FROM order_items WHERE item_uuid = ?1",
        [pending.to_string()],
    );
    assert_eq!(
        product,
        (
            "434696106".into(),
            "Test activity 0".into(),
            "2024-02-01 15:30".into()
        )
    );

    // Everything settled (OK with vouchers): only a re-check after recheck_interval is due.
    h.advance(Duration::minutes(1));
    assert_eq!(h.pass().await.due, 0);
    h.close().await;
}

#[tokio::test]
async fn personal_data_is_never_stored() {
    let h = harness("").await;
    let (_, item) = h.watch_new_order("OK").await;
    h.pass().await;
    let dump = column::<String>(&h.db(), "SELECT payload FROM item_events", []).join(" ");
    assert!(dump.contains(&item.to_string()));
    for personal in PERSONAL_VALUES {
        assert!(
            !dump.contains(personal),
            "{personal} leaked into item_events: {dump}"
        );
    }
    for key in ["participants_info", "extra_customer_data", "customer"] {
        assert!(
            !dump.contains(&format!("\"{key}\"")),
            "{key} leaked: {dump}"
        );
    }
    h.close().await;
}

#[tokio::test]
async fn a_late_webhook_older_than_a_poll_does_not_undo_it() {
    let h = harness("").await;
    let (order, item) = (new_uuid(), new_uuid());
    assert_eq!(
        h.webhook(item, order, 1, "OK", at("2024-01-01T11:00:00Z"))
            .await,
        Outcome::Applied
    );
    // Musement refunded the item at 11:30 but that webhook is lost; a poll at 12:00 sees it.
    let mut body = order_json(order, &[(item, "REFUNDED")]);
    body["status"] = "REFUNDED".into();
    h.fake().put_order(body);
    h.pin_date(at("2024-01-01T12:00:00Z"));
    h.any_pass().await;
    // The quiet period after the webhook kept the order back: nothing polled yet.
    assert_eq!(h.gets(order), 0, "quiet_period holds the poll back");
    h.advance(Duration::minutes(3));
    assert_eq!(h.pass().await.polled, 1);
    assert_eq!(h.item(item), ("REFUNDED".into(), "poll".into()));

    // Now the webhook for the OK→OK version 2 (updated 11:20, before the poll) arrives late.
    let outcome = h
        .webhook(item, order, 2, "OK", at("2024-01-01T11:20:00Z"))
        .await;
    assert_eq!(outcome, Outcome::Doubtful);
    assert_eq!(
        h.item(item).0,
        "REFUNDED",
        "an older webhook does not undo the poll"
    );
    h.close().await;
}

/// One webhook delivered after a poll whose `Date` is 12:00:00, and what it must do.
struct WebhookAfterPoll {
    /// Names the row in every assertion message.
    name: &'static str,
    /// The webhook's item (and order) version.
    version: i64,
    /// The webhook's update time.
    updated: &'static str,
    /// What the store answers.
    outcome: Outcome,
    /// The item's `(status, source)` afterwards.
    item: (&'static str, &'static str),
    /// Whether the order is marked for a re-poll afterwards.
    repoll: bool,
}

#[tokio::test]
async fn a_newer_webhook_wins_over_an_older_poll() {
    let rows = [
        // Confirmed at 12:00:30, clearly after the poll's Date (+ 5 s margin).
        WebhookAfterPoll {
            name: "clearly after the poll",
            version: 3,
            updated: "2024-01-01T12:00:30Z",
            outcome: Outcome::Applied,
            item: ("OK", "webhook"),
            repoll: false,
        },
        // Within the margin of the poll: doubtful, and it asks for a re-poll.
        WebhookAfterPoll {
            name: "within the skew margin of the poll",
            version: 2,
            updated: "2024-01-01T12:00:02Z",
            outcome: Outcome::Doubtful,
            item: ("PENDING", "poll"),
            repoll: true,
        },
    ];
    for row in rows {
        let name = row.name;
        let h = harness("").await;
        let (order, item) = h.watch_new_order("PENDING").await;
        h.pin_date(at("2024-01-01T12:00:00Z"));
        h.pass().await;
        assert_eq!(h.item(item).0, "PENDING", "{name}");
        let outcome = h
            .webhook(item, order, row.version, "OK", at(row.updated))
            .await;
        assert_eq!(outcome, row.outcome, "{name}");
        let (status, source) = row.item;
        assert_eq!(h.item(item), (status.into(), source.into()), "{name}");
        assert_eq!(
            h.order_field(order, "repoll_at").is_some(),
            row.repoll,
            "{name}: the re-poll mark"
        );
        h.close().await;
    }
}

#[tokio::test]
async fn doubt_is_settled_by_a_repoll_that_bypasses_the_quiet_period() {
    let h = harness("quiet_period = \"1h\"").await;
    let (order, item) = h.watch_new_order("PENDING").await;
    h.pin_date(at("2024-01-01T12:00:00Z"));
    h.pass().await;
    assert_eq!(
        h.webhook(item, order, 2, "OK", at("2024-01-01T12:00:02Z"))
            .await,
        Outcome::Doubtful
    );
    // Musement's truth is OK; the re-poll after skew_margin (5 s) settles it despite the 1h quiet period.
    h.fake().set_item_status(order, item, "OK");
    h.pin_date(at("2024-01-01T12:01:00Z"));
    h.advance(Duration::seconds(2));
    assert_eq!(h.pass().await.due, 0, "not before skew_margin");
    h.advance(Duration::seconds(5));
    let summary = h.pass().await;
    assert_eq!((summary.due, summary.polled), (1, 1));
    assert_eq!(h.item(item).0, "OK");
    assert_eq!(
        h.order_field(order, "repoll_at"),
        None,
        "the mark is cleared once settled"
    );
    h.close().await;
}

#[tokio::test]
async fn not_found_stops_polling_until_watched_again() {
    let h = harness("").await;
    let order = new_uuid();
    h.watch(&[order]).await;
    let summary = h.pass().await;
    assert_eq!(summary.not_found, 1);
    assert!(h.order_field(order, "not_found_at").is_some());
    h.advance(Duration::hours(1));
    assert_eq!(h.pass().await.due, 0, "a 404 order is not polled again");
    // The partner watches it again (e.g. it was created late): polled again.
    let item = new_uuid();
    h.watch_order(order, &[(item, "PENDING")]).await;
    assert_eq!(h.pass().await.polled, 1);
    assert_eq!(h.order_field(order, "not_found_at"), None);
    h.close().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_back_off_and_then_succeed() {
    let h = harness("backoff_base = \"30s\"\nbackoff_cap = \"10m\"").await;
    let (order, item) = h.watch_new_order("PENDING").await;
    let path = format!("/orders/{order}");

    // 429 with Retry-After: 120 → due again in exactly 120 s.
    h.fake().push_response(
        &path,
        FakeResponse::status(429).with_header("retry-after", "120"),
    );
    let summary = h.pass().await;
    assert_eq!(summary.failures, 1);
    let next = h.order_field(order, "next_poll_at").unwrap();
    assert_eq!(next, "2024-01-01T12:02:00.000Z");
    h.advance(Duration::seconds(119));
    assert_eq!(h.pass().await.due, 0);

    // A 500 is the second failure in a row: base × 2 × jitter in [0.5, 1], i.e. 30–60 s.
    h.advance(Duration::seconds(1));
    h.fake().push_response(&path, FakeResponse::status(500));
    h.pass().await;
    let now = h.clock.now();
    let next: DateTime<Utc> = h
        .order_field(order, "next_poll_at")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next >= now + Duration::seconds(30) && next <= now + Duration::seconds(60),
        "{next}: the second failure waits 2 × base × [0.5, 1]"
    );
    assert!(h.order_field(order, "last_error").is_some());

    h.advance(Duration::seconds(61));
    let summary = h.pass().await;
    assert_eq!((summary.polled, summary.failures), (1, 0));
    assert_eq!(h.poll_state(order).failures, 0);
    assert_eq!(h.order_field(order, "last_error"), None);
    assert_eq!(h.item(item).0, "PENDING");
    h.close().await;
}

/// Issue 11 defect #3: a `302` from `GET /orders/{uuid}` to another host is a failed poll that
/// names the `Location`; the other host is never asked, and its answer is never stored.
#[tokio::test]
async fn a_redirected_poll_fails_and_the_other_hosts_answer_is_never_stored() {
    let h = harness("").await;
    let (order, item) = h.watch_new_order("PENDING").await;
    h.pass().await;
    assert_eq!(h.item(item).0, "PENDING");

    // Another host (another port) that answers anyone, saying the item is confirmed.
    let elsewhere = FakeMusement::start().await;
    let date = httpdate(h.clock.now() + Duration::minutes(1));
    elsewhere.push_response(
        "",
        FakeResponse::json(200, order_json(order, &[(item, "OK")])).with_header("date", &date),
    );
    let location = format!("{}/orders/{order}", elsewhere.base_url());
    h.fake().push_response(
        &format!("/orders/{order}"),
        FakeResponse::status(302).with_header("location", &location),
    );
    h.advance(Duration::minutes(1));
    let summary = h.pass().await;

    assert_eq!((summary.polled, summary.failures), (0, 1), "{summary:?}");
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
    assert_eq!(h.item(item), ("PENDING".into(), "poll".into()));
    let error = h.order_field(order, "last_error").unwrap();
    assert!(
        error.contains("302") && error.contains(&location),
        "{error}"
    );
    h.close().await;
}

#[tokio::test]
async fn an_absurd_retry_after_is_capped_and_the_writer_survives() {
    let h = harness("").await;
    let (order, _) = h.watch_new_order("PENDING").await;
    h.fake().push_response(
        &format!("/orders/{order}"),
        FakeResponse::status(503).with_header("retry-after", "10000000000000"),
    );
    assert_eq!(h.pass().await.failures, 1);
    assert_eq!(
        h.order_field(order, "next_poll_at").as_deref(),
        Some("2024-01-02T12:00:00.000Z"),
        "Retry-After is honoured up to 24 h"
    );
    // The writer is alive: a webhook is still stored.
    let outcome = h
        .webhook(new_uuid(), order, 1, "OK", at("2024-01-01T12:00:00Z"))
        .await;
    assert_eq!(outcome, Outcome::Applied);
    h.close().await;
}

#[tokio::test]
async fn expired_token_is_renewed_and_refused_credentials_stop_the_pass() {
    let h = harness("").await;
    h.watch_new_orders(3).await;
    assert_eq!(h.pass().await.polled, 3);
    assert_eq!(h.fake().tokens_issued(), 1, "one login for the whole pass");

    h.fake().revoke_tokens(); // 401 → one fresh login → retry
    h.advance(Duration::minutes(1));
    assert_eq!(h.pass().await.polled, 3);
    assert_eq!(h.fake().tokens_issued(), 2);

    // The API keeps refusing: the pass stops and says why.
    for _ in 0..4 {
        h.fake().push_response(
            "",
            FakeResponse::status(401).with_body("{\"code\":\"401\",\"message\":\"nope\"}"),
        );
    }
    h.advance(Duration::minutes(1));
    let summary = h.any_pass().await;
    assert!(summary.stopped.is_some(), "{summary:?}");
    assert!(summary.polled < 3);
    h.close().await;
}

#[tokio::test]
async fn max_age_stops_polling_and_is_reported() {
    let h = harness("max_age = \"2d\"").await;
    let (order, _) = h.watch_new_order("PENDING").await;
    h.pass().await;
    h.advance(Duration::days(2) + Duration::minutes(1));
    let summary = h.pass().await;
    assert_eq!((summary.due, summary.expired, summary.polled), (1, 1, 0));
    assert!(h.order_field(order, "expired_at").is_some());
    h.advance(Duration::minutes(1));
    assert_eq!(h.pass().await.due, 0);
    h.close().await;
}

#[tokio::test]
async fn recheck_interval_catches_a_refund_whose_webhook_never_came() {
    let h = harness("recheck_interval = \"24h\"").await;
    let (order, item) = h.watch_new_order("OK").await;
    h.pass().await;
    assert_eq!(h.item(item).0, "OK");
    h.fake().set_item_status(order, item, "REFUNDED");
    h.advance(Duration::hours(23));
    assert_eq!(
        h.pass().await.due,
        0,
        "an OK item with vouchers waits for the re-check"
    );
    h.advance(Duration::hours(1));
    assert_eq!(h.pass().await.polled, 1);
    assert_eq!(h.item(item).0, "REFUNDED");
    // Final now: never polled again.
    h.advance(Duration::days(3));
    assert_eq!(h.pass().await.due, 0);
    h.close().await;
}

#[tokio::test]
async fn pending_items_past_their_confirmation_deadline_are_reported_once() {
    let h = harness("").await;
    let (order, slow, instant) = (new_uuid(), new_uuid(), new_uuid());
    // Item 0 has max_confirmation_time PT30M, item 1 P0D.
    h.watch_order(order, &[(slow, "PENDING"), (instant, "PENDING")])
        .await;
    assert_eq!(h.pass().await.overdue, 0);
    h.advance(Duration::minutes(1));
    assert_eq!(
        h.pass().await.overdue,
        1,
        "the instant-confirmation item is overdue"
    );
    h.advance(Duration::minutes(30));
    assert_eq!(
        h.pass().await.overdue,
        1,
        "the 30-minute one now; the first is not reported twice"
    );
    h.advance(Duration::minutes(1));
    assert_eq!(h.pass().await.overdue, 0);
    h.close().await;
}

#[tokio::test]
async fn the_lease_refuses_a_concurrent_pass_and_names_the_holder() {
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
    let h = harness("").await;
    let answer = h
        .writer
        .acquire_lease(
            "reconciler",
            "another process (pid 1)",
            Duration::seconds(600),
        )
        .await
        .unwrap();
    assert!(matches!(
        answer,
        orderwatch::store::LeaseAnswer::Acquired { .. }
    ));
    let error = h.reconciler.run_once().await.unwrap_err().to_string();
    assert!(error.contains("another process (pid 1)"), "{error}");
    h.writer
        .release_lease("reconciler", "another process (pid 1)")
        .await
        .unwrap();
    h.pass().await;
    h.close().await;
}

/// After `kill -9` mid-pass the lease stays in the table until it expires; the daemon
/// restarted with the same `instance_id` takes it back at once (no skipped catch-up pass),
/// while a lease held under another id still stops it.
#[tokio::test]
async fn a_restarted_daemon_takes_back_its_own_lease_at_once() {
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
    let fake = FakeMusement::start().await;
    let h = harness_on(&format!(
        "{}[server]\ninstance_id = \"ow-a\"\n",
        config_for(&fake, "")
    ))
    .await;
    let writer = &h.writer;
    // What the killed daemon left: its lease, ten minutes to go.
    writer
        .acquire_lease("reconciler", "ow-a", Duration::seconds(600))
        .await
        .unwrap();
    let reconciler = h.reconciler_as(orderwatch::reconciler::DAEMON_ROLE);
    reconciler.run_once().await.unwrap();

    writer
        .acquire_lease("reconciler", "ow-b", Duration::seconds(600))
        .await
        .unwrap();
    let error = reconciler.run_once().await.unwrap_err().to_string();
    assert!(error.contains("ow-b"), "{error}");
    // A `reconcile` command on the same host is not the daemon: it never takes its lease.
    writer.release_lease("reconciler", "ow-b").await.unwrap();
    writer
        .acquire_lease("reconciler", "ow-a", Duration::seconds(600))
        .await
        .unwrap();
    let command = h.reconciler_as("orderwatch reconcile");
    let error = command.run_once().await.unwrap_err().to_string();
    assert!(error.contains("(ow-a, lease until"), "{error}");
    drop((reconciler, command));
    h.close().await;
}

/// `reconcile --once` while another process holds the lease: it says so and waits; a lease
/// that is not released within the wait makes it name the holder and exit 1, one released
/// while it waits lets it run.
#[test]
fn reconcile_once_cli_waits_for_the_lease_then_runs_or_names_the_holder() {
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
    const HOLDER: &str = "orderwatch run (pid 4242)";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let h = runtime.block_on(harness(""));
    runtime
        .block_on(
            h.writer
                .acquire_lease("reconciler", HOLDER, Duration::days(36500)),
        )
        .unwrap();
    let output = h.cli(&["reconcile", "--once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(HOLDER), "{stderr}");
    assert!(stderr.contains(WAITING), "it said it waits: {stderr}");

    let (order, item) = (new_uuid(), new_uuid());
    h.fake().put_order(order_json(order, &[(item, "PENDING")]));
    // Watched through the CLI too: both processes then use the real clock.
    let watched = h.cli(&["watch", &order.to_string()]).output().unwrap();
    assert!(watched.status.success());
    let mut command = h.cli(&["reconcile", "--once"]);
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    // Released only once the command has found it held and is waiting: an exit before that
    // (no wait at all) ends the channel without the line.
    let mut before = Vec::new();
    loop {
        match stderr.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) if line.contains(WAITING) => break,
            Ok(line) => before.push(line),
            Err(error) => panic!("never waited for the lease ({error}): {before:#?}"),
        }
    }
    runtime
        .block_on(h.writer.release_lease("reconciler", HOLDER))
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rest: Vec<String> = stderr.iter().collect();
    assert_eq!(output.status.code(), Some(0), "{rest:#?}");
    assert!(stdout.contains("polled: 1"), "{stdout}");
    runtime.block_on(h.close());
}

/// What `reconcile --once` prints while it waits for another process's pass.
const WAITING: &str = "; waiting up to";

#[tokio::test]
async fn watch_cli_registers_orders_from_arguments_and_stdin() {
    let h = harness("").await;
    let (a, b) = (new_uuid(), new_uuid());
    let output = h
        .cli(&["watch", &a.to_string(), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{b}\n\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            format!("watching {a} (new)").as_str(),
            format!("watching {b} (new)").as_str(),
            "watching 2 order(s), 2 new"
        ]
    );
    for order in [a, b] {
        assert_eq!(
            h.order_field(order, "CAST(CAST(watched AS INTEGER) AS TEXT)")
                .as_deref(),
            Some("1")
        );
    }
    let output = h.cli(&["watch", "not-a-uuid"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("\"not-a-uuid\" is not an order UUID")
    );
    h.close().await;
}

/// The shipped `config.toml`, pointed at `fake` with credentials and `schedule`, as a partner
/// would edit it.
fn shipped_config_for(fake: &FakeMusement, schedule: &str, dir: &std::path::Path) -> String {
    std::fs::write(dir.join("musement-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let mut text = read_repo_file("config.toml");
    for (from, to) in [
        (
            "base_url = \"https://sandbox.musement.com/api/v3\"",
            format!("base_url = \"{}\"", fake.base_url()),
        ),
        (
            "application = \"\"",
            format!("application = \"{APPLICATION}\""),
        ),
        (
            "# client_id_env = \"MUSEMENT_CLIENT_ID\"",
            format!("client_id = \"{CLIENT_ID}\""),
        ),
        (
            "# client_secret_env = \"MUSEMENT_CLIENT_SECRET\"",
            "client_secret_file = \"musement-secret\"".into(),
        ),
        ("interval = \"1m\"", schedule.into()),
    ] {
        assert!(
            text.contains(from),
            "the shipped config.toml no longer has {from}"
        );
        text = text.replacen(from, &to, 1);
    }
    text
}

#[tokio::test]
async fn the_shipped_config_with_credentials_reconciles_on_interval_and_cron() {
    for schedule in ["interval = \"1s\"", "cron = \"* * * * * *\""] {
        let fake = FakeMusement::start().await;
        let (order, item) = (new_uuid(), new_uuid());
        fake.put_order(order_json(order, &[(item, "PENDING")]));
        let dir = tempfile::tempdir().unwrap();
        let text = shipped_config_for(&fake, schedule, dir.path());
        watch_before_start(dir.path(), &text, &[order]).await;
        let app = spawn_app_in(dir, &text, Arc::new(SystemClock)).await;
        // The first pass runs at start; the schedule must bring at least two more.
        let path = format!("/orders/{order}");
        let mut waited = 0;
        while fake.count("GET", &path) < 3 {
            assert!(
                waited < 200,
                "{schedule}: only {} polls in 10 s",
                fake.count("GET", &path)
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            waited += 1;
        }
        // PENDING → OK at Musement without any webhook: a later pass stores it.
        fake.set_item_status(order, item, "OK");
        let mut waited = 0;
        loop {
            let status: String = value(
                &app.db(),
                "SELECT status FROM order_items WHERE item_uuid = ?1",
                [item.to_string()],
            );
            if status == "OK" {
                break;
            }
            assert!(waited < 200, "{schedule}: never reconciled to OK");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            waited += 1;
        }
        app.stop().await;
    }
}

/// Webhooks only name the item they are about: an order whose delivered webhooks all say KO or
/// REFUNDED may have items whose every webhook was lost. Found by the convergence test.
#[tokio::test]
async fn an_order_known_only_from_final_webhooks_is_polled_once_to_find_its_other_items() {
    let h = harness("").await;
    let (order, refused, unseen) = (new_uuid(), new_uuid(), new_uuid());
    h.fake()
        .put_order(order_json(order, &[(refused, "KO"), (unseen, "OK")]));
    let outcome = h.webhook(refused, order, 2, "KO", h.clock.now()).await;
    assert_eq!(outcome, Outcome::Applied);

    h.advance(Duration::minutes(3));
    let summary = h.pass().await;
    assert_eq!((summary.due, summary.polled), (1, 1), "{summary:?}");
    assert_eq!(h.item(unseen), ("OK".into(), "poll".into()));

    // Once listed, the order is settled: KO is final and the OK item has its vouchers.
    h.advance(Duration::minutes(3));
    assert_eq!(h.pass().await.due, 0);
    assert_eq!(h.gets(order), 1);
    h.close().await;
}

/// `watch -` registers each line as it arrives, not at end of input; a bad line is reported
/// and skipped, and the command exits 1 at the end.
#[tokio::test]
async fn watch_cli_streams_stdin_and_skips_a_bad_line() {
    use std::io::Write;
    let h = harness("").await;
    let first = new_uuid();
    let mut child = h
        .cli(&["watch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{first}").unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let watched = |h: &Harness| {
        h.db()
            .query_row(
                "SELECT count(*) FROM orders WHERE order_uuid = ?1 AND watched = 1",
                [first.to_string()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            == 1
    };
    while !watched(&h) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first line was not registered while standard input stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    writeln!(stdin, "not-a-uuid").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Reported and skipped; the end says so with exit 1 (the other orders are watched).
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 2: \"not-a-uuid\" is not an order UUID; skipped"),
        "{stderr}"
    );
    h.close().await;
}

/// Issue 11 defect #8, in `orderwatch reconcile --once` (its own process, its own client): a
/// 429 with `Retry-After` ends the pass after the one GET in flight, and the summary says until
/// when it paused and how many orders wait for a later pass.
#[test]
fn reconcile_once_cli_pauses_on_a_429_and_says_until_when() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let h = runtime.block_on(harness("concurrency = 1"));
    let orders: Vec<String> = (0..5)
        .map(|_| {
            let order = new_uuid();
            h.fake()
                .put_order(order_json(order, &[(new_uuid(), "PENDING")]));
            h.fake().set_outage(
                &format!("/orders/{order}"),
                Some(FakeResponse::status(429).with_header("retry-after", "120")),
            );
            order.to_string()
        })
        .collect();
    // Watched through the CLI: both processes then use the real clock.
    let watched = h.cli(&["watch"]).args(&orders).output().unwrap();
    assert!(watched.status.success());
    let output = h.cli(&["reconcile", "--once"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let gets = h
        .fake()
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 1, "one GET, then nothing: {stdout}");
    assert!(
        stdout.contains("failures: 1") && stdout.contains(", paused until 20"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(4 orders left for a later pass)"),
        "{stdout}"
    );
    runtime.block_on(h.close());
}

/// A hand edit that leaves a cell the store cannot read (or one in SQLite's own time format)
/// must not make every poll of the order fail: its sibling items are stored, the bad cells
/// are overwritten (issue 11, defect 5).
#[tokio::test]
async fn a_poll_stores_every_item_whatever_a_hand_edit_left_in_the_rows() {
    if sqlite_only(
        "cells SQLite's loose typing lets a hand edit break (PostgreSQL's column types refuse them)",
    ) {
        return;
    }
    let h = harness("").await;
    let (typed, unreadable) = (
        (new_uuid(), new_uuid(), new_uuid()),
        (new_uuid(), new_uuid(), new_uuid()),
    );
    for (order, known, _) in [typed, unreadable] {
        let outcome = h.webhook(known, order, 1, "PENDING", h.clock.now()).await;
        assert_eq!(outcome, Outcome::Applied);
    }
    let db = h.db();
    let edit = |sql: &str, key: Uuid| {
        db.execute(sql, [key.to_string()]).unwrap();
    };
    // `datetime(x)` rewrites a stored time in SQLite's `YYYY-MM-DD HH:MM:SS`, as people type it.
    edit(
        "UPDATE order_items SET as_of = datetime(as_of) WHERE item_uuid = ?1",
        typed.1,
    );
    edit(
        "UPDATE orders SET next_poll_at = datetime(next_poll_at), first_seen_at = datetime(first_seen_at)
         WHERE order_uuid = ?1",
        typed.0,
    );
    edit(
        "UPDATE order_items SET as_of = 'not a time' WHERE item_uuid = ?1",
        unreadable.1,
    );
    edit(
        "UPDATE orders SET first_seen_at = 'whenever', order_polled_as_of = 'garbage'
         WHERE order_uuid = ?1",
        unreadable.0,
    );
    for (order, known, sibling) in [typed, unreadable] {
        h.fake()
            .put_order(order_json(order, &[(known, "OK"), (sibling, "PENDING")]));
    }

    h.advance(Duration::minutes(3));
    let summary = h.pass().await;
    assert_eq!(
        (summary.due, summary.polled, summary.failures),
        (2, 2, 0),
        "{summary:?}"
    );
    for (order, known, sibling) in [typed, unreadable] {
        assert_eq!(h.item(known), ("OK".into(), "poll".into()));
        assert_eq!(h.item(sibling), ("PENDING".into(), "poll".into()));
        assert!(h.order_field(order, "identifier").is_some());
        let as_of = h.item_field(known, "as_of").unwrap();
        assert_eq!(as_of, "2024-01-01T12:03:00.000Z", "rewritten by the poll");
    }
    // The unreadable first_seen_at came back from the order's earliest item.
    assert_eq!(
        h.order_field(unreadable.0, "first_seen_at").as_deref(),
        Some("2024-01-01T12:00:00.000Z")
    );
    h.close().await;
}

/// A poll answered with an older `Date` than the stored one is stale: it changes neither the
/// status nor the product facts, so it cannot push the overdue alert out (issue 11, defect 6).
#[tokio::test]
async fn a_poll_answered_with_an_older_date_changes_no_item_facts() {
    let h = harness("").await;
    let (order, item) = (new_uuid(), new_uuid());
    // Item 0 of order_json: PT30M, "Test activity 0", 2024-02-01 15:30, id 434696106.
    h.watch_order(order, &[(item, "PENDING")]).await;
    h.pin_date(at("2024-01-01T12:10:00Z"));
    h.pass().await;
    let facts = |h: &Harness| -> Vec<Option<String>> {
        [
            "product_id",
            "product_title",
            "product_date",
            "max_confirmation_time",
            "confirm_deadline",
            "facts_as_of",
        ]
        .iter()
        .map(|column| h.item_field(item, column))
        .collect()
    };
    let first = facts(&h);
    assert_eq!(
        first[4].as_deref(),
        Some("2024-01-01T12:30:00.000Z"),
        "first seen + PT30M"
    );

    // Musement's answer changes, but a server answers with an older Date.
    let mut body = h.fake().order(order).unwrap();
    body["items"][0]["product"] = serde_json::json!({
        "id": "1", "title": "Changed", "date": "2030-01-01 10:00", "max_confirmation_time": "P5D",
    });
    h.fake().put_order(body);
    h.pin_date(at("2024-01-01T12:05:00Z"));
    h.advance(Duration::minutes(1));
    h.pass().await;
    let last_outcome: String = value(
        &h.db(),
        "SELECT outcome FROM item_events WHERE item_uuid = ?1 ORDER BY id DESC LIMIT 1",
        [item.to_string()],
    );
    assert_eq!(last_outcome, "stale");
    assert_eq!(facts(&h), first, "a stale poll wrote item facts");

    // Past the deadline the item is overdue: the stale answer did not move it five days out.
    h.advance(Duration::minutes(30));
    assert_eq!(h.pass().await.overdue, 1);

    // A newer answer does replace them.
    h.pin_date(at("2024-01-01T12:40:00Z"));
    h.advance(Duration::minutes(1));
    h.pass().await;
    let newer = facts(&h);
    assert_eq!(newer[1].as_deref(), Some("Changed"));
    assert_eq!(newer[4].as_deref(), Some("2024-01-06T12:00:00.000Z"));
    assert_eq!(newer[5].as_deref(), Some("2024-01-01T12:40:00.000Z"));
    h.close().await;
}

/// A GET sent before a `doubtful` webhook commits cannot have seen what that webhook saw: when
/// it is recorded, it must leave the webhook's re-poll mark in place (issue 11, suspected).
/// Also: an item first seen after the GET was sent is not called missing from its answer.
#[tokio::test]
async fn a_poll_sent_before_a_doubtful_webhook_does_not_clear_its_repoll_mark() {
    let h = harness("").await;
    let (order, item, newcomer) = (new_uuid(), new_uuid(), new_uuid());
    h.fake().put_order(order_json(order, &[(item, "PENDING")]));
    h.pin_date(at("2024-01-01T12:00:00Z"));
    h.watch(&[order]).await;
    h.pass().await;

    // The next GET is answered slowly, with what Musement had before the webhook below.
    h.advance(Duration::seconds(1));
    let path = format!("/orders/{order}");
    h.fake().push_response(
        &path,
        FakeResponse::json(200, order_json(order, &[(item, "PENDING")]))
            .with_header("date", &httpdate(at("2024-01-01T12:00:01Z")))
            .delayed(std::time::Duration::from_millis(1500)),
    );
    let racing_webhooks = async {
        while h.gets(order) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Within skew_margin of the stored poll (12:00:00): doubtful, re-poll at 12:00:06.
        let doubtful = h
            .webhook(item, order, 2, "OK", at("2024-01-01T12:00:03Z"))
            .await;
        let new = h
            .webhook(newcomer, order, 1, "PENDING", at("2024-01-01T12:00:03Z"))
            .await;
        (doubtful, new)
    };
    let (pass, outcomes) = tokio::join!(h.reconciler.run_once(), racing_webhooks);
    assert_eq!(pass.unwrap().polled, 1);
    assert_eq!(outcomes, (Outcome::Doubtful, Outcome::Applied));
    assert_eq!(
        h.order_field(order, "repoll_at").as_deref(),
        Some("2024-01-01T12:00:06.000Z"),
        "the earlier GET cleared the doubtful webhook's re-poll mark"
    );
    assert_eq!(
        h.item_field(newcomer, "missing_since"),
        None,
        "an item first seen after the GET was sent is not missing from its answer"
    );

    // The re-poll the mark asked for settles it.
    h.fake()
        .put_order(order_json(order, &[(item, "OK"), (newcomer, "PENDING")]));
    h.advance(Duration::seconds(5));
    h.pin_date(at("2024-01-01T12:00:06Z"));
    assert_eq!(h.pass().await.polled, 1);
    assert_eq!(h.item(item).0, "OK");
    assert_eq!(h.order_field(order, "repoll_at"), None);
    h.close().await;
}

/// An item Musement stops listing in its order is marked (`missing_since`, our clock, set
/// once) and shown by `orderwatch show`; the mark goes when it is listed again (issue 11,
/// suspected).
#[tokio::test]
async fn an_item_musement_stops_listing_is_marked_missing_until_it_comes_back() {
    let h = harness("").await;
    let (order, kept, dropped) = (new_uuid(), new_uuid(), new_uuid());
    h.watch_order(order, &[(kept, "PENDING"), (dropped, "PENDING")])
        .await;
    h.pass().await;
    assert_eq!(h.item_field(dropped, "missing_since"), None);

    h.fake().put_order(order_json(order, &[(kept, "PENDING")]));
    h.advance(Duration::minutes(1));
    h.pass().await;
    let since = Some("2024-01-01T12:01:00.000Z".to_owned());
    assert_eq!(h.item_field(dropped, "missing_since"), since);
    assert_eq!(h.item_field(kept, "missing_since"), None);
    h.advance(Duration::minutes(1));
    h.pass().await;
    assert_eq!(
        h.item_field(dropped, "missing_since"),
        since,
        "set when first missed, not moved by every later poll"
    );
    assert_eq!(h.item(dropped).0, "PENDING", "its state is kept as it was");

    let show = h.cli(&["show", &dropped.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("missing     not in Musement's order since 2024-01-01 12:01:00"),
        "{text}"
    );

    h.fake()
        .put_order(order_json(order, &[(kept, "PENDING"), (dropped, "OK")]));
    h.advance(Duration::minutes(1));
    h.pass().await;
    assert_eq!(h.item_field(dropped, "missing_since"), None);
    assert_eq!(h.item(dropped).0, "OK");
    h.close().await;
}

/// The real daemon logs an unreadable cell once (table, column, key, value), whether the next
/// observation overwrites it or nothing does (a sibling item no poll lists any more, read for
/// every poll of its order), and an item missing from its order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_a_bad_cell_and_a_missing_item_once() {
    if sqlite_only(
        "cells SQLite's loose typing lets a hand edit break (PostgreSQL's column types refuse them)",
    ) {
        return;
    }
    let fake = FakeMusement::start().await;
    let (order, kept, dropped) = (new_uuid(), new_uuid(), new_uuid());
    fake.put_order(order_json(
        order,
        &[(kept, "PENDING"), (dropped, "PENDING")],
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n{}",
        config_for(&fake, "").replace("interval = \"1h\"", "interval = \"1s\"")
    );
    watch_before_start(dir.path(), &config, &[order]).await;
    let mut daemon = Daemon::start(dir, &config);
    let db = daemon.db();
    let path = format!("/orders/{order}");
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let missing = |item: Uuid| -> Option<String> {
        db.query_row(
            "SELECT missing_since FROM order_items WHERE item_uuid = ?1",
            [item.to_string()],
            |r| r.get(0),
        )
        .unwrap_or(None)
    };
    wait_for("both items stored", &|| {
        db.query_row("SELECT count(*) FROM order_items", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            == 2
    });

    fake.put_order(order_json(order, &[(kept, "PENDING")]));
    wait_for("the dropped item marked missing", &|| {
        missing(dropped).is_some()
    });
    db.execute(
        "UPDATE order_items SET status = CAST(x'ff' AS TEXT) WHERE item_uuid = ?1",
        [dropped.to_string()],
    )
    .unwrap();
    db.execute(
        "UPDATE order_items SET as_of = 'yesterday' WHERE item_uuid = ?1",
        [kept.to_string()],
    )
    .unwrap();
    let gets = fake.count("GET", &path);
    wait_for("three more polls", &|| fake.count("GET", &path) >= gets + 3);
    // A webhook for the other item reads the bad sibling too.
    for version in 1..=3 {
        let body = webhook(&kept.to_string(), &order.to_string(), version, "PENDING");
        assert_eq!(daemon.post_webhook(body).await, 200);
    }
    let lines: Vec<Value> = daemon
        .stop()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let count = |level: &str, field: &str, value: &str, message: &str| {
        lines
            .iter()
            .filter(|l| {
                l["level"] == level
                    && l[field] == value
                    && l["message"].as_str().unwrap_or("").contains(message)
            })
            .count()
    };
    let bad_cell = |key: Uuid, column: &str, value: &str| {
        lines
            .iter()
            .filter(|l| {
                l["level"] == "ERROR"
                    && l["table"] == "order_items"
                    && l["key"] == key.to_string()
                    && l["column"] == column
                    && l["value"] == value
            })
            .count()
    };
    assert_eq!(bad_cell(kept, "as_of", "\"yesterday\""), 1, "{lines:#?}");
    assert_eq!(bad_cell(dropped, "status", "\"\u{fffd}\""), 1, "{lines:#?}");
    assert_eq!(
        count(
            "WARN",
            "item",
            &dropped.to_string(),
            "no longer lists this item"
        ),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count("WARN", "item", &kept.to_string(), "no longer lists"),
        0
    );
}
