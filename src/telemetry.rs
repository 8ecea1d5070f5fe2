//! Logging: the subscriber (text or JSON lines on stderr, `RUST_LOG` over `[log] level`), the
//! handle a reload uses to change the level, and how log fields show times and durations.
//!
//! JSON lines are flat: one object per event, its fields beside `timestamp`, `level`, `target`
//! and `message` (no `fields` object, no spans).

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, LogFormat};

/// A time as log lines show it: RFC 3339 in UTC, to the millisecond, or to the second when
/// it has no fraction (`2024-01-01T12:02:00Z`).
pub fn rfc3339(at: DateTime<Utc>) -> String {
    let precision = if at.timestamp_subsec_millis() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    at.to_rfc3339_opts(precision, true)
}

/// A duration as log lines show it, as the configuration is written: `1m 30s`, `250ms`.
pub fn duration(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

/// Dependencies that say at INFO what only their own developers need (tokio-cron-scheduler's
/// "Uninited", "Job creator created"), and the level they are held to under `[log] level`
/// unless it names them. `RUST_LOG` gets no such help: it is the tool for seeing everything.
const QUIETED: &[(&str, &str)] = &[("tokio_cron_scheduler", "error")];

/// The filter for `[log] level`: its directives, then [`QUIETED`] for each crate it leaves out.
pub fn level_filter(level: &str) -> Result<EnvFilter, String> {
    let mut directives = level.trim().to_owned();
    for (target, quiet) in QUIETED {
        if !directives.contains(target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(&format!("{target}={quiet}"));
        }
    }
    EnvFilter::try_new(&directives).map_err(|e| e.to_string())
}

/// Changes the level of the installed log subscriber.
pub struct LogControl {
    /// The filter layer's reload handle.
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over `[log] level`, on reload too.
    from_env: bool,
}

impl LogControl {
    /// Sets `[log] level`; refused while `RUST_LOG` is set.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.from_env {
            return Err("RUST_LOG is set and takes precedence over [log] level".into());
        }
        let filter = level_filter(level)?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the log subscriber: `RUST_LOG` if set, else `[log] level`; text or JSON lines. The
/// returned control lets a reload change the level.
pub fn init_logging(config: &Config) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = EnvFilter::try_from_default_env();
    let rust_log_set = from_env.is_ok();
    let filter = from_env
        .or_else(|_| level_filter(&config.log.level))
        .or_else(|_| level_filter("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.log.format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry
            .with(
                lines
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
    };
    LogControl {
        handle,
        from_env: rust_log_set,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc_3339_in_utc_to_the_millisecond() {
        let whole: DateTime<Utc> = "2024-01-01T12:02:00Z".parse().unwrap();
        assert_eq!(rfc3339(whole), "2024-01-01T12:02:00Z");
        let fraction: DateTime<Utc> = "2024-01-01T13:40:38.538554699Z".parse().unwrap();
        assert_eq!(rfc3339(fraction), "2024-01-01T13:40:38.538Z");
        assert_eq!(duration(Duration::from_secs(90)).to_string(), "1m 30s");
    }

    #[test]
    fn the_level_quiets_chatty_crates_unless_it_names_them() {
        assert_eq!(
            level_filter("info").unwrap().to_string(),
            "tokio_cron_scheduler=error,info"
        );
        let named = level_filter("info,tokio_cron_scheduler=debug")
            .unwrap()
            .to_string();
        assert!(named.contains("tokio_cron_scheduler=debug"), "{named}");
        assert!(!named.contains("=error"), "{named}");
        assert!(level_filter("info,=").is_err());
    }
}
