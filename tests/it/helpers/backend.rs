//! Which engine the suite runs the daemon on: SQLite, the default, or PostgreSQL with
//! `ORDERWATCH_TEST_BACKEND=postgres` (`.ci/run` runs the suite once per engine).
//!
//! On PostgreSQL every configuration a test writes through [`super::config_file`] (the
//! in-process app, the real daemon and the CLI all read it) gains `[database] url` naming a
//! database of the test folder's own on the throwaway cluster ([`super::pg`]), created on first
//! use and reused when the test starts again in the same folder (a restart on "the same
//! database"); SQLite's keys are dropped from it, as a partner's PostgreSQL config has none,
//! but `busy_timeout`, which becomes `lock_timeout` (the same promise: how long a write waits
//! for another process's lock before the webhook gets 503).
//! Tests about SQLite itself (its file, WAL, `backup`) call [`sqlite_only`] and do not run there.

use std::path::Path;

use super::pg;

/// Names the engine: `postgres` or `sqlite` (unset: `sqlite`).
pub const TEST_BACKEND: &str = "ORDERWATCH_TEST_BACKEND";

/// The file in a test folder holding its PostgreSQL database's URL.
const URL_FILE: &str = ".test-database-url";

/// Whether the suite runs on PostgreSQL.
pub fn postgres() -> bool {
    match std::env::var(TEST_BACKEND).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{TEST_BACKEND}={other}: expected postgres or sqlite"),
    }
}

/// `text` as the configuration for a test in `dir` on the engine under test.
pub fn configured(dir: &Path, text: &str) -> String {
    if !postgres() {
        return text.to_owned();
    }
    let mut table: toml::Table = toml::from_str(text)
        .unwrap_or_else(|e| panic!("a test's config does not parse: {e}\n{text}"));
    let database = table
        .entry("database")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[database] is a table");
    // How long a write waits for another process's lock: SQLite's busy_timeout is
    // PostgreSQL's lock_timeout.
    if let Some(wait) = database.remove("busy_timeout") {
        database.insert("lock_timeout".into(), wait);
    }
    for key in ["path", "max_size_bytes"] {
        database.remove(key);
    }
    database.insert("url".into(), toml::Value::String(database_url(dir)));
    toml::to_string(&table).expect("a TOML table renders")
}

/// The URL of `dir`'s own database, created the first time it is asked for.
pub fn database_url(dir: &Path) -> String {
    let file = dir.join(URL_FILE);
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let what = format!("the test in {}", dir.display());
    let database = pg::database(&what).unwrap_or_else(|| {
        panic!("{TEST_BACKEND}=postgres needs a PostgreSQL server (see helpers/pg.rs)")
    });
    let url = database.url.clone();
    // The database lives as long as the test run's cluster (on a shared server it stays).
    std::mem::forget(database);
    std::fs::write(&file, &url).unwrap();
    url
}

/// Makes the test folder `to` use `from`'s PostgreSQL database: several instances, one
/// database.
pub fn share_database(from: &Path, to: &Path) {
    std::fs::write(to.join(URL_FILE), database_url(from)).unwrap();
}

/// The database of the test folder `dir` as a command line names it: the default SQLite file
/// in it, or the folder's PostgreSQL URL.
pub fn database_argument(dir: &Path) -> String {
    if postgres() {
        database_url(dir)
    } else {
        dir.join("orderwatch.db").display().to_string()
    }
}

/// For a test of what only PostgreSQL does (several instances sharing work): says so and
/// returns true on SQLite, where the test then returns.
pub fn postgres_only(what: &str) -> bool {
    if !postgres() {
        eprintln!("NOT ON SQLITE: {what}");
        return true;
    }
    false
}

/// For a test about SQLite itself: on PostgreSQL it says so (one line, like a skip, but never
/// a failure: the engine has no such thing) and gives `true`, and the test returns.
pub fn sqlite_only(what: &str) -> bool {
    if postgres() {
        eprintln!("NOT ON POSTGRESQL: {what}");
        return true;
    }
    false
}
