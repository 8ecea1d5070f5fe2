//! Several orderwatch instances on one PostgreSQL database (issue 16): the real binary three
//! times, each with its own port and `instance_id`, the same `[database] url`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use orderwatch::observation::Observation;
use orderwatch::store::{self, StoreSettings};
use tokio::sync::Semaphore;

use crate::helpers::exposition::Exposition;
use crate::helpers::pg;
use crate::helpers::{Daemon, http_client, json_post, uuid, webhook};

/// The instances' config: no reconciler (webhooks only), JSON log.
const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
                      [reconciler]\nenabled = false\n";

const INSTANCES: [&str; 3] = ["ha-a", "ha-b", "ha-c"];

/// Orders, items per order and versions per item of the webhook set.
const ORDERS: u64 = 30;
const ITEMS_PER_ORDER: u64 = 3;
const VERSIONS: u64 = 6;

/// Requests in flight at once, over all instances.
const IN_FLIGHT: usize = 24;

/// Every webhook of the set: (item, order, version, status), each item's versions with a status
/// drawn from Musement's, a fifth of them sent twice.
fn webhook_set(rng: &mut fastrand::Rng) -> Vec<(String, String, u64, &'static str)> {
    const STATUSES: [&str; 5] = ["PENDING", "OK", "KO", "REFUND_STARTED", "REFUNDED"];
    let mut set = Vec::new();
    for order in 1..=ORDERS {
        for n in 0..ITEMS_PER_ORDER {
            let item = order * 100 + n;
            for version in 1..=VERSIONS {
                let status = STATUSES[rng.usize(..STATUSES.len())];
                let copies = if rng.u8(..5) == 0 { 2 } else { 1 };
                for _ in 0..copies {
                    set.push((uuid(1, item), uuid(2, order), version, status));
                }
            }
        }
    }
    rng.shuffle(&mut set);
    set
}

/// Instance `id` on the database at `url`, its config and state in `dir`.
fn instance(dir: tempfile::TempDir, url: &str, id: &str) -> Daemon {
    Daemon::launch(dir, CONFIG)
        .env("ORDERWATCH_DATABASE__URL", url)
        .env("ORDERWATCH_SERVER__INSTANCE_ID", id)
        .start()
}

/// The [`INSTANCES`] on the database at `url`, each ready.
async fn start_instances(url: &str) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = INSTANCES
        .iter()
        .map(|id| instance(tempfile::tempdir().unwrap(), url, id))
        .collect();
    for daemon in &daemons {
        daemon.wait_ready().await;
    }
    daemons
}

/// [`start_instances`], each in a slot a test can empty by stopping or killing it.
async fn start_stoppable_instances(url: &str) -> Vec<Option<Daemon>> {
    start_instances(url).await.into_iter().map(Some).collect()
}

/// What the rule makes of `bodies`, whatever their order: the item rows SQLite's store keeps
/// after applying them (in the order given) — (status, item_version) by item.
fn the_rules_items(bodies: &[String]) -> BTreeMap<String, (String, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut conn =
        store::open_for_writing(&dir.path().join("rule.db"), Duration::from_secs(5)).unwrap();
    let received = chrono::Utc::now();
    let observations: Vec<Observation> = bodies
        .iter()
        .map(|body| Observation::from_webhook(body.as_bytes(), received).unwrap())
        .collect();
    let refs: Vec<&Observation> = observations.iter().collect();
    let tx = conn.transaction().unwrap();
    store::apply_batch(&tx, &refs, &StoreSettings::default(), received).unwrap();
    tx.commit().unwrap();
    let mut statement = conn
        .prepare("SELECT item_uuid, status, item_version FROM order_items")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Three instances take webhooks for the same items at once, spread at random: every one
/// answered 200 is in `item_events`, the table is what the rule makes of them, each instance
/// stored its share, and the server saw no deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_database_store_what_the_rule_decides() {
    let Some(db) = pg::database("three instances on one database") else {
        return;
    };
    let mut daemons = start_instances(&db.url).await;
    let urls: Vec<String> = daemons.iter().map(Daemon::webhook_url).collect();

    let mut rng = fastrand::Rng::with_seed(16);
    let set = webhook_set(&mut rng);
    let client = http_client();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut sends = Vec::with_capacity(set.len());
    for (item, order, version, status) in &set {
        let body = webhook(item, order, *version, status);
        let instance = rng.usize(..urls.len());
        let (client, url, slots) = (client.clone(), urls[instance].clone(), slots.clone());
        sends.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let answer = json_post(&client, &url)
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            (instance, body, answer.map(|a| a.status().as_u16()))
        }));
    }
    let mut acknowledged = Vec::new();
    let mut per_instance: HashMap<usize, usize> = HashMap::new();
    for send in sends {
        let (instance, body, answer) = send.await.unwrap();
        assert_eq!(answer.as_ref().ok(), Some(&200), "{body}: {answer:?}");
        *per_instance.entry(instance).or_default() += 1;
        acknowledged.push(body);
    }

    let client = pg::connect(&db.url).await;
    let events: i64 = client
        .query_one("SELECT count(*) FROM item_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events as usize, acknowledged.len(), "an event per 200");
    let stored: BTreeMap<String, (String, i64)> = client
        .query(
            "SELECT item_uuid::text, status, item_version FROM order_items",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    assert_eq!(stored.len() as u64, ORDERS * ITEMS_PER_ORDER);
    assert_eq!(
        stored,
        the_rules_items(&acknowledged),
        "the table against the rule's"
    );
    let receivers: BTreeMap<String, i64> = client
        .query(
            "SELECT receiver, count(*) FROM item_events GROUP BY receiver",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (n, id) in INSTANCES.iter().enumerate() {
        assert_eq!(
            receivers.get(*id).copied(),
            Some(per_instance[&n] as i64),
            "events stored by {id}: {receivers:?}"
        );
    }
    // Read once the instances are gone: their backends report deadlocks on exit at the latest.
    for daemon in &mut daemons {
        daemon.stop();
    }
    assert_eq!(
        pg::deadlocks_once_alone(&client).await,
        0,
        "deadlocks reported by the server"
    );
    println!(
        "three instances: {} webhooks (stored per instance: {receivers:?}), {} items, 0 deadlocks",
        acknowledged.len(),
        stored.len()
    );
}

/// What the senders of the kill test saw, per instance.
#[derive(Default)]
struct Answers {
    /// (item, version) answered 200, and by which instance.
    acknowledged: Vec<(String, u64, usize)>,
    /// Per instance: answers other than 200, and requests that got no answer.
    not_200: [usize; INSTANCES.len()],
}

/// Senders that keep posting webhooks (rising versions of their own items on shared orders),
/// each request to the next instance in turn, until `stop`.
fn keep_sending(
    urls: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    answers: Arc<std::sync::Mutex<Answers>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..IN_FLIGHT as u64)
        .map(|sender| {
            let (urls, stop, answers) = (urls.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let client = http_client();
                let mut version = 0;
                while !stop.load(Ordering::SeqCst) {
                    version += 1;
                    let instance = (sender + version) as usize % INSTANCES.len();
                    let url = urls.lock().unwrap()[instance].clone();
                    // Eight items per sender, each always in the same one of ten shared orders.
                    let k = version % 8;
                    let item = uuid(1, sender << 32 | k);
                    let order = uuid(2, (sender * 8 + k) % 10);
                    let body = webhook(&item, &order, version, "PENDING");
                    let answer = json_post(&client, &url)
                        .body(body)
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    let ok = matches!(&answer, Ok(a) if a.status() == 200);
                    {
                        let mut answers = answers.lock().unwrap();
                        if ok {
                            answers.acknowledged.push((item, version, instance));
                        } else {
                            answers.not_200[instance] += 1;
                        }
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// Waits until `more` further webhooks were answered 200 (bounded).
async fn until_acknowledged(answers: &std::sync::Mutex<Answers>, more: usize, what: &str) {
    let target = answers.lock().unwrap().acknowledged.len() + more;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answers.lock().unwrap().acknowledged.len() < target {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no progress in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `kill -9` of one of three instances under load, then its restart: every webhook any of them
/// answered 200 is stored, and the two survivors answered every request sent to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_under_load_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(db) = pg::database("kill one of three instances") else {
        return;
    };
    let mut daemons = start_stoppable_instances(&db.url).await;
    let urls = Arc::new(std::sync::Mutex::new(
        daemons
            .iter()
            .flatten()
            .map(Daemon::webhook_url)
            .collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Answers::default()));
    let senders = keep_sending(urls.clone(), stop.clone(), answers.clone());
    until_acknowledged(&answers, 300, "before the kill").await;

    const VICTIM: usize = 1;
    let dir = daemons[VICTIM].take().unwrap().sigkill();
    until_acknowledged(&answers, 300, "with one instance dead").await;
    let refused_by_the_dead = answers.lock().unwrap().not_200[VICTIM];

    let restarted = instance(dir, &db.url, INSTANCES[VICTIM]);
    restarted.wait_ready().await;
    urls.lock().unwrap()[VICTIM] = restarted.webhook_url();
    daemons[VICTIM] = Some(restarted);
    until_acknowledged(&answers, 300, "after the restart").await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }

    let stored = pg::stored_versions(&pg::connect(&db.url).await).await;
    let answers = answers.lock().unwrap();
    let lost: Vec<_> = answers
        .acknowledged
        .iter()
        .filter(|(item, version, _)| !stored.contains(&(item.clone(), *version)))
        .collect();
    let mut per_instance = [0usize; INSTANCES.len()];
    for (_, _, instance) in &answers.acknowledged {
        per_instance[*instance] += 1;
    }
    println!(
        "kill one of three: acknowledged per instance {per_instance:?}, {} checked, {} lost; \
         not answered 200 per instance {:?} ({refused_by_the_dead} while {} was dead)",
        answers.acknowledged.len(),
        lost.len(),
        answers.not_200,
        INSTANCES[VICTIM],
    );
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    for survivor in (0..INSTANCES.len()).filter(|&n| n != VICTIM) {
        assert_eq!(
            answers.not_200[survivor], 0,
            "{} failed requests (while {} was dead or restarting)",
            INSTANCES[survivor], INSTANCES[VICTIM]
        );
    }
    assert!(refused_by_the_dead > 0, "the dead instance was asked too");
    drop(answers);
    for daemon in daemons.iter_mut().flatten() {
        daemon.stop();
    }
}

/// `orderwatch changes --follow` while three instances write and a test transaction that wrote
/// a change stays open: nothing is printed past the open transaction; once it commits, its
/// change comes first and every change of the three instances follows, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_skips_nothing_and_repeats_nothing_with_three_writing_instances() {
    const WEBHOOKS: u64 = 300;
    let Some(db) = pg::database("the feed with three instances") else {
        return;
    };
    let mut daemons = start_instances(&db.url).await;

    // The test's own writer: a change stored in a transaction it keeps open.
    let mut holder = pg::connect(&db.url).await;
    let held = holder.transaction().await.unwrap();
    let held_item = uuid(1, 1_000_000);
    pg::store_webhook_in(
        &held,
        &webhook(&held_item, &uuid(2, 1_000_000), 1, "PENDING"),
    )
    .await;

    let mut follow = crate::helpers::cli(
        &daemons[0].dir.path().join("config.toml"),
        &["changes", "--follow"],
    )
    .env("ORDERWATCH_DATABASE__URL", &db.url)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let lines = crate::helpers::process::lines_of(follow.stdout.take().unwrap());

    // Every instance commits its share while the test's transaction stays open.
    let client = http_client();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let sends: Vec<_> = (1..=WEBHOOKS)
        .map(|n| {
            let url = daemons[n as usize % INSTANCES.len()].webhook_url();
            let (client, slots) = (client.clone(), slots.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                let item = uuid(1, n);
                let answer = json_post(&client, &url)
                    .body(webhook(&item, &uuid(2, n % 20), 1, "PENDING"))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map(|a| a.status().as_u16());
                (item, answer)
            })
        })
        .collect();
    let mut sent = std::collections::BTreeSet::new();
    for send in sends {
        let (item, answer) = send.await.unwrap();
        assert_eq!(answer.as_ref().ok(), Some(&200), "{item}: {answer:?}");
        sent.insert(item);
    }
    assert!(
        lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "printed past a transaction still open"
    );

    held.commit().await.unwrap();
    let mut printed = Vec::new();
    while printed.len() < sent.len() + 1 {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {} changes printed", printed.len()));
        let change: serde_json::Value = serde_json::from_str(&line).unwrap();
        printed.push((
            change["item"].as_str().unwrap().to_owned(),
            change["id"].as_i64().unwrap(),
        ));
    }
    assert_eq!(printed[0].0, held_item, "the held change first");
    let items: std::collections::BTreeSet<String> =
        printed[1..].iter().map(|(item, _)| item.clone()).collect();
    assert_eq!(items, sent, "every instance's changes");
    let ids: std::collections::HashSet<i64> = printed.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), printed.len(), "an event printed twice");
    assert!(
        lines.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing printed twice"
    );
    crate::helpers::process::signal(follow.id(), "INT");
    let status = crate::helpers::process::wait_bounded(&mut follow, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    println!(
        "feed with three instances: {} changes printed once each, the held one first",
        printed.len()
    );
    for daemon in &mut daemons {
        daemon.stop();
    }
}

/// Which instances export the database-wide gauges now: `(instance, its orderwatch_items by
/// status)` for each that shows `orderwatch_cluster_lease_held 1`; the others must show 0
/// and no database gauge.
async fn gauge_exporters(daemons: &[Option<Daemon>]) -> Vec<(usize, BTreeMap<String, f64>)> {
    let mut exporters = Vec::new();
    for (n, daemon) in daemons.iter().enumerate() {
        let Some(daemon) = daemon else { continue };
        let text = daemon.metrics_text().await;
        let metrics = Exposition::parse(&text);
        let held = metrics.get("orderwatch_cluster_lease_held", &[]);
        let items: BTreeMap<String, f64> = metrics
            .samples
            .iter()
            .filter(|s| s.name == "orderwatch_items")
            .map(|s| (s.labels.get("status").cloned().unwrap_or_default(), s.value))
            .collect();
        match held {
            Some(1.0) => exporters.push((n, items)),
            Some(0.0) => assert!(
                items.is_empty() && metrics.get("orderwatch_pending_items", &[]).is_none(),
                "{} does not hold the cluster lease but exports database gauges:\n{text}",
                INSTANCES[n]
            ),
            other => panic!("{}: orderwatch_cluster_lease_held {other:?}", INSTANCES[n]),
        }
    }
    exporters
}

/// Of three instances exactly one exports the database-wide gauges (the cluster lease
/// holder), so a sum across instances is the database's count; when it stops, another takes
/// the lease at its next renewal and exports them instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_exports_the_database_gauges_and_another_takes_over_when_it_stops() {
    let Some(db) = pg::database("the database gauges of three instances") else {
        return;
    };
    let mut daemons = start_stoppable_instances(&db.url).await;
    let client = http_client();
    for n in 0..9 {
        let daemon = daemons[n % 3].as_ref().unwrap();
        let body = webhook(
            &uuid(1, n as u64),
            &uuid(2, n as u64),
            1,
            ["OK", "PENDING", "KO"][n % 3],
        );
        let answer = json_post(&client, daemon.webhook_url())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let expected: BTreeMap<String, f64> = [("KO", 3.0), ("OK", 3.0), ("PENDING", 3.0)]
        .map(|(s, n)| (s.to_owned(), n))
        .into();

    let exporters = gauge_exporters(&daemons).await;
    assert_eq!(exporters.len(), 1, "exactly one exports: {exporters:?}");
    let (leader, items) = exporters[0].clone();
    assert_eq!(items, expected, "the database's counts, once");

    daemons[leader].take().unwrap().stop();
    let stopped_at = std::time::Instant::now();
    let limit = orderwatch::leadership::RENEW_EVERY + Duration::from_secs(10);
    let successor = loop {
        let exporters = gauge_exporters(&daemons).await;
        assert!(exporters.len() <= 1, "two export at once: {exporters:?}");
        if let Some((n, items)) = exporters.into_iter().next() {
            assert_eq!(items, expected);
            break n;
        }
        assert!(
            stopped_at.elapsed() < limit,
            "nobody took the lease within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "database gauges: {} exported them, then {} {:.1}s after it stopped",
        INSTANCES[leader],
        INSTANCES[successor],
        stopped_at.elapsed().as_secs_f64()
    );
    for daemon in daemons.iter_mut().flatten() {
        daemon.stop();
    }
}
