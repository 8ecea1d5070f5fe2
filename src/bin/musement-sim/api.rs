//! The simulated partner API, a real HTTP/1 server on loopback under `/api/v3`:
//! `POST /login` (client credentials, tokens that expire), `GET /orders/{uuid}` (reference §9
//! shape, `Date` header), `POST /orders/{o}/items/{i}/notifications` (re-sends the item's current
//! webhook), each behind faults drawn from the seed (5xx, 429 with `Retry-After`, a hang).
//! `GET /sim/stats` (outside the API prefix, no auth) shows the counters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::{Settings, Span};
use crate::truth::Counters;
use crate::webhooks::Pusher;
use crate::world::{World, order_json};

/// The API prefix, as Musement's base URLs have it.
pub const PREFIX: &str = "/api/v3";

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// What the server needs.
pub struct Api {
    pub world: Arc<Mutex<World>>,
    pub counters: Arc<Counters>,
    pub pusher: Arc<Pusher>,
    client_id: String,
    client_secret: String,
    token_ttl: Duration,
    /// Issued tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    faults: Faults,
    rng: Mutex<fastrand::Rng>,
}

/// The API's fault rates.
#[derive(Debug, Clone)]
struct Faults {
    server_error: f64,
    too_many: f64,
    hang: f64,
    hang_for: Duration,
    retry_after: u64,
    latency: Span,
    read_lag: Duration,
}

/// A fault drawn for one request.
enum Fault {
    ServerError(u16),
    TooMany,
    Hang,
}

impl Api {
    /// The API for `settings`, its fault draws seeded from `seed`.
    pub fn new(
        settings: &Settings,
        seed: u64,
        world: Arc<Mutex<World>>,
        counters: Arc<Counters>,
        pusher: Arc<Pusher>,
    ) -> Arc<Self> {
        let args = &settings.args;
        Arc::new(Self {
            world,
            counters,
            pusher,
            client_id: args.client_id.clone(),
            client_secret: args.client_secret.clone(),
            token_ttl: args.token_ttl,
            tokens: Mutex::new(HashMap::new()),
            faults: Faults {
                server_error: args.api_5xx,
                too_many: args.api_429,
                hang: args.api_timeout,
                hang_for: args.api_hang,
                retry_after: args.retry_after,
                latency: args.api_latency,
                read_lag: args.api_read_lag,
            },
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        })
    }

    /// Serves `listener` until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let api = self.clone();
            let service = service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(request).await) }
            });
            connections.spawn(async move {
                // Errors are clients hanging up: nothing to report.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error(413, "413", "Request body too large or unreadable"),
        };
        let path = parts.uri.path().to_owned();
        if path == "/sim/stats" && parts.method == Method::GET {
            return json_response(200, self.counters.json().to_string(), &[]);
        }
        let endpoint = endpoint(&parts.method, &path);
        let sleep = {
            let mut rng = self.lock_rng();
            self.faults.latency.sample(&mut rng)
        };
        tokio::time::sleep(sleep).await;
        let response = match (endpoint, self.fault()) {
            ("other", _) => self.route(&parts, &path, &body),
            (_, Some(Fault::ServerError(status))) => {
                error(status, &status.to_string(), "Service unavailable")
            }
            (_, Some(Fault::TooMany)) => json_response(
                429,
                json!({ "code": "429", "message": "Too many requests" }).to_string(),
                &[("retry-after", &self.faults.retry_after.to_string())],
            ),
            (_, Some(Fault::Hang)) => {
                tokio::time::sleep(self.faults.hang_for).await;
                self.counters.api(endpoint, "timeout");
                return with_date(error(504, "504", "Gateway timeout"));
            }
            (_, None) => self.route(&parts, &path, &body),
        };
        self.counters
            .api(endpoint, response.status().as_u16().to_string());
        with_date(response)
    }

    fn lock_rng(&self) -> std::sync::MutexGuard<'_, fastrand::Rng> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fault(&self) -> Option<Fault> {
        let mut rng = self.lock_rng();
        let draw = rng.f64();
        let f = &self.faults;
        if draw < f.server_error {
            Some(Fault::ServerError([500, 502, 503][rng.usize(..3)]))
        } else if draw < f.server_error + f.too_many {
            Some(Fault::TooMany)
        } else if draw < f.server_error + f.too_many + f.hang {
            Some(Fault::Hang)
        } else {
            None
        }
    }

    fn route(
        &self,
        parts: &hyper::http::request::Parts,
        path: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let Some(path) = path.strip_prefix(PREFIX) else {
            return error(404, "0", "No route found");
        };
        let application = parts
            .headers
            .get("x-musement-application")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty());
        if !application {
            return error(
                400,
                "2271",
                "The header 'x-musement-application' is mandatory and must be a valid application name",
            );
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&parts.method, segments.as_slice()) {
            (&Method::POST, ["login"]) => self.login(body),
            (&Method::GET, ["orders", order]) => self.authorized(parts, || self.get_order(order)),
            (&Method::POST, ["orders", order, "items", item, "notifications"]) => {
                self.authorized(parts, || self.notify(order, item))
            }
            (_, ["login"]) => method_not_allowed("POST"),
            (_, ["orders", _]) => method_not_allowed("GET"),
            (_, ["orders", _, "items", _, "notifications"]) => method_not_allowed("POST"),
            _ => error(404, "0", "No route found"),
        }
    }

    /// `POST /login`: the three mandatory fields, the credentials, a new token.
    fn login(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |name: &str| body.get(name).and_then(Value::as_str);
        let (Some(id), Some(secret), Some(grant)) = (
            field("client_id"),
            field("client_secret"),
            field("grant_type"),
        ) else {
            return error(
                400,
                "1400",
                "client_id, client_secret and grant_type are mandatory",
            );
        };
        if grant != "client_credentials" {
            return error(400, "1400", "Unsupported grant_type");
        }
        let id_ok = id.as_bytes().ct_eq(self.client_id.as_bytes());
        let secret_ok = secret.as_bytes().ct_eq(self.client_secret.as_bytes());
        if !bool::from(id_ok & secret_ok) {
            return error(401, "1401", "Invalid client credentials");
        }
        let token = format!("sim-{}", Uuid::from_u128(self.lock_rng().u128(..)).simple());
        let now = Instant::now();
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, expires| *expires > now);
            tokens.insert(token.clone(), now + self.token_ttl);
        }
        let grant = json!({
            "access_token": token,
            "expires_in": self.token_ttl.as_secs(),
            "token_type": "bearer",
            "scope": null,
        });
        json_response(200, grant.to_string(), &[])
    }

    /// Runs `then` if the bearer token is one we issued and it has not expired; else 401.
    fn authorized(
        &self,
        parts: &hyper::http::request::Parts,
        then: impl FnOnce() -> Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let valid = token.is_some_and(|token| {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.get(token).is_some_and(|e| *e > Instant::now())
        });
        if valid {
            then()
        } else {
            error(401, "401", "Invalid or expired access token")
        }
    }

    /// `GET /orders/{uuid}`: the order as of `now - read_lag`.
    fn get_order(&self, order: &str) -> Response<Full<Bytes>> {
        let Ok(order) = Uuid::try_parse(order) else {
            return error(404, "1102", "Order not found");
        };
        let lag = chrono::Duration::from_std(self.faults.read_lag).unwrap_or_default();
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        match world.orders.get(&order) {
            Some(found) => json_response(200, order_json(found, Utc::now() - lag).to_string(), &[]),
            None => error(404, "1102", "Order not found"),
        }
    }

    /// `POST /orders/{o}/items/{i}/notifications`: re-sends the item's current webhook.
    fn notify(&self, order: &str, item: &str) -> Response<Full<Bytes>> {
        let (Ok(order), Ok(item)) = (Uuid::try_parse(order), Uuid::try_parse(item)) else {
            return error(404, "1102", "Order or item not found");
        };
        if !self.pusher.enabled() {
            return error(400, "1400", "No webhook is configured for this order item");
        }
        let webhook = {
            let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
            world.current_webhook(order, item)
        };
        match webhook {
            Some(webhook) => {
                self.counters.lock().webhooks.resend_requests += 1;
                self.pusher.push(webhook);
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            None => error(404, "1102", "Order or item not found"),
        }
    }
}

/// The counter name of a request.
fn endpoint(method: &Method, path: &str) -> &'static str {
    let Some(path) = path.strip_prefix(PREFIX) else {
        return "other";
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["login"]) => "login",
        (&Method::GET, ["orders", _]) => "get_order",
        (&Method::POST, ["orders", _, "items", _, "notifications"]) => "notifications",
        _ => "other",
    }
}

/// Adds Musement's clock as the `Date` header.
fn with_date(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = date.parse() {
        response.headers_mut().insert("date", value);
    }
    response
}

/// A Musement-style `{code, message}` error.
fn error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({ "code": code, "message": message }).to_string(),
        &[],
    )
}

fn method_not_allowed(allow: &str) -> Response<Full<Bytes>> {
    json_response(
        405,
        json!({ "code": "405", "message": "Method not allowed" }).to_string(),
        &[("allow", allow)],
    )
}

fn json_response(status: u16, body: String, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    response
}
