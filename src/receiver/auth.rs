//! Who may post webhooks: Basic credentials (compared in constant time) and the IP allowlist,
//! with `X-Forwarded-For` believed only from trusted proxies.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use subtle::{Choice, ConstantTimeEq};

use crate::config::{IpRange, Secret};

/// The credentials Musement must send.
#[derive(Debug, Clone)]
pub struct BasicCredentials {
    /// Expected user name.
    pub username: String,
    /// Expected password.
    pub password: Secret,
    /// The password before a rotation, accepted too while it is configured.
    pub previous_password: Option<Secret>,
}

/// Which password a request's credentials matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The user name and the password.
    Password,
    /// The user name and the previous password (a rotation is under way).
    PreviousPassword,
    /// Neither, or no Basic credentials at all.
    Neither,
}

impl BasicCredentials {
    /// Whether the request's `Authorization` header carries these credentials (with the
    /// password or the previous one).
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        self.check(headers) != Matched::Neither
    }

    /// Which password the request's `Authorization` header matched. Every part is always
    /// compared, in constant time (the user name, the password and the previous password
    /// when there is one), so timing tells nothing about which part or how much of it matched
    /// (only, at most, the lengths).
    pub fn check(&self, headers: &HeaderMap) -> Matched {
        let Some((user, password)) = basic_credentials(headers) else {
            return Matched::Neither;
        };
        let user_ok = user.as_slice().ct_eq(self.username.as_bytes());
        let current_ok = password.as_slice().ct_eq(self.password.expose().as_bytes());
        let previous_ok = self
            .previous_password
            .as_ref()
            .map_or(Choice::from(0), |previous| {
                password.as_slice().ct_eq(previous.expose().as_bytes())
            });
        if bool::from(user_ok & current_ok) {
            Matched::Password
        } else if bool::from(user_ok & previous_ok) {
            Matched::PreviousPassword
        } else {
            Matched::Neither
        }
    }
}

/// Decodes `Authorization: Basic base64(user:password)`; `None` for anything else.
fn basic_credentials(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// The address the request really came from: the TCP peer, unless the peer is a trusted proxy,
/// in which case the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
/// `None` when a trusted proxy sent an unparseable header (treated as unknown, so refused by an
/// allowlist).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpRange]) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|range| range.contains(ip));
    if !trusted(peer) {
        return Some(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(hop.trim().parse::<IpAddr>().ok()?);
        }
    }
    Some(
        hops.iter()
            .rev()
            .copied()
            .find(|&ip| !trusted(ip))
            .or_else(|| hops.first().copied())
            .unwrap_or(peer),
    )
}

/// Whether `ip` may post: an empty allowlist allows everyone.
pub fn allowed(ip: Option<IpAddr>, allow_ips: &[IpRange]) -> bool {
    allow_ips.is_empty() || ip.is_some_and(|ip| allow_ips.iter().any(|range| range.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn acme() -> BasicCredentials {
        BasicCredentials {
            username: "JohnSmith".into(),
            password: Secret::new("Swordfish"),
            previous_password: None,
        }
    }

    fn basic(user_and_password: &str) -> HeaderMap {
        headers(&[(
            "authorization",
            &format!("Basic {}", STANDARD.encode(user_and_password)),
        )])
    }

    #[test]
    fn the_previous_password_is_accepted_while_configured() {
        let rotating = BasicCredentials {
            previous_password: Some(Secret::new("Swordfish")),
            password: Secret::new("Marlin-2"),
            ..acme()
        };
        assert_eq!(
            rotating.check(&basic("JohnSmith:Marlin-2")),
            Matched::Password
        );
        assert_eq!(
            rotating.check(&basic("JohnSmith:Swordfish")),
            Matched::PreviousPassword
        );
        assert!(rotating.accepts(&basic("JohnSmith:Swordfish")));
        for bad in [
            "JohnSmith:Swordfisi",
            "JohnSmitt:Swordfish",
            "JohnSmitt:Marlin-2",
        ] {
            assert_eq!(rotating.check(&basic(bad)), Matched::Neither, "{bad}");
        }
        // Removed: the old password is refused again.
        let rotated = BasicCredentials {
            previous_password: None,
            ..rotating
        };
        assert!(!rotated.accepts(&basic("JohnSmith:Swordfish")));
        assert!(rotated.accepts(&basic("JohnSmith:Marlin-2")));
    }

    #[test]
    fn accepts_the_documented_example_only() {
        assert!(acme().accepts(&headers(&[(
            "authorization",
            "Basic Sm9oblNtaXRoOlN3b3JkZmlzaA=="
        )])));
        assert!(acme().accepts(&headers(&[(
            "authorization",
            "basic Sm9oblNtaXRoOlN3b3JkZmlzaA=="
        )])));
        let one_byte_off = STANDARD.encode("JohnSmith:Swordfisi");
        for bad in [
            format!("Basic {one_byte_off}"),
            format!("Basic {}", STANDARD.encode("JohnSmith")), // no colon
            format!("Basic {}", STANDARD.encode("JohnSmith:")),
            "Basic !!!".into(),
            "Bearer Sm9oblNtaXRoOlN3b3JkZmlzaA==".into(),
            "Basic".into(),
        ] {
            assert!(
                !acme().accepts(&headers(&[("authorization", &bad)])),
                "{bad}"
            );
        }
        assert!(!acme().accepts(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let outsider: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(outsider, &xff, &trusted), Some(outsider));
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), Some(proxy));
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(proxy, &garbage, &trusted), None);
        assert!(!allowed(None, &trusted));
        assert!(allowed(None, &[]));
    }
}
