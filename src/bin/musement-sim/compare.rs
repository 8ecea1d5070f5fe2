//! `musement-sim compare`: how far an orderwatch database is from the simulator's truth, in one
//! line, and exit 0 once they agree (the demo polls it). Agreement is what the convergence test
//! checks: every item present with its final status, and `item_version` equal to the final
//! version wherever a webhook for that version was delivered (below it or NULL otherwise).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use orderwatch::config::DatabaseConfig;
use orderwatch::store::inspect::ItemFilter;
use orderwatch::store::inspection::Inspection;
use serde_json::Value;

/// Exit code while the database does not agree (yet).
const EXIT_DIFFERENT: u8 = 1;
/// Exit code for an unreadable database or truth.
const EXIT_ERROR: u8 = 2;

/// Compare an orderwatch database with the truth; exit 0 when they agree, 1 when not (yet).
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The orderwatch database: its SQLite file (opened read-only), or a PostgreSQL URL
    /// (`postgres://…`).
    #[arg(long)]
    pub database: String,
    /// The truth JSON written by `--truth`; until it exists only the database is summed up.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

/// One item's row: status and `item_version`.
type Row = (String, Option<i64>);

pub fn run(args: &CompareArgs) -> ExitCode {
    let rows = match read_items(&args.database) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("musement-sim compare: --database: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let db_counts = counts(rows.values().map(|(status, _)| status.as_str()));
    let truth = match args.truth.as_ref().map(std::fs::read) {
        None => None,
        // Not written yet: the simulator writes it when it settles.
        Some(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => None,
        Some(Err(error)) => return truth_error(args, &error.to_string()),
        Some(Ok(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => Some(value),
            Err(error) => return truth_error(args, &error.to_string()),
        },
    };
    let Some(truth) = truth else {
        println!(
            "orderwatch: {} items ({db_counts}); Musement: no truth yet",
            rows.len()
        );
        return ExitCode::from(EXIT_DIFFERENT);
    };
    let items = truth["items"].as_array().cloned().unwrap_or_default();
    let truth_counts = counts(items.iter().filter_map(|i| i["status"].as_str()));
    let matching = items.iter().filter(|item| agrees(item, &rows)).count();
    let phase = truth["phase"].as_str().unwrap_or("?");
    println!(
        "orderwatch: {} items ({db_counts}); Musement ({phase}): {} items ({truth_counts}); matching {matching}/{}",
        rows.len(),
        items.len(),
        items.len()
    );
    let settled = phase == "settled" || phase == "finished";
    if settled && matching == items.len() && rows.len() == items.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENT)
    }
}

fn truth_error(args: &CompareArgs, error: &str) -> ExitCode {
    let path = args.truth.as_ref().map(|p| p.display().to_string());
    eprintln!(
        "musement-sim compare: --truth {}: {error}",
        path.unwrap_or_default()
    );
    ExitCode::from(EXIT_ERROR)
}

/// Whether the database agrees with one truth item.
fn agrees(item: &Value, rows: &HashMap<String, Row>) -> bool {
    let Some((status, version)) = item["item"].as_str().and_then(|uuid| rows.get(uuid)) else {
        return false;
    };
    let final_version = item["version"].as_i64().unwrap_or(0);
    // A final version whose webhook got no answer in time may have been stored all the same.
    let unanswered = item["unanswered_versions"]
        .as_array()
        .is_some_and(|versions| versions.contains(&Value::from(final_version)));
    let version_ok = if item["final_version_delivered"].as_bool() == Some(true) {
        *version == Some(final_version)
    } else if unanswered {
        version.is_none_or(|v| v <= final_version)
    } else {
        version.is_none_or(|v| v < final_version)
    };
    item["status"].as_str() == Some(status.as_str()) && version_ok
}

/// `OK 12, KO 3`, in status order.
fn counts<'a>(statuses: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every item's status and version, read as `orderwatch items` reads them.
fn read_items(database: &str) -> Result<HashMap<String, Row>, String> {
    let mut config = DatabaseConfig::default();
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        config.url = Some(database.parse()?);
    } else {
        config.path = PathBuf::from(database);
        if !config.path.exists() {
            return Err(format!("{database}: no such file (is orderwatch running?)"));
        }
    }
    let inspection = Inspection::open(&config, "musement-sim").map_err(|e| e.to_string())?;
    let items = inspection
        .items(&ItemFilter::default(), chrono::Utc::now())
        .map_err(|e| e.to_string())?;
    Ok(items
        .into_iter()
        .map(|item| (item.item, (item.status, item.version)))
        .collect())
}
