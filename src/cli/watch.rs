//! `orderwatch watch ORDER_UUID…|-`: register orders so they are polled before any webhook.
//!
//! With `-`, standard input is read as a stream: each line is registered as soon as it arrives
//! (lines that arrive together share one write), so `musement-sim | orderwatch watch -` or a
//! partner's order feed registers every order right after its creation, not at end of input.
//! A line that is not a UUID is reported and skipped, and the command exits 1 at the end; a
//! standard input that cannot be read stops it with exit 1. Every order registered stays
//! watched.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    ConfigFile, EXIT_CONFIG, EXIT_FAILURE, init_command_logging, load_database_config, with_writer,
};
use crate::store::writer::Writer;

/// Register orders to poll before any webhook arrives (call it right after creating an order).
///
/// Prints `watching UUID (new)` or `watching UUID (already known)` for each order as it is
/// registered (unless --quiet), then `watching N order(s), M new`. With `-` a line that is not
/// an order UUID is reported on stderr and skipped, and the command exits 1 at the end.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Order UUIDs, or `-` to read them from standard input, one per line.
    #[arg(required = true, value_name = "ORDER_UUID")]
    orders: Vec<String>,
    /// Print only the total at the end, not a line per order.
    #[arg(long, short)]
    quiet: bool,
}

/// What was registered so far.
#[derive(Debug, Default)]
struct Tally {
    /// Orders registered (new or not).
    total: usize,
    /// Of those, orders the database did not know.
    new: usize,
    /// Standard input lines skipped because they are not order UUIDs.
    skipped: usize,
    /// Print a line per order.
    verbose: bool,
}

pub(super) fn watch(config_file: &ConfigFile, args: Args) -> ExitCode {
    let config = match load_database_config(config_file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let from_stdin = args.orders.iter().any(|o| o == "-");
    let listed = match parse_orders(args.orders.iter().filter(|o| *o != "-")) {
        Ok(listed) => listed,
        Err(message) => {
            eprintln!("orderwatch: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_command_logging(&config);
    let mut tally = Tally {
        verbose: !args.quiet,
        ..Tally::default()
    };
    let result = with_writer(&config, async |writer| {
        tally.register(writer, listed).await?;
        if from_stdin {
            tally.register_stdin(writer).await?;
        }
        Ok(())
    });
    if tally.total > 0 || tally.skipped > 0 {
        println!("watching {} order(s), {} new", tally.total, tally.new);
    }
    match result {
        Err(error) => {
            eprintln!("orderwatch: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(()) if tally.skipped > 0 => {
            eprintln!(
                "orderwatch: {} line(s) of standard input skipped: not order UUIDs",
                tally.skipped
            );
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(()) if tally.total == 0 => {
            eprintln!("orderwatch: no order UUIDs given");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}

impl Tally {
    /// Registers `orders`, printing a line for each unless quiet.
    async fn register(
        &mut self,
        writer: &Writer,
        orders: Vec<Uuid>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if orders.is_empty() {
            return Ok(());
        }
        let new: HashSet<Uuid> = writer.watch(orders.clone()).await?.into_iter().collect();
        self.total += orders.len();
        self.new += new.len();
        if self.verbose {
            let mut out = std::io::stdout().lock();
            for order in &orders {
                let known = if new.contains(order) {
                    "new"
                } else {
                    "already known"
                };
                // A reader that went away does not stop the registering.
                let _ = writeln!(out, "watching {order} ({known})");
            }
            let _ = out.flush();
        }
        Ok(())
    }

    /// Registers standard input's UUIDs as they arrive, until end of input; bad lines are
    /// reported and skipped.
    async fn register_stdin(&mut self, writer: &Writer) -> Result<(), Box<dyn std::error::Error>> {
        let (lines, mut arriving) = mpsc::unbounded_channel();
        // A blocking reader thread; if we stop early it is left blocked until the process exits.
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a line that is not UTF-8 is bad input, not a read error.
            for line in std::io::stdin().lock().split(b'\n') {
                let stop = line.is_err();
                if lines.send(line).is_err() || stop {
                    break;
                }
            }
        });
        let mut line_number = 0usize;
        while let Some(first) = arriving.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = arriving.try_recv() {
                batch.push(more);
            }
            let mut orders = Vec::with_capacity(batch.len());
            let mut unreadable = None;
            for line in batch {
                line_number += 1;
                let bytes = match line {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        unreadable = Some(error);
                        break;
                    }
                };
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                match Uuid::try_parse(text) {
                    Ok(order) => orders.push(order),
                    Err(_) => {
                        self.skipped += 1;
                        eprintln!(
                            "orderwatch: standard input line {line_number}: {text:?} is not an \
                             order UUID; skipped"
                        );
                    }
                }
            }
            self.register(writer, orders).await?;
            if let Some(error) = unreadable {
                return Err(format!(
                    "cannot read standard input: {error} ({} order(s) before it are watched)",
                    self.total
                )
                .into());
            }
        }
        Ok(())
    }
}

/// The UUIDs given as arguments.
pub(super) fn parse_orders<'a>(
    arguments: impl Iterator<Item = &'a String>,
) -> Result<Vec<Uuid>, String> {
    arguments
        .map(|text| {
            Uuid::try_parse(text.trim()).map_err(|_| format!("{text:?} is not an order UUID"))
        })
        .collect()
}
