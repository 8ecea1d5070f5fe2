//! `orderwatch check-config`: validate and show the effective configuration.

use std::process::ExitCode;

use super::{ConfigFile, load_config, loaded, print_warnings};
use crate::config::{Config, annotate};

/// Validate the configuration and print it, secrets masked, each value with where it came from.
///
/// Exit 0 when valid, 2 when not, with one line per problem naming the file, the key and the
/// reason (every problem found at once: the rules that span keys, then each secret).
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Validate without reading any secret: a password or client secret must be named by
    /// exactly one of KEY, KEY_env, KEY_file, but the variable need not be set nor the file
    /// exist (for CI of a configuration repository, which has no secrets).
    #[arg(long)]
    offline: bool,
}

pub(super) fn check_config(config_file: &ConfigFile, args: &Args) -> ExitCode {
    let config = if args.offline {
        loaded(config_file, Config::load_offline(&config_file.path)).inspect(print_warnings)
    } else {
        load_config(config_file)
    };
    match config {
        Ok(config) => {
            let secrets = if args.offline {
                "secrets named but not read (--offline)"
            } else {
                "secrets read and masked"
            };
            println!(
                "# {}: valid; effective configuration, {secrets}; each value says where it came \
                 from (file, env VAR, default)",
                config_file.path.display()
            );
            print!("{}", annotate(&config.to_masked_toml(), &config.sources));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
