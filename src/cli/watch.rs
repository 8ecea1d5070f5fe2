//! `orderwatch watch ORDER_UUID…|-`: register orders so they are polled before any webhook.
//!
//! With `-`, standard input is read as a stream: each line is registered as soon as it arrives
//! (lines that arrive together share one write), so `musement-sim | orderwatch watch -` or a
//! partner's order feed registers every order right after its creation, not at end of input.
//! A line that is not a UUID stops the command with exit 2, a standard input that cannot be
//! read with exit 1; the orders before it stay watched.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{EXIT_CONFIG, EXIT_FAILURE, load_database_config, runtime};
use crate::clock::SystemClock;
use crate::store::observer::Unobserved;
use crate::store::writer::Writer;
use crate::{store, telemetry};

/// Why watching stopped early.
enum Failure {
    /// Bad input (exit 2).
    Input(String),
    /// The store failed, or standard input could not be read (exit 1).
    Runtime(Box<dyn std::error::Error>),
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Runtime(Box::new(error))
    }
}

pub(super) fn watch(config_path: &Path, orders: &[String]) -> ExitCode {
    let config = match load_database_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let from_stdin = orders.iter().any(|o| o == "-");
    let listed = match parse_orders(orders.iter().filter(|o| *o != "-")) {
        Ok(listed) => listed,
        Err(message) => {
            eprintln!("orderwatch: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init_logging(&config);
    let result = runtime().block_on(async {
        let (writer, writer_thread) =
            store::open_writer(&config, Arc::new(SystemClock), Arc::new(Unobserved))
                .await
                .map_err(|e| Failure::Runtime(Box::new(e)))?;
        let mut counts = (0, 0);
        let mut result = register(&writer, listed, &mut counts).await;
        if result.is_ok() && from_stdin {
            result = register_stdin(&writer, &mut counts).await;
        }
        writer_thread.shutdown().await;
        result?;
        Ok::<_, Failure>(counts)
    });
    match result {
        Ok((0, _)) => {
            eprintln!("orderwatch: no order UUIDs given");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok((total, new)) => {
            println!("watching {total} order(s), {new} new");
            ExitCode::SUCCESS
        }
        Err(Failure::Input(message)) => {
            eprintln!("orderwatch: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("orderwatch: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Registers `orders`, adding to `(total, new)`.
async fn register(
    writer: &Writer,
    orders: Vec<Uuid>,
    counts: &mut (usize, usize),
) -> Result<(), Failure> {
    if orders.is_empty() {
        return Ok(());
    }
    counts.0 += orders.len();
    counts.1 += writer.watch(orders).await?;
    Ok(())
}

/// Registers standard input's UUIDs as they arrive, until end of input or a bad line.
async fn register_stdin(writer: &Writer, counts: &mut (usize, usize)) -> Result<(), Failure> {
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
        let mut bad = None;
        let mut unreadable = None;
        for line in batch {
            line_number += 1;
            let text = match line {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => {
                    unreadable = Some(error);
                    break;
                }
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match Uuid::try_parse(text) {
                Ok(order) => orders.push(order),
                Err(_) => {
                    bad = Some(format!(
                        "standard input line {line_number}: {text:?} is not an order UUID"
                    ));
                    break;
                }
            }
        }
        register(writer, orders, counts).await?;
        if let Some(error) = unreadable {
            return Err(Failure::Runtime(
                format!(
                    "cannot read standard input: {error} ({} order(s) before it are watched)",
                    counts.0
                )
                .into(),
            ));
        }
        if let Some(bad) = bad {
            return Err(Failure::Input(format!(
                "{bad} ({} order(s) before it are watched)",
                counts.0
            )));
        }
    }
    Ok(())
}

/// The UUIDs given as arguments.
fn parse_orders<'a>(arguments: impl Iterator<Item = &'a String>) -> Result<Vec<Uuid>, String> {
    arguments
        .map(|text| {
            Uuid::try_parse(text.trim()).map_err(|_| format!("{text:?} is not an order UUID"))
        })
        .collect()
}
