//! The Musement partner API's wire format as a fake server speaks it
//! (`shared/reference/musement-api.md`): the `GET /orders/{uuid}` body ([`Order`]), the login
//! grant ([`Grant`]), the `{code, message}` errors ([`ApiError`]), the routes under `/api/v3`
//! with their header and token checks ([`respond`], driven by a fake's [`Backend`]), the `Date`
//! header, and the accept loop ([`serve`], [`accept_loop`]).
//!
//! # Who uses it
//!
//! Three fakes with different jobs, one wire format:
//!
//! - the test fake (`tests/it/fake_musement.rs`): orders a test edits, scripted answers, faults
//!   below HTTP, a record of every request;
//! - the simulator (`src/bin/musement-sim/`): orders with lifecycles played in real time,
//!   random faults, expiring tokens, webhook re-sends;
//! - the bench fake (`crates/orderwatch-bench/src/fake_api.rs`): a fixed backlog of pending
//!   orders, a fixed latency, call counters.
//!
//! This is the *server* side. The client (`src/musement/`) parses on its own, leniently and
//! through a personal-data allowlist; nothing here is shared with it, so a mistake in one is not
//! silently mirrored in the other. What keeps the two in agreement: `tests/it/musement_client.rs`
//! and `tests/it/simulator.rs` run the real client against the test fake and the simulator, the
//! reconcile benchmark's smoke run fails unless every pass parsed every order, and the unit
//! tests here pin the error bodies and the login grant to `fixtures/musement/` and the order to
//! the reference's §9 example (`fixtures/musement/order-two-items.json`).
//!
//! # Why a crate, and why a normal dependency of `orderwatch`
//!
//! The test fake and the bench crate could take any kind of dependency, but `musement-sim` must
//! stay a binary of the main package (the convergence tests run it through
//! `CARGO_BIN_EXE_musement-sim`), and a binary sees only its package's normal dependencies. So
//! the main package depends on this crate like on any other: the tests (integration tests see
//! normal dependencies) and the simulator use it; the `orderwatch` library and binary never
//! name it, so none of it is linked into the `orderwatch` binary. The cost is compiling this
//! small crate (whose own dependencies the main package has anyway) when building orderwatch,
//! in the Docker image too (`deploy/Dockerfile` sends `crates/`). The alternatives were worse:
//! an optional dependency behind a feature that `musement-sim` requires would make plain `cargo
//! test` fail to find the binary unless the feature is on by default, and the Docker build
//! would still need this manifest; including one file three times with `#[path]` compiles three
//! copies and hides the sharing.

mod api;
mod order;
mod serve;

pub use api::{
    ApiError, Backend, Endpoint, Grant, MAX_REQUEST_BODY, PREFIX, bearer_token, error, httpdate,
    json_response, method_not_allowed, read_body, respond, with_date,
};
pub use order::{Customer, Item, Order, Product, musement_time, voucher_url};
pub use serve::{accept_loop, serve};
