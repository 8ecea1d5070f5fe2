//! The one way a test skips a check for want of a tool or a capability, and the switch that
//! makes such a skip a failure where everything should be there (CI sets it).
//!
//! - [`NO_SKIP`] set (non-empty): every skip fails the test, except the checks named in
//!   [`MAY_SKIP`].
//! - [`SKIP_LOG`]: a file every skip appends its line to, so CI can list what was skipped
//!   (the test runner hides what a passing test prints).

use std::io::Write;

/// Set to make every skip a failure.
pub const NO_SKIP: &str = "ORDERWATCH_TEST_NO_SKIP";

/// Comma-separated names of checks that may still skip under [`NO_SKIP`] (the `what` of
/// [`skip`], e.g. `hadolint,docker build`).
pub const MAY_SKIP: &str = "ORDERWATCH_TEST_MAY_SKIP";

/// A file every skip appends `SKIPPED what: why` to.
pub const SKIP_LOG: &str = "ORDERWATCH_TEST_SKIP_LOG";

/// Skips the check `what` because of `why`: says so, or fails the test under [`NO_SKIP`]
/// unless `what` is named in [`MAY_SKIP`]. The caller returns right after.
pub fn skip(what: &str, why: &str) {
    let line = format!("SKIPPED {what}: {why}");
    let no_skip = std::env::var(NO_SKIP).is_ok_and(|v| !v.is_empty());
    let may_skip = std::env::var(MAY_SKIP).unwrap_or_default();
    let allowed = may_skip.split(',').any(|name| name.trim() == what);
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        let verdict = if no_skip && !allowed { " (FAILED)" } else { "" };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut log| writeln!(log, "{line}{verdict}"))
            .unwrap_or_else(|e| panic!("{SKIP_LOG}={}: {e}", path.to_string_lossy()));
    }
    assert!(
        !no_skip || allowed,
        "{line}; {NO_SKIP} is set and {what:?} is not in {MAY_SKIP}={may_skip:?}: install \
         what it needs"
    );
    eprintln!("{line}");
}
