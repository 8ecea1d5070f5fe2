//! `orderwatch reconcile --once`: one reconciler pass now, with a summary. While it polls it
//! shows a progress bar on a terminal, plain `polled D/T orders` lines on stderr otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{EXIT_CONFIG, EXIT_FAILURE, load_config, runtime};
use crate::clock::SystemClock;
use crate::metrics::Metrics;
use crate::reconciler::{self, PassError, PassSummary, Progress, Reconciler};
use crate::{store, telemetry};

/// How long to wait for another process's pass before giving up.
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// Without a terminal, a progress line at least this often (and every tenth of the orders).
const LINE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn reconcile_once(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init_logging(&config);
    runtime().block_on(async {
        let clock = Arc::new(SystemClock);
        // Counted, but served nowhere: a pass prints its own summary.
        let metrics = Arc::new(Metrics::new());
        let opened = store::open_writer(&config, clock.clone(), metrics.clone()).await;
        let (writer, writer_thread) = match opened {
            Ok(store) => store,
            Err(error) => {
                eprintln!("orderwatch: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let code = match reconciler::build(
            &config,
            writer,
            clock,
            metrics,
            "orderwatch reconcile --once",
        ) {
            Ok(reconciler) => run_pass(&reconciler).await,
            Err(off) => {
                eprintln!(
                    "orderwatch: {}: cannot reconcile: {off}",
                    config_path.display()
                );
                ExitCode::from(EXIT_CONFIG)
            }
        };
        writer_thread.shutdown().await;
        code
    })
}

async fn run_pass(reconciler: &Reconciler) -> ExitCode {
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    // Said once, so the pause before the answer is not a mystery.
    let mut said_waiting = false;
    loop {
        match with_progress(reconciler).await {
            Ok(summary) => {
                print_summary(&summary);
                return match &summary.stopped {
                    None => ExitCode::SUCCESS,
                    Some(reason) => {
                        eprintln!("orderwatch: the pass stopped early: {reason}");
                        ExitCode::from(EXIT_FAILURE)
                    }
                };
            }
            Err(error @ PassError::LeaseHeld { .. }) if tokio::time::Instant::now() < deadline => {
                if !said_waiting {
                    eprintln!("orderwatch: {error}; waiting up to {LEASE_WAIT:?} for it to end");
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                eprintln!("orderwatch: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
}

/// Runs one pass while showing its progress on stderr.
async fn with_progress(reconciler: &Reconciler) -> Result<PassSummary, PassError> {
    let mut progress = reconciler.progress();
    let mut shown = ProgressOutput::new(std::io::stderr().is_terminal());
    let pass = reconciler.run_once();
    tokio::pin!(pass);
    let result = loop {
        tokio::select! {
            result = &mut pass => break result,
            Ok(()) = progress.changed() => shown.update(*progress.borrow_and_update()),
        }
    };
    shown.update(*progress.borrow());
    shown.finish();
    result
}

/// A progress bar on a terminal, else plain lines.
enum ProgressOutput {
    Bar(Option<ProgressBar>),
    Lines {
        /// The last state printed, to print each one once.
        printed: Progress,
        at: Instant,
    },
}

impl ProgressOutput {
    fn new(terminal: bool) -> Self {
        if terminal {
            Self::Bar(None)
        } else {
            Self::Lines {
                printed: Progress::default(),
                at: Instant::now(),
            }
        }
    }

    fn update(&mut self, now: Progress) {
        if now.total == 0 {
            return;
        }
        match self {
            Self::Bar(bar) => {
                let bar = bar.get_or_insert_with(|| new_bar(now.total));
                bar.set_length(now.total as u64);
                bar.set_position(now.done as u64);
            }
            Self::Lines { printed, at } => {
                let step = (now.total / 10).max(1);
                let due = now.total != printed.total
                    || now.done == now.total
                    || now.done >= printed.done + step
                    || at.elapsed() >= LINE_EVERY;
                if now != *printed && due {
                    eprintln!("polled {}/{} orders", now.done, now.total);
                    *printed = now;
                    *at = Instant::now();
                }
            }
        }
    }

    fn finish(self) {
        if let Self::Bar(Some(bar)) = self {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(total: usize) -> ProgressBar {
    let style =
        ProgressStyle::with_template("polling {bar:30} {pos}/{len} orders, {per_sec}, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(total as u64).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn print_summary(summary: &PassSummary) {
    // Musement asked us to wait: say until when, and how many orders wait for a later pass.
    let paused = summary
        .paused_until_text()
        .map(|until| {
            let left = summary.paused_orders;
            format!(", paused until {until} ({left} orders left for a later pass)")
        })
        .unwrap_or_default();
    println!(
        "orders due: {}, polled: {}, items changed: {}, failures: {}, not found: {}, expired: {}, overdue items: {}{paused}",
        summary.due,
        summary.polled,
        summary.items_changed,
        summary.failures,
        summary.not_found,
        summary.expired,
        summary.overdue
    );
}
