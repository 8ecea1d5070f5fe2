//! The store's read side for the daemon: one method per question the reconciler, `/metrics`,
//! the partner API and `orderwatch reconcile` ask, each answered within a deadline. On SQLite each read opens
//! a read-only connection off the async threads ([`Reader`]); on PostgreSQL it borrows one
//! from the pool. Callers never see a connection or SQL, nor which engine answers.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::deliveries::{self, DestinationRow};
use super::inspect::{
    self, ChangePage, FeedPosition, ItemFacts, ItemFilter, ItemRow, ShowError, Shown, Stats,
    UnusableCursor,
};
use super::postgres::deliveries as pg_deliveries;
use super::postgres::feed;
use super::postgres::inspect as pg_inspect;
use super::postgres::queries as pg;
use super::queries::{self, DueOrder, OverdueItem, PollBacklog, StateSnapshot};
use super::reader::{ReadError, Reader};

/// Answers the daemon's questions about one database, each within `deadline`.
#[derive(Debug, Clone)]
pub struct Reads {
    engine: Engine,
    /// The longest one answer may take; past it the read is abandoned (on SQLite,
    /// interrupted; on PostgreSQL, `statement_timeout` ends it on the server).
    deadline: Duration,
}

/// Where the reads go.
#[derive(Clone)]
enum Engine {
    /// A read-only connection per read.
    Sqlite(Reader),
    /// The instance's connection pool.
    Postgres(Pool),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(reader) => reader.fmt(f),
            Self::Postgres(pool) => write!(f, "Postgres({:?})", pool.status()),
        }
    }
}

impl Reads {
    /// Reads the SQLite file `database`, waiting up to `busy_timeout` for a lock and
    /// `deadline` for an answer.
    pub fn new(database: &Path, busy_timeout: Duration, deadline: Duration) -> Self {
        Self {
            engine: Engine::Sqlite(Reader::new(database, busy_timeout)),
            deadline,
        }
    }

    /// Reads PostgreSQL through `pool`, waiting up to `deadline` for an answer (a connection
    /// included).
    pub fn postgres(pool: Pool, deadline: Duration) -> Self {
        Self {
            engine: Engine::Postgres(pool),
            deadline,
        }
    }

    /// The same database, answers awaited up to `deadline`.
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            engine: self.engine.clone(),
            deadline,
        }
    }

    /// The shared work of several instances on this database, for the instance `holder`;
    /// `None` on SQLite, where one instance owns the file.
    pub fn cluster(&self, holder: &str) -> Option<super::cluster::Cluster> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(pool) => Some(super::cluster::Cluster::new(
                pool.clone(),
                holder.to_owned(),
                self.deadline,
            )),
        }
    }

    /// The orders a scheduled pass polls at `now` ([`queries::due_orders`]).
    pub async fn due_orders(&self, now: DateTime<Utc>) -> Result<Vec<DueOrder>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| queries::due_orders(conn, now))
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| pg::due_orders(client, now).await)
                    .await
            }
        }
    }

    /// Every order still to poll, due or not ([`queries::orders_to_poll`]).
    pub async fn orders_to_poll(&self, now: DateTime<Utc>) -> Result<Vec<DueOrder>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        queries::orders_to_poll(conn, now)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| pg::orders_to_poll(client, now).await)
                    .await
            }
        }
    }

    /// Items past their confirmation deadline not warned about yet.
    pub async fn unwarned_overdue(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<OverdueItem>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        queries::unwarned_overdue(conn, now)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| pg::unwarned_overdue(client, now).await)
                    .await
            }
        }
    }

    /// What waits to be polled after `now`, but the orders in `except`
    /// ([`queries::poll_backlog`]).
    pub async fn poll_backlog(
        &self,
        now: DateTime<Utc>,
        soon: DateTime<Utc>,
        except: Vec<Uuid>,
    ) -> Result<PollBacklog, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        queries::poll_backlog(conn, now, soon, &except)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    pg::poll_backlog(client, now, soon, &except).await
                })
                .await
            }
        }
    }

    /// The stored state `/metrics` shows, ages measured to `now`.
    pub async fn state_snapshot(&self, now: DateTime<Utc>) -> Result<StateSnapshot, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        queries::state_snapshot(conn, now)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| pg::state_snapshot(client, now).await)
                    .await
            }
        }
    }

    /// What `orderwatch show` shows for the item or order `uuid` (its full UUID); `None` when
    /// no item or order has it.
    pub async fn show(&self, uuid: Uuid, now: DateTime<Utc>) -> Result<Option<Shown>, ReadError> {
        let text = uuid.to_string();
        let shown = match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        Ok(inspect::show(conn, &text, now))
                    })
                    .await?
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    Ok(pg_inspect::show(client, &text, now).await)
                })
                .await?
            }
        };
        match shown {
            Ok(shown) => Ok(Some(shown)),
            Err(ShowError::NotFound(_)) => Ok(None),
            Err(error) => Err(ReadError::Failed(error.to_string())),
        }
    }

    /// The stored facts of the item `item` ([`inspect::item_facts`]); `None` when no such
    /// item is stored.
    pub async fn item_facts(&self, item: Uuid) -> Result<Option<ItemFacts>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                let text = item.to_string();
                reader
                    .read(self.deadline, move |conn| inspect::item_facts(conn, &text))
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    pg_inspect::item_facts(client, item).await
                })
                .await
            }
        }
    }

    /// Items matching `filter` ([`inspect::items`]), ages measured to `now`.
    pub async fn items(
        &self,
        filter: ItemFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ItemRow>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        inspect::items(conn, &filter, now)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    pg_inspect::items(client, &filter, now).await
                })
                .await
            }
        }
    }

    /// What `orderwatch stats` counts, ages measured to `now`.
    pub async fn stats(&self, now: DateTime<Utc>) -> Result<Stats, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| inspect::stats(conn, now))
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| pg_inspect::stats(client, now).await)
                    .await
            }
        }
    }

    /// Up to `page` events after `after`, the status changes among them (the feed
    /// `orderwatch changes` prints); the inner error is a cursor this database cannot use.
    pub async fn changes(
        &self,
        after: FeedPosition,
        page: usize,
    ) -> Result<Result<ChangePage, UnusableCursor>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        inspect::changes_from(conn, after, page)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    feed::changes_from(client, after, page).await
                })
                .await
            }
        }
    }

    /// The voucher URLs of `items`, for the bodies of their deliveries (items never polled
    /// have none).
    pub async fn vouchers(
        &self,
        items: Vec<String>,
    ) -> Result<HashMap<String, Vec<String>>, ReadError> {
        let found = match &self.engine {
            Engine::Sqlite(reader) => {
                reader
                    .read(self.deadline, move |conn| {
                        deliveries::vouchers(conn, &items)
                    })
                    .await
            }
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    pg_deliveries::vouchers(client, &items).await
                })
                .await
            }
        }?;
        Ok(found.into_iter().collect())
    }

    /// Every destination of signed webhooks out with its backlog (`/metrics`).
    pub async fn destinations(&self) -> Result<Vec<DestinationRow>, ReadError> {
        match &self.engine {
            Engine::Sqlite(reader) => reader.read(self.deadline, deliveries::destinations).await,
            Engine::Postgres(pool) => {
                self.on(pool, async |client| {
                    pg_deliveries::destinations(client).await
                })
                .await
            }
        }
    }

    /// Runs `query` on a pooled PostgreSQL connection, all within the deadline.
    async fn on<T>(
        &self,
        pool: &Pool,
        query: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, ReadError> {
        within(self.deadline, async {
            let client = pool
                .get()
                .await
                .map_err(|e| ReadError::Failed(format!("no PostgreSQL connection: {e}")))?;
            query(&client)
                .await
                .map_err(|e| ReadError::Failed(super::postgres::describe_error(&e)))
        })
        .await
    }
}

/// `read`'s answer, or [`ReadError::TimedOut`] after `deadline`.
async fn within<T>(
    deadline: Duration,
    read: impl Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(ReadError::TimedOut(deadline)))
}
