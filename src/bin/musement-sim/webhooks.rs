//! The webhook pusher: POSTs each change to the partner's URL with Basic auth, like Musement,
//! and retries anything but a 200 on a schedule until it gives up. Faults, drawn from the seed:
//! a webhook may be dropped for good, sent twice, and each copy waits a random delay first, so
//! copies overtake each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::watch;

use crate::config::{Schedule, Settings, Span};
use crate::truth::Counters;
use crate::world::Webhook;
use orderwatch::observation::Status;

/// The pusher's knobs.
#[derive(Debug, Clone)]
struct Knobs {
    drop: f64,
    duplicate: f64,
    delay: Span,
    retries: Schedule,
    push_refund_started: bool,
}

/// Pushes webhooks; cheap to share.
pub struct Pusher {
    /// `None`: no webhook URL configured, nothing is pushed.
    target: Option<Target>,
    knobs: Knobs,
    rng: Mutex<fastrand::Rng>,
    counters: Arc<Counters>,
    /// Copies not yet delivered or given up.
    pending: watch::Sender<usize>,
}

struct Target {
    /// Taken in turn, one attempt each.
    urls: Vec<String>,
    /// The next attempt's index into `urls` (modulo its length).
    next: std::sync::atomic::AtomicUsize,
    authorization: Option<String>,
    http: reqwest::Client,
}

impl Pusher {
    /// A pusher for `settings`, its fault draws seeded from `seed`.
    pub fn new(
        settings: &Settings,
        seed: u64,
        counters: Arc<Counters>,
    ) -> Result<Arc<Self>, String> {
        let args = &settings.args;
        let target = if args.webhook_url.is_empty() {
            None
        } else {
            Some(Target {
                urls: args.webhook_url.clone(),
                next: std::sync::atomic::AtomicUsize::new(0),
                authorization: args.webhook_user.as_ref().map(|user| {
                    let password = args.webhook_password.as_deref().unwrap_or("");
                    let pair = format!("{user}:{password}");
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )
                }),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(args.webhook_timeout)
                    .build()
                    .map_err(|e| format!("cannot build the webhook client: {e}"))?,
            })
        };
        Ok(Arc::new(Self {
            target,
            knobs: Knobs {
                drop: args.drop,
                duplicate: args.duplicate,
                delay: args.webhook_delay,
                retries: args.retry_schedule.clone(),
                push_refund_started: !args.no_refund_started_webhook,
            },
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counters,
            pending: watch::channel(0).0,
        }))
    }

    /// Whether webhooks go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Pushes one change (drawing its faults); returns at once.
    pub fn push(self: &Arc<Self>, webhook: Webhook) {
        if self.target.is_none() {
            return;
        }
        if webhook.status == Status::RefundStarted && !self.knobs.push_refund_started {
            self.counters.lock().webhooks.suppressed += 1;
            return;
        }
        let (dropped, delays) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = rng.f64() < self.knobs.drop;
            let duplicated = rng.f64() < self.knobs.duplicate;
            let copies = if duplicated { 2 } else { 1 };
            let delays: Vec<Duration> = (0..copies)
                .map(|_| self.knobs.delay.sample(&mut rng))
                .collect();
            (dropped, delays)
        };
        {
            let mut stats = self.counters.lock();
            stats.webhooks.generated += 1;
            if dropped {
                stats.webhooks.dropped += 1;
                return;
            }
            stats.webhooks.duplicated += delays.len() as u64 - 1;
            stats.webhooks.sent += delays.len() as u64;
        }
        let webhook = Arc::new(webhook);
        for delay in delays {
            self.pending.send_modify(|n| *n += 1);
            let pusher = self.clone();
            let webhook = webhook.clone();
            tokio::spawn(async move {
                pusher.deliver(&webhook, delay).await;
                pusher.pending.send_modify(|n| *n -= 1);
            });
        }
    }

    /// Waits until every copy pushed so far is delivered or given up.
    pub async fn idle(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Copies not yet delivered or given up.
    pub fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// One copy: wait its delay, then attempt, retrying on the schedule.
    async fn deliver(&self, webhook: &Webhook, delay: Duration) {
        let Some(target) = &self.target else { return };
        tokio::time::sleep(delay).await;
        let mut retries = self.knobs.retries.iter();
        let mut retry = false;
        loop {
            let answer = target.post(&webhook.body).await;
            {
                let mut stats = self.counters.lock();
                stats.webhooks.attempts += 1;
                stats.webhooks.retried += u64::from(retry);
                let label = match &answer {
                    Ok(status) => status.to_string(),
                    Err(kind) => (*kind).to_owned(),
                };
                *stats.webhooks.answers.entry(label).or_default() += 1;
                if matches!(answer, Err("timeout" | "error")) {
                    stats
                        .unanswered
                        .entry(webhook.item)
                        .or_default()
                        .insert(webhook.version);
                }
                if matches!(answer, Ok(200)) {
                    stats.webhooks.delivered += 1;
                    stats
                        .delivered
                        .entry(webhook.item)
                        .or_default()
                        .insert(webhook.version);
                    return;
                }
            }
            match retries.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => {
                    self.counters.lock().webhooks.given_up += 1;
                    return;
                }
            }
            retry = true;
        }
    }
}

impl Target {
    /// One POST; the status, or why there was none (`connect`, `timeout`, `error`).
    async fn post(&self, body: &str) -> Result<u16, &'static str> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = self
            .http
            .post(&self.urls[turn % self.urls.len()])
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let classify = |error: reqwest::Error| {
            if error.is_connect() {
                "connect"
            } else if error.is_timeout() {
                "timeout"
            } else {
                "error"
            }
        };
        let response = request.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        // Read the body so the connection can be reused; Musement ignores it.
        let _ = response.bytes().await;
        Ok(status)
    }
}
