//! The real `orderwatch` binary: configuration errors, masked secrets, and a daemon that
//! stores a webhook and stops cleanly on SIGTERM.

use std::process::Command;

use crate::helpers::db::value;
use crate::helpers::{
    Daemon, assert_one_line_error, config_file, fixture, http_client, json_post,
    orderwatch as command,
};

const SECRET: &str = "Sw0rdfish-not-for-logs";

/// The binary with `CLI_TEST_PASSWORD` set to [`SECRET`].
fn orderwatch(args: &[&str]) -> (i32, String, String) {
    orderwatch_with_env(args, &[("CLI_TEST_PASSWORD", SECRET)])
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
        "[server.auth]\nusername = \"u\"\npassword_env = \"CLI_TEST_PASSWORD\"\n",
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
        let output = command()
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

/// Issue 19: a new user's independent mistakes come out together, one line each naming its
/// key (rules that span keys first, then the secrets), not one per attempt; no secret is
/// printed, and a variable that sets nothing (perhaps the intended fix) is said with them.
#[test]
fn every_independent_config_problem_is_reported_at_once_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[server.auth]\nusername = \"musement\"\n\
             password = \"{SECRET}\"\nprevious_password_file = \"old-password\"\n\
             [musement]\nbase_url = \"http://127.0.0.1:9/api/v3\"\nclient_id = \"acme-id\"\n\
             client_secret_env = \"CLI_UNSET_CLIENT_SECRET\"\n[reconciler]\ninterval = \"0s\"\n"
        ),
    );
    let path = path.to_str().unwrap();
    for command in ["check-config", "run"] {
        let (code, stdout, stderr) = orderwatch_with_env(
            &[command, "--config", path],
            &[("ORDERWATCH_MUSEMENT_APPLICATION", "acme")],
        );
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(stdout.is_empty(), "{command}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        let missing = dir.path().join("old-password");
        let expected = [
            "warning: ORDERWATCH_MUSEMENT_APPLICATION is set but matches no".to_owned(),
            format!("{path}: musement.application: is required with API credentials"),
            format!("{path}: reconciler.interval: must be at least 1s"),
            format!(
                "{path}: server.auth.previous_password_file: cannot read {}",
                missing.display()
            ),
            format!(
                "{path}: musement.client_secret_env: environment variable \
                 CLI_UNSET_CLIENT_SECRET is not set"
            ),
        ];
        assert_eq!(lines.len(), expected.len(), "{command}: {stderr}");
        for (line, expected) in lines.iter().zip(&expected) {
            assert!(
                line.starts_with(&format!("orderwatch: {expected}")),
                "{command}: {expected:?} in {stderr}"
            );
        }
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
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
                  password_env = \"CLI_TEST_PASSWORD\"\n[log]\nformat = \"json\"\n";
    let mut daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        config,
        &[("CLI_TEST_PASSWORD", SECRET)],
    );
    let addr = daemon.addr;
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
    let status: String = value(&daemon.db(), "SELECT status FROM order_items", []);
    assert_eq!(
        status, "OK",
        "the database sits next to the config and holds the item"
    );
}

fn orderwatch_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = command()
        .args(args)
        .envs(env.iter().copied())
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
    let response = json_post(&client, daemon.url("/from-env"))
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

/// `(exit code, stdout, stderr)` of `command`.
fn outcome(command: &mut Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_goes_before_or_after_the_command_and_a_missing_one_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("elsewhere.toml");
    std::fs::write(&config, "[server]\npath = \"/hook\"\n").unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["--config", config, "check-config"],
        vec!["check-config", "--config", config],
        vec!["-c", config, "check-config"],
        vec!["check-config", "-c", config],
    ] {
        let (code, stdout, stderr) = outcome(command().args(&args));
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(
            stdout.contains("path = \"/hook\"  # file"),
            "{args:?}: {stdout}"
        );
    }
    let (code, stdout, stderr) = outcome(
        command()
            .arg("check-config")
            .env("ORDERWATCH_CONFIG", config),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("path = \"/hook\""), "{stdout}");
    let (_, help, _) = outcome(command().arg("--help"));
    assert!(help.contains("[env: ORDERWATCH_CONFIG]"), "{help}");
    assert!(help.contains("before or after the command"), "{help}");

    // From a folder without config.toml: which file was looked for, and how to name another.
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = outcome(command().arg("items").current_dir(empty.path()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let looked_for = empty.path().canonicalize().unwrap().join("config.toml");
    for said in [
        format!("looked for {}", looked_for.display()),
        "pass --config FILE".into(),
        "ORDERWATCH_CONFIG=FILE".into(),
    ] {
        assert!(stderr.contains(&said), "{said} in {stderr}");
    }
    let (code, _, stderr) = outcome(
        command()
            .arg("stats")
            .current_dir(empty.path())
            .env("ORDERWATCH_CONFIG", "nope.toml"),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("(named by ORDERWATCH_CONFIG)"), "{stderr}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let (code, stdout, _) = outcome(command().arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!(
            "orderwatch {} (commit {})",
            orderwatch::build_info::VERSION,
            orderwatch::build_info::COMMIT
        )
    );
    // Which commit build.rs records is tested in metrics.rs, by running the compiled script.
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let dir = tempfile::tempdir().unwrap();
    let commands = [
        "run",
        "check-config",
        "watch",
        "reconcile",
        "items",
        "show",
        "stats",
        "rejected",
        "changes",
        "prune",
        "backup",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, stderr) = outcome(command().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {stderr}");
        for command in commands {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    // bash for real: load the script, complete `orderwatch rec` and `orderwatch reconcile --a`.
    let (_, script, _) = outcome(command().args(["completions", "bash"]));
    let path = dir.path().join("orderwatch.bash");
    std::fs::write(&path, script).unwrap();
    let complete = |words: &str| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _orderwatch orderwatch \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let (code, stdout, stderr) = outcome(Command::new("bash").args(["-c", &probe]));
        assert_eq!(code, 0, "{stderr}");
        stdout.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(complete("orderwatch rec"), ["reconcile"]);
    assert!(
        complete("orderwatch reconcile --a").contains(&"--all-due".to_owned()),
        "{:?}",
        complete("orderwatch reconcile --a")
    );

    // The man page, and one per command, read by groff (warnings are errors).
    let (code, page, stderr) = outcome(command().arg("man"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH orderwatch 1"),
        "{page}"
    );
    let pages = dir.path().join("man1");
    std::fs::create_dir(&pages).unwrap();
    let (code, _, stderr) = outcome(command().args(["man", "--dir", pages.to_str().unwrap()]));
    assert_eq!(code, 0, "{stderr}");
    let main_page = pages.join("orderwatch.1");
    assert_eq!(std::fs::read_to_string(&main_page).unwrap(), page);
    for command in commands {
        assert!(
            pages.join(format!("orderwatch-{command}.1")).exists(),
            "orderwatch-{command}.1"
        );
    }
    for (file, expected) in [
        ("orderwatch.1", "orderwatch-reconcile(1)"),
        ("orderwatch-reconcile.1", "--all-due"),
        ("orderwatch-stats.1", "orders_to_poll"),
    ] {
        // As `man` shows it: plain text, no overstriking; any groff warning fails.
        let rendered = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(pages.join(file))
            .output();
        let Ok(rendered) = rendered else {
            return crate::helpers::skip("man pages", "groff is not installed");
        };
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(
            rendered.status.success() && warnings.is_empty(),
            "{file}: {warnings}"
        );
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains(expected), "{expected} in {file}:\n{text}");
    }
    let (code, _, stderr) = outcome(command().args(["man", "--dir", "/no/such/folder"]));
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn an_orderwatch_variable_that_sets_nothing_is_a_warning_and_list_keys_take_commas() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[server.auth]\nusername = \"u\"\npassword_env = \"ORDERWATCH_WEBHOOK_PASSWORD\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) = outcome(
        command()
            .args(["check-config", "--config", config])
            .env("ORDERWATCH_WEBHOOK_PASSWORD", SECRET)
            .env("ORDERWATCH_SERVER_LISTEN", "0.0.0.0:8080")
            .env("ORDERWATCH_SERVER__ALLOW_IPS", "192.0.2.0/24, 198.51.100.7"),
    );
    assert_eq!(code, 0, "a warning, not an error: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "orderwatch: warning: ORDERWATCH_SERVER_LISTEN is set but matches no configuration key \
         and no *_env key names it, so it changes nothing; an override is \
         ORDERWATCH_<SECTION>__<KEY>, with two underscores between levels \
         (ORDERWATCH_SERVER__LISTEN?)",
        "only the variable that sets nothing: not the one password_env names"
    );
    assert!(
        stdout.contains("listen = \"127.0.0.1:8080\"  # default"),
        "{stdout}"
    );
    let allowed = &stdout[stdout.find("allow_ips = [").unwrap()..];
    let allowed = &allowed[..allowed.find(']').unwrap()];
    assert!(
        allowed.contains("\"192.0.2.0/24\"") && allowed.contains("\"198.51.100.7/32\""),
        "{allowed}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // The daemon logs it, as a warning line of its log.
    let daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
        &[("ORDERWATCH_STORE_MAX_BATCH", "1")],
    );
    let warned: Vec<&serde_json::Value> = daemon
        .startup_log
        .iter()
        .filter(|line| line.to_string().contains("ORDERWATCH_STORE_MAX_BATCH"))
        .collect();
    assert_eq!(warned.len(), 1, "{:#?}", daemon.startup_log);
    assert_eq!(warned[0]["level"], "WARN", "{}", warned[0]);
    assert!(
        warned[0]
            .to_string()
            .contains("ORDERWATCH_STORE__MAX_BATCH?"),
        "{}",
        warned[0]
    );
}

#[test]
fn check_config_offline_validates_without_reading_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Secrets named, none there: a partner's config repository in CI.
    let good = write(
        "good.toml",
        "[server]\nlisten = \"0.0.0.0:8080\"\n[server.auth]\nusername = \"musement\"\n\
         password_env = \"CLI_UNSET_PASSWORD\"\nprevious_password_file = \"old-password\"\n\
         [musement]\napplication = \"acme\"\nclient_id_env = \"CLI_UNSET_ID\"\n\
         client_secret_file = \"client-secret\"\n",
    );
    let (code, _, stderr) = orderwatch_with_env(&["check-config", "--config", &good], &[]);
    assert_eq!(code, 2, "online, the secrets are read: {stderr}");
    let (code, stdout, stderr) =
        orderwatch_with_env(&["check-config", "--offline", "--config", &good], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "# {good}: valid; effective configuration, secrets named but not read (--offline)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("password_env = \"CLI_UNSET_PASSWORD\""),
        "{stdout}"
    );

    // What it still checks: how each secret is given, and every other rule.
    for (name, text, expected) in [
        (
            "two-sources.toml",
            "[server.auth]\nusername = \"u\"\npassword = \"p\"\npassword_env = \"X\"\n",
            "server.auth.password: set exactly one of",
        ),
        (
            "no-password.toml",
            "[server.auth]\nusername = \"u\"\n",
            "server.auth.password: set exactly one of",
        ),
        (
            "two-previous.toml",
            "[server.auth]\nusername = \"u\"\npassword_env = \"X\"\n\
             previous_password_env = \"Y\"\nprevious_password_file = \"z\"\n",
            "server.auth.previous_password: set exactly one of",
        ),
        (
            "half-credentials.toml",
            "[musement]\napplication = \"acme\"\nclient_id_env = \"X\"\n",
            "musement.client_secret: set exactly one of",
        ),
        (
            "no-application.toml",
            "[musement]\nclient_id_env = \"X\"\nclient_secret_env = \"Y\"\n",
            "musement.application: is required",
        ),
        (
            "exposed.toml",
            "[server]\nlisten = \"0.0.0.0:8080\"\n",
            "server: listening beyond loopback",
        ),
    ] {
        let path = write(name, text);
        let (code, stdout, stderr) =
            orderwatch_with_env(&["check-config", "--offline", "--config", &path], &[]);
        assert_eq!(code, 2, "{name}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{name}: {expected} in {stderr}");
    }
}

#[test]
fn a_bad_cron_schedule_names_the_expression_and_the_expected_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    for (cron, why) in [
        // The classic: a five-field Unix crontab line, minutes first.
        ("*/5 * * * *", "it has 5 field(s)"),
        ("0 61 * * * *", "out of bounds"),
    ] {
        std::fs::write(&path, format!("[reconciler]\ncron = \"{cron}\"\n")).unwrap();
        for command in ["check-config", "run"] {
            let (code, _, stderr) =
                orderwatch_with_env(&[command, "--config", path.to_str().unwrap()], &[]);
            assert_eq!(code, 2, "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            for said in [
                format!("reconciler.cron: \"{cron}\" is not a cron schedule"),
                "expected 6 or 7 fields, seconds first: second minute hour day-of-month month \
                 day-of-week [year], e.g. \"0 */5 * * * *\""
                    .into(),
                why.into(),
            ] {
                assert!(stderr.contains(&said), "{said} in {stderr}");
            }
            assert!(!stderr.contains("ParseSchedule"), "{stderr}");
        }
    }
}

/// Rotating the webhook password: the new one and the previous one are both accepted until
/// the previous one is removed (a reload), so Musement's retries with the old password still
/// land while it switches.
#[tokio::test]
async fn the_previous_webhook_password_works_until_it_is_removed() {
    const OLD: &str = "old-Sw0rdfish";
    const NEW: &str = "new-Marl1n";
    let rotating = "[server]\nlisten = \"127.0.0.1:0\"\n[server.auth]\nusername = \"musement\"\n\
                    password_env = \"CLI_NEW_PASSWORD\"\n\
                    previous_password_env = \"CLI_OLD_PASSWORD\"\n[log]\nformat = \"json\"\n";
    let daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        rotating,
        &[("CLI_NEW_PASSWORD", NEW), ("CLI_OLD_PASSWORD", OLD)],
    );
    let post = |password: &'static str, n: u64| {
        daemon
            .webhook_request()
            .basic_auth("musement", Some(password))
            .body(crate::helpers::valid_webhook(n))
            .send()
    };
    assert_eq!(post(NEW, 1).await.unwrap().status(), 200);
    assert_eq!(post(OLD, 2).await.unwrap().status(), 200);
    assert_eq!(post(OLD, 3).await.unwrap().status(), 200);
    assert_eq!(post("guess", 4).await.unwrap().status(), 401);
    let noted = daemon.wait_for_log("previous_password");
    assert!(noted.contains("INFO") && !noted.contains(OLD), "{noted}");

    // Rotation over: the previous password is removed, and a reload applies it.
    let config = daemon.dir.path().join("config.toml");
    std::fs::write(
        &config,
        rotating.replace("previous_password_env = \"CLI_OLD_PASSWORD\"\n", ""),
    )
    .unwrap();
    daemon.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 5;
    while post(OLD, n).await.unwrap().status() != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old password still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        n += 1;
    }
    assert_eq!(post(NEW, n + 1).await.unwrap().status(), 200);
    let lines = daemon.drain_log();
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("previous_password") && l.contains("authenticated"))
            .count()
            == 0,
        "said once: {lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains(OLD) && !l.contains(NEW)));
}

/// The commands print their own output, not the daemon's INFO lines; an error is said once.
#[tokio::test]
async fn commands_print_no_daemon_info_lines_and_an_error_once() {
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n",
    );
    let dir = daemon.dir.path().to_owned();
    let config = dir.join("config.toml");
    let config = config.to_str().unwrap();
    assert_eq!(
        daemon.post_webhook(crate::helpers::valid_webhook(1)).await,
        200
    );
    for args in [
        vec!["watch", "8e9e5c6e-ea7d-4934-8753-f00954f30d00"],
        vec!["prune", "--events-older-than", "1d"],
    ] {
        let mut all = args.clone();
        all.extend(["--config", config]);
        let (code, stdout, stderr) = orderwatch_with_env(&all, &[]);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!stdout.is_empty());
        assert!(stderr.is_empty(), "{args:?} printed log lines: {stderr}");
    }
    // A second daemon on the same address: one line says so, once.
    let taken = dir.join("taken.toml");
    std::fs::write(
        &taken,
        format!(
            "[server]\nlisten = \"{}\"\n[database]\npath = \"other.db\"\n[reconciler]\nenabled = false\n",
            daemon.addr
        ),
    )
    .unwrap();
    let (code, _, stderr) = orderwatch_with_env(&["run", "--config", taken.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "said once: {stderr}"
    );
    daemon.stop();
}
