//! `orderwatch reconcile`: one reconciler pass now, with a summary, over the orders due (the
//! default), every order still to poll (`--all-due`), or named orders (`--order`). While it
//! polls it shows a progress bar on a terminal, plain `polled P/T orders` lines on stderr
//! otherwise (P counting successful polls only); at the end it says how many orders it left
//! for later, and why (not those it just polled, now scheduled for their next poll).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::{ConfigFile, EXIT_CONFIG, EXIT_FAILURE, init_command_logging, load_config, runtime};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconciler::{self, PassError, PassSummary, Progress, Reconciler, Selection};
use crate::store;
use crate::store::queries::PollBacklog;
use crate::store::reads::Reads;

/// How long to wait for another process's pass before giving up.
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// Without a terminal, a progress line at least this often (and every tenth of the orders).
const LINE_EVERY: Duration = Duration::from_secs(1);

/// A pass the rate limit makes last at least this long is announced with its expected length.
const ANNOUNCE_LONGER_THAN: f64 = 5.0;

/// Poll Musement now: one reconciler pass, then a summary (works while the daemon runs).
///
/// By default the pass polls the orders due now, as a scheduled pass would. Orders whose next
/// poll is later (a webhook arrived within quiet_period, a backoff after failed polls, an OK
/// item's re-check) are counted at the end as left for later; --all-due polls them too, and
/// --order polls exactly the orders named. Requests keep to [reconciler]
/// max_requests_per_second. Exit 0 when the pass ran (failed polls back off and are counted),
/// 1 when it stopped early or could not run, 2 when the reconciler is off in the configuration.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// One pass, then exit (the default; accepted for existing scripts).
    #[arg(long)]
    once: bool,
    /// Poll exactly these orders now, whatever their state (repeat or comma-separate).
    #[arg(
        long,
        value_name = "UUID",
        value_delimiter = ',',
        value_parser = Uuid::try_parse,
        conflicts_with = "all_due"
    )]
    order: Vec<Uuid>,
    /// Poll every order still to poll now, not only those due: also those in their quiet
    /// period after a webhook, backing off after failed polls, or waiting for a re-check
    /// (`orders_to_poll` in `orderwatch stats`).
    #[arg(long)]
    all_due: bool,
}

impl Args {
    fn selection(&self) -> Selection {
        if !self.order.is_empty() {
            Selection::Orders(self.order.clone())
        } else if self.all_due {
            Selection::AllToPoll
        } else {
            Selection::Due
        }
    }
}

pub(super) fn reconcile(config_file: &ConfigFile, args: Args) -> ExitCode {
    let config = match load_config(config_file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_command_logging(&config);
    let selection = args.selection();
    runtime().block_on(async {
        let clock = Arc::new(SystemClock);
        // Counted, but served nowhere: a pass prints its own summary.
        let metrics = Arc::new(Metrics::new());
        let opened = store::open(&config, clock.clone(), metrics.clone()).await;
        let store::Opened {
            writer,
            writer_thread,
            reads,
        } = match opened {
            Ok(store) => store,
            Err(error) => {
                eprintln!("orderwatch: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let built = reconciler::build(
            &config,
            writer,
            reads.clone(),
            clock,
            metrics,
            "orderwatch reconcile",
        );
        let code = match built {
            Ok(reconciler) => run_pass(&reconciler, &config, &reads, &selection).await,
            Err(off) => {
                eprintln!(
                    "orderwatch: {}: cannot reconcile: {off}",
                    config_file.path.display()
                );
                ExitCode::from(EXIT_CONFIG)
            }
        };
        writer_thread.shutdown().await;
        code
    })
}

async fn run_pass(
    reconciler: &Reconciler,
    config: &Config,
    reads: &Reads,
    selection: &Selection,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    // Said once, so the pause before the answer is not a mystery.
    let mut said_waiting = false;
    let rate = config.reconciler.max_requests_per_second;
    loop {
        match with_progress(reconciler, selection, rate).await {
            Ok(summary) => {
                print_summary(&summary);
                if !matches!(selection, Selection::Orders(_)) {
                    print_left_for_later(config, reads, selection, &summary.recorded).await;
                }
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
async fn with_progress(
    reconciler: &Reconciler,
    selection: &Selection,
    rate: f64,
) -> Result<PassSummary, PassError> {
    let mut progress = reconciler.progress();
    let mut shown = ProgressOutput::new(std::io::stderr().is_terminal(), rate);
    let pass = reconciler.run_once_for(selection);
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

/// What the pass's progress looks like on stderr.
struct ProgressOutput {
    /// A bar or lines.
    style: ProgressStyleKind,
    /// `[reconciler] max_requests_per_second` (0: no ceiling).
    rate: f64,
    /// The rate limit's effect on a long pass was said.
    announced: bool,
}

/// A progress bar on a terminal, else plain lines.
enum ProgressStyleKind {
    Bar(Option<ProgressBar>),
    Lines {
        /// The last state printed, to print each one once.
        printed: Progress,
        at: Instant,
    },
}

impl ProgressOutput {
    fn new(terminal: bool, rate: f64) -> Self {
        let style = if terminal {
            ProgressStyleKind::Bar(None)
        } else {
            ProgressStyleKind::Lines {
                printed: Progress::default(),
                at: Instant::now(),
            }
        };
        Self {
            style,
            rate,
            announced: false,
        }
    }

    fn update(&mut self, now: Progress) {
        if now.total == 0 {
            return;
        }
        if !self.announced {
            self.announced = true;
            let least = if self.rate > 0.0 {
                now.total as f64 / self.rate
            } else {
                0.0
            };
            if least >= ANNOUNCE_LONGER_THAN {
                eprintln!(
                    "polling {} orders at most {} per second ([reconciler] \
                     max_requests_per_second): at least {least:.0} s",
                    now.total, self.rate
                );
            }
        }
        match &mut self.style {
            ProgressStyleKind::Bar(bar) => {
                let bar = bar.get_or_insert_with(|| new_bar(now.total));
                bar.set_length(now.total as u64);
                bar.set_position(now.done as u64);
                bar.set_message(not_polled(now));
            }
            ProgressStyleKind::Lines { printed, at } => {
                let step = (now.total / 10).max(1);
                let due = now.total != printed.total
                    || now.done == now.total
                    || now.done >= printed.done + step
                    || at.elapsed() >= LINE_EVERY;
                if now != *printed && due {
                    eprintln!(
                        "polled {}/{} orders{}",
                        now.polled,
                        now.total,
                        not_polled(now)
                    );
                    *printed = now;
                    *at = Instant::now();
                }
            }
        }
    }

    fn finish(self) {
        if let ProgressStyleKind::Bar(Some(bar)) = self.style {
            bar.finish_and_clear();
        }
    }
}

/// `, N failed or skipped` for the orders handled but not polled successfully (failed, not
/// found, refused, or skipped after a refusal or a pause); empty when there are none.
fn not_polled(now: Progress) -> String {
    match now.done.saturating_sub(now.polled) {
        0 => String::new(),
        n => format!(", {n} failed or skipped"),
    }
}

fn new_bar(total: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "polling {bar:30} {pos}/{len} orders{msg}, {per_sec}, {eta} left",
    )
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

/// What the pass left for later, and why, with how to poll it now; nothing when nothing is.
/// The orders it `recorded` a poll for are not counted: they were polled (or tried) now and
/// only wait for their next poll (an OK item's re-check, a backoff).
async fn print_left_for_later(
    config: &Config,
    reads: &Reads,
    selection: &Selection,
    recorded: &[Uuid],
) {
    let reads = reads.with_deadline(Duration::from_secs(10));
    let now = Utc::now();
    let soon = crate::clock::later(now, chrono_duration(config.reconciler.quiet_period));
    let backlog = reads.poll_backlog(now, soon, recorded.to_vec()).await;
    match backlog {
        Ok(backlog) => {
            if let Some(line) = left_for_later(&backlog, config, selection) {
                println!("{line}");
            }
        }
        Err(error) => eprintln!("orderwatch: cannot count the orders left for later: {error}"),
    }
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// `left for later: …`, or `None` when no order waits.
fn left_for_later(backlog: &PollBacklog, config: &Config, selection: &Selection) -> Option<String> {
    let reconciler = &config.reconciler;
    let mut reasons = Vec::new();
    if backlog.soon > 0 {
        reasons.push(format!(
            "{} due within quiet_period = {} (a webhook arrived lately, so Musement is talking)",
            backlog.soon,
            humantime::format_duration(reconciler.quiet_period)
        ));
    }
    if backlog.later > 0 {
        reasons.push(format!(
            "{} due later (settled OK items, re-checked every recheck_interval = {})",
            backlog.later,
            humantime::format_duration(reconciler.recheck_interval)
        ));
    }
    if backlog.backing_off > 0 {
        let first = backlog
            .backing_off_next
            .as_deref()
            .map(|t| format!(", the first due at {}", super::output::second(t)))
            .unwrap_or_default();
        reasons.push(format!(
            "{} backing off after failed polls{first}",
            backlog.backing_off
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    let hint = match selection {
        Selection::Due => "; `orderwatch reconcile --all-due` polls them now",
        _ => "",
    };
    Some(format!(
        "left for later: {} order(s): {}{hint}",
        backlog.soon + backlog.later + backlog.backing_off,
        reasons.join("; ")
    ))
}
