//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, the format Svix and others
//! publish): a delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature`,
//! the last being `v1,` and the base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under each
//! configured secret, separated by spaces, so a receiver that knows any one of the secrets
//! accepts it (a secret is rotated by adding the new one, moving the receiver, removing the old
//! one).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret as the specification writes it.
const PREFIX: &str = "whsec_";

/// The key lengths the specification allows, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// One signing secret (`whsec_` and a base64 key). Never printed: `Debug` shows its place only.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(********)")
    }
}

/// Why a secret was refused; says what is wrong, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret: give one or more whsec_… secrets, separated by spaces or lines")]
    None,
    #[error("secret {0} does not start with whsec_")]
    NoPrefix(usize),
    #[error("secret {0} is not base64 after whsec_")]
    NotBase64(usize),
    #[error("secret {0} holds {1} bytes; Standard Webhooks keys hold 24 to 64")]
    Length(usize, usize),
}

impl SigningSecret {
    /// Every secret in `text` (one or more, separated by whitespace, as a secret file or
    /// variable holds them), numbered from 1 in errors.
    pub fn parse_all(text: &str) -> Result<Vec<Self>, SecretError> {
        let secrets = text
            .split_whitespace()
            .enumerate()
            .map(|(n, secret)| Self::parse(n + 1, secret))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError::None);
        }
        Ok(secrets)
    }

    fn parse(number: usize, text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or(SecretError::NoPrefix(number))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64(number))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length(number, key.len()));
        }
        Ok(Self { key })
    }

    /// The base64 HMAC-SHA256 of `id.timestamp.body` under this secret.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// The three headers of a delivery of `body` with the message id `id`, sent at `timestamp`
/// (Unix seconds): `webhook-id`, `webhook-timestamp`, and `webhook-signature` with one `v1,`
/// entry per secret, in the order given.
pub fn headers(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| format!("v1,{}", secret.sign(id, timestamp, body)))
        .collect();
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret of `n` bytes, all `byte`, as the specification writes it.
    fn secret(byte: u8, n: usize) -> String {
        format!("{PREFIX}{}", STANDARD.encode(vec![byte; n]))
    }

    /// Checks `headers` and `body` with the specification's own library and `secret`.
    fn verified_by(secret: &str, headers: &[(&'static str, String); 3], body: &[u8]) -> bool {
        let mut map = axum::http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(body, &map)
            .is_ok()
    }

    #[test]
    fn the_specification_library_verifies_every_secret_and_nothing_else() {
        let (old, new, stranger) = (secret(7, 32), secret(9, 24), secret(1, 64));
        let secrets = SigningSecret::parse_all(&format!("{old}\n{new} ")).unwrap();
        let body = br#"{"type":"order_item.status_changed","data":{"new_status":"OK"}}"#;
        let now = chrono::Utc::now().timestamp();
        let headers = headers(&secrets, "msg_2Ld0Xk3", now, body);
        assert_eq!(
            headers[2].1.split(' ').count(),
            2,
            "one v1 entry per secret"
        );
        assert!(verified_by(&old, &headers, body), "the old secret");
        assert!(verified_by(&new, &headers, body), "the new secret");
        assert!(!verified_by(&stranger, &headers, body), "another secret");
        assert!(!verified_by(&old, &headers, b"{}"), "another body");
        let mut other_id = headers.clone();
        other_id[0].1 = "msg_other".into();
        assert!(!verified_by(&old, &other_id, body), "another id");
    }

    #[test]
    fn secrets_are_refused_with_a_reason_that_never_shows_them() {
        let too_short = secret(3, 8);
        for (text, error) in [
            ("", SecretError::None),
            ("  \n ", SecretError::None),
            ("c2VjcmV0LXdpdGhvdXQtcHJlZml4", SecretError::NoPrefix(1)),
            ("whsec_not*base64!", SecretError::NotBase64(1)),
            (too_short.as_str(), SecretError::Length(1, 8)),
        ] {
            assert_eq!(
                SigningSecret::parse_all(text).unwrap_err(),
                error,
                "{text:?}"
            );
            if !text.trim().is_empty() {
                assert!(!error.to_string().contains(text.trim()), "{error}");
            }
        }
        let second_bad = format!("{} whsec_x", secret(1, 32));
        assert_eq!(
            SigningSecret::parse_all(&second_bad).unwrap_err(),
            SecretError::NotBase64(2)
        );
        let parsed = SigningSecret::parse_all(&secret(5, 32)).unwrap();
        assert_eq!(format!("{parsed:?}"), "[SigningSecret(********)]");
    }
}
