//! `orderwatch run`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;

use super::{ConfigFile, EXIT_FAILURE, loaded, runtime};
use crate::app::{App, Listeners};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::reload::{self, Reload};
use crate::{signals, telemetry};

pub(super) fn run(config_file: &ConfigFile) -> ExitCode {
    let config_path = &config_file.path;
    let config = match loaded(config_file, Config::load(config_path)) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log = telemetry::init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
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
        // Said once, in the daemon's log (stderr, text or JSON as configured).
        Err(error) => {
            tracing::error!(%error, "orderwatch stopped");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
