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

use std::pin::Pin;

use tokio_cron_scheduler::{Job, JobScheduler};

use crate::clock::Clock;
use crate::config::{Config, LogFormat, Schedule};
use crate::musement::{MusementClient, MusementSettings};
use crate::receiver::{Receiver, ReceiverSettings};
use crate::reconciler::{Reconciler, ReconcilerSettings};
use crate::store::writer::{self, Writer, WriterSettings, WriterThread};
use crate::store::{self, PollPolicy, Rules, StoreError, StoreSettings};

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
    #[error("cannot start the reconciler's scheduler: {0}")]
    Scheduler(String),
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartupError> {
    let addr = config.server.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Opens (creating and migrating) the database and starts the single writer on it.
pub async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Writer, WriterThread), StartupError> {
    let database = config.database.clone();
    let conn = tokio::task::spawn_blocking(move || {
        let conn = store::open_for_writing(&database.path, database.busy_timeout)?;
        if let Some(bytes) = database.max_size_bytes {
            store::limit_size(&conn, bytes)?;
        }
        // Said once so operators (and the durability test) can see the promise is in force.
        let journal_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        tracing::info!(%journal_mode, synchronous, "database opened for writing");
        Ok::<_, StoreError>(conn)
    })
    .await
    .expect("opening the database panicked")?;
    writer::spawn(conn, writer_settings(config), clock).map_err(StartupError::Writer)
}

/// Serves webhooks on `listener` and, when configured, runs the reconciler on its schedule,
/// until `shutdown` resolves; then stops accepting, lets in-flight requests and a running pass
/// finish (up to `shutdown_grace`), flushes the writer and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let (writer, writer_thread) = open_store(&config, clock.clone()).await?;
    let reconciler = match build_reconciler(
        &config,
        writer.clone(),
        clock.clone(),
        "orderwatch run",
    ) {
        Ok(reconciler) => Some(Arc::new(reconciler)),
        Err(off) => {
            tracing::warn!(reason = %off, "the reconciler is off; only webhooks will update the state");
            None
        }
    };
    let mut scheduler = match &reconciler {
        Some(reconciler) => {
            Some(start_scheduler(reconciler.clone(), config.reconciler.schedule()).await?)
        }
        None => None,
    };
    let pruning = config
        .store
        .events_keep
        .map(|keep| tokio::spawn(prune_periodically(writer.clone(), clock.clone(), keep)));
    let receiver = Arc::new(Receiver::new(
        ReceiverSettings::from(&config.server),
        writer,
        clock,
    ));
    announce(&config, &listener);

    let graceful = GracefulShutdown::new();
    serve(listener, &config, receiver.clone(), &graceful, shutdown).await;

    receiver.start_draining();
    if let Some(scheduler) = &mut scheduler {
        let _ = scheduler.shutdown().await;
    }
    let grace = config.server.shutdown_grace;
    // Connections are told to close while a running pass winds down, not after it.
    let reconciler_stopped = async {
        if let Some(reconciler) = &reconciler {
            reconciler.stop().await;
        }
    };
    let drained = async { tokio::join!(reconciler_stopped, graceful.shutdown()) };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "requests or a reconciler pass still running after the grace period; stopping anyway"
        );
    }
    if let Some(pruning) = pruning {
        // A batch already sent still commits; the rest waits for the next start.
        pruning.abort();
    }
    writer_thread.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// How often the daemon prunes history (`[store] events_keep`), besides once at start.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes history older than `keep` now and every [`PRUNE_EVERY`], in writer-sized batches.
async fn prune_periodically(writer: Writer, clock: Arc<dyn Clock>, keep: Duration) {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    loop {
        let cutoff = clock.now().checked_sub_signed(keep).unwrap_or_default();
        match store::maintenance::prune(&writer, cutoff).await {
            Ok(pruned) => tracing::info!(
                events = pruned.events,
                rejected_webhooks = pruned.rejected,
                older_than = %crate::clock::to_db_text(cutoff),
                "pruned history"
            ),
            Err(error) => tracing::warn!(%error, "pruning history failed; trying again later"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

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

/// Builds the reconciler from the configuration, or says why it is off. `role` names this
/// process in the lease table.
pub fn build_reconciler(
    config: &Config,
    writer: Writer,
    clock: Arc<dyn Clock>,
    role: &str,
) -> Result<Reconciler, ReconcilerOff> {
    if !config.reconciler.enabled {
        return Err(ReconcilerOff::Disabled);
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
    )
    .map_err(|e| ReconcilerOff::Client(e.to_string()))?;
    let duration = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let settings = ReconcilerSettings {
        concurrency: config.reconciler.concurrency,
        max_requests_per_second: config.reconciler.max_requests_per_second,
        max_age: duration(config.reconciler.max_age),
        backoff_base: duration(config.reconciler.backoff_base),
        backoff_cap: duration(config.reconciler.backoff_cap),
        database: config.database.path.clone(),
        busy_timeout: config.database.busy_timeout,
    };
    // Pids repeat across containers sharing a volume; the host and a random tag keep holders apart.
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into());
    let holder = format!(
        "{role} (pid {} on {host}, {:08x})",
        std::process::id(),
        fastrand::u32(..)
    );
    Ok(Reconciler::new(client, writer, clock, settings, holder))
}

/// Runs a first pass right away (catching up after downtime), then one per scheduled tick.
async fn start_scheduler(
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
) -> Result<JobScheduler, StartupError> {
    let scheduler = JobScheduler::new()
        .await
        .map_err(|e| StartupError::Scheduler(e.to_string()))?;
    let ticking = reconciler.clone();
    let run = move |_, _| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let reconciler = ticking.clone();
        Box::pin(async move { reconciler.tick().await })
    };
    let job = match &schedule {
        Schedule::Every(interval) => Job::new_repeated_async(*interval, run),
        Schedule::Cron(cron) => Job::new_async(cron.as_str(), run),
    }
    .map_err(|e| StartupError::Scheduler(e.to_string()))?;
    scheduler
        .add(job)
        .await
        .map_err(|e| StartupError::Scheduler(e.to_string()))?;
    scheduler
        .start()
        .await
        .map_err(|e| StartupError::Scheduler(e.to_string()))?;
    tracing::info!(?schedule, "the reconciler is on");
    tokio::spawn(async move { reconciler.tick().await });
    Ok(scheduler)
}

fn writer_settings(config: &Config) -> WriterSettings {
    WriterSettings {
        max_batch: config.store.max_batch,
        queue_capacity: config.store.queue_capacity,
        store: store_settings(config),
    }
}

/// The store's view of the configuration.
pub fn store_settings(config: &Config) -> StoreSettings {
    let duration = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    StoreSettings {
        rules: Rules {
            skew_margin: duration(config.store.skew_margin),
            ..Rules::default()
        },
        policy: PollPolicy {
            poll_statuses: config.reconciler.poll_statuses.clone(),
            quiet_period: duration(config.reconciler.quiet_period),
            recheck_interval: duration(config.reconciler.recheck_interval),
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
