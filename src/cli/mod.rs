//! The command line: one file per subcommand; [`Cli::execute`] dispatches.

mod backup;
mod changes;
mod check_config;
mod items;
mod output;
mod prune;
mod reconcile;
mod rejected;
mod run;
mod show;
mod stats;
mod watch;

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
    /// Register orders to poll before any webhook arrives (call it right after creating an order).
    Watch {
        #[command(flatten)]
        config: ConfigArg,
        /// Order UUIDs, or `-` to read them from standard input, one per line.
        #[arg(required = true, value_name = "ORDER_UUID")]
        orders: Vec<String>,
    },
    /// Run one reconciler pass now and print a summary (works while the daemon runs).
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        /// Run a single pass and exit (the daemon schedules passes itself).
        #[arg(long, required = true)]
        once: bool,
    },
    Items(items::Args),
    Show(show::Args),
    Stats(stats::Args),
    Rejected(rejected::Args),
    Changes(changes::Args),
    Prune(prune::Args),
    Backup(backup::Args),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file; relative paths inside it resolve against its folder.
    #[arg(
        long,
        short,
        default_value = "config.toml",
        env = "ORDERWATCH_CONFIG",
        hide_env_values = true
    )]
    config: PathBuf,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Run(args) => run::run(&args.config),
            Command::CheckConfig(args) => check_config::check_config(&args.config),
            Command::Watch { config, orders } => watch::watch(&config.config, &orders),
            Command::Reconcile { config, once: _ } => reconcile::reconcile_once(&config.config),
            Command::Items(args) => items::items(args),
            Command::Show(args) => show::show(args),
            Command::Stats(args) => stats::stats(args),
            Command::Rejected(args) => rejected::rejected(args),
            Command::Changes(args) => changes::changes(args),
            Command::Prune(args) => prune::prune(args),
            Command::Backup(args) => backup::backup(args),
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

/// [`load_config`] for commands that only use the database: secrets are not read.
fn load_database_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load_for_database(path).map_err(|error| {
        eprintln!("orderwatch: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// A multi-threaded runtime for the commands that need one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap_or_else(|error| {
        eprintln!("orderwatch: cannot start the async runtime: {error}");
        std::process::exit(EXIT_FAILURE.into())
    })
}
