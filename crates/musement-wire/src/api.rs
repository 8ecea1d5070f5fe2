//! The partner API's routes and answers, under [`PREFIX`]: `POST /login`, `GET /orders/{uuid}`
//! and `POST /orders/{o}/items/{i}/notifications`, each requiring `X-Musement-Application`
//! (400, code `2271`), the order routes a bearer token from a login (401); `{code, message}`
//! errors; a `Date` header on every answer (Musement's clock, which orders a poll against
//! webhooks). A fake implements [`Backend`] (its credentials, tokens, orders) and hands each
//! request to [`respond`].

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

/// The API prefix, as Musement's base URLs have it (`https://sandbox.musement.com/api/v3`).
pub const PREFIX: &str = "/api/v3";

/// The largest request body a fake reads (anything bigger gets [`ApiError::TOO_LARGE`]).
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// A Musement error answer: the status and the `{code, message}` body (`code` is a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `code`.
    pub code: &'static str,
    /// `message`.
    pub message: &'static str,
}

impl ApiError {
    /// A request without `X-Musement-Application` (documented).
    pub const MISSING_APPLICATION: Self = Self::new(
        400,
        "2271",
        "The header 'x-musement-application' is mandatory",
    );
    /// A login body without the three mandatory fields.
    pub const BAD_LOGIN_REQUEST: Self = Self::new(
        400,
        "1400",
        "client_id, client_secret and grant_type (client_credentials) are mandatory",
    );
    /// A login with a `grant_type` other than `client_credentials`.
    pub const UNSUPPORTED_GRANT: Self = Self::new(400, "1400", "Unsupported grant_type");
    /// A login with the wrong client id or secret.
    pub const INVALID_CREDENTIALS: Self = Self::new(401, "401", "Invalid client credentials");
    /// A missing, unknown, expired or revoked bearer token (undocumented; assumed).
    pub const UNAUTHORIZED: Self = Self::new(401, "401", "Invalid or expired access token");
    /// An order the API does not know.
    pub const ORDER_NOT_FOUND: Self = Self::new(404, "1404", "Order not found");
    /// A path that is no route (the `default` response's code `0`).
    pub const NO_ROUTE: Self = Self::new(404, "0", "No route found");
    /// A request body over [`MAX_REQUEST_BODY`], or one that could not be read.
    pub const TOO_LARGE: Self = Self::new(413, "413", "Request body too large or unreadable");

    /// An error answer (`const`, for the documented ones above).
    pub const fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    /// The body, `{"code":…,"message":…}`.
    pub fn body(self) -> String {
        error_body(self.code, self.message)
    }

    /// The answer.
    pub fn response(self) -> Response<Full<Bytes>> {
        json_response(self.status, self.body(), &[])
    }
}

/// A `{code, message}` error with any status, code and message (see [`ApiError`] for the
/// documented ones).
pub fn error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, error_body(code, message), &[])
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &str) -> Response<Full<Bytes>> {
    let body = error_body("405", "Method not allowed");
    json_response(405, body, &[("allow", allow)])
}

/// Musement's error body: `code` is a string, e.g. `"1400"`.
fn error_body(code: &str, message: &str) -> String {
    json!({ "code": code, "message": message }).to_string()
}

/// `body` as `application/json` with `status` (an invalid one becomes 500) and `headers` (an
/// invalid one is left out).
pub fn json_response(status: u16, body: String, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    response
}

/// `response` with `time` as its `Date` header.
pub fn with_date<B>(mut response: Response<B>, time: DateTime<Utc>) -> Response<B> {
    if let Ok(value) = HeaderValue::from_str(&httpdate(time)) {
        response.headers_mut().insert(hyper::header::DATE, value);
    }
    response
}

/// An HTTP-date (IMF-fixdate), as the `Date` header carries it.
pub fn httpdate(time: DateTime<Utc>) -> String {
    time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The whole request body, or the 413 answer when it is over [`MAX_REQUEST_BODY`] or breaks off.
pub async fn read_body(body: Incoming) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(ApiError::TOO_LARGE.response()),
    }
}

/// What a successful login issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `access_token`.
    pub access_token: String,
    /// `expires_in`, in seconds.
    pub expires_in: u64,
}

impl Grant {
    /// The `POST /login` success body.
    pub fn body(&self) -> String {
        json!({
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "token_type": "bearer",
            "scope": null,
        })
        .to_string()
    }
}

/// What a fake decides; [`respond`] does the rest of the API. Called with no lock held: an
/// implementation may lock its own state in each method.
pub trait Backend {
    /// The client id and secret a login must present (compared in constant time).
    fn credentials(&self) -> (&str, &str);

    /// A new access token, after a login with the right credentials.
    fn issue_token(&self) -> Grant;

    /// Whether `token` is one it issued and still honours.
    fn token_valid(&self, token: &str) -> bool;

    /// The `GET /orders/{order}` body (`order` as the path has it, not checked to be a UUID);
    /// `None` for [`ApiError::ORDER_NOT_FOUND`].
    fn order(&self, order: &str) -> Option<String>;

    /// The answer to `POST /orders/{order}/items/{item}/notifications` (with a valid token):
    /// re-send the item's current webhook. By default the fake has no such endpoint
    /// ([`ApiError::NO_ROUTE`]).
    fn notify(&self, order: &str, item: &str) -> Response<Full<Bytes>> {
        let _ = (order, item);
        ApiError::NO_ROUTE.response()
    }

    /// Musement's clock, for the `Date` header.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Which route a request is for, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// Not under [`PREFIX`].
    Outside,
    /// `POST /login`.
    Login,
    /// `GET /orders/{order}`.
    GetOrder {
        /// The path segment after `/orders/`.
        order: &'a str,
    },
    /// `POST /orders/{order}/items/{item}/notifications`.
    Notifications {
        /// The order's path segment.
        order: &'a str,
        /// The item's path segment.
        item: &'a str,
    },
    /// A route's path with another method; the method it takes.
    WrongMethod {
        /// The `Allow` header's value.
        allow: &'static str,
    },
    /// Under the prefix, but no route.
    NoRoute,
}

impl<'a> Endpoint<'a> {
    /// The endpoint of `method` on `path` (the URL path, without the query).
    pub fn of(method: &Method, path: &'a str) -> Self {
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Self::Outside;
        };
        let Some(rest) = rest.strip_prefix('/') else {
            return Self::NoRoute;
        };
        let segments: Vec<&'a str> = rest.split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["login"]) => Self::Login,
            (_, ["login"]) => Self::WrongMethod { allow: "POST" },
            (&Method::GET, ["orders", order]) => Self::GetOrder { order },
            (_, ["orders", _]) => Self::WrongMethod { allow: "GET" },
            (&Method::POST, ["orders", order, "items", item, "notifications"]) => {
                Self::Notifications { order, item }
            }
            (_, ["orders", _, "items", _, "notifications"]) => Self::WrongMethod { allow: "POST" },
            _ => Self::NoRoute,
        }
    }
}

/// The API's answer to a request (`parts` and its whole `body`), dated by [`Backend::now`].
pub fn respond<B: Backend + ?Sized>(
    backend: &B,
    parts: &Parts,
    body: &[u8],
) -> Response<Full<Bytes>> {
    with_date(route(backend, parts, body), backend.now())
}

fn route<B: Backend + ?Sized>(backend: &B, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let endpoint = Endpoint::of(&parts.method, parts.uri.path());
    if endpoint == Endpoint::Outside {
        return ApiError::NO_ROUTE.response();
    }
    if !has_application(&parts.headers) {
        return ApiError::MISSING_APPLICATION.response();
    }
    let authorized =
        || bearer_token(&parts.headers).is_some_and(|token| backend.token_valid(token));
    match endpoint {
        Endpoint::Login => login(backend, body),
        Endpoint::GetOrder { .. } | Endpoint::Notifications { .. } if !authorized() => {
            ApiError::UNAUTHORIZED.response()
        }
        Endpoint::GetOrder { order } => match backend.order(order) {
            Some(body) => json_response(200, body, &[]),
            None => ApiError::ORDER_NOT_FOUND.response(),
        },
        Endpoint::Notifications { order, item } => backend.notify(order, item),
        Endpoint::WrongMethod { allow } => method_not_allowed(allow),
        Endpoint::Outside | Endpoint::NoRoute => ApiError::NO_ROUTE.response(),
    }
}

/// `POST /login`: the three mandatory fields, the grant type, the credentials, then a token.
fn login<B: Backend + ?Sized>(backend: &B, body: &[u8]) -> Response<Full<Bytes>> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |name: &str| body.get(name).and_then(Value::as_str);
    let (Some(id), Some(secret), Some(grant)) = (
        field("client_id"),
        field("client_secret"),
        field("grant_type"),
    ) else {
        return ApiError::BAD_LOGIN_REQUEST.response();
    };
    if grant != "client_credentials" {
        return ApiError::UNSUPPORTED_GRANT.response();
    }
    let (want_id, want_secret) = backend.credentials();
    let id_ok = id.as_bytes().ct_eq(want_id.as_bytes());
    let secret_ok = secret.as_bytes().ct_eq(want_secret.as_bytes());
    if !bool::from(id_ok & secret_ok) {
        return ApiError::INVALID_CREDENTIALS.response();
    }
    json_response(200, backend.issue_token().body(), &[])
}

/// Whether `X-Musement-Application` is there and not blank.
fn has_application(headers: &HeaderMap) -> bool {
    headers
        .get("x-musement-application")
        .is_some_and(|value| !value.as_bytes().trim_ascii().is_empty())
}

/// The token of an `Authorization: Bearer …` header (the scheme in any case).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fixtures/musement/{name}` as JSON: the bodies the client tests and the README document.
    fn fixture(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_error_bodies_are_the_fixtures() {
        let cases = [
            (
                ApiError::MISSING_APPLICATION,
                include_str!("../../../fixtures/musement/error-missing-application.json"),
            ),
            (
                ApiError::BAD_LOGIN_REQUEST,
                include_str!("../../../fixtures/musement/error-bad-login-request.json"),
            ),
            (
                ApiError::INVALID_CREDENTIALS,
                include_str!("../../../fixtures/musement/error-invalid-credentials.json"),
            ),
            (
                ApiError::UNAUTHORIZED,
                include_str!("../../../fixtures/musement/error-unauthorized.json"),
            ),
            (
                ApiError::ORDER_NOT_FOUND,
                include_str!("../../../fixtures/musement/error-not-found.json"),
            ),
        ];
        for (error, text) in cases {
            let body: Value = serde_json::from_str(&error.body()).unwrap();
            assert_eq!(body, fixture(text), "{error:?}");
        }
    }

    #[test]
    fn the_login_grant_is_the_fixture() {
        let grant = Grant {
            access_token: "token-1".into(),
            expires_in: 3600,
        };
        let body: Value = serde_json::from_str(&grant.body()).unwrap();
        assert_eq!(
            body,
            fixture(include_str!("../../../fixtures/musement/login-ok.json"))
        );
    }

    #[test]
    fn endpoints_are_found_by_method_and_path() {
        let of = |method: Method, path| Endpoint::of(&method, path);
        assert_eq!(of(Method::POST, "/api/v3/login"), Endpoint::Login);
        assert_eq!(
            of(Method::GET, "/api/v3/login"),
            Endpoint::WrongMethod { allow: "POST" }
        );
        assert_eq!(
            of(Method::GET, "/api/v3/orders/abc"),
            Endpoint::GetOrder { order: "abc" }
        );
        assert_eq!(
            of(Method::DELETE, "/api/v3/orders/abc"),
            Endpoint::WrongMethod { allow: "GET" }
        );
        assert_eq!(
            of(Method::POST, "/api/v3/orders/o/items/i/notifications"),
            Endpoint::Notifications {
                order: "o",
                item: "i"
            }
        );
        assert_eq!(
            of(Method::GET, "/api/v3/orders/o/items/i/notifications"),
            Endpoint::WrongMethod { allow: "POST" }
        );
        assert_eq!(of(Method::GET, "/api/v3/orders/a/b"), Endpoint::NoRoute);
        assert_eq!(of(Method::POST, "/api/v3//login"), Endpoint::NoRoute);
        assert_eq!(of(Method::POST, "/api/v3x/login"), Endpoint::NoRoute);
        assert_eq!(of(Method::POST, "/api/v3"), Endpoint::NoRoute);
        assert_eq!(of(Method::POST, "/login"), Endpoint::Outside);
    }

    #[test]
    fn a_bearer_token_is_read_in_any_case_of_the_scheme() {
        let headers = |value: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(
                hyper::header::AUTHORIZATION,
                HeaderValue::from_static(value),
            );
            map
        };
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
