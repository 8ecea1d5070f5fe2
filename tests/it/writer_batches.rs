//! The group-commit writer with one bad job in a batch: a job whose SQL fails is undone alone
//! (its earlier writes included; the batch runs in one savepoint, undone and retried in
//! halves down to the failing job) while the jobs before and after it in the same
//! transaction commit and are answered as stored; a job that makes SQLite roll back the
//! whole transaction fails the whole batch, and nothing of it is stored.
//!
//! The failure is a trigger added to a test database that refuses one item's event, so the
//! job has already written its order and item rows when it fails. The batch is made exact:
//! a [`GateClock`] stops the writer inside the previous batch, the jobs are queued meanwhile,
//! and an observer reports each batch's size.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderwatch::clock::Clock;
use orderwatch::config::Config;
use orderwatch::observation::Observation;
use orderwatch::store::observer::{BatchStats, StoreObserver};
use orderwatch::store::writer::{WriteError, Writer, WriterThread};
use orderwatch::store::{self, Outcome};
use tempfile::TempDir;

use crate::helpers::{uuid, webhook};

/// Bound on every wait for the writer thread.
const LIMIT: Duration = Duration::from_secs(20);

/// The time every job is stored at.
const NOW: &str = "2024-03-01T12:00:00Z";

/// Whether the writer is being held inside a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// The next batch stops once its transaction is open.
    Armed,
    /// The writer is stopped inside a batch.
    Holding,
}

/// A fixed clock that can stop the writer thread: the writer reads the time once per batch,
/// right after opening its transaction, so while armed the next batch stops there until
/// [`GateClock::open`]. Everything queued meanwhile makes up the following batch.
struct GateClock {
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl GateClock {
    fn new() -> Self {
        Self {
            gate: Mutex::new(Gate::Open),
            changed: Condvar::new(),
        }
    }

    fn arm(&self) {
        *self.gate.lock().unwrap() = Gate::Armed;
    }

    /// Waits (bounded) until the writer is stopped inside a batch.
    async fn wait_holding(&self) {
        let deadline = Instant::now() + LIMIT;
        while *self.gate.lock().unwrap() != Gate::Holding {
            assert!(
                Instant::now() < deadline,
                "the writer never started a batch"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn open(&self) {
        *self.gate.lock().unwrap() = Gate::Open;
        self.changed.notify_all();
    }
}

impl Clock for GateClock {
    fn now(&self) -> DateTime<Utc> {
        if std::thread::current().name() == Some("orderwatch-writer") {
            let mut gate = self.gate.lock().unwrap();
            if *gate == Gate::Armed {
                *gate = Gate::Holding;
                while *gate == Gate::Holding {
                    gate = self.changed.wait(gate).unwrap();
                }
            }
        }
        NOW.parse().unwrap()
    }
}

/// Every batch the writer reports, in order.
#[derive(Default)]
struct Batches(Mutex<Vec<BatchStats>>);

impl Batches {
    /// `(jobs, committed)` of every batch so far.
    fn seen(&self) -> Vec<(usize, bool)> {
        let batches = self.0.lock().unwrap();
        batches.iter().map(|b| (b.jobs, b.committed)).collect()
    }
}

impl StoreObserver for Batches {
    fn batch(&self, stats: BatchStats) {
        self.0.lock().unwrap().push(stats);
    }
    fn checkpoint(&self, _: &'static str, _: &'static str) {}
    fn wal_bytes(&self, _: u64) {}
}

/// A writer on a fresh database that has `trigger` (SQL) installed, with the gate and the
/// batch log it reports to.
struct Setup {
    writer: Writer,
    thread: WriterThread,
    clock: Arc<GateClock>,
    batches: Arc<Batches>,
    config: Config,
    _dir: TempDir,
}

async fn writer_with_trigger(trigger: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[store]\nmax_batch = 64\n").unwrap();
    let config = Config::load(&path).unwrap();
    let conn = store::open_for_writing(&config.database.path, Duration::from_secs(5)).unwrap();
    conn.execute_batch(trigger).unwrap();
    drop(conn);
    let clock = Arc::new(GateClock::new());
    let batches = Arc::new(Batches::default());
    let (writer, thread) = store::open_writer(&config, clock.clone(), batches.clone())
        .await
        .unwrap();
    Setup {
        writer,
        thread,
        clock,
        batches,
        config,
        _dir: dir,
    }
}

/// The webhook for item `uuid(31, n)` of order `uuid(32, n)`.
fn observation(n: u64) -> Observation {
    let body = webhook(&uuid(31, n), &uuid(32, n), 1, "PENDING");
    Observation::from_webhook(body.as_bytes(), NOW.parse().unwrap()).unwrap()
}

type Answer = Pin<Box<dyn Future<Output = Result<Outcome, WriteError>> + Send>>;

impl Setup {
    /// Lets the writer take job `first` alone and stops it inside that batch, queues the
    /// webhooks `batch` behind it (in that order), then lets it go on: `batch` is then one
    /// batch. Returns `first`'s answer and theirs.
    async fn one_batch(
        &self,
        first: u64,
        batch: &[u64],
    ) -> (
        Result<Outcome, WriteError>,
        Vec<Result<Outcome, WriteError>>,
    ) {
        self.clock.arm();
        let writer = self.writer.clone();
        let first = tokio::spawn(async move { writer.apply(observation(first)).await });
        self.clock.wait_holding().await;
        let mut answers: Vec<Answer> = Vec::new();
        for &n in batch {
            let writer = self.writer.clone();
            let mut answer: Answer = Box::pin(async move { writer.apply(observation(n)).await });
            // The first poll queues the job (or refuses it at once, which would be answered).
            let pending = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(answer.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(
                pending,
                "job {n} was answered before the writer could take it"
            );
            answers.push(answer);
        }
        self.clock.open();
        let first = tokio::time::timeout(LIMIT, first)
            .await
            .expect("the first job is answered in time")
            .unwrap();
        let mut results = Vec::new();
        for answer in answers {
            let result = tokio::time::timeout(LIMIT, answer).await;
            results.push(result.expect("every job of the batch is answered in time"));
        }
        (first, results)
    }

    /// Rows of `table` for job `n` (orders by order, the others by item).
    fn rows(&self, table: &str, n: u64) -> i64 {
        let (column, key) = match table {
            "orders" => ("order_uuid", uuid(32, n)),
            _ => ("item_uuid", uuid(31, n)),
        };
        rusqlite::Connection::open(&self.config.database.path)
            .unwrap()
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
                [key],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Asserts job `n` left an order row, an item row and one event (`stored`), or nothing.
    fn assert_stored(&self, n: u64, stored: bool) {
        let want = i64::from(stored);
        for table in ["orders", "order_items", "item_events"] {
            assert_eq!(self.rows(table, n), want, "job {n}: {table}");
        }
    }

    async fn close(self) {
        drop(self.writer);
        self.thread.shutdown().await;
    }
}

/// The job whose event the test triggers refuse: the middle one of its batch.
const BAD: u64 = 3;

/// A trigger refusing the event of job [`BAD`]'s item with `RAISE(action, message)`: `ABORT`
/// undoes only that statement (so the writer undoes the jobs it ran with and retries them in
/// halves until the bad job fails alone), `ROLLBACK` makes
/// SQLite roll back the whole transaction.
fn refuse_bad_event(action: &str, message: &str) -> String {
    format!(
        "CREATE TRIGGER refuse_bad_event BEFORE INSERT ON item_events
         WHEN NEW.item_uuid = '{}'
         BEGIN SELECT RAISE({action}, '{message}'); END;",
        uuid(31, BAD)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_undone_alone_and_the_rest_of_its_batch_commits() {
    let s = writer_with_trigger(&refuse_bad_event("ABORT", "refused by the test trigger")).await;
    let (first, answers) = s.one_batch(0, &[1, 2, 3, 4, 5]).await;
    assert_eq!(first, Ok(Outcome::Applied));
    assert_eq!(
        s.batches.seen(),
        [(1, true), (5, true)],
        "the five jobs were one batch, and it committed"
    );
    for (n, answer) in [1, 2, 3, 4, 5].into_iter().zip(&answers) {
        if n == BAD {
            match answer {
                Err(WriteError::Storage(error)) => {
                    assert!(error.contains("refused by the test trigger"), "{error}")
                }
                other => panic!("job {n} must fail with the trigger's error: {other:?}"),
            }
            // Its order and item rows were written before the event failed: undone too.
            s.assert_stored(n, false);
        } else {
            assert_eq!(answer, &Ok(Outcome::Applied), "job {n}");
            s.assert_stored(n, true);
        }
    }
    // One bad job is not a sick store.
    assert_eq!(s.writer.health().unready(), None);
    assert_eq!(s.writer.health().batches_with_failures(), 1);
    // The writer goes on as before.
    assert_eq!(s.writer.apply(observation(6)).await, Ok(Outcome::Applied));
    s.assert_stored(6, true);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_rolls_back_the_transaction_fails_its_whole_batch() {
    let trigger = refuse_bad_event("ROLLBACK", "rolled back by the test trigger");
    let s = writer_with_trigger(&trigger).await;
    let (first, answers) = s.one_batch(0, &[1, 2, 3, 4, 5]).await;
    assert_eq!(first, Ok(Outcome::Applied));
    assert_eq!(s.batches.seen(), [(1, true), (5, false)]);
    for (n, answer) in [1, 2, 3, 4, 5].into_iter().zip(&answers) {
        match answer {
            Err(WriteError::Storage(error)) => {
                assert!(
                    error.contains("rolled back by the test trigger"),
                    "job {n}: {error}"
                )
            }
            other => panic!("job {n}: the whole batch fails: {other:?}"),
        }
        s.assert_stored(n, false);
    }
    // Retried (as Musement would after a 503), the good ones are stored.
    for n in [1, 2, 4, 5] {
        assert_eq!(s.writer.apply(observation(n)).await, Ok(Outcome::Applied));
        s.assert_stored(n, true);
    }
    s.close().await;
}
