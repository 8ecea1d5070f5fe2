//! What this binary is: its version and the commit it was built from (by `build.rs`: `git`,
//! else the `ORDERWATCH_COMMIT` build argument, else `unknown`). Shown by
//! `orderwatch_build_info` and the start-up log line.

/// The package version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short commit hash the binary was built from, or `unknown`.
pub const COMMIT: &str = env!("ORDERWATCH_COMMIT");
