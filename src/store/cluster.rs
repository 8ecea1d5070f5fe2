//! The work several instances share on one PostgreSQL database (see
//! [`super::postgres::cluster`] for the SQL): due orders claimed per order, overdue warnings
//! taken per item, one Musement request budget and pause, and the cluster lease. On SQLite
//! there is one instance per file and no [`Cluster`]: its reconciler holds the pass-wide lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::LeaseAnswer;
use super::postgres::cluster as pg;
use super::queries::{DueOrder, OverdueItem};
use super::reader::ReadError;

pub use pg::Grant;

/// The cluster lease's name: its holder exports the database-wide gauges.
pub const CLUSTER_LEASE: &str = "cluster";

/// One instance's handle on the shared work: its name in claims and leases, and the pool.
#[derive(Clone)]
pub struct Cluster {
    pool: Pool,
    /// This instance in `orders.poll_claimed_by` and `leases.holder`.
    holder: String,
    /// The longest one statement may take, a connection included.
    deadline: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// `holder`'s handle on the database behind `pool`.
    pub fn new(pool: Pool, holder: String, deadline: Duration) -> Self {
        Self {
            pool,
            holder,
            deadline,
        }
    }

    /// This instance's name in claims and leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Claims up to `limit` orders due at `now` for `ttl` that nobody polled since
    /// `pass_began` ([`pg::claim_due`]), none of `skip`.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        pass_began: DateTime<Utc>,
        limit: usize,
        ttl: Duration,
        skip: &[Uuid],
    ) -> Result<Vec<DueOrder>, ReadError> {
        let mut client = self.client().await?;
        self.within(pg::claim_due(
            &mut client,
            now,
            pass_began,
            limit,
            &self.holder,
            ttl,
            skip,
        ))
        .await
    }

    /// Gives back this instance's claims on `orders`.
    pub async fn release_claims(&self, orders: &[Uuid]) -> Result<(), ReadError> {
        let client = self.client().await?;
        self.within(pg::release_claims(&client, orders, &self.holder))
            .await
    }

    /// Overdue items nobody has warned about, now marked warned by this instance.
    pub async fn take_overdue(&self, now: DateTime<Utc>) -> Result<Vec<OverdueItem>, ReadError> {
        let client = self.client().await?;
        self.within(pg::take_overdue(&client, now)).await
    }

    /// Up to `want` requests from the shared budget ([`pg::take_requests`]).
    pub async fn take_requests(
        &self,
        now: DateTime<Utc>,
        per_second: f64,
        burst: f64,
        want: u32,
    ) -> Result<Grant, ReadError> {
        let client = self.client().await?;
        self.within(pg::take_requests(&client, now, per_second, burst, want))
            .await
    }

    /// When the cluster-wide Musement pause ends, if it runs at `now`.
    pub async fn paused_until(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ReadError> {
        let client = self.client().await?;
        self.within(pg::paused_until(&client, now)).await
    }

    /// Pauses every instance's Musement calls until `until`.
    pub async fn pause_all(&self, until: DateTime<Utc>) -> Result<(), ReadError> {
        let client = self.client().await?;
        self.within(pg::pause_all(&client, until)).await
    }

    /// Orders due at `now` that no live claim holds, but those in `skip`.
    pub async fn unclaimed_due(
        &self,
        now: DateTime<Utc>,
        skip: &[Uuid],
    ) -> Result<usize, ReadError> {
        let client = self.client().await?;
        self.within(pg::unclaimed_due(&client, now, skip)).await
    }

    /// Takes or renews the lease `name` for `ttl` on the database clock.
    pub async fn acquire_lease(&self, name: &str, ttl: Duration) -> Result<LeaseAnswer, ReadError> {
        let client = self.client().await?;
        self.within(pg::acquire_lease(&client, name, &self.holder, ttl))
            .await
    }

    /// Gives the lease `name` back, if this instance holds it.
    pub async fn release_lease(&self, name: &str) -> Result<(), ReadError> {
        let client = self.client().await?;
        self.within(pg::release_lease(&client, name, &self.holder))
            .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ReadError> {
        tokio::time::timeout(self.deadline, self.pool.get())
            .await
            .map_err(|_| ReadError::TimedOut(self.deadline))?
            .map_err(|e| ReadError::Failed(format!("no PostgreSQL connection: {e}")))
    }

    async fn within<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, ReadError> {
        tokio::time::timeout(self.deadline, statement)
            .await
            .map_err(|_| ReadError::TimedOut(self.deadline))?
            .map_err(|e| ReadError::Failed(super::postgres::describe_error(&e)))
    }
}
