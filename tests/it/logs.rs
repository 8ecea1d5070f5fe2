//! What the real daemon logs, read the way an operator or a log shipper reads it: JSON lines
//! that are flat objects (one event per line, no `fields` object), values in words rather than
//! Rust's Debug (`synchronous` `FULL`, `every 1h`, RFC 3339 times), a start-up line naming the
//! version, the listeners and the database (never a secret), no line per scrape or probe at
//! INFO, no dependency chatter at INFO, and a reload that cannot apply a setting saying so once.

use std::time::Duration;

use chrono::DateTime;
use serde_json::Value;

use crate::helpers::backend;
use crate::helpers::fake_musement::{
    CLIENT_SECRET, FakeMusement, FakeResponse, new_uuid, order_json,
};
use crate::helpers::{Daemon, config_for, fixture, watch_before_start};

/// The webhook password of [`config`], which no line may contain (nor the API secret).
const WEBHOOK_PASSWORD: &str = "Swordfish-in-the-log?";

/// A daemon config with JSON logs, webhook auth, and the reconciler polling `fake`.
fn config(fake: &FakeMusement) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.auth]\nusername = \"musement\"\n\
         password = \"{WEBHOOK_PASSWORD}\"\n[log]\nformat = \"json\"\n\n{}",
        config_for(fake, "")
    )
}

/// Each line as JSON, failing on one that is not a flat object of scalars with the usual keys.
fn flat_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {line}"));
            let object = event
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(object.contains_key(key), "no {key}: {line}");
            }
            for (key, value) in object {
                assert!(
                    !value.is_object() && !value.is_array(),
                    "{key} is nested: {line}"
                );
            }
            assert!(
                DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).is_ok(),
                "{line}"
            );
            event
        })
        .collect()
}

/// The events whose message is `message`.
fn with_message<'a>(events: &'a [Value], message: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["message"] == message).collect()
}

/// The start-up log and the lines up to the first pass's summary (or `until`).
fn startup_lines(daemon: &Daemon, until: &str) -> Vec<String> {
    let startup = daemon
        .startup_log
        .iter()
        .map(|entry| match entry {
            Value::String(line) => line.clone(),
            json => json.to_string(),
        })
        .collect::<Vec<_>>();
    startup
        .into_iter()
        .chain(daemon.lines_until(until))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_flat_events_with_readable_values_and_a_complete_start_up_line() {
    let fake = FakeMusement::start().await;
    let order = new_uuid();
    fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));
    // The first poll fails: its warning carries the next poll time.
    fake.push_response(&format!("/orders/{order}"), FakeResponse::status(503));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&fake);
    watch_before_start(dir.path(), &config, &[order]).await;
    // The file's full path, or the URL (this one has no password to mask).
    let database = backend::database_argument(dir.path());
    let mut daemon = Daemon::start(dir, &config);
    let lines = startup_lines(&daemon, "reconciler pass");
    let events = flat_events(&lines);

    let start = with_message(&events, "orderwatch is receiving webhooks");
    assert_eq!(start.len(), 1, "{lines:#?}");
    let start = start[0];
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"), "{start}");
    assert!(
        start["commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{start}"
    );
    assert_eq!(start["listen"], daemon.addr.to_string(), "{start}");
    // Unset in this config: the host name, as in leases, claims and `item_events.receiver`.
    let host = orderwatch::config::ServerConfig::default().instance_id();
    assert_eq!(start["instance"], host, "{start}");
    assert_eq!(start["metrics"], daemon.addr.to_string(), "{start}");
    assert_eq!(start["path"], "/webhooks/musement", "{start}");
    assert_eq!(
        start["database"], database,
        "where the database is: {start}"
    );

    let opened = with_message(&events, "database opened for writing");
    assert_eq!(opened.len(), 1, "{lines:#?}");
    if backend::postgres() {
        assert_eq!(opened[0]["tls"], "disable", "{}", opened[0]);
        assert_eq!(
            opened[0]["schema_version"],
            orderwatch::store::postgres::migrate::SCHEMA_VERSION,
            "{}",
            opened[0]
        );
    } else {
        assert_eq!(opened[0]["synchronous"], "FULL", "{}", opened[0]);
        assert_eq!(opened[0]["journal_mode"], "wal", "{}", opened[0]);
    }

    let on = with_message(&events, "the reconciler is on");
    assert_eq!(on.len(), 1, "{lines:#?}");
    assert_eq!(on[0]["schedule"], "every 1h", "{}", on[0]);

    let backing_off = with_message(&events, "poll failed; backing off");
    assert_eq!(backing_off.len(), 1, "{lines:#?}");
    let next = backing_off[0]["next_poll_at"].as_str().unwrap_or_default();
    assert!(
        DateTime::parse_from_rfc3339(next).is_ok() && next.ends_with('Z'),
        "an RFC 3339 time in UTC: {}",
        backing_off[0]
    );

    let rest = daemon.stop();
    flat_events(&rest);
    for line in lines.iter().chain(&rest) {
        assert!(
            !line.contains(WEBHOOK_PASSWORD),
            "a secret in the log: {line}"
        );
        assert!(!line.contains(CLIENT_SECRET), "a secret in the log: {line}");
        for debug_form in ["Every(", "Some(", " UTC\"", "\"fields\""] {
            assert!(!line.contains(debug_form), "{debug_form} in {line}");
        }
    }
}

/// A pass's summary line has `stopped` only when something stopped the pass: not an empty
/// `stopped=""` on every pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_summary_names_stopped_only_when_the_pass_stopped() {
    let fake = FakeMusement::start().await;
    let order = new_uuid();
    fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));
    for (secret, stopped) in [
        (CLIENT_SECRET, None),
        ("not-the-client-secret", Some("login refused (HTTP 401)")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&fake).replace(CLIENT_SECRET, secret);
        watch_before_start(dir.path(), &config, &[order]).await;
        let daemon = Daemon::start(dir, &config);
        let lines = startup_lines(&daemon, "reconciler pass");
        let events = flat_events(&lines);
        let pass = with_message(&events, "reconciler pass");
        assert_eq!(pass.len(), 1, "{lines:#?}");
        let pass = pass[0];
        match stopped {
            None => {
                assert_eq!(pass["polled"], 1, "{pass}");
                assert!(pass.get("stopped").is_none(), "{pass}");
            }
            Some(why) => {
                assert_eq!(pass["polled"], 0, "{pass}");
                assert!(
                    pass["stopped"].as_str().is_some_and(|s| s.contains(why)),
                    "{pass}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_probes_and_dependencies_say_nothing_at_info() {
    let fake = FakeMusement::start().await;
    let config = config(&fake);
    let quiet = Daemon::start(tempfile::tempdir().unwrap(), &config);
    let startup = startup_lines(&quiet, "reconciler pass");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/metrics", "/healthz", "/readyz", "/metrics"] {
        let status = client.get(quiet.url(path)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    // A webhook after them is logged: every line before it is what the scrapes and probes said.
    let unauthorized = quiet
        .post_webhook(fixture("webhooks/documented-example.json"))
        .await;
    assert_eq!(unauthorized, 401);
    let lines: Vec<String> = startup
        .into_iter()
        .chain(quiet.lines_until("\"status\":401"))
        .collect();
    let events = flat_events(&lines);
    let requests: Vec<&Value> = with_message(&events, "request");
    assert_eq!(
        requests.len(),
        1,
        "only the webhook is logged at INFO, not the scrapes and probes: {requests:#?}"
    );
    let from_dependencies: Vec<&Value> = events
        .iter()
        .filter(|e| !e["target"].as_str().unwrap_or("").starts_with("orderwatch"))
        .collect();
    assert!(
        from_dependencies.is_empty(),
        "dependency lines at INFO: {from_dependencies:#?}"
    );
    drop(quiet);

    // The same daemon under RUST_LOG=info: the scheduler's own lines are there, so the quiet
    // above is the default filter's doing.
    let loud = Daemon::launch(tempfile::tempdir().unwrap(), &config)
        .env("RUST_LOG", "info")
        .start();
    let lines = startup_lines(&loud, "reconciler pass");
    assert!(
        flat_events(&lines).iter().any(|e| e["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("tokio_cron_scheduler")),
        "RUST_LOG=info shows tokio_cron_scheduler's INFO lines: {lines:#?}"
    );
}

/// What the test above shows, said where an operator looks: `--help` and the README say, in
/// one sentence, that `RUST_LOG` overrides both `[log] level` and the quieting.
#[test]
fn help_and_readme_say_rust_log_overrides_the_level_and_the_quieting() {
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = crate::helpers::orderwatch().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = words(&String::from_utf8_lossy(&help.stdout));
    assert!(
        help.contains("RUST_LOG, when set, overrides [log] level and the quieting of dependencies"),
        "{help}"
    );
    let readme = words(include_str!("../../README.md"));
    assert!(
        readme.contains(
            "`RUST_LOG`, when set, overrides `[log] level` and the quieting of dependencies"
        ),
        "README.md"
    );
}

#[test]
fn a_reload_that_cannot_apply_a_setting_says_so_once_and_does_not_call_it_reloaded() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n";
    let off = format!("{base}level = \"info\"\n[reconciler]\nenabled = false\n");
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), &off);
    // The interval cannot change while the reconciler is off; the log level can.
    std::fs::write(
        daemon.dir.path().join("config.toml"),
        format!("{base}level = \"debug\"\n[reconciler]\nenabled = false\ninterval = \"5m\"\n"),
    )
    .unwrap();
    daemon.signal("HUP");
    let lines = daemon.lines_until("could not apply a reloaded setting");
    let events = flat_events(&lines);
    let not_applied = with_message(
        &events,
        "could not apply a reloaded setting; the old one stays",
    );
    assert_eq!(not_applied.len(), 1, "{lines:#?}");
    let said = not_applied[0];
    assert_eq!(said["level"], "WARN", "{said}");
    assert!(
        said["changed"]
            .as_str()
            .is_some_and(|c| c.starts_with("reconciler.interval")),
        "{said}"
    );
    assert!(
        said["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reconciler is off")),
        "{said}"
    );
    let reloaded = with_message(&events, "configuration reloaded");
    assert_eq!(reloaded.len(), 1, "{lines:#?}");
    let applied = reloaded[0]["changed"].as_str().unwrap_or_default();
    assert!(applied.starts_with("log.level"), "{}", reloaded[0]);
    assert!(
        !applied.contains("reconciler"),
        "not listed as reloaded too: {}",
        reloaded[0]
    );
    // Nothing else about this reload follows (an ERROR for the same change, say).
    let later = daemon.log_lines_for(Duration::from_millis(500));
    assert!(
        later.iter().all(|l| !l.contains("reconciler.interval")),
        "{later:#?}"
    );
    daemon.stop();
}

/// The partner API's log line per request names the token's name, never the token: with the
/// right token, a wrong one and none, in the real daemon's JSON log (and the start-up line
/// names the API's address).
#[tokio::test]
async fn api_requests_are_logged_with_the_token_name_never_the_token() {
    const TOKEN: &str = "tok-3c9e1f7a5b2d";
    const WRONG: &str = "tok-wrong-8a6d4e";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.token"), format!("{TOKEN}\n")).unwrap();
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
                  [api]\nlisten = \"127.0.0.1:0\"\n[[api.tokens]]\nname = \"booking-system\"\n\
                  token_file = \"api.token\"\n";
    let mut daemon = Daemon::start(dir, config);
    daemon.wait_ready().await;
    let startup = daemon.startup_log.last().unwrap().clone();
    let api = startup["api"]
        .as_str()
        .expect("the start-up line names the API");
    let client = crate::helpers::http_client();
    let url = format!("http://{api}/v1/stats");
    for (token, status) in [(Some(TOKEN), 200), (Some(WRONG), 401), (None, 401)] {
        let request = client.get(&url);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        assert_eq!(request.send().await.unwrap().status(), status);
    }
    let lines = daemon.stop();
    for line in &lines {
        assert!(
            !line.contains(TOKEN) && !line.contains(WRONG),
            "a token in the log: {line}"
        );
    }
    let requests: Vec<(String, u64)> = flat_events(&lines)
        .into_iter()
        .filter(|event| event["message"] == "api request")
        .map(|event| {
            assert_eq!(event["route"], "/v1/stats", "{event}");
            assert_eq!(event["method"], "GET", "{event}");
            assert!(event["latency_ms"].is_u64(), "{event}");
            (
                event["token"].as_str().unwrap().to_owned(),
                event["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        requests,
        [
            ("booking-system".to_owned(), 200),
            ("-".to_owned(), 401),
            ("-".to_owned(), 401)
        ]
    );
}
