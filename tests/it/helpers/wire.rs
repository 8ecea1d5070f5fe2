//! A raw HTTP/1 client for the wire-level tests: requests written byte for byte on a
//! `TcpStream`, answers parsed as they arrive, every read bounded by [`LIMIT`] so a hang fails
//! the test instead of blocking it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait on the wire is bounded by this, so a hang fails instead of blocking CI.
pub const LIMIT: Duration = Duration::from_secs(10);

/// One parsed HTTP/1 response.
#[derive(Debug)]
pub struct Answer {
    /// The status line's protocol version, e.g. `HTTP/1.1`.
    pub version: String,
    /// The status code (0 when the status line has none).
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (as much as `Content-Length` says), lossily decoded.
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The complete responses at the start of `bytes`, in order (an incomplete tail is ignored).
pub fn parse_answers(bytes: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or("").splitn(3, ' ');
        let version = status_line.next().unwrap_or("").to_owned();
        let status = status_line.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = end + 4;
        if rest.len() < body_start + length {
            break;
        }
        let body = String::from_utf8_lossy(&rest[body_start..body_start + length]).into_owned();
        answers.push(Answer {
            version,
            status,
            headers,
            body,
        });
        rest = &rest[body_start + length..];
    }
    answers
}

/// How a read loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (FIN).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Enough answers arrived; the connection may still be open.
    Answered,
    /// Neither within the time limit.
    TimedOut,
}

/// Reads until the server closes the connection, `want` answers are complete, or `limit`
/// passes. Returns what was read and why the loop ended.
pub async fn read_answers<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    want: usize,
    limit: Duration,
) -> (Vec<u8>, End) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if parse_answers(&bytes).len() >= want {
            return (bytes, End::Answered);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (bytes, End::TimedOut),
            Ok(Ok(0)) => return (bytes, End::Closed),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (bytes, End::Reset),
        }
    }
}

/// Reads the first answer on `stream` (bounded by [`LIMIT`]) and asserts its status;
/// `case` says what a wrong one means.
pub async fn assert_answered(stream: &mut TcpStream, status: u16, case: &str) {
    let (bytes, _) = read_answers(stream, 1, LIMIT).await;
    let answers = parse_answers(&bytes);
    assert_eq!(
        answers.first().map(|a| a.status),
        Some(status),
        "{case}: {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

/// Writes `request` on a fresh connection and reads until the server closes it (bounded).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (Vec<Answer>, End) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (bytes, end) = read_answers(&mut stream, usize::MAX, LIMIT).await;
    (parse_answers(&bytes), end)
}

/// A request head for the webhook path with `extra` header lines (each ending in CRLF).
pub fn post_head(version: &str, extra: &str) -> String {
    format!(
        "POST /webhooks/musement {version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

/// A complete HTTP/1.1 webhook request with `body` and `extra` header lines.
pub fn post(body: &str, extra: &str) -> Vec<u8> {
    let mut request = post_head(
        "HTTP/1.1",
        &format!("Content-Length: {}\r\n{extra}", body.len()),
    );
    request.push_str(body);
    request.into_bytes()
}

/// `GET path` on a blocking connection of its own, closed after the answer (so it is not left
/// open in the server's connection count); the whole answer as text. Reads wait up to `limit`.
pub fn blocking_get(addr: SocketAddr, path: &str, limit: Duration) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
