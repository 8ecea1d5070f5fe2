//! `config.toml` → a validated [`Config`]. Unknown keys are errors; every error names the file,
//! the key and the reason on one line. Secrets live in [`Secret`], which never prints itself.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod api;
mod database;
mod forward;
mod secret;
mod sources;
mod validate;
pub use api::{ApiConfig, ApiToken, Scope};
pub use database::{DatabaseConfig, DatabaseUrl, TlsMode};
pub use forward::{ForwardConfig, Outcome, Start};
pub use secret::Secret;
use secret::SecretSource;
pub use sources::{ENV_PREFIX, Origin, Sources, annotate, leaves};
use validate::valid_instance_id;

/// A configuration problem, reported as `FILE: KEY: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{reason}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The dotted key at fault (empty when the whole file is).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem a configuration has (never none), in the order found: the cross-key rules
/// first, then the secrets; with the warnings about it, which may explain a problem (a
/// variable meant to set a missing key but spelled with one underscore).
///
/// A file that cannot be read or parsed, or a bad override, is one problem on its own: nothing
/// further can be checked. Displayed as the problems joined by `; ` (one line, for logs);
/// commands print [`ConfigErrors::problems`] one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors {
    problems: Vec<ConfigError>,
    /// What the configuration sets that has no effect (as [`Config::warnings`]).
    pub warnings: Vec<String>,
}

impl ConfigErrors {
    /// The problems, in the order found; never empty.
    pub fn problems(&self) -> &[ConfigError] {
        &self.problems
    }

    /// The first problem.
    pub fn first(&self) -> &ConfigError {
        &self.problems[0]
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(problem: ConfigError) -> Self {
        Self {
            problems: vec![problem],
            warnings: Vec::new(),
        }
    }
}

/// An IP address or CIDR range, written either way in the config (`10.0.0.1`, `10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange(pub IpNet);

impl IpRange {
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl FromStr for IpRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// The whole configuration, validated, with relative paths resolved and secrets loaded.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The webhook listener.
    pub server: ServerConfig,
    /// The HTTP API for the partner's systems (off unless `[api] listen` is set).
    pub api: ApiConfig,
    /// `[[forward]]`: destinations of signed webhooks out (none unless configured).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<ForwardConfig>,
    /// The SQLite file, or the PostgreSQL server.
    pub database: DatabaseConfig,
    /// Ordering rule and group-commit tuning.
    pub store: StoreConfig,
    /// The Musement API the reconciler polls.
    pub musement: MusementConfig,
    /// The scheduled reconciler.
    pub reconciler: ReconcilerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Where each value came from (file, environment, default), for `check-config`.
    #[serde(skip)]
    pub sources: Sources,
    /// What the configuration sets that has no effect, e.g. an `ORDERWATCH_…` variable that
    /// names no key; said once by whoever loads it (a command prints them, the daemon logs).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[server]`: the HTTP listener that takes Musement's webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Path Musement posts webhooks to.
    pub path: String,
    /// Largest accepted body; larger ones get 413 without being read.
    pub max_body_bytes: usize,
    /// Time a client has to send the request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send the body; also bounds the wait for the commit.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most open connections; at the cap the longest-idle one makes room for a new one.
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Peers allowed to post webhooks (empty: anyone who passes auth).
    pub allow_ips: Vec<IpRange>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpRange>,
    /// Basic auth expected on webhooks (absent: none).
    pub auth: Option<AuthConfig>,
    /// A separate listener serving only `GET /metrics` (absent: `/metrics` is served on
    /// `listen`, to direct loopback clients only, and not at all behind `trusted_proxies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Who this daemon is in the lease table (absent: the host name). Stable across restarts,
    /// so a daemon restarted after a crash takes back its own lease at once; distinct for
    /// every daemon sharing one database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl ServerConfig {
    /// `instance_id`, or else the host name (`/etc/hostname`, then `$HOSTNAME`), or else
    /// `"orderwatch"`.
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty() && valid_instance_id(name).is_ok())
            .unwrap_or_else(|| "orderwatch".to_owned())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/webhooks/musement".into(),
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
            allow_ips: Vec::new(),
            trusted_proxies: Vec::new(),
            auth: None,
            metrics_listen: None,
            instance_id: None,
        }
    }
}

/// `[server.auth]`: the Basic credentials Musement sends. Exactly one password source, and
/// during a password rotation at most one source of the previous password.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected user name.
    pub username: String,
    /// The password itself (prefer `password_env` or `password_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored; relative to the config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The password, loaded from whichever source is set.
    #[serde(skip)]
    pub resolved_password: Secret,
    /// The password before a rotation, still accepted until this is removed (prefer
    /// `previous_password_env` or `previous_password_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_password: Option<Secret>,
    /// Name of an environment variable holding the previous password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_password_env: Option<String>,
    /// File holding the previous password (relative to the config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_password_file: Option<PathBuf>,
    /// The previous password, loaded; `None` when none is configured.
    #[serde(skip)]
    pub resolved_previous_password: Option<Secret>,
}

impl AuthConfig {
    /// Whether any source of the previous password is set.
    pub fn has_previous_password(&self) -> bool {
        self.previous_password.is_some()
            || self.previous_password_env.is_some()
            || self.previous_password_file.is_some()
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How far one source's time must lead the other's to be believed.
    #[serde(with = "humantime_serde")]
    pub skew_margin: Duration,
    /// Most updates committed in one transaction (1 = a commit per request).
    pub max_batch: usize,
    /// Updates that may wait for the writer; beyond that webhooks get 503 + Retry-After.
    pub queue_capacity: usize,
    /// Rejected webhooks kept (oldest pruned).
    pub rejected_keep: u32,
    /// The daemon deletes `item_events` and `rejected_webhooks` rows older than this, at start
    /// and hourly (absent: keep forever). Current state is never deleted.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub events_keep: Option<Duration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            skew_margin: Duration::from_secs(5),
            max_batch: 512,
            queue_capacity: 4096,
            rejected_keep: 1000,
            events_keep: None,
        }
    }
}

/// `[musement]`: the partner API the reconciler polls. Credentials are optional: without them
/// the daemon only receives webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MusementConfig {
    /// API base, up to and including `/api/v3`.
    pub base_url: String,
    /// `X-Musement-Application`, the application name Musement gave you (required by the API).
    pub application: String,
    /// `X-Musement-Version`.
    pub version: String,
    /// `Accept-Language`.
    pub accept_language: String,
    /// OAuth client id, or the name of a variable / file holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Name of an environment variable holding the client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_env: Option<String>,
    /// File holding the client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_file: Option<PathBuf>,
    /// OAuth client secret, or the name of a variable / file holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// Name of an environment variable holding the client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The credentials, loaded; `None` when none are configured (reconciler off).
    #[serde(skip)]
    pub credentials: Option<(String, Secret)>,
}

impl Default for MusementConfig {
    fn default() -> Self {
        Self {
            base_url: "https://sandbox.musement.com/api/v3".into(),
            application: String::new(),
            version: "3.4.0".into(),
            accept_language: "en-US".into(),
            client_id: None,
            client_id_env: None,
            client_id_file: None,
            client_secret: None,
            client_secret_env: None,
            client_secret_file: None,
            credentials: None,
        }
    }
}

/// `[reconciler]`: when and how orders with unsettled items are polled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    /// Off: never poll, even with credentials.
    pub enabled: bool,
    /// Run a pass this often (exclusive with `cron`; the default when neither is set is 1m).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Or run a pass on this tokio-cron-scheduler schedule: 6 or 7 fields, seconds first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Orders polled at once.
    pub concurrency: usize,
    /// Ceiling on GET /orders calls per second across the pass (0 = no ceiling).
    pub max_requests_per_second: f64,
    /// Per-request timeout for the Musement API.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Item statuses that keep an order polled every pass. Unknown statuses count as not final.
    pub poll_statuses: Vec<String>,
    /// A webhook for any item of an order pushes that order's next poll at least this far out.
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// How often an OK item is re-checked, until its activity date has passed.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
    /// Stop polling an order this long after it was first seen (and report it).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// First wait after a failed poll; doubles per consecutive failure, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest wait after failed polls.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cron: None,
            concurrency: 4,
            max_requests_per_second: 5.0,
            request_timeout: Duration::from_secs(10),
            poll_statuses: ["PENDING", "REFUND_STARTED", "CANCELLATION_ERROR"]
                .map(String::from)
                .to_vec(),
            quiet_period: Duration::from_secs(120),
            recheck_interval: Duration::from_secs(24 * 3600),
            max_age: Duration::from_secs(30 * 24 * 3600),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(3600),
        }
    }
}

/// When reconciler passes run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so often.
    Every(Duration),
    /// On a cron schedule (6 or 7 fields, seconds first).
    Cron(String),
}

impl ReconcilerConfig {
    /// The schedule, `interval` defaulting to one minute.
    pub fn schedule(&self) -> Schedule {
        match (&self.cron, self.interval) {
            (Some(cron), _) => Schedule::Cron(cron.clone()),
            (None, interval) => Schedule::Every(interval.unwrap_or(Duration::from_secs(60))),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `orderwatch=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// Reads, parses and validates the file at `path`, with this process's `ORDERWATCH_…__…`
    /// environment overrides applied.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::build(&read(path)?, path, std::env::vars(), Secrets::Resolve)
    }

    /// [`Config::load`] that checks how each secret is given (exactly one source) without
    /// reading any: no variable need be set, no secret file exist (`check-config --offline`,
    /// for CI of a configuration repository). Credentials stay `None`.
    pub fn load_offline(path: &Path) -> Result<Self, ConfigErrors> {
        Self::build(&read(path)?, path, std::env::vars(), Secrets::Check)
    }

    /// [`Config::load`] for commands that only touch the database (inspection, `watch`,
    /// `prune`, `backup`): secrets are not read, so an operator without access to the webhook
    /// password or the API secret can still use them. Webhook auth and API credentials stay
    /// unresolved (`credentials` is `None`).
    pub fn load_for_database(path: &Path) -> Result<Self, ConfigErrors> {
        Self::build(&read(path)?, path, std::env::vars(), Secrets::Skip)
    }

    /// Parses and validates `text` as if read from `path` (relative paths resolve against its
    /// folder), without environment overrides.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigErrors> {
        Self::from_toml_and_env(text, path, std::iter::empty())
    }

    /// [`Config::from_toml`] with the overrides found among `vars` (see [`ENV_PREFIX`]).
    pub fn from_toml_and_env(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        Self::build(text, path, vars, Secrets::Resolve)
    }

    /// Parses, then checks everything that can be checked independently: every cross-key rule,
    /// then every secret, so a new configuration's problems come all at once rather than one
    /// per attempt.
    fn build(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
        secrets: Secrets,
    ) -> Result<Self, ConfigErrors> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let overrides = sources::overrides(vars.iter().cloned()).map_err(|reason| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            reason,
        })?;
        let mut config = parse(text, path, &overrides)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let mut problems = config.problems(path);
        problems.extend(config.resolve_secrets(path, secrets));
        let named = config.variables_named();
        let warnings = sources::unused_variables(vars.iter().map(|(var, _)| var.as_str()), &named);
        if !problems.is_empty() {
            // The warnings go with the problems: a variable that sets nothing may be why a key
            // is missing.
            return Err(ConfigErrors { problems, warnings });
        }
        config.warnings = warnings;
        config.warnings.extend(config.database.warnings());
        Ok(config)
    }

    /// The environment variables the configuration names through its `*_env` keys.
    fn variables_named(&self) -> Vec<String> {
        let table = toml::Table::try_from(self).unwrap_or_default();
        // Arrays of tables (`[[api.tokens]]`, `[[forward]]`) are leaves to `leaves`; their
        // tables name variables too.
        let in_arrays = leaves(&table)
            .into_iter()
            .filter_map(|(_, value)| value.as_array())
            .flatten()
            .filter_map(toml::Value::as_table)
            .flat_map(|inner| {
                leaves(inner)
                    .into_iter()
                    .map(|(key, value)| (key, value.clone()))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        leaves(&table)
            .into_iter()
            .map(|(key, value)| (key, value.clone()))
            .chain(in_arrays)
            .filter(|(key, _)| key.ends_with("_env"))
            .filter_map(|(_, value)| value.as_str().map(str::to_owned))
            .collect()
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Resolves the relative paths (the database, the secret files) against `base`, the
    /// config file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        let auth = self.server.auth.as_mut();
        let musement = &mut self.musement;
        let paths = self
            .database
            .paths_mut()
            .map(Some)
            .chain(auth.into_iter().flat_map(|auth| {
                [
                    auth.password_file.as_mut(),
                    auth.previous_password_file.as_mut(),
                ]
            }))
            .chain([
                musement.client_id_file.as_mut(),
                musement.client_secret_file.as_mut(),
            ])
            .chain(self.api.paths_mut().map(Some))
            .chain(forward::paths_mut(&mut self.forward).map(Some));
        for path in paths.flatten() {
            relative_to(base, path);
        }
    }

    /// Loads the secrets (with [`Secrets::Check`], only checks how each is given); the
    /// problems with each, independently.
    fn resolve_secrets(&mut self, file: &Path, secrets: Secrets) -> Vec<ConfigError> {
        let mut problems: Vec<ConfigError> = self
            .database
            .resolve_password(file, secrets)
            .into_iter()
            .collect();
        if secrets == Secrets::Skip {
            return problems;
        }
        if let Some(auth) = &mut self.server.auth {
            problems.extend(auth.resolve(file, secrets));
        }
        problems.extend(self.musement.resolve(file, secrets));
        problems.extend(self.api.resolve(file, secrets));
        problems.extend(forward::resolve(&mut self.forward, file, secrets));
        problems
    }
}

impl AuthConfig {
    /// Loads the password and, when one is configured, the previous password (with
    /// [`Secrets::Check`], only checks how each is given); a problem with each.
    fn resolve(&mut self, file: &Path, secrets: Secrets) -> Vec<ConfigError> {
        let current = SecretSource {
            key: "server.auth.password",
            value: self.password.as_ref().map(Secret::expose),
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        }
        .load(file, secrets);
        let previous = self.has_previous_password().then(|| {
            SecretSource {
                key: "server.auth.previous_password",
                value: self.previous_password.as_ref().map(Secret::expose),
                env: self.previous_password_env.as_deref(),
                file: self.previous_password_file.as_deref(),
            }
            .load(file, secrets)
        });
        let mut problems = Vec::new();
        match current {
            Ok(password) => self.resolved_password = password.unwrap_or_default(),
            Err(problem) => problems.push(problem),
        }
        match previous {
            Some(Ok(password)) => self.resolved_previous_password = password,
            Some(Err(problem)) => problems.push(problem),
            None => self.resolved_previous_password = None,
        }
        problems
    }
}

impl MusementConfig {
    /// Whether API credentials are configured (some source of the client id or secret is
    /// set), judged without reading them: the reconciler is meant to run.
    pub fn credentials_configured(&self) -> bool {
        self.client_id.is_some()
            || self.client_id_env.is_some()
            || self.client_id_file.is_some()
            || self.client_secret.is_some()
            || self.client_secret_env.is_some()
            || self.client_secret_file.is_some()
    }

    /// Loads `client_id` and `client_secret` from whichever source each uses (with
    /// [`Secrets::Check`], only checks how each is given). Neither set means "no credentials";
    /// one without the other is a problem; each is checked on its own.
    fn resolve(&mut self, file: &Path, secrets: Secrets) -> Vec<ConfigError> {
        if !self.credentials_configured() {
            return Vec::new();
        }
        let id = SecretSource {
            key: "musement.client_id",
            value: self.client_id.as_deref(),
            env: self.client_id_env.as_deref(),
            file: self.client_id_file.as_deref(),
        }
        .load(file, secrets);
        let secret = SecretSource {
            key: "musement.client_secret",
            value: self.client_secret.as_ref().map(Secret::expose),
            env: self.client_secret_env.as_deref(),
            file: self.client_secret_file.as_deref(),
        }
        .load(file, secrets);
        match (id, secret) {
            (Ok(Some(id)), Ok(Some(secret))) => {
                self.credentials = Some((id.expose().to_owned(), secret));
                Vec::new()
            }
            (id, secret) => [id.err(), secret.err()].into_iter().flatten().collect(),
        }
    }
}

/// Makes a relative `path` from the configuration relative to `base`, the configuration
/// file's folder.
fn relative_to(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// The file's text, or an error naming it.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        reason: format!("cannot read: {e}"),
    })
}

/// Whether loading reads the secrets the configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    /// Read every secret (the daemon, `reconcile`, `check-config`).
    Resolve,
    /// Check how each is given, read none (`check-config --offline`).
    Check,
    /// Neither (the commands that only use the database).
    Skip,
}

/// Deserializes the file, with `overrides` written over it. Without overrides the file is read
/// straight, so errors carry line numbers; an error in an override names its variable.
fn parse(text: &str, path: &Path, overrides: &[sources::Override]) -> Result<Config, ConfigError> {
    // The file on its own must be valid too: its errors then come with line numbers.
    let mut config = parse_text(text, path)?;
    let mut table: toml::Table = toml::from_str(text).unwrap_or_default();
    let fail = |key: String, reason: String| ConfigError {
        file: path.to_owned(),
        key,
        reason,
    };
    if overrides.is_empty() {
        config.sources = sources::apply(&mut table, &[], &toml::Table::new())
            .map_err(|reason| fail(String::new(), reason))?;
        return Ok(config);
    }
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let origins = sources::apply(&mut table, overrides, &defaults)
        .map_err(|reason| fail(String::new(), reason))?;
    let mut config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let key = match origins.env_var_for(&key) {
                Some(var) => format!("{key} (from {var})"),
                None => key,
            };
            fail(key, e.inner().message().trim().to_owned())
        })?;
    config.sources = origins;
    Ok(config)
}

fn parse_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = |key: String, error: &toml::de::Error| ConfigError {
        file: path.to_owned(),
        key,
        reason: match error.span() {
            Some(span) => format!(
                "{} (line {})",
                error.message().trim(),
                line_of(text, span.start)
            ),
            None => error.message().trim().to_owned(),
        },
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| located(String::new(), &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        located(if key == "." { String::new() } else { key }, e.inner())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::secret::MASK;
    use super::*;

    /// The configuration, or its first problem.
    fn load(text: &str) -> Result<Config, ConfigError> {
        load_all(text).map_err(|errors| errors.first().clone())
    }

    fn load_all(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, Path::new("/etc/orderwatch/config.toml"))
    }

    fn keys(errors: &ConfigErrors) -> Vec<&str> {
        errors.problems().iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn empty_file_gives_loopback_defaults_and_resolves_the_database_path() {
        let config = load("").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.path, "/webhooks/musement");
        assert_eq!(config.server.max_body_bytes, 65536);
        assert_eq!(
            config.database.path,
            Path::new("/etc/orderwatch/orderwatch.db")
        );
        assert_eq!(config.store.skew_margin, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let err = load("[server]\nlisten = \"127.0.0.1:1\"\npaht = \"/x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/orderwatch/config.toml: server"),
            "{text}"
        );
        assert!(text.contains("unknown field `paht`"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(err.key, "server.listen");
        let err = load("[server]\nallow_ips = [\"10.0.0.0/8\", \"bogus\"]\n").unwrap_err();
        assert_eq!(err.key, "server.allow_ips[1]");
        let err = load("[store]\nskew_margin = \"soon\"\n").unwrap_err();
        assert_eq!(err.key, "store.skew_margin");
    }

    #[test]
    fn events_keep_is_off_by_default_and_at_least_an_hour() {
        assert_eq!(load("").unwrap().store.events_keep, None);
        let config = load("[store]\nevents_keep = \"90d\"\n").unwrap();
        assert_eq!(
            config.store.events_keep,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert!(config.to_masked_toml().contains("events_keep = "));
        let err = load("[store]\nevents_keep = \"10m\"\n").unwrap_err();
        assert_eq!(err.key, "store.events_keep");
    }

    #[test]
    fn exposed_listener_needs_auth_or_allowlist() {
        let err = load("[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!(err.key, "server");
        let err = load("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n").unwrap_err();
        assert_eq!(err.key, "server");
        load("[server]\nlisten = \"0.0.0.0:8080\"\nallow_ips = [\"203.0.113.0/24\", \"2001:db8::1\"]\n").unwrap();
    }

    #[test]
    fn metrics_listen_is_optional_and_separate() {
        assert_eq!(load("").unwrap().server.metrics_listen, None);
        let config = load("[server]\nmetrics_listen = \"127.0.0.1:9090\"\n").unwrap();
        assert_eq!(
            config.server.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let err = load("[server]\nmetrics_listen = \"127.0.0.1:8080\"\n").unwrap_err();
        assert_eq!(err.key, "server.metrics_listen");
        let err = load("[server]\nmetrics_listen = \"9090\"\n").unwrap_err();
        assert_eq!(err.key, "server.metrics_listen");
        let err = load("[server]\npath = \"/metrics\"\n").unwrap_err();
        assert_eq!(err.key, "server.path");
    }

    #[test]
    fn password_sources_are_exclusive_and_masked() {
        let err = load("[server.auth]\nusername = \"u\"\n").unwrap_err();
        assert_eq!(err.key, "server.auth.password");
        let err = load("[server.auth]\nusername = \"u\"\npassword = \"p\"\npassword_env = \"X\"\n")
            .unwrap_err();
        assert_eq!(err.key, "server.auth.password");
        let err =
            load("[server.auth]\nusername = \"u\"\npassword_env = \"ORDERWATCH_TEST_UNSET_VAR\"\n")
                .unwrap_err();
        assert_eq!(err.key, "server.auth.password_env");

        let err = load("[server.auth]\nusername = \"u\"\npassword = 73915468\n").unwrap_err();
        assert_eq!(err.key, "server.auth.password");
        assert!(!err.to_string().contains("73915468"), "{err}");

        let config = load("[server.auth]\nusername = \"u\"\npassword = \"Swordfish\"\n").unwrap();
        let auth = config.server.auth.as_ref().unwrap();
        assert_eq!(auth.resolved_password.expose(), "Swordfish");
        let shown = config.to_masked_toml();
        assert!(!shown.contains("Swordfish"), "{shown}");
        assert!(shown.contains(MASK), "{shown}");
        assert!(!format!("{config:?}").contains("Swordfish"));
    }

    #[test]
    fn reconciler_schedule_is_interval_or_cron() {
        let config = load("").unwrap();
        assert_eq!(
            config.reconciler.schedule(),
            Schedule::Every(Duration::from_secs(60))
        );
        assert!(
            config.musement.credentials.is_none(),
            "no credentials by default"
        );
        let config = load("[reconciler]\ncron = \"*/10 * * * * *\"\n").unwrap();
        assert_eq!(
            config.reconciler.schedule(),
            Schedule::Cron("*/10 * * * * *".into())
        );
        let err = load("[reconciler]\ncron = \"every tuesday\"\n").unwrap_err();
        assert_eq!(err.key, "reconciler.cron");
        let err = load("[reconciler]\ncron = \"0 * * * * *\"\ninterval = \"1m\"\n").unwrap_err();
        assert_eq!(err.key, "reconciler");
    }

    #[test]
    fn plain_http_is_only_for_loopback_apis() {
        for ok in [
            "http://127.0.0.1:9/api/v3",
            "http://localhost/api",
            "http://[::1]:8080/x",
        ] {
            assert!(
                load(&format!("[musement]\nbase_url = \"{ok}\"\n")).is_ok(),
                "{ok}"
            );
        }
        let err = load("[musement]\nbase_url = \"http://api.musement.com/api/v3\"\n").unwrap_err();
        assert_eq!(err.key, "musement.base_url");
    }

    /// Issue 11 defect #4: the host that gets the secret is the URL's real host, whatever
    /// userinfo, look-alike names or parser tricks surround it.
    #[test]
    fn base_url_tricks_cannot_pass_for_loopback() {
        for bad in [
            // Userinfo: the real host is the one after `@`.
            "http://127.0.0.1:1@api.musement.com/api/v3",
            "http://[::1]@api.musement.com/api/v3",
            "http://[::1]:80@api.musement.com/api/v3",
            "http://localhost@api.musement.com/api/v3",
            "http://localhost:8080@api.musement.com/api/v3",
            "http://api.musement.com\t@127.0.0.1/api/v3",
            // Userinfo is refused even where the host is fine: credentials come from client_id
            // and client_secret, and a URL holding them ends up in logs.
            "http://user:pw@127.0.0.1:9/api/v3",
            "https://user@sandbox.musement.com/api/v3",
            // Names that merely start like loopback.
            "http://127.0.0.1.evil.com/api/v3",
            "http://127.0.0.1%2eevil.com/api/v3",
            "http://localhost.evil.com/api/v3",
            "http://localhost./api/v3",
            "http://loc%61lhost.evil.com/api/v3",
            // Characters parsers disagree on.
            "http://127.0.0.1\\@evil.com/api/v3",
            "http://evil.com\\127.0.0.1/api/v3",
            // The host hidden behind a query or fragment.
            "http://api.musement.com#@127.0.0.1/api/v3",
            "http://api.musement.com?@127.0.0.1/api/v3",
            // Not URLs the client can use.
            "ftp://127.0.0.1/api/v3",
            "http:///api/v3",
            "127.0.0.1:8080/api/v3",
        ] {
            // A TOML literal string: backslashes and tabs reach the URL as written.
            let toml = format!("[musement]\nbase_url = '{bad}'\n");
            let err = load(&toml).expect_err(bad);
            assert_eq!(err.key, "musement.base_url", "{bad}: {err}");
            let text = err.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(
                !text.contains("pw@"),
                "the URL's password is not echoed: {text}"
            );
        }
        for ok in [
            "http://127.0.0.1:9/api/v3",
            "http://127.0.0.2/api/v3",
            "http://localhost/api",
            "http://LOCALHOST:8080/api",
            "http://[::1]:8080/x",
            "https://sandbox.musement.com/api/v3/",
            "https://api.musement.com/api/v3",
        ] {
            let toml = format!("[musement]\nbase_url = \"{ok}\"\n");
            assert!(load(&toml).is_ok(), "{ok}: {:?}", load(&toml).err());
        }
    }

    #[test]
    fn musement_credentials_come_in_pairs_and_need_an_application() {
        let err = load_all("[musement]\nclient_id = \"id\"\n").unwrap_err();
        assert_eq!(
            keys(&err),
            ["musement.application", "musement.client_secret"]
        );
        let err = load("[musement]\nclient_id = \"id\"\nclient_secret = \"s3cret\"\n").unwrap_err();
        assert_eq!(err.key, "musement.application");
        let config = load(
            "[musement]\napplication = \"acme\"\nclient_id = \"id\"\nclient_secret = \"s3cret\"\n",
        )
        .unwrap();
        let (id, secret) = config.musement.credentials.clone().unwrap();
        assert_eq!((id.as_str(), secret.expose()), ("id", "s3cret"));
        assert!(!config.to_masked_toml().contains("s3cret"));
    }

    /// Independent problems come out together, each naming its key: the rules that span keys
    /// (one problem per key), then the secrets, each on its own; no secret value in any.
    #[test]
    fn every_independent_problem_is_reported_at_once() {
        let err = load_all(
            "[server]\npath = \"metrics\"\nmax_connections = 0\n\
             [server.auth]\nusername = \"a:b\"\npassword = \"\"\n\
             previous_password_env = \"ORDERWATCH_TEST_UNSET_OLD\"\n\
             [musement]\nclient_id = \"id\"\nclient_secret_env = \"ORDERWATCH_TEST_UNSET_SECRET\"\n\
             [reconciler]\nconcurrency = 0\n",
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "server.path",
                "server.max_connections",
                "server.auth.username",
                "musement.application",
                "reconciler.concurrency",
                "server.auth.password",
                "server.auth.previous_password_env",
                "musement.client_secret_env",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(!text.contains('\n'), "one line for a log: {text}");
        assert_eq!(text.matches("/etc/orderwatch/config.toml: ").count(), 8);
        // A single problem reads as before.
        let one = load_all("[store]\nmax_batch = 0\n").unwrap_err();
        assert_eq!(
            one.to_string(),
            "/etc/orderwatch/config.toml: store.max_batch: must be at least 1"
        );
    }

    #[test]
    fn password_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "Swordfish\n").unwrap();
        let path = dir.path().join("config.toml");
        let config = Config::from_toml(
            "[server.auth]\nusername = \"u\"\npassword_file = \"pw\"\n",
            &path,
        )
        .unwrap();
        assert_eq!(
            config.server.auth.unwrap().resolved_password.expose(),
            "Swordfish"
        );
    }
}
