//! The whole integration suite once more, on PostgreSQL: `cargo test` runs this test binary
//! again with `ORDERWATCH_TEST_BACKEND=postgres` (see `helpers/backend.rs`), so the README's one
//! test command checks both engines. The tests about SQLite itself say `NOT ON POSTGRESQL` and
//! return there; the inner run's own PostgreSQL tests (`postgres_*`) run in the outer one.

use std::process::Command;

use crate::helpers::backend::{self, TEST_BACKEND};
use crate::helpers::pg;

#[test]
fn the_whole_suite_passes_on_postgresql() {
    if backend::postgres() {
        return; // this is the inner run
    }
    // A server is there (or the skip is said, and fails under ORDERWATCH_TEST_PG_REQUIRED).
    let Some(probe) = pg::database("the whole suite") else {
        return;
    };
    drop(probe);
    let this_binary = std::env::current_exe().unwrap();
    let output = Command::new(&this_binary)
        .env(TEST_BACKEND, "postgres")
        .args([
            "--skip",
            "on_postgres::",
            "--skip",
            "postgres_",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout
        .lines()
        .filter(|line| line.starts_with("test result:"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("the suite on PostgreSQL: {summary}");
    let exempt: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("NOT ON POSTGRESQL"))
        .collect();
    eprintln!(
        "{} tests about SQLite itself:\n{}",
        exempt.len(),
        exempt.join("\n")
    );
    assert!(
        output.status.success(),
        "the suite failed on PostgreSQL ({summary}); the panics first:\n{}\n\nall it printed:\n{stdout}\n{stderr}",
        panics(&stderr)
    );
}

/// Each panic of the inner run with the lines after it (its message), so a failure reads first
/// even where only the start and end of a long output are shown.
fn panics(stderr: &str) -> String {
    const LINES_AFTER: usize = 60;
    let lines: Vec<&str> = stderr.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.contains("panicked at"))
        .map(|(at, _)| lines[at..lines.len().min(at + LINES_AFTER)].join("\n"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}
