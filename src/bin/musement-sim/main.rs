//! `musement-sim`: a simulated Musement for trying orderwatch (and testing it) without
//! Musement credentials. See `musement-sim --help` and the README.
//!
//! - `config`: the command line, checked;
//! - `run`: a run (or `compare`), from the parsed command line to the exit code;
//! - `world`: orders and item lifecycles planned from the seed, then played in real time;
//! - `api`: the partner API on loopback, with faults;
//! - `webhooks`: the pusher, with retries and faults;
//! - `truth`: the counters and the truth JSON;
//! - `compare`: `musement-sim compare`, an orderwatch database against the truth.
//!
//! `main` only parses the command line; [`run::main`] does the rest.

mod api;
mod compare;
mod config;
mod run;
mod truth;
mod webhooks;
mod world;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    run::main(config::Args::parse())
}
