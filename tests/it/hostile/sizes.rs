//! Size limits: 10 MB bodies, declared or chunked, and an endless stream get 413 without
//! being read, and nothing is stored.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;
use crate::helpers::wire::{Answer, End, LIMIT, parse_answers, post_head, read_answers};

/// Writes `head` then up to `total` body bytes produced by `chunk` (or forever when `None`)
/// on a write half, while the read half waits for the answer. Returns the answers, how the read
/// ended, how many body bytes were written and whether writing failed (the server hung up).
async fn flood(
    addr: SocketAddr,
    head: String,
    chunk: Vec<u8>,
    total: Option<usize>,
) -> (Vec<Answer>, End, usize, bool) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        let mut written = 0usize;
        // A gigabyte is "forever" here: the server must hang up long before.
        let cap = total.unwrap_or(1 << 30);
        while written < cap {
            if write.write_all(&chunk).await.is_err() {
                return (written, true);
            }
            written += chunk.len();
        }
        (written, false)
    });
    let (bytes, end) = read_answers(&mut read, 1, LIMIT).await;
    // After the answer the server closes: the next read sees EOF or a reset, never more data.
    let (_, after) = read_answers(&mut read, usize::MAX, Duration::from_secs(5)).await;
    let end = if end == End::Answered { after } else { end };
    let (written, failed) = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("the writer stopped: the server hung up or took everything")
        .unwrap();
    (parse_answers(&bytes), end, written, failed)
}

const TEN_MB: usize = 10 * 1024 * 1024;

/// 64 KiB chunks of `filler` in chunked encoding, ready to write one after the other.
fn chunk_of(filler: u8) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend_from_slice(&[filler; 64 * 1024]);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// 10 MB bodies, framed either way: 413 without being read, the connection closed.
#[tokio::test]
async fn ten_megabytes_declared_or_chunked_get_413_unread_and_the_connection_closed() {
    let rows = [
        (
            "declared 10 MB",
            format!("Content-Length: {TEN_MB}\r\n"),
            vec![b' '; 64 * 1024],
        ),
        (
            "chunked 10 MB",
            "Transfer-Encoding: chunked\r\n".to_owned(),
            chunk_of(b' '),
        ),
    ];
    for (name, framing, chunk) in rows {
        let app = spawn_app_with("").await;
        let started = Instant::now();
        let (answers, end, written, _) = flood(
            app.addr,
            post_head("HTTP/1.1", &framing),
            chunk,
            Some(TEN_MB),
        )
        .await;
        assert_eq!(answers.len(), 1, "{name}: {answers:?}");
        assert_eq!(answers[0].status, 413, "{name}");
        assert_eq!(answers[0].header("connection"), Some("close"), "{name}");
        assert!(matches!(end, End::Closed | End::Reset), "{name}: {end:?}");
        assert!(started.elapsed() < LIMIT, "{name}");
        eprintln!(
            "{name}: 413 after {:?}; the client managed to write {written} bytes",
            started.elapsed()
        );
        app.assert_nothing_stored();
        assert_eq!(app.count("rejected_webhooks"), 0, "{name}");
    }
}

#[tokio::test]
async fn an_endless_chunked_stream_gets_413_and_is_not_read_forever() {
    let app = spawn_app_with("").await;
    let started = Instant::now();
    let (answers, end, written, failed) = flood(
        app.addr,
        post_head("HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
        chunk_of(b'['),
        None,
    )
    .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 413);
    assert!(matches!(end, End::Closed | End::Reset), "{end:?}");
    assert!(
        failed,
        "the server hung up, so writing failed (wrote {written})"
    );
    // What was written beyond the 64 KiB limit sits in socket buffers, never in the server.
    assert!(
        written < 64 * 1024 * 1024,
        "the server kept reading: {written} bytes"
    );
    eprintln!(
        "endless chunked stream: 413 and hang-up after {:?}, {written} bytes written in all",
        started.elapsed()
    );
    app.assert_nothing_stored();
}
