//! The connection cap. A slot is never waited for: when every slot is taken, the connection that
//! has been idle longest (no request in progress: still sending its first headers, or kept alive
//! between requests) is closed to make room. So clients that hold connections open without using
//! them cannot keep Musement's next webhook waiting; only connections with a request in progress
//! are safe from eviction, and when all of them are busy the newcomer is closed instead.
//!
//! Closing an idle connection is always allowed by HTTP/1.1 and loses nothing: a request that
//! was being stored when its connection closed got no 200, so Musement retries it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;

/// The open connections, at most `capacity` of them.
pub struct ConnectionTable {
    /// Most connections served at once (`[server] max_connections`).
    capacity: usize,
    /// The origin of every `idle_since` timestamp.
    epoch: Instant,
    /// Open connections by id.
    open: Mutex<HashMap<u64, Entry>>,
    /// The next connection's id.
    next_id: AtomicU64,
    /// Idle connections closed to make room, for the log and the tests.
    evicted: AtomicU64,
    /// Newcomers closed because every slot had a request in progress.
    refused: AtomicU64,
}

struct Entry {
    activity: Arc<Activity>,
    /// The connection's task; aborting it closes its socket (set right after admission).
    task: Option<JoinHandle<()>>,
}

/// What one connection is doing, updated by its request handler.
#[derive(Default)]
pub struct Activity {
    /// Requests being handled on this connection now (HTTP/1.1: 0 or 1).
    in_progress: AtomicUsize,
    /// Milliseconds after the table's epoch when the connection last became idle.
    idle_since_ms: AtomicU64,
}

/// Marks a connection busy while alive; obtained from [`Activity::busy`].
pub struct Busy<'a> {
    activity: &'a Activity,
    table: &'a ConnectionTable,
}

/// What [`ConnectionTable::admit`] decided for a newly accepted connection.
pub enum Admission {
    /// Serve it; the registration must be completed with [`ConnectionTable::register`].
    Admitted {
        /// The connection's id in the table.
        id: u64,
        /// Its activity record, shared with its request handler.
        activity: Arc<Activity>,
        /// The task of the idle connection closed to make room, aborted: await it to know
        /// its socket is closed.
        evicted: Option<JoinHandle<()>>,
    },
    /// Every slot has a request in progress: close the newcomer.
    Full,
}

impl ConnectionTable {
    /// An empty table admitting at most `capacity` connections.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Makes room for one more connection, closing the longest-idle one if the table is full.
    pub fn admit(&self) -> Admission {
        let mut open = self.lock();
        let mut evicted = None;
        if open.len() >= self.capacity {
            let Some(victim) = longest_idle(&open) else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Admission::Full;
            };
            evicted = open.remove(&victim).and_then(|entry| entry.task);
            if let Some(task) = &evicted {
                task.abort();
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        activity
            .idle_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
        open.insert(
            id,
            Entry {
                activity: activity.clone(),
                task: None,
            },
        );
        Admission::Admitted {
            id,
            activity,
            evicted,
        }
    }

    /// Records the task serving connection `id`, so it can be evicted.
    pub fn register(&self, id: u64, task: JoinHandle<()>) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.task = Some(task);
        }
    }

    /// Frees the slot of a connection that ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Idle connections closed to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Newcomers closed because every connection was busy, so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Activity {
    /// Marks the connection busy until the guard is dropped (when the response is ready).
    pub fn busy<'a>(&'a self, table: &'a ConnectionTable) -> Busy<'a> {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self,
            table,
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.activity.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The id of the connection idle for longest, if any is idle. Only the accept loop admits, and it
/// registers each task before admitting the next, so every candidate has its task.
fn longest_idle(open: &HashMap<u64, Entry>) -> Option<u64> {
    open.iter()
        .filter(|(_, entry)| entry.activity.in_progress.load(Ordering::Acquire) == 0)
        .min_by_key(|(id, entry)| (entry.activity.idle_since_ms.load(Ordering::Relaxed), **id))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(table: &ConnectionTable) -> (u64, Arc<Activity>) {
        match table.admit() {
            Admission::Admitted { id, activity, .. } => (id, activity),
            Admission::Full => panic!("expected a slot"),
        }
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection() {
        let table = ConnectionTable::new(2);
        let (first, _a) = admitted(&table);
        table.register(first, tokio::spawn(std::future::pending::<()>()));
        let (_second, _b) = admitted(&table);
        let Admission::Admitted {
            evicted: Some(first_task),
            ..
        } = table.admit()
        else {
            panic!("expected the first connection to be evicted");
        };
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted(), 1);
        assert!(first_task.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted() {
        let table = ConnectionTable::new(2);
        let (_first, a) = admitted(&table);
        let (_second, b) = admitted(&table);
        let _busy_a = a.busy(&table);
        {
            let _busy_b = b.busy(&table);
            assert!(matches!(table.admit(), Admission::Full));
            assert_eq!(table.refused(), 1);
        }
        // b finished its request: it is idle now and may make room.
        let (third, _c) = admitted(&table);
        assert_eq!(table.len(), 2);
        table.remove(third);
        assert_eq!(table.len(), 1);
    }
}
