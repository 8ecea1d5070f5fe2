//! `orderwatch unwatch ORDER_UUID…`: stop polling orders the partner no longer cares about
//! (`orders.unwatched_at`); webhooks still update them, and `orderwatch watch` resumes polling.

use std::process::ExitCode;

use super::watch::parse_orders;
use super::{
    ConfigFile, EXIT_CONFIG, EXIT_FAILURE, init_command_logging, load_database_config, with_writer,
};

/// Stop polling orders (webhooks still update them; `watch` resumes polling).
///
/// Prints `unwatched UUID` for each stored order; an order the database does not hold is
/// reported on stderr and the command exits 1.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Order UUIDs.
    #[arg(required = true, value_name = "ORDER_UUID")]
    orders: Vec<String>,
}

pub(super) fn unwatch(config_file: &ConfigFile, args: Args) -> ExitCode {
    let config = match load_database_config(config_file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let orders = match parse_orders(args.orders.iter()) {
        Ok(orders) => orders,
        Err(message) => {
            eprintln!("orderwatch: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_command_logging(&config);
    let result = with_writer(&config, async |writer| {
        Ok(writer.unwatch(orders.clone()).await?)
    });
    let known = match result {
        Ok(known) => known,
        Err(error) => {
            eprintln!("orderwatch: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut unknown = 0;
    for order in &orders {
        if known.contains(order) {
            println!("unwatched {order}");
        } else {
            unknown += 1;
            eprintln!("orderwatch: no order {order} is stored; nothing to unwatch");
        }
    }
    if unknown > 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}
