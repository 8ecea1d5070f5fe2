//! A partner's receiver of signed webhooks out, as a real HTTP server on `127.0.0.1:0` in the
//! test process: it verifies every delivery with the `standardwebhooks` crate (the
//! specification's own library, never our signing code), answers as the test sets it (a
//! fixed status, or faults: a share of failures and of slow answers), optionally behind a
//! proxy that resets a share of connections, and records what it saw.
//!
//! It also checks the delivery guarantees as requests arrive: per item, a change arrives only
//! after every earlier change of the item was acknowledged with a 2xx, and never after a later
//! one was ([`Hooks::order_violations`]); and no message is being received twice at the same
//! moment ([`Hooks::overlaps`]; a request whose sender went away mid-answer counts as over
//! then).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// A Standard Webhooks secret, `n` bytes of `byte`.
pub fn secret(byte: u8, n: usize) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(vec![byte; n])
    )
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Every request with this status.
    Status(u16),
    /// `fail` of the requests 500 or 503, `slow` of them after `delay` (then 200), the rest
    /// 200; drawn from a seeded generator.
    Faulty {
        fail: f64,
        slow: f64,
        delay: Duration,
    },
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// Whether the signature verified with the receiver's secret.
    pub verified: bool,
    /// The parsed body.
    pub body: serde_json::Value,
    /// What was answered (the handler finished; a client that gave up may not have seen it).
    pub status: u16,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    /// Per item, the statuses acknowledged (2xx), in the order first acknowledged.
    acknowledged: HashMap<String, Vec<String>>,
    /// Messages being handled now, and how many times each was seen at once with itself.
    in_flight: HashMap<String, usize>,
    overlaps: Vec<String>,
    order_violations: Vec<String>,
}

/// The receiver's shared state.
#[derive(Clone)]
pub struct Hooks {
    /// Where deliveries are posted (the proxy's address when it has one).
    pub url: String,
    secret: Arc<String>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Each item's statuses in the order they must arrive (set by the test).
    sequences: Arc<Mutex<HashMap<String, Vec<String>>>>,
    rng: Arc<Mutex<fastrand::Rng>>,
    log: Arc<Mutex<Log>>,
}

impl Hooks {
    /// A receiver knowing `secret`, behaving as `behaviour`; with `reset` > 0, behind a proxy
    /// that resets that share of connections at once (each answer closes its connection, so
    /// every attempt opens one).
    pub async fn start(secret: &str, behaviour: Behaviour, reset: f64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = if reset > 0.0 {
            reset_proxy(addr, reset).await
        } else {
            addr
        };
        let hooks = Self {
            url: format!("http://{front}/hooks"),
            secret: Arc::new(secret.to_owned()),
            behaviour: Arc::new(Mutex::new(behaviour)),
            sequences: Arc::default(),
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(18))),
            log: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(hooks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hooks
    }

    /// Answers as `behaviour` from now on.
    pub fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Declares that `item`'s changes are `statuses`, in this order.
    pub fn expect_sequence(&self, item: &str, statuses: &[&str]) {
        self.sequences.lock().unwrap().insert(
            item.to_owned(),
            statuses.iter().map(|s| (*s).to_owned()).collect(),
        );
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().received.clone()
    }

    /// Per item, the statuses acknowledged, in the order first acknowledged.
    pub fn acknowledged(&self) -> BTreeMap<String, Vec<String>> {
        self.log
            .lock()
            .unwrap()
            .acknowledged
            .iter()
            .map(|(item, statuses)| (item.clone(), statuses.clone()))
            .collect()
    }

    /// How many 2xx answers each message got.
    pub fn acknowledgements(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for received in self.log.lock().unwrap().received.iter() {
            if (200..300).contains(&received.status) {
                *counts.entry(received.id.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Changes that arrived before an earlier change of their item was acknowledged.
    pub fn order_violations(&self) -> Vec<String> {
        self.log.lock().unwrap().order_violations.clone()
    }

    /// Messages received while the same message was still being handled.
    pub fn overlaps(&self) -> Vec<String> {
        self.log.lock().unwrap().overlaps.clone()
    }

    /// Waits up to `limit` until `done` holds for the acknowledged statuses; whether it did.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.acknowledged()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The answer to the next request.
    fn next_answer(&self) -> (u16, Option<Duration>) {
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Status(status) => (status, None),
            Behaviour::Faulty { fail, slow, delay } => {
                let draw = self.rng.lock().unwrap().f64();
                if draw < fail {
                    (if draw < fail / 2.0 { 500 } else { 503 }, None)
                } else if draw < fail + slow {
                    (200, Some(delay))
                } else {
                    (200, None)
                }
            }
        }
    }

    /// Checks the request against the item's sequence and notes it in flight.
    fn arrive(&self, id: &str, item: &str, status: &str) {
        let sequences = self.sequences.lock().unwrap();
        let mut log = self.log.lock().unwrap();
        let seen = log.in_flight.entry(id.to_owned()).or_default();
        *seen += 1;
        if *seen > 1 {
            log.overlaps.push(id.to_owned());
        }
        if let Some(sequence) = sequences.get(item) {
            let position = sequence.iter().position(|s| s == status);
            let acknowledged = log.acknowledged.get(item).cloned().unwrap_or_default();
            let out_of_order = match position {
                Some(position) => {
                    sequence[..position]
                        .iter()
                        .any(|earlier| !acknowledged.contains(earlier))
                        || sequence[position + 1..]
                            .iter()
                            .any(|later| acknowledged.contains(later))
                }
                None => true,
            };
            if out_of_order {
                log.order_violations.push(format!(
                    "{item} {status} arrived with only {acknowledged:?} acknowledged"
                ));
            }
        }
    }

    /// The request `id` is no longer being handled.
    fn leave(&self, id: &str) {
        if let Some(count) = self.log.lock().unwrap().in_flight.get_mut(id) {
            *count -= 1;
        }
    }

    fn answered(&self, received: Received, item: &str, status: &str) {
        let mut log = self.log.lock().unwrap();
        if (200..300).contains(&received.status) {
            let statuses = log.acknowledged.entry(item.to_owned()).or_default();
            if !statuses.iter().any(|s| s == status) {
                statuses.push(status.to_owned());
            }
        }
        log.received.push(received);
    }
}

async fn receive(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> Response {
    let verified = standardwebhooks::Webhook::new(&hooks.secret)
        .unwrap()
        .verify(&body, &headers)
        .is_ok();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let item = json["data"]["item"].as_str().unwrap_or_default().to_owned();
    let status = json["data"]["new_status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    hooks.arrive(&id, &item, &status);
    // Leaves when the handler ends or is dropped (its sender went away mid-answer).
    let _in_flight = InFlight {
        hooks: hooks.clone(),
        id: id.clone(),
    };
    let (code, delay) = hooks.next_answer();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    hooks.answered(
        Received {
            id,
            verified,
            body: json,
            status: code,
        },
        &item,
        &status,
    );
    (
        StatusCode::from_u16(code).unwrap(),
        [("connection", "close")],
    )
        .into_response()
}

/// A request being handled, until dropped.
struct InFlight {
    hooks: Hooks,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.hooks.leave(&self.id);
    }
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream` that resets `share` of the
/// connections it accepts (RST at once, nothing forwarded) and relays the others.
async fn reset_proxy(upstream: SocketAddr, share: f64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(7);
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            if rng.f64() < share {
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = client.set_zero_linger();
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}
