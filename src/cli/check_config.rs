//! `orderwatch check-config`: validate and show the effective configuration.

use std::path::Path;
use std::process::ExitCode;

use super::load_config;
use crate::config::annotate;

pub(super) fn check_config(config_path: &Path) -> ExitCode {
    match load_config(config_path) {
        Ok(config) => {
            println!(
                "# {}: valid; effective configuration, secrets masked; each value says where it \
                 came from (file, env VAR, default)",
                config_path.display()
            );
            print!("{}", annotate(&config.to_masked_toml(), &config.sources));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
