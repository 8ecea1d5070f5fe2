//! The body of `GET /orders/{uuid}`: the shape of the reference's §9 example (every field it
//! has, with the same types and formats), plus the personal data a real order carries
//! (`customer`, `participants_info`, `extra_customer_data`, `cancellation_additional_info`),
//! which the client must strip before it stores anything.
//!
//! A fake says what varies ([`Order`], [`Item`], [`Product`], [`Customer`]); everything else
//! (market, source, prices, quantities, the order's overall status and totals) is fixed or
//! derived here, so every fake's orders look alike on the wire.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

/// The retail price of every item, in USD (one participant each).
const ITEM_PRICE: u64 = 21;

/// An order as a fake knows it.
#[derive(Debug, Clone)]
pub struct Order {
    /// `uuid`.
    pub uuid: Uuid,
    /// The order number: `identifier` is `MUS` and its last seven digits, as is the Trustpilot
    /// link.
    pub number: u64,
    /// `date`: when the order was placed (sent in Musement's `+0000` form).
    pub date: DateTime<Utc>,
    /// Who placed it.
    pub customer: Customer,
    /// `items`, in this order.
    pub items: Vec<Item>,
}

/// The person behind an order: every value here is personal data.
#[derive(Debug, Clone)]
pub struct Customer {
    /// `customer.email`, and each item's `participants_info[].email`.
    pub email: String,
    /// `customer.firstname`, and each item's `extra_customer_data[].firstname`.
    pub firstname: String,
    /// `customer.lastname`.
    pub lastname: String,
    /// `customer.phone`, and each item's `extra_customer_data[].phone`.
    pub phone: String,
    /// Each item's `participants_info[].name`.
    pub participant: String,
}

/// One item of an order.
#[derive(Debug, Clone)]
pub struct Item {
    /// `uuid`: the webhook's `order_item_uuid`.
    pub uuid: Uuid,
    /// `code`.
    pub code: String,
    /// `transaction_code`.
    pub transaction_code: String,
    /// `product`: the activity booked.
    pub product: Product,
    /// `status` (`PENDING`, `OK`, `KO`, …), sent as is.
    pub status: String,
    /// `vouchers[].url`, in this order (Musement adds one once an item is `OK`).
    pub vouchers: Vec<String>,
}

/// The activity an item books.
#[derive(Debug, Clone)]
pub struct Product {
    /// `max_confirmation_time`, an ISO-8601 duration (`P0D`: confirmed at once).
    pub max_confirmation_time: String,
    /// `date`: the activity's local date and time, `2018-09-01 15:30` (no offset).
    pub date: String,
    /// `id`, a numeric string.
    pub id: String,
    /// `title`.
    pub title: String,
    /// `api_url`: the activity in the catalog API.
    pub api_url: String,
}

impl Order {
    /// The `GET /orders/{uuid}` body.
    pub fn to_json(&self) -> Value {
        let identifier = format!("MUS{:07}", self.number % 10_000_000);
        let customer = &self.customer;
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|item| item.to_json(customer))
            .collect();
        json!({
            "identifier": identifier,
            "uuid": self.uuid.to_string(),
            "date": musement_time(self.date),
            "status": order_status(&self.items),
            "market": "us",
            "source": "frontend",
            "trustpilot_url": format!("https://us.trustpilot.com/evaluate/embed/www.musement.com?a={identifier}"),
            "customer": {
                "email": customer.email,
                "firstname": customer.firstname,
                "lastname": customer.lastname,
                "phone": customer.phone,
            },
            "items": items,
            "total_price": price(ITEM_PRICE * self.items.len() as u64),
            "discount_amount": price(0),
            "extra_data": null,
        })
    }
}

impl Item {
    fn to_json(&self, customer: &Customer) -> Value {
        let product = &self.product;
        let vouchers: Vec<Value> = self
            .vouchers
            .iter()
            .map(|url| json!({ "url": url }))
            .collect();
        json!({
            "uuid": self.uuid.to_string(),
            "code": self.code,
            "transaction_code": self.transaction_code,
            "product": {
                "type": "musement",
                "max_confirmation_time": product.max_confirmation_time,
                "price_tag": { "price_feature": "Tour", "ticket_holder": "Adult",
                               "price_feature_code": "tour", "ticket_holder_code": "adult" },
                "date": product.date,
                "id": product.id,
                "title": product.title,
                "api_url": product.api_url,
                "retail_price": price(ITEM_PRICE),
                "service_fee": price(0),
            },
            "quantity": 1,
            "total_retail_price_in_order_currency": price(ITEM_PRICE),
            "status": self.status,
            "vouchers": vouchers,
            "is_gift_redeem": false,
            "error_status": false,
            "participants_info": [{ "name": customer.participant, "email": customer.email }],
            "extra_customer_data": [{ "phone": customer.phone, "firstname": customer.firstname }],
            "cancellation_additional_info": format!("call {} {}", customer.firstname, customer.lastname),
        })
    }
}

/// The order's overall status: `PENDING` while any item is (or when there are none), the items'
/// status when they all agree, else `OK` (some confirmed, others ended otherwise).
fn order_status(items: &[Item]) -> &str {
    let mut statuses = items.iter().map(|item| item.status.as_str());
    let Some(first) = statuses.next() else {
        return "PENDING";
    };
    if items.iter().any(|item| item.status == "PENDING") {
        "PENDING"
    } else if statuses.all(|status| status == first) {
        first
    } else {
        "OK"
    }
}

/// A money amount in USD, as Musement writes one.
fn price(value: u64) -> Value {
    json!({ "currency": "USD", "value": value, "formatted_value": format!("$ {value}.00") })
}

/// The voucher URL Musement's sandbox gives `item` once it is confirmed.
pub fn voucher_url(item: Uuid) -> String {
    format!("https://sandbox.musement.com/voucher/view/{item}?pdf=1")
}

/// Musement's timestamp format, in orders and webhooks: `2018-12-10T13:12:40+0000`.
pub fn musement_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's §9 example, as `fixtures/musement/` keeps it.
    const REFERENCE: &str = include_str!("../../../fixtures/musement/order-two-items.json");

    fn order(statuses: &[&str]) -> Order {
        Order {
            uuid: Uuid::from_u128(0xbf46_4161),
            number: 738_876,
            date: "2018-08-17T15:59:43Z".parse().unwrap(),
            customer: Customer {
                email: "test@test.com".into(),
                firstname: "TEST".into(),
                lastname: "TEST".into(),
                phone: "+39 02 0000 0000".into(),
                participant: "TEST TEST".into(),
            },
            items: statuses
                .iter()
                .enumerate()
                .map(|(n, status)| Item {
                    uuid: Uuid::from_u128(n as u128 + 1),
                    code: format!("C{n}"),
                    transaction_code: format!("tx-{n}"),
                    product: Product {
                        max_confirmation_time: "PT30M".into(),
                        date: "2018-09-01 15:30".into(),
                        id: "434696106".into(),
                        title: "A guided visit".into(),
                        api_url: "https://sandbox.musement.com/api/v3/activities/x".into(),
                    },
                    status: (*status).into(),
                    vouchers: Vec::new(),
                })
                .collect(),
        }
    }

    /// Every key of `reference` is in `ours` with a value of the same JSON type, recursively
    /// (arrays: their first elements).
    fn assert_has_shape(ours: &Value, reference: &Value, at: &str) {
        match (ours, reference) {
            (Value::Object(ours), Value::Object(reference)) => {
                for (key, value) in reference {
                    let path = format!("{at}.{key}");
                    let mine = ours.get(key).unwrap_or_else(|| panic!("{path}: missing"));
                    assert_has_shape(mine, value, &path);
                }
            }
            (Value::Array(ours), Value::Array(reference)) => {
                if let (Some(mine), Some(theirs)) = (ours.first(), reference.first()) {
                    assert_has_shape(mine, theirs, &format!("{at}[0]"));
                }
            }
            (Value::String(_), Value::String(_))
            | (Value::Number(_), Value::Number(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Null, Value::Null) => {}
            _ => panic!("{at}: {ours} where the reference has {reference}"),
        }
    }

    #[test]
    fn an_order_has_every_field_of_the_reference_example_with_its_type() {
        let reference: Value = serde_json::from_str(REFERENCE).unwrap();
        let mut ours = order(&["PENDING", "OK"]);
        let voucher = voucher_url(ours.items[1].uuid);
        ours.items[1].vouchers.push(voucher);
        assert_has_shape(&ours.to_json(), &reference, "order");
    }

    #[test]
    fn identifier_date_and_totals_are_written_as_musement_writes_them() {
        let json = order(&["PENDING", "OK"]).to_json();
        assert_eq!(json["identifier"], "MUS0738876");
        assert_eq!(json["date"], "2018-08-17T15:59:43+0000");
        assert_eq!(json["total_price"]["value"], 42);
        assert_eq!(json["total_price"]["formatted_value"], "$ 42.00");
        assert_eq!(
            json["items"][1]["participants_info"][0]["name"],
            "TEST TEST"
        );
    }

    #[test]
    fn the_order_status_follows_its_items() {
        let status = |statuses: &[&str]| order(statuses).to_json()["status"].clone();
        assert_eq!(status(&[]), "PENDING");
        assert_eq!(status(&["OK", "PENDING"]), "PENDING");
        assert_eq!(status(&["OK", "OK"]), "OK");
        assert_eq!(status(&["KO", "KO"]), "KO");
        assert_eq!(status(&["OK", "REFUNDED"]), "OK");
    }
}
