//! The change feed on PostgreSQL: the status changes (`applied` events whose status differs
//! from the item's previous applied status), in commit order, with nothing skipped.
//!
//! Event ids come from a sequence, so they are handed out in insert order, not commit order:
//! reading `id > cursor` could pass over an id whose transaction commits later. So each event
//! stores its writing transaction (`tx`, `pg_current_xact_id()`), the feed is ordered by
//! `(tx, id)`, and it reads only below the oldest transaction still running
//! (`pg_snapshot_xmin`): everything there is committed or rolled back for good, so a cursor
//! never has to go back. A long transaction anywhere in the cluster pauses the feed; it loses
//! nothing. (Two transactions' `tx` order is their start order, not their commit order, which
//! is why the whole prefix below the oldest running one is waited for.)
//!
//! An item's previous status is found through `item_events (item_seq, id)` with `=`, never
//! `IS NOT DISTINCT FROM`, which no index serves (it made each change's lookup a scan of
//! every older event); events without an arrival number (only ever inserted by hand) are
//! matched by a second lookup that runs for them alone.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::Client;

use super::super::inspect::{Change, ChangePage, FeedPosition, UnusableCursor};
use crate::clock::to_db_text;

/// A position in the feed: the writing transaction and the event id (printed `tx.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    pub tx: i64,
    pub id: i64,
}

impl FeedCursor {
    /// Before every event.
    pub const START: Self = Self { tx: 0, id: 0 };
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.id)
    }
}

impl FromStr for FeedCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a feed cursor (TX.ID, e.g. 7412.1093)");
        let (tx, id) = text.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            tx: tx.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// A page of the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// The changes after the cursor, in commit order, each with its own cursor.
    pub changes: Vec<(FeedCursor, Change)>,
    /// Every `applied` event looked at, status changes included, in the same order.
    pub applied: Vec<Change>,
    /// The last event looked at (resume after it); `None` when nothing was readable.
    pub scanned_to: Option<FeedCursor>,
    /// Fewer than the page size were readable: caught up with everything committed below the
    /// oldest running transaction.
    pub caught_up: bool,
}

/// Looks at up to `page` committed `applied` events after `after` and keeps the status changes.
pub async fn changes(
    client: &Client,
    after: FeedCursor,
    page: usize,
) -> Result<FeedPage, tokio_postgres::Error> {
    let limit = page.min(i64::MAX as usize) as i64;
    let rows = client
        .query(
            "SELECT (e.tx::text)::bigint, e.id, e.item_uuid::text, e.order_uuid::text,
                    coalesce(
                        (SELECT p.status FROM item_events p
                         WHERE p.item_seq = e.item_seq
                           AND p.item_uuid = e.item_uuid AND p.id < e.id AND p.outcome = 'applied'
                         ORDER BY p.id DESC LIMIT 1),
                        (SELECT p.status FROM item_events p
                         WHERE e.item_seq IS NULL AND p.item_seq IS NULL
                           AND p.item_uuid = e.item_uuid AND p.id < e.id AND p.outcome = 'applied'
                         ORDER BY p.id DESC LIMIT 1)),
                    e.status, e.item_version, e.source, e.as_of, e.received_at
             FROM item_events e
             WHERE e.outcome = 'applied'
               AND (e.tx, e.id) > (($1::bigint)::text::xid8, $2)
               AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY e.tx, e.id
             LIMIT $3",
            &[&after.tx, &after.id, &limit],
        )
        .await?;
    let mut result = FeedPage::default();
    for row in &rows {
        let cursor = FeedCursor {
            tx: row.get(0),
            id: row.get(1),
        };
        result.scanned_to = Some(cursor);
        let change = Change {
            id: cursor.id,
            cursor: cursor.to_string(),
            item: row.get(2),
            order: row.get(3),
            old_status: row.get(4),
            new_status: row.get(5),
            version: row.get(6),
            source: row.get(7),
            as_of: to_db_text(row.get(8)),
            received_at: to_db_text(row.get(9)),
        };
        if change.old_status.as_deref() != Some(change.new_status.as_str()) {
            result.changes.push((cursor, change.clone()));
        }
        result.applied.push(change);
    }
    result.caught_up = rows.len() < page;
    Ok(result)
}

/// Up to `page` events after `after` as `--after` or the API's `after` takes it (a plain
/// event id is resolved through its event's transaction), the status changes among them.
pub async fn changes_from(
    client: &Client,
    after: FeedPosition,
    page: usize,
) -> Result<Result<ChangePage, UnusableCursor>, tokio_postgres::Error> {
    let after = match after {
        FeedPosition::Start => FeedCursor::START,
        FeedPosition::After(cursor) => cursor,
        FeedPosition::AfterEvent(id) => match cursor_of_event(client, id).await? {
            Some(cursor) => cursor,
            None => {
                return Ok(Err(UnusableCursor(format!(
                    "no event has id {id} (pruned, or never written): resume from a cursor \
                     (TX.ID) instead"
                ))));
            }
        },
    };
    let found = changes(client, after, page).await?;
    Ok(Ok(ChangePage {
        changes: found
            .changes
            .into_iter()
            .map(|(_, change)| change)
            .collect(),
        applied: found.applied,
        scanned_to: found.scanned_to.map(FeedPosition::After),
        caught_up: found.caught_up,
    }))
}

/// The cursor just after event `id` (a plain event id, as SQLite's feed and older scripts
/// use): resolved through that event's transaction; `None` when no such event exists.
pub async fn cursor_of_event(
    client: &Client,
    id: i64,
) -> Result<Option<FeedCursor>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT (tx::text)::bigint FROM item_events WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|row| FeedCursor { tx: row.get(0), id }))
}
