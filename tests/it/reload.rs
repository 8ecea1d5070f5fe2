//! SIGHUP on the real binary: what can change while running changes and is logged; the rest
//! is named and waits for a restart; a broken file changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::wire::blocking_get;
use crate::helpers::{Daemon, fixture};

const BASE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

/// Rewrites the daemon's config file with `text`.
fn rewrite(daemon: &Daemon, text: &str) {
    std::fs::write(daemon.dir.path().join("config.toml"), text).unwrap();
}

async fn post(daemon: &Daemon) -> u16 {
    daemon
        .post_webhook(fixture("webhooks/documented-example.json"))
        .await
}

/// A connection that sends garbage: hyper fails to parse it, which the daemon logs at debug.
/// Returns once the daemon has closed the connection.
fn send_garbage(daemon: &Daemon) {
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the daemon closes a connection it cannot parse");
}

/// Bound on waiting for the daemon here.
const LIMIT: Duration = Duration::from_secs(10);

/// Waits until every earlier connection has ended, by the daemon's own count: its task logs
/// how a connection ended before it leaves the count, so whatever those connections had to
/// log is logged by then. Returns the lines logged so far, up to a request made after that.
fn lines_after_earlier_connections_ended(daemon: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let metrics = blocking_get(daemon.addr, "/metrics", LIMIT);
        // The scrape's own connection is the one left.
        if metrics
            .lines()
            .any(|l| l == "orderwatch_connections_open 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never ended: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    blocking_get(daemon.addr, "/after-earlier-connections", LIMIT);
    daemon.lines_until("/after-earlier-connections")
}

#[test]
fn sighup_changes_the_log_level() {
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        &format!("{BASE}[log]\nlevel = \"info\"\n"),
    );
    send_garbage(&daemon);
    let before = lines_after_earlier_connections_ended(&daemon);
    assert!(
        before.iter().all(|l| !l.contains("connection ended")),
        "no debug lines at info: {before:?}"
    );

    rewrite(&daemon, &format!("{BASE}[log]\nlevel = \"debug\"\n"));
    daemon.signal("HUP");
    let reloaded = daemon.wait_for_log("configuration reloaded");
    assert!(reloaded.contains("log.level"), "{reloaded}");
    send_garbage(&daemon);
    daemon.wait_for_log("connection ended");
    daemon.stop();
}

#[tokio::test]
async fn sighup_changes_the_allowlist_and_names_what_needs_a_restart() {
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), BASE);
    assert_eq!(post(&daemon).await, 200);

    // Only a documentation address may post now; max_body_bytes needs a restart.
    rewrite(
        &daemon,
        &format!("{BASE}allow_ips = [\"192.0.2.1\"]\nmax_body_bytes = 1000\n"),
    );
    daemon.signal("HUP");
    let reloaded = daemon.wait_for_log("configuration reloaded");
    assert!(reloaded.contains("server.allow_ips"), "{reloaded}");
    let later = daemon.wait_for_log("need a restart");
    assert!(later.contains("server.max_body_bytes"), "{later}");
    assert_eq!(post(&daemon).await, 403, "the new allowlist is in force");

    // A broken file is reported and changes nothing.
    rewrite(&daemon, "[server\n");
    daemon.signal("HUP");
    daemon.wait_for_log("was not reloaded");
    assert_eq!(post(&daemon).await, 403, "the last good rules stay");

    // And back.
    rewrite(&daemon, BASE);
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded");
    assert_eq!(post(&daemon).await, 200);
    daemon.stop();
}

#[test]
fn sighup_changes_the_reconciler_schedule() {
    // Credentials for a loopback port nobody listens on: passes run (nothing is due), which is
    // all this test needs to see.
    let reconciler = |interval: &str| {
        format!(
            "{BASE}[musement]\nbase_url = \"http://127.0.0.1:9\"\napplication = \"test\"\n\
             client_id = \"id\"\nclient_secret = \"secret\"\n[reconciler]\ninterval = \"{interval}\"\n"
        )
    };
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), &reconciler("1h"));
    daemon.wait_for_log("reconciler pass");
    // "None for an hour" is an absence over time, so a span is inherent: at least 2 s by our
    // clock (load only makes it longer), twice the period the reload then sets. Every line up
    // to the reload's own is read, so a pass anywhere in the span counts.
    std::thread::sleep(Duration::from_secs(2));
    rewrite(&daemon, &reconciler("1s"));
    daemon.signal("HUP");
    let quiet = daemon.lines_until("schedule changed");
    assert!(
        quiet.iter().all(|l| !l.contains("reconciler pass")),
        "one pass at start, then none for an hour: {quiet:?}"
    );
    for _ in 0..2 {
        daemon.wait_for_log("reconciler pass");
    }
    daemon.stop();
}

const PROXIED: &str = "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n";
const AUTH: &str = "[server.auth]\nusername = \"musement\"\npassword = \"Swordfish\"\n";

#[tokio::test]
async fn a_reload_that_would_open_a_proxied_endpoint_is_refused() {
    // Behind a proxy the daemon refuses to start without auth or an allowlist; a file that
    // drops auth while keeping trusted_proxies is refused on reload the same way, and the
    // running rules stay. (A file valid on its own that is invalid combined with the settings
    // that wait for a restart is refused too: see the unit tests in src/reload.rs.)
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), &format!("{PROXIED}{AUTH}"));
    assert_eq!(post(&daemon).await, 401, "auth is on");
    rewrite(&daemon, PROXIED);
    daemon.signal("HUP");
    let refused = daemon.wait_for_log("was not reloaded");
    assert!(refused.contains("server"), "{refused}");
    assert_eq!(post(&daemon).await, 401, "auth is still on");
    daemon.stop();
}

#[tokio::test]
async fn a_reload_moves_the_metrics_rule_with_trusted_proxies() {
    let mut daemon = Daemon::start(tempfile::tempdir().unwrap(), BASE);
    assert_eq!(
        daemon.status_of("/metrics").await,
        200,
        "direct loopback client"
    );
    // Behind a proxy, loopback may be anyone relayed: /metrics is no longer served here.
    rewrite(&daemon, &format!("{PROXIED}{AUTH}"));
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded");
    assert_eq!(daemon.status_of("/metrics").await, 404);
    rewrite(&daemon, BASE);
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded");
    assert_eq!(daemon.status_of("/metrics").await, 200);
    daemon.stop();
}

/// `[[api.tokens]]` rotate on SIGHUP: a second token added works beside the first, the first
/// removed stops working, and a token file rewritten in place takes effect; the reload line
/// names `api.tokens` and no token.
#[tokio::test]
async fn sighup_rotates_the_api_tokens() {
    const OLD: &str = "tok-old-5e1d9c";
    const NEW: &str = "tok-new-a07b3f";
    const NEWER: &str = "tok-newer-c4d2e8";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.token"), OLD).unwrap();
    std::fs::write(dir.path().join("new.token"), NEW).unwrap();
    let token = |name: &str, file: &str| {
        format!("[[api.tokens]]\nname = \"{name}\"\ntoken_file = \"{file}\"\nscope = \"write\"\n")
    };
    let api = "[api]\nlisten = \"127.0.0.1:0\"\n";
    let mut daemon = Daemon::start(dir, &format!("{BASE}{api}{}", token("old", "old.token")));
    let address = daemon.startup_log.last().unwrap().to_string();
    let at = address
        .find("api=")
        .expect("the start-up line names the API")
        + 4;
    let api_addr: String = address[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    let client = crate::helpers::http_client();
    let status = async |token: &str| {
        client
            .get(format!("http://{api_addr}/v1/stats"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((status(OLD).await, status(NEW).await), (200, 401));

    rewrite(
        &daemon,
        &format!(
            "{BASE}{api}{}{}",
            token("old", "old.token"),
            token("new", "new.token")
        ),
    );
    // Every line read, for the check that no token is among them.
    let mut seen = Vec::new();
    daemon.signal("HUP");
    seen.extend(daemon.lines_until("configuration reloaded"));
    let reloaded = seen.last().unwrap().clone();
    assert!(reloaded.contains("api.tokens"), "{reloaded}");
    assert_eq!((status(OLD).await, status(NEW).await), (200, 200));

    rewrite(
        &daemon,
        &format!("{BASE}{api}{}", token("new", "new.token")),
    );
    daemon.signal("HUP");
    seen.extend(daemon.lines_until("configuration reloaded"));
    assert_eq!((status(OLD).await, status(NEW).await), (401, 200));

    std::fs::write(daemon.dir.path().join("new.token"), NEWER).unwrap();
    daemon.signal("HUP");
    seen.extend(daemon.lines_until("configuration reloaded"));
    let reloaded = seen.last().unwrap().clone();
    assert!(reloaded.contains("api.tokens"), "{reloaded}");
    assert_eq!((status(NEW).await, status(NEWER).await), (401, 200));
    seen.extend(daemon.stop());
    for line in &seen {
        for secret in [OLD, NEW, NEWER] {
            assert!(!line.contains(secret), "a token in the log: {line}");
        }
    }
}
