//! The reconcile benchmark: a database with P pending orders (due for a poll) and F final items
//! (which must cost nothing), a fake Musement API with a fixed latency, and timed passes through
//! the library's own reconciler (`reconciler::build` + `Reconciler::run_once`, the code
//! `orderwatch reconcile --once` runs), plus optionally the real `reconcile --once` binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use orderwatch::clock::{Clock, SystemClock};
use orderwatch::config::Config;
use orderwatch::metrics::Metrics;
use orderwatch::observation::Observation;
use orderwatch::reconciler;
use orderwatch::store::StoreSettings;
use orderwatch::store::{self, queries};

use crate::fake_api::{CLIENT_ID, CLIENT_SECRET, Calls, FakeApi, pending_item, pending_order};
use crate::util::{
    BenchResult, TempDir, derived_uuid, fail, median, musement_time, parse_duration,
    remove_database, report_with_note, webhook_body, write_file,
};

#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// The SQLite file to create.
    #[arg(long)]
    db: PathBuf,
    /// Orders with one PENDING item each, due for a poll.
    #[arg(long, default_value_t = 100)]
    pending: u64,
    /// Orders with one final item each (REFUNDED or KO), polled once: never due.
    #[arg(long = "final", default_value_t = 1_000_000)]
    finals: u64,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
    /// Keep the file if it already has this schema and these counts; else (re)fill it.
    #[arg(long, conflicts_with = "force")]
    if_stale: bool,
}

pub fn prepare_command(args: PrepareArgs) -> BenchResult<ExitCode> {
    if args.if_stale {
        if still_valid(&args.db, args.pending, args.finals) {
            eprintln!("{} is up to date", args.db.display());
            return Ok(ExitCode::SUCCESS);
        }
        prepare(&args.db, args.pending, args.finals)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.db.exists() && !args.force {
        return fail(format!(
            "{} exists; pass --force to replace it",
            args.db.display()
        ));
    }
    prepare(&args.db, args.pending, args.finals)?;
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` with `finals` final items and `pending` pending orders, all through the
/// library's `store::apply` (the function the writer runs for every webhook), in one
/// transaction. Returns how long it took.
pub fn prepare(path: &Path, pending: u64, finals: u64) -> BenchResult<Duration> {
    let started = Instant::now();
    remove_database(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut conn = store::open_for_writing(path, Duration::from_secs(10))?;
    // A big page cache for the bulk load only (the daemon keeps SQLite's default).
    conn.pragma_update(None, "cache_size", -262_144)?;
    let settings = StoreSettings::from_config(&Config::default());
    let tx = conn.transaction()?;
    let seed = fastrand::u64(..);
    // Final items settled two days ago; pending orders first seen ten minutes ago, so the
    // webhook's quiet period (2 min) is over and they are due now.
    let final_at = Utc::now() - chrono::Duration::days(2);
    let polled_at = final_at + chrono::Duration::minutes(5);
    let pending_at = Utc::now() - chrono::Duration::minutes(10);
    let apply = |body: String, at| -> BenchResult<()> {
        let observation = Observation::from_webhook(body.as_bytes(), at)
            .map_err(|e| format!("a prepared webhook is invalid: {e:?}"))?;
        store::apply(&tx, &observation, &settings, at)?;
        Ok(())
    };
    let final_time = musement_time(final_at);
    for n in 0..finals {
        let status = if n % 2 == 0 { "REFUNDED" } else { "KO" };
        let item = derived_uuid(seed, 10, n);
        let order = derived_uuid(seed, 11, n);
        apply(
            webhook_body(&item, &order, 20_000_000 + n, 3, status, &final_time),
            final_at,
        )?;
        // Its first poll is long done (until then every order is due, since only a poll lists
        // all of an order's items), so the order is settled: the steady state of a database
        // full of old bookings. The poll's item is left out: it would only confirm the status.
        // Its request went out before the webhook was stored, so leaving the item out does
        // not make it missing.
        let polled = store::PollRecord {
            order,
            requested_at: final_at - chrono::Duration::seconds(1),
            items: Vec::new(),
        };
        store::record_poll(&tx, &polled, &settings, polled_at)?;
        if n > 0 && n % 250_000 == 0 {
            eprintln!(
                "  prepared {n} final items ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let pending_time = musement_time(pending_at);
    for n in 0..pending {
        apply(
            webhook_body(
                &pending_item(n),
                &pending_order(n),
                30_000_000 + n,
                1,
                "PENDING",
                &pending_time,
            ),
            pending_at,
        )?;
    }
    tx.commit()?;
    drop(conn);
    let elapsed = started.elapsed();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "prepared {}: {pending} pending orders, {finals} final items, {:.0} MiB, in {:.1} s",
        path.display(),
        size as f64 / 1_048_576.0,
        elapsed.as_secs_f64()
    );
    Ok(elapsed)
}

/// Checks that a database prepared earlier has the schema this build creates (the schema may
/// change under the same version while it is being developed), exactly `pending` due orders and
/// `pending + finals` items.
pub fn still_valid(path: &Path, pending: u64, finals: u64) -> bool {
    if !path.exists() {
        return false;
    }
    let Ok(conn) = store::open_read_only(path, Duration::from_secs(5)) else {
        return false;
    };
    match (schema_of(&conn), fresh_schema()) {
        (Ok(found), Ok(current)) if found == current => {}
        _ => {
            eprintln!(
                "  {}: schema differs from this build's; refilling",
                path.display()
            );
            return false;
        }
    }
    let items: Result<i64, _> =
        conn.query_row("SELECT count(*) FROM order_items", [], |r| r.get(0));
    let due = queries::due_orders(&conn, Utc::now()).map(|d| d.len() as u64);
    matches!((items, due), (Ok(items), Ok(due)) if items as u64 == pending + finals && due == pending)
}

/// Every schema object's SQL, sorted.
fn schema_of(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT coalesce(sql, name) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1",
    )?;
    let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// The schema a new database gets from this build.
fn fresh_schema() -> BenchResult<Vec<String>> {
    let temp = TempDir::new("schema")?;
    let conn = store::open_for_writing(&temp.path().join("fresh.db"), Duration::from_secs(5))?;
    Ok(schema_of(&conn)?)
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// A case as PENDING:FINAL, e.g. 100:1000000 (repeat the flag for several).
    #[arg(long = "case", value_parser = parse_case, default_values = ["100:0", "1000:0", "10000:0", "100:1000000"])]
    cases: Vec<(u64, u64)>,
    /// Latency the fake API adds to every answer.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    latency: Duration,
    /// `[reconciler] concurrency`.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Passes per case (fewer for big backlogs: at most 10000 polls per case).
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Where databases with final items are kept for reuse (they take a while to fill).
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
    /// Rebuild cached databases even if they look fine.
    #[arg(long)]
    rebuild: bool,
    /// The orderwatch binary: also time one `orderwatch reconcile --once` per case.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Write the table (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A line about the machine and the run, put above the table.
    #[arg(long, default_value = "")]
    note: String,
}

fn parse_case(text: &str) -> Result<(u64, u64), String> {
    let (p, f) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected PENDING:FINAL"))?;
    let number = |s: &str| {
        s.replace('_', "")
            .parse::<u64>()
            .map_err(|e| format!("{text:?}: {e}"))
    };
    let pending = number(p)?;
    if pending == 0 {
        return Err(format!("{text:?}: PENDING must be at least 1"));
    }
    Ok((pending, number(f)?))
}

/// The path of the cached database for a case with final items.
pub fn cached_database(data_dir: &Path, pending: u64, finals: u64) -> PathBuf {
    data_dir.join(format!("reconcile-{pending}-{finals}.db"))
}

/// What one case measured.
struct CaseResult {
    pending: u64,
    finals: u64,
    prepare_s: Option<f64>,
    due_query_ms: f64,
    passes: Vec<PassRun>,
    binary: Option<BinaryRun>,
}

struct PassRun {
    due: usize,
    polled: usize,
    failures: usize,
    calls: Calls,
    seconds: f64,
}

struct BinaryRun {
    seconds: f64,
    calls: Calls,
    summary: String,
    ok: bool,
}

pub fn run(args: ReconcileArgs) -> BenchResult<ExitCode> {
    let fake = FakeApi::start(args.latency)?;
    let mut results = Vec::new();
    let mut problems = Vec::new();
    for &(pending, finals) in &args.cases {
        eprintln!("case: {pending} pending orders, {finals} final items");
        let temp = TempDir::new("reconcile")?;
        let (db, prepare_s) = if finals == 0 {
            let db = temp.path().join("orderwatch.db");
            (
                db.clone(),
                Some(prepare(&db, pending, finals)?.as_secs_f64()),
            )
        } else {
            let db = cached_database(&args.data_dir, pending, finals);
            if !args.rebuild && still_valid(&db, pending, finals) {
                eprintln!("  reusing {}", db.display());
                (db, None)
            } else {
                let took = prepare(&db, pending, finals)?;
                (db, Some(took.as_secs_f64()))
            }
        };
        let db = std::fs::canonicalize(&db)?;
        let config_path = temp.path().join("config.toml");
        write_file(&config_path, &config_text(&db, &fake, args.concurrency))?;
        let config = Config::load(&config_path)?;
        let due_query_ms = time_due_query(&db)?;
        let passes = args.passes.clamp(1, (10_000 / pending as usize).max(1));
        let runtime = tokio::runtime::Runtime::new()?;
        let pass_runs = runtime.block_on(run_passes(&config, &fake, passes))?;
        drop(runtime);
        for (index, pass) in pass_runs.iter().enumerate() {
            if pass.calls.gets != pass.due as u64 || pass.polled != pass.due {
                problems.push(format!(
                    "{pending}:{finals} pass {}: {} orders due, {} polled, {} API GETs (must be equal)",
                    index + 1,
                    pass.due,
                    pass.polled,
                    pass.calls.gets
                ));
            }
            if pass.due as u64 != pending {
                problems.push(format!(
                    "{pending}:{finals} pass {}: {} orders due, expected {pending}",
                    index + 1,
                    pass.due
                ));
            }
        }
        let binary = match &args.binary {
            Some(binary) => {
                let run = run_binary(binary, &config_path, &fake)?;
                if !run.ok {
                    problems.push(format!(
                        "{pending}:{finals}: `orderwatch reconcile --once` failed: {}",
                        run.summary
                    ));
                }
                Some(run)
            }
            None => None,
        };
        results.push(CaseResult {
            pending,
            finals,
            prepare_s,
            due_query_ms,
            passes: pass_runs,
            binary,
        });
    }
    let md = table(&args, &results, &problems);
    print!("{md}");
    if let Some(path) = &args.markdown {
        write_file(path, &md)?;
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn config_text(db: &Path, fake: &FakeApi, concurrency: usize) -> String {
    format!(
        r#"# written by orderwatch-bench reconcile
[server]
listen = "127.0.0.1:0"

[database]
path = "{}"

[musement]
base_url = "{}"
application = "orderwatch-bench"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[reconciler]
concurrency = {concurrency}
max_requests_per_second = 0

[log]
level = "warn"
"#,
        db.display(),
        fake.base_url()
    )
}

/// The due-order query alone, on a read-only connection: median of 5, in ms.
fn time_due_query(db: &Path) -> BenchResult<f64> {
    let conn = store::open_read_only(db, Duration::from_secs(5))?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let due = queries::due_orders(&conn, Utc::now())?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(due);
    }
    Ok(median(&times))
}

async fn run_passes(config: &Config, fake: &FakeApi, passes: usize) -> BenchResult<Vec<PassRun>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let store::Opened {
        writer,
        writer_thread,
        reads,
    } = store::open(config, clock.clone(), metrics.clone()).await?;
    let reconciler = reconciler::build(config, writer, reads, clock, metrics, "orderwatch-bench")
        .map_err(|e| format!("cannot build the reconciler: {e}"))?;
    let mut runs = Vec::new();
    for _ in 0..passes {
        let before = fake.calls();
        let started = Instant::now();
        let summary = reconciler.run_once().await?;
        let seconds = started.elapsed().as_secs_f64();
        runs.push(PassRun {
            due: summary.due,
            polled: summary.polled,
            failures: summary.failures,
            calls: fake.calls() - before,
            seconds,
        });
        eprintln!(
            "  pass: {} due, {} polled, {} failures, {:.3} s",
            summary.due, summary.polled, summary.failures, seconds
        );
    }
    drop(reconciler);
    writer_thread.shutdown().await;
    Ok(runs)
}

/// One `orderwatch reconcile --once`, wall time from spawn to exit.
fn run_binary(binary: &Path, config: &Path, fake: &FakeApi) -> BenchResult<BinaryRun> {
    let before = fake.calls();
    let started = Instant::now();
    let output = Command::new(binary)
        .args(["reconcile", "--once", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    eprintln!("  reconcile --once: {seconds:.3} s: {stdout}");
    Ok(BinaryRun {
        seconds,
        calls: fake.calls() - before,
        summary: if output.status.success() {
            stdout
        } else {
            format!("{}: {stderr}", output.status)
        },
        ok: output.status.success(),
    })
}

fn table(args: &ReconcileArgs, results: &[CaseResult], problems: &[String]) -> String {
    let latency_ms = args.latency.as_secs_f64() * 1000.0;
    let mut md = report_with_note(&args.note);
    let _ = writeln!(
        md,
        "Fake API latency {latency_ms:.0} ms, concurrency {}, no rate limit. Ideal pass = P × latency / concurrency.\n",
        args.concurrency
    );
    let _ = writeln!(
        md,
        "| P (pending orders) | F (final items) | due | API GETs / pass | logins | passes | pass 1 s | median pass s | ideal s | median / ideal | due query ms | `reconcile --once` s (GETs) | DB fill s |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let ideal = r.pending as f64 * latency_ms / 1000.0 / args.concurrency as f64;
        let seconds: Vec<f64> = r.passes.iter().map(|p| p.seconds).collect();
        let med = median(&seconds);
        let gets: Vec<String> = r.passes.iter().map(|p| p.calls.gets.to_string()).collect();
        let logins: u64 = r.passes.iter().map(|p| p.calls.logins).sum();
        let failures: usize = r.passes.iter().map(|p| p.failures).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}{} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2}× | {:.2} | {} | {} |",
            r.pending,
            r.finals,
            r.passes.first().map_or(0, |p| p.due),
            dedup_join(&gets),
            if failures > 0 {
                format!(" ({failures} failed)")
            } else {
                String::new()
            },
            logins,
            r.passes.len(),
            seconds.first().copied().unwrap_or(0.0),
            med,
            ideal,
            med / ideal,
            r.due_query_ms,
            r.binary.as_ref().map_or("–".into(), |b| format!(
                "{:.3} ({})",
                b.seconds, b.calls.gets
            )),
            r.prepare_s.map_or("cached".into(), |s| format!("{s:.1}")),
        );
    }
    let _ = writeln!(md);
    for with in results.iter().filter(|r| r.finals > 0) {
        let Some(without) = results
            .iter()
            .find(|r| r.finals == 0 && r.pending == with.pending)
        else {
            continue;
        };
        let times =
            |r: &CaseResult| median(&r.passes.iter().map(|p| p.seconds).collect::<Vec<_>>());
        let ratio = times(with) / times(without);
        let _ = writeln!(
            md,
            "- P = {}: median pass with F = {} is {:.3} s vs {:.3} s with F = 0: {:.2}× (target ≤ 1.5×: {}); due query {:.2} ms vs {:.2} ms.",
            with.pending,
            with.finals,
            times(with),
            times(without),
            ratio,
            if ratio <= 1.5 { "met" } else { "MISSED" },
            with.due_query_ms,
            without.due_query_ms,
        );
        if let (Some(b1), Some(b0)) = (&with.binary, &without.binary) {
            let _ = writeln!(
                md,
                "- `reconcile --once` (process start to exit) with F = {}: {:.3} s vs {:.3} s: {:.2}×.",
                with.finals,
                b1.seconds,
                b0.seconds,
                b1.seconds / b0.seconds
            );
        }
    }
    if problems.is_empty() {
        let _ = writeln!(
            md,
            "- API calls: every pass made exactly one GET per due order (never per item), and due = P."
        );
    } else {
        for problem in problems {
            let _ = writeln!(md, "- PROBLEM: {problem}");
        }
    }
    md
}

/// `3, 3, 3` → `3`; `3, 4` → `3, 4`.
fn dedup_join(values: &[String]) -> String {
    let mut unique = values.to_vec();
    unique.dedup();
    unique.join(", ")
}
