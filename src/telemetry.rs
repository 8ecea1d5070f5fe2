//! Logging: the subscriber (text or JSON lines on stderr, `RUST_LOG` over `[log] level`) and
//! the handle a reload uses to change the level.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, LogFormat};

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
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
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
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.log.format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json()).try_init(),
    };
    LogControl {
        handle,
        from_env: rust_log_set,
    }
}
