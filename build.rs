//! Records which commit the binary is built from, as the compile-time variable
//! `ORDERWATCH_COMMIT` (read by `src/build_info.rs`): `git` when the package is a git checkout,
//! else the `ORDERWATCH_COMMIT` environment variable (a Docker build argument: the image's build
//! context has no `.git`), else `unknown`.

use std::path::Path;
use std::process::Command;

/// The variable a build without `.git` takes the commit from, and the one the crate reads.
const COMMIT_VAR: &str = "ORDERWATCH_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={COMMIT_VAR}");
    let commit = git_commit()
        .or_else(|| std::env::var(COMMIT_VAR).ok().and_then(|c| plausible(&c)))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env={COMMIT_VAR}={commit}");
}

/// The short hash of `HEAD`, when the package folder is the top of a git work tree (not a
/// folder inside some other repository), and re-runs this script when `HEAD` moves.
fn git_commit() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    let same_folder = match (
        Path::new(&top).canonicalize(),
        Path::new(&manifest_dir).canonicalize(),
    ) {
        (Ok(top), Ok(manifest)) => top == manifest,
        _ => false,
    };
    if !same_folder {
        return None;
    }
    watch_head(&manifest_dir);
    plausible(&git(&manifest_dir, &["rev-parse", "--short=12", "HEAD"])?)
}

/// Asks cargo to run this script again when a commit or checkout moves `HEAD`: the `HEAD` file,
/// the branch it points to (its folder, for a branch only in `packed-refs` so far) and
/// `packed-refs`. Only paths that exist are named: a missing one would re-run it on every build.
fn watch_head(dir: &str) {
    let git_path =
        |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| Path::new(dir).join(p));
    let mut watched = Vec::new();
    watched.extend(git_path("HEAD"));
    watched.extend(git_path("packed-refs"));
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(reference) = git_path(&branch)
    {
        match reference.parent() {
            Some(folder) if !reference.exists() => watched.push(folder.to_owned()),
            _ => watched.push(reference),
        }
    }
    for path in watched.into_iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The trimmed output of `git ARGS` run in `dir`, `None` if git is missing or fails.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `commit` if it looks like a commit name (hex digits, or a short tag-like word: letters,
/// digits, `.`, `-`, `_`, at most 64), else `None`: it ends up in a metric label and in
/// `--version`.
fn plausible(commit: &str) -> Option<String> {
    let commit = commit.trim();
    let ok = !commit.is_empty()
        && commit.len() <= 64
        && commit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    ok.then(|| commit.to_owned())
}
