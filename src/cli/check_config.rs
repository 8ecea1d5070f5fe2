//! `orderwatch check-config`: validate and show the effective configuration.

use std::path::Path;
use std::process::ExitCode;

use super::load_config;

pub(super) fn check_config(config_path: &Path) -> ExitCode {
    match load_config(config_path) {
        Ok(config) => {
            println!(
                "# {}: valid; effective configuration, secrets masked",
                config_path.display()
            );
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
