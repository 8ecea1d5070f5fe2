//! The feeder of one destination: reads the change feed after the destination's cursor and
//! enqueues the changes it wants, moving the cursor in the same transaction (compare-and-set:
//! two instances reading the same page enqueue it once). Woken by this instance's commits,
//! and otherwise every [`IDLE`] (another instance's commits); a replay (`orderwatch deliveries
//! replay`) moves the cursor under it, which it notices at its next enqueue or within
//! [`RECHECK`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::message;
use super::{Context, Destination};
use crate::store::deliveries::{ForwardCommand, ForwardDone, NewDelivery};
use crate::store::inspect::{ChangePage, FeedPosition};

/// Most events read per page.
const PAGE: usize = 256;

/// How long the feeder waits for a commit before it reads again anyway.
const IDLE: Duration = Duration::from_millis(500);

/// How often an idle feeder reads its cursor back from the database, to follow a replay.
const RECHECK: Duration = Duration::from_secs(5);

/// Wait after a failed read or write before trying again.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Feeds `destination`'s outbox from `cursor` (`None`: not registered yet) until the task is
/// aborted; `enqueued` wakes its sender.
pub async fn run(
    destination: Arc<Destination>,
    context: Context,
    enqueued: Arc<Notify>,
    cursor: Option<String>,
) {
    let mut commits = context.writer.health().commits();
    let mut cursor = match cursor {
        Some(cursor) => cursor,
        None => register(&destination, &context).await,
    };
    let mut last_check = tokio::time::Instant::now();
    loop {
        match feed_once(&destination, &context, &cursor).await {
            Ok(Fed::More { cursor: now, sent }) => {
                cursor = now;
                if sent {
                    enqueued.notify_one();
                }
                continue;
            }
            Ok(Fed::CaughtUp { cursor: now, sent }) => {
                cursor = now;
                if sent {
                    enqueued.notify_one();
                }
            }
            Err(error) => {
                tracing::warn!(destination = %destination.name, %error, "cannot feed the outbox; trying again");
                tokio::time::sleep(AFTER_ERROR).await;
                cursor = register(&destination, &context).await;
                continue;
            }
        }
        if last_check.elapsed() >= RECHECK {
            cursor = register(&destination, &context).await;
            last_check = tokio::time::Instant::now();
            continue;
        }
        tokio::select! {
            _ = commits.changed() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// What one round did.
enum Fed {
    /// A full page was read: read again at once.
    More { cursor: String, sent: bool },
    /// The feed is caught up: wait for a commit.
    CaughtUp { cursor: String, sent: bool },
}

/// The destination registered (added at its `start` if new), and its cursor: tried until it
/// works, as nothing can be fed before.
async fn register(destination: &Destination, context: &Context) -> String {
    loop {
        if let Some(cursor) = register_once(destination, context).await {
            return cursor;
        }
        tokio::time::sleep(AFTER_ERROR).await;
    }
}

/// [`register`] once; `None` (said in the log) when it failed.
pub async fn register_once(destination: &Destination, context: &Context) -> Option<String> {
    let answer = context
        .writer
        .forward(ForwardCommand::Register {
            destination: destination.name.clone(),
            start: destination.start,
        })
        .await;
    match answer {
        Ok(ForwardDone::Registered { cursor }) => Some(cursor),
        Ok(other) => {
            tracing::error!(destination = %destination.name, ?other, "unexpected answer to registering a destination");
            None
        }
        Err(error) => {
            tracing::warn!(destination = %destination.name, %error, "cannot register the destination; trying again");
            None
        }
    }
}

/// Reads one page after `cursor` and enqueues its wanted changes.
async fn feed_once(
    destination: &Destination,
    context: &Context,
    cursor: &str,
) -> Result<Fed, String> {
    let after: FeedPosition = cursor
        .parse()
        .map_err(|e| format!("stored cursor {cursor:?}: {e}"))?;
    let page: ChangePage = context
        .reads
        .changes(after, PAGE)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|unusable| format!("cannot resume the feed: {unusable}"))?;
    let Some(scanned_to) = page.scanned_to else {
        return Ok(Fed::CaughtUp {
            cursor: cursor.to_owned(),
            sent: false,
        });
    };
    let wanted: Vec<_> = page
        .applied
        .into_iter()
        .filter(|change| destination.wants(change))
        .collect();
    let items: Vec<String> = wanted.iter().map(|change| change.item.clone()).collect();
    let vouchers: HashMap<String, Vec<String>> = if items.is_empty() {
        HashMap::new()
    } else {
        context
            .reads
            .vouchers(items)
            .await
            .map_err(|e| e.to_string())?
    };
    let deliveries: Vec<NewDelivery> = wanted
        .iter()
        .map(|change| NewDelivery {
            event_id: change.id,
            item: change.item.clone(),
            cursor: change.cursor.clone(),
            new_status: change.new_status.clone(),
            body: message::body(
                change,
                vouchers.get(&change.item).map_or(&[][..], Vec::as_slice),
            ),
        })
        .collect();
    let count = deliveries.len();
    let answer = context
        .writer
        .forward(ForwardCommand::Enqueue {
            destination: destination.name.clone(),
            expected: cursor.to_owned(),
            to: scanned_to.to_string(),
            deliveries,
        })
        .await
        .map_err(|e| e.to_string())?;
    let ForwardDone::Enqueued { enqueued, cursor } = answer else {
        return Err(format!("unexpected answer to an enqueue: {answer:?}"));
    };
    if enqueued && count > 0 {
        tracing::debug!(destination = %destination.name, count, %cursor, "enqueued status changes");
    }
    let sent = enqueued && count > 0;
    Ok(if page.caught_up {
        Fed::CaughtUp { cursor, sent }
    } else {
        Fed::More { cursor, sent }
    })
}
