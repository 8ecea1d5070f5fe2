//! The daemon as one value: [`App::build`] wires the store, the reconciler and the receiver
//! from a [`Config`], a [`Clock`] and bound [`Listeners`]; [`App::run_until`] serves until
//! shutdown and then stops the parts in order. `orderwatch run` and the tests build it the
//! same way (the tests on `127.0.0.1:0`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::build_info;
use crate::clock::Clock;
use crate::config::Config;
use crate::forward::{self, Forwarder};
use crate::leadership::{Leadership, LeaseKeeper};
use crate::metrics::{Metrics, StateSource};
use crate::receiver::server::{self, ConnectionLimits};
use crate::receiver::{Listener, Receiver, ReceiverSettings};
use crate::reconciler::schedule::ScheduledPasses;
use crate::reconciler::{self, DAEMON_ROLE, Reconciler};
use crate::reload::{self, Reload};
use crate::store::writer::{Writer, WriterThread};
use crate::store::{self, StoreError};
use crate::systemd;
use crate::telemetry;

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
    #[error("cannot start forwarding: {0}")]
    Forward(String),
}

/// The daemon's listeners, bound before it is built (so a test can pass port 0 and ask).
pub struct Listeners {
    /// Webhooks, health checks and (on loopback) `/metrics`: `[server] listen`.
    pub webhooks: TcpListener,
    /// `GET /metrics` only: `[server] metrics_listen`, if set.
    pub metrics: Option<TcpListener>,
    /// The partner API: `[api] listen`, if set.
    pub api: Option<TcpListener>,
}

impl Listeners {
    /// Binds `[server] listen`, `metrics_listen` and `[api] listen` as configured.
    pub fn bind(config: &Config) -> Result<Self, StartupError> {
        Self::on(
            config.server.listen,
            config.server.metrics_listen,
            config.api.listen,
        )
    }

    /// Binds `webhooks` and, if given, `metrics` and `api` (port 0: any free port).
    pub fn on(
        webhooks: SocketAddr,
        metrics: Option<SocketAddr>,
        api: Option<SocketAddr>,
    ) -> Result<Self, StartupError> {
        let bind =
            |addr| server::listen_on(addr).map_err(|source| StartupError::Bind { addr, source });
        Ok(Self {
            webhooks: bind(webhooks)?,
            metrics: metrics.map(bind).transpose()?,
            api: api.map(bind).transpose()?,
        })
    }
}

/// A built daemon, not yet serving.
pub struct App {
    config: Config,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    writer: Writer,
    writer_thread: WriterThread,
    /// `None` when `[reconciler]` is off or has no credentials (said at build).
    reconciler: Option<Arc<Reconciler>>,
    receiver: Arc<Receiver>,
    /// The partner API, when `[api] listen` is set.
    api: Option<Arc<Api>>,
    /// Takes and renews the cluster lease (PostgreSQL); stopped last, giving it back.
    lease_keeper: LeaseKeeper,
    leadership: Leadership,
    /// What the `[[forward]]` destinations' feeders and senders share.
    forward: forward::Context,
}

impl App {
    /// Opens (creating and migrating) the database, starts the writer, and builds the
    /// reconciler and the request handler.
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        listeners: Listeners,
    ) -> Result<Self, StartupError> {
        // One set of metrics per app, never global: tests run several apps in one process.
        let metrics = Arc::new(Metrics::new());
        let store::Opened {
            writer,
            writer_thread,
            reads,
        } = store::open(&config, clock.clone(), metrics.clone()).await?;
        let built = reconciler::build(
            &config,
            writer.clone(),
            reads.clone(),
            clock.clone(),
            metrics.clone(),
            DAEMON_ROLE,
        );
        let reconciler = match built {
            Ok(reconciler) => Some(Arc::new(reconciler)),
            Err(off) => {
                tracing::warn!(reason = %off, "the reconciler is off; only webhooks will update the state");
                None
            }
        };
        let forward = forward::Context {
            writer: writer.clone(),
            reads: reads.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            holder: config.server.instance_id(),
        };
        let cluster = reads.cluster(&config.server.instance_id());
        let (lease_keeper, leadership) = LeaseKeeper::start(cluster, metrics.clone()).await;
        let api = listeners.api.is_some().then(|| {
            Api::new(
                &config,
                reads.clone(),
                writer.clone(),
                clock.clone(),
                metrics.clone(),
            )
        });
        let receiver = Arc::new(Receiver::new(
            ReceiverSettings::from(&config.server),
            writer.clone(),
            clock.clone(),
            metrics,
            StateSource::new(reads, clock.clone(), leadership.clone()),
        ));
        Ok(Self {
            config,
            clock,
            listeners,
            writer,
            writer_thread,
            reconciler,
            receiver,
            api,
            lease_keeper,
            leadership,
            forward,
        })
    }

    /// Where webhooks are served.
    pub fn addr(&self) -> SocketAddr {
        local_addr(&self.listeners.webhooks)
    }

    /// Where `metrics_listen` serves `/metrics`, if it is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners.metrics.as_ref().map(local_addr)
    }

    /// Where `[api] listen` serves the partner API, if it is set.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.listeners.api.as_ref().map(local_addr)
    }

    /// Serves, runs the reconciler on its schedule and applies `reload`'s configurations until
    /// `shutdown` resolves; then stops accepting, lets in-flight requests and a running pass
    /// finish (up to `shutdown_grace`), flushes the writer and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        reload: Reload,
    ) -> Result<(), StartupError> {
        let Self {
            config,
            clock,
            listeners,
            writer,
            writer_thread,
            reconciler,
            receiver,
            api,
            lease_keeper,
            leadership,
            forward,
        } = self;
        let forwarder = Forwarder::start(&config, forward)
            .await
            .map_err(StartupError::Forward)?;
        let passes = match &reconciler {
            Some(reconciler) => Some(Arc::new(Mutex::new(
                ScheduledPasses::start(reconciler.clone(), config.reconciler.schedule())
                    .await
                    .map_err(StartupError::Scheduler)?,
            ))),
            None => None,
        };
        let watchdog = systemd::Watchdog::start(&writer);
        let pruning = config.store.events_keep.map(|keep| {
            tokio::spawn(store::pruning::prune_periodically(
                writer.clone(),
                clock.clone(),
                keep,
                leadership,
            ))
        });
        announce(&config, &listeners);
        let reloads = tokio::spawn(reload::follow(
            reload.configs,
            config.clone(),
            reload::Targets {
                receiver: receiver.clone(),
                passes: passes.clone(),
                log: reload.log,
                api: api.clone(),
            },
        ));
        systemd::ready(listeners.webhooks.local_addr().ok(), reconciler.is_some());

        let graceful = GracefulShutdown::new();
        serve(&config, listeners, &receiver, api, &graceful, shutdown).await;

        systemd::stopping();
        drop(watchdog);
        receiver.start_draining();
        reloads.abort();
        stop_reconciler(&config, passes, reconciler, graceful).await;
        forwarder.stop().await;
        stop_pruning(pruning);
        lease_keeper.stop().await;
        writer_thread.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves every listener until `shutdown` resolves.
async fn serve(
    config: &Config,
    listeners: Listeners,
    receiver: &Arc<Receiver>,
    api: Option<Arc<Api>>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ConnectionLimits::from(&config.server);
    let shutdown = shutdown.shared();
    let serve_metrics = async {
        if let Some(listener) = listeners.metrics {
            let on = Listener::Metrics;
            server::serve(
                listener,
                &limits,
                on,
                receiver.clone(),
                graceful,
                shutdown.clone(),
            )
            .await;
        }
    };
    let on = Listener::Webhooks;
    let serve_webhooks = server::serve(
        listeners.webhooks,
        &limits,
        on,
        receiver.clone(),
        graceful,
        shutdown.clone(),
    );
    let serve_api = async {
        if let (Some(listener), Some(api)) = (listeners.api, api) {
            let timeout = limits.header_read_timeout;
            crate::api::serve(listener, api, timeout, graceful, shutdown.clone()).await;
        }
    };
    tokio::join!(serve_webhooks, serve_metrics, serve_api);
}

/// Stops the schedule, then lets a running pass and the open connections finish together,
/// within `shutdown_grace` (connections are told to close while the pass winds down).
async fn stop_reconciler(
    config: &Config,
    passes: Option<Arc<Mutex<ScheduledPasses>>>,
    reconciler: Option<Arc<Reconciler>>,
    graceful: GracefulShutdown,
) {
    if let Some(passes) = &passes {
        passes.lock().await.shutdown().await;
    }
    let grace = config.server.shutdown_grace;
    let reconciler_stopped = async {
        if let Some(reconciler) = &reconciler {
            reconciler.stop().await;
        }
    };
    let drained = async { tokio::join!(reconciler_stopped, graceful.shutdown()) };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            grace = %telemetry::duration(grace),
            "requests or a reconciler pass still running after the grace period; stopping anyway"
        );
    }
}

/// A prune batch already sent still commits; the rest waits for the next start.
fn stop_pruning(pruning: Option<JoinHandle<()>>) {
    if let Some(pruning) = pruning {
        pruning.abort();
    }
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The start-up line: what runs (version, commit), where it listens and on which database
/// (the file, or the URL with its password masked). Scripts and tests read the address from its
/// `listen=` field, the only one so named.
fn announce(config: &Config, listeners: &Listeners) {
    let webhooks = local_addr(&listeners.webhooks);
    let metrics = match &listeners.metrics {
        Some(listener) => local_addr(listener).to_string(),
        None if config.server.trusted_proxies.is_empty() => webhooks.to_string(),
        None => "off".to_owned(),
    };
    let api = listeners.api.as_ref().map_or("off".to_owned(), |listener| {
        local_addr(listener).to_string()
    });
    tracing::info!(
        version = build_info::VERSION,
        commit = build_info::COMMIT,
        instance = %config.server.instance_id(),
        listen = %webhooks,
        path = %config.server.path,
        %metrics,
        %api,
        database = %config.database.describe(),
        "orderwatch is receiving webhooks"
    );
    match &listeners.metrics {
        Some(_) => {}
        None if config.server.trusted_proxies.is_empty() => {
            tracing::info!(
                "GET /metrics is served on the webhook port to direct loopback clients only"
            )
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
