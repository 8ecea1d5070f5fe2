//! PostgreSQL for the ingest benchmark: a database holding the same rows as the SQLite
//! fixture (`prepare-pg`), and the ledger check of a `load` run against a PostgreSQL database.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use orderwatch::store;
use orderwatch::store::postgres::connect::PgConnect;
use orderwatch::store::postgres::migrate;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use crate::util::BenchResult;

/// Rows copied per statement.
const COPY_CHUNK: usize = 5_000;

/// The tables a prefilled fixture fills, parents first.
const TABLES: &[&str] = &["orders", "order_items", "item_events"];

/// SQLite's 0/1 columns that are `boolean` on PostgreSQL.
const FLAGS: &[&str] = &["watched", "needs_poll"];

#[derive(Debug, clap::Args)]
pub struct PreparePgArgs {
    /// The database to fill (it is emptied first): `postgres://user@127.0.0.1:PORT/NAME`.
    #[arg(long)]
    url: String,
    /// The SQLite fixture (`prepare`'s file) whose rows to copy.
    #[arg(long)]
    from: PathBuf,
}

/// Gives the PostgreSQL database at `--url` the rows of the SQLite fixture `--from`, which
/// `prepare` made through `store::apply` and `record_poll`, so both engines are measured on
/// the same million settled items (random v4 UUIDs, arrival numbers and all). Going through
/// the PostgreSQL write path item by item would take over an hour here: each poll record is
/// several round trips.
pub fn prepare_command(args: PreparePgArgs) -> BenchResult<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(copy_fixture(&args.url, &args.from))?;
    Ok(ExitCode::SUCCESS)
}

async fn copy_fixture(url: &str, from: &Path) -> BenchResult<()> {
    let started = std::time::Instant::now();
    let sqlite = store::open_read_only(from, Duration::from_secs(10))?;
    let connect = PgConnect::from_url(url, "orderwatch-bench")?;
    let mut client = connect.connect().await?;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await?;
    migrate::migrate(&mut client, "orderwatch-bench prepare-pg").await?;
    for table in TABLES {
        let copied = copy_table(&sqlite, &client, table).await?;
        eprintln!(
            "  {table}: {copied} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    // The identities go on after the copied numbers, as they would after the same inserts.
    client
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('orders', 'seq'), (SELECT max(seq) FROM orders));
             SELECT setval(pg_get_serial_sequence('order_items', 'seq'), (SELECT max(seq) FROM order_items));
             SELECT setval(pg_get_serial_sequence('item_events', 'id'), (SELECT max(id) FROM item_events))",
        )
        .await?;
    // One statement each: VACUUM refuses to run in the implicit transaction of a batch.
    for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
        client.batch_execute(statement).await.map_err(|e| {
            format!(
                "{statement}: {}",
                orderwatch::store::postgres::describe_error(&e)
            )
        })?;
    }
    eprintln!(
        "prepared {} from {} in {:.1} s",
        connect.shown(),
        from.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies every row of `table`, `COPY_CHUNK` at a time, as JSON records PostgreSQL turns into
/// its column types; the PostgreSQL-only columns take their defaults.
async fn copy_table(
    sqlite: &rusqlite::Connection,
    client: &Client,
    table: &str,
) -> BenchResult<u64> {
    let mut statement = sqlite.prepare(&format!("SELECT * FROM {table}"))?;
    let columns: Vec<String> = statement.column_names().map(str::to_owned).collect();
    let list = columns.join(", ");
    let insert = format!(
        "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)"
    );
    let mut rows = statement.query([])?;
    let (mut chunk, mut copied) = (Vec::with_capacity(COPY_CHUNK), 0u64);
    while let Some(row) = rows.next()? {
        let mut record = Map::new();
        for (n, column) in columns.iter().enumerate() {
            record.insert(column.clone(), json_of(column, row.get_ref(n)?));
        }
        chunk.push(Value::Object(record));
        if chunk.len() == COPY_CHUNK {
            copied += flush(client, &insert, &mut chunk).await?;
        }
    }
    copied += flush(client, &insert, &mut chunk).await?;
    Ok(copied)
}

async fn flush(client: &Client, insert: &str, chunk: &mut Vec<Value>) -> BenchResult<u64> {
    if chunk.is_empty() {
        return Ok(0);
    }
    let records = Value::Array(std::mem::take(chunk)).to_string();
    Ok(client.execute(insert, &[&records]).await?)
}

/// A SQLite cell as the JSON value PostgreSQL reads into its column.
fn json_of(column: &str, cell: ValueRef<'_>) -> Value {
    match cell {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) if FLAGS.contains(&column) => Value::Bool(n != 0),
        ValueRef::Integer(n) => Value::from(n),
        ValueRef::Real(x) => Value::from(x),
        ValueRef::Text(text) => {
            let text = String::from_utf8_lossy(text);
            if column == "vouchers" {
                // jsonb: the list itself, not a string holding it.
                serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()))
            } else {
                Value::String(text.into_owned())
            }
        }
        ValueRef::Blob(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// What the ledger check found on PostgreSQL: the items of the acknowledged webhooks present,
/// and the items first stored since `started` with how many distinct commit times they have.
pub struct PgLedger {
    pub stored: HashSet<String>,
    pub items: u64,
    pub commit_times: u64,
}

/// Reads the ledger of a run from the database at `url`.
pub fn ledger(url: &str, version: i64, started: chrono::DateTime<Utc>) -> BenchResult<PgLedger> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client: Client = PgConnect::from_url(url, "orderwatch-bench")?
            .connect()
            .await?;
        let stored = client
            .query(
                "SELECT item_uuid::text FROM item_events
                 WHERE source = 'webhook' AND item_version = $1",
                &[&version],
            )
            .await?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT first_seen_at) FROM order_items
                 WHERE first_seen_at >= $1",
                &[&started],
            )
            .await?;
        Ok(PgLedger {
            stored,
            items: row.get::<_, i64>(0) as u64,
            commit_times: row.get::<_, i64>(1) as u64,
        })
    })
}
