//! `orderwatch watch ORDER_UUID…|-`: register orders so they are polled before any webhook.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use uuid::Uuid;

use super::{EXIT_CONFIG, EXIT_FAILURE, load_config, runtime};
use crate::clock::SystemClock;
use crate::startup;

pub(super) fn watch(config_path: &Path, orders: &[String]) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let orders = match parse_orders(orders) {
        Ok(orders) => orders,
        Err(message) => {
            eprintln!("orderwatch: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    startup::init_logging(&config);
    let result = runtime().block_on(async {
        let (writer, writer_thread) = startup::open_store(&config, Arc::new(SystemClock)).await?;
        let new = writer.watch(orders.clone()).await;
        writer_thread.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(new?)
    });
    match result {
        Ok(new) => {
            println!("watching {} order(s), {new} new", orders.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("orderwatch: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// UUIDs from the arguments, or one per line from standard input for `-`.
fn parse_orders(arguments: &[String]) -> Result<Vec<Uuid>, String> {
    let mut texts = Vec::new();
    for argument in arguments {
        if argument == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| format!("cannot read standard input: {e}"))?;
                if !line.trim().is_empty() {
                    texts.push(line.trim().to_owned());
                }
            }
        } else {
            texts.push(argument.clone());
        }
    }
    if texts.is_empty() {
        return Err("no order UUIDs given".into());
    }
    texts
        .iter()
        .map(|text| Uuid::try_parse(text).map_err(|_| format!("{text:?} is not an order UUID")))
        .collect()
}
