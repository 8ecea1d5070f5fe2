//! What a delivery posts: one status change in the Standard Webhooks envelope,
//! `{"type": "order_item.status_changed", "timestamp": …, "data": {<the change>, "vouchers": […]}}`.
//! The change is the object `orderwatch changes` prints and `/v1/changes` answers (its `cursor`
//! included), so a receiver can resume the feed from any delivery.

use serde::Serialize;

use crate::store::inspect::Change;

/// The event type of a delivery whose change moved the item's status.
pub const STATUS_CHANGED: &str = "order_item.status_changed";

/// The event type of a delivery whose observation applied with the same status (a newer
/// version; sent only to destinations with `outcomes` including `updated`).
pub const UPDATED: &str = "order_item.updated";

/// Whether `change` moved the item's status (the first status of an item counts).
pub fn changes_status(change: &Change) -> bool {
    change.old_status.as_deref() != Some(change.new_status.as_str())
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// When the change arrived (our clock): the same in every attempt, so the body is too.
    timestamp: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    #[serde(flatten)]
    change: &'a Change,
    /// The item's voucher URLs when the change was enqueued (empty until Musement issues
    /// them, which is once the item is OK).
    vouchers: &'a [String],
}

/// The body of the delivery of `change` with the item's `vouchers`.
pub fn body(change: &Change, vouchers: &[String]) -> String {
    serde_json::to_string(&Envelope {
        kind: if changes_status(change) {
            STATUS_CHANGED
        } else {
            UPDATED
        },
        timestamp: &change.received_at,
        data: Data { change, vouchers },
    })
    .expect("a change serializes")
}

/// The message id (`webhook-id`): the change's event id, the same in every attempt, from every
/// instance and in a replay, so the receiver can deduplicate on it.
pub fn id(change: &Change) -> String {
    id_of(change.id)
}

/// [`id`] of the change whose event id is `event_id`.
pub fn id_of(event_id: i64) -> String {
    format!("orderwatch-{event_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_change_with_its_vouchers_in_the_envelope() {
        let change = Change {
            id: 1093,
            cursor: "7412.1093".into(),
            item: "a1b2c3d4-0000-4000-8000-000000000001".into(),
            order: "a1b2c3d4-0000-4000-8000-000000000002".into(),
            old_status: Some("PENDING".into()),
            new_status: "OK".into(),
            version: Some(3),
            source: "webhook".into(),
            as_of: "2026-12-07T10:00:00.000Z".into(),
            received_at: "2026-12-07T10:00:01.250Z".into(),
        };
        let vouchers = ["https://example.com/voucher/1".to_owned()];
        let body: serde_json::Value = serde_json::from_str(&body(&change, &vouchers)).unwrap();
        let mut data = serde_json::to_value(&change).unwrap();
        data["vouchers"] = serde_json::json!(vouchers);
        assert_eq!(
            body,
            serde_json::json!({
                "type": "order_item.status_changed",
                "timestamp": "2026-12-07T10:00:01.250Z",
                "data": data,
            })
        );
        assert_eq!(body["data"]["cursor"], "7412.1093");
        assert_eq!(id(&change), "orderwatch-1093");
        let same = Change {
            old_status: Some("OK".into()),
            ..change
        };
        let updated: serde_json::Value = serde_json::from_str(&super::body(&same, &[])).unwrap();
        assert_eq!(updated["type"], "order_item.updated");
    }
}
