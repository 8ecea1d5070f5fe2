//! `orderwatch-bench`: the pieces of the benchmarks described in `BENCHMARKS.md`.
//!
//! - `load`: a webhook load generator (N keep-alive HTTP/1.1 connections, closed loop or a fixed
//!   `--rate`, latency from the scheduled send time) that checks the ledger against the SQLite
//!   file or the PostgreSQL database at the end;
//! - `noop`: a hyper server that reads the whole body and answers 200, the HTTP ceiling;
//! - `ingest-report`: the ingest table and SVG chart from the `load` results of a run;
//! - `prepare-pg`: a PostgreSQL database holding the rows of a `prepare`d SQLite file;
//! - `prepare`, `reconcile`: a database with P pending orders and F final items, and timed
//!   reconciler passes against a built-in fake Musement API with a fixed latency;
//! - `startup`: time from process start to `/readyz` answering 200;
//! - `forward`: signed webhooks out (`[[forward]]`): a receiver standing in for a partner, a
//!   plain client posting to it (the baseline), and the lag from webhook to delivery;
//! - `free-port`, `wait-ready`, `result-field`: small helpers for the `scripts/bench-*` drivers.
//!
//! Everything talks to loopback addresses only.

mod fake_api;
mod forward;
mod ingest;
mod load;
mod postgres;
mod reconcile;
mod startup;
mod store_alone;
mod svg;
mod util;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Benchmarks for orderwatch (loopback only).
#[derive(Debug, Parser)]
#[command(name = "orderwatch-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Post distinct, valid webhooks over N keep-alive connections; report req/s and latency;
    /// check that every acknowledged webhook is in the database.
    Load(load::LoadArgs),
    /// A no-op HTTP/1.1 server: reads the whole body, answers 200 (the HTTP ceiling).
    Noop(ingest::NoopArgs),
    /// Print the ingest table and write the SVG chart from a folder of `load --json` results.
    IngestReport(ingest::ReportArgs),
    /// Create a database with P pending orders (due for a poll) and F final items.
    Prepare(reconcile::PrepareArgs),
    /// Give a PostgreSQL database the rows of a SQLite fixture made by `prepare`.
    PreparePg(postgres::PreparePgArgs),
    /// Time reconciler passes against a fake Musement API with a fixed latency.
    Reconcile(reconcile::ReconcileArgs),
    /// Time from `orderwatch run` starting to `/readyz` answering 200.
    Startup(startup::StartupArgs),
    /// Commit batches of webhooks through the store's own batch path, no HTTP and no queue
    /// (the storage limit the HTTP run is compared with).
    StoreAlone(store_alone::StoreAloneArgs),
    /// Signed webhooks out (`[[forward]]`): a no-op receiver, the baseline client, the lag
    /// from webhook to delivery, and their report.
    Forward(forward::ForwardArgs),
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Wait until a loopback URL answers 200 (exit 1 on timeout).
    WaitReady {
        /// e.g. http://127.0.0.1:8080/readyz
        #[arg(long)]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "30s", value_parser = util::parse_duration)]
        timeout: Duration,
    },
    /// Print one field of a `load --json` result (for the scripts): a number, a string, or a
    /// list of numbers separated by spaces.
    ResultField {
        /// The JSON file.
        #[arg(long)]
        json: std::path::PathBuf,
        /// The field, e.g. `rps`.
        #[arg(long)]
        field: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::Noop(args) => ingest::noop(args),
        Command::IngestReport(args) => ingest::report(args),
        Command::Prepare(args) => reconcile::prepare_command(args),
        Command::PreparePg(args) => postgres::prepare_command(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Startup(args) => startup::run(args),
        Command::StoreAlone(args) => store_alone::run(args),
        Command::Forward(args) => forward::run(args),
        Command::FreePort => util::free_port().map(|port| {
            println!("{port}");
            ExitCode::SUCCESS
        }),
        Command::WaitReady { url, timeout } => util::wait_ready(&url, timeout),
        Command::ResultField { json, field } => ingest::result_field(&json, &field),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("orderwatch-bench: {error}");
            ExitCode::from(2)
        }
    }
}
