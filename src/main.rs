use std::process::ExitCode;

use orderwatch::cli::Cli;

fn main() -> ExitCode {
    orderwatch::signals::ignore_file_size_signal();
    let (cli, config) = Cli::parse_args();
    cli.execute(&config)
}
