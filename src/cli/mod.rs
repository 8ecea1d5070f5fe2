//! The command line: one file per subcommand; [`Cli::execute`] dispatches.

mod check_config;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Exit code for usage and configuration errors.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for failures at run time (database, listener).
pub const EXIT_FAILURE: u8 = 1;

/// Keeps a durable, reconciled SQLite copy of Musement order-item statuses.
#[derive(Debug, Parser)]
#[command(name = "orderwatch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: receive webhooks and store them.
    Run(ConfigArg),
    /// Validate the configuration and print it, secrets masked.
    CheckConfig(ConfigArg),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file; relative paths inside it resolve against its folder.
    #[arg(long, short, default_value = "config.toml", env = "ORDERWATCH_CONFIG")]
    config: PathBuf,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Run(args) => run::run(&args.config),
            Command::CheckConfig(args) => check_config::check_config(&args.config),
        }
    }
}

/// Loads the config or prints the one-line error and gives the exit code.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("orderwatch: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}
