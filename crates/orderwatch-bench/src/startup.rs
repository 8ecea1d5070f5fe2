//! Start-up time: from spawning `orderwatch run` to `/readyz` answering 200 (which means the
//! writer committed a transaction), on an empty database and on a big one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    BenchResult, LoopbackUrl, TempDir, fail, free_port, get_status, median, report_with_note,
    write_file,
};

#[derive(Debug, clap::Args)]
pub struct StartupArgs {
    /// The orderwatch binary.
    #[arg(long)]
    binary: PathBuf,
    /// A big database to start on as well (e.g. one made by `prepare`); it is opened in place.
    #[arg(long)]
    db: Vec<PathBuf>,
    /// Starts per database.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Write the table (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A line about the machine and the run, put above the table.
    #[arg(long, default_value = "")]
    note: String,
}

const TARGET_MS: f64 = 200.0;

pub fn run(args: StartupArgs) -> BenchResult<ExitCode> {
    if args.runs == 0 {
        return fail("--runs must be at least 1");
    }
    let mut rows = Vec::new();
    // None = a new, empty database each run (created and migrated at start).
    let mut cases: Vec<Option<PathBuf>> = vec![None];
    cases.extend(args.db.iter().cloned().map(Some));
    for case in &cases {
        let (name, items) = match case {
            None => ("empty (created at start)".to_owned(), 0),
            Some(db) => {
                if !db.exists() {
                    return fail(format!("{}: no such database", db.display()));
                }
                (db.display().to_string(), count_items(db)?)
            }
        };
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let temp = TempDir::new("startup")?;
            let db = match case {
                None => temp.path().join("orderwatch.db"),
                Some(db) => std::fs::canonicalize(db)?,
            };
            times.push(time_one_start(&args.binary, temp.path(), &db)?);
        }
        eprintln!(
            "{name}: {}",
            times
                .iter()
                .map(|ms| format!("{ms:.1} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push((name, items, times));
    }
    let mut md = report_with_note(&args.note);
    let _ = writeln!(
        md,
        "| database | items | runs | median ms | min ms | max ms | target < {TARGET_MS:.0} ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for (name, items, times) in &rows {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| {name} | {items} | {} | {:.1} | {min:.1} | {max:.1} | {} |",
            times.len(),
            median(times),
            if max < TARGET_MS {
                "met (every run)"
            } else if median(times) < TARGET_MS {
                "met (median)"
            } else {
                "MISSED"
            }
        );
    }
    print!("{md}");
    if let Some(path) = &args.markdown {
        write_file(path, &md)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn count_items(db: &Path) -> BenchResult<i64> {
    let conn = orderwatch::store::open_read_only(db, Duration::from_secs(5))?;
    Ok(conn.query_row("SELECT count(*) FROM order_items", [], |r| r.get(0))?)
}

/// Spawns the daemon on a free loopback port with the default configuration and `db`, and
/// returns the milliseconds until `/readyz` first answered 200. Stops it with SIGTERM.
fn time_one_start(binary: &Path, dir: &Path, db: &Path) -> BenchResult<f64> {
    let port = free_port()?;
    let config = dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[database]\npath = \"{}\"\n",
            db.display()
        ),
    )?;
    let url = LoopbackUrl::parse(&format!("http://127.0.0.1:{port}/readyz"))?;
    let log = std::fs::File::create(dir.join("orderwatch.log"))?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let result = loop {
        if get_status(&url, Duration::from_secs(5)) == Some(200) {
            break Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("orderwatch.log")).unwrap_or_default();
            break fail(format!("orderwatch exited early ({status}): {log}"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            break fail("orderwatch was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    stop(&mut child);
    result
}

/// SIGTERM (the daemon's clean shutdown), then wait; SIGKILL if it takes over 15 s.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
