//! One delivery attempt: POST the signed body to the destination, follow no redirect, and say
//! what the answer means for the delivery ([`Attempt`]). Retrying, ordering and recording are
//! the caller's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use super::signature::{SigningSecret, headers};
use crate::musement::base_url::{Purpose, check, is_loopback};
use crate::musement::client::error_chain;
use crate::musement::headers::parse_retry_after;

/// `[[forward]] url` as checked at start: http(s) with a host and no user info, https unless
/// the host is loopback (the same parser and rules as the Musement base URL; a query is
/// kept). The reason never repeats the URL.
pub fn destination_url(text: &str) -> Result<Url, String> {
    check(text, Purpose::Forward)
}

/// What an attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx: acknowledged.
    Delivered { status: u16 },
    /// 410 Gone: the receiver wants nothing more from this destination.
    Gone,
    /// Anything else (another status, a redirect, a timeout, a refused connection): try again
    /// later, after `retry_after` when the receiver said when.
    Failed {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Sends attempts to one destination.
#[derive(Debug, Clone)]
pub struct Sender {
    http: reqwest::Client,
    url: Url,
}

impl Sender {
    /// A sender to `url` ([`destination_url`]) whose attempts give up after `timeout`.
    pub fn new(url: Url, timeout: Duration) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("orderwatch/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            // A redirect is the receiver's mistake, never a reason to post signed bookings to
            // another address.
            .redirect(reqwest::redirect::Policy::none());
        if is_loopback(&url) {
            // An HTTP(S)_PROXY cannot reach our own loopback.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| error_chain(&e.without_url()))?;
        Ok(Self { http, url })
    }

    /// Posts `body` as message `id`, signed with every one of `secrets`, at `now`.
    pub async fn send(
        &self,
        secrets: &[SigningSecret],
        id: &str,
        body: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Attempt {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers(secrets, id, now.timestamp(), &body) {
            request = request.header(name, value);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => {
                let kind = if error.is_timeout() {
                    "no answer in time"
                } else {
                    "no answer"
                };
                return Attempt::Failed {
                    status: None,
                    reason: format!("{kind}: {}", error_chain(&error.without_url())),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered {
                status: status.as_u16(),
            };
        }
        if status == reqwest::StatusCode::GONE {
            return Attempt::Gone;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, now));
        let reason = if status.is_redirection() {
            format!("HTTP {status}: redirects are not followed (check the url)")
        } else {
            format!("HTTP {status}")
        };
        Attempt::Failed {
            status: Some(status.as_u16()),
            reason,
            retry_after,
        }
    }
}
