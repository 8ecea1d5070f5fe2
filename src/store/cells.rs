//! Reading stored cells the write paths depend on, without trusting them. The tables are a
//! documented contract and people edit them by hand in `sqlite3`, so a cell may hold what
//! orderwatch never writes (`datetime('now')` is accepted as a time; `'yesterday'`, bytes that
//! are not UTF-8 or an unknown source are not). A cell that cannot be read must not block its
//! item or its order: each reader here logs it once at ERROR, naming table, column, key and
//! value, and returns [`Unreadable`]; the caller treats the value as unknown, and the next
//! observation overwrites it (`item_events` still has every observation).
//!
//! Every store function that reads a row uses these readers.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;

use crate::clock::from_db_text;
use crate::observation::{Source, Status};

/// An `orders` cell.
pub fn order_place<'a>(column: &'static str, order_uuid: &'a str) -> Place<'a> {
    Place {
        table: "orders",
        column,
        key: order_uuid,
    }
}

/// Where a cell is, for the one ERROR line an unreadable cell gets.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The table (`order_items`, `orders`).
    pub table: &'static str,
    /// The column.
    pub column: &'static str,
    /// The row's primary key: an item or order UUID.
    pub key: &'a str,
}

/// A cell that could not be read (already logged): its value is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// A read cell: `Ok(None)` for NULL.
pub type Read<T> = Result<Option<T>, Unreadable>;

/// Text; anything else (a number, a blob, bytes that are not UTF-8) is unreadable.
pub fn text<'v>(value: ValueRef<'v>, place: Place<'_>) -> Read<&'v str> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| report(place, value, "not UTF-8 text")),
        _ => Err(report(place, value, "not text")),
    }
}

/// A time (see [`from_db_text`] for the forms accepted).
pub fn time(value: ValueRef<'_>, place: Place<'_>) -> Read<DateTime<Utc>> {
    let Some(text) = text(value, place)? else {
        return Ok(None);
    };
    from_db_text(text).map(Some).map_err(|_| {
        report(
            place,
            value,
            "not a time like 2018-12-10T13:12:40.000Z or 2018-12-10 13:12:40",
        )
    })
}

/// An item status: any non-empty text, as both ingest paths store any status Musement sends
/// (neither ever stores an empty one).
pub fn status(value: ValueRef<'_>, place: Place<'_>) -> Read<Status> {
    match text(value, place)? {
        None => Ok(None),
        Some("") => Err(report(place, value, "an empty status")),
        Some(text) => Ok(Some(Status::parse(text))),
    }
}

/// `webhook` or `poll`.
pub fn source(value: ValueRef<'_>, place: Place<'_>) -> Read<Source> {
    match text(value, place)? {
        None => Ok(None),
        Some(text) => Source::parse(text)
            .map(Some)
            .ok_or_else(|| report(place, value, "neither 'webhook' nor 'poll'")),
    }
}

/// A row's key as text for naming it in a log line, whatever the cell holds (never fails).
pub fn key(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => describe(other),
    }
}

/// A UUID (a key).
pub fn uuid(value: ValueRef<'_>, place: Place<'_>) -> Read<uuid::Uuid> {
    match text(value, place)? {
        None => Ok(None),
        Some(text) => uuid::Uuid::try_parse(text)
            .map(Some)
            .map_err(|_| report(place, value, "not a UUID")),
    }
}

/// An integer (a version).
pub fn integer(value: ValueRef<'_>, place: Place<'_>) -> Read<i64> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(n) => Ok(Some(n)),
        _ => Err(report(place, value, "not an integer")),
    }
}

/// A JSON array of strings (`vouchers`).
pub fn string_list(value: ValueRef<'_>, place: Place<'_>) -> Read<Vec<String>> {
    let Some(text) = text(value, place)? else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|_| report(place, value, "not a JSON array of strings"))
}

/// Cells already logged, so that a cell nothing overwrites (one only polls write, or a sibling
/// item read for every webhook of its order) is logged once per process, not on every request.
/// Bounded: forgotten all at once when full (a few repeated lines at worst).
static REPORTED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);
/// How many distinct bad cells [`REPORTED`] remembers.
const MAX_REPORTED: usize = 10_000;
/// How much of a bad value the log line shows.
const SHOWN_CHARS: usize = 120;

/// Logs `value` at `place` once at ERROR and returns [`Unreadable`].
fn report(place: Place<'_>, value: ValueRef<'_>, problem: &str) -> Unreadable {
    let shown = describe(value);
    let first_time = {
        let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        if reported.len() >= MAX_REPORTED {
            reported.clear();
        }
        reported.insert(format!(
            "{}\u{0}{}\u{0}{}\u{0}{shown}",
            place.table, place.column, place.key
        ))
    };
    if first_time {
        tracing::error!(
            table = place.table,
            column = place.column,
            key = place.key,
            value = %shown,
            problem,
            "cannot read a stored value; treating it as unknown until the next observation \
             overwrites it (item_events keeps every observation)"
        );
    }
    Unreadable
}

/// A bad value as the log shows it: text escaped and quoted, blobs in hex, cut to
/// [`SHOWN_CHARS`].
fn describe(value: ValueRef<'_>) -> String {
    let shown = match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Text(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        ValueRef::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("x'{hex}'")
        }
    };
    match shown.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place<'static> {
        Place {
            table: "order_items",
            column: "as_of",
            key: "cells-test",
        }
    }

    #[test]
    fn readable_forms_are_read_and_others_are_unreadable() {
        let at = from_db_text("2024-01-01T12:00:00.000Z").unwrap();
        assert_eq!(
            time(ValueRef::Text(b"2024-01-01 12:00:00"), place()),
            Ok(Some(at))
        );
        assert_eq!(time(ValueRef::Null, place()), Ok(None));
        assert_eq!(time(ValueRef::Text(b"yesterday"), place()), Err(Unreadable));
        assert_eq!(time(ValueRef::Integer(5), place()), Err(Unreadable));
        assert_eq!(text(ValueRef::Text(b"\xff"), place()), Err(Unreadable));
        assert_eq!(status(ValueRef::Text(b""), place()), Err(Unreadable));
        assert_eq!(
            status(ValueRef::Text(b"ON_HOLD"), place()),
            Ok(Some(Status::Other("ON_HOLD".into())))
        );
        assert_eq!(
            source(ValueRef::Text(b"poll"), place()),
            Ok(Some(Source::Poll))
        );
        assert_eq!(source(ValueRef::Text(b"Poll"), place()), Err(Unreadable));
        assert_eq!(integer(ValueRef::Real(1.5), place()), Err(Unreadable));
    }

    #[test]
    fn long_values_are_cut_and_blobs_shown_in_hex() {
        assert_eq!(describe(ValueRef::Blob(&[0xff, 0x01])), "x'ff01'");
        let long = "x".repeat(500);
        let shown = describe(ValueRef::Text(long.as_bytes()));
        assert_eq!(shown.chars().count(), SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
