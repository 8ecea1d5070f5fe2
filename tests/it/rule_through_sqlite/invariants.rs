//! The fuzzer's invariants (fuzz/fuzz_targets/ordering_rule.rs), and the re-poll mark's, on
//! the rows read back before and after one delivery.

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::from_db_text;
use orderwatch::store::Outcome;
use rusqlite::types::Value;

use super::database::Row;
use super::delivery::{Delivery, at};

pub(super) fn cell_int(row: &Row, column: &str) -> Option<i64> {
    match row.get(column) {
        Some(Value::Integer(value)) => Some(*value),
        _ => None,
    }
}

pub(super) fn cell_time(row: &Row, column: &str) -> Option<DateTime<Utc>> {
    match row.get(column) {
        Some(Value::Text(value)) => Some(from_db_text(value).expect("stored time parses")),
        _ => None,
    }
}

pub(super) fn cell_text<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    match row.get(column) {
        Some(Value::Text(value)) => Some(value),
        _ => None,
    }
}

/// The item-fact columns; only a poll that writes facts moves them.
pub(super) const FACTS: [&str; 7] = [
    "facts_as_of",
    "vouchers",
    "product_id",
    "product_title",
    "product_date",
    "max_confirmation_time",
    "confirm_deadline",
];

/// What a doubtful webhook writes: the version it records, with its `order_item_updated` (and
/// `order_item_created` when a poll made the row), and the time of the write.
pub(super) const RECORDING_A_VERSION: [&str; 4] =
    ["item_version", "item_updated", "item_created", "updated_at"];

/// `row` without `columns`.
pub(super) fn without(row: &Row, columns: &[&str]) -> Row {
    row.iter()
        .filter(|(name, _)| !columns.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// fuzz/fuzz_targets/ordering_rule.rs's invariants, checked on the rows before and after one
/// delivery, as read from the database.
pub(super) fn check_invariants(
    before: Option<&Row>,
    after: &Row,
    delivery: &Delivery,
    outcome: Outcome,
    margin_ms: i64,
) -> Result<(), String> {
    let status = delivery.status().as_str();
    let time = at(delivery.time_ms());
    let Some(before) = before else {
        let ok = outcome == Outcome::Applied
            && cell_text(after, "status") == Some(status)
            && cell_int(after, "item_version") == delivery.version();
        return if ok {
            Ok(())
        } else {
            Err(format!("a new item gave {outcome:?}, row {after:?}"))
        };
    };
    let ensure = |holds: bool, what: &str| {
        if holds {
            Ok(())
        } else {
            Err(format!(
                "{what} ({outcome:?})\n  before {before:?}\n  after  {after:?}"
            ))
        }
    };
    ensure(
        cell_time(after, "as_of") >= cell_time(before, "as_of"),
        "as_of went back",
    )?;
    let (seen, now_seen) = (
        cell_int(before, "item_version"),
        cell_int(after, "item_version"),
    );
    match delivery {
        Delivery::Poll(_) => ensure(now_seen == seen, "a poll moved item_version")?,
        Delivery::Webhook(webhook) => {
            let recovered =
                seen.is_some_and(|seen| webhook.version < seen) && outcome == Outcome::Applied;
            if recovered {
                let stored_as_of = cell_time(before, "as_of").expect("as_of");
                ensure(
                    time > stored_as_of + Duration::milliseconds(margin_ms),
                    "a lower version was applied without leading as_of by the margin",
                )?;
                ensure(
                    now_seen == Some(webhook.version),
                    "the recovery did not bring item_version down to the webhook's",
                )?;
            } else {
                ensure(
                    seen.is_none_or(|seen| now_seen.is_some_and(|now| now >= seen)),
                    "item_version went down",
                )?;
                ensure(
                    now_seen.is_some_and(|now| now >= webhook.version),
                    "item_version below the webhook's",
                )?;
            }
        }
    }
    ensure(
        cell_text(before, "item_created")
            .is_none_or(|known| cell_text(after, "item_created") == Some(known)),
        "item_created changed once known",
    )?;
    let facts_moved = cell_time(after, "facts_as_of") != cell_time(before, "facts_as_of");
    if facts_moved {
        ensure(
            matches!(delivery, Delivery::Poll(_))
                && outcome != Outcome::Stale
                && cell_time(after, "facts_as_of") == Some(time)
                && cell_time(before, "facts_as_of").is_none_or(|stored| time > stored),
            "facts were written by something other than a later poll",
        )?;
    } else {
        ensure(
            FACTS
                .iter()
                .all(|column| after.get(*column) == before.get(*column)),
            "item facts moved without facts_as_of",
        )?;
    }
    match outcome {
        Outcome::Stale | Outcome::Duplicate | Outcome::Conflict => {
            ensure(after == before, "the row changed")
        }
        // A doubtful webhook records its version; a doubtful poll its facts (checked above).
        Outcome::Doubtful => {
            let moved: Vec<&str> = RECORDING_A_VERSION.into_iter().chain(FACTS).collect();
            ensure(
                without(after, &moved) == without(before, &moved),
                "doubtful changed more than item_version or the item facts",
            )
        }
        Outcome::Applied => ensure(
            cell_text(after, "status") == Some(status),
            "applied did not store the observed status",
        ),
        Outcome::Confirmed => ensure(
            cell_text(after, "status") == cell_text(before, "status")
                && cell_text(after, "status") == Some(status),
            "confirmed changed the status or confirmed another",
        ),
    }
}

/// The order's re-poll mark moves only with doubt: a conflict or a doubt leaves one; any other
/// webhook leaves it as it was; a poll in no doubt clears it when it was sent at or after the
/// mark, and leaves it otherwise (README "The ordering rule", "Polling Musement").
pub(super) fn check_repoll_mark(
    before: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    delivery: &Delivery,
    outcome: Outcome,
) -> Result<(), String> {
    let in_doubt = matches!(outcome, Outcome::Conflict | Outcome::Doubtful);
    let holds = match delivery {
        _ if in_doubt => after.is_some(),
        Delivery::Webhook(_) => after == before,
        Delivery::Poll(poll) => match before {
            Some(mark) if at(poll.requested_ms) < mark => after == before,
            _ => after.is_none(),
        },
    };
    if holds {
        Ok(())
    } else {
        Err(format!(
            "{outcome:?} moved the re-poll mark from {before:?} to {after:?}"
        ))
    }
}
