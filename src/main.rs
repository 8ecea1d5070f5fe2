use std::process::ExitCode;

use clap::Parser;
use orderwatch::cli::Cli;

fn main() -> ExitCode {
    orderwatch::signals::ignore_file_size_signal();
    Cli::parse().execute()
}
