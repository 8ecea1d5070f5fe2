//! Reading a database the way a test checks it: one row, or every row, of a query, each read as
//! a tuple of its columns (or one value / one column), panicking with the query on any error.
//!
//! [`TestDb`] is the database a test's app or daemon writes, on the engine under test
//! ([`super::backend`]). Tests write their SQL in SQLite's dialect with rusqlite's types, as
//! an operator's `sqlite3` would; on PostgreSQL each statement is carried over (parameters
//! inlined as literals, which PostgreSQL types from their context; `flag = 1` for the boolean
//! columns) and each row's values (uuid and times as SQLite stores them: lower-case text and
//! RFC 3339 with milliseconds) handed back as rusqlite values, so the same closures and
//! `FromSql` types read them.

use std::path::Path;

use rusqlite::types::{FromSql, Value};
use rusqlite::{Connection, Params, Row};

use super::backend;

/// A test's view of the database under test.
pub enum TestDb {
    Sqlite(Connection),
    /// The database's URL; each statement runs on a connection of its own.
    Postgres(String),
}

/// What the `row`/`rows`/`value`/`column` helpers read from.
pub trait Query {
    /// Runs `sql` with `params` and maps every row with `f`.
    fn query_rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>>;
}

impl Query for Connection {
    fn query_rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        let mut statement = self.prepare(sql)?;
        statement.query_map(params, f)?.collect()
    }
}

impl Query for TestDb {
    fn query_rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        match self {
            Self::Sqlite(conn) => conn.query_rows(sql, params, f),
            Self::Postgres(url) => {
                let (names, rows) = postgres_rows(url, &postgres_sql(sql, params)?);
                let scratch = Connection::open_in_memory()?;
                let select = if names.is_empty() {
                    "SELECT 1".to_owned()
                } else {
                    let columns: Vec<String> = names
                        .iter()
                        .enumerate()
                        .map(|(n, name)| format!("?{} AS \"{}\"", n + 1, name.replace('"', "")))
                        .collect();
                    format!("SELECT {}", columns.join(", "))
                };
                rows.into_iter()
                    .map(|values| {
                        scratch.query_row(&select, rusqlite::params_from_iter(values), &mut f)
                    })
                    .collect()
            }
        }
    }
}

impl TestDb {
    /// The database of the test folder `dir`: the SQLite file `path`, or on PostgreSQL the
    /// folder's own database.
    pub fn open(dir: &Path, path: &Path) -> Self {
        if backend::postgres() {
            Self::Postgres(backend::database_url(dir))
        } else {
            Self::Sqlite(Connection::open(path).unwrap())
        }
    }

    /// rusqlite's `query_row`, on either engine.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut f = Some(f);
        let mut rows = self.query_rows(sql, params, |row| (f.take().expect("one row"))(row))?;
        match rows.len() {
            0 => Err(rusqlite::Error::QueryReturnedNoRows),
            _ => Ok(rows.swap_remove(0)),
        }
    }

    /// rusqlite's `execute`, on either engine: the number of rows changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        match self {
            Self::Sqlite(conn) => conn.execute(sql, params),
            Self::Postgres(url) => Ok(postgres_execute(url, &postgres_sql(sql, params)?)),
        }
    }

    /// rusqlite's `execute_batch`, on either engine.
    pub fn execute_batch(&self, sql: &str) -> rusqlite::Result<()> {
        match self {
            Self::Sqlite(conn) => conn.execute_batch(sql),
            Self::Postgres(url) => {
                postgres_execute(url, &postgres_sql(sql, [])?);
                Ok(())
            }
        }
    }
}

/// Another process's write lock on the database, as a long `sqlite3` (or `psql`) session
/// holds one: on SQLite `BEGIN EXCLUSIVE`; on PostgreSQL every table orderwatch writes locked
/// `IN EXCLUSIVE MODE` (reads go on, writes wait). Released when dropped.
pub enum WriteLock {
    Sqlite(Connection),
    Postgres {
        release: Option<std::sync::mpsc::Sender<()>>,
        holder: Option<std::thread::JoinHandle<()>>,
    },
}

/// The tables orderwatch writes on PostgreSQL.
const WRITTEN_TABLES: &str =
    "orders, order_items, item_events, rejected_webhooks, leases, heartbeat";

impl TestDb {
    /// Takes a write lock as another process would, once it is held.
    pub fn lock_writes(&self) -> WriteLock {
        match self {
            Self::Sqlite(conn) => {
                let path = conn.path().expect("a file database").to_owned();
                let other = Connection::open(path).unwrap();
                other.execute_batch("BEGIN EXCLUSIVE").unwrap();
                WriteLock::Sqlite(other)
            }
            Self::Postgres(url) => {
                let url = url.clone();
                let (release, released) = std::sync::mpsc::channel::<()>();
                let (locked, is_locked) = std::sync::mpsc::channel::<()>();
                let holder = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let client = super::pg::connect(&url).await;
                        client
                            .batch_execute(&format!(
                                "BEGIN; LOCK TABLE {WRITTEN_TABLES} IN EXCLUSIVE MODE"
                            ))
                            .await
                            .unwrap();
                        locked.send(()).unwrap();
                        // Held until the lock is dropped (or the test is gone).
                        let _ = tokio::task::spawn_blocking(move || released.recv()).await;
                        client.batch_execute("ROLLBACK").await.unwrap();
                    });
                });
                is_locked.recv().expect("the lock is taken");
                WriteLock::Postgres {
                    release: Some(release),
                    holder: Some(holder),
                }
            }
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(conn) => {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Self::Postgres { release, holder } => {
                drop(release.take());
                if let Some(holder) = holder.take() {
                    let _ = holder.join();
                }
            }
        }
    }
}

/// PostgreSQL's boolean columns, which SQLite's SQL compares with 1 and 0.
const BOOLEAN_COLUMNS: &[&str] = &["watched", "needs_poll", "overdue"];

/// `sql` in PostgreSQL's dialect with `params` inlined: `?N` and `?` become literals.
fn postgres_sql<P: Params>(sql: &str, params: P) -> rusqlite::Result<String> {
    let pieces = split_at_parameters(sql);
    let values = bound_values(&pieces, params)?;
    let mut out = String::with_capacity(sql.len());
    for piece in &pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Parameter(index) => out.push_str(&literal(&values[index - 1])),
        }
    }
    for column in BOOLEAN_COLUMNS {
        for (from, to) in [("1", "true"), ("0", "false")] {
            out = out.replace(&format!("{column} = {from}"), &format!("{column} = {to}"));
        }
    }
    Ok(out)
}

/// A stretch of SQL text, or a parameter by its 1-based number.
enum Piece<'a> {
    Text(&'a str),
    Parameter(usize),
}

/// `sql` cut at its parameters (`?N`, or bare `?` numbered in order), outside quotes.
fn split_at_parameters(sql: &str) -> Vec<Piece<'_>> {
    let (mut pieces, mut start, mut anonymous, mut in_quote) = (Vec::new(), 0, 0, false);
    let bytes = sql.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\'' => in_quote = !in_quote,
            b'?' if !in_quote => {
                pieces.push(Piece::Text(&sql[start..at]));
                let digits = bytes[at + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let index = match sql[at + 1..at + 1 + digits].parse() {
                    Ok(index) => index,
                    Err(_) => {
                        anonymous += 1;
                        anonymous
                    }
                };
                pieces.push(Piece::Parameter(index));
                at += digits;
                start = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
    pieces.push(Piece::Text(&sql[start..]));
    pieces
}

/// The values `params` binds to the parameters among `pieces`, read back through SQLite itself.
fn bound_values<P: Params>(pieces: &[Piece<'_>], params: P) -> rusqlite::Result<Vec<Value>> {
    let count = pieces
        .iter()
        .filter_map(|piece| match piece {
            Piece::Parameter(index) => Some(*index),
            Piece::Text(_) => None,
        })
        .max()
        .unwrap_or(0);
    if count == 0 {
        return Ok(Vec::new());
    }
    let scratch = Connection::open_in_memory()?;
    let select: Vec<String> = (1..=count).map(|n| format!("?{n}")).collect();
    scratch.query_row(&format!("SELECT {}", select.join(", ")), params, |row| {
        (0..count).map(|n| row.get::<_, Value>(n)).collect()
    })
}

/// `value` as a PostgreSQL literal (text untyped, so the column it meets gives its type).
fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Integer(n) => n.to_string(),
        Value::Real(x) => format!("{x:?}"),
        Value::Text(text) => format!("'{}'", text.replace('\'', "''")),
        Value::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("'\\x{hex}'::bytea")
        }
    }
}

/// Runs `sql` on `url` (from a thread of its own: the caller may be inside a runtime) and
/// gives the column names and every row's values as SQLite would hold them.
fn postgres_rows(url: &str, sql: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_postgres(move |runtime| {
        runtime.block_on(async {
            let client = super::pg::connect(&url).await;
            let statement = client
                .prepare(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
            let names = statement
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
            let rows = client
                .query(&statement, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
            let values = rows
                .iter()
                .map(|row| (0..row.len()).map(|n| sqlite_value(row, n, &sql)).collect())
                .collect();
            (names, values)
        })
    })
}

/// Runs `sql` (one or more statements) on `url`; the rows the last one changed.
fn postgres_execute(url: &str, sql: &str) -> usize {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_postgres(move |runtime| {
        runtime.block_on(async {
            let client = super::pg::connect(&url).await;
            let messages = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
            messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n as usize),
                    _ => None,
                })
                .last()
                .unwrap_or(0)
        })
    })
}

fn on_postgres<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        work(&runtime)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn describe(error: &tokio_postgres::Error) -> String {
    orderwatch::store::postgres::describe_error(error)
}

/// Column `n` of `row` as SQLite stores its twin: flags as 0/1, UUIDs as text, times as
/// RFC 3339 text with milliseconds, JSON as its text.
fn sqlite_value(row: &tokio_postgres::Row, n: usize, sql: &str) -> Value {
    use tokio_postgres::types::Type;
    let kind = row.columns()[n].type_().clone();
    let value = match kind {
        Type::BOOL => row
            .get::<_, Option<bool>>(n)
            .map(|b| Value::Integer(b.into())),
        Type::INT2 => row
            .get::<_, Option<i16>>(n)
            .map(|v| Value::Integer(v.into())),
        Type::INT4 => row
            .get::<_, Option<i32>>(n)
            .map(|v| Value::Integer(v.into())),
        Type::INT8 => row.get::<_, Option<i64>>(n).map(Value::Integer),
        Type::FLOAT4 => row.get::<_, Option<f32>>(n).map(|v| Value::Real(v.into())),
        Type::FLOAT8 => row.get::<_, Option<f64>>(n).map(Value::Real),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.get::<_, Option<String>>(n).map(Value::Text)
        }
        Type::UUID => row
            .get::<_, Option<uuid::Uuid>>(n)
            .map(|u| Value::Text(u.to_string())),
        Type::TIMESTAMPTZ => row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(n)
            .map(|t| Value::Text(orderwatch::clock::to_db_text(t))),
        Type::JSON | Type::JSONB => row
            .get::<_, Option<serde_json::Value>>(n)
            .map(|j| Value::Text(j.to_string())),
        Type::BYTEA => row.get::<_, Option<Vec<u8>>>(n).map(Value::Blob),
        other => panic!(
            "{sql}: column {n} is of type {other}, which the test layer does not read; cast it"
        ),
    };
    value.unwrap_or(Value::Null)
}

/// The one row `sql` (with `params`) returns, as a tuple of its columns.
pub fn row<T>(db: &impl Query, sql: &str, params: impl Params) -> T
where
    T: for<'r> TryFrom<&'r Row<'r>, Error = rusqlite::Error>,
{
    let mut found = rows::<T>(db, sql, params);
    assert!(!found.is_empty(), "{sql}: no row");
    found.swap_remove(0)
}

/// Every row `sql` (with `params`) returns, in its order, each as a tuple of its columns.
pub fn rows<T>(db: &impl Query, sql: &str, params: impl Params) -> Vec<T>
where
    T: for<'r> TryFrom<&'r Row<'r>, Error = rusqlite::Error>,
{
    db.query_rows(sql, params, |r| T::try_from(r))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The single value `sql` (with `params`) returns.
pub fn value<T: FromSql>(db: &impl Query, sql: &str, params: impl Params) -> T {
    let mut found = column::<T>(db, sql, params);
    assert!(!found.is_empty(), "{sql}: no row");
    found.swap_remove(0)
}

/// The first column of every row `sql` (with `params`) returns, in its order.
pub fn column<T: FromSql>(db: &impl Query, sql: &str, params: impl Params) -> Vec<T> {
    db.query_rows(sql, params, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
