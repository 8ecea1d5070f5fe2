//! The store's read side for the daemon: one method per question the reconciler, `/metrics`
//! and `orderwatch reconcile` ask, each answered off the async threads within a deadline
//! ([`Reader`]). Callers never see a connection or SQL, so a second database engine answers the
//! same methods.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::{self, DueOrder, OverdueItem, PollBacklog, StateSnapshot};
use super::reader::{ReadError, Reader};

/// Answers the daemon's questions about one database, each within `deadline`.
#[derive(Debug, Clone)]
pub struct Reads {
    /// Opens a read-only connection per read.
    reader: Reader,
    /// The longest one answer may take; past it the read is interrupted.
    deadline: Duration,
}

impl Reads {
    /// Reads `database`, waiting up to `busy_timeout` for a lock and `deadline` for an answer.
    pub fn new(database: &Path, busy_timeout: Duration, deadline: Duration) -> Self {
        Self {
            reader: Reader::new(database, busy_timeout),
            deadline,
        }
    }

    /// The orders a scheduled pass polls at `now` ([`queries::due_orders`]).
    pub async fn due_orders(&self, now: DateTime<Utc>) -> Result<Vec<DueOrder>, ReadError> {
        self.reader
            .read(self.deadline, move |conn| queries::due_orders(conn, now))
            .await
    }

    /// Every order still to poll, due or not ([`queries::orders_to_poll`]).
    pub async fn orders_to_poll(&self, now: DateTime<Utc>) -> Result<Vec<DueOrder>, ReadError> {
        self.reader
            .read(self.deadline, move |conn| {
                queries::orders_to_poll(conn, now)
            })
            .await
    }

    /// Items past their confirmation deadline not warned about yet.
    pub async fn unwarned_overdue(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<OverdueItem>, ReadError> {
        self.reader
            .read(self.deadline, move |conn| {
                queries::unwarned_overdue(conn, now)
            })
            .await
    }

    /// What waits to be polled after `now`, but the orders in `except`
    /// ([`queries::poll_backlog`]).
    pub async fn poll_backlog(
        &self,
        now: DateTime<Utc>,
        soon: DateTime<Utc>,
        except: Vec<Uuid>,
    ) -> Result<PollBacklog, ReadError> {
        self.reader
            .read(self.deadline, move |conn| {
                queries::poll_backlog(conn, now, soon, &except)
            })
            .await
    }

    /// The stored state `/metrics` shows, ages measured to `now`.
    pub async fn state_snapshot(&self, now: DateTime<Utc>) -> Result<StateSnapshot, ReadError> {
        self.reader
            .read(self.deadline, move |conn| {
                queries::state_snapshot(conn, now)
            })
            .await
    }
}
