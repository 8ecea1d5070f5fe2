//! `orderwatch completions SHELL` and `orderwatch man`: shell completions and man pages, made
//! from the same command definition the parser uses, so they always match the binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;
use super::output::{fail, finish};

/// Print shell completions for orderwatch on stdout.
///
/// bash: `orderwatch completions bash > ~/.local/share/bash-completion/completions/orderwatch`;
/// zsh: into a folder on $fpath as `_orderwatch`; fish: `~/.config/fish/completions/orderwatch.fish`.
#[derive(Debug, clap::Args)]
pub(super) struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Print the man page (roff) on stdout, or write one page per command into a folder.
///
/// `orderwatch man | man -l -` reads it now; `orderwatch man --dir /usr/local/share/man/man1`
/// installs orderwatch.1 and orderwatch-COMMAND.1 for every command.
#[derive(Debug, clap::Args)]
pub(super) struct ManArgs {
    /// Write orderwatch.1 and one orderwatch-COMMAND.1 per command into this folder (which
    /// must exist) instead of printing orderwatch.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub(super) fn completions(args: CompletionArgs) -> ExitCode {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "orderwatch", &mut out);
    let mut stdout = std::io::stdout().lock();
    finish(stdout.write_all(&out).and_then(|()| stdout.flush()))
}

pub(super) fn man(args: ManArgs) -> ExitCode {
    let mut command = Cli::command();
    // Built as `generate_to` builds it, so the printed page and the installed one agree.
    command.build();
    match args.dir {
        None => {
            let mut out = Vec::new();
            if let Err(error) = clap_mangen::Man::new(command).render(&mut out) {
                return fail(format!("cannot render the man page: {error}"));
            }
            let mut stdout = std::io::stdout().lock();
            finish(stdout.write_all(&out).and_then(|()| stdout.flush()))
        }
        Some(dir) => {
            if !dir.is_dir() {
                return fail(format!("{}: no such folder", dir.display()));
            }
            match clap_mangen::generate_to(command, &dir) {
                Ok(()) => {
                    println!("man pages written to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(error) => fail(format!("cannot write into {}: {error}", dir.display())),
            }
        }
    }
}
