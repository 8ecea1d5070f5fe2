//! The rules that span keys, checked after a configuration is parsed and before its secrets
//! are read; each failure names the file and the key. Every rule is checked, so a
//! configuration's problems come out together (one per key at most).

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError, ConfigErrors};

/// The problems found so far, each naming `file`.
struct Problems<'a> {
    file: &'a Path,
    found: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.found.push(ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        });
    }
}

impl Config {
    /// Checks the rules that span keys; errors name `file`.
    pub(crate) fn validate(&self, file: &Path) -> Result<(), ConfigErrors> {
        let problems = self.problems(file);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors {
            problems,
            warnings: Vec::new(),
        })
    }

    /// Every rule that spans keys and fails, in the order of the file's sections.
    pub(super) fn problems(&self, file: &Path) -> Vec<ConfigError> {
        let mut problems = Problems {
            file,
            found: Vec::new(),
        };
        self.check_server(&mut problems);
        for (key, reason) in self.api.check() {
            problems.add(&key, reason);
        }
        for (key, reason) in super::forward::check(&self.forward) {
            problems.add(&key, reason);
        }
        for (key, reason) in self.database.check(&self.sources) {
            problems.add(&key, reason);
        }
        self.check_store(&mut problems);
        self.check_musement(&mut problems);
        self.check_reconciler(&mut problems);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.add("log.level", format!("not a valid filter: {e}"));
        }
        problems.found
    }

    fn check_server(&self, problems: &mut Problems) {
        let server = &self.server;
        if !server.path.starts_with('/') {
            problems.add("server.path", "must start with '/'");
        } else if ["/healthz", "/readyz"].contains(&server.path.as_str()) {
            problems.add("server.path", "is reserved for health checks");
        } else if server.path == "/metrics" {
            problems.add("server.path", "is reserved for metrics");
        }
        if server
            .metrics_listen
            .is_some_and(|m| m == server.listen && m.port() != 0)
        {
            problems.add(
                "server.metrics_listen",
                "must differ from listen (leave it unset to serve /metrics on listen)",
            );
        }
        if server.max_body_bytes == 0 {
            problems.add("server.max_body_bytes", "must be at least 1");
        }
        if let Some(Err(reason)) = server.instance_id.as_deref().map(valid_instance_id) {
            problems.add("server.instance_id", reason);
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.request_timeout", server.request_timeout),
            ("database.busy_timeout", self.database.busy_timeout),
        ] {
            if value.is_zero() {
                problems.add(key, "must be longer than 0s");
            }
        }
        if server.max_connections == 0 {
            problems.add("server.max_connections", "must be at least 1");
        }
        if let Some(auth) = &server.auth {
            if auth.username.is_empty() {
                problems.add("server.auth.username", "must not be empty");
            } else if auth.username.contains(':') {
                problems.add(
                    "server.auth.username",
                    "must not contain ':' (Basic auth cannot carry it)",
                );
            }
        }
        let exposed = !server.listen.ip().is_loopback() || !server.trusted_proxies.is_empty();
        if exposed && server.auth.is_none() && server.allow_ips.is_empty() {
            problems.add(
                "server",
                "listening beyond loopback (or behind trusted_proxies) needs [server.auth] or allow_ips",
            );
        }
    }

    fn check_store(&self, problems: &mut Problems) {
        let store = &self.store;
        if store.max_batch == 0 {
            problems.add("store.max_batch", "must be at least 1");
        }
        if store.queue_capacity == 0 {
            problems.add("store.queue_capacity", "must be at least 1");
        }
        if store.skew_margin > Duration::from_secs(3600) {
            problems.add("store.skew_margin", "must be at most 1h");
        }
        if store
            .events_keep
            .is_some_and(|keep| keep < Duration::from_secs(3600))
        {
            problems.add("store.events_keep", "must be at least 1h");
        }
    }

    fn check_reconciler(&self, problems: &mut Problems) {
        let reconciler = &self.reconciler;
        if reconciler.interval.is_some() && reconciler.cron.is_some() {
            problems.add("reconciler", "set either interval or cron, not both");
        }
        if reconciler
            .interval
            .is_some_and(|i| i < Duration::from_secs(1))
        {
            problems.add("reconciler.interval", "must be at least 1s");
        }
        if let Some(cron) = &reconciler.cron
            && let Err(reason) = check_cron(cron)
        {
            problems.add("reconciler.cron", reason);
        }
        if reconciler.concurrency == 0 {
            problems.add("reconciler.concurrency", "must be at least 1");
        }
        if !(reconciler.max_requests_per_second >= 0.0
            && reconciler.max_requests_per_second.is_finite())
        {
            problems.add(
                "reconciler.max_requests_per_second",
                "must be 0 (no ceiling) or more",
            );
        }
        for (key, value) in [
            ("reconciler.request_timeout", reconciler.request_timeout),
            ("reconciler.backoff_base", reconciler.backoff_base),
            ("reconciler.max_age", reconciler.max_age),
        ] {
            if value.is_zero() {
                problems.add(key, "must be longer than 0s");
            }
        }
        if reconciler.backoff_cap < reconciler.backoff_base {
            problems.add(
                "reconciler.backoff_cap",
                "must not be shorter than backoff_base",
            );
        }
        if let Some(bad) = reconciler.poll_statuses.iter().position(|s| s.is_empty()) {
            problems.add(
                &format!("reconciler.poll_statuses[{bad}]"),
                "must not be empty",
            );
        }
    }

    fn check_musement(&self, problems: &mut Problems) {
        // The client parses it with the same function, so what is checked here is what it uses.
        if let Err(reason) = crate::musement::base_url::parse(&self.musement.base_url) {
            problems.add("musement.base_url", reason);
        }
        if self.musement.credentials_configured() && self.musement.application.is_empty() {
            problems.add(
                "musement.application",
                "is required with API credentials (Musement refuses requests without X-Musement-Application)",
            );
        }
    }
}

/// Whether `id` can name a daemon in the lease table and in log lines.
pub(super) fn valid_instance_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 bytes long");
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters");
    }
    Ok(())
}

/// The shape a cron schedule must have, for messages.
const CRON_SHAPE: &str = "6 or 7 fields, seconds first: second minute hour day-of-month month \
                          day-of-week [year], e.g. \"0 */5 * * * *\" for every five minutes";

/// Checks `cron` with the scheduler that will run it; the reason names the expression, what
/// is wrong with it where the parser says, and the expected shape.
fn check_cron(cron: &str) -> Result<(), String> {
    if tokio_cron_scheduler::Job::new_async(cron, |_, _| Box::pin(async {})).is_ok() {
        return Ok(());
    }
    // The scheduler only says "ParseSchedule"; its parser, asked the same way, says why.
    let detail = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
        .err()
        .map(|e| format!(" ({})", e.to_string().trim_end_matches('.')))
        .unwrap_or_default();
    let fields = match cron.split_whitespace().count() {
        6 | 7 => String::new(),
        n => format!(", it has {n} field(s)"),
    };
    Err(format!(
        "{cron:?} is not a cron schedule{detail}{fields}; expected {CRON_SHAPE}"
    ))
}
