//! The README's PostgreSQL backup and restore ("Upgrades and rollback"), step by step with the
//! real tools: `pg_dump --format=custom` while the daemon runs, more webhooks, every instance
//! stopped, `pg_restore --no-owner` into an empty database, the daemon started on it: the
//! dump's state and nothing after it, ready, and taking webhooks. Named `postgres_*` so it runs
//! once, in the outer test pass.

use std::process::Command;

use crate::helpers::pg;
use crate::helpers::process::assert_succeeded;
use crate::helpers::{Daemon, cli, uuid, webhook};

/// The daemon's config: loopback, no reconciler; the URL comes from the environment.
const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n";

/// Starts the daemon on the database at `url`.
async fn daemon_on(url: &str) -> Daemon {
    let daemon = Daemon::launch(tempfile::tempdir().unwrap(), CONFIG)
        .env("ORDERWATCH_DATABASE__URL", url)
        .start();
    daemon.wait_ready().await;
    daemon
}

/// Posts `count` webhooks for new items `from..from + count` of one order.
async fn post_items(daemon: &Daemon, from: u64, count: u64) {
    for n in from..from + count {
        let status = daemon
            .post_webhook(webhook(&uuid(1, n), &uuid(2, 1), 1, "PENDING"))
            .await;
        assert_eq!(status, 200);
    }
}

/// `orderwatch stats --format json` on `url`: the items counted.
fn items_in(daemon: &Daemon, url: &str) -> u64 {
    let output = cli(
        &daemon.dir.path().join("config.toml"),
        &["stats", "--format", "json"],
    )
    .env("ORDERWATCH_DATABASE__URL", url)
    .output()
    .unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&assert_succeeded("orderwatch stats", &output)).unwrap();
    stats["items"].as_u64().unwrap()
}

#[tokio::test]
async fn a_pg_dump_restores_into_an_empty_database_as_the_readme_says() {
    let (Some(source), Some(target)) = (
        pg::database("pg_dump and pg_restore"),
        pg::database("the restore's empty database"),
    ) else {
        return;
    };
    let (Some(pg_dump), Some(pg_restore)) = (
        pg::client_program("pg_dump"),
        pg::client_program("pg_restore"),
    ) else {
        return crate::helpers::skip("pg_dump", "PostgreSQL's pg_dump and pg_restore are missing");
    };
    let mut daemon = daemon_on(&source.url).await;
    post_items(&daemon, 0, 5).await;

    // 1. The dump, taken while the daemon runs.
    let dump = daemon.dir.path().join("orderwatch.dump");
    let dumped = Command::new(&pg_dump)
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(&source.url)
        .output()
        .unwrap();
    assert_succeeded("pg_dump", &dumped);
    // Stored after the dump: gone once it is restored.
    post_items(&daemon, 5, 3).await;
    assert_eq!(items_in(&daemon, &source.url), 8);

    // 2. Every instance stopped; restored into an empty database.
    daemon.stop();
    let restored = Command::new(&pg_restore)
        .args(["--no-owner", "--dbname"])
        .arg(&target.url)
        .arg(&dump)
        .output()
        .unwrap();
    assert_succeeded("pg_restore", &restored);

    // 3. Started on it: the dump's items and no more, ready, and storing again.
    let daemon = daemon_on(&target.url).await;
    assert_eq!(items_in(&daemon, &target.url), 5);
    post_items(&daemon, 100, 1).await;
    assert_eq!(items_in(&daemon, &target.url), 6);
}
