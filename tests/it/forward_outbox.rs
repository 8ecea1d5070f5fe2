//! Signed webhooks out end to end (issue 18): the real daemon with `[[forward]]`, webhooks in,
//! and a receiver in this process that verifies every delivery with `standardwebhooks` and
//! checks each item's order as deliveries arrive. Faults, `kill -9`, two instances on
//! PostgreSQL, and the operator's `orderwatch deliveries` flows. Both engines.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::daemon::Daemon;
use crate::helpers::hooks::{Behaviour, Hooks, secret};
use crate::helpers::{backend, cli, uuid, webhook};

/// The variable the test daemons read their signing secret from.
const SECRET_VAR: &str = "TEST_FORWARD_SECRET";

/// Every item's changes in these tests, in order.
const SEQUENCE: [&str; 4] = ["PENDING", "OK", "REFUND_STARTED", "REFUNDED"];

/// A daemon config forwarding every status change to `url`, from the feed's beginning, with
/// short retries; `extra` goes into the `[[forward]]` table.
fn config(url: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[[forward]]
name = "booking"
url = "{url}"
secret_env = "{SECRET_VAR}"
start = "beginning"
timeout = "500ms"
retry_base = "50ms"
retry_cap = "400ms"
{extra}
"#
    )
}

fn start(dir: TempDir, config: &str, key: &str) -> Daemon {
    Daemon::start_with_env(dir, config, &[(SECRET_VAR, key)])
}

/// Posts version `version` (its status from [`SEQUENCE`]) of each of `items`.
async fn post_round(daemon: &Daemon, items: &[u64], version: u64) {
    for &n in items {
        let body = webhook(
            &uuid(1, n),
            &uuid(2, n),
            version,
            SEQUENCE[version as usize - 1],
        );
        assert_eq!(daemon.post_webhook(body).await, 200, "item {n} v{version}");
    }
}

/// Whether every one of `items` has its first `versions` changes acknowledged.
fn all_acknowledged(
    acknowledged: &BTreeMap<String, Vec<String>>,
    items: &[u64],
    versions: usize,
) -> bool {
    items.iter().all(|n| {
        acknowledged
            .get(&uuid(1, *n))
            .is_some_and(|statuses| statuses.len() >= versions)
    })
}

/// `orderwatch deliveries ARGS --format json` on the daemon's database.
fn deliveries(config: &Path, args: &[&str]) -> Vec<Value> {
    let output = cli(
        config,
        &[&["deliveries"], args, &["--format", "json"]].concat(),
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "deliveries {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `orderwatch deliveries ARGS`: exit code, stdout, stderr.
fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = cli(config, &[&["deliveries"], args].concat())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits up to 20 s until `orderwatch deliveries ARGS` lists something `found` accepts.
async fn wait_for_delivery(config: &Path, args: &[&str], found: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        if let Some(row) = deliveries(config, args).into_iter().find(&found) {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no such delivery; deliveries: {:#?}",
        deliveries(config, &["--limit", "100"])
    );
}

fn item_is(row: &Value, n: u64, status: &str) -> bool {
    row["item"] == uuid(1, n) && row["new_status"] == status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_signed_and_in_order_through_faults_and_kill_9() {
    let key = secret(0x5a, 32);
    let faults = Behaviour::Faulty {
        fail: 0.5,
        slow: 0.1,
        delay: Duration::from_millis(700),
    };
    let hooks = Hooks::start(&key, faults, 0.15).await;
    let items: Vec<u64> = (1..=30).collect();
    for n in &items {
        hooks.expect_sequence(&uuid(1, *n), &SEQUENCE);
    }
    let config = config(&hooks.url, "");
    let daemon = start(tempfile::tempdir().unwrap(), &config, &key);
    post_round(&daemon, &items, 1).await;
    post_round(&daemon, &items, 2).await;
    // Kill the sender midway: some deliveries are in flight, some acknowledged by the receiver
    // but not yet recorded.
    assert!(
        hooks
            .wait_until(Duration::from_secs(30), |acked| acked
                .values()
                .flatten()
                .count()
                >= 20)
            .await,
        "some deliveries before the kill"
    );
    let dir = daemon.sigkill();
    let before_restart = hooks.received().len();
    let daemon = start(dir, &config, &key);
    post_round(&daemon, &items, 3).await;
    post_round(&daemon, &items, 4).await;
    let done = hooks
        .wait_until(Duration::from_secs(90), |acked| {
            all_acknowledged(acked, &items, SEQUENCE.len())
        })
        .await;
    let received = hooks.received();
    assert!(
        done,
        "every change acknowledged; acknowledged: {:?}",
        hooks.acknowledged()
    );
    assert!(received.len() > before_restart, "the restarted daemon sent");
    for (item, statuses) in hooks.acknowledged() {
        assert_eq!(statuses, SEQUENCE, "{item}: acknowledged in feed order");
    }
    assert_eq!(hooks.order_violations(), Vec::<String>::new());
    assert!(
        received.iter().all(|r| r.verified),
        "every signature verifies"
    );
    for r in &received {
        assert_eq!(
            r.id,
            format!("orderwatch-{}", r.body["data"]["id"]),
            "webhook-id is the change's event id"
        );
        assert_eq!(r.body["type"], "order_item.status_changed");
    }
    let failed = received.iter().filter(|r| r.status >= 500).count();
    assert!(
        failed * 4 > received.len(),
        "the faults were real: {failed} of {} answers failed",
        received.len()
    );
    // The receiver may have acknowledged a change whose answer the daemon did not see in time
    // (a slow answer): it is sent again, so the outbox empties a little later.
    let config_path = daemon.dir.path().join("config.toml");
    let mut left = Vec::new();
    for _ in 0..100 {
        left = deliveries(&config_path, &["--state", "pending", "--state", "parked"]);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, Vec::<Value>::new(), "nothing left undelivered");
    assert_eq!(
        hooks.order_violations(),
        Vec::<String>::new(),
        "nor out of order then"
    );
    let delivered = deliveries(&config_path, &["--state", "delivered", "--limit", "1000"]);
    assert_eq!(
        delivered.len(),
        items.len() * SEQUENCE.len(),
        "one delivery per change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_retried_skipped_disabled_enabled_and_replayed_through_the_cli() {
    let key = secret(0x33, 24);
    let hooks = Hooks::start(&key, Behaviour::Status(500), 0.0).await;
    let config = config(&hooks.url, "give_up_after = \"1s\"");
    let daemon = start(tempfile::tempdir().unwrap(), &config, &key);
    let path = daemon.dir.path().join("config.toml");

    // Item 1's first change fails until it is parked.
    post(&daemon, 1, 1).await;
    let parked = wait_for_delivery(&path, &["--failed"], |row| {
        item_is(row, 1, "PENDING") && row["state"] == "parked"
    })
    .await;
    assert!(parked["attempts"].as_i64().unwrap() >= 2, "{parked}");
    assert_eq!(parked["last_status"], 500);
    let (code, table, err) = run(&path, &["--failed"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[1].contains("parked") && lines[1].contains(&uuid(1, 1)[..8]),
        "{table}"
    );
    assert!(lines[2].contains("last answer: HTTP 500"), "{table}");
    let (_, destinations, _) = run(&path, &["--destinations"]);
    assert!(
        destinations.lines().nth(1).unwrap().starts_with("booking"),
        "{destinations}"
    );
    for line in table.lines().chain(destinations.lines()) {
        assert!(line.chars().count() <= 80, "fits 80 columns: {line:?}");
    }
    let metrics = daemon.metrics_text().await;
    assert!(
        metrics.contains("orderwatch_forward_parked{destination=\"booking\"} 1"),
        "{metrics}"
    );
    let age = gauge(
        &metrics,
        "orderwatch_forward_oldest_undelivered_age_seconds{destination=\"booking\"}",
    );
    assert!(age > 0.0, "{metrics}");

    // The parked change holds back item 1's next one; item 2 goes on.
    hooks.behave(Behaviour::Status(204));
    post(&daemon, 1, 2).await;
    post(&daemon, 2, 1).await;
    assert!(
        hooks
            .wait_until(Duration::from_secs(20), |acked| acked
                .contains_key(&uuid(1, 2)))
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !hooks.acknowledged().contains_key(&uuid(1, 1)),
        "item 1 waits behind its parked change"
    );
    let id = parked["id"].to_string();
    let (code, out, err) = run(&path, &["retry", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("retried delivery {id}").as_str()),
        "{err}"
    );
    assert!(
        hooks
            .wait_until(Duration::from_secs(20), |acked| acked.get(&uuid(1, 1))
                == Some(&vec!["PENDING".to_owned(), "OK".to_owned()]))
            .await,
        "retried, then the held-back change: {:?}",
        hooks.acknowledged()
    );

    // Skipping a parked change lets the item's next one go; the skipped one never arrives.
    hooks.behave(Behaviour::Status(500));
    post(&daemon, 3, 1).await;
    let parked = wait_for_delivery(&path, &["--failed"], |row| {
        item_is(row, 3, "PENDING") && row["state"] == "parked"
    })
    .await;
    post(&daemon, 3, 2).await;
    hooks.behave(Behaviour::Status(200));
    let id = parked["id"].to_string();
    let (code, _, err) = run(&path, &["skip", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        hooks
            .wait_until(Duration::from_secs(20), |acked| acked.get(&uuid(1, 3))
                == Some(&vec!["OK".to_owned()]))
            .await,
        "{:?}",
        hooks.acknowledged()
    );
    let skipped = deliveries(&path, &["--state", "skipped"]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let (code, _, err) = run(&path, &["retry", &id]);
    assert_eq!(code, 1, "a skipped delivery is not retried: {err}");

    // 410 Gone disables the destination until it is enabled.
    hooks.behave(Behaviour::Status(410));
    post(&daemon, 4, 1).await;
    let disabled = wait_for_destination(&path, |row| row["disabled_at"].is_string()).await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .starts_with("410 Gone"),
        "{disabled}"
    );
    hooks.behave(Behaviour::Status(200));
    post(&daemon, 5, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let acked = hooks.acknowledged();
    assert!(
        !acked.contains_key(&uuid(1, 4)) && !acked.contains_key(&uuid(1, 5)),
        "nothing is sent while disabled: {acked:?}"
    );
    let (code, out, err) = run(&path, &["enable", "booking"]);
    assert_eq!((code, out.trim()), (0, "enabled booking"), "{err}");
    assert!(
        hooks
            .wait_until(Duration::from_secs(20), |acked| acked
                .contains_key(&uuid(1, 4))
                && acked.contains_key(&uuid(1, 5)))
            .await
    );

    // A replay from the start sends every change again, the skipped one included.
    let before = hooks.received().len();
    let (code, out, err) = run(&path, &["replay", "booking", "--from", "0"]);
    assert_eq!((code, out.trim()), (0, "replaying booking from 0"), "{err}");
    let expected = 7; // items 1 and 3 two changes each, items 2, 4 and 5 one each
    let mut again = Vec::new();
    for _ in 0..200 {
        again = hooks.received()[before..].to_vec();
        if again.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: Vec<&str> = again.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expected, "{again:?}");
    assert!(
        again
            .iter()
            .any(|r| item_status(r) == (uuid(1, 3), "PENDING".into()))
    );

    // Mistakes are one line each.
    let (code, _, err) = run(&path, &["enable", "nowhere"]);
    assert_eq!(code, 1);
    assert!(err.contains("no destination nowhere"), "{err}");
    let (code, _, err) = run(&path, &["--state", "lost"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let (code, _, _) = run(&path, &["retry", "999999"]);
    assert_eq!(code, 1);
    let beyond = if backend::postgres() {
        "999999999.1"
    } else {
        "999999"
    };
    let (code, _, err) = run(&path, &["replay", "booking", "--from", beyond]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("past the end of the feed"), "{err}");
    let (code, _, err) = run(&path, &["forget", "booking"]);
    assert_eq!(code, 2, "a configured destination is not forgotten: {err}");

    // Pruning deletes the records of delivered and skipped webhooks, never an undelivered one.
    hooks.behave(Behaviour::Status(500));
    post(&daemon, 6, 1).await;
    let failing = wait_for_delivery(&path, &["--failed"], |row| item_is(row, 6, "PENDING")).await;
    let done = deliveries(
        &path,
        &[
            "--state",
            "delivered",
            "--state",
            "skipped",
            "--limit",
            "1000",
        ],
    );
    let pruned = cli(&path, &["prune", "--events-older-than", "0s"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&pruned.stdout);
    assert!(
        said.contains(&format!(
            "and {} delivered or skipped webhook(s) out",
            done.len()
        )),
        "{said}"
    );
    let left = deliveries(&path, &["--limit", "1000"]);
    assert_eq!(
        left.iter().map(|row| row["id"].clone()).collect::<Vec<_>>(),
        [failing["id"].clone()],
        "only the undelivered one is left"
    );
    assert!(hooks.received().iter().all(|r| r.verified));

    // A destination taken out of the configuration is forgotten, with its deliveries.
    let mut daemon = daemon;
    daemon.stop();
    crate::helpers::config_file(daemon.dir.path(), "[server]\nlisten = \"127.0.0.1:0\"\n");
    let (code, out, err) = run(&path, &["forget", "booking"]);
    assert_eq!((code, out.trim()), (0, "forgot booking"), "{err}");
    assert_eq!(deliveries(&path, &["--destinations"]), Vec::<Value>::new());
    assert_eq!(deliveries(&path, &[]), Vec::<Value>::new());
}

/// Two instances on one PostgreSQL database, each receiving half of every item's webhooks
/// (so an item's changes are written by both, in transactions that can start in one order and
/// commit in the other) and both sending; one is killed with deliveries in flight, and the
/// other takes its claims over once they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_deliver_one_change_at_once_and_skip_none() {
    if backend::postgres_only("two instances share one outbox") {
        return;
    }
    let key = secret(0x77, 32);
    let slowly = Behaviour::Faulty {
        fail: 0.2,
        slow: 0.3,
        delay: Duration::from_millis(50),
    };
    let hooks = Hooks::start(&key, slowly, 0.0).await;
    let items: Vec<u64> = (1..=40).collect();
    for n in &items {
        hooks.expect_sequence(&uuid(1, *n), &SEQUENCE);
    }
    let with_id = |id: &str| {
        config(&hooks.url, "max_in_flight = 4").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\ninstance_id = \"{id}\""),
        )
    };
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    backend::share_database(first_dir.path(), second_dir.path());
    let a = start(first_dir, &with_id("forward-a"), &key);
    let b = start(second_dir, &with_id("forward-b"), &key);
    let post_version = |version: u64| {
        let (a, b, items) = (&a, &b, &items);
        async move {
            for &n in items {
                // Odd and even versions of an item go to different instances.
                let daemon = if (n + version) % 2 == 0 { a } else { b };
                let status = SEQUENCE[version as usize - 1];
                let body = webhook(&uuid(1, n), &uuid(2, n), version, status);
                assert_eq!(daemon.post_webhook(body).await, 200);
            }
        }
    };
    post_version(1).await;
    post_version(2).await;
    post_version(3).await;
    assert!(
        hooks
            .wait_until(Duration::from_secs(30), |acked| acked
                .values()
                .flatten()
                .count()
                >= 40)
            .await
    );
    // Instance a dies with deliveries in flight; b sends its claimed ones after they expire.
    let path = b.dir.path().join("config.toml");
    drop(a.sigkill());
    for &n in &items {
        let body = webhook(&uuid(1, n), &uuid(2, n), 4, SEQUENCE[3]);
        assert_eq!(b.post_webhook(body).await, 200);
    }
    assert!(
        hooks
            .wait_until(Duration::from_secs(60), |acked| all_acknowledged(
                acked,
                &items,
                SEQUENCE.len()
            ))
            .await,
        "{:?}",
        hooks.acknowledged()
    );
    assert_eq!(
        hooks.overlaps(),
        Vec::<String>::new(),
        "no change sent by both at once"
    );
    assert_eq!(hooks.order_violations(), Vec::<String>::new());
    for (item, statuses) in hooks.acknowledged() {
        assert_eq!(
            statuses, SEQUENCE,
            "{item}: acknowledged in the order applied"
        );
    }
    let counts = hooks.acknowledgements();
    assert_eq!(counts.len(), items.len() * SEQUENCE.len(), "none skipped");
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = deliveries(&path, &["--state", "delivered", "--limit", "1000"]);
        if delivered.len() == items.len() * SEQUENCE.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        delivered.len(),
        items.len() * SEQUENCE.len(),
        "enqueued once, though both feed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_statuses_choose_what_is_sent() {
    let key = secret(0x21, 32);
    let hooks = Hooks::start(&key, Behaviour::Status(200), 0.0).await;
    let config = config(
        &hooks.url,
        "outcomes = [\"status_changed\", \"updated\"]\nstatuses = [\"PENDING\", \"KO\"]",
    );
    let daemon = start(tempfile::tempdir().unwrap(), &config, &key);
    let (item, order) = (uuid(1, 1), uuid(2, 1));
    for (version, status) in [(1, "PENDING"), (2, "PENDING"), (3, "OK"), (4, "KO")] {
        let body = webhook(&item, &order, version, status);
        assert_eq!(daemon.post_webhook(body).await, 200);
    }
    let mut received = Vec::new();
    for _ in 0..200 {
        received = hooks.received();
        if received.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<(String, String)> = hooks
        .received()
        .iter()
        .map(|r| {
            (
                r.body["type"].as_str().unwrap().to_owned(),
                r.body["data"]["new_status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("order_item.status_changed".to_owned(), "PENDING".to_owned()),
            ("order_item.updated".to_owned(), "PENDING".to_owned()),
            ("order_item.status_changed".to_owned(), "KO".to_owned()),
        ],
        "the same-status version as an update, OK left out: {received:?}"
    );
}

/// Posts version `version` of item `n` (its status from [`SEQUENCE`]).
async fn post(daemon: &Daemon, n: u64, version: u64) {
    post_round(daemon, &[n], version).await;
}

/// The item and status a delivery carried.
fn item_status(received: &crate::helpers::hooks::Received) -> (String, String) {
    let data = &received.body["data"];
    (
        data["item"].as_str().unwrap_or_default().to_owned(),
        data["new_status"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Waits up to 20 s until the `booking` destination's row satisfies `found`.
async fn wait_for_destination(config: &Path, found: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let rows = deliveries(config, &["--destinations"]);
        if let Some(row) = rows
            .into_iter()
            .find(|row| row["name"] == "booking" && found(row))
        {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{:#?}", deliveries(config, &["--destinations"]));
}

/// The value of the sample `series` in a Prometheus exposition.
fn gauge(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

/// The Python receiver the README shows ("Signed webhooks out"), run exactly as written with
/// the specification's Python library: it verifies our deliveries, prints each change once,
/// and refuses a forged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_receiver_verifies_and_prints_our_deliveries() {
    let importable = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !importable {
        crate::helpers::skip::skip(
            "standardwebhooks (python)",
            "python3 cannot import standardwebhooks (pip install standardwebhooks==1.3.0)",
        );
        return;
    }
    let readme = crate::helpers::read_repo_file("README.md");
    let opening = "<!-- forward-receiver -->\n```python\n";
    let from = readme.find(opening).expect("the README's receiver") + opening.len();
    let code = &readme[from..from + readme[from..].find("\n```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, code).unwrap();
    let port = crate::helpers::free_port();
    let key = secret(0x42, 32);
    let mut receiver = crate::helpers::process::KillOnDrop(
        std::process::Command::new("python3")
            .arg(&script)
            .env("WEBHOOK_SECRET", &key)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            // http.server's access log.
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let printed = crate::helpers::process::lines_of(receiver.stdout.take().unwrap());
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://127.0.0.1:{port}/hooks");
    let forged = crate::helpers::http_client()
        .post(&url)
        .header("webhook-id", "orderwatch-1")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("webhook-signature", "v1,Zm9yZ2Vk")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400, "a forged delivery is refused");
    let daemon = start(tempfile::tempdir().unwrap(), &config(&url, ""), &key);
    post(&daemon, 1, 1).await;
    post(&daemon, 1, 2).await;
    let item = uuid(1, 1);
    let lines: Vec<String> = (0..2)
        .map(|_| {
            printed
                .recv_timeout(Duration::from_secs(20))
                .expect("the receiver prints each change")
        })
        .collect();
    assert_eq!(
        lines,
        [
            format!("{item} None -> PENDING []"),
            format!("{item} PENDING -> OK []")
        ]
    );
}

/// PostgreSQL's feed lists changes by writing transaction, and an item's earlier change can
/// come from a transaction that started later (it waited for the order's lock), so it is
/// listed after the item's later change, possibly pages later. Made here by hand: the earlier
/// change's transaction number is moved past every running one (the feed holds it back as
/// still running), then back just after the later change's. The later change must wait for
/// the earlier one, which then goes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_earlier_change_listed_later_in_the_feed_still_goes_first() {
    if backend::postgres_only("the feed's order by transaction is PostgreSQL's") {
        return;
    }
    let key = secret(0x64, 32);
    let hooks = Hooks::start(&key, Behaviour::Status(200), 0.0).await;
    let (item, order) = (uuid(1, 7), uuid(2, 7));
    hooks.expect_sequence(&item, &SEQUENCE[..2]);
    let dir = tempfile::tempdir().unwrap();
    let url = backend::database_url(dir.path());
    // Both changes stored by a daemon that forwards nothing yet.
    let quiet = Daemon::start(dir, "[server]\nlisten = \"127.0.0.1:0\"\n");
    for (version, status) in [(1, "PENDING"), (2, "OK")] {
        let body = webhook(&item, &order, version, status);
        assert_eq!(quiet.post_webhook(body).await, 200);
    }
    let mut quiet = quiet;
    quiet.stop();
    let client = crate::helpers::pg::connect(&url).await;
    let events: Vec<(i64, i64)> = client
        .query(
            "SELECT id, (tx::text)::bigint FROM item_events WHERE outcome = 'applied' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let [(earlier, _), (_, later_tx)] = events[..] else {
        panic!("two applied events: {events:?}");
    };
    client
        .execute(
            "UPDATE item_events SET tx = '9223372036854775000'::xid8 WHERE id = $1",
            &[&earlier],
        )
        .await
        .unwrap();
    let daemon = start(quiet.dir, &config(&hooks.url, ""), &key);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hooks.received().len(),
        0,
        "the later change waits while the earlier one is not fed: {:?}",
        hooks.received()
    );
    client
        .execute(
            "UPDATE item_events SET tx = (($2::bigint + 1)::text)::xid8 WHERE id = $1",
            &[&earlier, &later_tx],
        )
        .await
        .unwrap();
    assert!(
        hooks
            .wait_until(Duration::from_secs(20), |acked| acked
                .get(&item)
                .is_some_and(|s| s.len() == 2))
            .await,
        "{:?}",
        hooks.received()
    );
    assert_eq!(hooks.acknowledged()[&item], SEQUENCE[..2]);
    assert_eq!(hooks.order_violations(), Vec::<String>::new());
    drop(daemon);
}
