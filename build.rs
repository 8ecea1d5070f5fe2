//! Sets `ORDERWATCH_COMMIT` for the crate (`orderwatch::BUILD_COMMIT`, `--version`, the build
//! info metric): the commit `git` reports for this checkout; else the `ORDERWATCH_COMMIT`
//! variable given to the build (a Docker build context has no `.git`: `docker build
//! --build-arg ORDERWATCH_COMMIT=$(git rev-parse --short=12 HEAD)`); else `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable the crate reads, and the one a build may pass in.
const COMMIT_VAR: &str = "ORDERWATCH_COMMIT";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={COMMIT_VAR}");
    let commit = choose(from_git(), std::env::var(COMMIT_VAR).ok().as_deref());
    println!("cargo::rustc-env={COMMIT_VAR}={commit}");
}

/// The commit to report: git's, else the build argument if it looks like a commit name (no
/// spaces or shell characters), else `unknown`. (tests/it/cli.rs checks this choice.)
pub(crate) fn choose(from_git: Option<String>, build_argument: Option<&str>) -> String {
    from_git
        .or_else(|| build_argument.and_then(plausible))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The checkout's commit, and the files that change when it does (so cargo runs this again
/// after a commit or a checkout, and not after every edit).
fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // HEAD lives in the worktree's git dir; the branch it names, in the common one (loose,
    // or in packed-refs).
    let git_dir = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from)?;
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(|dir| absolute(Path::new(&dir)))
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(branch));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    Some(commit)
}

/// `value` trimmed, if it is a plausible commit name.
fn plausible(value: &str) -> Option<String> {
    let value = value.trim();
    let plausible = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    plausible.then(|| value.to_owned())
}

/// `git ARGS` in the package's folder: its trimmed output, or `None` if git is missing, this
/// is not a checkout, or it failed.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8(output.stdout).ok()?.trim().to_owned())
}

/// `path` against the package's folder (git prints the common dir relative to it).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(path)
}
