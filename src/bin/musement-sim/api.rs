//! The simulated partner API, a real HTTP/1 server on loopback under `/api/v3`:
//! `POST /login` (client credentials, tokens that expire), `GET /orders/{uuid}` (reference §9
//! shape, `Date` header), `POST /orders/{o}/items/{i}/notifications` (re-sends the item's current
//! webhook), each behind faults drawn from the seed (5xx, 429 with `Retry-After`, a hang).
//! `GET /sim/stats` (outside the API prefix, no auth) shows the counters. The wire format
//! (routes, checks, bodies, errors, the accept loop) is `musement-wire`'s; this file holds the
//! simulator's tokens, faults and counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use musement_wire::{Backend, Endpoint, Grant, error, json_response, with_date};
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::{Settings, Span};
use crate::truth::Counters;
use crate::webhooks::Pusher;
use crate::world::{World, order_json};

/// What the server needs.
pub struct Api {
    /// The orders, as the run plays them.
    pub world: Arc<Mutex<World>>,
    /// Answers per endpoint and status, for the truth and `/sim/stats`.
    pub counters: Arc<Counters>,
    /// Where re-sent webhooks go.
    pub pusher: Arc<Pusher>,
    /// The client id a login must present (`--client-id`).
    client_id: String,
    /// The client secret a login must present.
    client_secret: String,
    /// How long a token stays valid (`--token-ttl`).
    token_ttl: Duration,
    /// Issued tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    /// The fault rates.
    faults: Faults,
    /// Fault and latency draws, and tokens, seeded.
    rng: Mutex<fastrand::Rng>,
}

/// The API's fault rates.
#[derive(Debug, Clone)]
struct Faults {
    /// Share of answers that are a 500, 502 or 503 (`--api-5xx`).
    server_error: f64,
    /// Share of answers that are a 429 (`--api-429`).
    too_many: f64,
    /// Share of requests that hang, then get a 504 (`--api-timeout`).
    hang: f64,
    /// How long a hang lasts (`--api-hang`).
    hang_for: Duration,
    /// The 429's `Retry-After`, in seconds.
    retry_after: u64,
    /// The delay before every answer (`--api-latency`).
    latency: Span,
    /// How far behind the truth `GET /orders` reads (`--api-read-lag`).
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
        musement_wire::serve(listener, move |request| {
            let api = self.clone();
            async move { api.handle(request).await }
        })
        .await;
    }

    /// `/sim/stats`, else the API behind a latency and a fault drawn for the endpoint; counted.
    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match musement_wire::read_body(body).await {
            Ok(body) => body,
            Err(too_large) => return too_large,
        };
        if parts.uri.path() == "/sim/stats" && parts.method == hyper::Method::GET {
            return json_response(200, self.counters.json().to_string(), &[]);
        }
        let route = Endpoint::of(&parts.method, parts.uri.path());
        if let Endpoint::GetOrder { order } = route {
            self.counters.get_order_arrived(order);
        }
        let endpoint = counter_name(route);
        let sleep = {
            let mut rng = self.lock_rng();
            self.faults.latency.sample(&mut rng)
        };
        tokio::time::sleep(sleep).await;
        let fault = if endpoint == "other" {
            None
        } else {
            self.fault()
        };
        let response = match fault {
            None => musement_wire::respond(self, &parts, &body),
            Some(Fault::ServerError(status)) => with_date(
                error(status, &status.to_string(), "Service unavailable"),
                self.now(),
            ),
            Some(Fault::TooMany) => with_date(
                json_response(
                    429,
                    json!({ "code": "429", "message": "Too many requests" }).to_string(),
                    &[("retry-after", &self.faults.retry_after.to_string())],
                ),
                self.now(),
            ),
            Some(Fault::Hang) => {
                tokio::time::sleep(self.faults.hang_for).await;
                self.counters.api(endpoint, "timeout");
                return with_date(error(504, "504", "Gateway timeout"), self.now());
            }
        };
        self.counters
            .api(endpoint, response.status().as_u16().to_string());
        response
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
}

/// The partner API proper, for [`musement_wire::respond`]: the simulator's credentials, tokens
/// that expire, orders as of `now - read_lag`, and webhook re-sends.
impl Backend for Api {
    fn credentials(&self) -> (&str, &str) {
        (&self.client_id, &self.client_secret)
    }

    /// A random `sim-…` token, valid for `--token-ttl`.
    fn issue_token(&self) -> Grant {
        let token = format!("sim-{}", Uuid::from_u128(self.lock_rng().u128(..)).simple());
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + self.token_ttl);
        Grant {
            access_token: token,
            expires_in: self.token_ttl.as_secs(),
        }
    }

    fn token_valid(&self, token: &str) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).is_some_and(|e| *e > Instant::now())
    }

    /// The order as of `now - read_lag`.
    fn order(&self, order: &str) -> Option<String> {
        let order = Uuid::try_parse(order).ok()?;
        let lag = chrono::Duration::from_std(self.faults.read_lag).unwrap_or_default();
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        let found = world.orders.get(&order)?;
        Some(order_json(found, Utc::now() - lag).to_string())
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

/// The counter name of an endpoint.
fn counter_name(endpoint: Endpoint<'_>) -> &'static str {
    match endpoint {
        Endpoint::Login => "login",
        Endpoint::GetOrder { .. } => "get_order",
        Endpoint::Notifications { .. } => "notifications",
        Endpoint::Outside | Endpoint::WrongMethod { .. } | Endpoint::NoRoute => "other",
    }
}
