//! Configuration reloads (SIGHUP): what can change while the daemon runs is applied at once and
//! logged; every other change is named in a warning and waits for a restart.
//!
//! Reloadable: `log.level`, the reconciler's `interval`/`cron`, who may post webhooks
//! (`server.allow_ips`, `server.trusted_proxies`, `[server.auth]`, so a password can be
//! rotated without dropping a webhook), and the partner API's `[[api.tokens]]` (rotated the
//! same way: add the new token, move the client, remove the old one).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

use crate::config::{Config, leaves};
use crate::receiver::{Access, Receiver};
use crate::reconciler::schedule::ScheduledPasses;
use crate::telemetry::LogControl;

/// Keys (or key prefixes) a reload applies without a restart.
const RELOADABLE: &[&str] = &[
    "log.level",
    "reconciler.interval",
    "reconciler.cron",
    "server.allow_ips",
    "server.trusted_proxies",
    "server.auth",
    "api.tokens",
];

/// New configurations for the running daemon, and the log filter they may change.
pub struct Reload {
    /// Each value is a complete, validated configuration to apply.
    pub configs: mpsc::Receiver<Config>,
    /// The installed log filter, if this process installed one.
    pub log: Option<LogControl>,
}

impl Reload {
    /// No reloads ever (tests, benchmarks).
    pub fn none() -> Self {
        let (_, configs) = mpsc::channel(1);
        Self { configs, log: None }
    }
}

/// Re-reads `path` on every SIGHUP and sends the new configuration to `configs`; an invalid
/// file is reported and the running configuration stays. The handler is installed before this
/// returns, so a SIGHUP from then on never kills the process.
#[cfg(unix)]
pub fn reload_on_sighup(
    path: std::path::PathBuf,
    configs: mpsc::Sender<Config>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(file = %path.display(), "SIGHUP: reading the configuration again");
            match Config::load(&path) {
                Ok(config) => {
                    if configs.send(config).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "the configuration was not reloaded; the running one stays");
                }
            }
        }
    });
    Ok(())
}

/// What a reload acts on.
pub(crate) struct Targets {
    /// Gets the new access rules.
    pub receiver: Arc<Receiver>,
    /// Gets the new schedule (absent when the reconciler is off).
    pub passes: Option<Arc<Mutex<ScheduledPasses>>>,
    /// Gets the new level.
    pub log: Option<LogControl>,
    /// Gets the new API tokens (absent when the API is off).
    pub api: Option<Arc<crate::api::Api>>,
}

/// Applies each configuration from `configs` until the channel closes.
pub(crate) async fn follow(
    mut configs: mpsc::Receiver<Config>,
    mut running: Config,
    targets: Targets,
) {
    while let Some(new) = configs.recv().await {
        running = apply(running, &new, &targets).await;
    }
}

/// Applies what may change from `new` and returns the configuration now in force.
async fn apply(running: Config, new: &Config, targets: &Targets) -> Config {
    let changed = changed_keys(&running, new);
    let (now, later) = split(&changed);
    let mut candidate = match combine(&running, new) {
        Ok(candidate) => candidate,
        Err(error) => {
            tracing::error!(%error, "the configuration was not reloaded: with the settings that need a restart left as they are, it would be invalid; the running one stays");
            return running;
        }
    };
    let touches = |prefix: &str| now.iter().any(|change| change.key_is_under(prefix));
    let mut failed = Vec::new();
    if touches("log.level")
        && let Some(Err(reason)) = targets
            .log
            .as_ref()
            .map(|log| log.set_level(&new.log.level))
    {
        failed.push(NotApplied {
            keys: &["log.level"],
            reason,
        });
        candidate.log.level = running.log.level.clone();
    }
    if touches("server.allow_ips") || touches("server.trusted_proxies") || touches("server.auth") {
        targets.receiver.set_access(Access::from(&candidate.server));
    }
    if let Some(api) = &targets.api {
        api.reconfigure(&candidate);
    }
    if touches("reconciler.interval") || touches("reconciler.cron") {
        let rescheduled = match &targets.passes {
            Some(passes) => {
                let schedule = candidate.reconciler.schedule();
                passes.lock().await.reschedule(schedule).await
            }
            None => Err("the reconciler is off".into()),
        };
        if let Err(reason) = rescheduled {
            failed.push(NotApplied {
                keys: &["reconciler.interval", "reconciler.cron"],
                reason,
            });
            candidate.reconciler.interval = running.reconciler.interval;
            candidate.reconciler.cron = running.reconciler.cron.clone();
        }
    }
    log_outcome(&now, &later, &failed);
    candidate
}

/// Reloadable settings that could not be applied: the old values stay.
struct NotApplied {
    /// The keys (or key prefixes) whose changes did not take effect.
    keys: &'static [&'static str],
    /// Why.
    reason: String,
}

impl NotApplied {
    fn covers(&self, change: &Change) -> bool {
        self.keys.iter().any(|key| change.key_is_under(key))
    }
}

/// `changes` split into those a reload applies at once ([`RELOADABLE`]) and those that wait
/// for a restart.
fn split(changes: &[Change]) -> (Vec<&Change>, Vec<&Change>) {
    changes
        .iter()
        .partition(|change| RELOADABLE.iter().any(|prefix| change.key_is_under(prefix)))
}

/// What would run: the running configuration with every reloadable value taken from `new`.
/// It must be valid as a whole: e.g. dropping `[server.auth]` is refused while the daemon still
/// listens on a public address (a change of `listen` waits for a restart).
fn combine(running: &Config, new: &Config) -> Result<Config, crate::config::ConfigErrors> {
    let mut candidate = running.clone();
    take_reloadable(&mut candidate, new);
    candidate.validate(Path::new("the reloaded configuration"))?;
    Ok(candidate)
}

/// Copies the values a reload may change (see [`RELOADABLE`]) from `new` into `config`.
fn take_reloadable(config: &mut Config, new: &Config) {
    config.log.level = new.log.level.clone();
    config.server.allow_ips = new.server.allow_ips.clone();
    config.server.trusted_proxies = new.server.trusted_proxies.clone();
    config.server.auth = new.server.auth.clone();
    config.api.tokens = new.api.tokens.clone();
    config.reconciler.interval = new.reconciler.interval;
    config.reconciler.cron = new.reconciler.cron.clone();
}

/// Says what the reload did: one line for the changes applied, one for those waiting for a
/// restart, and one per setting that could not be applied (not also listed as reloaded).
fn log_outcome(now: &[&Change], later: &[&Change], failed: &[NotApplied]) {
    let list = |changes: &[&Change]| {
        changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let applied: Vec<&Change> = now
        .iter()
        .copied()
        .filter(|change| !failed.iter().any(|f| f.covers(change)))
        .collect();
    if now.is_empty() && later.is_empty() {
        tracing::info!("configuration reloaded: nothing changed");
    } else if !applied.is_empty() {
        tracing::info!(changed = %list(&applied), "configuration reloaded");
    }
    if !later.is_empty() {
        tracing::warn!(changed = %list(later), "configuration changes that need a restart were not applied");
    }
    for failure in failed {
        let changes: Vec<&Change> = now.iter().copied().filter(|c| failure.covers(c)).collect();
        tracing::warn!(changed = %list(&changes), reason = %failure.reason, "could not apply a reloaded setting; the old one stays");
    }
}

/// One key whose value differs between two configurations.
#[derive(Debug, PartialEq, Eq)]
struct Change {
    /// Dotted key, e.g. `log.level`.
    key: String,
    /// Old and new values, or `None` for secrets (never shown).
    values: Option<(String, String)>,
}

impl Change {
    fn key_is_under(&self, prefix: &str) -> bool {
        self.key == prefix || self.key.starts_with(&format!("{prefix}."))
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.values {
            Some((old, new)) => write!(f, "{}: {old} -> {new}", self.key),
            None => write!(f, "{} (value not shown)", self.key),
        }
    }
}

/// Every key whose effective value differs. Secrets are compared by value but never shown.
fn changed_keys(old: &Config, new: &Config) -> Vec<Change> {
    let (before, after) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let absent = || "(unset)".to_owned();
    let mut changes: Vec<Change> = keys
        .into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|key| Change {
            key: key.clone(),
            values: Some((
                before.get(key).cloned().unwrap_or_else(absent),
                after.get(key).cloned().unwrap_or_else(absent),
            )),
        })
        .collect();
    for ((key, before), (_, after)) in secret_values(old).into_iter().zip(secret_values(new)) {
        if before != after {
            changes.push(Change {
                key: key.into(),
                values: None,
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    changes.retain(|change| seen.insert(change.key.clone()));
    changes
}

/// The loaded secrets of `config`, each under the key its change is listed as, for comparing
/// only: they are masked everywhere else.
fn secret_values(config: &Config) -> [(&'static str, Option<Vec<&str>>); 4] {
    let auth = config.server.auth.as_ref();
    [
        (
            "server.auth.password",
            auth.map(|a| vec![a.resolved_password.expose()]),
        ),
        (
            "server.auth.previous_password",
            auth.and_then(|a| a.resolved_previous_password.as_ref())
                .map(|p| vec![p.expose()]),
        ),
        (
            "musement.credentials",
            config
                .musement
                .credentials
                .as_ref()
                .map(|(id, secret)| vec![id.as_str(), secret.expose()]),
        ),
        (
            "api.tokens",
            Some(
                config
                    .api
                    .tokens
                    .iter()
                    .map(|token| token.resolved.expose())
                    .collect(),
            ),
        ),
    ]
}

/// The configuration as dotted key → TOML value text, secrets masked.
fn flatten(config: &Config) -> BTreeMap<String, String> {
    let table = toml::Table::try_from(config).unwrap_or_default();
    leaves(&table)
        .into_iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, std::path::Path::new("/etc/orderwatch/config.toml")).unwrap()
    }

    #[test]
    fn changes_are_listed_by_key_and_secrets_are_not_shown() {
        let old = config("[server.auth]\nusername = \"u\"\npassword = \"one\"\n");
        let new = config(
            "[server]\nallow_ips = [\"192.0.2.1\"]\n[server.auth]\nusername = \"u\"\npassword = \"two\"\n[database]\npath = \"other.db\"\n",
        );
        let changes = changed_keys(&old, &new);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|c| c.starts_with("server.allow_ips: [] -> ")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|c| c.starts_with("database.path: ")),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"server.auth.password (value not shown)".to_owned()),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .all(|c| !c.contains("one") && !c.contains("two")),
            "{shown:?}"
        );
    }

    #[test]
    fn a_changed_secret_is_listed_under_its_key_without_its_value() {
        // (name of the row, the configuration with `SECRET` for the secret, the key listed)
        let rows = [
            (
                "the webhook password",
                "[server.auth]\nusername = \"u\"\npassword = \"SECRET\"\n",
                "server.auth.password",
            ),
            (
                "the previous webhook password",
                "[server.auth]\nusername = \"u\"\npassword = \"p\"\nprevious_password = \"SECRET\"\n",
                "server.auth.previous_password",
            ),
            (
                "the API client secret",
                "[musement]\napplication = \"a\"\nclient_id = \"id\"\nclient_secret = \"SECRET\"\n",
                "musement.credentials",
            ),
        ];
        for (name, text, key) in rows {
            let old = config(&text.replace("SECRET", "one"));
            let new = config(&text.replace("SECRET", "two"));
            let shown: Vec<String> = changed_keys(&old, &new)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(shown, [format!("{key} (value not shown)")], "{name}");
            assert!(changed_keys(&old, &old).is_empty(), "{name}: unchanged");
        }
    }

    #[test]
    fn auth_cannot_be_dropped_while_still_listening_on_a_public_address() {
        // `listen` only changes at a restart, so the public address would stay, open.
        let running = config(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[server.auth]\nusername = \"u\"\npassword = \"p\"\n",
        );
        let new = config("[server]\nlisten = \"127.0.0.1:8080\"\n");
        let refused = combine(&running, &new).unwrap_err();
        assert!(refused.first().key.starts_with("server"), "{refused}");
        // With auth kept, the same reload is fine (and the listen change waits).
        let kept = config(
            "[server]\nlisten = \"127.0.0.1:8080\"\nallow_ips = [\"192.0.2.1\"]\n[server.auth]\nusername = \"u\"\npassword = \"p\"\n",
        );
        let combined = combine(&running, &kept).unwrap();
        assert_eq!(combined.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(combined.server.allow_ips.len(), 1);
    }

    #[test]
    fn only_listed_keys_are_reloadable() {
        let old = config(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[server.auth]\nusername = \"u\"\npassword = \"one\"\n",
        );
        let new = config(
            "[log]\nlevel = \"debug\"\n[server]\nlisten = \"127.0.0.1:9090\"\nmax_body_bytes = 1000\n\
             allow_ips = [\"192.0.2.1\"]\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [server.auth]\nusername = \"v\"\npassword = \"two\"\n[database]\npath = \"other.db\"\n\
             [store]\nskew_margin = \"9s\"\n[reconciler]\ninterval = \"5m\"\nconcurrency = 2\n",
        );
        let keys = |changes: &[&Change]| -> Vec<String> {
            let mut keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
            keys.sort();
            keys
        };
        // Written out here, not derived from RELOADABLE: the list is what is being tested.
        let at_once = [
            "log.level",
            "reconciler.interval",
            "server.allow_ips",
            "server.auth.password",
            "server.auth.username",
            "server.trusted_proxies",
        ];
        let at_restart = [
            "database.path",
            "reconciler.concurrency",
            "server.listen",
            "server.max_body_bytes",
            "store.skew_margin",
        ];
        let changes = changed_keys(&old, &new);
        let (now, later) = split(&changes);
        assert_eq!(keys(&now), at_once, "{changes:?}");
        assert_eq!(keys(&later), at_restart, "{changes:?}");

        // A reload copies exactly those values: the rest still differs from the new file.
        let combined = combine(&old, &new).unwrap();
        let copied = changed_keys(&old, &combined);
        let left = changed_keys(&combined, &new);
        assert_eq!(keys(&copied.iter().collect::<Vec<_>>()), at_once);
        assert_eq!(keys(&left.iter().collect::<Vec<_>>()), at_restart);
    }
}
