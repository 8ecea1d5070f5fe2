//! Authorization headers beyond the ones `receiver.rs` covers.

use base64::Engine;

use crate::helpers::wire::{exchange, post};
use crate::helpers::{AUTH_CONFIG, GOOD_BASIC, spawn_app_with, valid_webhook};

#[tokio::test]
async fn garbled_authorization_headers_get_401() {
    let app = spawn_app_with(AUTH_CONFIG).await;
    let b64 = |text: &[u8]| base64::engine::general_purpose::STANDARD.encode(text);
    let good_b64 = b64(b"JohnSmith:Swordfish");
    let mut wrong: Vec<(&str, String)> = vec![
        ("empty value", String::new()),
        ("only spaces", "   ".into()),
        ("scheme glued to the token", format!("Basic{good_b64}")),
        ("tab instead of space", format!("Basic\t{good_b64}")),
        ("Digest scheme", format!("Digest {good_b64}")),
        (
            "base64 without padding",
            format!("Basic {}", good_b64.trim_end_matches('=')),
        ),
        (
            "base64url alphabet",
            format!(
                "Basic {}",
                b64(b"JohnSmith:Swordfish?>")
                    .replace('+', "-")
                    .replace('/', "_")
            ),
        ),
        (
            "trailing garbage after the token",
            format!("Basic {good_b64} x"),
        ),
        ("two tokens", format!("Basic {good_b64} {good_b64}")),
    ];
    // Well-formed `Basic` headers whose credentials are wrong.
    let wrong_credentials: [(&str, &[u8]); 10] = [
        ("empty user and password", b":"),
        ("empty password", b"JohnSmith:"),
        ("password prefix", b"JohnSmith:Swordfis"),
        ("password plus a byte", b"JohnSmith:Swordfish1"),
        ("password with a trailing newline", b"JohnSmith:Swordfish\n"),
        ("password with a trailing NUL", b"JohnSmith:Swordfish\0"),
        ("user in another case", b"johnsmith:Swordfish"),
        ("user and password swapped", b"Swordfish:JohnSmith"),
        ("extra colon part", b"JohnSmith:Swordfish:x"),
        ("8 KiB of base64", &[b'A'; 6 * 1024]),
    ];
    wrong.extend(
        wrong_credentials
            .iter()
            .map(|(case, raw)| (*case, format!("Basic {}", b64(raw)))),
    );
    for (case, value) in &wrong {
        let response = app
            .webhook_request()
            .header("authorization", value.as_str())
            .body(valid_webhook(1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case}: {value:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"orderwatch\""
        );
    }
    // Two Authorization headers: the first one decides (hyper's `get`). A wrong first header is
    // refused even when a right one follows.
    let request = post(
        &valid_webhook(1),
        &format!(
            "Authorization: Basic {}\r\nAuthorization: {GOOD_BASIC}\r\nConnection: close\r\n",
            b64(b"x:y")
        ),
    );
    let (answers, _) = exchange(app.addr, &request).await;
    assert_eq!(answers.first().map(|a| a.status), Some(401), "{answers:?}");
    app.assert_nothing_stored();
    assert_eq!(
        app.count("rejected_webhooks"),
        0,
        "unauthenticated bodies are not kept"
    );

    // Accepted on purpose: the scheme is case-insensitive (RFC 7617) and surrounding spaces
    // are optional whitespace.
    for (n, value) in [
        (1, format!("BASIC {good_b64}")),
        (2, format!("  Basic   {good_b64}  ")),
    ] {
        let response = app
            .webhook_request()
            .header("authorization", value.as_str())
            .body(valid_webhook(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{value:?}");
    }
}
