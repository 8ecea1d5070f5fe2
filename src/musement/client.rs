//! [`MusementClient`]: logs in with client credentials, caches the bearer token until shortly
//! before it expires, and fetches orders, classifying every failure into an [`ApiError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::base_url;
use super::error::{ApiError, snippet};
use super::headers::{parse_http_date, parse_retry_after};
use super::model::{self, PolledOrder};
use crate::clock::{Clock, later};
use crate::config::Secret;
use crate::metrics::Metrics;

/// The largest response body read; Musement orders are a few kilobytes, so anything near this
/// is not an order and must not exhaust memory.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The longest safety margin before a token's stated expiry at which it is renewed.
const MAX_RENEW_MARGIN_SECS: u64 = 60;

/// The longest token lifetime believed, so an absurd `expires_in` cannot overflow time math
/// (and a bad token still gets replaced: a 401 triggers a re-login anyway).
const MAX_EXPIRES_IN_SECS: u64 = 30 * 24 * 3600;

/// How to reach Musement and who we are.
#[derive(Debug, Clone)]
pub struct MusementSettings {
    /// API root, e.g. `https://sandbox.musement.com/api/v3`; a trailing slash is ignored.
    pub base_url: String,
    /// `X-Musement-Application`: Musement refuses every request without it (400, code 2271).
    pub application: String,
    /// `X-Musement-Version`, e.g. `3.4.0`: pins the API version so responses keep their shape.
    pub version: String,
    /// `Accept-Language`, e.g. `en-US`: the language of titles in responses.
    pub accept_language: String,
    /// OAuth client id for `POST /login`.
    pub client_id: String,
    /// OAuth client secret for `POST /login`; masked wherever it could be printed.
    pub client_secret: Secret,
    /// The limit on one request, from connecting to the last byte of the body.
    pub request_timeout: Duration,
}

/// A Musement API client. Cheap to clone: clones share the connection pool and the token.
#[derive(Clone)]
pub struct MusementClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// One pooled HTTP client with the identity headers and the timeout set on it.
    http: reqwest::Client,
    /// `settings.base_url` without trailing slashes.
    base_url: String,
    client_id: String,
    client_secret: Secret,
    clock: Arc<dyn Clock>,
    /// The cached token. A tokio mutex held across the login request, so concurrent callers
    /// that find no valid token wait for one login instead of each doing their own.
    token: Mutex<TokenState>,
    /// Where calls, latencies and logins are counted.
    metrics: Arc<Metrics>,
    /// Until when no request may leave (on `clock`): Musement answered 429, or 503 with
    /// `Retry-After`. The pause lives in the client rather than the reconciler because the
    /// client is the one door every request goes through: GETs and logins alike, for every
    /// caller (the daemon's passes, `orderwatch reconcile`), so nothing can slip past it.
    paused_until: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// The token cache, and the last failed login so that a down or hanging token endpoint costs
/// one attempt per cool-down, not one per order waiting in line for the lock.
#[derive(Default)]
struct TokenState {
    token: Option<CachedToken>,
    failed: Option<(DateTime<Utc>, ApiError)>,
}

/// The longest pause honoured, whatever `Retry-After` says: an hour (the default
/// `[reconciler] backoff_cap`), so an absurd or hostile value cannot silence polling for days.
/// The order that got the answer still backs off by its full `Retry-After` (up to 24 h).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The pause after a 429 that does not say how long to wait (the default `backoff_base`).
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(30);

/// How long a failed login is answered from memory.
const LOGIN_COOLDOWN: chrono::Duration = chrono::Duration::seconds(30);

/// A bearer token and when to stop using it.
#[derive(Clone)]
struct CachedToken {
    value: String,
    /// Renew at or after this time (our clock): the stated expiry minus a safety margin.
    renew_at: DateTime<Utc>,
}

/// What came back from one HTTP exchange, body fully read.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl std::fmt::Debug for MusementClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MusementClient")
            .field("base_url", &self.inner.base_url)
            .field("client_id", &self.inner.client_id)
            .field("logins", &self.logins())
            .finish_non_exhaustive()
    }
}

impl MusementClient {
    /// Builds the client, counting its calls in `metrics`. Fails with [`ApiError::Config`] on a
    /// base URL that is not http(s), an empty or non-header-safe identity header, or a zero
    /// timeout.
    pub fn new(
        settings: MusementSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        let (base_url, loopback) = checked_base_url(&settings.base_url)?;
        if settings.request_timeout.is_zero() {
            return Err(ApiError::Config(
                "request_timeout must be above zero".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(identity_headers(&settings)?)
            .user_agent(concat!("orderwatch/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.request_timeout)
            // Follow nothing: reqwest's default policy re-POSTs the login body (client secret
            // included) on a 307/308 to any host, and follows https → http. A 3xx comes back
            // as `ApiError::Redirected` naming the `Location` instead.
            .redirect(reqwest::redirect::Policy::none());
        if loopback {
            // A proxy from HTTP(S)_PROXY cannot reach our own loopback (a local mock or the
            // tests' fake), and reqwest does not exempt it on its own.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Config(error_chain(&e.without_url())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                client_id: settings.client_id,
                client_secret: settings.client_secret,
                clock,
                token: Mutex::new(TokenState::default()),
                metrics,
                paused_until: std::sync::Mutex::new(None),
            }),
        })
    }

    /// `GET {base_url}/orders/{order}`, logging in first if there is no valid token. A 401 means
    /// the token died early: log in again once and retry once; a second 401 is
    /// [`ApiError::Unauthorized`].
    pub async fn get_order(&self, order: Uuid) -> Result<PolledOrder, ApiError> {
        let token = self.valid_token().await.map_err(|e| self.scrub(e, &[]))?;
        let first = self.fetch_order(order, &token).await;
        let Err(ApiError::Unauthorized { .. }) = first else {
            return first.map_err(|e| self.scrub(e, &[&token]));
        };
        tracing::debug!(%order, "Musement refused the token; logging in again");
        let fresh = self
            .token_replacing(&token)
            .await
            .map_err(|e| self.scrub(e, &[&token]))?;
        let second = match self.fetch_order(order, &fresh).await {
            Err(ApiError::Unauthorized { message }) => Err(ApiError::Unauthorized {
                message: format!("{message} (right after a fresh login)"),
            }),
            other => other,
        };
        second.map_err(|e| self.scrub(e, &[&token, &fresh]))
    }

    /// Forgets a remembered login failure, so the next call tries again at once. The reconciler
    /// calls it when a pass starts: one login attempt per pass, not one per order.
    pub async fn forget_login_failure(&self) {
        self.inner.token.lock().await.failed = None;
    }

    /// When the pause Musement asked for ends, if it has not ended yet on the client's clock.
    /// Until then every call fails at once with [`ApiError::Paused`], sending nothing.
    pub fn paused_until(&self) -> Option<DateTime<Utc>> {
        let until = *self
            .inner
            .paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.filter(|until| self.inner.clock.now() < *until)
    }

    /// How many logins succeeded, as counted in the client's metrics (for tests; a client
    /// with metrics of its own counts only its own logins).
    pub fn logins(&self) -> u64 {
        self.inner.metrics.successful_logins()
    }

    /// One GET of the order with `token`; a 401 comes back as `Unauthorized`.
    async fn fetch_order(&self, order: Uuid, token: &str) -> Result<PolledOrder, ApiError> {
        let url = format!("{}/orders/{order}", self.inner.base_url);
        let request = self.inner.http.get(url).bearer_auth(token);
        let reply = self.exchange("order", request).await?;
        match reply.status {
            status if status.is_success() => {
                let server_time = header_text(&reply.headers, header::DATE)
                    .and_then(|date| parse_http_date(&date));
                model::parse_order(&reply.body, order, server_time)
            }
            StatusCode::UNAUTHORIZED => Err(ApiError::Unauthorized {
                message: refusal("token refused", &reply),
            }),
            StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            _ => Err(self.status_error(&reply)),
        }
    }

    /// The cached token if it is still good, else a fresh one from a login.
    async fn valid_token(&self) -> Result<String, ApiError> {
        let mut state = self.inner.token.lock().await;
        let now = self.inner.clock.now();
        match state.token.as_ref() {
            Some(token) if now < token.renew_at => Ok(token.value.clone()),
            Some(_) => self.login_into(&mut state, "expiring").await,
            None => self.login_into(&mut state, "first").await,
        }
    }

    /// A token other than `rejected`: one another caller already obtained while we waited for
    /// the lock, else a fresh login. This keeps N callers hit by the same 401 to one login.
    async fn token_replacing(&self, rejected: &str) -> Result<String, ApiError> {
        let mut state = self.inner.token.lock().await;
        let now = self.inner.clock.now();
        match state.token.as_ref() {
            Some(token) if token.value != rejected && now < token.renew_at => {
                Ok(token.value.clone())
            }
            _ => self.login_into(&mut state, "rejected").await,
        }
    }

    /// Logs in and stores the token in the locked cache, unless a login failed less than
    /// [`LOGIN_COOLDOWN`] ago: then that failure is the answer. `reason` labels the login in
    /// the metrics.
    async fn login_into(
        &self,
        state: &mut TokenState,
        reason: &'static str,
    ) -> Result<String, ApiError> {
        let now = self.inner.clock.now();
        if let Some((at, error)) = &state.failed
            && now < *at + LOGIN_COOLDOWN
        {
            return Err(error.clone());
        }
        let result = match self.login().await {
            // Nothing was sent: not a login attempt, nothing to remember or count.
            Err(paused @ ApiError::Paused { .. }) => return Err(paused),
            other => other,
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(ApiError::Unauthorized { .. }) => "refused",
            Err(_) => "failed",
        };
        self.inner.metrics.login(reason, label);
        match result {
            Ok(token) => {
                let value = token.value.clone();
                state.token = Some(token);
                state.failed = None;
                Ok(value)
            }
            Err(error) => {
                state.failed = Some((now, error.clone()));
                Err(error)
            }
        }
    }

    /// `POST {base_url}/login` with the client credentials.
    async fn login(&self) -> Result<CachedToken, ApiError> {
        // The lifetime runs from when Musement issued the token, which is after this instant;
        // counting from here errs on the safe side.
        let requested_at = self.inner.clock.now();
        let body = serde_json::json!({
            "client_id": self.inner.client_id,
            "client_secret": self.inner.client_secret.expose(),
            "grant_type": "client_credentials",
        });
        let url = format!("{}/login", self.inner.base_url);
        let reply = self
            .exchange("login", self.inner.http.post(url).json(&body))
            .await?;
        match reply.status {
            status if status.is_success() => {
                let grant = model::parse_login(&reply.body)?;
                tracing::debug!(expires_in = grant.expires_in, "logged in to Musement");
                Ok(CachedToken {
                    value: grant.access_token,
                    renew_at: requested_at + renew_after(grant.expires_in),
                })
            }
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ApiError::Unauthorized {
                    message: refusal("login refused", &reply),
                })
            }
            _ => Err(self.status_error(&reply)),
        }
    }

    /// Sends `request`, reads the whole body, counts the call under `endpoint` and logs it (never
    /// its headers, which carry the token, nor its body, which may carry the secret). During a
    /// pause nothing is sent; an answer that asks for a pause starts one.
    async fn exchange(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<Reply, ApiError> {
        if let Some(until) = self.paused_until() {
            return Err(ApiError::Paused { until });
        }
        let request = request.build().map_err(transport_error)?;
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let started = Instant::now();
        let result = self.send_and_read(request).await;
        if let Ok(reply) = &result {
            self.pause_if_asked(reply);
        }
        let elapsed = started.elapsed();
        let code = match &result {
            Ok(reply) => reply.status.as_u16().to_string(),
            Err(error) => error.kind().to_owned(),
        };
        self.inner.metrics.api_call(endpoint, code, elapsed);
        let latency_ms = elapsed.as_millis() as u64;
        match &result {
            Ok(reply) => tracing::debug!(
                %method, path, status = reply.status.as_u16(), latency_ms, "Musement request"
            ),
            // Only the kind: an error's text can hold part of a body.
            Err(error) => tracing::debug!(
                %method, path, error = error.kind(), latency_ms, "Musement request failed"
            ),
        }
        result
    }

    /// Sends `request` and reads the body, at most [`MAX_BODY_BYTES`] of it.
    async fn send_and_read(&self, request: reqwest::Request) -> Result<Reply, ApiError> {
        let mut response = self
            .inner
            .http
            .execute(request)
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY_BYTES {
                return Err(ApiError::malformed(
                    format!("body larger than {MAX_BODY_BYTES} bytes"),
                    &body,
                ));
            }
        }
        Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// Pauses every call for `wait` from now (at most [`MAX_PAUSE`]), unless a pause already
    /// runs as long: the answer of a 429, or a pause another instance recorded for the cluster.
    /// Gives when the pause ends and whether it began now (none ran before), or `None` when
    /// the running pause already lasts as long.
    pub fn pause_for(&self, wait: Duration) -> Option<(DateTime<Utc>, bool)> {
        let now = self.inner.clock.now();
        // At most an hour, so the conversion cannot fail; `later` saturates at the clock's end.
        let until = later(
            now,
            chrono::Duration::from_std(wait.min(MAX_PAUSE)).unwrap_or(chrono::Duration::zero()),
        );
        let started = {
            let mut paused = self
                .inner
                .paused_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if paused.is_some_and(|current| current >= until) {
                return None;
            }
            let was_paused = paused.is_some_and(|current| now < current);
            *paused = Some(until);
            !was_paused
        };
        self.inner.metrics.musement_paused_until(until);
        Some((until, started))
    }

    /// Starts (or lengthens) the pause when `reply` asks for one: a 429 (for its `Retry-After`,
    /// else [`RATE_LIMIT_PAUSE`]) or a 503 with `Retry-After`; at most [`MAX_PAUSE`]. Requests
    /// already in flight finish; no new one leaves until the pause ends.
    fn pause_if_asked(&self, reply: &Reply) {
        let retry_after = self.retry_after(reply);
        let asked = match (reply.status.as_u16(), retry_after) {
            (429, wait) => wait.unwrap_or(RATE_LIMIT_PAUSE),
            (503, Some(wait)) => wait,
            _ => return,
        };
        let wait = asked.min(MAX_PAUSE);
        if wait.is_zero() {
            return; // "Retry-After: 0", or a date already past: no wait asked.
        }
        let Some((until, started)) = self.pause_for(wait) else {
            return;
        };
        let status = reply.status.as_u16();
        let until_text = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if started {
            tracing::warn!(
                status,
                asked_secs = asked.as_secs(),
                capped = asked > MAX_PAUSE,
                until = until_text,
                "Musement asked us to wait; sending it no request until then (at most {}s)",
                MAX_PAUSE.as_secs()
            );
        } else {
            tracing::debug!(status, until = until_text, "Musement pause lengthened");
        }
    }

    /// The `Retry-After` of `reply` as a wait from now, if it has a usable one.
    fn retry_after(&self, reply: &Reply) -> Option<Duration> {
        header_text(&reply.headers, header::RETRY_AFTER)
            .and_then(|value| parse_retry_after(&value, self.inner.clock.now()))
    }

    /// The error for a status that has no meaning specific to the endpoint: 3xx, 429, 5xx, other.
    fn status_error(&self, reply: &Reply) -> ApiError {
        let retry_after = self.retry_after(reply);
        match reply.status.as_u16() {
            status @ 300..=399 => ApiError::Redirected {
                status,
                location: redirect_target(&reply.headers),
            },
            429 => ApiError::RateLimited { retry_after },
            status @ 500..=599 => ApiError::Server {
                status,
                retry_after,
            },
            status => ApiError::UnexpectedStatus {
                status,
                snippet: snippet(&reply.body),
            },
        }
    }

    /// `error` with the client secret and `tokens` masked in all its texts.
    fn scrub(&self, error: ApiError, tokens: &[&str]) -> ApiError {
        let mut secrets = vec![self.inner.client_secret.expose()];
        secrets.extend_from_slice(tokens);
        error.scrubbed(&secrets)
    }
}

/// Classifies a reqwest failure. The URL is dropped from the text: it adds nothing the caller
/// does not know and keeps the line short.
fn transport_error(error: reqwest::Error) -> ApiError {
    if error.is_timeout() {
        ApiError::Timeout
    } else if error.is_builder() {
        ApiError::Config(error_chain(&error.without_url()))
    } else {
        ApiError::Connect(error_chain(&error.without_url()))
    }
}

/// `error` and its sources joined with `: `, on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause in their own message; say it once.
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

/// How long after the login request a token with lifetime `expires_in` is renewed: its lifetime
/// minus `min(60 s, expires_in / 10)`, so short-lived tokens keep most of their life.
fn renew_after(expires_in: u64) -> chrono::Duration {
    let lifetime = expires_in.min(MAX_EXPIRES_IN_SECS);
    let margin = MAX_RENEW_MARGIN_SECS.min(lifetime / 10);
    // Both fit easily: lifetime is capped at 30 days.
    chrono::Duration::seconds((lifetime - margin) as i64)
}

/// `"{what} (HTTP 401): {Musement's message}"`.
fn refusal(what: &str, reply: &Reply) -> String {
    let status = reply.status.as_u16();
    match model::error_message(&reply.body) {
        Some(message) => format!("{what} (HTTP {status}): {message}"),
        None => format!("{what} (HTTP {status})"),
    }
}

/// A redirect's `Location`, quoted and cut short (it is the other party's text), for the error.
fn redirect_target(headers: &HeaderMap) -> String {
    match headers.get(header::LOCATION) {
        Some(location) => format!("{:?}", snippet(location.as_bytes())),
        None => "(no Location header)".to_owned(),
    }
}

/// A header's value as text, if present and visible ASCII.
fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// The base URL checked by [`base_url::parse`] (the same check as `check-config`'s), as the
/// parser normalised it, without trailing slashes; and whether its host is loopback.
fn checked_base_url(text: &str) -> Result<(String, bool), ApiError> {
    let url =
        base_url::parse(text).map_err(|reason| ApiError::Config(format!("base_url: {reason}")))?;
    let loopback = base_url::is_loopback(&url);
    Ok((url.as_str().trim_end_matches('/').to_owned(), loopback))
}

/// The headers every request carries: who we are, which API version and language we want.
fn identity_headers(settings: &MusementSettings) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    for (name, setting, value) in [
        (
            "x-musement-application",
            "application",
            &settings.application,
        ),
        ("x-musement-version", "version", &settings.version),
        (
            "accept-language",
            "accept_language",
            &settings.accept_language,
        ),
    ] {
        let value = value.trim();
        let header = HeaderValue::from_str(value)
            .ok()
            .filter(|_| !value.is_empty())
            .ok_or_else(|| {
                ApiError::Config(format!("{setting}: empty or not a valid header value"))
            })?;
        headers.insert(HeaderName::from_static(name), header);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn settings(base_url: &str) -> MusementSettings {
        MusementSettings {
            base_url: base_url.into(),
            application: "acme".into(),
            version: "3.4.0".into(),
            accept_language: "en-US".into(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn client_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<MusementClient>();
    }

    #[test]
    fn renew_margin_is_a_tenth_up_to_a_minute() {
        assert_eq!(renew_after(3600), chrono::Duration::seconds(3540));
        assert_eq!(renew_after(300), chrono::Duration::seconds(270));
        assert_eq!(renew_after(5), chrono::Duration::seconds(5));
        assert_eq!(renew_after(0), chrono::Duration::zero());
        assert_eq!(
            renew_after(u64::MAX),
            chrono::Duration::seconds((MAX_EXPIRES_IN_SECS - 60) as i64)
        );
    }

    #[test]
    fn base_url_is_checked_and_trimmed() {
        assert_eq!(
            checked_base_url("https://sandbox.musement.com/api/v3/").unwrap(),
            ("https://sandbox.musement.com/api/v3".to_owned(), false)
        );
        assert_eq!(
            checked_base_url("http://LOCALHOST:8080/api/").unwrap(),
            ("http://localhost:8080/api".to_owned(), true)
        );
        for bad in [
            "",
            "sandbox.musement.com",
            "ftp://x/api",
            "https://x/api?a=1",
            // The client refuses what check-config refuses: one check, shared.
            "http://127.0.0.1:1@api.musement.com/api/v3",
            "http://api.musement.com/api/v3",
        ] {
            assert!(
                matches!(checked_base_url(bad), Err(ApiError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let clock = Arc::new(SystemClock);
        let mut bad = settings("http://127.0.0.1:1/api/v3");
        bad.application = String::new();
        assert!(matches!(
            MusementClient::new(bad, clock.clone(), Arc::default()),
            Err(ApiError::Config(_))
        ));
        let mut bad = settings("http://127.0.0.1:1/api/v3");
        bad.version = "3.4\u{7}".into();
        assert!(matches!(
            MusementClient::new(bad, clock.clone(), Arc::default()),
            Err(ApiError::Config(_))
        ));
        let mut bad = settings("http://127.0.0.1:1/api/v3");
        bad.request_timeout = Duration::ZERO;
        assert!(matches!(
            MusementClient::new(bad, clock.clone(), Arc::default()),
            Err(ApiError::Config(_))
        ));
        let client =
            MusementClient::new(settings("http://127.0.0.1:1/api/v3"), clock, Arc::default())
                .unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("inner\nline"));
        assert_eq!(error_chain(&error), "outer: inner line");
    }
}
