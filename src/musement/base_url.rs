//! `[musement] base_url`, parsed once with the URL parser reqwest itself uses (the WHATWG one in
//! the `url` crate), so the host checked here is the host requests go to. Both the config check
//! (`check-config`, start-up) and [`MusementClient::new`](super::MusementClient::new) go
//! through [`parse`]; there is no second, hand-written reading of the URL. `[[forward]] url`
//! (signed webhooks out) goes through the same check ([`check`] with [`Purpose::Forward`]).

use std::net::IpAddr;

use reqwest::Url;

/// `text` as an API base URL, or why it cannot be one (a reason that never repeats the URL,
/// which may hold a password). Refused:
/// - anything but an absolute `http://` / `https://` URL with a host;
/// - user info (`user@`, `user:password@`): the host is what follows the `@`, so
///   `http://127.0.0.1:1@api.musement.com` names `api.musement.com`, and credentials belong in
///   `client_id` / `client_secret`;
/// - backslashes, spaces and control characters, which URL parsers disagree on or drop silently
///   (`http://evil.com<TAB>@127.0.0.1` is userinfo once the tab is gone);
/// - a query or fragment (paths are appended to the base, which would land inside them);
/// - plain `http://` to a host that is not loopback: the client secret would travel in clear.
///   Loopback is an IP in `127.0.0.0/8`, `::1`, or exactly `localhost`; `localhost.`,
///   `localhost.example.com` and `127.0.0.1.example.com` are names DNS resolves, so they are not.
pub(crate) fn parse(text: &str) -> Result<Url, String> {
    check(text, Purpose::MusementApi)
}

/// What a checked URL is for: the words of its errors, and whether it may have a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `[musement] base_url`: paths are appended to it, and the client secret goes to it.
    MusementApi,
    /// `[[forward]] url`: posted to as it is (a query is kept), signed changes go to it.
    Forward,
}

impl Purpose {
    /// Where credentials belong instead of user info.
    fn credentials(self) -> &'static str {
        match self {
            Self::MusementApi => "put credentials in client_id / client_secret",
            Self::Forward => "the deliveries are signed with secret_env / secret_file",
        }
    }

    /// What plain http:// would expose.
    fn in_clear(self) -> &'static str {
        match self {
            Self::MusementApi => "the client secret would travel in clear",
            Self::Forward => "the bookings' changes would travel in clear",
        }
    }
}

/// [`parse`]'s rules for `purpose`: a query is refused only where paths are appended.
pub(crate) fn check(text: &str, purpose: Purpose) -> Result<Url, String> {
    if text.contains('\\') {
        return Err("must not contain a backslash (URL parsers disagree on what it means)".into());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let url = Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "must not contain user info (user@ or user:password@): the host is what follows the @; {}",
            purpose.credentials()
        ));
    }
    if url.fragment().is_some() || (purpose == Purpose::MusementApi && url.query().is_some()) {
        return Err(match purpose {
            Purpose::MusementApi => "must not have a query or fragment".into(),
            Purpose::Forward => "must not have a fragment".into(),
        });
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(format!(
            "plain http:// is allowed only for a loopback host ({}); use https://",
            purpose.in_clear()
        ));
    }
    Ok(url)
}

/// Whether `url`'s host is this machine: a loopback IP, or exactly `localhost`. The host comes
/// from the parser already normalised (lowercase, percent-decoded, IPv4 in dotted form, IPv6
/// in brackets), so there is nothing left to trick here.
pub(crate) fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_judged_on_the_parsed_host() {
        for url in [
            "http://127.0.0.1:8080/api/v3",
            "http://127.0.0.2/",
            "http://localhost/api",
            "http://LocalHost/api",
            "http://[::1]:1/",
            // The parser reads these as 127.0.0.1: what is checked is what is connected to.
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "http://127.0.0.1./",
        ] {
            let parsed = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(is_loopback(&parsed), "{url}");
        }
        for url in [
            "https://sandbox.musement.com/api/v3",
            "https://10.0.0.1/",
            "https://localhost.example.com/",
            "https://127.0.0.1.example.com/",
            "https://localhost./",
        ] {
            let parsed = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(!is_loopback(&parsed), "{url}");
        }
    }

    #[test]
    fn reasons_never_repeat_the_url() {
        let error = parse("http://user:hunter2@127.0.0.1/").unwrap_err();
        assert!(error.contains("user info"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = parse("http://user:hunter2@[::1/").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
