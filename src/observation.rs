//! The one value both ingest paths produce: an [`Observation`] of one order item's status.
//!
//! The receiver builds it from a webhook body ([`Observation::from_webhook`]); the reconciler
//! builds it from a polled order. Everything downstream (the ordering rule, the store, the event
//! log) sees only this type.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, FixedOffset, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// An order item status. The six documented values are variants; anything else Musement may
/// add later is kept verbatim in `Other` (stored, logged), never rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Ok,
    Ko,
    RefundStarted,
    Refunded,
    CancellationError,
    Other(String),
}

impl Status {
    /// The six statuses Musement documents, in lifecycle order.
    pub const DOCUMENTED: [&'static str; 6] = [
        "PENDING",
        "OK",
        "KO",
        "REFUND_STARTED",
        "REFUNDED",
        "CANCELLATION_ERROR",
    ];

    /// Parses a status string; unknown values become `Other`.
    pub fn parse(text: &str) -> Self {
        match text {
            "PENDING" => Self::Pending,
            "OK" => Self::Ok,
            "KO" => Self::Ko,
            "REFUND_STARTED" => Self::RefundStarted,
            "REFUNDED" => Self::Refunded,
            "CANCELLATION_ERROR" => Self::CancellationError,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire and database spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::Ok => "OK",
            Self::Ko => "KO",
            Self::RefundStarted => "REFUND_STARTED",
            Self::Refunded => "REFUNDED",
            Self::CancellationError => "CANCELLATION_ERROR",
            Self::Other(text) => text,
        }
    }

    /// True for a value outside the documented six.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Other(_))
    }
}

/// A stored status as a person should see it: printable ASCII as is, every other character
/// (spaces, controls, zero-width and bidi characters, letters of other scripts) as `\u{hex}`,
/// and `\` as `\\`. Statuses are ASCII words, so a look-alike such as Cyrillic `ОК` or
/// `OK` + U+200B shows as `\u{41e}\u{41a}` or `OK\u{200b}`, never as `OK`. For terminals and
/// logs only; the database, JSON and CSV keep the exact text.
pub fn escape_status(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| c.is_ascii_graphic() && c != '\\') {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        match c {
            '\\' => shown.push_str("\\\\"),
            c if c.is_ascii_graphic() => shown.push(c),
            c => {
                let _ = write!(shown, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(shown)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which ingest path an observation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Webhook,
    Poll,
}

impl Source {
    /// The database spelling (`webhook` / `poll`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Poll => "poll",
        }
    }

    /// Parses the database spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "webhook" => Some(Self::Webhook),
            "poll" => Some(Self::Poll),
            _ => None,
        }
    }
}

/// Where an observation sits in Musement's history of the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A webhook: Musement's per-item counter and the item's update time.
    Webhook {
        /// `order_item_version`, at most `i64::MAX` (SQLite's integer range).
        version: i64,
        /// `order_item_updated`, as Musement sent it (the rule clamps far-future values).
        updated: DateTime<Utc>,
    },
    /// A poll of `GET /orders/{uuid}`: no version, only the response's `Date` header.
    Poll {
        /// Musement's server time of the response (our clock when the header is missing).
        as_of: DateTime<Utc>,
    },
}

impl Position {
    /// The ingest path this position belongs to.
    pub fn source(&self) -> Source {
        match self {
            Self::Webhook { .. } => Source::Webhook,
            Self::Poll { .. } => Source::Poll,
        }
    }

    /// The webhook version, if any.
    pub fn version(&self) -> Option<i64> {
        match self {
            Self::Webhook { version, .. } => Some(*version),
            Self::Poll { .. } => None,
        }
    }
}

/// Order-level facts that came with an observation; each path fills what it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFacts {
    /// Webhook `order_id` (a numeric string; not the `MUS…` identifier).
    pub id: Option<String>,
    /// Webhook `order_version`.
    pub version: Option<i64>,
    /// Webhook `order_created`.
    pub created: Option<DateTime<Utc>>,
    /// Webhook `order_updated`.
    pub updated: Option<DateTime<Utc>>,
    /// Polled order `status` (only a poll has it).
    pub status: Option<String>,
    /// Polled order `identifier`, e.g. `MUS0738876` (only a poll has it).
    pub identifier: Option<String>,
}

/// Item facts only a poll gives (a webhook has none: every field `None`). Stored beside the
/// reconciled state when the rule says the poll is the newest word on the item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFacts {
    /// Voucher URLs (`items[].vouchers[].url`); `None` before any poll.
    pub vouchers: Option<Vec<String>>,
    /// `product.id`.
    pub product_id: Option<String>,
    /// `product.title`.
    pub product_title: Option<String>,
    /// `product.date`, local activity time as sent (`2018-09-01 15:30`).
    pub product_date: Option<String>,
    /// `product.max_confirmation_time`, an ISO-8601 duration (`P0D` = instant).
    pub max_confirmation_time: Option<String>,
}

impl ItemFacts {
    /// These facts written over `stored`: each one these leave out keeps its stored value (a
    /// response that omits the product does not erase it).
    pub fn over(&self, stored: &ItemFacts) -> ItemFacts {
        fn or<T: Clone>(new: &Option<T>, old: &Option<T>) -> Option<T> {
            new.as_ref().or(old.as_ref()).cloned()
        }
        ItemFacts {
            vouchers: or(&self.vouchers, &stored.vouchers),
            product_id: or(&self.product_id, &stored.product_id),
            product_title: or(&self.product_title, &stored.product_title),
            product_date: or(&self.product_date, &stored.product_date),
            max_confirmation_time: or(&self.max_confirmation_time, &stored.max_confirmation_time),
        }
    }
}

/// One observed state of one order item, from either ingest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The order item's UUID.
    pub item: Uuid,
    /// The UUID of the order the item belongs to.
    pub order: Uuid,
    /// The item status observed.
    pub status: Status,
    /// Version and time (webhook) or response time (poll).
    pub position: Position,
    /// Webhook `order_item_created`, when known.
    pub item_created: Option<DateTime<Utc>>,
    /// What the observation said about the order.
    pub order_facts: OrderFacts,
    /// What a poll said about the item besides its status (none for a webhook).
    pub item_facts: ItemFacts,
    /// When orderwatch received it, by its own clock.
    pub received_at: DateTime<Utc>,
    /// The JSON kept in the event log: the webhook body as received, or the polled item without
    /// personal data.
    pub raw: String,
}

/// Why a webhook body was refused, naming the field at fault. Maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PayloadError {
    /// The offending field (`body` when the whole body is at fault).
    pub field: &'static str,
    /// What is wrong with it, in a few words.
    pub reason: String,
}

impl PayloadError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl Observation {
    /// An observation of `status` at `position`, with no facts and no raw text: what the rule
    /// needs and nothing else (property tests, the fuzzer, benchmarks of the rule).
    pub fn bare(
        item: Uuid,
        order: Uuid,
        status: Status,
        position: Position,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self {
            item,
            order,
            status,
            position,
            item_created: None,
            order_facts: OrderFacts::default(),
            item_facts: ItemFacts::default(),
            received_at,
            raw: String::new(),
        }
    }

    /// Parses a Musement order-item webhook body (the ten documented fields; extra fields are
    /// ignored) received at `received_at`.
    pub fn from_webhook(body: &[u8], received_at: DateTime<Utc>) -> Result<Self, PayloadError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| PayloadError::new("body", format!("not UTF-8: {e}")))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| PayloadError::new("body", format!("malformed JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(PayloadError::new("body", "expected a JSON object"));
        };
        let order_facts = OrderFacts {
            id: Some(digits(&fields, "order_id")?),
            version: Some(version(&fields, "order_version")?),
            created: Some(timestamp(&fields, "order_created")?),
            updated: Some(timestamp(&fields, "order_updated")?),
            status: None,
            identifier: None,
        };
        Ok(Self {
            item: uuid(&fields, "order_item_uuid")?,
            order: uuid(&fields, "order_uuid")?,
            status: status(&fields, "order_item_status")?,
            position: Position::Webhook {
                version: version(&fields, "order_item_version")?,
                updated: timestamp(&fields, "order_item_updated")?,
            },
            item_created: Some(timestamp(&fields, "order_item_created")?),
            order_facts,
            item_facts: ItemFacts::default(),
            received_at,
            raw: text.to_owned(),
        })
    }
}

fn required<'a>(
    fields: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Value, PayloadError> {
    match fields.get(field) {
        None | Some(Value::Null) => Err(PayloadError::new(field, "missing")),
        Some(value) => Ok(value),
    }
}

fn string<'a>(
    fields: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, PayloadError> {
    match required(fields, field)? {
        Value::String(text) if text.is_empty() => Err(PayloadError::new(field, "empty string")),
        Value::String(text) => Ok(text),
        other => Err(PayloadError::new(
            field,
            format!("expected a string, got {}", json_kind(other)),
        )),
    }
}

fn uuid(fields: &Map<String, Value>, field: &'static str) -> Result<Uuid, PayloadError> {
    let text = string(fields, field)?;
    Uuid::try_parse(text).map_err(|_| PayloadError::new(field, "not a UUID"))
}

/// Any status string is kept, but one with control characters or surrounding blanks is not a
/// status: it would be polled forever and could forge log lines.
fn status(fields: &Map<String, Value>, field: &'static str) -> Result<Status, PayloadError> {
    let text = string(fields, field)?;
    if text.chars().any(char::is_control) || text.trim() != text {
        return Err(PayloadError::new(
            field,
            "contains control characters or surrounding blanks",
        ));
    }
    Ok(Status::parse(text))
}

/// A non-negative integer sent as a string of digits (documented) or as a bare JSON number.
fn digits(fields: &Map<String, Value>, field: &'static str) -> Result<String, PayloadError> {
    match required(fields, field)? {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(text.clone())
        }
        Value::String(text) if text.is_empty() => Err(PayloadError::new(field, "empty string")),
        Value::String(_) => Err(PayloadError::new(field, "expected a string of digits")),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        Value::Number(_) => Err(PayloadError::new(
            field,
            "expected a non-negative whole number",
        )),
        other => Err(PayloadError::new(
            field,
            format!("expected a string of digits, got {}", json_kind(other)),
        )),
    }
}

/// A version counter: digits that fit SQLite's signed 64-bit integers.
fn version(fields: &Map<String, Value>, field: &'static str) -> Result<i64, PayloadError> {
    let text = digits(fields, field)?;
    text.parse::<i64>().map_err(|_| {
        PayloadError::new(
            field,
            format!("exceeds the largest supported version {}", i64::MAX),
        )
    })
}

/// Musement sends `2018-12-10T13:12:40+0000`; RFC 3339 (`+00:00`, `Z`, fractions) is accepted too.
fn timestamp(
    fields: &Map<String, Value>,
    field: &'static str,
) -> Result<DateTime<Utc>, PayloadError> {
    let text = string(fields, field)?;
    parse_musement_time(text).ok_or_else(|| {
        PayloadError::new(
            field,
            "not a timestamp like 2018-12-10T13:12:40+0000 or RFC 3339",
        )
    })
}

/// Parses a Musement timestamp in either accepted form. Years outside 0000–9999 are refused:
/// they cannot be stored as fixed-width text that sorts as time.
pub fn parse_musement_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::<FixedOffset>::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// "a string", "an array"…: how field errors name what arrived instead.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musement_and_rfc3339_times_agree() {
        let musement = parse_musement_time("2018-12-10T13:12:40+0000").unwrap();
        for other in [
            "2018-12-10T13:12:40+00:00",
            "2018-12-10T13:12:40Z",
            "2018-12-10T15:12:40+0200",
            "2018-12-10T13:12:40.000Z",
        ] {
            assert_eq!(parse_musement_time(other), Some(musement), "{other}");
        }
        assert_eq!(parse_musement_time("2018-12-10 13:12:40"), None);
        assert_eq!(parse_musement_time("-0001-01-01T00:00:00+0000"), None);
        assert!(
            parse_musement_time("0001-01-01T00:00:00+0000").is_some(),
            "far past is kept"
        );
        assert_eq!(parse_musement_time("yesterday"), None);
    }

    #[test]
    fn look_alike_statuses_are_escaped_for_people_and_real_ones_are_not() {
        for (text, shown) in [
            ("OK", "OK"),
            ("ON_HOLD_BY_SUPPLIER", "ON_HOLD_BY_SUPPLIER"),
            ("\u{41e}\u{41a}", "\\u{41e}\\u{41a}"),
            ("O\u{41a}", "O\\u{41a}"),
            ("OK\u{200b}", "OK\\u{200b}"),
            ("\u{202e}KO", "\\u{202e}KO"),
            ("OK ", "OK\\u{20}"),
            ("O\\u{41a}", "O\\\\u{41a}"),
            ("", ""),
        ] {
            assert_eq!(escape_status(text), shown, "{text:?}");
        }
    }

    #[test]
    fn unknown_status_is_kept_verbatim() {
        let status = Status::parse("ON_HOLD");
        assert!(status.is_unknown());
        assert_eq!(status.as_str(), "ON_HOLD");
        assert_eq!(Status::parse("REFUND_STARTED"), Status::RefundStarted);
    }
}
