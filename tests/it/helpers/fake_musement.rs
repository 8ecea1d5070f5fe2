//! A fake Musement partner API: a real HTTP/1 server on `127.0.0.1:0`, serving `POST /login`
//! and `GET /orders/{uuid}` under `/api/v3` the way the reference (`musement-api.md`) documents
//! them, with knobs to script failures, revoke tokens, fix the `Date` header and add latency,
//! and faults below HTTP (an outage, a reset mid-body, a body that never ends; see the end).
//! What goes on the wire (order bodies, login, errors, routes, the accept loop) is
//! `musement-wire`'s, as for the simulator and the bench fake; this file holds what only tests
//! need.
//!
//! ```ignore
//! let fake = FakeMusement::start().await;
//! let order = new_uuid();
//! fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));
//! fake.push_response(&format!("/orders/{order}"), FakeResponse::status(503));
//! let client = MusementClient::new(fake.settings(), Arc::new(SystemClock), Arc::default()).unwrap();
//! ```
//!
//! Tokens never expire on their own here (tests move a `ManualClock`, not real time); use
//! [`FakeMusement::revoke_tokens`] to make Musement refuse them.

// Shared by the client tests and the reconciler tests: not every helper is used by both.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use musement_wire::{Backend, Customer, Grant, Item, Order, Product};
use orderwatch::config::Secret;
use orderwatch::musement::MusementSettings;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use musement_wire::{httpdate, voucher_url};

/// The client id the fake accepts.
pub const CLIENT_ID: &str = "orderwatch-test-client";
/// The client secret the fake accepts.
pub const CLIENT_SECRET: &str = "fake-secret-7d1e9c";
/// The `X-Musement-Application` value [`FakeMusement::settings`] uses (any non-empty value is
/// accepted).
pub const APPLICATION: &str = "orderwatch-tests";
/// The API prefix the fake serves under, as Musement's base URLs have it.
pub const PREFIX: &str = musement_wire::PREFIX;

// Personal values `order_json` puts in every order; none may ever reach a stored field. They
// are unusual enough that finding one anywhere means it leaked.
/// `customer.email` (also in `participants_info`).
pub const CUSTOMER_EMAIL: &str = "jane.customer@example.com";
/// `customer.firstname` (also in `extra_customer_data`).
pub const CUSTOMER_FIRSTNAME: &str = "Janeprivate";
/// `customer.lastname`.
pub const CUSTOMER_LASTNAME: &str = "Customerprivate";
/// `items[].participants_info[].name`.
pub const PARTICIPANT_NAME: &str = "Paolo Participantprivate";
/// `customer.phone` and `items[].extra_customer_data[].phone`.
pub const CUSTOMER_PHONE: &str = "+39 02 5555 0199";
/// All of the above, for "none of these appear in X" checks.
pub const PERSONAL_VALUES: &[&str] = &[
    CUSTOMER_EMAIL,
    CUSTOMER_FIRSTNAME,
    CUSTOMER_LASTNAME,
    PARTICIPANT_NAME,
    CUSTOMER_PHONE,
];

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The URL path, without the query (`/api/v3/orders/…`).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Every header, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, lossily decoded.
    pub body: String,
    /// When it arrived (after its body was read).
    pub at: std::time::Instant,
    /// When the fake had read it (before any latency, hold or scripted delay): what spacing
    /// checks measure.
    pub received: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// A scripted answer, served once instead of the normal behaviour.
#[derive(Debug, Clone)]
pub struct FakeResponse {
    /// The HTTP status (an out-of-range value is answered as 500).
    pub status: u16,
    /// The body, sent as is.
    pub body: String,
    /// Extra headers; `content-type: application/json` is added when absent and there is a body.
    pub headers: Vec<(String, String)>,
    /// How long to wait before answering (on top of the fake's latency).
    pub delay: Duration,
}

impl FakeResponse {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `status` with `body` serialized as JSON.
    pub fn json(status: u16, body: Value) -> Self {
        Self::status(status).with_body(body.to_string())
    }

    /// `status` with the body of `fixtures/musement/{name}`.
    pub fn fixture(status: u16, name: &str) -> Self {
        Self::status(status).with_body(fixture(name))
    }

    /// The same response with `body`.
    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same response, answered after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The text of `fixtures/musement/{name}` (panics with the path if missing: a test bug).
pub fn fixture(name: &str) -> String {
    super::read_repo_file(&format!("fixtures/musement/{name}"))
}

/// The fixture's JSON.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A random (version 4) UUID; the crate's `uuid` has no `v4` feature, so build it from fastrand.
pub fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// A realistic `GET /orders/{order}` body (reference §9 shape) with one item per
/// `(uuid, status)`: identifier, date, status, a customer with email and name, and items with
/// product (type, max_confirmation_time, date, id, title, api_url, retail_price), quantity,
/// prices, status, vouchers (one URL when `OK`), `participants_info` and `extra_customer_data`
/// carrying the [`PERSONAL_VALUES`].
pub fn order_json(order: Uuid, items: &[(Uuid, &str)]) -> Value {
    Order {
        uuid: order,
        number: (order.as_u128() % 10_000_000) as u64,
        date: "2024-01-01T10:00:00Z".parse().expect("a valid time"),
        customer: Customer {
            email: CUSTOMER_EMAIL.into(),
            firstname: CUSTOMER_FIRSTNAME.into(),
            lastname: CUSTOMER_LASTNAME.into(),
            phone: CUSTOMER_PHONE.into(),
            participant: PARTICIPANT_NAME.into(),
        },
        items: items
            .iter()
            .enumerate()
            .map(|(index, (item, status))| test_item(index, *item, status))
            .collect(),
    }
    .to_json()
}

/// Item `index`: `PT30M` and `P0D` in turn, a product date, id and title from the index.
fn test_item(index: usize, item: Uuid, status: &str) -> Item {
    Item {
        uuid: item,
        code: format!("C{index:04}"),
        transaction_code: format!("tx-{item}"),
        product: Product {
            max_confirmation_time: if index % 2 == 0 { "PT30M" } else { "P0D" }.into(),
            date: format!("2024-02-{:02} 15:30", index % 28 + 1),
            id: (434_696_106 + index).to_string(),
            title: format!("Test activity {index}"),
            api_url: "https://sandbox.musement.com/api/v3/activities/0f5821c5-2046-11e7-9cc9-06a7e332783f".into(),
        },
        status: status.into(),
        vouchers: if status == "OK" {
            vec![voucher_url(item)]
        } else {
            Vec::new()
        },
    }
}

/// A running fake; stops (listener and every connection) when dropped.
pub struct FakeMusement {
    /// Where it listens (always loopback).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

/// Everything the fake knows; one lock, never held across an await.
struct State {
    /// Order bodies by lowercased UUID text.
    orders: HashMap<String, Value>,
    /// Scripted answers in push order; the first whose suffix ends the path is served.
    scripted: Vec<(String, FakeResponse)>,
    token_lifetime: u64,
    tokens_issued: u64,
    valid_tokens: HashSet<String>,
    date: Option<DateTime<Utc>>,
    latency: Duration,
    requests: Vec<RecordedRequest>,
    /// Persistent answers (see [`FakeMusement::set_outage`]), checked before `scripted`.
    outages: Vec<(String, FakeResponse)>,
    /// One-shot connection faults (see [`FakeMusement::push_fault`]).
    faults: Vec<(String, FakeFault)>,
    /// Path suffixes whose requests are recorded and then left unanswered until released
    /// (see [`FakeMusement::hold`]); a watch, so held requests wake when it changes.
    held: watch::Sender<Vec<String>>,
}

impl FakeMusement {
    /// The client id it accepts.
    pub const CLIENT_ID: &str = CLIENT_ID;
    /// The client secret it accepts.
    pub const CLIENT_SECRET: &str = CLIENT_SECRET;

    /// Starts a fake on `127.0.0.1:0` with no orders, token lifetime 3600 s, no latency.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a fake like [`FakeMusement::start`] but on `addr`: an API that comes (back) up
    /// where a client already points, e.g. after a test saw "connection refused" there.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            orders: HashMap::new(),
            scripted: Vec::new(),
            token_lifetime: 3600,
            tokens_issued: 0,
            valid_tokens: HashSet::new(),
            date: None,
            latency: Duration::ZERO,
            requests: Vec::new(),
            outages: Vec::new(),
            faults: Vec::new(),
            held: watch::Sender::new(Vec::new()),
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/api/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}{PREFIX}", self.addr)
    }

    /// Client settings that work against this fake (5 s timeout); adjust fields as needed.
    pub fn settings(&self) -> MusementSettings {
        MusementSettings {
            base_url: self.base_url(),
            application: APPLICATION.into(),
            version: "3.4.0".into(),
            accept_language: "en-US".into(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(CLIENT_SECRET),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Serves `order` at `GET /api/v3/orders/{order["uuid"]}`, replacing any previous body.
    pub fn put_order(&self, order: Value) {
        let key = order["uuid"]
            .as_str()
            .expect("put_order needs a string \"uuid\"")
            .to_ascii_lowercase();
        self.state().orders.insert(key, order);
    }

    /// The stored body of `order`, if any.
    pub fn order(&self, order: Uuid) -> Option<Value> {
        self.state().orders.get(&order.to_string()).cloned()
    }

    /// Removes `order` (later GETs answer 404).
    pub fn remove_order(&self, order: Uuid) {
        self.state().orders.remove(&order.to_string());
    }

    /// Sets `status` on `item` of stored `order`; when it becomes `OK` with no voucher, adds
    /// one, as Musement does. Panics if the order or item is not stored (a test bug).
    pub fn set_item_status(&self, order: Uuid, item: Uuid, status: &str) {
        let mut state = self.state();
        let body = state
            .orders
            .get_mut(&order.to_string())
            .unwrap_or_else(|| panic!("set_item_status: order {order} is not stored"));
        let entry = body["items"]
            .as_array_mut()
            .and_then(|items| {
                items.iter_mut().find(|i| {
                    i["uuid"]
                        .as_str()
                        .is_some_and(|u| u.eq_ignore_ascii_case(&item.to_string()))
                })
            })
            .unwrap_or_else(|| panic!("set_item_status: item {item} is not in order {order}"));
        entry["status"] = json!(status);
        let no_voucher = entry["vouchers"].as_array().is_none_or(|v| v.is_empty());
        if status == "OK" && no_voucher {
            entry["vouchers"] = json!([{ "url": voucher_url(item) }]);
        }
    }

    /// Queues a one-shot `response` for the next request whose path ends with `path_suffix`
    /// (`"/login"`, `"/orders/<uuid>"`, or `""` for any). Queued responses are served first in,
    /// first out and take precedence over the normal behaviour.
    pub fn push_response(&self, path_suffix: &str, response: FakeResponse) {
        self.state()
            .scripted
            .push((path_suffix.to_owned(), response));
    }

    /// The `expires_in` later logins return (default 3600).
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.state().token_lifetime = seconds;
    }

    /// Makes every token issued so far invalid (GET order answers 401).
    pub fn revoke_tokens(&self) {
        self.state().valid_tokens.clear();
    }

    /// The `Date` header of the fake's own answers (scripted ones carry only their own headers);
    /// `None` (default) sends the real current time.
    pub fn set_date(&self, date: Option<DateTime<Utc>>) {
        self.state().date = date;
    }

    /// A delay added before every answer (default zero).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// From now on, requests whose path ends with `path_suffix` (`""` for all) are recorded
    /// and then left unanswered until [`FakeMusement::release`]: an API that got the request
    /// and answers only when the test says so (e.g. to keep a reconciler pass running).
    pub fn hold(&self, path_suffix: &str) {
        self.state()
            .held
            .send_modify(|held| held.push(path_suffix.to_owned()));
    }

    /// Answers the requests [`FakeMusement::hold`] kept for `path_suffix`, and later ones at
    /// once again.
    pub fn release(&self, path_suffix: &str) {
        self.state()
            .held
            .send_modify(|held| held.retain(|s| s != path_suffix));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// How many `method` requests had a path ending with `path_suffix`.
    pub fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.ends_with(path_suffix))
            .count()
    }

    /// How many `GET /orders/{order}` requests came in.
    pub fn gets(&self, order: Uuid) -> usize {
        self.count("GET", &format!("/orders/{order}"))
    }

    /// How many tokens logins have issued (`token-1`, `token-2`, …).
    pub fn tokens_issued(&self) -> u64 {
        self.state().tokens_issued
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for FakeMusement {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Locks the state, ignoring poisoning: a panicking test must not cascade into the server.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves every connection with [`handle_with_faults`], its stream wrapped so that a
/// `ResetMidBody` fault can end it with a RST.
async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    musement_wire::accept_loop(listener, move |stream| {
        let state = state.clone();
        // Set by a `ResetMidBody` fault: the connection then ends with a RST, not a FIN.
        let reset = Arc::new(AtomicBool::new(false));
        let io = ResetOnDrop {
            stream,
            reset: reset.clone(),
        };
        let service = service_fn(move |request| {
            let state = state.clone();
            let reset = reset.clone();
            async move { Ok::<_, Infallible>(handle_with_faults(state, request, reset).await) }
        });
        (io, service)
    })
    .await;
}

/// Records the request, waits the configured latency, then answers: a scripted response if one
/// is queued for this path, else the fake API's normal behaviour.
async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match musement_wire::read_body(body).await {
        Ok(body) => body,
        Err(too_large) => return too_large,
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_ascii_lowercase(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: std::time::Instant::now(),
        received: Instant::now(),
    };
    let (scripted, latency, mut held) = {
        let mut state = lock(&state);
        state.requests.push(recorded.clone());
        let outage = state
            .outages
            .iter()
            .find(|(suffix, _)| recorded.path.ends_with(suffix.as_str()))
            .map(|(_, response)| response.clone());
        let scripted = outage.or_else(|| {
            state
                .scripted
                .iter()
                .position(|(suffix, _)| recorded.path.ends_with(suffix.as_str()))
                .map(|index| state.scripted.remove(index).1)
        });
        (scripted, state.latency, state.held.subscribe())
    };
    // Errors only if the fake is gone, and then nobody waits for this answer.
    let _ = held
        .wait_for(|held| !held.iter().any(|s| recorded.path.ends_with(s.as_str())))
        .await;
    tokio::time::sleep(latency).await;
    match scripted {
        Some(response) => {
            tokio::time::sleep(response.delay).await;
            scripted_response(response)
        }
        None => musement_wire::respond(&Api(&state), &parts, &body),
    }
}

/// The fake API proper: [`musement_wire::respond`] with this fake's credentials, tokens, orders
/// and `Date`.
struct Api<'a>(&'a Mutex<State>);

impl Backend for Api<'_> {
    fn credentials(&self) -> (&str, &str) {
        (CLIENT_ID, CLIENT_SECRET)
    }

    /// `token-N`, valid until [`FakeMusement::revoke_tokens`].
    fn issue_token(&self) -> Grant {
        let mut state = lock(self.0);
        state.tokens_issued += 1;
        let token = format!("token-{}", state.tokens_issued);
        state.valid_tokens.insert(token.clone());
        Grant {
            access_token: token,
            expires_in: state.token_lifetime,
        }
    }

    fn token_valid(&self, token: &str) -> bool {
        lock(self.0).valid_tokens.contains(token)
    }

    fn order(&self, order: &str) -> Option<String> {
        let state = lock(self.0);
        let body = state.orders.get(&order.to_ascii_lowercase())?;
        Some(body.to_string())
    }

    fn now(&self) -> DateTime<Utc> {
        lock(self.0).date.unwrap_or_else(Utc::now)
    }
}

fn scripted_response(response: FakeResponse) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = Response::builder().status(status);
    let has_type = response
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !has_type && !response.body.is_empty() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| plain(500, "the scripted response has an invalid header"))
}

fn plain(status: u16, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

// ---------------------------------------------------------------------------------------------
// Faults below HTTP: outages, resets mid-body, bodies that never end.

/// A connection-level fault, served once instead of the normal end of an answer: the status
/// line, headers (with the full `Content-Length`) and the first half of the body the fake would
/// have sent go out, then…
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFault {
    /// …after a short pause the connection is reset (RST), as a crashing proxy does.
    ResetMidBody,
    /// …nothing more, ever: the body never ends (until the fake is dropped).
    NeverEnds,
}

impl FakeMusement {
    /// Until cleared with `None`, answers every request whose path ends with `path_suffix`
    /// (`""` for all) with `response`, before any scripted one: an API that is down. Requests
    /// are still recorded.
    pub fn set_outage(&self, path_suffix: &str, response: Option<FakeResponse>) {
        let mut state = self.state();
        state.outages.retain(|(suffix, _)| suffix != path_suffix);
        if let Some(response) = response {
            state.outages.push((path_suffix.to_owned(), response));
        }
    }

    /// Queues a one-shot `fault` for the next request whose path ends with `path_suffix`; the
    /// request is otherwise handled as usual (recorded, scripted or normal answer).
    pub fn push_fault(&self, path_suffix: &str, fault: FakeFault) {
        self.state().faults.push((path_suffix.to_owned(), fault));
    }
}

type FakeBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// [`handle`], with a queued [`FakeFault`] applied to its answer.
async fn handle_with_faults(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
    reset: Arc<AtomicBool>,
) -> Response<FakeBody> {
    let path = request.uri().path().to_owned();
    let fault = {
        let mut state = lock(&state);
        state
            .faults
            .iter()
            .position(|(suffix, _)| path.ends_with(suffix.as_str()))
            .map(|index| state.faults.remove(index).1)
    };
    let response = handle(state, request).await;
    let Some(fault) = fault else {
        return response.map(|body| body.map_err(|never| match never {}).boxed_unsync());
    };
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let half = body.slice(..body.len() / 2);
    let body = FaultBody {
        first: Some(half),
        declared: body.len() as u64,
        fault,
        reset,
        pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// A body that sends its first part, then fails as its [`FakeFault`] says.
struct FaultBody {
    first: Option<Bytes>,
    declared: u64,
    fault: FakeFault,
    reset: Arc<AtomicBool>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for FaultBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match this.fault {
            // Never woken: the connection task waits until the fake is dropped.
            FakeFault::NeverEnds => Poll::Pending,
            FakeFault::ResetMidBody => {
                if this.pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.reset.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted reset mid-body",
                ))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

/// The fake's side of a connection: when `reset` is set, closing it sends a RST (SO_LINGER 0)
/// instead of a FIN.
struct ResetOnDrop {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
