//! What the store's unit tests share: a fresh database in a temp dir, and a row count.

use std::time::Duration;

use rusqlite::Connection;
use tempfile::TempDir;

/// A new database, migrated to [`super::SCHEMA_VERSION`], in a temp dir that lives as long as
/// the returned `TempDir`.
pub(crate) fn new_database() -> (TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = super::open_for_writing(&dir.path().join("t.db"), Duration::from_secs(1)).unwrap();
    (dir, conn)
}

/// The rows in `table`.
pub(crate) fn count(conn: &Connection, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    conn.query_row(&sql, [], |r| r.get(0)).unwrap()
}
