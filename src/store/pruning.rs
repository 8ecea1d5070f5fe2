//! Pruning old history through the writer: all of it before a cutoff in short batches (so
//! webhooks keep flowing between them), now or every hour (`[store] events_keep`).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};

use super::maintenance::{PRUNE_BATCH, PruneCursor, Pruned};
use super::writer::{WriteError, Writer};
use crate::clock::{Clock, to_db_text};
use crate::leadership::Leadership;

/// Prunes everything received before `cutoff`, one short writer command at a time.
pub async fn prune(writer: &Writer, cutoff: DateTime<Utc>) -> Result<Pruned, WriteError> {
    let mut total = Pruned::default();
    let mut cursor = PruneCursor::START;
    while !cursor.done() {
        let step = writer.prune_step(cutoff, cursor, PRUNE_BATCH).await?;
        total.events += step.events;
        total.rejected += step.rejected;
        total.deliveries += step.deliveries;
        cursor = step.next;
    }
    Ok(total)
}

/// How often the daemon prunes history (`[store] events_keep`), besides once at start.
const PRUNE_EVERY: StdDuration = StdDuration::from_secs(3600);

/// Deletes history older than `keep` now and every [`PRUNE_EVERY`], in writer-sized batches,
/// until dropped (a batch already sent still commits). With several instances on one
/// database, only the one that `leadership` says leads prunes.
pub async fn prune_periodically(
    writer: Writer,
    clock: Arc<dyn Clock>,
    keep: StdDuration,
    leadership: Leadership,
) {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    loop {
        if !leadership.leads() {
            tracing::debug!("another instance holds the cluster lease; it prunes history");
            tokio::time::sleep(PRUNE_EVERY).await;
            continue;
        }
        let cutoff = clock.now().checked_sub_signed(keep).unwrap_or_default();
        match prune(&writer, cutoff).await {
            Ok(pruned) => tracing::info!(
                events = pruned.events,
                rejected_webhooks = pruned.rejected,
                deliveries = pruned.deliveries,
                older_than = %to_db_text(cutoff),
                "pruned history"
            ),
            Err(error) => tracing::warn!(%error, "pruning history failed; trying again later"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
