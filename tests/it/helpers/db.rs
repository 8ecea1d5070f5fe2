//! Reading a database the way a test checks it: one row, or every row, of a query, each read as
//! a tuple of its columns (or one value / one column), panicking with the query on any error.

use rusqlite::types::FromSql;
use rusqlite::{Connection, Params, Row};

/// The one row `sql` (with `params`) returns, as a tuple of its columns.
pub fn row<T>(db: &Connection, sql: &str, params: impl Params) -> T
where
    T: for<'r> TryFrom<&'r Row<'r>, Error = rusqlite::Error>,
{
    db.query_row(sql, params, |r| T::try_from(r))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every row `sql` (with `params`) returns, in its order, each as a tuple of its columns.
pub fn rows<T>(db: &Connection, sql: &str, params: impl Params) -> Vec<T>
where
    T: for<'r> TryFrom<&'r Row<'r>, Error = rusqlite::Error>,
{
    let mut statement = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    statement
        .query_map(params, |r| T::try_from(r))
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The single value `sql` (with `params`) returns.
pub fn value<T: FromSql>(db: &Connection, sql: &str, params: impl Params) -> T {
    db.query_row(sql, params, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of every row `sql` (with `params`) returns, in its order.
pub fn column<T: FromSql>(db: &Connection, sql: &str, params: impl Params) -> Vec<T> {
    let mut statement = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    statement
        .query_map(params, |r| r.get(0))
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
