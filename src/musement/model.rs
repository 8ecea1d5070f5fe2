//! What a `GET /orders/{uuid}` body and a `POST /login` body become, parsed leniently, and the
//! allowlist that keeps personal data out of everything we store.
//!
//! Parsing walks a `serde_json::Value` by hand instead of deriving `Deserialize`: only three
//! fields are required (`uuid`, `items[].uuid`, `items[].status`), every other field may be
//! missing or of an unexpected type without failing the poll, and an error must name the exact
//! field (`items[1].status: missing`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::{ApiError, snippet};
use crate::observation::json_kind;
use crate::observation::{Status, parse_musement_time};

/// One polled order: what `GET /orders/{uuid}` said, minus anything personal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledOrder {
    /// The order UUID (checked to be the one we asked for).
    pub uuid: Uuid,
    /// Musement's human order code, e.g. `MUS0738876`.
    pub identifier: Option<String>,
    /// The order's overall status, free text (Musement publishes no list of values).
    pub status: Option<String>,
    /// When the order was created (`date`), if present and parseable.
    pub date: Option<DateTime<Utc>>,
    /// The order's items, in the order Musement listed them.
    pub items: Vec<PolledItem>,
    /// Musement's clock at the time of the response (its `Date` header), which is what orders a
    /// poll against webhooks; `None` if the header was missing or unparseable.
    pub server_time: Option<DateTime<Utc>>,
}

/// One item of a polled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledItem {
    /// The item UUID (the webhook's `order_item_uuid`).
    pub uuid: Uuid,
    /// The item status; undocumented values are kept as `Status::Other`.
    pub status: Status,
    /// `product.max_confirmation_time`, an ISO-8601 duration as sent (`PT30M`; `P0D` means
    /// instant confirmation): how long a `PENDING` item may legitimately stay pending.
    pub max_confirmation_time: Option<String>,
    /// `product.date` as sent (`2018-09-01 15:30`, local time of the activity, no offset).
    pub product_date: Option<String>,
    /// `product.title`, for humans reading logs and alerts.
    pub product_title: Option<String>,
    /// `product.id`; Musement sends a numeric string, a bare number is kept as its text.
    pub product_id: Option<String>,
    /// `vouchers[].url`: present once the item is confirmed.
    pub vouchers: Vec<String>,
    /// The item's JSON reduced to non-personal keys (see [`strip_personal`]), compact; this is
    /// what the event log stores for a poll.
    pub raw: String,
}

/// Item keys that describe the booking rather than a person. Everything else, including keys
/// Musement adds later, is dropped: an allowlist fails safe.
const ITEM_KEYS: &[&str] = &[
    "uuid",
    "code",
    "transaction_code",
    "status",
    "quantity",
    "product",
    "vouchers",
    "is_gift_redeem",
    "cancellation_reason",
    "error_status",
    "retail_price_in_order_currency",
    "total_retail_price_in_order_currency",
    "original_retail_price_in_supplier_currency",
    "total_original_retail_price_in_supplier_currency",
    "b2b_price",
];

/// `product` keys that describe the activity. Left out on purpose: `pickup` (can be the
/// customer's hotel) and anything unknown.
const PRODUCT_KEYS: &[&str] = &[
    "type",
    "id",
    "title",
    "date",
    "max_confirmation_time",
    "price_tag",
    "api_url",
    "url",
    "activity_uuid",
    "language",
    "cover_image_url",
    "original_retail_price",
    "retail_price",
    "original_retail_price_without_service_fee",
    "retail_price_without_service_fee",
    "discount_amount",
    "service_fee",
    "meeting_point",
    "meeting_point_markdown",
    "meeting_point_html",
    "max_buy",
    "min_buy",
];

/// The item JSON with only allowlisted keys: [`ITEM_KEYS`] at the item level, [`PRODUCT_KEYS`]
/// inside `product`, and only `url` inside each voucher.
pub(crate) fn strip_personal(item: &Map<String, Value>) -> Value {
    let mut kept = Map::new();
    for (key, value) in item {
        let value = match key.as_str() {
            "product" => value.as_object().map(|p| keep_keys(p, PRODUCT_KEYS)),
            "vouchers" => value.as_array().map(|v| voucher_urls_only(v)),
            k if ITEM_KEYS.contains(&k) => Some(value.clone()),
            _ => None,
        };
        if let Some(value) = value {
            kept.insert(key.clone(), value);
        }
    }
    Value::Object(kept)
}

fn keep_keys(object: &Map<String, Value>, allowed: &[&str]) -> Value {
    let kept = object
        .iter()
        .filter(|(key, _)| allowed.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Value::Object(kept)
}

fn voucher_urls_only(vouchers: &[Value]) -> Value {
    let kept = vouchers
        .iter()
        .filter_map(|voucher| match voucher {
            Value::Object(fields) => Some(keep_keys(fields, &["url"])),
            Value::String(_) => Some(voucher.clone()),
            _ => None,
        })
        .collect();
    Value::Array(kept)
}

/// Parses a `GET /orders/{requested}` body; `server_time` is the response's `Date`.
pub(crate) fn parse_order(
    body: &[u8],
    requested: Uuid,
    server_time: Option<DateTime<Utc>>,
) -> Result<PolledOrder, ApiError> {
    parse_order_fields(body, requested, server_time)
        .map_err(|reason| ApiError::malformed(reason, body))
}

fn parse_order_fields(
    body: &[u8],
    requested: Uuid,
    server_time: Option<DateTime<Utc>>,
) -> Result<PolledOrder, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(order) = value else {
        return Err(format!(
            "body: expected an object, got {}",
            json_kind(&value)
        ));
    };
    let uuid = required_uuid(&order, "uuid", "uuid")?;
    if uuid != requested {
        return Err(format!("uuid: body is order {uuid}, requested {requested}"));
    }
    let items = match order.get("items") {
        // Lenient: an order without items is odd but not unusable.
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| parse_item(index, item))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "items: expected an array, got {}",
                json_kind(other)
            ));
        }
    };
    Ok(PolledOrder {
        uuid,
        identifier: optional_text(&order, "identifier"),
        status: optional_text(&order, "status"),
        date: optional_text(&order, "date").and_then(|d| parse_musement_time(&d)),
        items,
        server_time,
    })
}

fn parse_item(index: usize, item: &Value) -> Result<PolledItem, String> {
    let Value::Object(fields) = item else {
        return Err(format!(
            "items[{index}]: expected an object, got {}",
            json_kind(item)
        ));
    };
    let uuid = required_uuid(fields, "uuid", &format!("items[{index}].uuid"))?;
    let status = match fields.get("status") {
        Some(Value::String(text)) if !text.is_empty() => Status::parse(text),
        Some(Value::String(_)) => return Err(format!("items[{index}].status: empty")),
        None | Some(Value::Null) => return Err(format!("items[{index}].status: missing")),
        Some(other) => {
            return Err(format!(
                "items[{index}].status: expected a string, got {}",
                json_kind(other)
            ));
        }
    };
    let product = fields.get("product").and_then(Value::as_object);
    let product_text = |key: &str| product.and_then(|p| optional_text(p, key));
    Ok(PolledItem {
        uuid,
        status,
        max_confirmation_time: product_text("max_confirmation_time"),
        product_date: product_text("date"),
        product_title: product_text("title"),
        product_id: product.and_then(|p| text_or_number(p.get("id"))),
        vouchers: voucher_urls(fields.get("vouchers")),
        raw: strip_personal(fields).to_string(),
    })
}

/// A required UUID string at `key`; `field` names it in the error.
fn required_uuid(object: &Map<String, Value>, key: &str, field: &str) -> Result<Uuid, String> {
    match object.get(key) {
        Some(Value::String(text)) => {
            Uuid::try_parse(text).map_err(|_| format!("{field}: {text:?} is not a UUID"))
        }
        None | Some(Value::Null) => Err(format!("{field}: missing")),
        Some(other) => Err(format!(
            "{field}: expected a string, got {}",
            json_kind(other)
        )),
    }
}

/// A string field, or `None` when it is missing or not a string (optional fields never fail
/// a poll).
fn optional_text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn text_or_number(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn voucher_urls(vouchers: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(vouchers)) = vouchers else {
        return Vec::new();
    };
    vouchers
        .iter()
        .filter_map(|voucher| voucher.get("url").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// A successful `POST /login` answer.
#[derive(Debug)]
pub(crate) struct LoginGrant {
    /// The bearer token.
    pub access_token: String,
    /// Its lifetime in seconds, as Musement stated it.
    pub expires_in: u64,
}

/// The lifetime assumed when a login answer has no `expires_in`: the documented usual value.
/// A wrong guess costs one 401 and a re-login, not an outage.
pub(crate) const DEFAULT_EXPIRES_IN: u64 = 3600;

/// Parses a `POST /login` body. Errors never show the token: the snippet has it masked.
pub(crate) fn parse_login(body: &[u8]) -> Result<LoginGrant, ApiError> {
    parse_login_fields(body).map_err(|reason| ApiError::Malformed {
        reason,
        snippet: login_snippet(body),
    })
}

fn parse_login_fields(body: &[u8]) -> Result<LoginGrant, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "body: expected an object, got {}",
            json_kind(&value)
        ));
    };
    let access_token = match fields.get("access_token") {
        Some(Value::String(token)) if usable_token(token) => token.clone(),
        Some(Value::String(_)) => return Err("access_token: empty or not header-safe".into()),
        None | Some(Value::Null) => return Err("access_token: missing".into()),
        Some(other) => {
            return Err(format!(
                "access_token: expected a string, got {}",
                json_kind(other)
            ));
        }
    };
    let expires_in = match fields.get("expires_in") {
        None | Some(Value::Null) => {
            tracing::warn!(
                assumed = DEFAULT_EXPIRES_IN,
                "Musement login answer has no expires_in"
            );
            DEFAULT_EXPIRES_IN
        }
        Some(value) => seconds(value)
            .ok_or_else(|| format!("expires_in: {value} is not a number of seconds"))?,
    };
    Ok(LoginGrant {
        access_token,
        expires_in,
    })
}

/// A token goes into an `Authorization` header: visible ASCII only.
fn usable_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Whole non-negative seconds from a number (`3600`, `3600.0`) or a numeric string (`"3600"`).
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| s as u64)
        }),
        Value::String(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// The start of a login body with any token masked, so a malformed grant cannot leak it.
fn login_snippet(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut fields)) => {
            for key in ["access_token", "refresh_token"] {
                if let Some(value) = fields.get_mut(key) {
                    *value = Value::String("********".into());
                }
            }
            snippet(Value::Object(fields).to_string().as_bytes())
        }
        _ => snippet(body),
    }
}

/// Musement's `message` from a `{code, message}` error body, if that is what `body` is.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("message")?.as_str()?;
    Some(snippet(message.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ORDER: &str = "bf464161-f03a-449e-ac82-566721c0e6b4";
    const ITEM: &str = "8b742505-38c7-4bed-9bf5-468a3e7cc731";

    fn order_uuid() -> Uuid {
        Uuid::parse_str(ORDER).unwrap()
    }

    fn reason(result: Result<PolledOrder, ApiError>) -> String {
        match result {
            Err(ApiError::Malformed { reason, .. }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn parse(body: Value) -> Result<PolledOrder, ApiError> {
        parse_order(body.to_string().as_bytes(), order_uuid(), None)
    }

    #[test]
    fn minimal_order_parses() {
        let order = parse(json!({
            "uuid": ORDER,
            "items": [{ "uuid": ITEM, "status": "SOMETHING_NEW" }],
        }))
        .unwrap();
        assert_eq!(order.identifier, None);
        assert_eq!(order.items.len(), 1);
        assert_eq!(order.items[0].status, Status::Other("SOMETHING_NEW".into()));
        assert_eq!(order.items[0].vouchers, Vec::<String>::new());
    }

    #[test]
    fn optional_fields_of_the_wrong_type_are_ignored() {
        let order = parse(json!({
            "uuid": ORDER, "identifier": 12, "date": "last week", "status": ["x"],
            "items": [{ "uuid": ITEM, "status": "OK", "product": "nope", "vouchers": {} }],
        }))
        .unwrap();
        assert_eq!(
            (order.identifier, order.status, order.date),
            (None, None, None)
        );
        assert_eq!(order.items[0].product_title, None);
    }

    #[test]
    fn product_id_may_be_a_number() {
        let order = parse(json!({
            "uuid": ORDER,
            "items": [{ "uuid": ITEM, "status": "OK", "product": { "id": 434696106 } }],
        }))
        .unwrap();
        assert_eq!(order.items[0].product_id.as_deref(), Some("434696106"));
    }

    #[test]
    fn required_fields_are_named_when_missing_or_wrong() {
        let cases = [
            (json!({ "items": [] }), "uuid: missing"),
            (json!({ "uuid": "nope" }), "uuid: \"nope\" is not a UUID"),
            (
                json!({ "uuid": ORDER, "items": {} }),
                "items: expected an array",
            ),
            (
                json!({ "uuid": ORDER, "items": [1] }),
                "items[0]: expected an object",
            ),
            (
                json!({ "uuid": ORDER, "items": [{ "status": "OK" }] }),
                "items[0].uuid: missing",
            ),
            (
                json!({ "uuid": ORDER, "items": [{ "uuid": ITEM, "status": "OK" }, { "uuid": ITEM }] }),
                "items[1].status: missing",
            ),
            (
                json!({ "uuid": ORDER, "items": [{ "uuid": ITEM, "status": 3 }] }),
                "items[0].status: expected a string",
            ),
            (
                json!({ "uuid": ORDER, "items": [{ "uuid": ITEM, "status": "" }] }),
                "items[0].status: empty",
            ),
        ];
        for (body, expected) in cases {
            let reason = reason(parse(body.clone()));
            assert!(reason.starts_with(expected), "{body}: {reason}");
        }
    }

    #[test]
    fn another_orders_body_is_malformed() {
        let other = "00000000-0000-4000-8000-000000000001";
        let reason = reason(parse(json!({ "uuid": other, "items": [] })));
        assert!(reason.contains(other) && reason.contains(ORDER), "{reason}");
    }

    #[test]
    fn not_json_keeps_the_start_of_the_body() {
        let body = format!("<html>{}</html>", "x".repeat(500));
        match parse_order(body.as_bytes(), order_uuid(), None) {
            Err(ApiError::Malformed { reason, snippet }) => {
                assert!(reason.starts_with("not JSON"), "{reason}");
                assert!(snippet.starts_with("<html>xxx") && snippet.len() == 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stripping_keeps_only_allowlisted_keys() {
        let item = json!({
            "uuid": ITEM, "status": "OK", "quantity": 2, "code": "C1",
            "participants_info": [{ "name": "Jane" }],
            "extra_customer_data": [{ "phone": "+39 555" }],
            "cancellation_additional_info": "call Jane",
            "something_new": "?",
            "product": { "id": "1", "title": "T", "pickup": "Hotel Jane", "customer": "x",
                         "retail_price": { "currency": "USD", "value": 1 } },
            "vouchers": [{ "url": "https://v/1", "holder": "Jane" }, "https://v/2", 3],
        });
        let stripped = strip_personal(item.as_object().unwrap());
        assert_eq!(
            stripped,
            json!({
                "uuid": ITEM, "status": "OK", "quantity": 2, "code": "C1",
                "product": { "id": "1", "title": "T",
                             "retail_price": { "currency": "USD", "value": 1 } },
                "vouchers": [{ "url": "https://v/1" }, "https://v/2"],
            })
        );
    }

    #[test]
    fn login_accepts_numeric_strings_and_defaults_a_missing_lifetime() {
        let grant = parse_login(br#"{"access_token":"t","expires_in":"1800"}"#).unwrap();
        assert_eq!((grant.access_token.as_str(), grant.expires_in), ("t", 1800));
        let grant = parse_login(br#"{"access_token":"t","expires_in":60.5}"#).unwrap();
        assert_eq!(grant.expires_in, 60);
        let grant = parse_login(br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(grant.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn malformed_login_never_shows_the_token() {
        let body = br#"{"access_token":"very-secret-token","expires_in":"soon"}"#;
        match parse_login(body) {
            Err(error @ ApiError::Malformed { .. }) => {
                let text = error.to_string();
                assert!(text.contains("expires_in"), "{text}");
                assert!(!text.contains("very-secret-token"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &br#"{"expires_in":1}"#[..],
            br#"{"access_token":"","expires_in":1}"#,
            br#"{"access_token":"a b","expires_in":1}"#,
            br#"{"access_token":7,"expires_in":1}"#,
            br#"{"access_token":"t","expires_in":-1}"#,
            b"[]",
        ] {
            assert!(
                parse_login(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn error_message_reads_musements_error_body() {
        assert_eq!(
            error_message(br#"{"code":"1404","message":"Order not found"}"#).as_deref(),
            Some("Order not found")
        );
        assert_eq!(error_message(b"<html>"), None);
    }
}
