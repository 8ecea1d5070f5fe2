//! Who may call the API: the configured bearer tokens, each with a scope, compared in
//! constant time. With no token configured every route is open (the configuration then
//! allows only a loopback listener).

use axum::http::{HeaderMap, Method, header};
use subtle::ConstantTimeEq;

use super::problem::Problem;
use crate::config::{ApiToken, Scope};

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<ApiToken>,
}

/// Who made a request: the token's name (`None` when no token is configured).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

impl Tokens {
    /// The tokens of `[[api.tokens]]`, their secrets loaded.
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self { tokens }
    }

    /// Whether `headers` carry a token allowed to call `method`: GET needs `read` or `write`,
    /// anything else `write`.
    pub fn authorize(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, Problem> {
        if self.tokens.is_empty() {
            return Ok(Caller(None));
        }
        let presented = bearer(headers)?;
        let token = self.matching(presented).ok_or_else(|| {
            Problem::unauthorized("the bearer token is not one of [[api.tokens]]")
        })?;
        let needs_write = method != Method::GET && method != Method::HEAD;
        if needs_write && token.scope != Scope::Write {
            return Err(Problem::forbidden(format!(
                "the token {:?} has scope read; {method} needs a token with scope write",
                token.name
            )));
        }
        Ok(Caller(Some(token.name.clone())))
    }

    /// The token equal to `presented`, every configured one compared in full (constant time
    /// in the token's value, whichever matches).
    fn matching(&self, presented: &[u8]) -> Option<&ApiToken> {
        let mut found = None;
        for token in &self.tokens {
            let equal: bool = presented.ct_eq(token.resolved.expose().as_bytes()).into();
            if equal && found.is_none() {
                found = Some(token);
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Result<&[u8], Problem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("no Authorization header: send Bearer TOKEN"))?;
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return Err(Problem::unauthorized(
            "the Authorization header is not Bearer TOKEN",
        ));
    }
    Ok(value[scheme.len()..].trim_ascii())
}
