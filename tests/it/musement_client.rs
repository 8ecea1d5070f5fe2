//! `orderwatch::musement::MusementClient` over real HTTP against the fake Musement API: login and
//! token caching, renewal on the injected clock, 401 handling, error classification, lenient
//! parsing, and that neither personal data nor credentials leak.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderwatch::clock::{Clock, ManualClock, SystemClock};
use orderwatch::musement::{ApiError, MusementClient, MusementSettings, PolledOrder};
use orderwatch::observation::Status;
use uuid::Uuid;

use crate::helpers::fake_musement::{
    CLIENT_ID, CLIENT_SECRET, FakeMusement, FakeResponse, PERSONAL_VALUES, fixture, fixture_json,
    new_uuid, order_json, voucher_url,
};
use crate::helpers::{free_port, http_client, json_of};

/// The order in `fixtures/musement/order-two-items.json` (reference §9) and its items.
const FIXTURE_ORDER: &str = "bf464161-f03a-449e-ac82-566721c0e6b4";
const FIXTURE_PENDING_ITEM: &str = "8b742505-38c7-4bed-9bf5-468a3e7cc731";
const FIXTURE_OK_ITEM: &str = "5c0d3e2a-7f41-4b9e-8a26-1d9f0b7c4e55";

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

fn client_with(settings: MusementSettings) -> MusementClient {
    MusementClient::new(settings, Arc::new(SystemClock), Arc::default()).unwrap()
}

/// A fake serving the §9 fixture order, and a client for it.
async fn fixture_setup() -> (FakeMusement, MusementClient, Uuid) {
    let fake = FakeMusement::start().await;
    fake.put_order(fixture_json("order-two-items.json"));
    let client = client_with(fake.settings());
    (fake, client, uuid(FIXTURE_ORDER))
}

/// A fake with one generated order of one `PENDING` item, and a client using `clock`.
async fn generated_setup(clock: Arc<dyn Clock>) -> (FakeMusement, MusementClient, Uuid) {
    let fake = FakeMusement::start().await;
    let order = new_uuid();
    fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));
    let client = MusementClient::new(fake.settings(), clock, Arc::default()).unwrap();
    (fake, client, order)
}

fn orders_path(order: Uuid) -> String {
    format!("/orders/{order}")
}

#[tokio::test]
async fn login_then_get_returns_the_parsed_order() {
    let (fake, client, order) = fixture_setup().await;
    let polled = client.get_order(order).await.unwrap();

    assert_eq!(polled.uuid, order);
    assert_eq!(polled.identifier.as_deref(), Some("MUS0738876"));
    assert_eq!(polled.status.as_deref(), Some("PENDING"));
    assert_eq!(
        polled.date,
        Some("2018-08-17T15:59:43Z".parse::<DateTime<Utc>>().unwrap())
    );
    assert!(polled.server_time.is_some(), "the fake always sends Date");
    assert_eq!(polled.items.len(), 2);

    let pending = &polled.items[0];
    assert_eq!(pending.uuid, uuid(FIXTURE_PENDING_ITEM));
    assert_eq!(pending.status, Status::Pending);
    assert_eq!(pending.max_confirmation_time.as_deref(), Some("PT30M"));
    assert_eq!(pending.product_date.as_deref(), Some("2018-09-01 15:30"));
    assert_eq!(
        pending.product_title.as_deref(),
        Some("Exclusive skip-the-line guided visit of Leonardo da Vinci's vineyard")
    );
    assert_eq!(pending.product_id.as_deref(), Some("434696106"));
    assert!(pending.vouchers.is_empty());

    let ok = &polled.items[1];
    assert_eq!(ok.uuid, uuid(FIXTURE_OK_ITEM));
    assert_eq!(ok.status, Status::Ok);
    assert_eq!(ok.max_confirmation_time.as_deref(), Some("P0D"));
    assert_eq!(ok.product_date.as_deref(), Some("2018-09-02 10:00"));
    assert_eq!(ok.product_id.as_deref(), Some("434696107"));
    assert_eq!(
        ok.vouchers,
        vec![
            "https://sandbox.musement.com/voucher/view/92a1c3d4-ba5d-496f-9149-9d846e70ba87?pdf=1"
        ]
    );

    assert_eq!(client.logins(), 1);
    assert_eq!(fake.count("POST", "/login"), 1);
    assert_eq!(fake.gets(order), 1);
}

#[tokio::test]
async fn every_request_carries_the_required_headers() {
    let (fake, client, order) = fixture_setup().await;
    client.get_order(order).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let user_agent = format!("orderwatch/{}", env!("CARGO_PKG_VERSION"));
    for request in &requests {
        assert_eq!(
            request.header("x-musement-application"),
            Some("orderwatch-tests")
        );
        assert_eq!(request.header("x-musement-version"), Some("3.4.0"));
        assert_eq!(request.header("accept-language"), Some("en-US"));
        assert_eq!(request.header("accept"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some(user_agent.as_str()));
    }

    let (login, get) = (&requests[0], &requests[1]);
    assert_eq!(
        (login.method.as_str(), login.path.as_str()),
        ("POST", "/api/v3/login")
    );
    assert_eq!(login.header("authorization"), None);
    assert_eq!(
        login.json().unwrap(),
        serde_json::json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "client_credentials",
        })
    );
    assert_eq!(get.method, "GET");
    assert_eq!(get.path, format!("/api/v3/orders/{FIXTURE_ORDER}"));
    assert_eq!(get.header("authorization"), Some("Bearer token-1"));
}

#[tokio::test]
async fn a_trailing_slash_on_the_base_url_is_ignored() {
    let fake = FakeMusement::start().await;
    fake.put_order(fixture_json("order-two-items.json"));
    let mut settings = fake.settings();
    settings.base_url.push('/');
    client_with(settings)
        .get_order(uuid(FIXTURE_ORDER))
        .await
        .unwrap();
    assert_eq!(fake.requests()[0].path, "/api/v3/login");
}

/// Issue 11 defect #3: a `307` from `/login` to another origin (here another port) must not
/// make the client re-POST the login body, `client_secret` included, to that origin.
#[tokio::test]
async fn a_login_redirect_is_not_followed_so_the_secret_never_leaves_for_another_origin() {
    let (fake, client, order) = fixture_setup().await;
    let elsewhere = FakeMusement::start().await;
    let location = format!("{}/login", elsewhere.base_url());
    fake.push_response(
        "/login",
        FakeResponse::status(307).with_header("location", &location),
    );

    let answer = client.get_order(order).await;
    let received = elsewhere.requests();
    assert!(
        received.iter().all(|r| !r.body.contains(CLIENT_SECRET)),
        "the secret reached the other origin: {received:?}"
    );
    assert!(received.is_empty(), "{received:?}");
    let error = answer.unwrap_err();
    assert_eq!(error.kind(), "redirected", "{error:?}");
    let text = error.to_string();
    assert!(text.contains("307") && text.contains(&location), "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    assert!(!error.is_transient(), "a redirect needs a person: {error}");
    assert_eq!(fake.count("POST", "/login"), 1);
    assert_eq!(fake.gets(order), 0, "no token, no GET");
}

/// Issue 11 defect #3: a 3xx from `GET /orders/{uuid}` is a failed call naming the `Location`;
/// the other host is never asked, so its answer can never pass for Musement's.
#[tokio::test]
async fn an_order_redirect_is_not_followed_and_names_its_location() {
    let (fake, client, order) = fixture_setup().await;
    let elsewhere = FakeMusement::start().await;
    elsewhere.put_order(fixture_json("order-two-items.json"));
    for status in [301, 302, 303, 307, 308] {
        let location = format!("{}/orders/{order}?via={status}", elsewhere.base_url());
        fake.push_response(
            &orders_path(order),
            FakeResponse::status(status).with_header("location", &location),
        );
        let answer = client.get_order(order).await;
        assert!(
            elsewhere.requests().is_empty(),
            "HTTP {status} was followed: {:?}",
            elsewhere.requests()
        );
        let error = answer.unwrap_err();
        assert_eq!(error.kind(), "redirected", "{status}: {error:?}");
        let text = error.to_string();
        assert!(
            text.contains(&status.to_string()) && text.contains(&location),
            "{text}"
        );
        assert!(!text.contains("token-1"), "{text}");
    }
    // Without a Location the error still says what happened.
    fake.push_response(&orders_path(order), FakeResponse::status(302));
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(error.kind(), "redirected", "{error:?}");
    assert!(error.to_string().contains("no Location"), "{error}");
    // Nothing else was wrong: the next call is served normally, with the same token.
    client.get_order(order).await.unwrap();
    assert_eq!(fake.count("POST", "/login"), 1);
}

#[tokio::test]
async fn the_token_is_cached_across_calls() {
    let (fake, client, order) = fixture_setup().await;
    for _ in 0..4 {
        client.get_order(order).await.unwrap();
    }
    assert_eq!(client.logins(), 1);
    assert_eq!(fake.count("POST", "/login"), 1);
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.header("authorization") == Some("Bearer token-1"))
    );
}

/// A token lifetime (`expires_in`) and when the client must renew it: at `expires_in` minus
/// min(60 s, a tenth of it).
struct Renewal {
    /// Names the row in every assertion message.
    name: &'static str,
    /// `expires_in`, in seconds.
    lifetime: u64,
    /// Seconds after the login at which the token is renewed.
    renewed_at: i64,
}

#[tokio::test]
async fn the_token_is_renewed_just_before_it_expires() {
    let rows = [
        Renewal {
            name: "600 s lifetime: renewed min(60, 600/10) = 60 s early",
            lifetime: 600,
            renewed_at: 540,
        },
        Renewal {
            name: "100 s lifetime: the margin is 10 s (a tenth), not 60 s",
            lifetime: 100,
            renewed_at: 90,
        },
    ];
    for row in rows {
        let name = row.name;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (fake, client, order) = generated_setup(clock.clone()).await;
        fake.set_token_lifetime(row.lifetime);
        client.get_order(order).await.unwrap();

        clock.advance(chrono::Duration::seconds(row.renewed_at - 1));
        client.get_order(order).await.unwrap();
        assert_eq!(
            client.logins(),
            1,
            "{name}: still valid one second before the margin"
        );

        clock.advance(chrono::Duration::seconds(1));
        client.get_order(order).await.unwrap();
        assert_eq!(
            client.logins(),
            2,
            "{name}: renewed at expires_in minus the margin"
        );
        let last = fake.requests().pop().unwrap();
        assert_eq!(
            last.header("authorization"),
            Some("Bearer token-2"),
            "{name}"
        );
        assert_eq!(
            fake.gets(order),
            3,
            "{name}: no request was refused on the way"
        );
    }
}

#[tokio::test]
async fn a_revoked_token_means_one_relogin_and_one_retry() {
    let (fake, client, order) = fixture_setup().await;
    client.get_order(order).await.unwrap();
    fake.revoke_tokens();

    let polled = client.get_order(order).await.unwrap();
    assert_eq!(polled.uuid, order);
    assert_eq!(client.logins(), 2);
    // First GET, then the refused one, then the retry with the new token.
    assert_eq!(fake.gets(order), 3);
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer token-2"));
}

#[tokio::test]
async fn a_401_right_after_a_fresh_login_is_unauthorized() {
    let (fake, client, order) = fixture_setup().await;
    for _ in 0..2 {
        fake.push_response(
            &orders_path(order),
            FakeResponse::fixture(401, "error-unauthorized.json"),
        );
    }
    let error = client.get_order(order).await.unwrap_err();
    let ApiError::Unauthorized { message } = &error else {
        panic!("expected Unauthorized, got {error:?}");
    };
    assert!(
        message.contains("Invalid or expired access token"),
        "{message}"
    );
    assert!(!error.is_transient());
    assert_eq!(client.logins(), 2, "one login, one re-login, no more");
    assert_eq!(fake.gets(order), 2, "retried once only");
}

#[tokio::test]
async fn a_refused_login_is_unauthorized() {
    let fake = FakeMusement::start().await;
    let mut settings = fake.settings();
    settings.client_secret = orderwatch::config::Secret::new("wrong-secret");
    let client = client_with(settings);

    let error = client.get_order(new_uuid()).await.unwrap_err();
    let ApiError::Unauthorized { message } = &error else {
        panic!("expected Unauthorized, got {error:?}");
    };
    assert!(message.contains("login refused (HTTP 401)"), "{message}");
    assert!(message.contains("Invalid client credentials"), "{message}");
    assert!(!error.to_string().contains("wrong-secret"));
    assert_eq!(client.logins(), 0);
    assert_eq!(fake.count("GET", ""), 0, "no GET without a token");

    // 400 and 403 from /login are credential problems too.
    for status in [400, 403] {
        let fake = FakeMusement::start().await;
        fake.push_response("/login", FakeResponse::status(status));
        let error = client_with(fake.settings())
            .get_order(new_uuid())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ApiError::Unauthorized { .. }),
            "{status}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_failing_login_is_classified_like_any_request() {
    let fake = FakeMusement::start().await;
    fake.push_response(
        "/login",
        FakeResponse::fixture(503, "error-service-unavailable.json")
            .with_header("retry-after", "3"),
    );
    let client = client_with(fake.settings());
    let error = client.get_order(new_uuid()).await.unwrap_err();
    assert_eq!(
        error,
        ApiError::Server {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
        }
    );
    assert!(error.is_transient());
}

/// `calls` polls of `order` at once, on tasks of their own; each must succeed.
async fn get_at_once(client: &MusementClient, order: Uuid, calls: usize) {
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_order(order).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_without_a_token_share_one_login() {
    let (fake, client, order) = generated_setup(Arc::new(SystemClock)).await;
    // Latency keeps the login in flight while the other callers arrive.
    fake.set_latency(Duration::from_millis(50));
    get_at_once(&client, order, 16).await;
    assert_eq!(client.logins(), 1);
    assert_eq!(fake.count("POST", "/login"), 1);
    assert_eq!(fake.gets(order), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_hit_by_a_revocation_share_one_relogin() {
    let (fake, client, order) = generated_setup(Arc::new(SystemClock)).await;
    client.get_order(order).await.unwrap();
    fake.revoke_tokens();
    fake.set_latency(Duration::from_millis(50));
    get_at_once(&client, order, 16).await;
    assert_eq!(client.logins(), 2, "one initial login, one shared re-login");
}

#[tokio::test]
async fn an_unknown_order_is_not_found() {
    let (fake, client, _) = fixture_setup().await;
    let error = client.get_order(new_uuid()).await.unwrap_err();
    assert_eq!(error, ApiError::NotFound);
    assert!(!error.is_transient());
    assert_eq!(client.logins(), 1, "a 404 is not a token problem");
    drop(fake);
}

#[tokio::test]
async fn a_429_is_rate_limited_with_its_retry_after() {
    let (fake, client, order) = fixture_setup().await;
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(429).with_header("Retry-After", "7"),
    );
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(
        error,
        ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(error.is_transient());
    // Nothing more is sent until the wait is over (see
    // `after_a_429_no_request_leaves_until_retry_after_has_passed`).
    let sent = fake.requests().len();
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(error.kind(), "paused", "{error:?}");
    assert_eq!(fake.requests().len(), sent);
}

/// Issue 11 defect #8: after a 429 with `Retry-After`, no request of any kind (another order's
/// GET, a login) leaves the client until the wait has passed on its clock.
#[tokio::test]
async fn after_a_429_no_request_leaves_until_retry_after_has_passed() {
    let now = "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let (fake, client, order) = generated_setup(clock.clone()).await;
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(429).with_header("Retry-After", "30"),
    );
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(error.kind(), "rate_limited", "{error:?}");
    let sent = fake.requests().len();
    assert_eq!(sent, 2, "a login and the GET");

    // Another order, with the token revoked so a login would be needed: nothing is sent.
    fake.revoke_tokens();
    let other = new_uuid();
    let error = client.get_order(other).await.unwrap_err();
    assert_eq!(fake.requests().len(), sent, "{:?}", fake.requests());
    assert_eq!(error.kind(), "paused", "{error:?}");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("2024-05-01T12:00:30Z"),
        "{error}"
    );
    clock.advance(chrono::Duration::seconds(29));
    client.get_order(order).await.unwrap_err();
    assert_eq!(fake.requests().len(), sent);

    // The wait is over: the refused token leads to a login, then the GET.
    clock.advance(chrono::Duration::seconds(1));
    client.get_order(order).await.unwrap();
    assert_eq!(fake.count("POST", "/login"), 2);
}

/// Issue 11 defect #8: which answers pause the client, and for how long. A 503 pauses only
/// with a `Retry-After`, a 429 always (30 s without one), a 429 from the login too, and an
/// absurd wait is capped at an hour.
#[tokio::test]
async fn pauses_follow_429_and_503_with_retry_after_and_are_capped_at_an_hour() {
    let now = "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let (fake, client, order) = generated_setup(clock.clone()).await;
    let after = |seconds: i64| Some(now + chrono::Duration::seconds(seconds));

    fake.push_response(&orders_path(order), FakeResponse::status(503));
    client.get_order(order).await.unwrap_err();
    assert_eq!(client.paused_until(), None, "a 503 without Retry-After");

    fake.push_response(
        &orders_path(order),
        FakeResponse::status(503).with_header("Retry-After", "5"),
    );
    client.get_order(order).await.unwrap_err();
    assert_eq!(client.paused_until(), after(5));

    clock.advance(chrono::Duration::seconds(5));
    assert_eq!(client.paused_until(), None, "the wait is over");
    fake.push_response(&orders_path(order), FakeResponse::status(429));
    client.get_order(order).await.unwrap_err();
    assert_eq!(
        client.paused_until(),
        after(35),
        "a 429 without Retry-After"
    );

    // A second client (fresh token, no pause) whose login is answered 429 with an absurd wait.
    let fresh = MusementClient::new(fake.settings(), clock.clone(), Arc::default()).unwrap();
    fake.push_response(
        "/login",
        FakeResponse::status(429).with_header("Retry-After", "10000000000000"),
    );
    let error = fresh.get_order(order).await.unwrap_err();
    assert_eq!(error.kind(), "rate_limited", "{error:?}");
    assert_eq!(fresh.paused_until(), after(5 + 3600), "capped at an hour");
    let logins = fake.count("POST", "/login");
    fresh.forget_login_failure().await;
    assert_eq!(fresh.get_order(order).await.unwrap_err().kind(), "paused");
    assert_eq!(
        fake.count("POST", "/login"),
        logins,
        "no login during the pause"
    );
}

#[tokio::test]
async fn a_retry_after_date_becomes_a_wait_on_the_injected_clock() {
    let now = "2024-05-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let (fake, client, order) = generated_setup(clock).await;
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(503).with_header("Retry-After", "Wed, 01 May 2024 12:00:30 GMT"),
    );
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn a_5xx_is_a_transient_server_error() {
    let (fake, client, order) = fixture_setup().await;
    fake.push_response(
        &orders_path(order),
        FakeResponse::fixture(503, "error-service-unavailable.json"),
    );
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(500).with_body("oops"),
    );
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(
        error,
        ApiError::Server {
            status: 503,
            retry_after: None
        }
    );
    assert!(error.is_transient());
    let error = client.get_order(order).await.unwrap_err();
    assert!(
        matches!(error, ApiError::Server { status: 500, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn another_status_is_unexpected_with_a_snippet() {
    let (fake, client, order) = fixture_setup().await;
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(418).with_body(r#"{"code":"418","message":"I'm a teapot"}"#),
    );
    let error = client.get_order(order).await.unwrap_err();
    let ApiError::UnexpectedStatus { status, snippet } = &error else {
        panic!("expected UnexpectedStatus, got {error:?}");
    };
    assert_eq!(*status, 418);
    assert!(snippet.contains("teapot"), "{snippet}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_a_timeout() {
    let fake = FakeMusement::start().await;
    fake.put_order(fixture_json("order-two-items.json"));
    let mut settings = fake.settings();
    settings.request_timeout = Duration::from_millis(200);
    let client = client_with(settings);
    let order = uuid(FIXTURE_ORDER);
    fake.push_response(
        &orders_path(order),
        FakeResponse::fixture(200, "order-two-items.json").delayed(Duration::from_secs(2)),
    );

    let started = Instant::now();
    let error = client.get_order(order).await.unwrap_err();
    assert_eq!(error, ApiError::Timeout);
    assert!(error.is_transient());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "gave up after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let port = free_port();
    let fake = FakeMusement::start().await;
    let mut settings = fake.settings();
    settings.base_url = format!("http://127.0.0.1:{port}/api/v3");
    let error = client_with(settings)
        .get_order(new_uuid())
        .await
        .unwrap_err();
    let ApiError::Connect(text) = &error else {
        panic!("expected Connect, got {error:?}");
    };
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_body_that_is_not_json_is_malformed_with_its_first_bytes() {
    let (fake, client, order) = fixture_setup().await;
    let body = fixture("order-malformed.json");
    fake.push_response(
        &orders_path(order),
        FakeResponse::status(200).with_body(body.clone()),
    );
    let error = client.get_order(order).await.unwrap_err();
    let ApiError::Malformed { reason, snippet } = &error else {
        panic!("expected Malformed, got {error:?}");
    };
    assert!(reason.starts_with("not JSON"), "{reason}");
    assert_eq!(snippet.as_str(), &body[..200]);
    assert!(!error.is_transient());
    assert!(!error.to_string().contains('\n'), "{error}");
}

#[tokio::test]
async fn a_missing_item_status_is_malformed_naming_the_field() {
    let (fake, client, order) = fixture_setup().await;
    fake.put_order(fixture_json("order-missing-item-status.json"));
    let error = client.get_order(order).await.unwrap_err();
    let ApiError::Malformed { reason, .. } = &error else {
        panic!("expected Malformed, got {error:?}");
    };
    assert_eq!(reason, "items[1].status: missing");
}

#[tokio::test]
async fn a_body_for_another_order_is_malformed() {
    let (fake, client, _) = fixture_setup().await;
    let asked = new_uuid();
    fake.push_response(
        &orders_path(asked),
        FakeResponse::fixture(200, "order-two-items.json"),
    );
    let error = client.get_order(asked).await.unwrap_err();
    assert!(
        matches!(&error, ApiError::Malformed { reason, .. } if reason.starts_with("uuid:")),
        "{error:?}"
    );
}

#[tokio::test]
async fn raw_items_carry_no_personal_data() {
    let fake = FakeMusement::start().await;
    let (order, pending, ok) = (new_uuid(), new_uuid(), new_uuid());
    let body = order_json(order, &[(pending, "PENDING"), (ok, "OK")]);
    for personal in PERSONAL_VALUES {
        assert!(
            body.to_string().contains(personal),
            "the fake order has {personal}"
        );
    }
    fake.put_order(body);
    let polled = client_with(fake.settings()).get_order(order).await.unwrap();

    for item in &polled.items {
        for banned in PERSONAL_VALUES.iter().chain(&[
            "participants_info",
            "extra_customer_data",
            "cancellation_additional_info",
            "customer",
        ]) {
            assert!(!item.raw.contains(banned), "{banned} in {}", item.raw);
        }
        let raw: serde_json::Value = serde_json::from_str(&item.raw).unwrap();
        assert_eq!(raw["uuid"], item.uuid.to_string());
        assert_eq!(raw["status"], item.status.as_str());
        assert!(raw["product"]["title"].is_string(), "{raw}");
        assert!(
            !item.raw.contains(": ") && !item.raw.contains('\n'),
            "compact: {}",
            item.raw
        );
    }
    assert_eq!(polled.items[1].vouchers, vec![voucher_url(ok)]);
    let everything = format!("{polled:?}");
    for personal in PERSONAL_VALUES {
        assert!(!everything.contains(personal), "{personal} in {everything}");
    }
}

#[tokio::test]
async fn server_time_is_the_date_header() {
    let (fake, client, order) = fixture_setup().await;
    let date = "2024-03-10T08:49:37Z".parse::<DateTime<Utc>>().unwrap();
    fake.set_date(Some(date));
    assert_eq!(
        client.get_order(order).await.unwrap().server_time,
        Some(date)
    );

    // No usable Date header: None, not an error.
    fake.push_response(
        &orders_path(order),
        FakeResponse::fixture(200, "order-two-items.json").with_header("date", "not a date"),
    );
    assert_eq!(client.get_order(order).await.unwrap().server_time, None);
}

#[tokio::test]
async fn set_item_status_changes_what_the_next_poll_sees() {
    let fake = FakeMusement::start().await;
    let (order, item) = (new_uuid(), new_uuid());
    fake.put_order(order_json(order, &[(item, "PENDING")]));
    let client = client_with(fake.settings());
    let before: PolledOrder = client.get_order(order).await.unwrap();
    assert_eq!(before.items[0].status, Status::Pending);
    assert!(before.items[0].vouchers.is_empty());

    fake.set_item_status(order, item, "OK");
    let after = client.get_order(order).await.unwrap();
    assert_eq!(after.items[0].status, Status::Ok);
    assert_eq!(after.items[0].vouchers, vec![voucher_url(item)]);
}

#[tokio::test]
async fn errors_never_show_the_secret_or_the_token() {
    let (fake, client, order) = fixture_setup().await;
    // A server that echoes credentials back, in every kind of error text.
    let echo = format!(r#"{{"message":"bad token-1 / {CLIENT_SECRET}"}}"#);
    for status in [400, 200, 401, 401] {
        let response = FakeResponse::status(status).with_body(echo.clone());
        fake.push_response(&orders_path(order), response);
    }
    let mut errors = Vec::new();
    for _ in 0..3 {
        errors.push(client.get_order(order).await.unwrap_err());
    }
    // A login refusal that echoes the secret, and a grant that is malformed but has a token.
    let fake = FakeMusement::start().await;
    let echo_secret = format!(r#"{{"message":"bad secret {CLIENT_SECRET}"}}"#);
    fake.push_response("/login", FakeResponse::status(401).with_body(echo_secret));
    fake.push_response(
        "/login",
        FakeResponse::status(200).with_body(r#"{"access_token":"token-9","expires_in":"later"}"#),
    );
    let client = client_with(fake.settings());
    errors.push(client.get_order(order).await.unwrap_err());
    client.forget_login_failure().await; // a refused login is otherwise answered from memory
    errors.push(client.get_order(order).await.unwrap_err());

    let kinds: Vec<_> = errors.iter().map(|e| format!("{e:?}")).collect();
    assert!(
        matches!(errors[0], ApiError::UnexpectedStatus { .. }),
        "{kinds:?}"
    );
    assert!(matches!(errors[1], ApiError::Malformed { .. }), "{kinds:?}");
    assert!(
        matches!(errors[2], ApiError::Unauthorized { .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(errors[3], ApiError::Unauthorized { .. }),
        "{kinds:?}"
    );
    assert!(matches!(errors[4], ApiError::Malformed { .. }), "{kinds:?}");
    for error in &errors {
        for text in [error.to_string(), format!("{error:?}")] {
            for secret in [CLIENT_SECRET, "token-1", "token-2", "token-9"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}

#[tokio::test]
async fn the_fake_validates_like_musement() {
    let fake = FakeMusement::start().await;
    let http = http_client();
    let url = |path: &str| format!("{}{path}", fake.base_url());
    let login = |body: serde_json::Value, application: bool| {
        let request = http.post(url("/login")).json(&body);
        if application {
            request.header("x-musement-application", "test")
        } else {
            request
        }
    };
    let good = serde_json::json!({
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_type": "client_credentials",
    });
    let code = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        (status, body["code"].as_str().unwrap().to_owned())
    };

    assert_eq!(
        code(login(good.clone(), false).send().await.unwrap()).await,
        (400, "2271".into())
    );
    let mut wrong_grant = good.clone();
    wrong_grant["grant_type"] = "password".into();
    assert_eq!(
        code(login(wrong_grant, true).send().await.unwrap()).await.0,
        400
    );
    assert_eq!(
        code(login(serde_json::json!([1]), true).send().await.unwrap())
            .await
            .0,
        400
    );
    let mut wrong_secret = good.clone();
    wrong_secret["client_secret"] = "nope".into();
    assert_eq!(
        code(login(wrong_secret, true).send().await.unwrap()).await,
        (401, "401".into())
    );

    let grant = json_of(login(good.clone(), true)).await;
    assert_eq!(grant["access_token"], "token-1");
    assert_eq!(grant["expires_in"], 3600);
    let grant = json_of(login(good, true)).await;
    assert_eq!(
        grant["access_token"], "token-2",
        "every login issues a new token"
    );

    let get = |path: &str, token: &str| {
        http.get(url(path))
            .header("x-musement-application", "test")
            .bearer_auth(token)
            .send()
    };
    let order = format!("/orders/{}", new_uuid());
    assert_eq!(
        code(get(&order, "token-404").await.unwrap()).await,
        (401, "401".into())
    );
    assert_eq!(
        code(get(&order, "token-1").await.unwrap()).await,
        (404, "1404".into())
    );
    assert_eq!(get("/nowhere", "token-1").await.unwrap().status(), 404);
    let garbage = http
        .request(
            reqwest::Method::PUT,
            format!("http://{}/\u{1F4A5}?x", fake.addr),
        )
        .body(vec![0xff_u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 404, "no panic, just a 404");
    assert_eq!(fake.tokens_issued(), 2);
    assert_eq!(fake.count("POST", "/login"), 6);
}
