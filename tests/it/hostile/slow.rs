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
    // Started before the connection exists, so the server's timer cannot have started earlier.
    let started = Instant::now();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
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
    // The timeout itself is what is tested, so a window is inherent. Its lower end is exact: the
    // server's timer starts after our clock did. The upper end only has to tell the configured
    // 400 ms from the 10 s default: 5 s leaves a loaded 2-core machine more than 4 s of delay.
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
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
    // Started before the head goes out, so the server's timer cannot have started earlier.
    let started = Instant::now();
    stream
        .write_all(post_head("HTTP/1.1", &format!("Content-Length: {}\r\n", body.len())).as_bytes())
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let body_bytes = body.into_bytes();
    let length = body_bytes.len();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // One byte every 20 ms or slower: data keeps coming, the whole body takes at least ~8 s.
    let trickle = tokio::spawn({
        let sent = sent.clone();
        async move {
            for byte in body_bytes {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let (bytes, end) = read_answers(&mut read, usize::MAX, LIMIT).await;
    let elapsed = started.elapsed();
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    trickle.abort();
    let answers = parse_answers(&bytes);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 408);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    // No wall-clock window: the 408 came while the body was still arriving (so it was not the
    // end of the body that ended the request), and not before request_timeout (exact: the
    // server's timer started after our clock did).
    assert!(
        sent < length,
        "the whole body ({length} bytes) was sent first"
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "408 after {elapsed:?}, before request_timeout"
    );
    app.assert_nothing_stored();
    assert_eq!(app.count("rejected_webhooks"), 0);
}
