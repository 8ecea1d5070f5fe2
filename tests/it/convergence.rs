//! The project's central claim, end to end: whatever webhooks are lost, duplicated or
//! reordered, and however the API fails, the reconciled `order_items` table ends equal to
//! Musement's truth.
//!
//! Per seed: the real `orderwatch run` daemon and the real `musement-sim` binary on loopback;
//! the simulator's standard output (each order's UUID as it is created) is piped into the real
//! `orderwatch watch -`, as a partner registers orders right after creating them. Once the
//! simulator has settled (every lifecycle ended, every webhook delivered or given up) the test
//! polls the database until it equals the truth the simulator wrote: every item present with its
//! final status, and its `item_version` equal to the final version wherever a webhook for that
//! version was delivered (below it, or NULL, otherwise).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::backend;
use crate::helpers::db::{Query, TestDb};
use crate::helpers::process::{KillOnDrop, lines_of, signal, wait_bounded};
use crate::helpers::{Daemon, binary, free_port};

/// The webhook Basic auth and API credentials the two sides share.
const WEBHOOK_USER: &str = "musement";
const WEBHOOK_PASSWORD: &str = "convergence-webhook-pw";
const CLIENT_ID: &str = "convergence-client";
const CLIENT_SECRET: &str = "convergence-secret";

/// How long the simulator may take to settle, and the table to converge after that. These are
/// bounds for a hang, not speed checks: converging takes 10–50 s on an idle machine (the
/// simulator's 429s pause every request for their `Retry-After`, and its hangs cost a
/// `request_timeout` each), and under CI's load, two engines' suites sharing two cores, one
/// PostgreSQL run went past 60 s.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const CONVERGE_LIMIT: Duration = Duration::from_secs(150);

/// One run's faults on top of the common ones.
struct Scenario {
    seed: u64,
    /// Extra simulator flags.
    extra: &'static [&'static str],
    /// Basic auth password the simulator sends (a wrong one: every webhook is refused).
    webhook_password: &'static str,
    /// Daemons on one database (PostgreSQL only past 1), webhooks spread over them in turn.
    instances: usize,
    /// `[reconciler] max_requests_per_second` (0: no ceiling).
    requests_per_second: f64,
}

impl Scenario {
    /// A single daemon without a request ceiling.
    const fn one(
        seed: u64,
        extra: &'static [&'static str],
        webhook_password: &'static str,
    ) -> Self {
        Self {
            seed,
            extra,
            webhook_password,
            instances: 1,
            requests_per_second: 0.0,
        }
    }
}

/// What one run measured.
#[derive(Debug)]
struct Figures {
    seed: u64,
    items: usize,
    /// Items whose final version's webhook was delivered: their `item_version` was checked too.
    versions_checked: usize,
    webhooks: Value,
    gets: u64,
    /// GETs of an order within 100 ms of its previous GET (one pass polling it twice).
    repeats: u64,
    /// The most GETs that arrived within one second.
    peak_per_second: u64,
    api: Value,
    passes_total: usize,
    passes_after_settle: usize,
    settle: Duration,
    converge: Duration,
}

#[test]
fn order_items_converge_to_the_simulators_truth_under_lossy_delivery() {
    let scenarios = [
        Scenario::one(1, &[], WEBHOOK_PASSWORD),
        // REFUND_STARTED is then visible only by polling (the newest guide's trigger list).
        Scenario::one(2, &["--no-refund-started-webhook"], WEBHOOK_PASSWORD),
        // A lagging read replica: polls show the state of 300ms ago under a current Date.
        Scenario::one(3, &["--api-read-lag", "300ms"], WEBHOOK_PASSWORD),
    ];
    // One after the other: side by side they share two busy cores and one disk, and a stalled
    // fsync then costs webhook timeouts that blur the figures.
    let figures: Vec<Figures> = scenarios.iter().map(run).collect();
    for f in &figures {
        let w = &f.webhooks;
        println!(
            "seed {}: {} items ({} with their final version delivered); webhooks generated {} sent {} dropped {} duplicated {} delivered {} retried {}; \
             polls (GET /orders) {}; passes {} in all, {} after settling; settled after {:.1}s, converged {:.1}s later; api {}",
            f.seed,
            f.items,
            f.versions_checked,
            w["generated"],
            w["sent"],
            w["dropped"],
            w["duplicated"],
            w["delivered"],
            w["retried"],
            f.gets,
            f.passes_total,
            f.passes_after_settle,
            f.settle.as_secs_f64(),
            f.converge.as_secs_f64(),
            f.api,
        );
    }
}

/// Webhooks refused for good (a wrong Basic auth password): the simulator retries each on its
/// schedule and gives up, and the table converges on polls alone.
#[test]
fn order_items_converge_on_polls_alone_when_every_webhook_is_refused() {
    let f = run(&Scenario::one(
        4,
        &["--orders", "40", "--items", "100"],
        "not-the-password",
    ));
    let w = &f.webhooks;
    assert_eq!(w["delivered"], 0, "{w}");
    assert!(w["retried"].as_u64() > Some(0), "{w}");
    assert_eq!(w["given_up"], w["sent"], "{w}");
    // Every answer a 401 (or, on a stalled machine, no answer in time); never a 200.
    assert!(w["answers"]["401"].as_u64() > Some(0), "{w}");
    assert!(w["answers"].get("200").is_none(), "{w}");
    println!(
        "seed {} (webhooks refused): {} items; polls {}; passes {} after settling",
        f.seed, f.items, f.gets, f.passes_after_settle
    );
}

/// Several instances on one PostgreSQL database share the reconciler's work and Musement's
/// request budget: three daemons behind a round-robin split of the webhooks, every one
/// reconciling, converge like one, with about the GETs one daemon alone sends for the same
/// seed (not three times as many), almost never the same order twice within 100 ms (one pass
/// polling it twice), and at most a second's budget plus its refill in any second.
#[test]
fn three_reconciling_instances_converge_sharing_the_polls_and_the_request_budget() {
    if backend::postgres_only("several instances on one database") {
        return;
    }
    const RATE: f64 = 60.0;
    let scenario = |instances| Scenario {
        instances,
        requests_per_second: RATE,
        ..Scenario::one(5, &[], WEBHOOK_PASSWORD)
    };
    let alone = run(&scenario(1));
    let three = run(&scenario(3));
    for (what, f) in [("one instance", &alone), ("three instances", &three)] {
        println!(
            "seed {} with {what}: {} items; GET /orders {} ({} within 100 ms of the order's previous GET), \
             at most {} in one second; passes {}; settled after {:.1}s, converged {:.1}s later",
            f.seed,
            f.items,
            f.gets,
            f.repeats,
            f.peak_per_second,
            f.passes_total,
            f.settle.as_secs_f64(),
            f.converge.as_secs_f64(),
        );
    }
    let ratio = three.gets as f64 / alone.gets.max(1) as f64;
    println!("GETs, three instances to one: {ratio:.2}");
    // Three instances polling every due order each would send about 3x. Below that, the ratio
    // follows timing: a run that converges later makes more passes, and an order still due
    // in a later pass is rightly polled again (the repeats check below catches one pass
    // polling an order twice). Measured on two loaded cores in CI on 2026-12-07: 0.79, 1.03
    // and 1.63.
    assert!(
        ratio < 2.0,
        "three instances sent {ratio:.2}× the GETs of one: {} vs {}",
        three.gets,
        alone.gets
    );
    assert!(
        three.repeats * 10 < three.gets,
        "{} of {} GETs repeated an order's previous one within 100 ms",
        three.repeats,
        three.gets
    );
    // The bucket holds a second's worth and refills a second's worth; each instance may hold
    // a tenth of a second's worth it was granted earlier.
    let ceiling = 2.0 * RATE + 3.0 * (RATE / 10.0).ceil();
    assert!(
        three.peak_per_second as f64 <= ceiling,
        "{} GETs in one second, over the shared budget's {ceiling}",
        three.peak_per_second
    );
}

fn run(scenario: &Scenario) -> Figures {
    let dirs: Vec<tempfile::TempDir> = (0..scenario.instances)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    for other in &dirs[1..] {
        backend::share_database(dirs[0].path(), other.path());
    }
    let dir = dirs[0].path().to_owned();
    let sim_port = free_port();
    let config_path = dir.join("config.toml");
    // What `musement-sim compare --database` takes: the SQLite file or the PostgreSQL URL.
    let database = backend::database_argument(&dir);
    let truth_path = dir.join("truth.json");
    let watch_log = dir.join("watch.log");
    let daemons: Vec<Daemon> = dirs
        .into_iter()
        .enumerate()
        .map(|(i, dir)| {
            let config = daemon_config(sim_port, scenario.requests_per_second, i);
            Daemon::start_with_env(dir, &config, &[("CONVERGENCE_SECRET", CLIENT_SECRET)])
        })
        .collect();
    let daemon = &daemons[0];
    let started = Instant::now();
    let webhook_urls: Vec<String> = daemons.iter().map(Daemon::webhook_url).collect();
    let mut sim = Simulator::start(scenario, sim_port, &webhook_urls, &truth_path);
    let mut watch = Command::new(binary())
        .args(["watch", "--config", config_path.to_str().unwrap(), "-"])
        .env_remove("RUST_LOG")
        .env("CONVERGENCE_SECRET", CLIENT_SECRET)
        .stdin(sim.child.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&watch_log).unwrap())
        .spawn()
        .unwrap();

    let mut daemon_log = Vec::new();
    let truth = sim.wait_settled(&truth_path, &daemons, &mut daemon_log);
    let settle = started.elapsed();
    let passes_at_settle = passes(&daemon_log);
    let settled_at = Instant::now();
    let items = truth["items"].as_array().unwrap().len();
    let mut last_diff = Vec::new();
    while settled_at.elapsed() < CONVERGE_LIMIT {
        daemon_log.extend(daemons.iter().flat_map(log_lines));
        last_diff = diff(&truth, &daemon.db());
        if last_diff.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let converge = settled_at.elapsed();
    if !last_diff.is_empty() {
        panic!(
            "seed {}: order_items did not converge within {CONVERGE_LIMIT:?} after the simulator settled; \
             {} of {items} items differ (database vs truth):\n{}\nsimulator log:\n{}\nwatch log:\n{}\ndaemon log (last 40 lines):\n{}",
            scenario.seed,
            last_diff.len(),
            last_diff.join("\n"),
            sim.log(),
            std::fs::read_to_string(&watch_log).unwrap_or_default(),
            daemon_log[daemon_log.len().saturating_sub(40)..].join("\n"),
        );
    }
    let passes_after_settle = passes(&daemon_log) - passes_at_settle;
    // The demo's judge agrees with this test's.
    let compare = Command::new(env!("CARGO_BIN_EXE_musement-sim"))
        .args(["compare", "--database", &database])
        .args(["--truth", truth_path.to_str().unwrap()])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&compare.stdout);
    assert_eq!(compare.status.code(), Some(0), "{summary}");
    assert!(
        summary.contains(&format!("matching {items}/{items}")),
        "{summary}"
    );
    let final_truth = sim.stop(&truth_path);
    let output = watch_output(&mut watch, &watch_log);
    assert!(
        output.contains(&format!("watching {} order(s)", truth["orders"])),
        "{output}"
    );
    for mut daemon in daemons {
        daemon_log.extend(daemon.stop());
    }
    Figures {
        seed: scenario.seed,
        items,
        versions_checked: truth["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["final_version_delivered"] == true)
            .count(),
        webhooks: final_truth["webhooks"].clone(),
        gets: final_truth["get_orders"].as_u64().unwrap_or(0),
        repeats: final_truth["get_order_repeats"].as_u64().unwrap_or(0),
        peak_per_second: final_truth["get_order_peak_per_second"]
            .as_u64()
            .unwrap_or(0),
        api: final_truth["api"].clone(),
        passes_total: passes(&daemon_log),
        passes_after_settle,
        settle,
        converge,
    }
}

/// The daemon: webhooks with Basic auth, the simulator as Musement, and the reconciler tuned
/// for seconds instead of hours (every knob at or above its minimum).
fn daemon_config(sim_port: u16, requests_per_second: f64, instance: usize) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
instance_id = "convergence-{instance}"
[server.auth]
username = "{WEBHOOK_USER}"
password = "{WEBHOOK_PASSWORD}"

[database]
path = "orderwatch.db"
# `orderwatch watch -` writes while the daemon does; on a loaded machine an fsync can stall the
# daemon's commit for seconds, and the watch must wait rather than fail.
busy_timeout = "30s"

[store]
skew_margin = "1s"

[musement]
base_url = "http://127.0.0.1:{sim_port}/api/v3"
application = "orderwatch-convergence"
client_id = "{CLIENT_ID}"
client_secret_env = "CONVERGENCE_SECRET"

[reconciler]
interval = "1s"
concurrency = 8
max_requests_per_second = {requests_per_second:.1}
request_timeout = "1s"
quiet_period = "300ms"
recheck_interval = "1s"
backoff_base = "200ms"
backoff_cap = "1s"

[log]
format = "json"
level = "warn,orderwatch::reconciler=info,orderwatch::app=info"
"#
    )
}

/// The real `musement-sim`, killed if the test panics.
struct Simulator {
    child: KillOnDrop,
    log: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Simulator {
    fn start(scenario: &Scenario, port: u16, webhook_urls: &[String], truth: &Path) -> Self {
        let listen = format!("127.0.0.1:{port}");
        let seed = scenario.seed.to_string();
        let mut args = vec![
            "--seed",
            &seed,
            "--listen",
            &listen,
            "--orders",
            "200",
            "--items",
            "500",
            "--create-over",
            "1s",
            "--instant-delay",
            "0ms..50ms",
            "--confirm-delay",
            "100ms..1500ms",
            "--cancel-after",
            "200ms..1s",
            "--refund-delay",
            "100ms..500ms",
            "--resolve-delay",
            "200ms..1s",
            "--voucher-delay",
            "0ms..300ms",
            "--webhook-user",
            WEBHOOK_USER,
            "--drop",
            "0.3",
            "--duplicate",
            "0.2",
            "--webhook-delay",
            "0ms..1s",
            "--retry-schedule",
            "100ms,200ms,400ms,800ms",
            "--client-id",
            CLIENT_ID,
            "--token-ttl",
            "2s",
            "--api-5xx",
            "0.05",
            "--api-429",
            "0.03",
            "--api-timeout",
            "0.02",
            "--api-hang",
            "3s",
            "--linger",
            "5m",
            "--truth",
            truth.to_str().unwrap(),
        ];
        for url in webhook_urls {
            args.extend(["--webhook-url", url]);
        }
        // Later flags win (clap keeps the last value), so a scenario can override the above.
        args.extend_from_slice(scenario.extra);
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_musement-sim"))
                .args(&args)
                .env("MUSEMENT_SIM_CLIENT_SECRET", CLIENT_SECRET)
                .env("MUSEMENT_SIM_WEBHOOK_PASSWORD", scenario.webhook_password)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let log = lines_of(child.stderr.take().unwrap());
        Self {
            child,
            log,
            lines: Vec::new(),
        }
    }

    /// Its standard error so far.
    fn log(&mut self) -> String {
        self.lines.extend(self.log.try_iter());
        self.lines.join("\n")
    }

    /// Waits for the truth file to say `settled`, collecting the daemons' logs meanwhile.
    fn wait_settled(
        &mut self,
        truth: &Path,
        daemons: &[Daemon],
        daemon_log: &mut Vec<String>,
    ) -> Value {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            daemon_log.extend(daemons.iter().flat_map(log_lines));
            if let Some(value) = read_truth(truth)
                && value["phase"] == "settled"
            {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("musement-sim exited early ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "musement-sim did not settle within {SETTLE_LIMIT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, expect exit 0 and the truth with its final counters.
    fn stop(&mut self, truth: &Path) -> Value {
        signal(self.child.id(), "TERM");
        let status = wait_bounded(&mut self.child, Duration::from_secs(10)).and_then(|s| s.code());
        assert_eq!(status, Some(0), "musement-sim exit:\n{}", self.log());
        let value = read_truth(truth).expect("the final truth");
        assert_eq!(value["phase"], "finished");
        value
    }
}

fn read_truth(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The daemon's log lines since the last call.
fn log_lines(daemon: &Daemon) -> Vec<String> {
    daemon.drain_log()
}

/// How many of `lines` report a reconciler pass.
fn passes(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|line| line.contains("\"reconciler pass\""))
        .count()
}

/// Every difference between `order_items` and the truth, one line each.
fn diff(truth: &Value, db: &TestDb) -> Vec<String> {
    let mut rows = std::collections::HashMap::new();
    let read = db.query_rows(
        "SELECT item_uuid, order_uuid, status, item_version FROM order_items",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ),
            ))
        },
    );
    match read {
        Ok(all) => rows.extend(all),
        Err(error) => return vec![format!("cannot read order_items: {error}")],
    }
    let mut differences = Vec::new();
    for item in truth["items"].as_array().unwrap() {
        let uuid = item["item"].as_str().unwrap();
        let want_status = item["status"].as_str().unwrap();
        let want_version = item["version"].as_i64().unwrap();
        let delivered = item["final_version_delivered"].as_bool().unwrap();
        // A webhook that got no answer in time may have been stored all the same.
        let unanswered = item["unanswered_versions"]
            .as_array()
            .unwrap()
            .contains(&Value::from(want_version));
        let context = format!(
            "{} ({}, history {}, delivered versions {}, unanswered {})",
            uuid,
            item["kind"],
            item["history"],
            item["delivered_versions"],
            item["unanswered_versions"]
        );
        let Some((order, status, version)) = rows.remove(uuid) else {
            let order = describe_order(db, item["order"].as_str().unwrap());
            differences.push(format!("missing: {context}; its order: {order}"));
            continue;
        };
        if order != item["order"].as_str().unwrap() {
            differences.push(format!("order {order}: {context}"));
        }
        if status != want_status {
            differences.push(format!("status {status}, want {want_status}: {context}"));
        }
        let version_ok = if delivered {
            version == Some(want_version)
        } else if unanswered {
            version.is_none_or(|v| v <= want_version)
        } else {
            version.is_none_or(|v| v < want_version)
        };
        if !version_ok {
            differences.push(format!(
                "item_version {version:?}, want {}{want_version}: {context}",
                if delivered { "" } else { "below " }
            ));
        }
    }
    for (uuid, row) in rows {
        differences.push(format!("not in the truth: {uuid} {row:?}"));
    }
    differences
}

/// The reconciler's bookkeeping of one order and the statuses of its known items.
fn describe_order(db: &TestDb, order: &str) -> String {
    let items = db.query_rows(
        "SELECT status, item_version, vouchers FROM order_items WHERE order_uuid = ?1",
        [order],
        |r| {
            let version = r.get::<_, Option<i64>>(1)?;
            let vouchers = r.get::<_, Option<String>>(2)?.unwrap_or_default();
            Ok(format!(
                "{}{}{}",
                r.get::<_, String>(0)?,
                version.map(|v| format!(" v{v}")).unwrap_or_default(),
                if vouchers.is_empty() || vouchers == "[]" {
                    ""
                } else {
                    " +vouchers"
                }
            ))
        },
    );
    let items = match items {
        Ok(items) => items.join(", "),
        Err(e) => format!("{e}"),
    };
    let row = db.query_row(
        "SELECT watched, needs_poll, next_poll_at, last_polled_at, poll_failures, not_found_at,
                repoll_at
         FROM orders WHERE order_uuid = ?1",
        [order],
        |r| {
            Ok(format!(
                "watched {} needs_poll {} next_poll_at {:?} last_polled_at {:?} poll_failures {} not_found_at {:?} repoll_at {:?} items [{items}]",
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        },
    );
    row.unwrap_or_else(|e| format!("{order}: {e}"))
}

/// `orderwatch watch -` ends when the simulator closes its standard output; its summary line.
fn watch_output(watch: &mut Child, log: &Path) -> String {
    use std::io::Read;
    let status = wait_bounded(watch, Duration::from_secs(10)).and_then(|s| s.code());
    let mut stdout = String::new();
    let _ = watch.stdout.take().unwrap().read_to_string(&mut stdout);
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status, Some(0), "orderwatch watch: {stdout}{stderr}");
    stdout
}
