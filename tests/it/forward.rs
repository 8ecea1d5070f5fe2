//! Signed webhooks out (issue 18), what is built so far: one delivery attempt from
//! `orderwatch::forward` to a real HTTP receiver in this process, which verifies every
//! signature with the specification's own `standardwebhooks` crate (never with our signing
//! code), and what each kind of answer means for the delivery.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderwatch::forward::attempt::{Attempt, Sender, destination_url};
use orderwatch::forward::message;
use orderwatch::forward::signature::SigningSecret;
use orderwatch::store::inspect::Change;

use crate::helpers::hooks::secret;

/// What the receiver answers, one per request in order (200 once they run out).
#[derive(Clone)]
enum Answer {
    Status(u16),
    WithRetryAfter(u16, &'static str),
    RedirectTo(String),
    Slow(Duration),
}

/// What the receiver saw: per request, whether each of its secrets verified it, and the body.
#[derive(Default)]
struct Seen {
    requests: Vec<(Vec<bool>, serde_json::Value)>,
}

#[derive(Clone)]
struct Receiver {
    secrets: Arc<Vec<String>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Seen>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let verified = receiver
        .secrets
        .iter()
        .map(|secret| {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(&body, &headers)
                .is_ok()
        })
        .collect();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    receiver
        .seen
        .lock()
        .unwrap()
        .requests
        .push((verified, json));
    let answer = receiver.answers.lock().unwrap().pop_front();
    match answer {
        None | Some(Answer::Status(200)) => StatusCode::OK.into_response(),
        Some(Answer::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Answer::WithRetryAfter(code, after)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
        )
            .into_response(),
        Some(Answer::RedirectTo(location)) => {
            (StatusCode::FOUND, [("location", location)]).into_response()
        }
        Some(Answer::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

/// A receiver on `127.0.0.1:0` that knows `secrets` and answers `answers`.
async fn start_receiver(secrets: &[String], answers: Vec<Answer>) -> (SocketAddr, Receiver) {
    let receiver = Receiver {
        secrets: Arc::new(secrets.to_vec()),
        answers: Arc::new(Mutex::new(answers.into())),
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, receiver)
}

fn change() -> Change {
    Change {
        id: 42,
        cursor: "42".into(),
        item: crate::helpers::uuid(1, 42),
        order: crate::helpers::uuid(2, 42),
        old_status: Some("PENDING".into()),
        new_status: "OK".into(),
        version: Some(2),
        source: "webhook".into(),
        as_of: "2026-12-07T10:00:00.000Z".into(),
        received_at: "2026-12-07T10:00:01.000Z".into(),
    }
}

/// Sends the delivery of [`change`] to `addr`'s `/hooks`, signed with `secrets`.
async fn send(addr: SocketAddr, secrets: &str, timeout: Duration) -> Attempt {
    let url = destination_url(&format!("http://{addr}/hooks?source=orderwatch")).unwrap();
    let sender = Sender::new(url, timeout).unwrap();
    let secrets = SigningSecret::parse_all(secrets).unwrap();
    let change = change();
    let vouchers = ["https://example.com/voucher/42".to_owned()];
    sender
        .send(
            &secrets,
            &message::id(&change),
            message::body(&change, &vouchers).into_bytes(),
            chrono::Utc::now(),
        )
        .await
}

#[tokio::test]
async fn a_delivery_verifies_with_each_secret_and_carries_the_change() {
    let (old, new, stranger) = (secret(3, 32), secret(4, 24), secret(5, 32));
    let (addr, receiver) = start_receiver(&[old.clone(), new.clone(), stranger], vec![]).await;
    let attempt = send(addr, &format!("{old} {new}"), Duration::from_secs(5)).await;
    assert_eq!(attempt, Attempt::Delivered { status: 200 });
    let seen = receiver.seen.lock().unwrap();
    let (verified, body) = &seen.requests[0];
    assert_eq!(
        verified,
        &[true, true, false],
        "old, new: yes; a stranger's: no"
    );
    assert_eq!(body["type"], "order_item.status_changed");
    assert_eq!(body["data"]["item"], change().item);
    assert_eq!(body["data"]["new_status"], "OK");
    assert_eq!(body["data"]["cursor"], "42");
    assert_eq!(
        body["data"]["vouchers"][0],
        "https://example.com/voucher/42"
    );
}

#[tokio::test]
async fn each_answer_means_delivered_gone_or_try_again() {
    let key = secret(7, 32);
    let (elsewhere, other) = start_receiver(std::slice::from_ref(&key), vec![]).await;
    let (addr, receiver) = start_receiver(
        std::slice::from_ref(&key),
        vec![
            Answer::Status(204),
            Answer::Status(410),
            Answer::WithRetryAfter(503, "7"),
            Answer::Status(400),
            Answer::RedirectTo(format!("http://{elsewhere}/hooks")),
            Answer::Slow(Duration::from_secs(3)),
        ],
    )
    .await;
    let timeout = Duration::from_millis(500);
    assert_eq!(
        send(addr, &key, timeout).await,
        Attempt::Delivered { status: 204 }
    );
    assert_eq!(send(addr, &key, timeout).await, Attempt::Gone);
    let Attempt::Failed {
        status: Some(503),
        retry_after: Some(after),
        ..
    } = send(addr, &key, timeout).await
    else {
        panic!("a 503 with Retry-After is a failure with advice");
    };
    assert_eq!(after, Duration::from_secs(7));
    let Attempt::Failed {
        status: Some(400),
        retry_after: None,
        ..
    } = send(addr, &key, timeout).await
    else {
        panic!("a 400 is a failure to retry");
    };
    let Attempt::Failed {
        status: Some(302),
        reason,
        ..
    } = send(addr, &key, timeout).await
    else {
        panic!("a redirect is a failure");
    };
    assert!(reason.contains("redirects are not followed"), "{reason}");
    assert!(
        other.seen.lock().unwrap().requests.is_empty(),
        "nothing is posted where a redirect points"
    );
    let Attempt::Failed {
        status: None,
        reason,
        ..
    } = send(addr, &key, timeout).await
    else {
        panic!("a slow receiver is a failure");
    };
    assert!(reason.starts_with("no answer in time"), "{reason}");
    assert_eq!(receiver.seen.lock().unwrap().requests.len(), 6);

    // Nobody listening: a failure, not a panic.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let Attempt::Failed { status: None, .. } = send(closed, &key, timeout).await else {
        panic!("a refused connection is a failure");
    };
}

#[test]
fn destination_urls_are_checked_like_the_musement_base_url() {
    let url = destination_url("https://hooks.example.com/orderwatch?key=a").unwrap();
    assert_eq!(url.query(), Some("key=a"), "a query is kept");
    assert!(destination_url("http://127.0.0.1:9000/hooks").is_ok());
    for (text, words) in [
        (
            "http://hooks.example.com/orderwatch",
            "plain http:// is allowed only",
        ),
        (
            "https://user:hunter2@hooks.example.com/",
            "must not contain user info",
        ),
        (
            "https://hooks.example.com/#part",
            "must not have a fragment",
        ),
        (
            "ftp://hooks.example.com/",
            "must be an http:// or https:// URL",
        ),
    ] {
        let reason = destination_url(text).unwrap_err();
        assert!(reason.contains(words), "{text}: {reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}
