//! [`ApiError`]: everything that can go wrong talking to Musement, classified so the caller can
//! decide between "retry later" (transient) and "stop and tell someone" (everything else).

use std::time::Duration;

/// How many bytes of a response body an error keeps, so errors stay small but still show what
/// Musement actually sent.
pub(crate) const SNIPPET_BYTES: usize = 200;

/// What replaces a secret or token found in error text.
const MASK: &str = "********";

/// A failed Musement API call. Display is one short line and never contains the client secret
/// or a bearer token (the client scrubs both from every text it puts in here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request (connect, send and read of the body) took longer than `request_timeout`.
    #[error("Musement request timed out")]
    Timeout,
    /// No HTTP exchange happened: connection refused, DNS, TLS, or the connection broke.
    #[error("cannot reach Musement: {0}")]
    Connect(String),
    /// Musement answered 5xx; `retry_after` is its `Retry-After`, if it sent a usable one.
    #[error("Musement server error: HTTP {status}{}", show_retry(*retry_after))]
    Server {
        /// The HTTP status (500..=599).
        status: u16,
        /// How long Musement asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Musement answered 429.
    #[error("rate limited by Musement{}", show_retry(*retry_after))]
    RateLimited {
        /// How long Musement asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Nothing was sent: Musement asked us to wait (429, or 503 with `Retry-After`) and the
    /// wait has not ended. Every request (GET and login, for every caller) waits it out.
    #[error("not calling Musement until {}: it asked us to wait", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    Paused {
        /// When requests may be sent again (on the client's clock).
        until: chrono::DateTime<chrono::Utc>,
    },
    /// `GET /orders/{uuid}` answered 404: Musement does not know the order. Permanent.
    #[error("order not found at Musement")]
    NotFound,
    /// Our credentials do not work: login refused, or a 401 right after a fresh login.
    #[error("not authorized by Musement: {message}")]
    Unauthorized {
        /// What happened, with Musement's own `message` when it sent one.
        message: String,
    },
    /// Musement answered 3xx. Redirects are never followed: a 307 would re-send the login body
    /// (client secret included) to wherever it points, and a followed 302 would store another
    /// host's answer as Musement's. A person has to look (usually `[musement] base_url`).
    #[error(
        "Musement answered HTTP {status} redirecting to {location}; redirects are not followed (check [musement] base_url)"
    )]
    Redirected {
        /// The HTTP status (300..=399).
        status: u16,
        /// The `Location` header, quoted and cut to [`SNIPPET_BYTES`], or `(no Location header)`.
        location: String,
    },
    /// Any other non-2xx answer.
    #[error("unexpected HTTP {status} from Musement: {snippet:?}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// The start of the body (lossily decoded), to see what was sent.
        snippet: String,
    },
    /// A 2xx answer whose body we cannot use.
    #[error("malformed Musement response: {reason}; body starts {snippet:?}")]
    Malformed {
        /// What is wrong, naming the field when one is at fault (`items[1].status: missing`).
        reason: String,
        /// The first ~200 bytes of the body, lossily decoded.
        snippet: String,
    },
    /// The client cannot be built or used as configured (bad base URL, bad header value).
    #[error("Musement client configuration: {0}")]
    Config(String),
}

impl ApiError {
    /// The wait Musement asked for (`Retry-After`), for 429 and 5xx answers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server { retry_after, .. } | Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// True when trying again later may succeed without anyone changing anything: timeouts,
    /// connection failures, 5xx, 429 and a pause. Everything else needs a person or is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::Connect(_)
                | Self::Server { .. }
                | Self::RateLimited { .. }
                | Self::Paused { .. }
        )
    }

    /// A short fixed name for the kind of failure (`timeout`, `connect`, `server`,
    /// `rate_limited`, `paused`, `not_found`, `unauthorized`, `redirected`, `unexpected_status`,
    /// `malformed`, `config`),
    /// for metrics labels and for logs that must not carry response text.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Server { .. } => "server",
            Self::RateLimited { .. } => "rate_limited",
            Self::Paused { .. } => "paused",
            Self::NotFound => "not_found",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Redirected { .. } => "redirected",
            Self::UnexpectedStatus { .. } => "unexpected_status",
            Self::Malformed { .. } => "malformed",
            Self::Config(_) => "config",
        }
    }

    /// The same error with every occurrence of each non-empty `secret` masked in its texts. A
    /// server may echo what we sent, so the client passes every error through this before
    /// returning it.
    pub(crate) fn scrubbed(self, secrets: &[&str]) -> Self {
        let clean = |text: String| scrub(text, secrets);
        match self {
            Self::Connect(text) => Self::Connect(clean(text)),
            Self::Unauthorized { message } => Self::Unauthorized {
                message: clean(message),
            },
            Self::Redirected { status, location } => Self::Redirected {
                status,
                location: clean(location),
            },
            Self::UnexpectedStatus { status, snippet } => Self::UnexpectedStatus {
                status,
                snippet: clean(snippet),
            },
            Self::Malformed { reason, snippet } => Self::Malformed {
                reason: clean(reason),
                snippet: clean(snippet),
            },
            Self::Config(text) => Self::Config(clean(text)),
            other => other,
        }
    }

    /// A `Malformed` error for `body`. A body that is valid JSON (an order in an unexpected
    /// shape) may hold customer data, so only its top-level keys are kept; other bodies (HTML
    /// error pages, cut-off text) keep their first bytes, which is what helps an operator.
    pub(crate) fn malformed(reason: impl Into<String>, body: &[u8]) -> Self {
        let snippet = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(fields)) => {
                let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
                format!("JSON object with keys {keys:?} (values not shown)")
            }
            Ok(_) => "JSON that is not an object (not shown)".to_owned(),
            Err(_) => snippet(body),
        };
        Self::Malformed {
            reason: reason.into(),
            snippet,
        }
    }
}

/// The first [`SNIPPET_BYTES`] of `body`, lossily decoded (a cut multi-byte character becomes
/// U+FFFD rather than an error).
pub(crate) fn snippet(body: &[u8]) -> String {
    let end = body.len().min(SNIPPET_BYTES);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// `text` with each non-empty secret replaced by a mask.
fn scrub(text: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text, |text, secret| text.replace(secret, MASK))
}

/// `" (retry after 7s)"`, or nothing when there is no wait.
fn show_retry(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|wait| format!(" (retry after {}s)", wait.as_secs()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_retry_after() {
        let server = ApiError::Server {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(server.is_transient());
        assert_eq!(server.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(
            server.to_string(),
            "Musement server error: HTTP 503 (retry after 3s)"
        );
        assert!(ApiError::Timeout.is_transient());
        assert!(ApiError::Connect("refused".into()).is_transient());
        assert!(ApiError::RateLimited { retry_after: None }.is_transient());
        assert!(!ApiError::NotFound.is_transient());
        assert!(!ApiError::malformed("x", b"{").is_transient());
        assert_eq!(ApiError::NotFound.retry_after(), None);
    }

    #[test]
    fn scrubbing_masks_every_secret_everywhere() {
        let error = ApiError::Malformed {
            reason: "token tok-123 rejected".into(),
            snippet: "{\"access_token\":\"tok-123\",\"secret\":\"s3cr3t\"}".into(),
        }
        .scrubbed(&["tok-123", "s3cr3t", ""]);
        let text = error.to_string();
        assert!(
            !text.contains("tok-123") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert!(text.contains(MASK));
    }

    #[test]
    fn snippet_is_bounded_and_lossy() {
        // 150 two-byte characters: the cut at byte 200 falls between two of them.
        let body = "é".repeat(150);
        assert_eq!(snippet(body.as_bytes()).len(), SNIPPET_BYTES);
        // One byte more in front: now the cut halves a character.
        let odd = format!("x{body}");
        assert!(snippet(odd.as_bytes()).ends_with('\u{FFFD}'));
    }

    #[test]
    fn display_is_one_line() {
        let error = ApiError::malformed("items: not an array", b"{\n \"items\": 1\n}");
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}
