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
        let calls = self.dir.path().join("calls");
        let _ = std::fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(self.repo().join("scripts").join(name));
        command
            .arg("--quick")
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
const SCRIPTS: [(&str, Option<&str>); 4] = [
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
