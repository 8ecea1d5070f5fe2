//! `orderwatch run`: the daemon.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILURE, load_config, runtime};
use crate::clock::SystemClock;
use crate::startup;

pub(super) fn run(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    startup::init_logging(&config);
    let result = runtime().block_on(async {
        let listener = startup::bind(&config).await?;
        startup::run(
            listener,
            config,
            Arc::new(SystemClock),
            startup::shutdown_signal(),
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
