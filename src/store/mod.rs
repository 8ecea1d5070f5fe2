//! Storage: opening and migrating the database, the one function that applies observations
//! ([`apply_batch`], folding the pure rule over a batch in `batch.rs`), the group-commit
//! [`writer`], and the read side: [`reads::Reads`] for the daemon, [`inspection::Inspection`]
//! for the inspection commands. Everything outside this module goes through [`open`] and
//! those; none of it names the database engine. SQLite's code is here; PostgreSQL's is in
//! [`postgres`], selected by `[database] url`.
//!
//! How the engines plug in: the writer thread is generic over [`writer::Batches`] (how one
//! batch of commands commits; SQLite's is `sqlite_batches.rs`, PostgreSQL's
//! `postgres/batches.rs`). A trait there, because the loop around it (queue, batching,
//! answers, health) must not know the engine, and one engine per process is chosen at start,
//! so static dispatch costs nothing. The read side is concrete types whose methods are the
//! questions asked, each holding either engine's handle and matching on it per method, so no
//! caller changes with the engine. Every "which source wins" decision is the pure rule's
//! ([`rule`]); an engine only carries it out.

mod apply;
mod batch;
mod cells;
pub mod checkpoint;
pub mod cluster;
pub mod commands;
pub mod deliveries;
pub mod inspect;
pub mod inspection;
pub mod maintenance;
pub mod observer;
pub mod poll_state;
pub mod polls;
pub mod postgres;
pub mod pruning;
pub mod queries;
pub mod reader;
pub mod reads;
pub mod rule;
pub mod sqlite_batches;
pub mod sqlite_file;
#[cfg(test)]
mod testing;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use self::checkpoint::CheckpointSettings;
use self::observer::StoreObserver;
use self::postgres::batches::PgTarget;
use self::postgres::connect::PgConnect;
use self::reads::Reads;
use self::writer::{Writer, WriterSettings, WriterThread};
use crate::clock::Clock;
use crate::config::Config;

pub use apply::{RejectedWebhook, apply, apply_batch, record_rejected};
pub use poll_state::PollPolicy;
pub use polls::{Backoff, LeaseAnswer, PollFailure, PollRecord, PollRecorded, record_poll};
pub use rule::{Decision, ItemState, OrderState, Outcome, Rules, decide, decide_order};

/// What the store functions need to know besides the connection and their input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSettings {
    /// The ordering rule's tuning.
    pub rules: Rules,
    /// What makes an order due for polling.
    pub policy: PollPolicy,
    /// Newest rejected webhooks kept.
    pub rejected_keep: u32,
}

impl StoreSettings {
    /// The store's view of the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            rules: Rules {
                skew_margin: chrono_duration(config.store.skew_margin),
                ..Rules::default()
            },
            policy: PollPolicy {
                poll_statuses: config.reconciler.poll_statuses.clone(),
                quiet_period: chrono_duration(config.reconciler.quiet_period),
                recheck_interval: chrono_duration(config.reconciler.recheck_interval),
            },
            rejected_keep: config.store.rejected_keep,
        }
    }
}

/// A configured duration as the store computes with it (an absurdly long one saturates).
fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The configured database, open for the daemon: the single writer and the read side.
pub struct Opened {
    /// Where writes are sent.
    pub writer: Writer,
    /// The writer's thread, to shut down last.
    pub writer_thread: WriterThread,
    /// The daemon's reads; answers awaited [`DEFAULT_READ_DEADLINE`] unless re-set with
    /// [`Reads::with_deadline`].
    pub reads: Reads,
}

/// How long a read is awaited unless its caller says otherwise.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(30);

/// Opens (creating and migrating) the configured database, SQLite's file or PostgreSQL's
/// schema, and starts the single writer on it (on SQLite with its checkpointer), reporting to
/// `observer`.
pub async fn open(
    config: &Config,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<Opened, StoreError> {
    let settings = WriterSettings {
        max_batch: config.store.max_batch,
        queue_capacity: config.store.queue_capacity,
        store: StoreSettings::from_config(config),
        max_size_bytes: config.database.max_size_bytes,
        checkpoints: CheckpointSettings::default(),
    };
    if config.database.url.is_some() {
        return open_postgres(config, settings, clock, observer).await;
    }
    let database = config.database.clone();
    let conn = tokio::task::spawn_blocking(move || {
        let conn = open_for_writing(&database.path, database.busy_timeout)?;
        if let Some(bytes) = database.max_size_bytes {
            limit_size(&conn, bytes)?;
        }
        // Said once so operators (and the durability test) can see the promise is in force.
        let journal_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        let synchronous = synchronous_name(synchronous);
        tracing::info!(%journal_mode, %synchronous, "database opened for writing");
        Ok::<_, StoreError>(conn)
    })
    .await
    .map_err(|e| StoreError::Io {
        path: config.database.path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let (writer, writer_thread) =
        writer::spawn(conn, &config.database.path, settings, clock, observer)?;
    let reads = Reads::new(
        &config.database.path,
        config.database.busy_timeout,
        DEFAULT_READ_DEADLINE,
    );
    Ok(Opened {
        writer,
        writer_thread,
        reads,
    })
}

/// [`open`] on PostgreSQL: the schema migrated (under its advisory lock, as several
/// instances may start at once), the writer's own connection, and the pool for reads.
async fn open_postgres(
    config: &Config,
    settings: WriterSettings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<Opened, StoreError> {
    let database = &config.database;
    let shown = database.describe();
    let ignored = database.ignored(&config.sources);
    if !ignored.is_empty() {
        tracing::info!(ignored = %ignored.join(", "), "database.url selects PostgreSQL; SQLite's keys are ignored");
    }
    let instance = config.server.instance_id();
    let (connect, schema) = connect_and_migrate(config, &instance, "").await?;
    tracing::info!(
        database = %shown,
        tls = %database.tls_mode(),
        schema_version = schema.version,
        migrations_applied = schema.applied,
        "database opened for writing"
    );
    let target = PgTarget {
        connect: connect.clone(),
        instance,
    };
    let (writer, writer_thread) = postgres::start_writer(target, settings, clock, observer)
        .await
        .map_err(|e| StoreError::Postgres {
            url: shown,
            reason: e.to_string(),
        })?;
    let reads = Reads::postgres(connect.pool(database.pool_size), DEFAULT_READ_DEADLINE);
    Ok(Opened {
        writer,
        writer_thread,
        reads,
    })
}

/// Where a database's schema stands after [`migrate_schema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaReport {
    /// The schema version now.
    pub version: i64,
    /// Migrations applied by this call.
    pub applied: usize,
}

/// Creates or upgrades the configured database's schema and does nothing else
/// (`orderwatch migrate`).
pub async fn migrate_schema(config: &Config) -> Result<SchemaReport, StoreError> {
    let database = config.database.clone();
    if database.url.is_none() {
        return tokio::task::spawn_blocking(move || {
            let before = match open_read_only(&database.path, database.busy_timeout) {
                Ok(conn) => schema_version(&conn)?,
                Err(StoreError::Missing { .. } | StoreError::NotOrderwatch { .. }) => 0,
                Err(other) => return Err(other),
            };
            let conn = open_for_writing(&database.path, database.busy_timeout)?;
            let version = schema_version(&conn)?;
            Ok(SchemaReport {
                version,
                applied: (version - before).max(0) as usize,
            })
        })
        .await
        .map_err(|e| StoreError::Io {
            path: config.database.path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let instance = config.server.instance_id();
    let (_, schema) = connect_and_migrate(config, &instance, " migrate").await?;
    Ok(SchemaReport {
        version: schema.version.into(),
        applied: schema.applied,
    })
}

/// Connects to the configured PostgreSQL server as `instance` and brings its schema up to date
/// (`orderwatch VERSION{role} on INSTANCE` in the bookkeeping row); the connection configuration, for
/// the writer and the pool, and where the schema stands.
async fn connect_and_migrate(
    config: &Config,
    instance: &str,
    role: &str,
) -> Result<(PgConnect, postgres::migrate::SchemaState), StoreError> {
    let failed = |reason: String| StoreError::Postgres {
        url: config.database.describe(),
        reason,
    };
    let connect =
        PgConnect::from_config(&config.database, instance).map_err(|e| failed(e.to_string()))?;
    let mut client = connect
        .connect()
        .await
        .map_err(|e| failed(format!("cannot connect: {}", postgres::describe_error(&e))))?;
    let applied_by = format!(
        "orderwatch {}{role} on {instance}",
        crate::build_info::VERSION
    );
    let schema = postgres::migrate::migrate(&mut client, &applied_by)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok((connect, schema))
}

/// [`open`] for the commands that only write (`watch`, `prune`).
pub async fn open_writer(
    config: &Config,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
) -> Result<(Writer, WriterThread), StoreError> {
    let opened = open(config, clock, observer).await?;
    Ok((opened.writer, opened.writer_thread))
}

/// `PRAGMA synchronous` as its documented name (it reads back as a number).
fn synchronous_name(level: i64) -> String {
    match level {
        0 => "OFF".to_owned(),
        1 => "NORMAL".to_owned(),
        2 => "FULL".to_owned(),
        3 => "EXTRA".to_owned(),
        other => other.to_string(),
    }
}

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 6;

/// Migrations, in order: entry `n` takes the schema from version `n` to `n + 1`. Databases at
/// every earlier version exist in the field: never edit a shipped entry, append a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
];

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path} does not exist (orderwatch run creates it; check [database] path in the config)"
    )]
    Missing { path: String },
    #[error("database {path} is not an orderwatch database (schema version 0)")]
    NotOrderwatch { path: String },
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this orderwatch knows ({known}); upgrade orderwatch"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("database {path}: could not switch to WAL journal mode (got {mode})")]
    NoWal { path: String, mode: String },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or could not be reached; `url` has its password masked.
    #[error("database {url}: {reason}")]
    Postgres { url: String, reason: String },
}

/// Opens (creating if needed) the database for writing, in WAL mode with `synchronous=FULL` so
/// a commit survives power loss, and brings its schema up to date.
pub fn open_for_writing(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(busy_timeout).map_err(open_error)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal {
            path: path.display().to_string(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    // The batch savepoint's statement journal lives in memory, not in a temp file written
    // with a syscall per page (it only matters until the batch commits).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(open_error)?;
    // Every statement of the write path stays prepared (the default cache holds 16).
    conn.set_prepared_statement_cache_capacity(64);
    migrate_file(&mut conn, path)?;
    Ok(conn)
}

/// Caps the database file at about `bytes` (`PRAGMA max_page_count`), so a runaway table fails
/// writes (503, retried by Musement) instead of filling the disk.
pub fn limit_size(conn: &Connection, bytes: u64) -> Result<(), StoreError> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let pages = (bytes / page_size.max(1) as u64).clamp(1, i64::MAX as u64) as i64;
    conn.pragma_update(None, "max_page_count", pages)?;
    Ok(())
}

/// Opens an existing database read-only (CLI and readiness checks), refusing a missing file,
/// an empty one and a newer schema. Never creates anything.
pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.display().to_string(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    conn.busy_timeout(busy_timeout).map_err(open_error)?;
    let found = schema_version(&conn).map_err(|error| match error {
        StoreError::Sqlite(source) => open_error(source),
        other => other,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        return Err(StoreError::NotOrderwatch {
            path: path.display().to_string(),
        });
    }
    Ok(conn)
}

fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

fn migrate_file(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found = schema_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (from, script) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(script)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_full_sync_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open_for_writing(&path, Duration::from_secs(1)).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open_for_writing(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        let err = open_read_only(&path, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().contains("newer than this orderwatch knows"),
            "{err}"
        );
    }

    #[test]
    fn reopening_keeps_data_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open_for_writing(&path, Duration::from_secs(1)).unwrap();
        conn.execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES ('x', '2020-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
        drop(conn);
        let conn = open_for_writing(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(testing::count(&conn, "orders"), 1);
    }

    #[test]
    fn a_version_1_database_gains_the_views_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES ('o', '2020-01-01T00:00:00.000Z');
             INSERT INTO order_items (item_uuid, order_uuid, status, as_of, as_of_source, source,
                                      first_seen_at, changed_at, updated_at)
             VALUES ('i', 'o', 'PENDING', '2020-01-01T00:00:00.000Z', 'webhook', 'webhook',
                     '2020-01-01T00:00:00.000Z', '2020-01-01T00:00:00.000Z', '2020-01-01T00:00:00.000Z');
             INSERT INTO item_events (item_uuid, order_uuid, source, status, as_of, received_at,
                                      outcome, payload)
             VALUES ('i', 'o', 'webhook', 'PENDING', '2020-01-01T00:00:00.000Z',
                     '2020-01-01T00:00:00.000Z', 'applied', '{}');",
        )
        .unwrap();
        drop(conn);
        // A v1 database reads fine before the daemon migrates it, through the UUIDs (it has no
        // arrival numbers yet).
        let old = open_read_only(&path, Duration::from_secs(1)).unwrap();
        let now = chrono::Utc::now();
        let shown = inspect::show(&old, "o", now).unwrap();
        assert_eq!((shown.items.len(), shown.events.len()), (1, 1));
        let filter = inspect::ItemFilter {
            order: Some("o".into()),
            ..inspect::ItemFilter::default()
        };
        assert_eq!(inspect::items(&old, &filter, now).unwrap().len(), 1);
        assert_eq!(
            inspect::changes_from(&old, inspect::FeedPosition::Start, 10)
                .unwrap()
                .unwrap()
                .changes
                .len(),
            1
        );
        drop(old);
        let conn = open_for_writing(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        let (item, age, human): (String, i64, String) = conn
            .query_row(
                "SELECT item_uuid, age_seconds, age FROM pending_items",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(item, "i");
        assert!(age > 86_400 * 365, "{age}");
        assert!(human.ends_with('h') && human.contains("d "), "{human}");
        assert_eq!(
            testing::count(&conn, "item_history"),
            1,
            "its event, linked by the migration"
        );
    }

    #[test]
    fn read_only_open_never_creates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        let err = open_read_only(&path, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!path.exists());
        std::fs::write(&path, b"").unwrap();
        let err = open_read_only(&path, Duration::from_secs(1)).unwrap_err();
        assert!(
            err.to_string().contains("not an orderwatch database"),
            "{err}"
        );
    }

    fn webhook(order: u128, item: u128) -> crate::observation::Observation {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        crate::observation::Observation::bare(
            uuid::Uuid::from_u128(item),
            uuid::Uuid::from_u128(order),
            crate::observation::Status::Pending,
            crate::observation::Position::Webhook {
                version: 1,
                updated: at,
            },
            at,
        )
    }

    /// The items of `order` and the events of `item`, found as the store finds them.
    fn linked(conn: &Connection, order: u128, item: u128) -> (Vec<String>, i64) {
        let order = uuid::Uuid::from_u128(order).to_string();
        let items = conn
            .prepare(&format!(
                "SELECT item_uuid FROM order_items WHERE {}",
                poll_state::ITEMS_OF_ORDER
            ))
            .unwrap()
            .query_map([&order], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let events = conn
            .query_row(
                "SELECT count(*) FROM item_events
                 WHERE item_seq IS (SELECT seq FROM order_items WHERE item_uuid = ?1)
                   AND item_uuid = ?1",
                [uuid::Uuid::from_u128(item).to_string()],
                |r| r.get(0),
            )
            .unwrap();
        (items, events)
    }

    /// A seq is a rowid when the row was inserted; a rowid can be given again (the last row
    /// deleted by hand, or a VACUUM that renumbered rowids), and then two rows share a seq.
    #[test]
    fn rows_that_share_an_arrival_number_are_told_apart_by_their_uuid() {
        let (_dir, conn) = testing::new_database();
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let settings = StoreSettings::default();
        for n in 1..=3 {
            apply(&conn, &webhook(n, 10 + n), &settings, now).unwrap();
        }
        // Someone deletes the last order's row by hand (not its item): the next order gets its
        // rowid, so its seq, which the orphaned item's order_seq still holds.
        let last = uuid::Uuid::from_u128(3).to_string();
        conn.execute("DELETE FROM orders WHERE order_uuid = ?1", [&last])
            .unwrap();
        apply(&conn, &webhook(4, 14), &settings, now).unwrap();
        let shared: i64 = conn
            .query_row(
                "SELECT count(*) FROM order_items WHERE order_seq = (SELECT seq FROM orders
                 WHERE order_uuid = ?1)",
                [uuid::Uuid::from_u128(4).to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            shared, 2,
            "the case under test: two orders' items share an order_seq"
        );
        for n in [2, 4] {
            let item = uuid::Uuid::from_u128(10 + n).to_string();
            assert_eq!(linked(&conn, n, 10 + n), (vec![item], 1), "order {n}");
        }
        assert_eq!(
            linked(&conn, 3, 13).1,
            1,
            "the orphaned item keeps its event"
        );
    }

    #[test]
    fn rows_inserted_by_hand_get_their_arrival_numbers_from_the_triggers() {
        let (_dir, conn) = testing::new_database();
        let (order, item) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let at = "2024-01-01T00:00:00.000Z";
        conn.execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES (?1, ?2)",
            [order.to_string(), at.into()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO order_items (item_uuid, order_uuid, status, as_of, as_of_source, source,
                                      first_seen_at, changed_at, updated_at)
             VALUES (?1, ?2, 'PENDING', ?3, 'webhook', 'webhook', ?3, ?3, ?3)",
            [item.to_string(), order.to_string(), at.into()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO item_events (item_uuid, order_uuid, source, status, as_of, received_at,
                                      outcome, payload)
             VALUES (?1, ?2, 'webhook', 'PENDING', ?3, ?3, 'applied', '{}')",
            [item.to_string(), order.to_string(), at.into()],
        )
        .unwrap();
        assert_eq!(linked(&conn, 1, 2), (vec![item.to_string()], 1));
    }
}
