//! The connection cap. A slot is never waited for: when every slot is taken, the connection that
//! has been idle longest is closed to make room. Idle means no request in progress: still sending
//! its first headers, or kept alive between requests (then only once its last response has had
//! [`FLUSH_GRACE_MS`] to reach the socket). So clients that hold connections open without using
//! them cannot keep Musement's next webhook waiting; when no connection is idle the newcomer is
//! closed instead.
//!
//! Eviction and the start of a request race for the same connection; one atomic step decides: a
//! connection being evicted refuses its request (503, nothing stored), and a connection whose
//! request started is not evicted. Closing an idle connection is allowed by HTTP/1.1 and loses
//! nothing: a request cut off before its 200 is retried by Musement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// How long after a response a kept-alive connection is still protected from eviction: the
/// handler is done when it hands the response to hyper, which writes it afterwards.
pub const FLUSH_GRACE_MS: u64 = 1000;

/// `in_progress` of a connection chosen for eviction: no request may start on it.
const EVICTING: usize = usize::MAX;

/// What one connection is doing, updated by its request handler.
#[derive(Default)]
pub struct Activity {
    /// Requests being handled on this connection now (HTTP/1.1: 0 or 1), or [`EVICTING`].
    in_progress: AtomicUsize,
    /// Milliseconds after the table's epoch when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Whether it has answered a request (then a response may still be on its way out).
    answered: AtomicBool,
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
            let Some(victim) = claim_longest_idle(&open, self.now_ms()) else {
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

    /// Frees the slot of a connection that ended; false if it was already evicted.
    pub fn remove(&self, id: u64) -> bool {
        self.lock().remove(&id).is_some()
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
    /// Marks the connection busy until the guard is dropped (when the response is ready), or
    /// `None` if it is being evicted: the request must then be refused, not handled.
    pub fn busy<'a>(&'a self, table: &'a ConnectionTable) -> Option<Busy<'a>> {
        let mut current = self.in_progress.load(Ordering::Acquire);
        loop {
            if current == EVICTING {
                return None;
            }
            match self.in_progress.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Busy {
                        activity: self,
                        table,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether it may be evicted at `now_ms`.
    fn is_idle(&self, now_ms: u64) -> bool {
        self.in_progress.load(Ordering::Acquire) == 0
            && (!self.answered.load(Ordering::Acquire)
                || now_ms.saturating_sub(self.idle_since_ms.load(Ordering::Acquire))
                    >= FLUSH_GRACE_MS)
    }

    /// Claims it for eviction if no request started meanwhile.
    fn claim(&self) -> bool {
        self.in_progress
            .compare_exchange(0, EVICTING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.table.now_ms(), Ordering::Release);
        self.activity.answered.store(true, Ordering::Release);
        self.activity.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Claims the connection idle for longest, if any is idle, and returns its id. Only the accept
/// loop admits, and it registers each task before admitting the next, so every candidate has
/// its task.
fn claim_longest_idle(open: &HashMap<u64, Entry>, now_ms: u64) -> Option<u64> {
    let mut idle: Vec<(u64, u64)> = open
        .iter()
        .filter(|(_, entry)| entry.activity.is_idle(now_ms))
        .map(|(id, entry)| (entry.activity.idle_since_ms.load(Ordering::Relaxed), *id))
        .collect();
    idle.sort_unstable();
    // A request may start between the look and the claim; then try the next one.
    idle.into_iter()
        .map(|(_, id)| id)
        .find(|id| open[id].activity.claim())
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

    /// A table for `capacity` connections whose first one is admitted, registered with a task
    /// (pending forever) and idle, so it may be evicted; and that connection's activity.
    fn with_an_idle_first(capacity: usize) -> (ConnectionTable, Arc<Activity>) {
        let table = ConnectionTable::new(capacity);
        let (first, activity) = admitted(&table);
        table.register(first, tokio::spawn(std::future::pending::<()>()));
        (table, activity)
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection() {
        let (table, _a) = with_an_idle_first(2);
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
        let mut table = ConnectionTable::new(2);
        // Times are measured from the epoch; start it in the past so "long ago" exists.
        table.epoch = Instant::now()
            .checked_sub(std::time::Duration::from_secs(10))
            .unwrap_or_else(Instant::now);
        let (_first, a) = admitted(&table);
        let (_second, b) = admitted(&table);
        let _busy_a = a.busy(&table).unwrap();
        {
            let _busy_b = b.busy(&table).unwrap();
            assert!(matches!(table.admit(), Admission::Full));
            assert_eq!(table.refused(), 1);
        }
        // b finished its request: once its response has had time to leave, it may make room.
        assert!(
            matches!(table.admit(), Admission::Full),
            "within the flush grace"
        );
        b.idle_since_ms.store(0, Ordering::Release);
        let (third, _c) = admitted(&table);
        assert_eq!(table.len(), 2);
        table.remove(third);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_connection_being_evicted_refuses_its_request() {
        let (table, a) = with_an_idle_first(1);
        let (_second, _b) = admitted(&table);
        assert!(a.busy(&table).is_none(), "evicted: no request may start");
    }

    #[test]
    fn a_connection_whose_request_started_is_not_evicted() {
        let table = ConnectionTable::new(1);
        let (_first, a) = admitted(&table);
        let _busy = a.busy(&table).unwrap();
        assert!(!a.claim());
        assert!(matches!(table.admit(), Admission::Full));
    }
}
