//! Slow clients: a head or a body trickled in slower than the timeouts is cut off.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::wire::{End, LIMIT, parse_answers, post, post_head, read_answers};
use crate::helpers::{spawn_app_with, valid_webhook};

#[tokio::test]
async fn headers_trickled_byte_by_byte_are_cut_off_at_header_read_timeout() {
    let app = spawn_app_with("[server]\nheader_read_timeout = \"400ms\"\n").await;
    // Each byte arrives well within any per-byte idle timeout; the whole head would take ~6 s.
    let head = post(
        &valid_webhook(1),
        &format!("X-Pad: {}\r\n", "a".repeat(200)),
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    let end = loop {
        if started.elapsed() > LIMIT {
            break End::TimedOut;
        }
        if sent < head.len() && stream.write_all(&head[sent..=sent]).await.is_err() {
            break End::Reset;
        }
        sent += 1;
        match tokio::time::timeout(Duration::from_millis(25), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    let elapsed = started.elapsed();
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        sent < head.len(),
        "cut off before the head was complete ({sent}/{})",
        head.len()
    );
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, expected about 400ms"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    eprintln!("slow-loris head: closed after {elapsed:?} having sent {sent} bytes");
    app.assert_nothing_stored();
}

#[tokio::test]
async fn a_body_trickled_slower_than_request_timeout_gets_408_and_is_closed() {
    let app = spawn_app_with("[server]\nrequest_timeout = \"500ms\"\n").await;
    let body = valid_webhook(1);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(post_head("HTTP/1.1", &format!("Content-Length: {}\r\n", body.len())).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let body_bytes = body.into_bytes();
    // One byte every 20 ms: data keeps coming, the whole body would take ~10 s.
    let trickle = tokio::spawn(async move {
        for byte in body_bytes {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (bytes, end) = read_answers(&mut read, usize::MAX, LIMIT).await;
    let elapsed = started.elapsed();
    trickle.abort();
    let answers = parse_answers(&bytes);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 408);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "408 after {elapsed:?}, expected about 500ms"
    );
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), 0);
}
