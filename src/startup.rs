//! Builds the daemon from a [`Config`] and a bound listener and runs it until shutdown. `main`
//! and the tests share this, so tests spawn the real server on `127.0.0.1:0`.

use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};

use std::pin::Pin;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::clock::Clock;
use crate::config::{Config, LogFormat, Schedule};
use crate::metrics::{Metrics, StateSource};
use crate::musement::{MusementClient, MusementSettings};
use crate::receiver::connections::{Admission, ConnectionTable};
use crate::receiver::{Listener, Receiver, ReceiverSettings};
use crate::reconciler::{Reconciler, ReconcilerSettings};
pub use crate::reload::Reload;
use crate::reload::{self, LogControl};
use crate::store::checkpoint::CheckpointSettings;
use crate::store::writer::{self, Writer, WriterSettings, WriterThread};
use crate::store::{self, PollPolicy, Rules, StoreError, StoreSettings};
use crate::systemd;

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
    #[error("cannot start the reconciler's scheduler: {0}")]
    Scheduler(String),
}

/// Makes a write past a file-size limit (`ulimit -f`, `prlimit --fsize`, a container's limit)
/// fail with `EFBIG` instead of killing the process: by default the kernel's `SIGXFSZ`
/// terminates it, dropping every request in flight. With the signal ignored, SQLite reports an
/// I/O error, the writer refuses the batch and webhooks get 503 like for any storage fault.
/// `main` calls this before anything is written; children inherit the ignored disposition,
/// and orderwatch starts none.
pub fn ignore_file_size_signal() {
    #[cfg(unix)]
    {
        // SAFETY: `signal` with `SIG_IGN` installs no handler code; it only changes this
        // process's disposition for one signal, before any other thread exists.
        let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        if previous == libc::SIG_ERR {
            eprintln!(
                "orderwatch: cannot ignore SIGXFSZ ({}); a file-size limit would kill the process",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// How many connections the kernel may queue before `accept`; it caps this at
/// `net.core.somaxconn` (4096 by default on current kernels).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartupError> {
    listen_on(config.server.listen)
}

/// Binds `addr` (port 0: any free port) with a deep accept queue.
pub fn listen_on(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|socket| {
            // Like std's bind: a restarted daemon can rebind while old connections linger.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Most connections the `metrics_listen` listener serves at once (scrapers are few).
const METRICS_CONNECTIONS: usize = 16;

/// Binds `[server] metrics_listen`, if set.
pub async fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, StartupError> {
    let Some(addr) = config.server.metrics_listen else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Opens (creating and migrating) the database and starts the single writer on it, with
/// metrics of its own (for commands that serve none; the daemon uses [`open_store_with`]).
pub async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Writer, WriterThread), StartupError> {
    open_store_with(config, clock, Arc::new(Metrics::new())).await
}

/// [`open_store`], the writer counting into `metrics`; whatever is built on the writer (see
/// [`build_reconciler`]) counts there too.
pub async fn open_store_with(
    config: &Config,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> Result<(Writer, WriterThread), StartupError> {
    let database = config.database.clone();
    let path = database.path.clone();
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
    Ok(writer::spawn(
        conn,
        &path,
        writer_settings(config),
        clock,
        metrics,
    )?)
}

/// Serves webhooks on `listener` (and metrics on `[server] metrics_listen`, bound here if set)
/// and, when configured, runs the reconciler on its schedule, until `shutdown` resolves; then
/// stops accepting, lets in-flight requests and a running pass finish (up to
/// `shutdown_grace`), flushes the writer and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let metrics_listener = bind_metrics(&config).await?;
    run_with(
        listener,
        metrics_listener,
        config,
        clock,
        shutdown,
        Reload::none(),
    )
    .await
}

/// [`run`] with the metrics listener already bound (tests bind `127.0.0.1:0`), applying each
/// configuration `reload` delivers (see [`crate::reload`]).
pub async fn run_with(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
    reload: Reload,
) -> Result<(), StartupError> {
    // One set of metrics per app, never global: tests run several apps in one process.
    let metrics = Arc::new(Metrics::new());
    let (writer, writer_thread) = open_store_with(&config, clock.clone(), metrics.clone()).await?;
    let reconciler = match build_reconciler(&config, writer.clone(), clock.clone(), DAEMON_ROLE) {
        Ok(reconciler) => Some(Arc::new(reconciler)),
        Err(off) => {
            tracing::warn!(reason = %off, "the reconciler is off; only webhooks will update the state");
            None
        }
    };
    let passes = match &reconciler {
        Some(reconciler) => Some(Arc::new(tokio::sync::Mutex::new(
            ScheduledPasses::start(reconciler.clone(), config.reconciler.schedule()).await?,
        ))),
        None => None,
    };
    let watchdog = systemd::Watchdog::start(&writer);
    let pruning = config
        .store
        .events_keep
        .map(|keep| tokio::spawn(prune_periodically(writer.clone(), clock.clone(), keep)));
    let receiver = Arc::new(Receiver::new(
        ReceiverSettings::from(&config.server),
        writer,
        clock.clone(),
        metrics,
        StateSource::new(config.database.path.clone(), clock),
    ));
    announce(&config, &listener, metrics_listener.as_ref());
    let reloads = tokio::spawn(reload::follow(
        reload.configs,
        config.clone(),
        reload::Targets {
            receiver: receiver.clone(),
            passes: passes.clone(),
            log: reload.log,
        },
    ));
    systemd::ready(listener.local_addr().ok(), reconciler.is_some());

    let graceful = GracefulShutdown::new();
    let shutdown = shutdown.shared();
    let serve_metrics = async {
        if let Some(metrics_listener) = metrics_listener {
            let on = Listener::Metrics;
            serve(
                metrics_listener,
                &config,
                on,
                receiver.clone(),
                &graceful,
                shutdown.clone(),
            )
            .await;
        }
    };
    let on = Listener::Webhooks;
    let serve_webhooks = serve(
        listener,
        &config,
        on,
        receiver.clone(),
        &graceful,
        shutdown.clone(),
    );
    tokio::join!(serve_webhooks, serve_metrics);

    systemd::stopping();
    drop(watchdog);
    receiver.start_draining();
    reloads.abort();
    if let Some(passes) = &passes {
        passes.lock().await.shutdown().await;
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

/// The role of the daemon itself (`orderwatch run`) in [`build_reconciler`].
pub const DAEMON_ROLE: &str = "orderwatch run";

/// Who holds the reconciler lease: the daemon is its `instance_id`, the same after every
/// restart, so one restarted after `kill -9` takes back the lease its dead self left at
/// once; any other process (a `reconcile` command) is that plus its role and pid, so it
/// never takes a running daemon's lease.
fn lease_holder(config: &Config, role: &str) -> String {
    let instance = config.server.instance_id();
    if role == DAEMON_ROLE {
        instance
    } else {
        format!("{instance} ({role}, pid {})", std::process::id())
    }
}

/// Builds the reconciler from the configuration, or says why it is off. `role` names this
/// process in the lease table ([`DAEMON_ROLE`] for the daemon).
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
    // The reconciler counts into the metrics of the writer it stores through.
    let metrics = writer.metrics().clone();
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
        metrics.clone(),
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
    let holder = lease_holder(config, role);
    Ok(Reconciler::new(
        client, writer, clock, settings, holder, metrics,
    ))
}

/// The reconciler's scheduler and its one job, which a reload can replace.
pub struct ScheduledPasses {
    scheduler: JobScheduler,
    /// The job running passes now.
    job: uuid::Uuid,
    reconciler: Arc<Reconciler>,
}

impl ScheduledPasses {
    /// Runs a first pass right away (catching up after downtime), then one per scheduled tick.
    async fn start(reconciler: Arc<Reconciler>, schedule: Schedule) -> Result<Self, StartupError> {
        let failed = |e: JobSchedulerError| StartupError::Scheduler(e.to_string());
        let scheduler = JobScheduler::new().await.map_err(failed)?;
        let job = scheduler
            .add(pass_job(&reconciler, &schedule).map_err(failed)?)
            .await
            .map_err(failed)?;
        scheduler.start().await.map_err(failed)?;
        tracing::info!(?schedule, "the reconciler is on");
        let first = reconciler.clone();
        tokio::spawn(async move { first.tick().await });
        Ok(Self {
            scheduler,
            job,
            reconciler,
        })
    }

    /// Replaces the schedule: the new job is added before the old one goes, so no tick is lost
    /// and a bad schedule leaves the old one running.
    pub async fn reschedule(&mut self, schedule: Schedule) -> Result<(), String> {
        let job = pass_job(&self.reconciler, &schedule).map_err(|e| e.to_string())?;
        let added = self.scheduler.add(job).await.map_err(|e| e.to_string())?;
        let _ = self.scheduler.remove(&self.job).await;
        self.job = added;
        tracing::info!(?schedule, "the reconciler's schedule changed");
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}

/// A job that runs one pass per tick of `schedule` (a pass still running makes the tick a no-op).
fn pass_job(reconciler: &Arc<Reconciler>, schedule: &Schedule) -> Result<Job, JobSchedulerError> {
    let ticking = reconciler.clone();
    let run = move |_, _| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let reconciler = ticking.clone();
        Box::pin(async move { reconciler.tick().await })
    };
    match schedule {
        Schedule::Every(interval) => Job::new_repeated_async(*interval, run),
        Schedule::Cron(cron) => Job::new_async(cron.as_str(), run),
    }
}

fn writer_settings(config: &Config) -> WriterSettings {
    WriterSettings {
        max_batch: config.store.max_batch,
        queue_capacity: config.store.queue_capacity,
        store: store_settings(config),
        max_size_bytes: config.database.max_size_bytes,
        checkpoints: CheckpointSettings::default(),
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

fn announce(config: &Config, listener: &TcpListener, metrics_listener: Option<&TcpListener>) {
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
    // After the line above, and without a `listen=` field: scripts find the address there.
    match metrics_listener.and_then(|l| l.local_addr().ok()) {
        Some(address) => tracing::info!(%address, "serving GET /metrics on metrics_listen"),
        None if config.server.trusted_proxies.is_empty() => {
            tracing::info!("serving GET /metrics to direct loopback clients on the webhook port")
        }
        None => tracing::info!(
            "/metrics is off behind trusted_proxies; set [server] metrics_listen to serve it"
        ),
    }
    if config.server.auth.is_none() {
        tracing::warn!(
            "webhook Basic auth is off; fine on loopback, set [server.auth] before exposing the port"
        );
    }
}

/// The accept loop: one task per connection, at most `max_connections` at once. Accepting never
/// waits for a slot; see [`ConnectionTable`] for who makes room.
async fn serve(
    listener: TcpListener,
    config: &Config,
    on: Listener,
    receiver: Arc<Receiver>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .keep_alive(true);
    let table = Arc::new(ConnectionTable::new(match on {
        Listener::Webhooks => config.server.max_connections,
        Listener::Metrics => METRICS_CONNECTIONS,
    }));
    // Only the webhook listener's connections are reported.
    let open_connections =
        (on == Listener::Webhooks).then(|| receiver.metrics().connections_open.clone());
    tokio::pin!(shutdown);
    loop {
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
        let Admission::Admitted {
            id,
            activity,
            evicted,
        } = table.admit()
        else {
            tracing::debug!(%peer, "every connection has a request in progress; closed the new one");
            count_closed_at_cap(&receiver, on, "refused_busy");
            continue;
        };
        if let Some(gauge) = &open_connections {
            gauge.inc();
        }
        if let Some(closing) = evicted {
            count_closed_at_cap(&receiver, on, "evicted_idle");
            if let Some(gauge) = &open_connections {
                gauge.dec();
            }
            // Its socket closes when its aborted task is dropped; wait for that, so a burst of
            // accepts cannot overshoot the cap.
            let _ = closing.await;
        }
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        let busy_table = table.clone();
        let service = service_fn(move |request| {
            let receiver = receiver.clone();
            let activity = activity.clone();
            let table = busy_table.clone();
            async move {
                let Some(_busy) = activity.busy(&table) else {
                    // Chosen for eviction an instant ago: nothing is read or stored.
                    return Ok::<_, Infallible>(crate::receiver::closing_unavailable());
                };
                Ok(receiver.handle_on(on, request, peer).await)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let ended_table = table.clone();
        let open_gauge = open_connections.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            // An evicted connection was already taken out of the table and the gauge.
            if ended_table.remove(id)
                && let Some(gauge) = open_gauge
            {
                gauge.dec();
            }
        });
        table.register(id, task);
    }
    if table.evicted() + table.refused() > 0 {
        tracing::info!(
            evicted_idle = table.evicted(),
            refused_busy = table.refused(),
            "connections closed at the max_connections cap since start"
        );
    }
    if on == Listener::Webhooks {
        tracing::info!("shutting down: no longer accepting connections");
    }
}

fn count_closed_at_cap(receiver: &Receiver, on: Listener, result: &'static str) {
    if on == Listener::Webhooks {
        receiver
            .metrics()
            .connections_closed_at_cap
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
    }
}

/// Installs the log subscriber: `RUST_LOG` if set, else `[log] level`; text or JSON lines. The
/// returned control lets a reload change the level.
pub fn init_logging(config: &Config) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env();
    let rust_log_set = from_env.is_ok();
    let filter = from_env
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
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
