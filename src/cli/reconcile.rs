//! `orderwatch reconcile --once`: one reconciler pass now, with a summary.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{EXIT_CONFIG, EXIT_FAILURE, load_config, runtime};
use crate::clock::SystemClock;
use crate::reconciler::{PassError, PassSummary, Reconciler};
use crate::startup;

/// How long to wait for another process's pass before giving up.
const LEASE_WAIT: Duration = Duration::from_secs(5);

pub(super) fn reconcile_once(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    startup::init_logging(&config);
    runtime().block_on(async {
        let clock = Arc::new(SystemClock);
        let (writer, writer_thread) = match startup::open_store(&config, clock.clone()).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("orderwatch: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let code = match startup::build_reconciler(
            &config,
            writer,
            clock,
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
    loop {
        match reconciler.run_once().await {
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
            Err(PassError::LeaseHeld { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                eprintln!("orderwatch: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
}

fn print_summary(summary: &PassSummary) {
    println!(
        "orders due: {}, polled: {}, items changed: {}, failures: {}, not found: {}, expired: {}, overdue items: {}",
        summary.due,
        summary.polled,
        summary.items_changed,
        summary.failures,
        summary.not_found,
        summary.expired,
        summary.overdue
    );
}
