//! The store under test: a real SQLite file, each delivery through `store::apply` or
//! `store::record_poll` in its own transaction, and the rows read back after every step.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::from_db_text;
use orderwatch::store::{self, Outcome, PollRecord, Rules, StoreSettings};
use proptest::test_runner::TestCaseError;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use super::delivery::{Delivery, MAX_FUTURE_MS, at, text};
use super::generate::Case;
use super::invariants::{check_invariants, check_repoll_mark};
use super::model::Model;

/// A row read back, column by column.
pub(super) type Row = BTreeMap<String, Value>;

/// The order columns the rule's order facts decide.
pub(super) const ORDER_FACTS: &str = "first_seen_at, order_id, order_version, order_created, \
     order_updated, order_status, identifier, order_polled_as_of";

/// Columns of `order_items` that hold our own clock, not Musement's: they legitimately depend
/// on when each delivery arrived.
pub(super) const OUR_CLOCK: [&str; 3] = ["first_seen_at", "changed_at", "updated_at"];

/// A real database file, shared by a property's cases; each replay uses a fresh item and order.
pub(super) struct Store {
    /// The temporary folder holding the database file; removed when the property ends.
    _dir: tempfile::TempDir,
    /// The connection every step writes through, as the writer thread would.
    conn: Connection,
    /// Replays so far: the next one's item and order UUIDs.
    replays: u128,
}

/// The rows a replay ended with.
#[derive(Debug, PartialEq)]
pub(super) struct Final {
    /// The whole `order_items` row.
    pub(super) item: Row,
    /// The order's fact columns ([`ORDER_FACTS`]).
    pub(super) order: Row,
}

impl Store {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = store::open_for_writing(
            &dir.path().join("rule.db"),
            std::time::Duration::from_secs(5),
        )
        .expect("open the database");
        // Every step is its own committed transaction, as in the daemon; only the fsync is
        // skipped (durability is tested elsewhere; here it would only cost minutes).
        conn.pragma_update(None, "synchronous", "OFF")
            .expect("synchronous = OFF");
        Self {
            _dir: dir,
            conn,
            replays: 0,
        }
    }

    /// Delivers `deliveries` to a fresh item in order, checking the invariants and the model
    /// after every step; returns the final rows.
    pub(super) fn replay(
        &mut self,
        case: &Case,
        deliveries: &[Delivery],
    ) -> Result<Final, TestCaseError> {
        self.replays += 1;
        let item = Uuid::from_u128(self.replays << 1);
        let order = Uuid::from_u128((self.replays << 1) | 1);
        let settings = StoreSettings {
            rules: Rules {
                skew_margin: Duration::milliseconds(case.margin_ms),
                max_future: Duration::milliseconds(MAX_FUTURE_MS),
            },
            ..StoreSettings::default()
        };
        let mut model = Model::new(case.margin_ms);
        let fail = |step: usize, message: String| {
            TestCaseError::fail(format!(
                "step {step} ({:?}): {message}\nreplayed order:\n{}\n{case:?}",
                deliveries[step],
                numbered(deliveries)
            ))
        };
        for (step, delivery) in deliveries.iter().enumerate() {
            let before = read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            );
            let mark_before = self.repoll_at(order);
            let outcome = self.deliver(delivery, item, order, &settings);
            let after = read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            )
            .ok_or_else(|| fail(step, "no item row".into()))?;
            check_invariants(before.as_ref(), &after, delivery, outcome, case.margin_ms)
                .map_err(|message| fail(step, format!("invariant: {message}")))?;
            check_repoll_mark(mark_before, self.repoll_at(order), delivery, outcome)
                .map_err(|message| fail(step, message))?;
            let expected = model.step(delivery);
            let order_row = read_row(
                &self.conn,
                &format!("SELECT {ORDER_FACTS} FROM orders WHERE order_uuid = ?1"),
                order,
            );
            let event = self.last_event(item, step);
            let expected_event = event_row(delivery, expected);
            let checks = [
                (
                    "outcome",
                    outcome == expected,
                    format!("store {outcome:?}, model {expected:?}"),
                ),
                (
                    "item row",
                    Some(&after) == model.item_row(item, order).as_ref(),
                    diff(Some(&after), model.item_row(item, order).as_ref()),
                ),
                (
                    "order facts",
                    order_row == model.order_row(),
                    diff(order_row.as_ref(), model.order_row().as_ref()),
                ),
                (
                    "event row",
                    event.as_ref() == Some(&expected_event),
                    diff(event.as_ref(), Some(&expected_event)),
                ),
            ];
            for (what, same, detail) in checks {
                if !same {
                    return Err(fail(
                        step,
                        format!("{what} differs from the model: {detail}"),
                    ));
                }
            }
        }
        Ok(Final {
            item: read_row(
                &self.conn,
                "SELECT * FROM order_items WHERE item_uuid = ?1",
                item,
            )
            .unwrap_or_default(),
            order: read_row(
                &self.conn,
                &format!("SELECT {ORDER_FACTS} FROM orders WHERE order_uuid = ?1"),
                order,
            )
            .unwrap_or_default(),
        })
    }

    /// One delivery through the store's public entry points, in its own transaction.
    pub(super) fn deliver(
        &self,
        delivery: &Delivery,
        item: Uuid,
        order: Uuid,
        settings: &StoreSettings,
    ) -> Outcome {
        let tx = self.conn.unchecked_transaction().expect("begin");
        let observation = delivery.observation(item, order);
        let now = at(delivery.received_ms());
        let outcome = match delivery {
            Delivery::Webhook(_) => store::apply(&tx, &observation, settings, now).expect("apply"),
            Delivery::Poll(poll) => {
                let record = PollRecord {
                    order,
                    requested_at: at(poll.requested_ms),
                    items: vec![observation],
                };
                let recorded = store::record_poll(&tx, &record, settings, now).expect("record");
                assert_eq!(recorded.outcomes.len(), 1, "one item polled, one outcome");
                recorded.outcomes[0]
            }
        };
        tx.commit().expect("commit");
        outcome
    }

    /// The order's re-poll mark (`None` also before the order row exists).
    pub(super) fn repoll_at(&self, order: Uuid) -> Option<DateTime<Utc>> {
        let mark: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT repoll_at FROM orders WHERE order_uuid = ?1",
                [order.to_string()],
                |r| r.get(0),
            )
            .optional()
            .expect("read the order");
        mark.flatten()
            .map(|text| from_db_text(&text).expect("a readable mark"))
    }

    /// The item's newest event row, when the log holds exactly `step + 1` of them.
    pub(super) fn last_event(&self, item: Uuid, step: usize) -> Option<Row> {
        let count: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM item_events WHERE item_uuid = ?1",
                [item.to_string()],
                |r| r.get(0),
            )
            .expect("count events");
        if count != step as i64 + 1 {
            return None;
        }
        read_row(
            &self.conn,
            "SELECT source, status, item_version, as_of, received_at, outcome, payload
             FROM item_events WHERE item_uuid = ?1 ORDER BY id DESC LIMIT 1",
            item,
        )
    }
}

/// The event row a delivery should leave: what it said, its (clamped) time, the outcome.
pub(super) fn event_row(delivery: &Delivery, outcome: Outcome) -> Row {
    let source = match delivery {
        Delivery::Webhook(_) => "webhook",
        Delivery::Poll(_) => "poll",
    };
    Row::from([
        ("source".into(), Value::Text(source.into())),
        ("status".into(), Value::Text(delivery.status().to_string())),
        (
            "item_version".into(),
            delivery.version().map_or(Value::Null, Value::Integer),
        ),
        ("as_of".into(), Value::Text(text(delivery.time_ms()))),
        (
            "received_at".into(),
            Value::Text(text(delivery.received_ms())),
        ),
        ("outcome".into(), Value::Text(outcome_text(outcome).into())),
        ("payload".into(), Value::Text(delivery.raw())),
    ])
}

/// The event log's spelling of an outcome (README "Schema", `item_events.outcome`).
pub(super) fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Confirmed => "confirmed",
        Outcome::Duplicate => "duplicate",
        Outcome::Stale => "stale",
        Outcome::Conflict => "conflict",
        Outcome::Doubtful => "doubtful",
    }
}

/// The arrival numbers (schema version 4): how the store finds rows, not what the rule
/// decides; `store.rs` checks them.
const ARRIVAL_NUMBERS: [&str; 3] = ["seq", "order_seq", "item_seq"];

/// The one row `sql` selects for `key`, column by column (but the arrival numbers).
pub(super) fn read_row(conn: &Connection, sql: &str, key: Uuid) -> Option<Row> {
    let mut statement = conn.prepare_cached(sql).expect("prepare");
    let names: Vec<String> = statement.column_names().map(String::from).collect();
    let mut rows = statement.query([key.to_string()]).expect("query");
    let row = rows.next().expect("read")?;
    Some(
        names
            .iter()
            .enumerate()
            .filter(|(_, name)| !ARRIVAL_NUMBERS.contains(&name.as_str()))
            .map(|(index, name)| (name.clone(), row.get::<_, Value>(index).expect("cell")))
            .collect(),
    )
}

/// The columns where `found` and `expected` differ.
pub(super) fn diff(found: Option<&Row>, expected: Option<&Row>) -> String {
    let (Some(found), Some(expected)) = (found, expected) else {
        return format!("store {found:?}, model {expected:?}");
    };
    let mut names: Vec<&String> = found.keys().chain(expected.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| found.get(*name) != expected.get(*name))
        .map(|name| {
            format!(
                "\n  {name}: store {:?}, model {:?}",
                found.get(name),
                expected.get(name)
            )
        })
        .collect()
}

pub(super) fn numbered(deliveries: &[Delivery]) -> String {
    deliveries
        .iter()
        .enumerate()
        .map(|(step, delivery)| format!("  {step}: {delivery:?}\n"))
        .collect()
}
