//! Builds the daemon from a [`Config`] and a bound listener and runs it until shutdown. `main`
//! and the tests share this, so tests spawn the real server on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::{Config, LogFormat};
use crate::receiver::{Receiver, ReceiverSettings};
use crate::store::writer::{self, WriterSettings};
use crate::store::{self, Rules, StoreError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the writer thread: {0}")]
    Writer(std::io::Error),
}

/// How long shutdown waits for the writer to answer the last queued jobs.
const WRITER_DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartupError> {
    let addr = config.server.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Serves webhooks on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to `shutdown_grace`), flushes the writer and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let db_path = config.database.path.clone();
    let busy_timeout = config.database.busy_timeout;
    let conn = tokio::task::spawn_blocking(move || store::open_for_writing(&db_path, busy_timeout))
        .await
        .expect("opening the database panicked")?;
    let (writer, writer_thread) = writer::spawn(conn, writer_settings(&config), clock.clone())
        .map_err(StartupError::Writer)?;
    let receiver = Arc::new(Receiver::new(
        ReceiverSettings::from(&config.server),
        writer,
        clock,
    ));
    announce(&config, &listener);

    let graceful = GracefulShutdown::new();
    serve(listener, &config, receiver.clone(), &graceful, shutdown).await;

    receiver.start_draining();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.server.shutdown_grace) => {
            tracing::warn!(grace = ?config.server.shutdown_grace, "connections still open after the grace period; closing anyway");
        }
    }
    drop(receiver); // the last handle to the writer (once connections are gone): it drains and exits
    let joined = tokio::task::spawn_blocking(move || writer_thread.join());
    if tokio::time::timeout(WRITER_DRAIN_LIMIT, joined)
        .await
        .is_err()
    {
        tracing::error!("the writer did not finish in time");
    }
    tracing::info!("stopped");
    Ok(())
}

fn writer_settings(config: &Config) -> WriterSettings {
    WriterSettings {
        max_batch: config.store.max_batch,
        queue_capacity: config.store.queue_capacity,
        rules: Rules {
            skew_margin: chrono::Duration::from_std(config.store.skew_margin)
                .unwrap_or(chrono::Duration::seconds(5)),
            ..Rules::default()
        },
        rejected_keep: config.store.rejected_keep,
    }
}

fn announce(config: &Config, listener: &TcpListener) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        listen = %addr,
        path = %config.server.path,
        database = %config.database.path.display(),
        "orderwatch is receiving webhooks"
    );
    if config.server.auth.is_none() {
        tracing::warn!(
            "webhook Basic auth is off; fine on loopback, set [server.auth] before exposing the port"
        );
    }
}

/// The accept loop: one task per connection, at most `max_connections` at once.
async fn serve(
    listener: TcpListener,
    config: &Config,
    receiver: Arc<Receiver>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        let service = service_fn(move |request| {
            let receiver = receiver.clone();
            async move { Ok::<_, Infallible>(receiver.handle(request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    tracing::info!("shutting down: no longer accepting connections");
}

/// Installs the log subscriber: `RUST_LOG` if set, else `[log] level`; text or JSON lines.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the daemon");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}
