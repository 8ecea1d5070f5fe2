//! Property tests of the pure ordering rule: in progress.
