//! The rules that span keys, checked after a configuration is parsed and its secrets resolved;
//! each failure names the file and the key.

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError};

impl Config {
    /// Checks the rules that span keys; errors name `file`.
    pub(crate) fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let error = |key: &str, reason: &str| {
            Err(ConfigError {
                file: file.to_owned(),
                key: key.into(),
                reason: reason.into(),
            })
        };
        let server = &self.server;
        if !server.path.starts_with('/') {
            return error("server.path", "must start with '/'");
        }
        if ["/healthz", "/readyz"].contains(&server.path.as_str()) {
            return error("server.path", "is reserved for health checks");
        }
        if server.path == "/metrics" {
            return error("server.path", "is reserved for metrics");
        }
        if server
            .metrics_listen
            .is_some_and(|m| m == server.listen && m.port() != 0)
        {
            return error(
                "server.metrics_listen",
                "must differ from listen (leave it unset to serve /metrics on listen)",
            );
        }
        if server.max_body_bytes == 0 {
            return error("server.max_body_bytes", "must be at least 1");
        }
        if let Some(Err(reason)) = server.instance_id.as_deref().map(valid_instance_id) {
            return error("server.instance_id", reason);
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.request_timeout", server.request_timeout),
            ("database.busy_timeout", self.database.busy_timeout),
        ] {
            if value.is_zero() {
                return error(key, "must be longer than 0s");
            }
        }
        if server.max_connections == 0 {
            return error("server.max_connections", "must be at least 1");
        }
        if let Some(auth) = &server.auth {
            if auth.username.is_empty() {
                return error("server.auth.username", "must not be empty");
            }
            if auth.username.contains(':') {
                return error(
                    "server.auth.username",
                    "must not contain ':' (Basic auth cannot carry it)",
                );
            }
        }
        let exposed = !server.listen.ip().is_loopback() || !server.trusted_proxies.is_empty();
        if exposed && server.auth.is_none() && server.allow_ips.is_empty() {
            return error(
                "server",
                "listening beyond loopback (or behind trusted_proxies) needs [server.auth] or allow_ips",
            );
        }
        if self.store.max_batch == 0 {
            return error("store.max_batch", "must be at least 1");
        }
        if self.store.queue_capacity == 0 {
            return error("store.queue_capacity", "must be at least 1");
        }
        if self.store.skew_margin > Duration::from_secs(3600) {
            return error("store.skew_margin", "must be at most 1h");
        }
        if self
            .store
            .events_keep
            .is_some_and(|keep| keep < Duration::from_secs(3600))
        {
            return error("store.events_keep", "must be at least 1h");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return error("log.level", &format!("not a valid filter: {e}"));
        }
        self.validate_reconciler(file)
    }

    fn validate_reconciler(&self, file: &Path) -> Result<(), ConfigError> {
        let error = |key: &str, reason: String| {
            Err(ConfigError {
                file: file.to_owned(),
                key: key.into(),
                reason,
            })
        };
        let reconciler = &self.reconciler;
        if reconciler.interval.is_some() && reconciler.cron.is_some() {
            return error("reconciler", "set either interval or cron, not both".into());
        }
        if reconciler
            .interval
            .is_some_and(|i| i < Duration::from_secs(1))
        {
            return error("reconciler.interval", "must be at least 1s".into());
        }
        if let Some(cron) = &reconciler.cron
            && let Err(reason) = check_cron(cron)
        {
            return error("reconciler.cron", reason);
        }
        if reconciler.concurrency == 0 {
            return error("reconciler.concurrency", "must be at least 1".into());
        }
        if !(reconciler.max_requests_per_second >= 0.0
            && reconciler.max_requests_per_second.is_finite())
        {
            return error(
                "reconciler.max_requests_per_second",
                "must be 0 (no ceiling) or more".into(),
            );
        }
        for (key, value) in [
            ("reconciler.request_timeout", reconciler.request_timeout),
            ("reconciler.backoff_base", reconciler.backoff_base),
            ("reconciler.max_age", reconciler.max_age),
        ] {
            if value.is_zero() {
                return error(key, "must be longer than 0s".into());
            }
        }
        if reconciler.backoff_cap < reconciler.backoff_base {
            return error(
                "reconciler.backoff_cap",
                "must not be shorter than backoff_base".into(),
            );
        }
        if let Some(bad) = reconciler.poll_statuses.iter().position(|s| s.is_empty()) {
            return error(
                &format!("reconciler.poll_statuses[{bad}]"),
                "must not be empty".into(),
            );
        }
        // The client parses it with the same function, so what is checked here is what it uses.
        if let Err(reason) = crate::musement::base_url::parse(&self.musement.base_url) {
            return error("musement.base_url", reason);
        }
        if self.musement.credentials_configured() && self.musement.application.is_empty() {
            return error(
                "musement.application",
                "is required with API credentials (Musement refuses requests without X-Musement-Application)".into(),
            );
        }
        Ok(())
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
