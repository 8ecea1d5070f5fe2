//! The command line: one file per subcommand; [`Cli::execute`] dispatches.

mod backup;
mod changes;
mod check_config;
mod completions;
mod deliveries;
mod items;
mod migrate;
mod output;
mod prune;
mod reconcile;
mod rejected;
mod run;
mod show;
mod stats;
mod unwatch;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ConfigErrors};
use crate::store::writer::Writer;

/// Exit code for usage and configuration errors.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for failures at run time (database, listener).
pub const EXIT_FAILURE: u8 = 1;

/// The variable that names the configuration file when `--config` is not given.
pub const CONFIG_VAR: &str = "ORDERWATCH_CONFIG";

/// `--version`: the package version and the commit it was built from.
const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ORDERWATCH_COMMIT"),
    ")"
);

/// Said after the options of `orderwatch --help`.
const AFTER_HELP: &str = "\
Configuration: --config FILE (before or after the command), else $ORDERWATCH_CONFIG, else
config.toml in the current folder. Any key can be overridden from the environment as
ORDERWATCH_<SECTION>__<KEY> (two underscores between levels), e.g.
ORDERWATCH_SERVER__LISTEN=0.0.0.0:8080 or ORDERWATCH_SERVER__ALLOW_IPS=192.0.2.0/24,198.51.100.7.
Logging: RUST_LOG, when set, overrides [log] level and the quieting of dependencies
(tokio-cron-scheduler) and of the commands (warnings only), e.g. RUST_LOG=info.
Exit codes: 0 success, 2 usage or configuration error, 1 failure at run time.";

/// Keeps a durable, reconciled copy of Musement order-item statuses (SQLite or PostgreSQL).
#[derive(Debug, Parser)]
#[command(name = "orderwatch", version = VERSION_LINE, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file (default: config.toml in the current folder); relative paths inside
    /// it resolve against its folder. Accepted before or after the command.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        default_value = "config.toml",
        env = CONFIG_VAR,
        hide_env_values = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: receive webhooks, store them, poll Musement on a schedule.
    Run,
    CheckConfig(check_config::Args),
    Watch(watch::Args),
    Unwatch(unwatch::Args),
    Reconcile(reconcile::Args),
    Items(items::Args),
    Show(show::Args),
    Stats(stats::Args),
    Rejected(rejected::Args),
    Changes(changes::Args),
    Deliveries(deliveries::Args),
    Prune(prune::Args),
    Backup(backup::Args),
    Migrate(migrate::Args),
    Completions(completions::CompletionArgs),
    Man(completions::ManArgs),
}

/// The configuration file a command reads, and how it was chosen (for the message when it is
/// missing).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The path as given (or the default).
    pub path: PathBuf,
    /// `--config`, `ORDERWATCH_CONFIG` or the default.
    chosen_by: ChosenBy,
}

/// Where [`ConfigFile::path`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChosenBy {
    Flag,
    Environment,
    Default,
}

impl Cli {
    /// Parses the process's arguments (exits with clap's message and code 2 on a usage error).
    pub fn parse_args() -> (Self, ConfigFile) {
        let matches = Self::command().get_matches();
        let chosen_by = match matches.value_source("config") {
            Some(ValueSource::CommandLine) => ChosenBy::Flag,
            Some(ValueSource::EnvVariable) => ChosenBy::Environment,
            _ => ChosenBy::Default,
        };
        let cli = Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
        let config = ConfigFile {
            path: cli.config.clone(),
            chosen_by,
        };
        (cli, config)
    }

    /// Runs the chosen subcommand on `config`.
    pub fn execute(self, config: &ConfigFile) -> ExitCode {
        match self.command {
            Command::Run => run::run(config),
            Command::CheckConfig(args) => check_config::check_config(config, &args),
            Command::Watch(args) => watch::watch(config, args),
            Command::Unwatch(args) => unwatch::unwatch(config, args),
            Command::Reconcile(args) => reconcile::reconcile(config, args),
            Command::Items(args) => items::items(config, args),
            Command::Show(args) => show::show(config, args),
            Command::Stats(args) => stats::stats(config, args),
            Command::Rejected(args) => rejected::rejected(config, args),
            Command::Changes(args) => changes::changes(config, args),
            Command::Deliveries(args) => deliveries::deliveries(config, args),
            Command::Prune(args) => prune::prune(config, args),
            Command::Backup(args) => backup::backup(config, args),
            Command::Migrate(args) => migrate::migrate(config, args),
            Command::Completions(args) => completions::completions(args),
            Command::Man(args) => completions::man(args),
        }
    }
}

/// Loads the config or prints the one-line error and gives the exit code; prints the
/// configuration's warnings.
fn load_config(config: &ConfigFile) -> Result<Config, ExitCode> {
    loaded(config, Config::load(&config.path)).inspect(print_warnings)
}

/// [`load_config`] for commands that only use the database: secrets are not read.
fn load_database_config(config: &ConfigFile) -> Result<Config, ExitCode> {
    loaded(config, Config::load_for_database(&config.path)).inspect(print_warnings)
}

/// The configuration's warnings on stderr, for a command (the daemon logs them instead).
fn print_warnings(config: &Config) {
    for warning in &config.warnings {
        eprintln!("orderwatch: warning: {warning}");
    }
}

/// The configuration, or the exit code after saying why it did not load: every problem, one
/// line each, after the warnings (a missing file says where it was looked for and how to name
/// another).
fn loaded(config: &ConfigFile, result: Result<Config, ConfigErrors>) -> Result<Config, ExitCode> {
    match result {
        Ok(loaded) => Ok(loaded),
        Err(errors) => {
            for warning in &errors.warnings {
                eprintln!("orderwatch: warning: {warning}");
            }
            let hint = missing_file_hint(config);
            for problem in errors.problems() {
                match &hint {
                    Some(hint) => eprintln!("orderwatch: {problem}; {hint}"),
                    None => eprintln!("orderwatch: {problem}"),
                }
            }
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// For a configuration file that does not exist: the full path looked at, and how to point at
/// another file.
fn missing_file_hint(config: &ConfigFile) -> Option<String> {
    let missing = std::fs::metadata(&config.path)
        .err()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if !missing {
        return None;
    }
    let full = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
    let how = "pass --config FILE (before or after the command) or set ORDERWATCH_CONFIG=FILE; \
               the repository's config.toml documents every key";
    Some(match config.chosen_by {
        ChosenBy::Default => format!(
            "looked for {} (the default: config.toml in the current folder); {how}",
            full.display()
        ),
        ChosenBy::Environment => format!(
            "looked for {} (named by {CONFIG_VAR}); {how}",
            full.display()
        ),
        ChosenBy::Flag if config.path.is_relative() => format!("looked for {}", full.display()),
        ChosenBy::Flag => return None,
    })
}

/// Logging for the commands other than `run`: warnings and errors only (`RUST_LOG` still
/// wins), so a command prints its own output and not the daemon's INFO lines about the
/// writer or the API client it starts.
fn init_command_logging(config: &Config) {
    let mut quiet = config.clone();
    quiet.log.level = "warn".into();
    crate::telemetry::init_logging(&quiet);
}

/// A multi-threaded runtime for the commands that need one.
/// Runs `work` with a writer on `config`'s database (as the daemon writes), then lets the
/// writer commit and stop: for the commands that write (`watch`, `unwatch`, `prune`).
fn with_writer<T>(
    config: &Config,
    work: impl AsyncFnOnce(&Writer) -> Result<T, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
    runtime().block_on(async {
        let (writer, writer_thread) = crate::store::open_writer(
            config,
            Arc::new(crate::clock::SystemClock),
            Arc::new(crate::store::observer::Unobserved),
        )
        .await?;
        let done = work(&writer).await;
        writer_thread.shutdown().await;
        done
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap_or_else(|error| {
        eprintln!("orderwatch: cannot start the async runtime: {error}");
        std::process::exit(EXIT_FAILURE.into())
    })
}
