//! The reconciler as the configuration describes it: its API client, its settings, and who it
//! is in the lease table; or why it is off (and that state as `stats` shows it).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Reconciler, ReconcilerSettings};
use crate::backoff::BackoffPolicy;
use crate::clock::Clock;
use crate::config::{Config, Schedule};
use crate::metrics::Metrics;
use crate::musement::{MusementClient, MusementSettings};
use crate::store::inspect::Stats;
use crate::store::reads::Reads;
use crate::store::writer::Writer;

/// Why the reconciler does not run; said once at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ReconcilerOff {
    #[error("[reconciler] enabled = false")]
    Disabled,
    #[error(
        "no Musement API credentials: set [musement] client_id and client_secret (or their _env / _file forms)"
    )]
    NoCredentials,
    #[error("cannot build the Musement API client: {0}")]
    Client(String),
}

impl ReconcilerOff {
    /// The reason in a few words, for a table cell.
    pub fn brief(&self) -> &'static str {
        match self {
            Self::Disabled => "[reconciler] enabled = false",
            Self::NoCredentials => "no Musement API credentials",
            Self::Client(_) => "the API client cannot be built",
        }
    }
}

/// Why the configuration leaves the reconciler off, if it does, judged without reading any
/// secret (so the commands that only read the database can say it too).
pub fn configured_off(config: &Config) -> Option<ReconcilerOff> {
    if !config.reconciler.enabled {
        Some(ReconcilerOff::Disabled)
    } else if !config.musement.credentials_configured() {
        Some(ReconcilerOff::NoCredentials)
    } else {
        None
    }
}

/// The role of the daemon itself (`orderwatch run`) in [`build`].
pub const DAEMON_ROLE: &str = "orderwatch run";

/// Who holds the reconciler lease: the daemon is its `instance_id`, the same after every
/// restart, so one restarted after `kill -9` takes back the lease its dead self left at
/// once; any other process (a `reconcile` command) is that plus its role and pid, so it
/// never takes a running daemon's lease.
fn lease_holder(config: &Config, role: &str) -> String {
    let instance = config.server.instance_id();
    if role == DAEMON_ROLE {
        instance
    } else {
        format!("{instance} ({role}, pid {})", std::process::id())
    }
}

/// Builds the reconciler from the configuration, or says why it is off; it and its API client
/// count into `metrics`. `role` names this process in the lease table ([`DAEMON_ROLE`] for the
/// daemon).
pub fn build(
    config: &Config,
    writer: Writer,
    reads: Reads,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    role: &str,
) -> Result<Reconciler, ReconcilerOff> {
    if let Some(off) = configured_off(config) {
        return Err(off);
    }
    let (client_id, client_secret) = config
        .musement
        .credentials
        .clone()
        .ok_or(ReconcilerOff::NoCredentials)?;
    let musement = &config.musement;
    let client = MusementClient::new(
        MusementSettings {
            base_url: musement.base_url.clone(),
            application: musement.application.clone(),
            version: musement.version.clone(),
            accept_language: musement.accept_language.clone(),
            client_id,
            client_secret,
            request_timeout: config.reconciler.request_timeout,
        },
        clock.clone(),
        metrics.clone(),
    )
    .map_err(|e| ReconcilerOff::Client(e.to_string()))?;
    let duration = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let settings = ReconcilerSettings {
        concurrency: config.reconciler.concurrency,
        max_requests_per_second: config.reconciler.max_requests_per_second,
        max_age: duration(config.reconciler.max_age),
        backoff: BackoffPolicy {
            base: duration(config.reconciler.backoff_base),
            cap: duration(config.reconciler.backoff_cap),
        },
        reads,
    };
    let holder = lease_holder(config, role);
    Ok(Reconciler::new(
        client, writer, clock, settings, holder, metrics,
    ))
}

/// Whether the configuration turns the reconciler on.
#[derive(Debug, Serialize)]
pub struct ReconcilerState {
    /// Polls on a schedule.
    pub on: bool,
    /// When passes run (`every 1m`, `cron 0 */5 * * * *`); null when off.
    pub schedule: Option<String>,
    /// Why it is off; null when on.
    pub off_because: Option<String>,
    /// The same, short enough for the table.
    #[serde(skip)]
    off_short: &'static str,
}

impl ReconcilerState {
    pub fn of(config: &Config) -> Self {
        match configured_off(config) {
            Some(off) => Self {
                on: false,
                schedule: None,
                off_because: Some(off.to_string()),
                off_short: off.brief(),
            },
            None => Self {
                on: true,
                schedule: Some(match config.reconciler.schedule() {
                    Schedule::Every(every) => {
                        format!("every {}", humantime::format_duration(every))
                    }
                    Schedule::Cron(cron) => format!("cron {cron}"),
                }),
                off_because: None,
                off_short: "",
            },
        }
    }

    /// One cell for the table.
    pub fn summary(&self) -> String {
        match &self.schedule {
            Some(schedule) => format!("on, {schedule}"),
            None => format!("off: {}", self.off_short),
        }
    }
}

/// What `orderwatch stats` prints and `GET /v1/stats` answers: the database's numbers and
/// the reconciler's state.
#[derive(Debug, Serialize)]
pub struct StatsShown<'a> {
    #[serde(flatten)]
    pub stats: &'a Stats,
    pub reconciler: ReconcilerState,
}
