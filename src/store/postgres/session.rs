//! A writer's transaction with its connection's prepared statements: every statement of the
//! write path is parsed and planned by the server once per connection instead of once per
//! batch (tokio-postgres prepares an SQL string anew, an extra round trip, on every call).
//!
//! The statements are the write path's fixed SQL texts (`&'static str`), so the cache stays as
//! small as the code. They name their columns (no `*`), so a newer binary's expand-only
//! migration (new columns, new tables) never changes a cached statement's result and the server
//! re-plans them by itself. A prepared statement outlives the transaction it was prepared in,
//! rolled back or not; it dies with its connection, and so does [`Statements`] (the writer
//! keeps them together).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement, Transaction};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// One connection's prepared statements, by their SQL text.
#[derive(Debug, Default)]
pub struct Statements {
    by_sql: Mutex<HashMap<&'static str, Statement>>,
}

impl Statements {
    /// How many statements are prepared (for tests and the writer's log).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        // A panic while holding it cannot leave the map half-written.
        self.by_sql.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A transaction whose statements run prepared: what the write path's functions take.
pub struct Session<'a> {
    tx: &'a Transaction<'a>,
    statements: &'a Statements,
}

impl<'a> Session<'a> {
    /// `statements` must belong to `tx`'s connection.
    pub fn new(tx: &'a Transaction<'a>, statements: &'a Statements) -> Self {
        Self { tx, statements }
    }

    /// `sql` prepared on this connection: from the cache, or prepared now and kept.
    async fn prepared(&self, sql: &'static str) -> Result<Statement> {
        if let Some(statement) = self.statements.lock().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql).await?;
        self.statements.lock().insert(sql, statement.clone());
        Ok(statement)
    }

    pub async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let statement = self.prepared(sql).await?;
        self.tx.query(&statement, params).await
    }

    pub async fn query_one(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let statement = self.prepared(sql).await?;
        self.tx.query_one(&statement, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let statement = self.prepared(sql).await?;
        self.tx.query_opt(&statement, params).await
    }

    pub async fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.prepared(sql).await?;
        self.tx.execute(&statement, params).await
    }

    /// Statements without parameters or results (`SAVEPOINT …`), as they are.
    pub async fn batch_execute(&self, sql: &str) -> Result<()> {
        self.tx.batch_execute(sql).await
    }
}
