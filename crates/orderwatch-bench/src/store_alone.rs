//! "SQLite alone" (issue 14): the store's own batch path — `SqliteBatches`, the code the
//! writer thread runs for every batch, with its checkpointer beside it and the daemon's
//! pragmas — called directly in a loop, without HTTP and without the queue, with batches of a
//! given size of distinct webhooks (random v4 UUIDs). What it reaches is the storage limit for
//! the schema; the HTTP run is compared with it at the mean batch size it reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use orderwatch::clock::SystemClock;
use orderwatch::config::Config;
use orderwatch::observation::Observation;
use orderwatch::store::checkpoint::CheckpointSettings;
use orderwatch::store::commands::Command;
use orderwatch::store::observer::Unobserved;
use orderwatch::store::sqlite_batches::SqliteBatches;
use orderwatch::store::writer::Batches;
use orderwatch::store::{self, StoreSettings};
use serde::Serialize;

use crate::util::{BenchResult, fail, musement_time, parse_duration, webhook_body};

#[derive(Debug, clap::Args)]
pub struct StoreAloneArgs {
    /// The SQLite file to write to (an existing database, e.g. a copy of a prefilled one).
    #[arg(long)]
    db: PathBuf,
    /// Webhooks per transaction (use the mean batch the HTTP run reached).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Run for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tuning experiments: the WAL size in MiB past which the checkpointer resets it even
    /// while the writer is busy (default: the daemon's).
    #[arg(long, value_name = "MIB")]
    checkpoint_force_at: Option<u64>,
    /// Tuning experiments: how often the checkpointer looks at the WAL, in ms (default: the
    /// daemon's).
    #[arg(long, value_name = "MS")]
    checkpoint_tick: Option<u64>,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct StoreAloneResult {
    batch: usize,
    elapsed_s: f64,
    /// Webhooks committed.
    webhooks: u64,
    /// Webhooks committed per second.
    rows_per_s: f64,
    /// Time of one batch, from the start of its transaction to its commit.
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    /// The largest the `-wal` file was at the end of a batch.
    wal_peak_bytes: u64,
}

pub fn run(args: StoreAloneArgs) -> BenchResult<ExitCode> {
    if args.batch == 0 {
        return fail("--batch must be at least 1");
    }
    if !args.db.exists() {
        return fail(format!("{} does not exist", args.db.display()));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let config = Config::default();
    let conn = store::open_for_writing(&args.db, config.database.busy_timeout)?;
    let mut checkpoints = CheckpointSettings::default();
    if let Some(mib) = args.checkpoint_force_at {
        checkpoints.force_at = mib * 1024 * 1024;
    }
    if let Some(ms) = args.checkpoint_tick {
        checkpoints.tick = Duration::from_millis(ms.max(1));
    }
    let started = SqliteBatches::start(conn, &args.db, None, checkpoints, Arc::new(Unobserved))?;
    let mut batches = started.batches;
    let settings = StoreSettings::from_config(&config);
    let mut wal = args.db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);

    let seed = fastrand::u64(..);
    let mut next = 0u64;
    let mut commits = Vec::new();
    let mut wal_peak = 0;
    let run_started = Instant::now();
    while run_started.elapsed() < args.duration {
        let now = Utc::now();
        let updated = musement_time(now);
        let commands: Vec<Command> = (0..args.batch)
            .map(|_| {
                next += 1;
                let item = crate::util::derived_uuid(seed, 0, next);
                let order = crate::util::derived_uuid(seed, 1, next);
                let body = webhook_body(&item, &order, next, 1, "PENDING", &updated);
                Observation::from_webhook(body.as_bytes(), now)
                    .map(|observation| Command::Apply(Box::new(observation)))
                    .map_err(|e| format!("a generated webhook is invalid: {e:?}"))
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Command> = commands.iter().collect();
        let begun = Instant::now();
        let results = batches
            .commit(&refs, &settings, &SystemClock)
            .map_err(|e| format!("a batch failed: {e}"))?;
        commits.push(begun.elapsed());
        if let Some(error) = results.iter().find_map(|r| r.as_ref().err()) {
            return fail(format!("a webhook failed: {error}"));
        }
        wal_peak = wal_peak.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    let elapsed = run_started.elapsed();
    batches.close(false);
    runtime.block_on(started.checkpointer.stop());
    commits.sort_unstable();
    let quantile = |q: f64| {
        commits
            .get(((commits.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let webhooks = (commits.len() * args.batch) as u64;
    let result = StoreAloneResult {
        batch: args.batch,
        elapsed_s: elapsed.as_secs_f64(),
        webhooks,
        rows_per_s: webhooks as f64 / elapsed.as_secs_f64(),
        commit_p50_ms: quantile(0.5),
        commit_p99_ms: quantile(0.99),
        wal_peak_bytes: wal_peak,
    };
    println!(
        "store alone: batches of {}, {} webhooks in {:.1} s: {:.0} webhooks/s; commit p50 {:.2} ms, p99 {:.2} ms; WAL peak {:.1} MiB",
        result.batch,
        result.webhooks,
        result.elapsed_s,
        result.rows_per_s,
        result.commit_p50_ms,
        result.commit_p99_ms,
        result.wal_peak_bytes as f64 / 1_048_576.0
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
