//! `orderwatch run`: the daemon.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILURE, load_config, runtime};
use crate::clock::SystemClock;
use crate::reload::{self, Reload};
use crate::startup;

pub(super) fn run(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log = startup::init_logging(&config);
    let result = runtime().block_on(async {
        let listener = startup::bind(&config).await?;
        let (reloads, configs) = tokio::sync::mpsc::channel(4);
        #[cfg(unix)]
        if let Err(error) = reload::reload_on_sighup(config_path.to_owned(), reloads) {
            tracing::warn!(%error, "cannot listen for SIGHUP; configuration reloads are off");
        }
        #[cfg(not(unix))]
        drop(reloads);
        let reload = Reload {
            configs,
            log: Some(log),
        };
        let metrics_listener = startup::bind_metrics(&config).await?;
        startup::run_with(
            listener,
            metrics_listener,
            config,
            Arc::new(SystemClock),
            startup::shutdown_signal(),
            reload,
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "orderwatch stopped");
            eprintln!("orderwatch: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
