//! Which instance does what must be done once for the whole database: export the
//! database-wide gauges (items by status, pending, overdue, oldest pending age), so that a sum
//! across instances is right, and prune history. On PostgreSQL that is the holder of the
//! cluster lease (`store::cluster::CLUSTER_LEASE`, on the database clock), which every instance
//! tries to take or renew every [`RENEW_EVERY`]; one that dies loses it after [`LEASE_TTL`].
//! On SQLite one instance owns the file and always leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::store::LeaseAnswer;
use crate::store::cluster::{CLUSTER_LEASE, Cluster};

/// How long the cluster lease holds without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often every instance takes or renews it: well within [`LEASE_TTL`], so a database
/// hiccup or two does not hand it over.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Whether this instance leads now; cheap to clone and ask.
#[derive(Debug, Clone)]
pub struct Leadership {
    held: watch::Receiver<bool>,
}

impl Leadership {
    /// Always the leader: the only instance on its database (SQLite, or a test).
    pub fn sole() -> Self {
        let (_, held) = watch::channel(true);
        Self { held }
    }

    /// Whether this instance holds the cluster lease now.
    pub fn leads(&self) -> bool {
        *self.held.borrow()
    }
}

/// Keeps taking or renewing the cluster lease until [`Self::stop`].
pub struct LeaseKeeper {
    task: Option<JoinHandle<()>>,
    cluster: Option<Cluster>,
}

impl LeaseKeeper {
    /// Starts leading: on SQLite (`cluster` is `None`) at once and for good; on PostgreSQL
    /// after a first try for the lease (awaited, so a lone instance exports its gauges from
    /// its first scrape), then by renewals in the background. `metrics` shows which it is.
    pub async fn start(cluster: Option<Cluster>, metrics: Arc<Metrics>) -> (Self, Leadership) {
        let Some(cluster) = cluster else {
            metrics.cluster_lease_held(true);
            let keeper = Self {
                task: None,
                cluster: None,
            };
            return (keeper, Leadership::sole());
        };
        let (tell, held) = watch::channel(false);
        let mut renewed = take_or_renew(&cluster, &tell, &metrics, None).await;
        let task = tokio::spawn({
            let cluster = cluster.clone();
            async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    renewed = take_or_renew(&cluster, &tell, &metrics, renewed).await;
                }
            }
        });
        let keeper = Self {
            task: Some(task),
            cluster: Some(cluster),
        };
        (keeper, Leadership { held })
    }

    /// Stops renewing and gives the lease back, so another instance takes it at its next
    /// try instead of after [`LEASE_TTL`].
    pub async fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(cluster) = self.cluster
            && let Err(error) = cluster.release_lease(CLUSTER_LEASE).await
        {
            tracing::warn!(%error, "could not give back the cluster lease; it expires by itself");
        }
    }
}

/// One try for the lease; says when this instance starts or stops leading. `renewed` is when
/// this instance last took or renewed it; gives the same after this try.
async fn take_or_renew(
    cluster: &Cluster,
    tell: &watch::Sender<bool>,
    metrics: &Metrics,
    renewed: Option<Instant>,
) -> Option<Instant> {
    let tried_at = Instant::now();
    let (leads, renewed) = match cluster.acquire_lease(CLUSTER_LEASE, LEASE_TTL).await {
        Ok(LeaseAnswer::Acquired { .. }) => (true, Some(tried_at)),
        Ok(LeaseAnswer::Held { holder, .. }) => {
            if *tell.borrow() {
                tracing::warn!(%holder, "another instance took the cluster lease");
            }
            (false, None)
        }
        Err(error) => {
            tracing::warn!(%error, "could not take or renew the cluster lease; trying again");
            // Still ours on the server until it expires; past that, assume another took it.
            let still = renewed.is_some_and(|at| at.elapsed() < LEASE_TTL);
            (still, renewed.filter(|_| still))
        }
    };
    if leads && !*tell.borrow() {
        tracing::info!(
            instance = cluster.holder(),
            "this instance holds the cluster lease: it exports the database-wide gauges and prunes history"
        );
    }
    tell.send_replace(leads);
    metrics.cluster_lease_held(leads);
    renewed
}
