//! The one way the rest of the program reads the database: a fresh read-only connection per
//! read, run off the async threads, with a deadline past which SQLite is interrupted (so a
//! stuck read cannot pile up blocking threads). The reconciler, `/metrics` and the CLI use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreError, open_read_only};

/// Opens read-only connections to one database file.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The SQLite file.
    path: PathBuf,
    /// How long a read waits for a lock held by a writer.
    busy_timeout: Duration,
}

/// Why a read gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl Reader {
    /// Reads `path`, waiting up to `busy_timeout` for locks.
    pub fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            busy_timeout,
        }
    }

    /// A read-only connection for a caller that is not async (the CLI commands). Refuses a
    /// missing file, an empty one and a newer schema; never creates anything.
    pub fn open(&self) -> Result<Connection, StoreError> {
        open_read_only(&self.path, self.busy_timeout)
    }

    /// Runs `query` on a fresh read-only connection on a blocking thread and waits at most
    /// `deadline` for it; past that the query is interrupted.
    pub async fn read<T, F>(&self, deadline: Duration, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.clone();
        let (interrupt, interrupter) = std::sync::mpsc::channel();
        let read = tokio::task::spawn_blocking(move || {
            let conn = reader
                .open()
                .map_err(|e| ReadError::Failed(e.to_string()))?;
            let _ = interrupt.send(conn.get_interrupt_handle());
            query(&conn).map_err(|e| ReadError::Failed(e.to_string()))
        });
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ReadError::Failed(format!("read task failed: {join}"))),
            Err(_) => {
                if let Ok(handle) = interrupter.try_recv() {
                    handle.interrupt();
                }
                Err(ReadError::TimedOut(deadline))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_off_the_async_threads_and_interrupts_past_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(super::super::open_for_writing(&path, Duration::from_secs(1)).unwrap());
        let reader = Reader::new(&path, Duration::from_secs(1));
        let version: i64 = reader
            .read(Duration::from_secs(5), |c| {
                c.query_row("PRAGMA user_version", [], |r| r.get(0))
            })
            .await
            .unwrap();
        assert_eq!(version, super::super::SCHEMA_VERSION);
        let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
        let error = reader
            .read(Duration::from_millis(100), move |c| {
                c.query_row(endless, [], |r| r.get::<_, i64>(0))
            })
            .await
            .unwrap_err();
        assert_eq!(error, ReadError::TimedOut(Duration::from_millis(100)));
        let missing = Reader::new(&dir.path().join("absent.db"), Duration::from_secs(1));
        let error = missing
            .read(Duration::from_secs(5), |_| Ok(()))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
