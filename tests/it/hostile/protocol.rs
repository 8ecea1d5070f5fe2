//! Protocol corners: HTTP/1.0, pipelining, `Expect: 100-continue`, header limits, smuggling.

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::wire::{
    End, LIMIT, assert_answered, exchange, parse_answers, post, post_head, read_answers,
};
use crate::helpers::{AUTH_CONFIG, GOOD_BASIC, spawn_app_with, uuid, valid_webhook};

#[tokio::test]
async fn http_1_0_requests_are_served_and_closed_unless_kept_alive() {
    let app = spawn_app_with("").await;
    let one = valid_webhook(1);
    let request = |body: &str, extra: &str| {
        format!(
            "{}{body}",
            post_head(
                "HTTP/1.0",
                &format!("Content-Length: {}\r\n{extra}", body.len())
            )
        )
        .into_bytes()
    };
    // Without keep-alive: answered in HTTP/1.0 and closed.
    let (answers, end) = exchange(app.addr, &request(&one, "")).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0].version.as_str(), answers[0].status),
        ("HTTP/1.0", 200)
    );
    assert_eq!(answers[0].json()["outcome"], "applied");
    assert_eq!(end, End::Closed);

    // With keep-alive: the connection stays open for a second request.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(&request(&one, "Connection: keep-alive\r\n"))
        .await
        .unwrap();
    let (bytes, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered);
    let answers = parse_answers(&bytes);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].json()["outcome"], "duplicate");
    assert_eq!(
        answers[0]
            .header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive")
    );
    stream
        .write_all(&request(&valid_webhook(2), ""))
        .await
        .unwrap();
    let (bytes, end) = read_answers(&mut stream, usize::MAX, LIMIT).await;
    let answers = parse_answers(&bytes);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].json()["outcome"], "applied");
    assert_eq!(end, End::Closed);
    assert_eq!(app.count("order_items"), 2);

    // HTTP/1.0 has no chunked encoding: refused before anything is read.
    let mut chunked = post_head("HTTP/1.0", "Transfer-Encoding: chunked\r\n");
    chunked.push_str(&format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        valid_webhook(3).len(),
        valid_webhook(3)
    ));
    let (answers, end) = exchange(app.addr, chunked.as_bytes()).await;
    assert_eq!(answers.first().map(|a| a.status), Some(400), "{answers:?}");
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(
        app.count("order_items"),
        2,
        "the chunked 1.0 body was not stored"
    );
    assert_eq!(app.count("item_events"), 3);
}

#[tokio::test]
async fn pipelined_webhooks_are_answered_in_order_and_all_stored() {
    let app = spawn_app_with("").await;
    let (a, b) = (valid_webhook(1), valid_webhook(2));
    // Three requests in one write: A, A again, then B (which closes the connection).
    let mut batch = post(&a, "");
    batch.extend(post(&a, ""));
    batch.extend(post(&b, "Connection: close\r\n"));
    let (answers, end) = exchange(app.addr, &batch).await;
    assert_eq!(end, End::Closed);
    let outcomes: Vec<(u16, Value)> = answers
        .iter()
        .map(|a| (a.status, a.json()["outcome"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (200, json!("applied")),
            (200, json!("duplicate")),
            (200, json!("applied"))
        ]
    );
    assert_eq!(app.count("order_items"), 2);
    assert_eq!(app.count("item_events"), 3);

    // A pipelined request behind an oversized one is never parsed from the unread body.
    let mut batch = post_head("HTTP/1.1", "Content-Length: 100000\r\n").into_bytes();
    batch.extend(post(&valid_webhook(3), ""));
    let (answers, end) = exchange(app.addr, &batch).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(
        app.count("order_items"),
        2,
        "the smuggled webhook was not stored"
    );
}

#[tokio::test]
async fn expect_100_continue_is_honoured_and_refusals_skip_it() {
    let app = spawn_app_with(&format!("[server]\nmax_body_bytes = 4096\n{AUTH_CONFIG}")).await;
    let body = valid_webhook(1);
    let head = |length: usize, auth: bool| {
        let auth = if auth {
            format!("Authorization: {GOOD_BASIC}\r\n")
        } else {
            String::new()
        };
        post_head(
            "HTTP/1.1",
            &format!("Expect: 100-continue\r\nContent-Length: {length}\r\n{auth}"),
        )
    };
    // Accepted: 100 Continue first, then (after the body) 200.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(head(body.len(), true).as_bytes())
        .await
        .unwrap();
    let (bytes, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered, "no interim answer before the body");
    let interim = parse_answers(&bytes);
    assert_eq!(interim[0].status, 100, "{interim:?}");
    assert_eq!(
        app.count("order_items"),
        0,
        "nothing stored before the body"
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let (more, end) = read_answers(&mut stream, 1, LIMIT).await;
    assert_eq!(end, End::Answered);
    let finals = parse_answers(&more);
    assert_eq!(finals[0].status, 200, "{finals:?}");
    assert_eq!(finals[0].json()["outcome"], "applied");
    assert_eq!(app.count("order_items"), 1);

    // Refused before the body: 413 for an oversized declared length, 401 without credentials,
    // each as the first and only answer, never a 100.
    for (length, auth, expected) in [(10 * 1024 * 1024, true, 413), (body.len(), false, 401)] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(head(length, auth).as_bytes())
            .await
            .unwrap();
        assert_answered(&mut stream, expected, "refused before the body").await;
    }
    assert_eq!(app.count("order_items"), 1);
    assert_eq!(app.count("item_events"), 1);
}

#[tokio::test]
async fn oversized_header_blocks_and_ambiguous_framing_are_refused() {
    let app = spawn_app_with("").await;
    let body = valid_webhook(1);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a 1 MiB header",
            post(&body, &format!("X-Pad: {}\r\n", "a".repeat(1024 * 1024))),
            431,
        ),
        (
            "200 headers",
            post(
                &body,
                &(0..200)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            431,
        ),
        (
            "two different Content-Lengths",
            {
                let mut r = post_head(
                    "HTTP/1.1",
                    &format!("Content-Length: {}\r\nContent-Length: 5\r\n", body.len()),
                );
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a Content-Length that is not a number",
            {
                let mut r = post_head("HTTP/1.1", "Content-Length: 12a\r\n");
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a transfer coding other than chunked",
            {
                let mut r = post_head("HTTP/1.1", "Transfer-Encoding: gzip\r\n");
                r.push_str(&body);
                r.into_bytes()
            },
            400,
        ),
        (
            "a request line that is not HTTP",
            b"HELLO\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (case, request, expected) in &cases {
        let (answers, end) = exchange(app.addr, request).await;
        assert_eq!(
            answers.first().map(|a| a.status),
            Some(*expected),
            "{case}: {answers:?}"
        );
        assert!(matches!(end, End::Closed | End::Reset), "{case}: {end:?}");
    }
    app.assert_nothing_stored();

    // Content-Length and Transfer-Encoding together: the chunked framing wins (RFC 9112), so a
    // request hidden in the "rest" of the declared length is never parsed; the connection is
    // closed after the answer.
    let hidden = post(&valid_webhook(9), "");
    let mut smuggle = post_head(
        "HTTP/1.1",
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len() + 7 + hidden.len()
        ),
    )
    .into_bytes();
    smuggle.extend(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes());
    smuggle.extend(&hidden);
    let (answers, end) = exchange(app.addr, &smuggle).await;
    assert_eq!(
        answers.len(),
        1,
        "one answer, the hidden request is not served: {answers:?}"
    );
    assert_eq!(answers[0].status, 200);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert_eq!(app.count("order_items"), 1);
    assert_eq!(
        app.count(&format!("order_items WHERE item_uuid = '{}'", uuid(1, 9))),
        0
    );
}
