//! `orderwatch run`: the daemon.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILURE, load_config, runtime};
use crate::app::{App, Listeners};
use crate::clock::SystemClock;
use crate::reload::{self, Reload};
use crate::{signals, telemetry};

pub(super) fn run(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log = telemetry::init_logging(&config);
    let result = runtime().block_on(async {
        let listeners = Listeners::bind(&config)?;
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
        App::build(config, Arc::new(SystemClock), listeners)
            .await?
            .run_until(signals::shutdown_signal(), reload)
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
