//! The PostgreSQL schema's migrations: run at start by every instance (several starting at
//! once is normal), and by `orderwatch migrate`.
//!
//! - All of them run in one transaction under a transaction-level advisory lock, so instances
//!   starting together migrate once and the others then find the schema current; a failed
//!   migration leaves nothing behind.
//! - They are expand-only, so a binary that knows an older schema can keep running on a newer
//!   one (a rolling deploy runs both): each migration records `oldest_compatible`, the oldest
//!   schema version a binary must know to run on the database once it is applied. A binary
//!   starts when it knows at least the highest of those, and refuses otherwise, naming both.

use tokio_postgres::{Client, GenericClient};

/// One schema change, in order. Never edit a shipped entry: append a new one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version the database is at once this is applied (1, 2, …).
    pub version: i32,
    /// The oldest schema version a binary must know to run on the database after this one.
    /// An expand-only migration keeps the previous entry's value; one that old binaries would
    /// write wrongly raises it to its own version.
    pub oldest_compatible: i32,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration this binary knows.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        oldest_compatible: 1,
        sql: include_str!("schema_v1.sql"),
    },
    // Expand-only: `orders.unwatched_at`.
    Migration {
        version: 2,
        oldest_compatible: 1,
        sql: include_str!("schema_v2.sql"),
    },
    // Expand-only: the outbox of signed webhooks out (`[[forward]]`).
    Migration {
        version: 3,
        oldest_compatible: 1,
        sql: include_str!("schema_v3.sql"),
    },
];

/// The schema version this binary knows and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock key migrations serialize on ("orderwat" in ASCII).
const MIGRATION_LOCK: i64 = 8_030_591_472_429_916_532;

/// The bookkeeping table, created by the first migration run on an empty database.
const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version            integer PRIMARY KEY,
    oldest_compatible  integer NOT NULL,
    applied_at         timestamptz NOT NULL DEFAULT now(),
    applied_by         text NOT NULL
)";

/// Where the database's schema stands after [`migrate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaState {
    /// The database's schema version.
    pub version: i32,
    /// Migrations this call applied.
    pub applied: usize,
}

/// Why the schema could not be brought to a version this binary can run on.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A newer binary migrated the database past what this one can run on.
    #[error(
        "the database schema is at version {version} and needs an orderwatch that knows schema \
         version {oldest_compatible} or later; this binary knows version {known}: run the newer \
         binary"
    )]
    TooNew {
        version: i32,
        oldest_compatible: i32,
        known: i32,
    },
    /// The database's schema is older than this binary's, and a read-only command does not
    /// migrate it.
    #[error(
        "the database schema is at version {version}; this binary reads version {known}: run \
         orderwatch migrate (or start this version's daemon) first"
    )]
    Behind { version: i32, known: i32 },
    /// The database has no orderwatch schema yet (a read-only command found it so).
    #[error(
        "the database has no orderwatch schema (orderwatch run or orderwatch migrate creates it; \
         check [database] url)"
    )]
    NotMigrated,
    /// The server refused a statement, or the connection failed.
    #[error("migrating the PostgreSQL schema to version {target}: {source}")]
    Postgres {
        target: i32,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Whether a read-only command can read the database as it is: refuses a database never
/// migrated (`NotMigrated`: nothing is created by reading), one older than this binary reads
/// (`Behind`) and one too new for it.
pub async fn check_readable(client: &Client) -> Result<SchemaState, MigrateError> {
    let failed = |source| MigrateError::Postgres {
        target: SCHEMA_VERSION,
        source,
    };
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(failed)?
        .get(0);
    if !exists {
        return Err(MigrateError::NotMigrated);
    }
    let Recorded {
        version,
        oldest_compatible,
    } = recorded(client).await.map_err(failed)?;
    if version == 0 {
        return Err(MigrateError::NotMigrated);
    }
    if oldest_compatible > SCHEMA_VERSION {
        return Err(MigrateError::TooNew {
            version,
            oldest_compatible,
            known: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(MigrateError::Behind {
            version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(SchemaState {
        version,
        applied: 0,
    })
}

/// What `schema_migrations` says about the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recorded {
    version: i32,
    oldest_compatible: i32,
}

/// The highest version applied and the highest `oldest_compatible` (0 and 0: none yet).
async fn recorded(client: &impl GenericClient) -> Result<Recorded, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0), coalesce(max(oldest_compatible), 0) \
             FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(Recorded {
        version: row.get(0),
        oldest_compatible: row.get(1),
    })
}

/// Brings the database to [`SCHEMA_VERSION`] (or leaves a compatible newer one alone), in one
/// transaction under [`MIGRATION_LOCK`]. `applied_by` names the binary in the bookkeeping row.
pub async fn migrate(client: &mut Client, applied_by: &str) -> Result<SchemaState, MigrateError> {
    migrate_with(client, MIGRATIONS, applied_by).await
}

/// [`migrate`] with a given list (tests use lists of made-up future migrations).
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
    applied_by: &str,
) -> Result<SchemaState, MigrateError> {
    let known = migrations.last().map_or(0, |m| m.version);
    let failed = |source| MigrateError::Postgres {
        target: known,
        source,
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(BOOKKEEPING).await.map_err(failed)?;
    let recorded = recorded(&tx).await.map_err(failed)?;
    if recorded.oldest_compatible > known {
        return Err(MigrateError::TooNew {
            version: recorded.version,
            oldest_compatible: recorded.oldest_compatible,
            known,
        });
    }
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| m.version > recorded.version)
        .collect();
    for migration in &pending {
        let failed = |source| MigrateError::Postgres {
            target: migration.version,
            source,
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, oldest_compatible, applied_by) \
             VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.oldest_compatible,
                &applied_by,
            ],
        )
        .await
        .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    let state = SchemaState {
        version: recorded.version.max(known),
        applied: pending.len(),
    };
    if state.applied > 0 {
        tracing::info!(
            from = recorded.version,
            to = state.version,
            "PostgreSQL schema migrated"
        );
    } else if recorded.version > known {
        tracing::info!(
            database = recorded.version,
            binary = known,
            "the PostgreSQL schema is newer than this binary and compatible with it"
        );
    }
    Ok(state)
}
