//! Helpers shared by the subcommands: loopback-only URLs, durations, ports, readiness,
//! percentiles and webhook bodies.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Every subcommand's result; errors are printed as one line.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An error from a message.
pub fn fail<T>(message: impl Into<String>) -> BenchResult<T> {
    Err(message.into().into())
}

/// Parses `500ms`, `5s`, `2m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// A parsed `http://127.0.0.1:PORT/path` URL.
#[derive(Debug, Clone)]
pub struct LoopbackUrl {
    pub addr: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl LoopbackUrl {
    /// Parses an `http://` URL whose host is a loopback IP address; anything else is refused,
    /// so a benchmark can never be pointed at another machine.
    pub fn parse(text: &str) -> BenchResult<Self> {
        let uri: hyper::Uri = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return fail(format!("{text:?}: only http:// URLs are supported"));
        }
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        let ip: IpAddr = host
            .parse()
            .map_err(|_| format!("{text:?}: the host must be a loopback IP such as 127.0.0.1"))?;
        if !ip.is_loopback() {
            return fail(format!(
                "{text:?}: refusing a non-loopback address; benchmarks run on 127.0.0.1 only"
            ));
        }
        let port = uri.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            path,
        })
    }

    /// The `Host` header value.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// Checks that a listen address is loopback.
pub fn loopback_listen(addr: SocketAddr) -> BenchResult<SocketAddr> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        fail(format!(
            "{addr}: refusing a non-loopback address; benchmarks run on 127.0.0.1 only"
        ))
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> BenchResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// One blocking `GET` with `Connection: close`; the status code, or `None` when nothing listens
/// yet or the answer is not HTTP.
pub fn get_status(url: &LoopbackUrl, timeout: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&url.addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let text = std::str::from_utf8(&head).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.trim().parse().ok()
}

/// Polls `url` until it answers 200.
pub fn wait_ready(url: &str, timeout: Duration) -> BenchResult<ExitCode> {
    let url = LoopbackUrl::parse(url)?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if get_status(&url, Duration::from_secs(2)) == Some(200) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "orderwatch-bench: {} did not answer 200 within {timeout:?}",
        url.path
    );
    Ok(ExitCode::FAILURE)
}

/// The `q`-quantile (0..=1) of sorted nanosecond samples, nearest-rank, in milliseconds.
pub fn percentile_ms(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6
}

/// splitmix64: a cheap, good 64-bit mixer, to derive random-looking UUIDs from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random-looking (version 4) UUID, a pure function of `(seed, kind, n)`: the load generator
/// recomputes it for the ledger check instead of keeping every string. Real Musement UUIDs are
/// random, so SQLite's indexes see random keys here too.
pub fn derived_uuid(seed: u64, kind: u64, n: u64) -> uuid::Uuid {
    let high = mix(seed ^ mix(kind.wrapping_mul(0x1000_0000_0000_0001) ^ n));
    let low = mix(high ^ n ^ (kind << 56));
    let bytes = (((high as u128) << 64) | low as u128).to_be_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Musement's webhook time format (`2018-12-10T13:12:40+0000`).
pub use musement_wire::musement_time;

/// A valid ten-field webhook body, as Musement sends it (same shape as the tests' `webhook()`).
pub fn webhook_body(
    item: &uuid::Uuid,
    order: &uuid::Uuid,
    order_id: u64,
    version: u64,
    status: &str,
    updated: &str,
) -> String {
    format!(
        concat!(
            r#"{{"order_id":"{order_id}","order_uuid":"{order}","order_created":"{updated}","#,
            r#""order_updated":"{updated}","order_version":"{version}","order_item_uuid":"{item}","#,
            r#""order_item_created":"{updated}","order_item_updated":"{updated}","#,
            r#""order_item_version":"{version}","order_item_status":"{status}"}}"#
        ),
        order_id = order_id,
        order = order,
        updated = updated,
        version = version,
        item = item,
        status = status,
    )
}

/// Peak and current resident set size of a process, in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// The start of a markdown report: `note` (a `--note` flag) as a paragraph of its own, or
/// nothing when it is empty.
pub fn report_with_note(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!("{note}\n\n")
    }
}

/// Median of a non-empty slice of seconds.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A fresh folder under the system temp dir (`$TMPDIR`), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> BenchResult<Self> {
        let path = std::env::temp_dir().join(format!(
            "orderwatch-bench-{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes a SQLite file and its `-wal` / `-shm` companions.
pub fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Creates the parent folder of `path` and writes `text` to it.
pub fn write_file(path: &Path, text: &str) -> BenchResult<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn urls_must_be_loopback() {
        let url = LoopbackUrl::parse("http://127.0.0.1:8080/webhooks/musement").unwrap();
        assert_eq!(url.addr.port(), 8080);
        assert_eq!(url.path, "/webhooks/musement");
        assert!(LoopbackUrl::parse("http://10.0.0.1:8080/").is_err());
        assert!(LoopbackUrl::parse("http://example.com/").is_err());
        assert!(LoopbackUrl::parse("https://127.0.0.1/").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=100).map(|ms| ms * 1_000_000).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&samples, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn webhook_bodies_parse_and_uuids_are_distinct() {
        let a = derived_uuid(7, 0, 1);
        assert_ne!(a, derived_uuid(7, 0, 2));
        assert_ne!(a, derived_uuid(7, 1, 1));
        assert_eq!(a, derived_uuid(7, 0, 1));
        let body = webhook_body(
            &a,
            &derived_uuid(7, 1, 1),
            42,
            3,
            "PENDING",
            "2024-01-01T00:00:00+0000",
        );
        let observation =
            orderwatch::observation::Observation::from_webhook(body.as_bytes(), Utc::now())
                .unwrap();
        assert_eq!(observation.item, a);
        assert_eq!(observation.position.version(), Some(3));
    }
}
