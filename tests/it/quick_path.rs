//! The README's quick path with the simulator, followed as a new user would: its `sim.toml`
//! and its commands, run as written (only the ports, the binaries' folder and the size of the
//! simulation changed), until `musement-sim compare` says the table equals the truth.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::process::assert_succeeded;
use crate::helpers::{binary, free_port, orderwatch, read_repo_file};

/// How long the small simulation may take to converge.
const CONVERGE_LIMIT: Duration = Duration::from_secs(90);

/// The code blocks of the README's "By hand" simulator section, by language.
fn by_hand_blocks() -> (String, Vec<String>) {
    let readme = read_repo_file("README.md");
    let start = readme
        .find("**By hand.**")
        .expect("the README's simulator section");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let (mut toml, mut shell) = (Vec::new(), Vec::new());
    let mut rest = section;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let (language, body) = after.split_once('\n').unwrap();
        let end = body.find("```").expect("a closed code block");
        match language.trim() {
            "toml" => toml.push(body[..end].to_owned()),
            "sh" => shell.push(body[..end].to_owned()),
            other => panic!("unexpected code block {other:?}"),
        }
        rest = &body[end + 3..];
    }
    assert_eq!(toml.len(), 1, "one sim.toml");
    (toml.remove(0), shell)
}

/// A duration key of `[reconciler]` in the README's sim.toml.
fn reconciler_duration(config: &toml::Table, key: &str) -> Duration {
    let text = config["reconciler"][key]
        .as_str()
        .unwrap_or_else(|| panic!("sim.toml sets [reconciler] {key}"));
    humantime::parse_duration(text).unwrap()
}

#[test]
fn the_readme_simulator_config_names_every_key_it_needs_with_simulator_timings() {
    let (text, _) = by_hand_blocks();
    let config: toml::Table = toml::from_str(&text).unwrap();
    for key in ["base_url", "application", "client_id", "client_secret_env"] {
        assert!(config["musement"].get(key).is_some(), "[musement] {key}");
    }
    assert!(config["server"]["auth"].get("password_env").is_some());
    assert!(reconciler_duration(&config, "interval") <= Duration::from_secs(5));
    assert!(reconciler_duration(&config, "quiet_period") <= Duration::from_secs(5));
    assert!(reconciler_duration(&config, "recheck_interval") <= Duration::from_secs(60));
    assert!(reconciler_duration(&config, "backoff_cap") <= Duration::from_secs(10));
    // Valid as written, before any secret exists, and with the secrets the README exports.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();
    let offline = orderwatch()
        .args(["check-config", "--offline", "--config", path])
        .output()
        .unwrap();
    assert_succeeded("check-config --offline", &offline);
    let online = orderwatch()
        .args(["check-config", "--config", path])
        .env("SIM_WEBHOOK_PASSWORD", "pw")
        .env("SIM_CLIENT_SECRET", "secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&online.stderr);
    assert!(online.status.success() && stderr.is_empty(), "{stderr}");
}

/// The README's commands, in its order, on a simulation of 8 orders: the table converges.
#[test]
fn the_readme_simulator_commands_converge_as_written() {
    let (text, shell) = by_hand_blocks();
    assert_eq!(shell.len(), 3, "build, run, compare: {shell:#?}");
    let bin = Path::new(binary())
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (daemon_port, sim_port) = (free_port(), free_port());
    let local = |text: &str| {
        text.replace("target/release", &bin)
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{daemon_port}"))
            .replace("127.0.0.1:9000", &format!("127.0.0.1:{sim_port}"))
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sim.toml"), local(&text)).unwrap();
    let run = local(&shell[1]).replace("--orders 200 --items 500", "--orders 8 --items 20");
    assert!(run.contains("--orders 8 --items 20"), "{run}");
    let mut session = Command::new("bash");
    session
        .args(["-c", &format!("set -e\n{run}")])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("ORDERWATCH_") {
            session.env_remove(var);
        }
    }
    // Its own process group, so the daemon it starts in the background goes too.
    std::os::unix::process::CommandExt::process_group(&mut session, 0);
    let mut session = session.spawn().unwrap();
    let group = Group(session.id());

    let compare = local(&shell[2]);
    let (compare, stats) = compare
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .fold((None, None), |(c, s), line| {
            if line.contains("compare") {
                (Some(line.to_owned()), s)
            } else {
                (c, Some(line.to_owned()))
            }
        });
    let (compare, stats) = (compare.unwrap(), stats.unwrap());
    let deadline = Instant::now() + CONVERGE_LIMIT;
    let summary = loop {
        let output = Command::new("bash")
            .args(["-c", &compare])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let summary = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            break summary;
        }
        if let Some(status) = session.try_wait().unwrap() {
            let output = session.wait_with_output().unwrap();
            panic!(
                "the README's commands ended ({status}): {}{}\nlogs: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                logs(dir.path())
            );
        }
        assert!(
            Instant::now() < deadline,
            "not converged within {CONVERGE_LIMIT:?}: {summary}\nlogs: {}",
            logs(dir.path())
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(summary.contains("matching 20/20"), "{summary}");
    let shown = Command::new("bash")
        .args(["-c", &stats])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("on, every 2s"), "{shown}");
    drop(group);
    let _ = session.wait();
}

/// The daemon's and the simulator's logs, for a failure message.
fn logs(dir: &Path) -> String {
    ["orderwatch.log", "musement-sim.log"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            format!(
                "\n--- {name} (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect()
}

/// A process group, sent SIGTERM when dropped (the daemon, the simulator, `watch`).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .status();
    }
}
