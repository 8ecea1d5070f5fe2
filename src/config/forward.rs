//! `[[forward]]`: destinations of signed webhooks out. Each status change of the change feed
//! is posted to each destination in the Standard Webhooks format, at least once and in order
//! per item (`crate::forward`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::SecretSource;
use super::{ConfigError, Secrets};
use crate::forward::attempt::destination_url;
use crate::forward::signature::SigningSecret;

/// Where a new destination starts in the change feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Changes stored from the destination's first start on (the default).
    #[default]
    End,
    /// Every change the feed still holds.
    Beginning,
}

/// Which applied observations a destination is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The item's status changed (`order_item.status_changed`; the default).
    StatusChanged,
    /// A newer version applied with the same status (`order_item.updated`).
    Updated,
}

fn default_outcomes() -> Vec<Outcome> {
    vec![Outcome::StatusChanged]
}

/// One `[[forward]]` destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Names the destination in the database, the logs, `/metrics` and `orderwatch deliveries`.
    pub name: String,
    /// Where deliveries are posted: https, or http on loopback only; no user info. Its query
    /// is masked when shown (it may carry a receiver's token).
    #[serde(serialize_with = "query_masked")]
    pub url: String,
    /// Name of an environment variable holding one or more `whsec_…` secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding one or more `whsec_…` secrets (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Which applied observations are sent: `status_changed` (the default) and/or `updated`
    /// (a newer version with the same status).
    #[serde(default = "default_outcomes")]
    pub outcomes: Vec<Outcome>,
    /// Only changes to these statuses (empty: every status).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// Longest one attempt may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most attempts in flight at once (each a different item).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Wait after the first failure; doubles with each further one, jittered.
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "default_retry_cap", with = "humantime_serde")]
    pub retry_cap: Duration,
    /// A delivery still failing this long after its first attempt is parked.
    #[serde(default = "default_give_up_after", with = "humantime_serde")]
    pub give_up_after: Duration,
    /// `end` (the default) or `beginning`: where a new destination starts in the feed.
    #[serde(default)]
    pub start: Start,
    /// The signing secrets, loaded from their source.
    #[serde(skip)]
    pub resolved_secrets: Vec<SigningSecret>,
}

/// `url` with its query (if any) masked, for `check-config` and the logs.
fn query_masked<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match url.split_once('?') {
        Some((before, _)) => {
            serializer.collect_str(&format_args!("{before}?{}", super::secret::MASK))
        }
        None => serializer.serialize_str(url),
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_in_flight() -> usize {
    8
}

fn default_retry_base() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_cap() -> Duration {
    Duration::from_secs(3600)
}

fn default_give_up_after() -> Duration {
    Duration::from_secs(3 * 86_400)
}

/// The secret files, to resolve against the configuration's folder.
pub(super) fn paths_mut(forward: &mut [ForwardConfig]) -> impl Iterator<Item = &mut PathBuf> {
    forward.iter_mut().filter_map(|f| f.secret_file.as_mut())
}

/// The rules that span keys: unique names, a usable URL, sane limits. `(key, reason)` each.
pub(super) fn check(forward: &[ForwardConfig]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (n, destination) in forward.iter().enumerate() {
        let key = |field: &str| format!("forward[{n}].{field}");
        let name = destination.name.trim();
        if name.is_empty() {
            problems.push((key("name"), "is empty: name every destination".into()));
        } else if !names.insert(name) {
            problems.push((key("name"), format!("{name:?} names two destinations")));
        }
        if let Err(reason) = destination_url(&destination.url) {
            problems.push((key("url"), reason));
        }
        if destination.timeout.is_zero() {
            problems.push((key("timeout"), "must be longer than 0s".into()));
        }
        if destination.max_in_flight == 0 {
            problems.push((key("max_in_flight"), "must be at least 1".into()));
        }
        if destination.retry_base.is_zero() {
            problems.push((key("retry_base"), "must be longer than 0s".into()));
        } else if destination.retry_base > destination.retry_cap {
            problems.push((key("retry_cap"), "must be at least retry_base".into()));
        }
        if destination.give_up_after.is_zero() {
            problems.push((key("give_up_after"), "must be longer than 0s".into()));
        }
        if destination.outcomes.is_empty() {
            problems.push((
                key("outcomes"),
                "is empty: give status_changed, updated or both".into(),
            ));
        }
        if destination.statuses.iter().any(|s| s.trim().is_empty()) {
            problems.push((key("statuses"), "holds an empty status".into()));
        }
    }
    problems
}

/// Loads every destination's secrets (with [`Secrets::Check`], only checks how each is
/// given); a problem for each that cannot be loaded or is not a `whsec_` secret.
pub(super) fn resolve(
    forward: &mut [ForwardConfig],
    file: &Path,
    secrets: Secrets,
) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for (n, destination) in forward.iter_mut().enumerate() {
        let problem = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };
        if destination.secret_env.is_some() == destination.secret_file.is_some() {
            problems.push(problem(
                format!("forward[{n}]"),
                "set exactly one of secret_env, secret_file".into(),
            ));
            continue;
        }
        let key = format!("forward[{n}].secret");
        let loaded = SecretSource {
            key: &key,
            value: None,
            env: destination.secret_env.as_deref(),
            file: destination.secret_file.as_deref(),
        }
        .load(file, secrets);
        match loaded {
            Ok(Some(secret)) => match SigningSecret::parse_all(secret.expose()) {
                Ok(parsed) => destination.resolved_secrets = parsed,
                Err(reason) => problems.push(problem(key, reason.to_string())),
            },
            Ok(None) => destination.resolved_secrets.clear(),
            Err(loading) => problems.push(loading),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigErrors};

    /// `text` loaded as `DIR/config.toml`, where `DIR/secret` holds `secret`.
    fn load(text: &str, secret: &str) -> Result<Config, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), secret).unwrap();
        Config::from_toml(text, &dir.path().join("config.toml"))
    }

    const KEY: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";

    #[test]
    fn the_shipped_example_loads_with_its_documented_defaults() {
        let shipped = include_str!("../../config.toml");
        let example: String = shipped[shipped.find("\n# [[forward]]\n").unwrap()..]
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| !line.starts_with(' '))
            .map(|line| format!("{line}\n"))
            .collect();
        let example = example.replace("/etc/orderwatch/forward-secret", "secret");
        let config = load(&example, &format!("{KEY}\n{KEY}\n")).unwrap();
        let forward = &config.forward[0];
        assert_eq!(forward.name, "booking-system");
        assert_eq!(forward.statuses, ["OK", "REFUNDED"]);
        assert_eq!(
            forward.resolved_secrets.len(),
            2,
            "one per secret in the file"
        );
        let defaults = load(
            "[[forward]]\nname = \"a\"\nurl = \"https://example.com/h\"\nsecret_file = \"secret\"\n",
            KEY,
        )
        .unwrap();
        let default = &defaults.forward[0];
        for (shown, default) in [
            (forward.timeout, default.timeout),
            (forward.retry_base, default.retry_base),
            (forward.retry_cap, default.retry_cap),
            (forward.give_up_after, default.give_up_after),
        ] {
            assert_eq!(shown, default, "the example shows the defaults");
        }
        assert_eq!(forward.max_in_flight, default.max_in_flight);
        assert_eq!(forward.outcomes, default.outcomes);
        assert_eq!(forward.start, default.start);
    }

    #[test]
    fn the_shown_configuration_masks_the_url_query_and_every_secret() {
        let config = load(
            "[[forward]]\nname = \"a\"\nurl = \"https://e.com/hooks?token=s3cr3t\"\n\
             secret_file = \"secret\"\n",
            KEY,
        )
        .unwrap();
        let shown = config.to_masked_toml();
        assert!(
            shown.contains("url = \"https://e.com/hooks?********\""),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cr3t") && !shown.contains(&KEY[6..]),
            "{shown}"
        );
        assert_eq!(config.forward[0].url, "https://e.com/hooks?token=s3cr3t");
    }

    #[test]
    fn each_problem_names_its_destination_and_key_never_the_secret() {
        let text = "[[forward]]\nname = \"a\"\nurl = \"http://example.com/h\"\n\
                    secret_file = \"secret\"\nmax_in_flight = 0\n\
                    retry_base = \"2h\"\n\n\
                    [[forward]]\nname = \"a\"\nurl = \"https://example.com/h\"\n\
                    secret_env = \"X\"\nsecret_file = \"secret\"\n";
        let errors = load(text, "whsec_notbase64!!").unwrap_err();
        let keys: Vec<&str> = errors.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "forward[0].url",
                "forward[0].max_in_flight",
                "forward[0].retry_cap",
                "forward[1].name",
                "forward[0].secret",
                "forward[1]",
            ]
        );
        let said = errors.to_string();
        assert!(!said.contains("notbase64"), "{said}");
        assert!(said.contains("not base64"), "{said}");
        let unknown = load(
            "[[forward]]\nname = \"a\"\nurl = \"https://e.com/\"\nsecret_file = \"secret\"\nsecrets = 1\n",
            KEY,
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("secrets"), "{unknown}");
    }
}
