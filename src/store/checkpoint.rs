//! The checkpointer: its own thread and connection copy the WAL back into the database file,
//! so no commit a webhook waits for ever runs a checkpoint (the writer's connection has
//! `wal_autocheckpoint = 0`), and the WAL does not grow without bound.
//!
//! Every tick it
//! - checks the database file is still the one opened ([`DatabaseFile::check`]), and stops
//!   for good if not (a checkpoint would write our WAL into somebody else's file);
//! - runs a PASSIVE checkpoint when the writer committed since the last one: it copies what
//!   no reader still needs and never waits;
//! - runs a TRUNCATE checkpoint once the writer has been idle for a moment, or at once when
//!   the WAL outgrew [`CheckpointSettings::force_at`] (under steady load the writer is never
//!   idle, and a WAL is only reset when a checkpoint caught up with it, so this one briefly
//!   holds the write lock: the writer's next batch waits and grows, nothing is refused);
//! - warns, naming the cause, when the WAL has not been reset for
//!   [`CheckpointSettings::stuck_after`]: typically a connection holding a read transaction
//!   open (an `sqlite3` shell, a long query), which pins every frame written after it began.
//!
//! The writer's connection keeps `journal_size_limit`, so a WAL reset by a checkpoint is also
//! cut back to that size by the writer's next commit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;
use super::observer::StoreObserver;
use super::sqlite_file::DatabaseFile;

/// The WAL size a reset cuts the file back to (`journal_size_limit` on every connection).
pub const JOURNAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// When and how hard the checkpointer works.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// How often it looks at the WAL.
    pub tick: Duration,
    /// How long without a commit counts as idle (then the WAL is truncated).
    pub idle_after: Duration,
    /// A WAL larger than this is truncated even while the writer is busy.
    pub force_at: u64,
    /// How long a TRUNCATE checkpoint waits for the write lock and for readers.
    pub lock_wait: Duration,
    /// A WAL not reset for this long, and larger than [`JOURNAL_SIZE_LIMIT`], is warned about.
    pub stuck_after: Duration,
}

impl Default for CheckpointSettings {
    /// Measured on a million-item file (2026-12-06, one core for the daemon): checkpointing
    /// once a second with a 224 MiB bound let the store alone commit 30% more (5,066/s vs
    /// 3,893/s, commit p99 16 ms vs 143 ms), but the daemon only 8% more (3,786/s) with its
    /// HTTP p99 doubled (258 ms vs 136 ms; 85 ms vs 42 ms at half rate): the longer copies
    /// take the one core from the HTTP threads. Schema version 4, 2026-12-07 (BENCHMARKS.md,
    /// "Checkpointer settings"): a 1 s tick, a 224 MiB bound and the thread at nice 19 cut the
    /// closed-loop p99 to 21–24 ms (from 80–100 ms) at the same throughput, but raised the p99
    /// at a steady half rate to 129–139 ms (from 47–48 ms); no setting moved throughput. A
    /// partner's daemon runs below its limit, so these stay.
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            idle_after: Duration::from_millis(500),
            force_at: 4 * JOURNAL_SIZE_LIMIT,
            lock_wait: Duration::from_millis(100),
            stuck_after: Duration::from_secs(10),
        }
    }
}

/// What the writer and the checkpointer share: the writer's commit count, and a gate the
/// checkpointer closes between two batches while it resets the WAL. A RESTART needs the write
/// lock, and a writer committing batch after batch under load never leaves it free long enough
/// for a busy handler to catch it: without the gate the WAL grows as long as the load lasts.
#[derive(Debug, Default)]
pub struct WriterLink {
    /// Batches committed so far.
    commits: AtomicU64,
    /// Whether the writer may start its next batch.
    gate: Mutex<Gate>,
    /// Signalled on every change of `gate`.
    changed: Condvar,
}

/// The gate between the writer's batches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Batches run.
    #[default]
    Open,
    /// The checkpointer asked the writer to wait before its next batch.
    Requested,
    /// The writer is waiting.
    Parked,
}

/// The longest the writer waits at a closed gate, whatever happens to the checkpointer.
const MAX_PARK: Duration = Duration::from_secs(1);

/// How long the checkpointer waits for a busy writer to finish its batch and park.
const PARK_WAIT: Duration = Duration::from_millis(50);

impl WriterLink {
    /// The writer committed a batch.
    pub fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Called by the writer before each batch: waits while the checkpointer resets the WAL
    /// (webhooks queue meanwhile and make the next batch bigger), at most [`MAX_PARK`].
    pub fn before_batch(&self) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if *gate == Gate::Open {
            return;
        }
        *gate = Gate::Parked;
        self.changed.notify_all();
        let (mut gate, waited) = self
            .changed
            .wait_timeout_while(gate, MAX_PARK, |gate| *gate != Gate::Open)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() {
            *gate = Gate::Open;
        }
    }

    /// Asks the writer to stop before its next batch and waits (at most [`PARK_WAIT`]) until it
    /// does; an idle writer never answers, and holds no lock either. The gate opens again when
    /// the guard is dropped.
    fn hold(&self) -> GateHeld<'_> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        *gate = Gate::Requested;
        let _parked = self
            .changed
            .wait_timeout_while(gate, PARK_WAIT, |gate| *gate != Gate::Parked)
            .unwrap_or_else(|e| e.into_inner());
        GateHeld(self)
    }
}

/// The gate closed by [`WriterLink::hold`]; opens it when dropped.
struct GateHeld<'a>(&'a WriterLink);

impl Drop for GateHeld<'_> {
    fn drop(&mut self) {
        *self.0.gate.lock().unwrap_or_else(|e| e.into_inner()) = Gate::Open;
        self.0.changed.notify_all();
    }
}

/// The running checkpointer; [`CheckpointerThread::stop`] ends it.
pub struct CheckpointerThread {
    handle: JoinHandle<()>,
    stop: mpsc::Sender<()>,
}

impl CheckpointerThread {
    /// Stops the thread (after the checkpoint it may be running) and closes its connection.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let handle = self.handle;
        if !matches!(
            tokio::task::spawn_blocking(move || handle.join()).await,
            Ok(Ok(()))
        ) {
            tracing::error!("the checkpointer thread panicked");
        }
    }
}

/// Opens a connection of its own to `path` and starts checkpointing it.
pub fn spawn(
    path: &Path,
    file: Arc<DatabaseFile>,
    writer: Arc<WriterLink>,
    settings: CheckpointSettings,
    observer: Arc<dyn StoreObserver>,
) -> Result<CheckpointerThread, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(settings.lock_wait).map_err(open_error)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT as i64)
        .map_err(open_error)?;
    // The writer's close comes after this one's and checkpoints what is left; this one
    // must never checkpoint a file found replaced.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(open_error)?;
    let (stop, stopped) = mpsc::channel();
    let mut checkpointer = Checkpointer {
        conn,
        file,
        writer,
        observer,
        state: State::new(settings),
    };
    let handle = std::thread::Builder::new()
        .name("orderwatch-checkpointer".into())
        .spawn(move || {
            let tick = checkpointer.state.settings.tick;
            loop {
                match stopped.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {
                        if !checkpointer.tick() {
                            return;
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(CheckpointerThread { handle, stop })
}

/// Which checkpoint to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copy what no reader needs; never waits, never blocks the writer.
    Passive,
    /// Copy everything and make the writer start the WAL over (cut back to
    /// [`JOURNAL_SIZE_LIMIT`] by its next commit); holds the write lock meanwhile.
    Restart,
    /// Like `Restart`, and truncate the WAL to nothing: for an idle writer.
    Truncate,
}

impl Mode {
    fn sql(self) -> &'static str {
        match self {
            Self::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Self::Restart => "PRAGMA wal_checkpoint(RESTART)",
            Self::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::Restart => "restart",
            Self::Truncate => "truncate",
        }
    }
}

/// What one checkpoint reported (`PRAGMA wal_checkpoint`'s row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    /// It could not finish: a reader still needs frames, or the lock was not free in time.
    busy: bool,
    /// Frames in the WAL.
    log_frames: i64,
    /// Of those, frames now copied into the database.
    checkpointed: i64,
}

/// After a RESTART or TRUNCATE that could not finish, how long before the next one: each
/// attempt holds the write lock while it waits for readers.
const BLOCKING_BACKOFF: Duration = Duration::from_secs(1);

/// The decisions, apart from the database so they can be tested with made-up numbers.
#[derive(Debug)]
struct State {
    settings: CheckpointSettings,
    /// The writer's commit count at the last tick.
    commits_seen: u64,
    /// When that count last moved.
    last_commit: Instant,
    /// Commits since the last PASSIVE checkpoint.
    dirty: bool,
    /// The last PASSIVE copied every frame the WAL had (nothing pins it).
    caught_up: bool,
    /// Frames a reader kept the last checkpoint from copying.
    pinned_frames: i64,
    /// The WAL was truncated and nothing was committed since.
    truncated: bool,
    /// No RESTART or TRUNCATE before this (see [`BLOCKING_BACKOFF`]).
    next_blocking: Instant,
    /// When the WAL was last seen reset (or no larger than [`JOURNAL_SIZE_LIMIT`]).
    last_reset: Instant,
    /// Whether the current stuck spell has been warned about.
    warned: bool,
}

impl State {
    fn new(settings: CheckpointSettings) -> Self {
        let now = Instant::now();
        Self {
            settings,
            commits_seen: 0,
            last_commit: now,
            dirty: true,
            caught_up: false,
            pinned_frames: 0,
            truncated: false,
            next_blocking: now,
            last_reset: now,
            warned: false,
        }
    }

    /// Notes the writer's commit count and the WAL's size; whether to run a PASSIVE first.
    fn passive_due(&mut self, now: Instant, commits: u64, wal_bytes: u64) -> bool {
        if commits != self.commits_seen {
            self.commits_seen = commits;
            self.last_commit = now;
            self.dirty = true;
            self.truncated = false;
        }
        if wal_bytes <= JOURNAL_SIZE_LIMIT {
            self.last_reset = now;
            self.warned = false;
        }
        wal_bytes > 0 && self.dirty
    }

    /// After the PASSIVE (if any): the checkpoint that resets the WAL, if one is due.
    /// - the WAL is caught up but larger than its working size: a RESTART has almost nothing
    ///   left to copy, so holding the write lock for it costs the writer next to nothing;
    /// - it outgrew [`CheckpointSettings::force_at`]: a RESTART, even if it has to wait;
    /// - the writer is idle: a TRUNCATE gives the disk space back.
    fn reset_due(&self, now: Instant, wal_bytes: u64) -> Option<Mode> {
        if wal_bytes == 0 || now < self.next_blocking {
            return None;
        }
        let idle = now.duration_since(self.last_commit) >= self.settings.idle_after;
        if idle && !self.truncated {
            Some(Mode::Truncate)
        } else if wal_bytes > self.settings.force_at
            || (self.caught_up && wal_bytes > JOURNAL_SIZE_LIMIT)
        {
            Some(Mode::Restart)
        } else {
            None
        }
    }

    /// Notes how a checkpoint went.
    fn ran(&mut self, now: Instant, mode: Mode, report: &Report) {
        if report.log_frames >= 0 {
            self.pinned_frames = report.log_frames - report.checkpointed.max(0);
        }
        if mode == Mode::Passive {
            self.dirty = false;
            self.caught_up = !report.busy && self.pinned_frames == 0;
            return;
        }
        if report.busy {
            self.next_blocking = now + BLOCKING_BACKOFF;
        } else {
            self.last_reset = now;
            self.warned = false;
            self.truncated = mode == Mode::Truncate;
            self.caught_up = false;
        }
    }

    /// Why the WAL has not been reset for too long, once per spell.
    fn stuck(&mut self, now: Instant, wal_bytes: u64) -> Option<String> {
        let spell = now.duration_since(self.last_reset);
        if self.warned || spell < self.settings.stuck_after || wal_bytes <= JOURNAL_SIZE_LIMIT {
            return None;
        }
        self.warned = true;
        let cause = if self.pinned_frames > 0 {
            format!(
                "another connection holds a read transaction open (an sqlite3 shell, a long query, a backup) and pins {} WAL frames; end it",
                self.pinned_frames
            )
        } else {
            "readers or the writer kept the WAL busy at every attempt".to_owned()
        };
        Some(format!(
            "the WAL ({} MiB) has not been reset for {}s: {cause}",
            wal_bytes / (1024 * 1024),
            spell.as_secs()
        ))
    }
}

struct Checkpointer {
    conn: Connection,
    file: Arc<DatabaseFile>,
    writer: Arc<WriterLink>,
    observer: Arc<dyn StoreObserver>,
    state: State,
}

impl Checkpointer {
    /// One look at the WAL; `false` once the database file is no longer ours.
    fn tick(&mut self) -> bool {
        let sizes = match self.file.check() {
            Ok(sizes) => sizes,
            Err(_) => return false, // logged by the check
        };
        self.observer.wal_bytes(sizes.wal);
        let mut wal = sizes.wal;
        if self
            .state
            .passive_due(Instant::now(), self.writer.commits(), wal)
        {
            self.run(Mode::Passive);
        }
        if let Some(mode) = self.state.reset_due(Instant::now(), wal) {
            self.run(mode);
            wal = match self.file.check() {
                Ok(sizes) => sizes.wal,
                Err(_) => return false,
            };
            self.observer.wal_bytes(wal);
        }
        if let Some(warning) = self.state.stuck(Instant::now(), wal) {
            tracing::warn!(path = %self.file.path().display(), "{warning}");
        }
        true
    }

    fn run(&mut self, mode: Mode) {
        // Only a PASSIVE checkpoint runs beside the writer; the others need its lock.
        let _held = (mode != Mode::Passive).then(|| self.writer.hold());
        if let Some(report) = self.checkpoint(mode) {
            self.state.ran(Instant::now(), mode, &report);
        }
    }

    fn checkpoint(&self, mode: Mode) -> Option<Report> {
        let report = self.conn.query_row(mode.sql(), [], |row| {
            Ok(Report {
                busy: row.get::<_, i64>(0)? != 0,
                log_frames: row.get(1)?,
                checkpointed: row.get(2)?,
            })
        });
        let result = match &report {
            Ok(report) if report.busy => "busy",
            Ok(_) => "ok",
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                "busy"
            }
            Err(_) => "error",
        };
        self.observer.checkpoint(mode.label(), result);
        match report {
            Ok(report) => {
                tracing::debug!(
                    mode = mode.label(),
                    result,
                    log_frames = report.log_frames,
                    checkpointed = report.checkpointed,
                    "checkpoint"
                );
                Some(report)
            }
            Err(error) => {
                if result == "error" {
                    tracing::warn!(%error, mode = mode.label(), "checkpoint failed");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn state() -> (State, Instant) {
        let state = State::new(CheckpointSettings::default());
        let start = state.last_commit;
        (state, start)
    }

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    const DONE: Report = Report {
        busy: false,
        log_frames: 10,
        checkpointed: 10,
    };

    const PINNED: Report = Report {
        busy: true,
        log_frames: 5000,
        checkpointed: 100,
    };

    const BEHIND: Report = Report {
        busy: false,
        log_frames: 5000,
        checkpointed: 4000,
    };

    #[test]
    fn commits_get_passive_checkpoints_and_an_idle_writer_a_truncate() {
        let (mut state, start) = state();
        assert!(state.passive_due(at(start, 0), 1, MIB));
        state.ran(at(start, 1), Mode::Passive, &DONE);
        assert_eq!(state.reset_due(at(start, 1), MIB), None);
        assert!(state.passive_due(at(start, 250), 5, MIB));
        state.ran(at(start, 251), Mode::Passive, &DONE);
        // No commit since: nothing until the writer counts as idle, then one truncate.
        assert!(!state.passive_due(at(start, 500), 5, MIB));
        assert_eq!(state.reset_due(at(start, 500), MIB), None);
        assert!(!state.passive_due(at(start, 750), 5, MIB));
        assert_eq!(state.reset_due(at(start, 750), MIB), Some(Mode::Truncate));
        state.ran(at(start, 751), Mode::Truncate, &DONE);
        assert!(!state.passive_due(at(start, 1000), 5, 0));
        assert_eq!(state.reset_due(at(start, 1000), 0), None);
        assert_eq!(state.reset_due(at(start, 1250), 32 * 1024), None);
    }

    #[test]
    fn a_caught_up_wal_past_its_working_size_is_restarted_under_load() {
        let (mut state, start) = state();
        assert!(state.passive_due(at(start, 0), 1, 6 * MIB));
        state.ran(at(start, 1), Mode::Passive, &DONE);
        assert_eq!(state.reset_due(at(start, 1), 6 * MIB), Some(Mode::Restart));
        state.ran(at(start, 2), Mode::Restart, &DONE);
        // Behind (the writer outran the passive): no restart until it outgrows force_at.
        assert!(state.passive_due(at(start, 250), 2, 6 * MIB));
        state.ran(at(start, 251), Mode::Passive, &BEHIND);
        assert_eq!(state.reset_due(at(start, 251), 6 * MIB), None);
        assert_eq!(
            state.reset_due(at(start, 251), 17 * MIB),
            Some(Mode::Restart)
        );
    }

    #[test]
    fn a_blocking_checkpoint_that_found_readers_is_not_retried_at_once() {
        let (mut state, start) = state();
        assert!(state.passive_due(at(start, 0), 1, 17 * MIB));
        state.ran(at(start, 1), Mode::Passive, &PINNED);
        assert_eq!(state.reset_due(at(start, 1), 17 * MIB), Some(Mode::Restart));
        state.ran(at(start, 100), Mode::Restart, &PINNED);
        assert_eq!(state.reset_due(at(start, 250), 17 * MIB), None);
        assert!(state.passive_due(at(start, 1100), 2, 17 * MIB));
        assert_eq!(
            state.reset_due(at(start, 1100), 17 * MIB),
            Some(Mode::Restart)
        );
    }

    #[test]
    fn a_pinned_wal_is_warned_about_once_per_spell_naming_the_reader() {
        let (mut state, start) = state();
        for ms in (0..10_000).step_by(250) {
            state.passive_due(at(start, ms), ms, 10 * MIB);
            state.ran(at(start, ms), Mode::Passive, &PINNED);
            assert_eq!(state.stuck(at(start, ms), 10 * MIB), None);
        }
        let warning = state.stuck(at(start, 10_001), 10 * MIB).unwrap();
        assert!(warning.contains("read transaction open"), "{warning}");
        assert!(warning.contains("4900 WAL frames"), "{warning}");
        assert_eq!(state.stuck(at(start, 20_000), 10 * MIB), None);
        // Reset, then stuck again: warned again.
        state.passive_due(at(start, 21_000), 1, 0);
        assert_eq!(state.stuck(at(start, 21_000), 0), None);
        assert!(state.stuck(at(start, 32_000), 10 * MIB).is_some());
    }

    #[test]
    fn the_gate_parks_a_busy_writer_until_the_checkpointer_is_done() {
        let link = Arc::new(WriterLink::default());
        let batches = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (link, batches, stop) = (link.clone(), batches.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    link.before_batch();
                    batches.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        while batches.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let held = link.hold();
        assert_eq!(
            *link.gate.lock().unwrap(),
            Gate::Parked,
            "the writer parked"
        );
        let parked_at = batches.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            batches.load(Ordering::SeqCst),
            parked_at,
            "no batch while held"
        );
        drop(held);
        let resumed = Instant::now();
        while batches.load(Ordering::SeqCst) == parked_at {
            assert!(
                resumed.elapsed() < Duration::from_secs(5),
                "the writer resumed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        // An idle writer never parks; holding the gate then just times out.
        let idle = WriterLink::default();
        let started = Instant::now();
        drop(idle.hold());
        assert!(started.elapsed() >= PARK_WAIT);
        assert_eq!(*idle.gate.lock().unwrap(), Gate::Open);
    }
}
