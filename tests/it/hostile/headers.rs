//! Invalid UTF-8 and control bytes in the headers the receiver reads, and in one it does not.

use base64::Engine;

use crate::helpers::wire::{End, exchange};
use crate::helpers::{AUTH_CONFIG, GOOD_BASIC, spawn_app_with, valid_webhook};

#[tokio::test]
async fn invalid_utf8_and_control_bytes_in_headers() {
    // Auth, an allowlist and a trusted proxy, so every header the receiver reads is in play.
    let app = spawn_app_with(&format!(
        "[server]\nallow_ips = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n{AUTH_CONFIG}"
    ))
    .await;
    let body = valid_webhook(1);
    let head = |lines: &[u8]| {
        let mut request = format!(
            "POST /webhooks/musement HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(lines);
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body.as_bytes());
        request
    };
    let proxy = b"X-Forwarded-For: 203.0.113.5\r\n".as_slice();
    let auth = format!("Authorization: {GOOD_BASIC}\r\n").into_bytes();
    let join = |parts: &[&[u8]]| parts.concat();
    let password_with_ff = {
        let mut raw = b"JohnSmith:Swordfish".to_vec();
        raw.push(0xff);
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "Authorization value with raw 0xFF bytes",
            join(&[proxy, b"Authorization: Basic \xff\xfe\r\n"]),
            401,
        ),
        (
            "Basic credentials whose decoded password has a 0xFF byte",
            join(&[proxy, &password_with_ff]),
            401,
        ),
        (
            "Content-Type with a raw 0xFF byte",
            join(&[proxy, &auth, b"Content-Type: application/json\xff\r\n"]),
            415,
        ),
        (
            "X-Forwarded-For with raw 0xFF bytes from a trusted proxy",
            join(&[&auth, b"X-Forwarded-For: 203.0.113.5\xff\r\n"]),
            403,
        ),
        (
            "a header name with a 0xFF byte",
            join(&[proxy, &auth, b"X-Bad\xff: 1\r\n"]),
            400,
        ),
        (
            "a NUL byte in a header value",
            join(&[proxy, &auth, b"X-Note: a\x00b\r\n"]),
            400,
        ),
        (
            "a bare CR inside a header value",
            join(&[proxy, &auth, b"X-Note: a\rb\r\n"]),
            400,
        ),
    ];
    for (case, lines, expected) in &cases {
        let (answers, end) = exchange(app.addr, &head(lines)).await;
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(*expected),
            "{case}: {answers:?} {end:?}"
        );
        if *expected == 400 {
            assert!(matches!(end, End::Closed | End::Reset), "{case}: {end:?}");
        }
    }
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), 0);

    // Raw non-UTF-8 bytes in a header the receiver does not read are harmless: stored.
    let (answers, _) = exchange(
        app.addr,
        &head(&join(&[proxy, &auth, b"X-Note: caf\xe9 \xff\r\n"])),
    )
    .await;
    assert_eq!(answers.first().map(|a| a.status), Some(200), "{answers:?}");
    assert_eq!(app.count("order_items"), 1);
}
