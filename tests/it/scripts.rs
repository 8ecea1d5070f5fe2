//! The scripts in `scripts/` find the binaries where cargo builds them: under
//! `CARGO_TARGET_DIR`, under a `.cargo/config.toml`'s `build.target-dir`, or in `target/`.
//!
//! Each script runs for real, from a copy of `scripts/` in a scratch repository (a package
//! of its own, so `cargo metadata` answers for it), with a `cargo` first on `PATH` that passes
//! `cargo metadata` to the real cargo and records `cargo build` without building. The
//! "binaries" in the expected target folder only record how they were called and fail, so a
//! script stops at its first use of one; a script looking elsewhere finds nothing there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binaries the scripts run.
const BINARIES: [&str; 3] = ["orderwatch", "orderwatch-bench", "musement-sim"];

/// A scratch repository with a copy of `scripts/`, a fake `cargo` and fake binaries.
struct Scratch {
    /// Removed on drop.
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("scripts")).unwrap();
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
        for entry in std::fs::read_dir(&scripts).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), repo.join("scripts").join(entry.file_name())).unwrap();
        }
        std::fs::write(
            repo.join("Cargo.toml"),
            "[package]\nname = \"scripts-under-test\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             [lib]\npath = \"lib.rs\"\n",
        )
        .unwrap();
        std::fs::write(repo.join("lib.rs"), "").unwrap();
        let fake_cargo = format!(
            "#!/bin/sh\ncase \"$1\" in\n  metadata) exec '{}' \"$@\" ;;\n  build) echo \"cargo $*\" >>\"$CALLS\" ;;\n  *) echo \"fake cargo: $*\" >&2; exit 97 ;;\nesac\n",
            env!("CARGO")
        );
        write_executable(&dir.path().join("bin/cargo"), &fake_cargo);
        for sub in ["tmp", "cargo-home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Puts recording binaries into `target/debug`.
    fn fake_binaries_in(&self, target: &Path) {
        for binary in BINARIES {
            write_executable(
                &target.join("debug").join(binary),
                "#!/bin/sh\necho \"$0 $*\" >>\"$CALLS\"\nexit 3\n",
            );
        }
    }

    /// Runs `scripts/NAME --quick` with `target_dir_env` as `CARGO_TARGET_DIR` (unset when
    /// `None`); returns the recorded calls (one line each) and the script's output.
    fn run(&self, name: &str, target_dir_env: Option<&Path>) -> (Vec<String>, Output) {
        self.run_with(name, &["--quick"], target_dir_env)
    }

    /// [`Scratch::run`] with `args` instead of `--quick`.
    fn run_with(
        &self,
        name: &str,
        args: &[&str],
        target_dir_env: Option<&Path>,
    ) -> (Vec<String>, Output) {
        let calls = self.dir.path().join("calls");
        let _ = std::fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(self.repo().join("scripts").join(name));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("CALLS", &calls)
            .env("TMPDIR", self.dir.path().join("tmp"))
            // Away from the user's own cargo configuration (a global build.target-dir).
            .env("CARGO_HOME", self.dir.path().join("cargo-home"))
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("CARGO_TARGET_DIR")
            .env("DEMO_TIMEOUT", "5")
            .stdin(Stdio::null());
        if let Some(dir) = target_dir_env {
            command.env("CARGO_TARGET_DIR", dir);
        }
        let output = command.output().unwrap();
        let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
        (recorded.lines().map(str::to_owned).collect(), output)
    }
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The scripts and, for each, the path-valued argument of its first binary call that must lie
/// under the target folder too (its data), if any.
const SCRIPTS: [(&str, Option<&str>); 5] = [
    ("bench-forward", None),
    ("bench-ingest", None),
    ("bench-reconcile", Some("--data-dir")),
    ("bench-startup", Some("--db")),
    ("demo", None),
];

/// Runs every script and checks that it built, then ran a binary from `target`/debug, kept its
/// data under `target`, and never looked in the repository's own `target/` unless that is it.
fn assert_scripts_use(scratch: &Scratch, target: &Path, target_dir_env: Option<&Path>) {
    scratch.fake_binaries_in(target);
    let in_repo = scratch.repo().join("target");
    for (script, data_flag) in SCRIPTS {
        let (calls, output) = scratch.run(script, target_dir_env);
        let said = format!(
            "scripts/{script} with CARGO_TARGET_DIR={target_dir_env:?}, expecting {}:\ncalls: \
             {calls:#?}\nstderr: {}",
            target.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            calls.first().is_some_and(|c| c.starts_with("cargo build")),
            "{said}"
        );
        let ran = calls
            .get(1)
            .unwrap_or_else(|| panic!("no binary ran: {said}"));
        let expected = target.join("debug");
        assert!(
            ran.starts_with(&format!("{}/", expected.display())),
            "{said}"
        );
        if let Some(flag) = data_flag {
            let words: Vec<&str> = ran.split_whitespace().collect();
            let at = words.iter().position(|w| *w == flag);
            let value = at.and_then(|at| words.get(at + 1)).unwrap_or(&"");
            let value = scratch.repo().join(value);
            assert!(
                value.starts_with(target),
                "{flag} {}: {said}",
                value.display()
            );
        }
        if in_repo != target {
            assert!(
                !in_repo.exists(),
                "{} was created: {said}",
                in_repo.display()
            );
        }
    }
}

#[test]
fn scripts_run_the_binaries_from_cargo_target_dir() {
    let scratch = Scratch::new();
    let target = scratch.dir.path().join("elsewhere");
    assert_scripts_use(&scratch, &target, Some(&target));
}

#[test]
fn scripts_run_the_binaries_from_a_configured_build_target_dir() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.repo().join(".cargo")).unwrap();
    std::fs::write(
        scratch.repo().join(".cargo/config.toml"),
        "[build]\ntarget-dir = \"configured\"\n",
    )
    .unwrap();
    let target = scratch.repo().join("configured");
    assert_scripts_use(&scratch, &target, None);
}

#[test]
fn scripts_run_the_binaries_from_target_by_default() {
    let scratch = Scratch::new();
    let target = scratch.repo().join("target");
    assert_scripts_use(&scratch, &target, None);
}

/// Binaries that play the demo's parts just enough (a free port, a ready daemon, a simulator
/// whose table matches 3 of 5 items twice, then all 5 once settled), recording every call and
/// the config the daemon is given.
fn demo_binaries_in(folder: &Path) {
    let record = "echo \"$0 $*\" >>\"$CALLS\"\n";
    write_executable(
        &folder.join("orderwatch-bench"),
        &format!(
            "#!/bin/sh\n{record}case \"$1\" in\n  free-port) echo 47001 ;;\n  wait-ready) ;;\n  *) exit 3 ;;\nesac\n"
        ),
    );
    write_executable(
        &folder.join("orderwatch"),
        &format!(
            "#!/bin/sh\n{record}case \"$1\" in\n  run) cat \"$3\" >>\"$CALLS\"; exec sleep 30 ;;\n  \
             watch) exec cat >/dev/null ;;\n  *) exit 3 ;;\nesac\n"
        ),
    );
    write_executable(
        &folder.join("musement-sim"),
        &format!(
            "#!/bin/sh\n{record}if [ \"$1\" != compare ]; then echo \"musement-sim: settled: fake\" >&2; exec sleep 30; fi\n\
             n=$(($(cat \"$CALLS.compared\" 2>/dev/null || echo 0) + 1)); echo $n >\"$CALLS.compared\"\n\
             if [ $n -lt 3 ]; then echo \"orderwatch: 3 items (OK 3); Musement (running): 5 items (OK 5); matching 3/5\"; exit 1; fi\n\
             echo \"orderwatch: 5 items (OK 5); Musement (settled): 5 items (OK 5); matching 5/5\"\n"
        ),
    );
}

/// `scripts/demo` runs a release build that is already there instead of building debug (no
/// second full build after the README's quick start), puts orderwatch on `--port`, and prints
/// one progress line per change of the match count, not the state tables.
#[test]
fn the_demo_reuses_a_release_build_takes_a_port_and_prints_one_progress_line() {
    let scratch = Scratch::new();
    let target = scratch.repo().join("target");
    demo_binaries_in(&target.join("release"));
    scratch.fake_binaries_in(&target);
    let (calls, output) = scratch.run_with("demo", &["--port", "4242"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = format!(
        "calls: {calls:#?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert_eq!(calls[0], "cargo build --release --locked --bins", "{said}");
    let release = format!("{}/", target.join("release").display());
    let debug = format!("{}/", target.join("debug").display());
    assert!(
        calls[1..].iter().any(|c| c.starts_with(&release))
            && calls.iter().all(|c| !c.starts_with(&debug)),
        "only the release binaries ran: {said}"
    );
    assert!(
        calls.iter().any(|c| c == "listen = \"127.0.0.1:4242\""),
        "orderwatch listens on --port: {said}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.ends_with("free-port")).count(),
        1,
        "a port for the simulator only: {said}"
    );
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(progress.len(), 2, "one line per change: {said}");
    assert!(
        progress[0].ends_with("] matching 3/5 items (Musement: running)"),
        "{said}"
    );
    assert!(
        progress[1].ends_with("] matching 5/5 items (Musement: settled)"),
        "{said}"
    );
    assert!(!stdout.contains("METRIC"), "no state tables: {said}");

    // --debug picks the debug build even so; a bad --port is refused before anything runs.
    let (calls, _) = scratch.run_with("demo", &["--debug"], None);
    assert_eq!(
        calls.first().map(String::as_str),
        Some("cargo build --locked --bins")
    );
    let (calls, output) = scratch.run_with("demo", &["--port", "http"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(calls.is_empty(), "{calls:?}");
}
