//! orderwatch keeps a durable, reconciled SQLite copy of Musement order-item statuses.
//!
//! Webhooks ([`receiver`]) and, later, polls of `GET /orders/{uuid}` both become an
//! [`observation::Observation`]; the single [`store::writer`] applies them, a batch at a time,
//! through [`store::apply_batch`], whose ordering rule is the pure [`store::decide`]. [`app`] wires it
//! together for `main` and for the tests.

pub mod api;
pub mod app;
pub mod backoff;
pub mod build_info;
pub mod cli;
pub mod clock;
pub mod config;
pub mod forward;
pub mod leadership;
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
