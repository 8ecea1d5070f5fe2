//! A minimal fake Musement API for the reconcile benchmark, on 127.0.0.1:0 in its own thread and
//! runtime, speaking `musement-wire`'s wire format after a fixed latency: `POST /api/v3/login`
//! ([`CLIENT_ID`] and [`CLIENT_SECRET`], one fixed token) and `GET /api/v3/orders/{uuid}`. The
//! orders it knows are the prepared pending orders ([`pending_order`]); each has one `PENDING`
//! item ([`pending_item`]), so a poll confirms it and the order stays due, and every pass polls
//! the same backlog. Anything else is a 404. It counts logins and order GETs, the API calls a
//! pass costs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use musement_wire::{Backend, Customer, Grant, Item, Order, Product};
use uuid::Uuid;

use crate::util::BenchResult;

/// The client id the fake accepts (the benchmark's config uses it).
pub const CLIENT_ID: &str = "bench-client";
/// The client secret the fake accepts.
pub const CLIENT_SECRET: &str = "bench-secret";
/// The one token every login gets.
const TOKEN: &str = "bench-token";
/// Pending orders and their single item are `b0000000-…-{n}` and `b1000000-…-{n}`.
const ORDER_HEAD: &str = "b0000000-0000-4000-8000-";
const ITEM_HEAD: &str = "b1000000-0000-4000-8000-";

/// Pending order number `n`.
pub fn pending_order(n: u64) -> Uuid {
    Uuid::parse_str(&format!("{ORDER_HEAD}{n:012x}")).expect("a valid uuid")
}

/// The one item of pending order `n`.
pub fn pending_item(n: u64) -> Uuid {
    Uuid::parse_str(&format!("{ITEM_HEAD}{n:012x}")).expect("a valid uuid")
}

/// API calls so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    /// Successful logins.
    pub logins: u64,
    /// Order GETs with a valid token.
    pub gets: u64,
    /// Of those, the ones for an order the fake does not know.
    pub not_found: u64,
}

/// The counters behind [`Calls`]; the fake's [`Backend`].
#[derive(Default)]
struct Counters {
    /// Successful logins.
    logins: AtomicU64,
    /// Order GETs with a valid token.
    gets: AtomicU64,
    /// Order GETs for an unknown order.
    not_found: AtomicU64,
}

/// A running fake (lives until the process exits).
pub struct FakeApi {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// What it has answered.
    counters: Arc<Counters>,
}

impl FakeApi {
    /// Starts the fake with `latency` added to every answer.
    pub fn start(latency: Duration) -> BenchResult<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let serving = counters.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fake-musement".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    musement_wire::serve(listener, move |request| {
                        handle(request, serving.clone(), latency)
                    })
                    .await;
                });
            })?;
        Ok(Self { addr, counters })
    }

    /// `http://127.0.0.1:PORT/api/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, musement_wire::PREFIX)
    }

    /// The calls received so far.
    pub fn calls(&self) -> Calls {
        Calls {
            logins: self.counters.logins.load(Ordering::SeqCst),
            gets: self.counters.gets.load(Ordering::SeqCst),
            not_found: self.counters.not_found.load(Ordering::SeqCst),
        }
    }
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, before: Calls) -> Calls {
        Calls {
            logins: self.logins - before.logins,
            gets: self.gets - before.gets,
            not_found: self.not_found - before.not_found,
        }
    }
}

/// Reads the request, waits `latency`, answers.
async fn handle(
    request: Request<Incoming>,
    counters: Arc<Counters>,
    latency: Duration,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match musement_wire::read_body(body).await {
        Ok(body) => body,
        Err(too_large) => return too_large,
    };
    tokio::time::sleep(latency).await;
    musement_wire::respond(counters.as_ref(), &parts, &body)
}

impl Backend for Counters {
    fn credentials(&self) -> (&str, &str) {
        (CLIENT_ID, CLIENT_SECRET)
    }

    fn issue_token(&self) -> Grant {
        self.logins.fetch_add(1, Ordering::SeqCst);
        Grant {
            access_token: TOKEN.into(),
            expires_in: 3600,
        }
    }

    fn token_valid(&self, token: &str) -> bool {
        token == TOKEN
    }

    fn order(&self, order: &str) -> Option<String> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let body = pending_number(order).map(|n| pending_order_json(n).to_string());
        if body.is_none() {
            self.not_found.fetch_add(1, Ordering::SeqCst);
        }
        body
    }
}

/// `n` if `order` is pending order `n`.
fn pending_number(order: &str) -> Option<u64> {
    let n = order
        .strip_prefix(ORDER_HEAD)
        .filter(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()))?;
    u64::from_str_radix(n, 16).ok()
}

/// Pending order `n`'s body: one `PENDING` item (reference shape, personal data included: the
/// client strips it).
fn pending_order_json(n: u64) -> serde_json::Value {
    Order {
        uuid: pending_order(n),
        number: n,
        date: "2024-01-01T10:00:00Z".parse().expect("a valid time"),
        customer: Customer {
            email: "jane.customer@example.com".into(),
            firstname: "Jane".into(),
            lastname: "Customer".into(),
            phone: "+39 02 5555 0199".into(),
            participant: "Paolo Participant".into(),
        },
        items: vec![Item {
            uuid: pending_item(n),
            code: "C0001".into(),
            transaction_code: format!("tx-{n:012x}"),
            product: Product {
                max_confirmation_time: "P1D".into(),
                date: "2030-02-01 15:30".into(),
                id: "434696106".into(),
                title: "Benchmark activity".into(),
                api_url: "https://sandbox.musement.com/api/v3/activities/0f5821c5-2046-11e7-9cc9-06a7e332783f".into(),
            },
            status: "PENDING".into(),
            vouchers: Vec::new(),
        }],
    }
    .to_json()
}
