//! `[database]`: SQLite by `path` (the embedded default) or PostgreSQL by `url`, the rules
//! between their keys, and [`DatabaseUrl`], which never prints a password.
//!
//! Which keys meet which: a deployment often keeps the shipped `config.toml` (it sets `path`
//! and `busy_timeout`) and selects PostgreSQL with `ORDERWATCH_DATABASE__URL`. So SQLite's keys
//! set in another source than `url` (or left at their defaults) are ignored and said so once at
//! INFO; set in the same source as `url` they are a contradiction, an error naming both.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::secret::{MASK, Secret, SecretSource};
use super::sources::{Origin, Sources};
use super::{ConfigError, Secrets};

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The SQLite file; a relative path is resolved against the config file's folder.
    pub path: PathBuf,
    /// How long a write waits for a lock held by another process before giving up (then 503).
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Largest size the database file may grow to, in bytes (absent: no limit but the disk's);
    /// a WAL that cannot be reset counts too, beyond its working size. At the limit writes fail
    /// like on a full disk: webhooks get 503 until space is freed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
    /// PostgreSQL instead of SQLite: `postgres://user@host:port/db` (the host may be a
    /// Unix-socket folder). A password in it works but is better in `password_env`/`_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<DatabaseUrl>,
    /// The environment variable holding the PostgreSQL password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file holding the PostgreSQL password (a trailing newline is dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS to PostgreSQL; absent: `verify-full` off loopback, `disable` on loopback and sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// PEM certificates of a private CA to verify the server with (instead of the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PostgreSQL connections for reads and claims (the two writers have their own).
    pub pool_size: usize,
    /// How long a PostgreSQL statement waits for a row lock before failing (then 503).
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// The longest a PostgreSQL statement may run before the server cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// The password from `password_env` or `password_file`, once loaded.
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            path: "orderwatch.db".into(),
            busy_timeout: Duration::from_secs(5),
            max_size_bytes: None,
            url: None,
            password_env: None,
            password_file: None,
            tls: None,
            tls_ca_file: None,
            pool_size: 5,
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            password: None,
        }
    }
}

/// SQLite's keys, which mean nothing with `url`.
const SQLITE_KEYS: &[&str] = &["path", "busy_timeout", "max_size_bytes"];
/// PostgreSQL's keys, which mean nothing without `url`.
const POSTGRES_KEYS: &[&str] = &[
    "password_env",
    "password_file",
    "tls",
    "tls_ca_file",
    "pool_size",
    "lock_timeout",
    "statement_timeout",
];

impl DatabaseConfig {
    /// Where the database is, for log lines and messages: the file, or the URL masked.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => url.to_string(),
            None => std::path::absolute(&self.path)
                .unwrap_or_else(|_| self.path.clone())
                .display()
                .to_string(),
        }
    }

    /// The TLS mode in force: the configured one, else by where the server is.
    pub fn tls_mode(&self) -> TlsMode {
        match (self.tls, &self.url) {
            (Some(mode), _) => mode,
            (None, Some(url)) if url.is_local() => TlsMode::Disable,
            (None, Some(_)) => TlsMode::VerifyFull,
            (None, None) => TlsMode::Disable,
        }
    }

    /// SQLite's keys that `url` makes irrelevant (set in another source than `url`, or left
    /// at their defaults), each with where it came from: the daemon's INFO line.
    pub fn ignored(&self, sources: &Sources) -> Vec<String> {
        if self.url.is_none() {
            return Vec::new();
        }
        let url_origin = origin(sources, "url");
        SQLITE_KEYS
            .iter()
            .filter_map(|key| match origin(sources, key) {
                Some(from) if Some(from) != url_origin => {
                    Some(format!("database.{key} (from the {from})"))
                }
                None if *key == "path" => Some("database.path (default)".to_owned()),
                _ => None,
            })
            .collect()
    }

    /// The rules between `[database]`'s keys, as (key, reason); `sources` says where each key
    /// was set.
    pub(super) fn check(&self, sources: &Sources) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let Some(url) = &self.url else {
            for key in POSTGRES_KEYS {
                if origin(sources, key).is_some() {
                    problems.push((
                        format!("database.{key}"),
                        "is for PostgreSQL and needs database.url".to_owned(),
                    ));
                }
            }
            return problems;
        };
        let url_origin = origin(sources, "url");
        for key in SQLITE_KEYS {
            if let Some(from) = origin(sources, key).filter(|from| Some(*from) == url_origin) {
                problems.push((
                    format!("database.{key}"),
                    format!(
                        "is for SQLite, and database.url (PostgreSQL) is set in the same \
                         {from}; remove one of database.url and database.{key}"
                    ),
                ));
            }
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            problems.push((
                "database.password_env".into(),
                "set one of database.password_env and database.password_file".into(),
            ));
        } else if url.has_password()
            && (self.password_env.is_some() || self.password_file.is_some())
        {
            problems.push((
                "database.url".into(),
                "holds a password and so does database.password_env/_file; keep one".into(),
            ));
        }
        if self.tls_ca_file.is_some() && self.tls == Some(TlsMode::Disable) {
            problems.push((
                "database.tls_ca_file".into(),
                "is set but database.tls is \"disable\"".into(),
            ));
        }
        if self.pool_size == 0 {
            problems.push(("database.pool_size".into(), "must be at least 1".into()));
        }
        for (key, value) in [
            ("database.lock_timeout", self.lock_timeout),
            ("database.statement_timeout", self.statement_timeout),
        ] {
            // Zero means "no limit" to PostgreSQL: a stuck lock would hang a webhook.
            if value < Duration::from_millis(1) {
                problems.push((key.into(), "must be at least 1ms".into()));
            }
        }
        problems
    }

    /// Loads the password from `password_env` or `password_file` (with [`Secrets::Check`],
    /// only checks how it is given). Read even for the commands that skip other secrets:
    /// they need the database.
    pub(super) fn resolve_password(
        &mut self,
        file: &Path,
        secrets: Secrets,
    ) -> Option<ConfigError> {
        // Neither: no password (trust, peer or the URL's); both: `check` said so already.
        if self.url.is_none() || self.password_env.is_some() == self.password_file.is_some() {
            return None;
        }
        let source = SecretSource {
            key: "database.password",
            value: None,
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
        };
        let secrets = match secrets {
            Secrets::Skip => Secrets::Resolve,
            other => other,
        };
        match source.load(file, secrets) {
            Ok(password) => {
                self.password = password;
                None
            }
            Err(problem) => Some(problem),
        }
    }

    /// The warning for a password written into `url`.
    pub(super) fn warnings(&self) -> Vec<String> {
        match &self.url {
            Some(url) if url.has_password() => vec![
                "database.url contains a password; it is masked in output, but a password \
                 belongs in database.password_env or database.password_file"
                    .to_owned(),
            ],
            _ => Vec::new(),
        }
    }

    /// The relative paths among `[database]`'s keys, to resolve against the config's folder.
    pub(super) fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [
            Some(&mut self.path),
            self.password_file.as_mut(),
            self.tls_ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
    }
}

/// Where a key was set, for "the same source": the file, or the environment (all its variables
/// count as one source: whoever sets both means both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    File,
    Environment,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "configuration file",
            Self::Environment => "environment",
        })
    }
}

/// Where `database.KEY` was set; `None`: its default.
fn origin(sources: &Sources, key: &str) -> Option<SourceKind> {
    sources
        .origin(&format!("database.{key}"))
        .map(|origin| match origin {
            Origin::File => SourceKind::File,
            Origin::Env(_) => SourceKind::Environment,
        })
}

/// How the connection to PostgreSQL is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP (loopback and Unix sockets).
    Disable,
    /// Encrypted, the server's certificate not checked (libpq's `require`).
    Require,
    /// Encrypted, the certificate checked against the CA and the host name.
    VerifyFull,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// A PostgreSQL connection URL (`postgres://` or `postgresql://`). Display, Debug and
/// Serialize mask its password; only [`DatabaseUrl::connect_config`] sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    text: String,
    parsed: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// The URL as tokio-postgres connects with it (password included).
    pub fn connect_config(&self) -> tokio_postgres::Config {
        self.parsed.clone()
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.parsed.get_password().is_some()
    }

    /// Whether every host is loopback or a Unix socket (no host means the local socket).
    pub fn is_local(&self) -> bool {
        use tokio_postgres::config::Host;
        let addrs_local = self.parsed.get_hostaddrs().iter().all(IpAddr::is_loopback);
        let hosts_local = self.parsed.get_hosts().iter().all(|host| match host {
            #[cfg(unix)]
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        });
        addrs_local && hosts_local
    }

    /// The URL with its password replaced by a mask, in the userinfo and in `?password=`.
    fn masked(&self) -> String {
        let text = &self.text;
        let Some(scheme_end) = text.find("://").map(|at| at + 3) else {
            return MASK.to_owned();
        };
        let rest = &text[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}@{hosts}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                            format!("{name}={MASK}")
                        }
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{}{authority}{tail}", &text[..scheme_end])
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// Errors never quote the text (it may hold a password).
    fn from_str(text: &str) -> Result<Self, String> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err("must start with postgres:// or postgresql://".into());
        }
        if text.to_ascii_lowercase().contains("sslmode=") {
            // One place decides TLS, so what check-config shows is what is used.
            return Err("sets sslmode; use database.tls (disable, require, verify-full)".into());
        }
        let parsed = tokio_postgres::Config::from_str(text)
            .map_err(|e| format!("is not a PostgreSQL URL: {e}"))?;
        if parsed.get_dbname().is_none() {
            return Err("names no database (postgres://user@host:port/DATABASE)".into());
        }
        if parsed.get_user().is_none() {
            return Err("names no user (postgres://USER@host:port/database)".into());
        }
        Ok(Self {
            text: text.to_owned(),
            parsed,
        })
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigErrors};
    use super::*;

    const FILE: &str = "/etc/orderwatch/config.toml";
    const URL: &str = "postgres://app@db.example:5432/orders";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_and_env(text, Path::new(FILE), vars)
    }

    /// The problems' keys and reasons, one string each.
    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        load(text, env)
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect()
    }

    #[test]
    fn a_url_from_the_environment_overrides_the_shipped_files_sqlite_keys() {
        let shipped = "[database]\npath = \"orderwatch.db\"\nbusy_timeout = \"5s\"\n";
        let config = load(shipped, &[("ORDERWATCH_DATABASE__URL", URL)]).unwrap();
        assert_eq!(config.database.url.as_ref().unwrap().to_string(), URL);
        assert_eq!(
            config.database.ignored(&config.sources),
            [
                "database.path (from the configuration file)",
                "database.busy_timeout (from the configuration file)"
            ]
        );
        assert_eq!(config.database.tls_mode(), TlsMode::VerifyFull);
        // With the defaults only, the default path is what is ignored.
        let config = load(&format!("[database]\nurl = \"{URL}\"\n"), &[]).unwrap();
        assert_eq!(
            config.database.ignored(&config.sources),
            ["database.path (default)"]
        );
    }

    #[test]
    fn sqlite_keys_beside_url_in_the_same_source_are_an_error_naming_both() {
        let text = format!("[database]\nurl = \"{URL}\"\npath = \"x.db\"\nmax_size_bytes = 10\n");
        let found = problems(&text, &[]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("database.path: is for SQLite"),
            "{found:?}"
        );
        assert!(found[0].contains("database.url"), "{found:?}");
        assert!(
            found[1].starts_with("database.max_size_bytes:"),
            "{found:?}"
        );
        let env = [
            ("ORDERWATCH_DATABASE__URL", URL),
            ("ORDERWATCH_DATABASE__BUSY_TIMEOUT", "1s"),
        ];
        let found = problems("", &env);
        assert!(
            found[0].starts_with("database.busy_timeout: is for SQLite")
                && found[0].contains("same environment"),
            "{found:?}"
        );
    }

    #[test]
    fn postgres_keys_without_url_are_an_error() {
        let found = problems("[database]\npool_size = 3\ntls = \"require\"\n", &[]);
        assert_eq!(
            found,
            [
                "database.tls: is for PostgreSQL and needs database.url",
                "database.pool_size: is for PostgreSQL and needs database.url"
            ]
        );
    }

    #[test]
    fn the_password_comes_from_one_place_and_is_read_even_for_database_commands() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pg-password");
        std::fs::write(&secret, "from-the-file\n").unwrap();
        let text = format!(
            "[database]\nurl = \"{URL}\"\npassword_file = \"{}\"\n",
            secret.display()
        );
        let config = load(&text, &[]).unwrap();
        assert_eq!(
            config.database.password.as_ref().map(Secret::expose),
            Some("from-the-file")
        );
        let database_only = dir.path().join("config.toml");
        std::fs::write(&database_only, &text).unwrap();
        let config = Config::load_for_database(&database_only).unwrap();
        assert!(config.database.password.is_some());
        let both = format!("{text}password_env = \"PGPASS\"\n");
        assert_eq!(
            problems(&both, &[]),
            ["database.password_env: set one of database.password_env and database.password_file"]
        );
        let in_url = "[database]\nurl = \"postgres://app:pw@h/db\"\npassword_env = \"PGPASS\"\n";
        let found = problems(in_url, &[("PGPASS", "x")]);
        assert!(
            found[0].starts_with("database.url: holds a password"),
            "{found:?}"
        );
        assert!(!found[0].contains("pw@"), "{found:?}");
    }

    #[test]
    fn a_password_in_the_url_is_masked_and_warned_about() {
        let config = load(
            "[database]\nurl = \"postgres://app:hunter2@127.0.0.1/db\"\n",
            &[],
        )
        .unwrap();
        let shown = config.to_masked_toml();
        assert!(
            shown.contains("url = \"postgres://app:********@127.0.0.1/db\""),
            "{shown}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!config.database.describe().contains("hunter2"));
        assert_eq!(config.database.tls_mode(), TlsMode::Disable, "loopback");
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("database.url contains a password")),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn bad_values_name_their_key_without_quoting_the_url() {
        let found = problems(
            "[database]\nurl = \"postgres://app:hunter2@h/db\"\nlock_timeout = \"0s\"\ntls = \"disable\"\ntls_ca_file = \"ca.pem\"\n",
            &[],
        );
        assert_eq!(
            found,
            [
                "database.tls_ca_file: is set but database.tls is \"disable\"",
                "database.lock_timeout: must be at least 1ms"
            ]
        );
        let error = load("[database]\nurl = \"mysql://app:hunter2@h/db\"\n", &[]).unwrap_err();
        assert!(error.to_string().contains("database.url"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = load("[database]\ntls = \"maybe\"\n", &[]).unwrap_err();
        assert!(error.to_string().contains("database.tls"), "{error}");
    }

    fn url(text: &str) -> DatabaseUrl {
        text.parse().unwrap()
    }

    #[test]
    fn the_password_is_masked_wherever_it_is_written() {
        let with_userinfo = url("postgres://app:s3cr%40t@db.example:5433/orders?connect_timeout=3");
        assert!(with_userinfo.has_password());
        assert_eq!(
            with_userinfo.to_string(),
            "postgres://app:********@db.example:5433/orders?connect_timeout=3"
        );
        let in_query =
            url("postgresql://app@db.example/orders?password=hunter2&application_name=x");
        assert!(in_query.has_password());
        assert_eq!(
            format!("{in_query:?}"),
            "DatabaseUrl(postgresql://app@db.example/orders?password=********&application_name=x)"
        );
        let without = url("postgres://app@127.0.0.1:5432/orders");
        assert!(!without.has_password());
        assert_eq!(without.to_string(), "postgres://app@127.0.0.1:5432/orders");
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for (text, says) in [
            ("mysql://u:pw@h/db", "must start with postgres://"),
            (
                "host=h user=u password=pw dbname=d",
                "must start with postgres://",
            ),
            ("postgres://u:pw@h:notaport/db", "is not a PostgreSQL URL"),
            ("postgres://u:pw@h:5432", "names no database"),
            ("postgres://h:5432/db", "names no user"),
            ("postgres://u:pw@h/db?sslmode=disable", "use database.tls"),
        ] {
            let error = text.parse::<DatabaseUrl>().unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
            assert!(!error.contains("pw"), "{text}: {error}");
        }
    }

    #[test]
    fn loopback_and_sockets_are_local() {
        for local in [
            "postgres://u@127.0.0.1/db",
            "postgres://u@localhost:5432/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
            "postgres://u@/db?host=/tmp",
        ] {
            assert!(url(local).is_local(), "{local}");
        }
        for remote in [
            "postgres://u@db.example/db",
            "postgres://u@10.0.0.5/db",
            "postgres://u@127.0.0.1,db.example/db",
        ] {
            assert!(!url(remote).is_local(), "{remote}");
        }
    }
}
