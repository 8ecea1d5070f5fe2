//! `musement-sim` speaks what orderwatch expects of Musement: our own client parses its orders
//! (statuses, vouchers once OK, `max_confirmation_time`, the `Date` header), its tokens expire
//! into 401s, a missing `X-Musement-Application` is a 400 with code 2271, and
//! `POST …/notifications` re-sends an item's current webhook to the receiver.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderwatch::clock::SystemClock;
use orderwatch::config::Secret;
use orderwatch::metrics::{ApiCallLabels, Metrics};
use orderwatch::musement::{MusementClient, MusementSettings};
use orderwatch::observation::Status;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::process::{KillOnDrop, signal, wait_bounded};
use crate::helpers::{free_port, http_client, json_of, spawn_app_with};

const SECRET: &str = "simulator-test-secret";

#[tokio::test]
async fn the_simulator_speaks_the_documented_api_and_resends_webhooks() {
    let app = spawn_app_with(
        "[server.auth]\nusername = \"musement\"\npassword = \"sim-test-pw\"\n[store]\nskew_margin = \"1s\"\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.json");
    let port = free_port();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_musement-sim"))
        .args([
            "--seed",
            "11",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--orders",
            "3",
            "--items",
            "5",
            "--create-over",
            "0ms",
            "--mix",
            "instant=1",
            "--instant-delay",
            "10ms",
            "--webhook-url",
            &app.url("/webhooks/musement"),
            "--webhook-user",
            "musement",
            "--token-ttl",
            "1s",
            "--linger",
            "forever",
            "--truth",
            truth_path.to_str().unwrap(),
        ])
        .env("MUSEMENT_SIM_CLIENT_SECRET", SECRET)
        .env("MUSEMENT_SIM_WEBHOOK_PASSWORD", "sim-test-pw")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sim.stdout.take().unwrap();
    let mut sim = KillOnDrop(sim);
    let orders: Vec<Uuid> = BufReader::new(stdout)
        .lines()
        .take(3)
        .map(|line| Uuid::parse_str(&line.unwrap()).unwrap())
        .collect();
    let truth = wait_settled(&truth_path).await;
    assert_eq!(truth["items"].as_array().unwrap().len(), 5);
    let base = format!("http://127.0.0.1:{port}/api/v3");

    // Our own client: login, then each order as the reconciler sees it. (Its metrics count
    // the 401s it meets, should a one-second token expire between its login and its GET.)
    let client_metrics = Arc::new(Metrics::new());
    let client = MusementClient::new(
        MusementSettings {
            base_url: base.clone(),
            application: "sim-test".into(),
            version: "3.4.0".into(),
            accept_language: "en-US".into(),
            client_id: "sim-client".into(),
            client_secret: Secret::new(SECRET),
            request_timeout: Duration::from_secs(10),
        },
        Arc::new(SystemClock),
        client_metrics.clone(),
    )
    .unwrap();
    let mut seen_items = 0;
    for order in &orders {
        let polled = client.get_order(*order).await.unwrap();
        assert!(polled.server_time.is_some(), "a Date header");
        assert!(polled.identifier.as_deref().unwrap().starts_with("MUS"));
        for item in &polled.items {
            seen_items += 1;
            assert_eq!(item.status, Status::Ok);
            assert_eq!(item.max_confirmation_time.as_deref(), Some("P0D"));
            assert_eq!(item.vouchers.len(), 1, "vouchers once OK");
        }
    }
    assert_eq!(seen_items, 5);

    // Raw HTTP: the headers and status codes the reference documents.
    let http = http_client();
    let login = json!({ "client_id": "sim-client", "client_secret": SECRET, "grant_type": "client_credentials" });
    let no_application = http
        .post(format!("{base}/login"))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(no_application.status(), 400);
    assert_eq!(
        no_application.json::<Value>().await.unwrap()["code"],
        "2271"
    );
    let wrong = json!({ "client_id": "sim-client", "client_secret": "nope", "grant_type": "client_credentials" });
    let wrong = login_request(&http, &base, &wrong).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let grant = json_of(login_request(&http, &base, &login)).await;
    assert_eq!(grant["expires_in"], 1);
    // Tokens live one second: each request below logs in just before it, and again should the
    // machine stall past that second (a 401, counted for the simulator's ledger).
    let unknown = with_fresh_token(&http, &base, |token| {
        http.get(format!("{base}/orders/{}", Uuid::nil()))
            .header("x-musement-application", "sim-test")
            .bearer_auth(token)
    })
    .await;
    assert_eq!(unknown.response.status(), 404);

    // Re-send one item's webhook: orderwatch records it (as a duplicate of what it has).
    let item = truth["items"][0]["item"].as_str().unwrap();
    let order = truth["items"][0]["order"].as_str().unwrap();
    let events = || app.count(&format!("item_events WHERE item_uuid = '{item}'"));
    let before = events();
    let resend = with_fresh_token(&http, &base, |token| {
        http.post(format!("{base}/orders/{order}/items/{item}/notifications"))
            .header("x-musement-application", "sim-test")
            .bearer_auth(token)
    })
    .await;
    assert_eq!(resend.response.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while events() == before {
        assert!(
            Instant::now() < deadline,
            "the re-sent webhook never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The token that just worked expires after its lifetime: 401, as Musement answers an
    // expired token. Waited for, not slept for: it works until it does not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http
            .get(format!("{base}/orders/{}", orders[0]))
            .header("x-musement-application", "sim-test")
            .bearer_auth(&resend.token)
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            401 => break,
            200 => {}
            other => panic!("a GET with a token answered {other}"),
        }
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client_401s = client_metrics
        .api_calls
        .get_or_create(&ApiCallLabels {
            endpoint: "order",
            code: "401".into(),
        })
        .get();
    // The simulator counts every 401 it gave for an order: the expiry above, and any met on
    // the way by a request that then logged in again.
    let order_401s = 1 + unknown.expired_on_the_way + client_401s;

    signal(sim.id(), "TERM");
    assert_eq!(sim.wait().unwrap().code(), Some(0));
    let finished: Value = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    assert_eq!(finished["phase"], "finished");
    assert_eq!(finished["webhooks"]["resend_requests"], 1);
    assert_eq!(finished["api"]["get_order"]["404"], 1);
    assert_eq!(finished["api"]["get_order"]["401"], order_401s);
}

/// An answer got with a fresh token.
struct Fresh {
    /// The answer.
    response: reqwest::Response,
    /// The token it was sent with.
    token: String,
    /// 401s met first, each from a token that expired before it was used.
    expired_on_the_way: u64,
}

/// `POST {base}/login` with `body`, as our application.
fn login_request(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::RequestBuilder {
    http.post(format!("{base}/login"))
        .header("x-musement-application", "sim-test")
        .json(body)
}

/// Logs in to the simulator at `base` and sends what `request` builds with the token; on a 401
/// (the machine stalled past the token's second) logs in and tries again, up to 20 times.
async fn with_fresh_token(
    http: &reqwest::Client,
    base: &str,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Fresh {
    let login = json!({ "client_id": "sim-client", "client_secret": SECRET, "grant_type": "client_credentials" });
    for expired_on_the_way in 0..20 {
        let grant = json_of(login_request(http, base, &login)).await;
        let token = grant["access_token"].as_str().unwrap().to_owned();
        let response = request(&token).send().await.unwrap();
        if response.status() != 401 {
            return Fresh {
                response,
                token,
                expired_on_the_way,
            };
        }
    }
    panic!("every fresh token was refused");
}

async fn wait_settled(path: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(truth) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|t| t["phase"] == "settled")
        {
            return truth;
        }
        assert!(Instant::now() < deadline, "the simulator never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn out_of_range_flags_are_one_line_errors_naming_the_flag() {
    let huge = usize::MAX.to_string();
    let cases: [(&str, &[&str]); 5] = [
        ("--mix", &["--mix", "instant=4294967295,ko=1"]),
        ("--orders", &["--orders", &huge]),
        ("--items", &["--items", &huge]),
        (
            "--max-confirmation-time",
            &["--max-confirmation-time", "30 minutes"],
        ),
        (
            "--max-confirmation-time",
            &["--max-confirmation-time", "PT30Mxyz"],
        ),
    ];
    for (flag, args) in cases {
        // A small quick world otherwise, so a flag that slipped through ends the run soon.
        let mut sim = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_musement-sim"))
                .args([
                    "--orders",
                    "1",
                    "--create-over",
                    "0ms",
                    "--mix",
                    "instant=1",
                ])
                .args(["--instant-delay", "0ms", "--linger", "0s"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = wait_bounded(&mut sim, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?}: still running"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut sim.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("musement-sim: {flag}: ")),
            "{args:?}: {stderr}"
        );
    }
}
