//! orderwatch keeps a durable, reconciled SQLite copy of Musement order-item statuses.
//!
//! Webhooks ([`receiver`]) and, later, polls of `GET /orders/{uuid}` both become an
//! [`observation::Observation`]; the single [`store::writer`] applies each one through
//! [`store::apply`], whose ordering rule is the pure [`store::decide`]. [`app`] wires it
//! together for `main` and for the tests.

pub mod app;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod musement;
pub mod observation;
pub mod receiver;
pub mod reconciler;
pub mod reload;
pub mod signals;
pub mod store;
pub mod systemd;
pub mod telemetry;

/// The commit this build comes from: `git`'s at build time, else the `ORDERWATCH_COMMIT`
/// variable given to the build (a Docker context has no `.git`), else `unknown` (build.rs).
pub const BUILD_COMMIT: &str = match option_env!("ORDERWATCH_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// This package's version, as `--version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
