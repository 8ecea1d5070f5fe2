//! The HTTP API for the partner's booking system (`[api]`): register orders, read their
//! reconciled state, follow the change feed. A listener of its own, routed by axum; every request authorized by
//! bearer token ([`auth`]), counted in `/metrics` by route and status, and logged with the
//! token's name. Errors are `application/problem+json` ([`problem`]).

pub mod auth;
pub mod problem;
mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use self::auth::Tokens;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconciler::ReconcilerState;
use crate::store::reads::Reads;
use crate::store::writer::Writer;

/// What the handlers share.
pub struct Api {
    reads: Reads,
    writer: Writer,
    clock: Arc<dyn Clock>,
    /// Replaced by a reload (SIGHUP), so tokens rotate without a restart.
    tokens: std::sync::RwLock<Tokens>,
    metrics: Arc<Metrics>,
    /// For `stats`' reconciler state; replaced by a reload, as the schedule may change.
    config: std::sync::RwLock<Config>,
    /// Set once the daemon stops: long-polls answer at once instead of holding the shutdown.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Api {
    /// The API over `reads` and `writer`, its tokens from `config`.
    pub fn new(
        config: &Config,
        reads: Reads,
        writer: Writer,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            reads,
            writer,
            clock,
            tokens: std::sync::RwLock::new(Tokens::new(config.api.tokens.clone())),
            metrics,
            config: std::sync::RwLock::new(config.clone()),
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Takes a reloaded configuration: requests from now on are checked against its tokens
    /// (their secrets loaded), and `stats` shows its reconciler schedule.
    pub fn reconfigure(&self, config: &Config) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) =
            Tokens::new(config.api.tokens.clone());
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
    }

    /// The reconciler's state under the configuration in force (what `stats` shows).
    fn reconciler_state(&self) -> ReconcilerState {
        ReconcilerState::of(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The routes of [`table`], each behind [`guard`].
    pub fn router(self: &Arc<Self>) -> Router {
        table()
            .into_iter()
            .fold(Router::new(), |router, (_, path, handler)| {
                router.route(path, handler)
            })
            .fallback(routes::no_route)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }
}

/// The API's OpenAPI document (`docs/openapi.json`), served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// A route of [`table`]: its method once, for both the router and [`routes`].
macro_rules! route {
    ($method:ident, $path:literal, $handler:expr) => {
        (Method::$method, $path, on(MethodFilter::$method, $handler))
    };
}

/// Every route: the router is built from this list, and [`routes`] lists it for the test
/// that compares it with the OpenAPI document.
fn table() -> Vec<(Method, &'static str, MethodRouter<Arc<Api>>)> {
    vec![
        route!(PUT, "/v1/orders/{order_uuid}/watch", routes::watch),
        route!(DELETE, "/v1/orders/{order_uuid}/watch", routes::unwatch),
        route!(GET, "/v1/orders/{order_uuid}", routes::order),
        route!(GET, "/v1/items/{item_uuid}", routes::item),
        route!(GET, "/v1/items", routes::items),
        route!(GET, "/v1/changes", routes::changes),
        route!(GET, "/v1/stats", routes::stats),
        route!(GET, "/v1/openapi.json", routes::openapi),
    ]
}

/// The routes that exist: method and path (`{name}` for a path parameter, as OpenAPI writes it).
pub fn routes() -> Vec<(Method, &'static str)> {
    table()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// Most connections the API listener serves at once; more are closed as they come (a booking
/// system needs a few, each long-poll one).
const MAX_CONNECTIONS: usize = 256;

/// Serves the API on `listener` until `shutdown` resolves: HTTP/1 with the webhook listener's
/// `header_read_timeout`, at most [`MAX_CONNECTIONS`] at once, each connection watched by
/// `graceful` so the daemon's `shutdown_grace` bounds how long they may finish.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    header_read_timeout: Duration,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let service = TowerToHyperService::new(api.router());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = crate::receiver::server::accept(&listener) => accepted,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{MAX_CONNECTIONS} API connections are open; closed a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    // Long-polls answer now, so the connections can close within the grace.
    api.stopping.send_replace(true);
}

/// Authorizes the request (401/403 before any handler runs), then counts and logs it.
async fn guard(
    State(api): State<Arc<Api>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = matched.map_or("unmatched".to_owned(), |m| m.as_str().to_owned());
    let authorized = api
        .tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .authorize(&method, request.headers());
    let (response, caller) = match authorized {
        Ok(caller) => (next.run(request).await, caller.0),
        Err(problem) => (problem.into_response(), None),
    };
    let status = response.status().as_u16();
    api.metrics.api_request(&route, status);
    tracing::info!(
        %method,
        route,
        status,
        token = caller.as_deref().unwrap_or("-"),
        latency_ms = started.elapsed().as_millis() as u64,
        "api request"
    );
    response
}
