//! A minimal fake Musement API for the reconcile benchmark, on 127.0.0.1:0 in its own thread and
//! runtime: `POST /api/v3/login` (any credentials, one fixed token) and
//! `GET /api/v3/orders/{uuid}` after a fixed latency. The orders it knows are the prepared
//! pending orders ([`pending_order`]); each has one `PENDING` item ([`pending_item`]), so a poll
//! confirms it and the order stays due, and every pass polls the same backlog. Anything else is
//! a 404. It counts logins and order GETs, the API calls a pass costs.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, DATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use uuid::Uuid;

use crate::util::BenchResult;

const PREFIX: &str = "/api/v3";
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
    pub logins: u64,
    pub gets: u64,
    pub not_found: u64,
}

#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    gets: AtomicU64,
    not_found: AtomicU64,
}

/// A running fake (lives until the process exits).
pub struct FakeApi {
    pub addr: SocketAddr,
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
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let counters = serving.clone();
                        let service = service_fn(move |request| {
                            let counters = counters.clone();
                            async move {
                                Ok::<_, Infallible>(handle(request, &counters, latency).await)
                            }
                        });
                        tokio::spawn(async move {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })?;
        Ok(Self { addr, counters })
    }

    /// `http://127.0.0.1:PORT/api/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}{PREFIX}", self.addr)
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

async fn handle(
    request: Request<Incoming>,
    counters: &Counters,
    latency: Duration,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let path = parts.uri.path().strip_prefix(PREFIX).unwrap_or("");
    let authorized = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    tokio::time::sleep(latency).await;
    if parts.method == Method::POST && path == "/login" {
        counters.logins.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"bearer","scope":null}}"#
        );
        return json(StatusCode::OK, body);
    }
    let Some(order) = path.strip_prefix("/orders/") else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"code":"0","message":"No route found"}"#.into(),
        );
    };
    if !authorized {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"code":"401","message":"Invalid token"}"#.into(),
        );
    }
    counters.gets.fetch_add(1, Ordering::SeqCst);
    match order.strip_prefix(ORDER_HEAD) {
        Some(n) if n.len() == 12 => json(StatusCode::OK, order_body(order, n)),
        _ => {
            counters.not_found.fetch_add(1, Ordering::SeqCst);
            json(
                StatusCode::NOT_FOUND,
                r#"{"code":"1102","message":"Order not found"}"#.into(),
            )
        }
    }
}

/// A realistic order body (reference shape, personal data included: the client strips it).
fn order_body(order: &str, n: &str) -> String {
    format!(
        concat!(
            r#"{{"identifier":"MUS{n}","uuid":"{order}","date":"2024-01-01T10:00:00+0000","status":"PENDING","#,
            r#""market":"us","source":"frontend","customer":{{"email":"jane.customer@example.com","#,
            r#""firstname":"Jane","lastname":"Customer"}},"items":[{{"uuid":"{item_head}{n}","code":"C0001","#,
            r#""transaction_code":"tx-{n}","product":{{"type":"musement","max_confirmation_time":"P1D","#,
            r#""date":"2030-02-01 15:30","id":"434696106","title":"Benchmark activity","#,
            r#""retail_price":{{"currency":"USD","value":21,"formatted_value":"$ 21.00"}}}},"#,
            r#""quantity":1,"total_retail_price_in_order_currency":{{"currency":"USD","value":21,"#,
            r#""formatted_value":"$ 21.00"}},"status":"PENDING","vouchers":[],"#,
            r#""participants_info":[{{"name":"Paolo Participant"}}]}}],"#,
            r#""total_price":{{"currency":"USD","value":21,"formatted_value":"$ 21.00"}}}}"#
        ),
        n = n,
        order = order,
        item_head = ITEM_HEAD,
    )
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "application/json".parse().expect("valid"));
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(value) = date.parse() {
        headers.insert(DATE, value);
    }
    response
}
