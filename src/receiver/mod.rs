//! The HTTP side: routes, access control, limits, and the mapping of every failure to one
//! precise status. A webhook gets 200 only after the writer confirmed its commit.

pub mod auth;
pub mod connections;
pub mod readiness;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{
    ACCEPT, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use self::auth::{BasicCredentials, Matched, allowed, client_ip};
use self::readiness::Readiness;
use crate::clock::Clock;
use crate::config::{IpRange, ServerConfig};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, StateSource};
use crate::observation::{Observation, PayloadError, escape_status};
use crate::store::Outcome;
use crate::store::RejectedWebhook;
use crate::store::writer::{WriteError, Writer};

/// What the receiver needs from `[server]`.
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    /// Webhook path.
    pub path: String,
    /// Body size limit.
    pub max_body_bytes: usize,
    /// Bound on reading the body and on waiting for the commit.
    pub request_timeout: Duration,
    /// Who may post webhooks and read `/metrics` (replaceable by a reload).
    pub access: Access,
}

/// Who may post webhooks and read `/metrics`; replaced as a whole when the configuration is
/// reloaded (SIGHUP), so every rule of one request comes from one configuration.
#[derive(Debug, Clone)]
pub struct Access {
    /// Allowed client addresses (empty: all).
    pub allow_ips: Vec<IpRange>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpRange>,
    /// Required Basic credentials, if any.
    pub auth: Option<BasicCredentials>,
    /// Who may read `/metrics` on the webhook listener.
    pub metrics: MetricsAccess,
    /// A webhook authenticated with the previous password was logged (once per configuration,
    /// so the operator knows the rotation is not over yet without a line per webhook).
    pub previous_password_noted: Arc<AtomicBool>,
}

impl From<&ServerConfig> for Access {
    fn from(server: &ServerConfig) -> Self {
        Self {
            allow_ips: server.allow_ips.clone(),
            trusted_proxies: server.trusted_proxies.clone(),
            auth: server.auth.as_ref().map(|auth| BasicCredentials {
                username: auth.username.clone(),
                password: auth.resolved_password.clone(),
                previous_password: auth.resolved_previous_password.clone(),
            }),
            // Behind a proxy, "loopback" may be the proxy relaying anyone: only metrics_listen.
            metrics: if server.metrics_listen.is_some() || !server.trusted_proxies.is_empty() {
                MetricsAccess::Off
            } else {
                MetricsAccess::Local
            },
            previous_password_noted: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Who may read `GET /metrics` on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Not served here (404): `metrics_listen` serves it, or a proxy is in front.
    Off,
    /// Only a client on this machine talking to us directly: a loopback peer and no
    /// forwarding header (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`), so nothing relayed
    /// by a local reverse proxy gets it. Others get 403.
    Local,
    /// Anyone who reaches the listener (the separate `metrics_listen` one).
    Anyone,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The webhook listener (`[server] listen`): webhooks, health checks, maybe `/metrics`.
    Webhooks,
    /// `[server] metrics_listen`: `/metrics` only.
    Metrics,
}

impl From<&ServerConfig> for ReceiverSettings {
    fn from(server: &ServerConfig) -> Self {
        Self {
            path: server.path.clone(),
            max_body_bytes: server.max_body_bytes,
            request_timeout: server.request_timeout,
            access: Access::from(server),
        }
    }
}

/// The limits that stay fixed while the daemon runs.
#[derive(Debug, Clone)]
struct Limits {
    path: String,
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// Every `(status code, outcome)` a request to the webhook path can be answered with (an
/// observation from a webhook is never `confirmed`: only a poll confirms). Their counters are
/// shown at 0 from the start.
const WEBHOOK_ANSWERS: &[(u16, &str)] = &[
    (200, "applied"),
    (200, "duplicate"),
    (200, "stale"),
    (200, "conflict"),
    (200, "doubtful"),
    (400, "invalid"),
    (400, "body_unreadable"),
    (401, "unauthorized"),
    (403, "forbidden"),
    (405, "method_not_allowed"),
    (408, "body_timeout"),
    (413, "too_large"),
    (415, "unsupported_media_type"),
    (503, "queue_full"),
    (503, "store_unavailable"),
    (503, "commit_timeout"),
];

/// How long a scrape waits for the readiness check before showing `orderwatch_ready` 0 (a
/// scraper gives up after 10 s by default).
const SCRAPE_READINESS_DEADLINE: Duration = Duration::from_secs(2);

/// The request handler shared by every connection.
pub struct Receiver {
    /// Path, body size and time limits.
    settings: Limits,
    /// The access rules in force (from the settings at start, then from reloads).
    access: RwLock<Arc<Access>>,
    writer: Writer,
    clock: Arc<dyn Clock>,
    /// Set once shutdown begins: `/readyz` then answers 503 so load balancers stop sending.
    draining: AtomicBool,
    /// The last `/readyz` answer, reused for a second.
    readiness: Readiness,
    /// Counted into, and rendered by `/metrics`.
    metrics: Arc<Metrics>,
    /// Where `/metrics` reads the stored-state gauges from.
    state: StateSource,
}

/// Every way a request can end, each with exactly one status code.
#[derive(Debug)]
enum Reply {
    Stored(Outcome),
    Healthy,
    /// The writer can never store again (its database file was replaced): restart me.
    Unhealthy(String),
    Ready,
    NotFound,
    MethodNotAllowed(&'static str),
    Forbidden,
    Unauthorized,
    UnsupportedMediaType,
    TooLarge,
    BodyTimeout,
    BodyUnreadable(String),
    Invalid(PayloadError),
    Unavailable(WriteError),
    /// The writer did not confirm the commit within `request_timeout`: not known to be
    /// stored. The job stays queued and may still commit; Musement's retry is then a
    /// `duplicate`.
    CommitTimedOut,
    /// The request arrived on a connection chosen an instant ago to make room at the
    /// connection cap: nothing was read or stored.
    Evicted,
    NotReady(String),
    Metrics {
        text: String,
        content_type: &'static str,
    },
    MetricsRefused,
}

impl Reply {
    fn status(&self) -> StatusCode {
        match self {
            Self::Stored(_) | Self::Healthy | Self::Ready | Self::Metrics { .. } => StatusCode::OK,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden | Self::MetricsRefused => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_)
            | Self::CommitTimedOut
            | Self::Evicted
            | Self::NotReady(_)
            | Self::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short word for the request log.
    fn label(&self) -> &'static str {
        match self {
            Self::Stored(outcome) => outcome.as_str(),
            Self::Healthy | Self::Ready => "ok",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge => "too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BodyUnreadable(_) => "body_unreadable",
            Self::Invalid(_) => "invalid",
            Self::Unavailable(WriteError::QueueFull) => "queue_full",
            Self::Unavailable(_) => "store_unavailable",
            Self::CommitTimedOut => "commit_timeout",
            Self::Evicted => "connection_evicted",
            Self::NotReady(_) => "not_ready",
            Self::Unhealthy(_) => "unhealthy",
            Self::Metrics { .. } => "metrics",
            Self::MetricsRefused => "metrics_refused",
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Self::Stored(outcome) => json!({ "outcome": outcome.as_str() }),
            Self::Healthy | Self::Ready => json!({ "status": "ok" }),
            Self::Invalid(error) => {
                json!({ "error": "invalid payload", "field": error.field, "reason": error.reason })
            }
            Self::BodyUnreadable(reason) => {
                json!({ "error": "could not read body", "reason": reason })
            }
            Self::Unavailable(error) => {
                json!({ "error": "not stored, retry later", "reason": error.to_string() })
            }
            // Not "not stored": the commit may still finish (the retry is then a duplicate).
            Self::CommitTimedOut => json!({
                "error": "not confirmed stored, retry later",
                "reason": "the commit did not finish within request_timeout",
            }),
            Self::Evicted => json!({
                "error": "not stored, retry later",
                "reason": "the connection is being closed at max_connections",
            }),
            Self::NotReady(reason) => json!({ "error": "not ready", "reason": reason }),
            Self::Unhealthy(reason) => json!({ "error": "unhealthy", "reason": reason }),
            Self::MetricsRefused => json!({
                "error": "Forbidden",
                "reason": "/metrics is served here only to direct loopback clients; see [server] metrics_listen",
            }),
            other => json!({ "error": other.status().canonical_reason().unwrap_or("error") }),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        if let Self::Metrics { text, content_type } = self {
            return Response::builder()
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        }
        let mut response = Response::builder()
            .status(self.status())
            .header(CONTENT_TYPE, "application/json");
        match &self {
            Self::MethodNotAllowed(allow) => response = response.header(ALLOW, *allow),
            Self::Unauthorized => {
                response = response.header(WWW_AUTHENTICATE, "Basic realm=\"orderwatch\"")
            }
            Self::Unavailable(_)
            | Self::CommitTimedOut
            | Self::NotReady(_)
            | Self::Unhealthy(_) => response = response.header(RETRY_AFTER, "1"),
            Self::Evicted => {
                response = response
                    .header(RETRY_AFTER, "1")
                    .header(CONNECTION, "close")
            }
            // The body was (partly) left unread: close rather than parse its rest as a request.
            Self::TooLarge | Self::BodyTimeout | Self::BodyUnreadable(_) => {
                response = response.header(CONNECTION, "close")
            }
            _ => {}
        }
        let body = Bytes::from(self.body().to_string());
        response
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

impl Receiver {
    /// A handler that stores through `writer`, counts into `metrics` and reads the gauges of
    /// `/metrics` from `state`.
    pub fn new(
        settings: ReceiverSettings,
        writer: Writer,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        state: StateSource,
    ) -> Self {
        metrics.expect_webhook_answers(WEBHOOK_ANSWERS);
        Self {
            access: RwLock::new(Arc::new(settings.access)),
            settings: Limits {
                path: settings.path,
                max_body_bytes: settings.max_body_bytes,
                request_timeout: settings.request_timeout,
            },
            writer,
            clock,
            draining: AtomicBool::new(false),
            readiness: Readiness::default(),
            metrics,
            state,
        }
    }

    /// Replaces the allowlist, trusted proxies, credentials and `/metrics` rule; requests
    /// already past their checks finish under the old rules.
    pub fn set_access(&self, access: Access) {
        let access = Arc::new(access);
        *self
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = access;
    }

    fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The app's metrics (the accept loop counts connections into them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Marks the start of shutdown.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Handles one request from `peer` that came in on `listener`, counts it if it was for the
    /// webhook path, and logs one line about it.
    pub async fn handle_on<B>(
        &self,
        listener: Listener,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let reply = match listener {
            Listener::Webhooks => self.route(request, peer).await,
            Listener::Metrics => self.route_metrics_listener(request).await,
        };
        let status = reply.status().as_u16();
        let elapsed = started.elapsed();
        if listener == Listener::Webhooks && path == self.settings.path {
            self.metrics.webhook_request(status, reply.label(), elapsed);
        }
        let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        // Probes and scrapes come every few seconds from every balancer and Prometheus: not
        // worth a line each (a change of readiness is logged where it is found). A refused
        // scrape still gets its line.
        let probe =
            listener == Listener::Webhooks && matches!(path.as_str(), "/healthz" | "/readyz");
        let scrape = matches!(reply, Reply::Metrics { .. });
        if probe || scrape {
            tracing::debug!(%method, %path, status, outcome = reply.label(), latency_ms, %peer, "request");
        } else if status >= 500 {
            tracing::warn!(%method, %path, status, outcome = reply.label(), latency_ms, %peer, "request");
        } else {
            tracing::info!(%method, %path, status, outcome = reply.label(), latency_ms, %peer, "request");
        }
        reply.into_response()
    }

    async fn route<B>(&self, request: Request<B>, peer: SocketAddr) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path();
        let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
        match path {
            "/healthz" if read_only => match self.writer.health().defunct() {
                Some(reason) => Reply::Unhealthy(reason),
                None => Reply::Healthy,
            },
            "/readyz" if read_only => self.readiness().await,
            "/metrics" if read_only => match self.access().metrics {
                MetricsAccess::Off => Reply::NotFound,
                MetricsAccess::Local if !is_direct_local(peer, request.headers()) => {
                    Reply::MetricsRefused
                }
                MetricsAccess::Local | MetricsAccess::Anyone => {
                    self.scrape(request.headers()).await
                }
            },
            "/healthz" | "/readyz" => Reply::MethodNotAllowed("GET, HEAD"),
            "/metrics" if self.access().metrics != MetricsAccess::Off => {
                Reply::MethodNotAllowed("GET, HEAD")
            }
            _ if path == self.settings.path => {
                if request.method() == Method::POST {
                    self.webhook(request, peer).await
                } else {
                    Reply::MethodNotAllowed("POST")
                }
            }
            _ => Reply::NotFound,
        }
    }

    /// The `metrics_listen` listener serves `/metrics` and nothing else.
    async fn route_metrics_listener<B>(&self, request: Request<B>) -> Reply {
        match (request.uri().path(), request.method()) {
            ("/metrics", &Method::GET | &Method::HEAD) => self.scrape(request.headers()).await,
            ("/metrics", _) => Reply::MethodNotAllowed("GET, HEAD"),
            _ => Reply::NotFound,
        }
    }

    /// Renders the metrics, as OpenMetrics if the scraper asks for it, after the readiness
    /// check has set `orderwatch_ready` (so it is current even where nothing probes `/readyz`).
    async fn scrape(&self, headers: &hyper::HeaderMap) -> Reply {
        if tokio::time::timeout(SCRAPE_READINESS_DEADLINE, self.readiness())
            .await
            .is_err()
        {
            self.metrics.ready.set(0);
        }
        let openmetrics = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let text = self.metrics.render(&self.state, openmetrics).await;
        let content_type = if openmetrics {
            OPENMETRICS_CONTENT_TYPE
        } else {
            PROMETHEUS_CONTENT_TYPE
        };
        Reply::Metrics { text, content_type }
    }

    /// The readiness check, shown in `orderwatch_ready` too.
    async fn readiness(&self) -> Reply {
        let reply = if self.draining.load(Ordering::SeqCst) {
            Reply::NotReady("shutting down".into())
        } else {
            match self
                .readiness
                .check(&self.writer, self.settings.request_timeout)
                .await
            {
                Ok(()) => Reply::Ready,
                Err(reason) => Reply::NotReady(reason),
            }
        };
        self.metrics
            .ready
            .set(i64::from(matches!(reply, Reply::Ready)));
        reply
    }

    async fn webhook<B>(&self, request: Request<B>, peer: SocketAddr) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let headers = request.headers();
        let access = self.access();
        let client = client_ip(peer.ip(), headers, &access.trusted_proxies);
        if !allowed(client, &access.allow_ips) {
            return Reply::Forbidden;
        }
        if let Some(credentials) = &access.auth {
            match credentials.check(headers) {
                Matched::Password => {}
                Matched::PreviousPassword => {
                    if !access.previous_password_noted.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "a webhook authenticated with [server.auth] previous_password: \
                             Musement still uses the old password (said once per configuration)"
                        );
                    }
                }
                Matched::Neither => return Reply::Unauthorized,
            }
        }
        if !content_type_is_json(headers) {
            return Reply::UnsupportedMediaType;
        }
        let declared_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|n| n > self.settings.max_body_bytes as u64) {
            return Reply::TooLarge;
        }
        let body = match self.read_body(request.into_body()).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let received_at = self.clock.now();
        let observation = match Observation::from_webhook(&body, received_at) {
            Ok(observation) => observation,
            Err(error) => return self.reject(error, body, peer, received_at).await,
        };
        warn_about_oddities(&observation);
        match tokio::time::timeout(
            self.settings.request_timeout,
            self.writer.apply(observation),
        )
        .await
        {
            Ok(Ok(outcome)) => {
                self.metrics.webhook_stored(received_at);
                Reply::Stored(outcome)
            }
            Ok(Err(error)) => Reply::Unavailable(error),
            Err(_) => Reply::CommitTimedOut,
        }
    }

    /// Reads at most `max_body_bytes` within `request_timeout`.
    async fn read_body<B>(&self, body: B) -> Result<Bytes, Reply>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limited = Limited::new(body, self.settings.max_body_bytes);
        match tokio::time::timeout(self.settings.request_timeout, limited.collect()).await {
            Err(_) => Err(Reply::BodyTimeout),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(Reply::TooLarge)
            }
            Ok(Err(error)) => Err(Reply::BodyUnreadable(error.to_string())),
        }
    }

    /// Keeps an authenticated but invalid webhook for operators, then answers 400. If even that
    /// cannot be stored the answer stays 400: a retry of the same body would fail the same way.
    async fn reject(
        &self,
        error: PayloadError,
        body: Bytes,
        peer: SocketAddr,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Reply {
        tracing::warn!(field = error.field, reason = %error.reason, %peer, "rejected webhook");
        let rejected = RejectedWebhook {
            received_at,
            peer: peer.to_string(),
            field: error.field.to_owned(),
            error: error.reason.clone(),
            body: body.to_vec(),
        };
        let stored = tokio::time::timeout(
            self.settings.request_timeout,
            self.writer.record_rejected(rejected),
        )
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!("could not keep the rejected webhook in rejected_webhooks");
        }
        Reply::Invalid(error)
    }
}

/// Whether the request comes straight from this machine: a loopback peer that relays nobody
/// (no forwarding header, which a local reverse proxy would add).
fn is_direct_local(peer: SocketAddr, headers: &hyper::HeaderMap) -> bool {
    let relayed = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|name| headers.contains_key(*name));
    peer.ip().to_canonical().is_loopback() && !relayed
}

/// The answer to a request that arrived on a connection being closed at the connection cap:
/// 503 (Musement retries), and the connection closes.
fn evicted() -> Response<Full<Bytes>> {
    Reply::Evicted.into_response()
}

/// Absent is fine (Musement sends JSON); present must be `application/json` or `…+json`.
fn content_type_is_json(headers: &hyper::HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Accepted but unusual input is stored and logged, never silently normalised.
fn warn_about_oddities(observation: &Observation) {
    if observation.status.is_unknown() {
        // Escaped, so a look-alike of a documented status (Cyrillic `ОК`, `OK` + U+200B)
        // cannot pass for it in the log.
        tracing::warn!(item = %observation.item, status = %escape_status(observation.status.as_str()), "undocumented item status; stored as sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_loopback_clients_count_as_local() {
        let none = hyper::HeaderMap::new();
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(is_direct_local(peer.parse().unwrap(), &none), "{peer}");
        }
        for peer in ["10.0.0.5:5000", "203.0.113.9:443", "[2001:db8::1]:5000"] {
            assert!(!is_direct_local(peer.parse().unwrap(), &none), "{peer}");
        }
        let mut relayed = hyper::HeaderMap::new();
        relayed.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert!(!is_direct_local(
            "127.0.0.1:5000".parse().unwrap(),
            &relayed
        ));
    }

    /// Whether a request to the webhook path can end with `reply` (and so is counted). No
    /// wildcard: a new kind of reply must be placed here, and then in [`WEBHOOK_ANSWERS`].
    fn on_the_webhook_path(reply: &Reply) -> bool {
        match reply {
            Reply::Stored(_)
            | Reply::MethodNotAllowed(_)
            | Reply::Forbidden
            | Reply::Unauthorized
            | Reply::UnsupportedMediaType
            | Reply::TooLarge
            | Reply::BodyTimeout
            | Reply::BodyUnreadable(_)
            | Reply::Invalid(_)
            | Reply::Unavailable(_)
            | Reply::CommitTimedOut => true,
            // Evicted is answered by the accept loop before routing, uncounted.
            Reply::Evicted
            | Reply::Healthy
            | Reply::Unhealthy(_)
            | Reply::Ready
            | Reply::NotFound
            | Reply::NotReady(_)
            | Reply::Metrics { .. }
            | Reply::MetricsRefused => false,
        }
    }

    #[test]
    fn every_answer_on_the_webhook_path_is_counted_from_the_start() {
        use crate::store::Outcome;
        let stored = [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Stale,
            Outcome::Conflict,
            Outcome::Doubtful,
        ]
        .map(Reply::Stored);
        let others = [
            Reply::MethodNotAllowed("POST"),
            Reply::Forbidden,
            Reply::Unauthorized,
            Reply::UnsupportedMediaType,
            Reply::TooLarge,
            Reply::BodyTimeout,
            Reply::BodyUnreadable("reset".into()),
            Reply::Invalid(PayloadError {
                field: "body",
                reason: "not JSON".into(),
            }),
            Reply::Unavailable(WriteError::QueueFull),
            Reply::Unavailable(WriteError::Closed),
            Reply::Unavailable(WriteError::Storage("disk full".into())),
            Reply::Unavailable(WriteError::Replaced("moved".into())),
            Reply::CommitTimedOut,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for reply in stored.iter().chain(&others) {
            assert!(on_the_webhook_path(reply), "{reply:?}");
            let answer = (reply.status().as_u16(), reply.label());
            assert!(
                WEBHOOK_ANSWERS.contains(&answer),
                "{answer:?} is not listed"
            );
            seen.insert(answer);
        }
        assert_eq!(
            seen.len(),
            WEBHOOK_ANSWERS.len(),
            "every listed answer can happen"
        );
    }

    #[test]
    fn metrics_are_off_on_the_webhook_listener_behind_a_proxy_or_with_metrics_listen() {
        let mut server = ServerConfig::default();
        assert_eq!(Access::from(&server).metrics, MetricsAccess::Local);
        server.metrics_listen = Some("127.0.0.1:9090".parse().unwrap());
        assert_eq!(Access::from(&server).metrics, MetricsAccess::Off);
        server.metrics_listen = None;
        server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(Access::from(&server).metrics, MetricsAccess::Off);
    }
}
