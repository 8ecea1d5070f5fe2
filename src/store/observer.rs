//! What the store reports to whoever counts it (the app's metrics) without knowing who that
//! is: the store never imports the metrics; the app hands it an observer.

use std::time::Duration;

/// How one group-commit batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Jobs in the batch.
    pub jobs: usize,
    /// Time to run and commit it.
    pub elapsed: Duration,
    /// Whether its transaction committed (if not, every job was answered with an error).
    pub committed: bool,
    /// Observations in it whose outcome was `conflict`.
    pub conflicts: usize,
}

/// Told of the store's work as it happens; implementations must be cheap (the writer and the
/// checkpointer call them on their own threads).
pub trait StoreObserver: Send + Sync {
    /// The writer finished a batch.
    fn batch(&self, stats: BatchStats);
    /// The checkpointer ran a checkpoint: `mode` is `passive`, `restart` or `truncate`,
    /// `result` `ok`, `busy` or `error`.
    fn checkpoint(&self, mode: &'static str, result: &'static str);
    /// The WAL's size now.
    fn wal_bytes(&self, bytes: u64);
}

/// Counts nothing: for commands that serve no metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl StoreObserver for Unobserved {
    fn batch(&self, _: BatchStats) {}
    fn checkpoint(&self, _: &'static str, _: &'static str) {}
    fn wal_bytes(&self, _: u64) {}
}
