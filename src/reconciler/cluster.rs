//! The reconciler's side of several instances on one PostgreSQL database (see
//! `store::cluster`): a scheduled pass that claims due orders a chunk at a time instead of
//! taking the pass-wide lease, the shared request budget, and Musement's pauses passed on to
//! every instance.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PassError, PassSummary, Progress, Reconciler, add_results, read_error};
use crate::clock::later;
use crate::store::cluster::Cluster;
use crate::store::queries::DueOrder;
use crate::telemetry;

impl Reconciler {
    /// A scheduled pass on PostgreSQL: claims due orders a chunk at a time and polls them,
    /// until none is left that this pass has not handled and no other instance holds. Each
    /// recorded poll ends its claim; the claims of orders left unpolled (a pause, a stop) are
    /// given back at the end of their chunk.
    pub(super) async fn poll_claimed(&self, cluster: &Cluster) -> Result<PassSummary, PassError> {
        self.client.forget_login_failure().await;
        let mut summary = PassSummary::default();
        self.progress.send_replace(Progress::default());
        let credentials_refused = AtomicBool::new(false);
        let mut handled: Vec<Uuid> = Vec::new();
        let ttl = self.lease_ttl;
        let began = self.clock.now();
        loop {
            self.adopt_cluster_pause(cluster).await;
            if self.not_now(&credentials_refused).is_some() {
                break;
            }
            let now = self.clock.now();
            let claimed = cluster
                .claim_due(now, began, self.chunk(), ttl, &handled)
                .await
                .map_err(read_error)?;
            if claimed.is_empty() {
                break;
            }
            summary.due += claimed.len();
            handled.extend(claimed.iter().map(|d| d.order));
            let (too_old, to_poll): (Vec<DueOrder>, Vec<DueOrder>) = claimed
                .into_iter()
                .partition(|d| !d.repoll && later(d.first_seen_at, self.settings.max_age) < now);
            let expired = self.expire(too_old).await?;
            summary.expired += expired;
            self.metrics.count_orders("expired", expired);
            self.progress.send_modify(|p| p.total += to_poll.len());
            let chunk: Vec<Uuid> = to_poll.iter().map(|d| d.order).collect();
            let results = self.poll_all(to_poll, &credentials_refused).await;
            let before = summary.recorded.len();
            add_results(&mut summary, results);
            let recorded = &summary.recorded[before..];
            let unpolled: Vec<Uuid> = chunk
                .into_iter()
                .filter(|order| !recorded.contains(order))
                .collect();
            if !unpolled.is_empty()
                && let Err(error) = cluster.release_claims(&unpolled).await
            {
                tracing::warn!(%error, "could not give back the claims of unpolled orders; they expire by themselves");
            }
        }
        summary.paused_until = self.client.paused_until();
        if summary.paused_until.is_some() || summary.stopped.is_some() {
            // Counted as a pass over all due orders counts them, so the summary reads alike on
            // both engines: the due orders this pass stopped short of.
            let left = cluster
                .unclaimed_due(self.clock.now(), &handled)
                .await
                .map_err(read_error)?;
            summary.due += left;
            if summary.paused_until.is_some() {
                summary.paused_orders += left;
            }
        }
        summary.overdue = self.warn_overdue().await?;
        Ok(summary)
    }

    /// How many orders a claimed pass takes at once: enough to keep `concurrency` polls busy,
    /// but no more than the request budget lets it poll within half a claim's lifetime, so
    /// claims do not expire while their orders wait for the budget.
    fn chunk(&self) -> usize {
        let busy = self.settings.concurrency.max(1) * 2;
        let rate = self.settings.max_requests_per_second;
        if rate > 0.0 {
            let within_ttl = (rate * self.lease_ttl.as_secs_f64() / 2.0).floor() as usize;
            busy.min(within_ttl.max(1))
        } else {
            busy
        }
    }

    /// Takes up a pause another instance recorded for the cluster (Musement asked it to wait).
    async fn adopt_cluster_pause(&self, cluster: &Cluster) {
        match cluster.paused_until(self.clock.now()).await {
            Ok(Some(until)) => self.pause_as_cluster(until),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "could not read the cluster's Musement pause"),
        }
    }

    /// Pauses this instance's client until the cluster's pause ends, saying so when it starts.
    fn pause_as_cluster(&self, until: DateTime<Utc>) {
        let Ok(wait) = (until - self.clock.now()).to_std() else {
            return;
        };
        if let Some((until, true)) = self.client.pause_for(wait) {
            let until = telemetry::rfc3339(until);
            tracing::info!(%until, "Musement asked another instance to wait; pausing too");
        }
    }

    /// Records the pause this client just began (Musement answered 429 or 503 with
    /// `Retry-After`) for the whole cluster.
    pub(super) async fn share_pause(&self, cluster: &Cluster) {
        let Some(until) = self.client.paused_until() else {
            return;
        };
        if let Err(error) = cluster.pause_all(until).await {
            tracing::warn!(%error, "could not record Musement's pause for the other instances");
        }
    }

    /// Waits for a request from the cluster's budget (when there is a ceiling): one this
    /// instance was granted earlier, or a few more taken from the shared bucket. `false` when
    /// a cluster-wide pause began meanwhile (this client is paused too, then).
    pub(super) async fn shared_request(&self, cluster: &Cluster) -> bool {
        let rate = self.settings.max_requests_per_second;
        if rate <= 0.0 {
            return true;
        }
        // About a tenth of a second's worth at a time: few round trips, and no instance
        // sits on budget the others could use.
        let want = (rate / 10.0).ceil().max(1.0) as u32;
        loop {
            {
                let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
                if *granted > 0 {
                    *granted -= 1;
                    return true;
                }
            }
            match cluster
                .take_requests(self.clock.now(), rate, rate.max(1.0), want)
                .await
            {
                Ok(grant) if grant.paused => {
                    self.adopt_cluster_pause(cluster).await;
                    return false;
                }
                Ok(grant) if grant.requests > 0 => {
                    *self.granted.lock().unwrap_or_else(|e| e.into_inner()) += grant.requests;
                }
                Ok(grant) => {
                    tokio::time::sleep(grant.refill_in.max(Duration::from_millis(5))).await;
                }
                Err(error) => {
                    // The poll's own write will meet the same database; the local ceiling
                    // still holds.
                    tracing::debug!(%error, "could not draw on the shared request budget");
                    return true;
                }
            }
        }
    }
}
