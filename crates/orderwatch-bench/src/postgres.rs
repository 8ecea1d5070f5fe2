//! PostgreSQL for the ingest benchmark: a database prefilled through the library's own
//! PostgreSQL batch path (`prepare-pg`, the twin of `prepare`), and the ledger check of a `load`
//! run against a PostgreSQL database.

use std::collections::HashSet;
use std::process::ExitCode;

use chrono::Utc;
use orderwatch::config::Config;
use orderwatch::observation::Observation;
use orderwatch::store::commands::Command;
use orderwatch::store::postgres::commands::execute_all;
use orderwatch::store::postgres::connect::PgConnect;
use orderwatch::store::postgres::migrate;
use orderwatch::store::{PollRecord, StoreSettings};
use tokio_postgres::Client;

use crate::util::{BenchResult, derived_uuid, musement_time, webhook_body};

/// Items applied (and their orders polled) per transaction while preparing.
const PREPARE_BATCH: u64 = 1_000;

#[derive(Debug, clap::Args)]
pub struct PreparePgArgs {
    /// The database to fill (it is emptied first): `postgres://user@127.0.0.1:PORT/NAME`.
    #[arg(long)]
    url: String,
    /// Orders with one final item each (REFUNDED or KO), polled once: never due.
    #[arg(long = "final", default_value_t = 1_000_000)]
    finals: u64,
}

/// Fills the database at `--url` as `prepare` fills a SQLite file: `finals` settled items,
/// random v4 UUIDs, each applied as a webhook and its order polled once, through
/// `store::postgres::commands::execute_all`, the writer's own path.
pub fn prepare_command(args: PreparePgArgs) -> BenchResult<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(prepare(&args.url, args.finals))?;
    Ok(ExitCode::SUCCESS)
}

async fn prepare(url: &str, finals: u64) -> BenchResult<()> {
    let started = std::time::Instant::now();
    let connect = PgConnect::from_url(url, "orderwatch-bench")?;
    let mut client = connect.connect().await?;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await?;
    migrate::migrate(&mut client, "orderwatch-bench prepare-pg").await?;
    let settings = StoreSettings::from_config(&Config::default());
    let seed = fastrand::u64(..);
    let final_at = Utc::now() - chrono::Duration::days(2);
    let polled_at = final_at + chrono::Duration::minutes(5);
    let final_time = musement_time(final_at);
    let mut n = 0;
    while n < finals {
        let end = (n + PREPARE_BATCH).min(finals);
        let mut applies = Vec::new();
        let mut polls = Vec::new();
        for k in n..end {
            let status = if k % 2 == 0 { "REFUNDED" } else { "KO" };
            let (item, order) = (derived_uuid(seed, 10, k), derived_uuid(seed, 11, k));
            let body = webhook_body(&item, &order, 20_000_000 + k, 3, status, &final_time);
            let observation = Observation::from_webhook(body.as_bytes(), final_at)
                .map_err(|e| format!("a prepared webhook is invalid: {e:?}"))?;
            applies.push(Command::Apply(Box::new(observation)));
            // Its first poll is long done, so the order is settled (see `prepare`).
            polls.push(Command::RecordPoll(Box::new(PollRecord {
                order,
                requested_at: final_at - chrono::Duration::seconds(1),
                items: Vec::new(),
            })));
        }
        let tx = client.transaction().await?;
        let applies: Vec<&Command> = applies.iter().collect();
        execute_all(&tx, &applies, &settings, final_at, "orderwatch-bench").await?;
        let polls: Vec<&Command> = polls.iter().collect();
        execute_all(&tx, &polls, &settings, polled_at, "orderwatch-bench").await?;
        tx.commit().await?;
        n = end;
        if n % 250_000 == 0 {
            eprintln!(
                "  prepared {n} final items ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    client.batch_execute("VACUUM ANALYZE").await?;
    eprintln!(
        "prepared {}: {finals} final items in {:.1} s",
        connect.shown(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
