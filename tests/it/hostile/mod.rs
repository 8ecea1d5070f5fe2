//! Hostile HTTP input (issue 5, item 3): whatever arrives on the socket, the answer is one precise
//! status, nothing half-read is stored, and the server neither reads forever nor hangs. Wire-level
//! cases use the raw client in `helpers::wire`; every read is bounded by a timeout so a hang fails
//! the test. One module per theme.
//!
//! Already covered in `receiver.rs` (not repeated here): the bad-body fixtures (malformed JSON, not
//! an object, invalid UTF-8 inside a JSON string, missing/null fields, non-numeric, fractional,
//! negative (`-3`) and too large string versions, non-digit `order_id`, unparseable timestamps,
//! non-UUIDs, empty status and `order_version`), missing auth, `Basic` alone, bad base64, no
//! colon, one byte off in user or password, `Bearer`, 413 for a declared and a small chunked body,
//! 408 for a body that stops, headers that never finish, 415, 404 and 405.

mod auth;
mod connections;
mod headers;
mod json;
mod logs;
mod protocol;
mod sizes;
mod slow;
mod timestamps;
