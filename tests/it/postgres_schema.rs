//! The PostgreSQL schema on a real server: the same tables, columns and views as SQLite's, its
//! migrations run once however many instances start at once, a newer compatible schema is
//! accepted and an incompatible one refused, and the views serve rows a person inserted by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orderwatch::store::postgres::migrate::{
    MIGRATIONS, MigrateError, Migration, SCHEMA_VERSION, check_readable, migrate, migrate_with,
};

use crate::helpers::db::column;
use crate::helpers::pg;

/// Columns PostgreSQL has that SQLite does not, each for a reason the README gives.
const POSTGRES_ONLY: &[(&str, &str)] = &[
    ("orders", "poll_claimed_by"),
    ("orders", "poll_claimed_until"),
    ("item_events", "tx"),
    ("item_events", "receiver"),
    ("heartbeat", "instance"),
    ("rate_budget", "name"),
    ("rate_budget", "tokens"),
    ("rate_budget", "updated_at"),
    ("rate_budget", "blocked_until"),
    ("schema_migrations", "version"),
    ("schema_migrations", "oldest_compatible"),
    ("schema_migrations", "applied_at"),
    ("schema_migrations", "applied_by"),
];

/// SQLite columns PostgreSQL does without: its heartbeat has a row per instance, not one row.
const SQLITE_ONLY: &[(&str, &str)] = &[("heartbeat", "id")];

/// Every table and view of a fresh SQLite database, with its columns.
fn sqlite_columns() -> BTreeMap<String, BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let db = orderwatch::store::open_for_writing(&dir.path().join("o.db"), Duration::from_secs(5))
        .unwrap();
    let mut tables = BTreeMap::new();
    for name in column::<String>(
        &db,
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite_%'",
        [],
    ) {
        let columns = column::<String>(&db, "SELECT name FROM pragma_table_info(?1)", [&name]);
        tables.insert(name, columns.into_iter().collect());
    }
    tables
}

async fn postgres_columns(client: &tokio_postgres::Client) -> BTreeMap<String, BTreeSet<String>> {
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .unwrap()
    {
        tables.entry(row.get(0)).or_default().insert(row.get(1));
    }
    tables
}

fn without(
    mut tables: BTreeMap<String, BTreeSet<String>>,
    only: &[(&str, &str)],
) -> BTreeMap<String, BTreeSet<String>> {
    for (table, name) in only {
        let columns = tables.get_mut(*table).unwrap_or_else(|| panic!("{table}"));
        assert!(columns.remove(*name), "{table}.{name} is listed but absent");
        if columns.is_empty() {
            tables.remove(*table);
        }
    }
    tables
}

#[tokio::test]
async fn postgres_has_the_tables_columns_and_views_of_sqlite() {
    let Some(db) = pg::database("the schema") else {
        return;
    };
    let mut client = db.client().await;
    migrate(&mut client, "test").await.unwrap();
    let postgres = without(postgres_columns(&client).await, POSTGRES_ONLY);
    let sqlite = without(sqlite_columns(), SQLITE_ONLY);
    assert_eq!(postgres, sqlite);
}

#[tokio::test]
async fn instances_starting_at_once_migrate_once() {
    let Some(db) = pg::database("concurrent migrations") else {
        return;
    };
    let mut starts = Vec::new();
    for n in 0..4 {
        let url = db.url.clone();
        starts.push(tokio::spawn(async move {
            let mut client = pg::connect(&url).await;
            migrate(&mut client, &format!("instance {n}")).await
        }));
    }
    let mut applied = 0;
    for start in starts {
        let state = start.await.unwrap().unwrap();
        assert_eq!(state.version, SCHEMA_VERSION);
        applied += state.applied;
    }
    assert_eq!(applied, MIGRATIONS.len(), "each migration ran once in all");
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

/// The shipped migrations plus made-up later ones.
fn with_future(future: &[Migration]) -> Vec<Migration> {
    MIGRATIONS.iter().chain(future).copied().collect()
}

#[tokio::test]
async fn a_newer_compatible_schema_runs_and_an_incompatible_one_is_refused_naming_both() {
    let Some(db) = pg::database("schema compatibility") else {
        return;
    };
    let mut client = db.client().await;
    let expand = Migration {
        version: SCHEMA_VERSION + 1,
        oldest_compatible: MIGRATIONS[MIGRATIONS.len() - 1].oldest_compatible,
        sql: "ALTER TABLE orders ADD COLUMN note text",
    };
    let newer = with_future(&[expand]);
    let state = migrate_with(&mut client, &newer, "newer").await.unwrap();
    assert_eq!(
        (state.version, state.applied),
        (SCHEMA_VERSION + 1, MIGRATIONS.len() + 1)
    );

    // This binary (it knows SCHEMA_VERSION) starts on the expanded schema and changes nothing.
    let state = migrate(&mut client, "older").await.unwrap();
    assert_eq!((state.version, state.applied), (SCHEMA_VERSION + 1, 0));

    let incompatible = Migration {
        version: SCHEMA_VERSION + 2,
        oldest_compatible: SCHEMA_VERSION + 2,
        sql: "ALTER TABLE orders DROP COLUMN note",
    };
    let newest = with_future(&[expand, incompatible]);
    migrate_with(&mut client, &newest, "newest").await.unwrap();
    let error = migrate(&mut client, "older").await.unwrap_err();
    assert!(matches!(error, MigrateError::TooNew { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("at version {}", SCHEMA_VERSION + 2))
            && message.contains(&format!("knows version {SCHEMA_VERSION}")),
        "{message}"
    );
}

/// A database at schema version 1 (an older binary's): read-only commands refuse it, naming
/// both versions and `orderwatch migrate`; migrating expands it in place, its rows kept.
#[tokio::test]
async fn an_older_schema_is_refused_by_readers_and_expanded_by_migrate() {
    let Some(db) = pg::database("older schema") else {
        return;
    };
    let mut client = db.client().await;
    migrate_with(&mut client, &MIGRATIONS[..1], "old")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES (gen_random_uuid(), now())",
            &[],
        )
        .await
        .unwrap();
    let refused = check_readable(&client).await.unwrap_err();
    assert!(matches!(refused, MigrateError::Behind { version: 1, .. }));
    let message = refused.to_string();
    assert!(
        message.contains("at version 1")
            && message.contains(&format!("reads version {SCHEMA_VERSION}"))
            && message.contains("orderwatch migrate"),
        "{message}"
    );
    let state = migrate(&mut client, "new").await.unwrap();
    assert_eq!(
        (state.version, state.applied),
        (SCHEMA_VERSION, MIGRATIONS.len() - 1)
    );
    check_readable(&client).await.unwrap();
    let unwatched: i64 = client
        .query_one(
            "SELECT count(*) FROM orders WHERE unwatched_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unwatched, 1, "the order kept, not unwatched");
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let Some(db) = pg::database("a failing migration") else {
        return;
    };
    let mut client = db.client().await;
    let broken = Migration {
        version: SCHEMA_VERSION + 1,
        oldest_compatible: 1,
        sql: "CREATE TABLE half_done (id int); SELECT 1 / 0",
    };
    let error = migrate_with(&mut client, &with_future(&[broken]), "broken")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("to version {}", SCHEMA_VERSION + 1)),
        "{error}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "not even version 1 stayed: one transaction");
    let state = migrate(&mut client, "fixed").await.unwrap();
    assert_eq!(state.version, SCHEMA_VERSION);
}

#[tokio::test]
async fn rows_inserted_by_hand_get_their_arrival_numbers_and_show_in_the_views() {
    let Some(db) = pg::database("the views") else {
        return;
    };
    let mut client = db.client().await;
    migrate(&mut client, "test").await.unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (order_uuid, first_seen_at) VALUES
                 ('00000000-0000-4000-8000-000000000001', now() - interval '2 hours');
             INSERT INTO order_items (item_uuid, order_uuid, status, as_of, as_of_source, source,
                 first_seen_at, changed_at, updated_at, confirm_deadline) VALUES
                 ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-000000000001',
                  'PENDING', now(), 'webhook', 'webhook', now() - interval '2 hours',
                  now() - interval '2 hours 3 minutes', now(), now() - interval '1 hour');
             INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version, as_of,
                 received_at, outcome, payload) VALUES
                 ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-000000000001',
                  'webhook', 'PENDING', 1, now(), now(), 'applied', '{}'),
                 ('00000000-0000-4000-8000-0000000000ff', '00000000-0000-4000-8000-000000000001',
                  'webhook', 'OK', 1, now(), now(), 'stale', '{}');",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT i.order_seq = o.seq, (SELECT item_seq FROM item_events WHERE outcome = 'applied') = i.seq
             FROM order_items i JOIN orders o USING (order_uuid)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "the triggers filled the seqs"
    );

    let pending = client
        .query_one("SELECT age, overdue, last_outcome FROM pending_items", &[])
        .await
        .unwrap();
    assert_eq!(pending.get::<_, String>(0), "2h 3m");
    assert!(pending.get::<_, bool>(1));
    assert_eq!(pending.get::<_, String>(2), "applied");
    let overdue: i64 = client
        .query_one("SELECT count(*) FROM overdue_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(overdue, 1);

    let history = client
        .query(
            "SELECT item_uuid::text, why, current_status FROM item_history ORDER BY event_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].get::<_, String>(1).starts_with("set the status"));
    assert_eq!(
        history[0].get::<_, Option<String>>(2).as_deref(),
        Some("PENDING")
    );
    assert_eq!(
        history[1].get::<_, String>(0),
        "00000000-0000-4000-8000-0000000000ff",
        "an event of no known item is listed"
    );
    assert!(
        history[1]
            .get::<_, String>(1)
            .starts_with("older than what is stored")
    );
    assert_eq!(history[1].get::<_, Option<String>>(2), None);
}
