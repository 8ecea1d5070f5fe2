use std::process::ExitCode;

use clap::Parser;
use orderwatch::cli::Cli;

fn main() -> ExitCode {
    Cli::parse().execute()
}
