//! The real `orderwatch` binary: configuration errors, masked secrets, and a daemon that
//! stores a webhook and stops cleanly on SIGTERM.

use std::process::Command;

use crate::helpers::db::value;
use crate::helpers::{Daemon, assert_one_line_error, binary, config_file, fixture, http_client};

const SECRET: &str = "Sw0rdfish-not-for-logs";

/// The binary with `ORDERWATCH_TEST_PASSWORD` set to [`SECRET`].
fn orderwatch(args: &[&str]) -> (i32, String, String) {
    orderwatch_with_env(args, &[("ORDERWATCH_TEST_PASSWORD", SECRET)])
}

#[test]
fn the_shipped_config_is_valid_and_listens_on_loopback() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let (code, stdout, stderr) = orderwatch(&["check-config", "--config", shipped]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("listen = \"127.0.0.1:8080\""), "{stdout}");
    assert!(stdout.contains("path = \"/webhooks/musement\""), "{stdout}");
    assert!(stdout.contains("orderwatch.db"), "{stdout}");
}

#[test]
fn secrets_never_reach_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let literal = dir.path().join("literal.toml");
    std::fs::write(
        &literal,
        format!("[server.auth]\nusername = \"u\"\npassword = \"{SECRET}\"\n"),
    )
    .unwrap();
    let from_env = dir.path().join("env.toml");
    std::fs::write(
        &from_env,
        "[server.auth]\nusername = \"u\"\npassword_env = \"ORDERWATCH_TEST_PASSWORD\"\n",
    )
    .unwrap();
    for config in [&literal, &from_env] {
        let (code, stdout, stderr) =
            orderwatch(&["check-config", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("username = \"u\""), "{stdout}");
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "{stdout}{stderr}"
        );
    }
    for help in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check-config", "--help"],
    ] {
        // Even a secret-looking value in the one variable --help names must stay hidden.
        let output = Command::new(binary())
            .args(&help)
            .env("ORDERWATCH_CONFIG", SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success());
        assert!(stdout.contains("Usage"), "{stdout}");
        assert!(!stdout.contains(SECRET), "{stdout}");
    }
}

#[test]
fn config_errors_exit_2_with_one_line_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n",
            "server.lisen: unknown field `lisen`",
        ),
        ("syntax.toml", "[server\n", "line 1"),
        (
            "address.toml",
            "[server]\nlisten = \"localhost\"\n",
            "server.listen: ",
        ),
        (
            "exposed.toml",
            "[server]\nlisten = \"0.0.0.0:8080\"\n",
            "server: listening beyond loopback",
        ),
        (
            "two-passwords.toml",
            "[server.auth]\nusername = \"u\"\npassword = \"a\"\npassword_file = \"pw\"\n",
            "server.auth.password: set exactly one of",
        ),
        (
            "missing-env.toml",
            "[server.auth]\nusername = \"u\"\npassword_env = \"ORDERWATCH_NOT_SET_ANYWHERE\"\n",
            "server.auth.password_env: environment variable ORDERWATCH_NOT_SET_ANYWHERE is not set",
        ),
        (
            "batch.toml",
            "[store]\nmax_batch = 0\n",
            "store.max_batch: must be at least 1",
        ),
    ];
    for (file, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        for command in ["check-config", "run"] {
            let output = orderwatch(&[command, "--config", path.to_str().unwrap()]);
            assert_one_line_error(&output, 2, &format!("{file} {command}"));
            let stderr = output.2;
            assert!(
                stderr.starts_with(&format!("orderwatch: {}: ", path.display())),
                "{stderr}"
            );
            assert!(
                stderr.contains(expected),
                "{file}: expected {expected:?} in {stderr}"
            );
        }
    }
    let missing = dir.path().join("absent.toml");
    let (code, _, stderr) = orderwatch(&["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("absent.toml: cannot read"), "{stderr}");
    let (code, _, _) = orderwatch(&["run", "--no-such-flag"]);
    assert_eq!(code, 2, "usage errors exit 2 too");
}

/// Issue 11 defect #4: userinfo in `[musement] base_url` must not pass the "plain http only on
/// loopback" check: the host that would get the client secret in clear is the one after `@`.
#[test]
fn a_plain_http_base_url_whose_userinfo_hides_the_real_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    for base_url in [
        "http://127.0.0.1:1@api.musement.com/api/v3",
        "http://[::1]@api.musement.com/api/v3",
        "http://localhost:8080@api.musement.com/api/v3",
        // A password in the URL is never echoed back.
        &format!("http://musement:{SECRET}@127.0.0.1:9/api/v3"),
    ] {
        std::fs::write(&path, format!("[musement]\nbase_url = \"{base_url}\"\n")).unwrap();
        for command in ["check-config", "run"] {
            let (code, stdout, stderr) = orderwatch(&[command, "--config", path.to_str().unwrap()]);
            assert_eq!(code, 2, "{base_url} {command}: {stdout}{stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains(": musement.base_url: "),
                "{base_url}: {stderr}"
            );
            assert!(!stderr.contains(SECRET), "{stderr}");
        }
    }
}

#[tokio::test]
async fn the_daemon_stores_a_webhook_and_exits_0_on_sigterm() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[server.auth]\nusername = \"JohnSmith\"\n\
                  password_env = \"ORDERWATCH_TEST_PASSWORD\"\n[log]\nformat = \"json\"\n";
    let mut daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        config,
        &[("ORDERWATCH_TEST_PASSWORD", SECRET)],
    );
    let addr = daemon.addr;
    let db_path = daemon.db_path();
    let client = http_client();
    let response = daemon
        .webhook_request()
        .basic_auth("JohnSmith", Some(SECRET))
        .body(fixture("webhooks/documented-example.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(format!("http://{addr}/webhooks/musement"))
        .basic_auth("JohnSmith", Some("wrong"))
        .body(fixture("webhooks/documented-example.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Sends SIGTERM and asserts a clean exit (code 0) within its time limit.
    let lines = daemon.stop();
    assert!(
        lines.iter().any(|l| l.contains("\"status\":200")),
        "one line per request: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(SECRET)),
        "the password is never logged"
    );
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let status: String = value(&db, "SELECT status FROM order_items", []);
    assert_eq!(
        status, "OK",
        "the database sits next to the config and holds the item"
    );
}

fn orderwatch_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ORDERWATCH_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn environment_overrides_win_and_check_config_says_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[server]\npath = \"/hook\"\nmax_connections = 10\n[server.auth]\nusername = \"u\"\n",
    );
    let (code, stdout, stderr) = orderwatch_with_env(
        &["check-config", "--config", config.to_str().unwrap()],
        &[
            ("ORDERWATCH_SERVER__MAX_CONNECTIONS", "64"),
            ("ORDERWATCH_SERVER__ALLOW_IPS", "[\"192.0.2.0/24\"]"),
            // Text keys stay text even when they look like numbers.
            ("ORDERWATCH_SERVER__AUTH__PASSWORD", "0123456789"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "max_connections = 64  # env ORDERWATCH_SERVER__MAX_CONNECTIONS",
        "path = \"/hook\"  # file",
        "max_body_bytes = 65536  # default",
        "username = \"u\"  # file",
        "password = \"********\"  # env ORDERWATCH_SERVER__AUTH__PASSWORD",
        "\"192.0.2.0/24\"",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("0123456789"), "{stdout}");
}

#[test]
fn a_bad_environment_override_is_named_in_one_line_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");
    let config = config.to_str().unwrap();
    for (var, value) in [
        ("ORDERWATCH_STORE__MAX_BATCH", "lots"),
        ("ORDERWATCH_SERVER__NO_SUCH_KEY", "1"),
        ("ORDERWATCH_SERVER____LISTEN", "127.0.0.1:1"),
    ] {
        let (code, _, stderr) =
            orderwatch_with_env(&["check-config", "--config", config], &[(var, value)]);
        assert_eq!(code, 2, "{var}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{var} not named: {stderr}");
    }
}

#[tokio::test]
async fn the_daemon_listens_where_the_environment_says() {
    // The file sets nothing; the address and the path come from the environment only.
    let mut daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        "",
        &[
            ("ORDERWATCH_SERVER__LISTEN", "127.0.0.1:0"),
            ("ORDERWATCH_SERVER__PATH", "/from-env"),
        ],
    );
    assert_ne!(daemon.addr.port(), 8080, "not the default address");
    let client = http_client();
    let example = fixture("webhooks/documented-example.json");
    let status = daemon.post_webhook(example.clone()).await;
    assert_eq!(status, 404, "the default path is not served");
    let response = client
        .post(format!("http://{}/from-env", daemon.addr))
        .header("content-type", "application/json")
        .body(example)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Applied, not a duplicate: the 404 stored nothing; and it is in the database.
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "applied", "{answer}");
    daemon.stop();
    let db = daemon.db();
    let stored: (String, i64) = db
        .query_row(
            "SELECT status, item_version FROM order_items WHERE item_uuid = ?1",
            ["11045e18-e3ca-42e1-acb4-0d5be75036fd"],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the documented example's item is stored");
    assert_eq!(stored, ("OK".to_owned(), 22));
    let events: i64 = value(&db, "SELECT count(*) FROM item_events", []);
    assert_eq!(events, 1, "stored once");
}

#[test]
fn database_commands_work_without_access_to_the_secrets() {
    // The config names secrets in variables this process does not have (an operator's shell).
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[server.auth]\nusername = \"u\"\npassword_env = \"ORDERWATCH_TEST_UNSET_PASSWORD\"\n\
         [musement]\napplication = \"acme\"\nclient_id_env = \"ORDERWATCH_TEST_UNSET_ID\"\n\
         client_secret_env = \"ORDERWATCH_TEST_UNSET_SECRET\"\n",
    );
    let config = config.to_str().unwrap();
    let order = "8e9e5c6e-ea7d-4934-8753-f00954f30d00";
    let (code, _, stderr) = orderwatch_with_env(&["watch", "--config", config, order], &[]);
    assert_eq!(code, 0, "watch needs only the database: {stderr}");
    for command in ["items", "stats", "rejected"] {
        let (code, _, stderr) =
            orderwatch_with_env(&[command, "--config", config, "--format", "json"], &[]);
        assert_eq!(code, 0, "{command} needs only the database: {stderr}");
    }
    // The daemon and check-config do need them, and say which one is missing.
    let (code, _, stderr) = orderwatch_with_env(&["check-config", "--config", config], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ORDERWATCH_TEST_UNSET_PASSWORD"),
        "{stderr}"
    );
}
