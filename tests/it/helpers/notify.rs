//! The service manager's end of `NOTIFY_SOCKET` (the `sd_notify` protocol): a Unix datagram
//! socket in a temp dir whose path a test passes to the daemon, and the messages it receives.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Daemon;

/// How long [`NotifySocket::until`] waits for a message.
const LIMIT: Duration = Duration::from_secs(20);

/// The real daemon (reconciler off, `extra_config` appended) started as systemd starts a
/// `Type=notify` unit with a watchdog: `NOTIFY_SOCKET` names a fresh socket in the daemon's
/// folder and `WATCHDOG_USEC` is `watchdog_usec`. Returns once the daemon has said `READY=1`.
pub fn start_notified(extra_config: &str, watchdog_usec: &str) -> Notified {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let socket = notify.path.to_str().unwrap().to_owned();
    let env = [
        ("NOTIFY_SOCKET", socket.as_str()),
        ("WATCHDOG_USEC", watchdog_usec),
    ];
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[reconciler]\nenabled = false\n{extra_config}"
    );
    let daemon = Daemon::start_with_env(dir, &config, &env);
    let ready = notify.until("READY=1");
    Notified {
        daemon,
        notify,
        ready,
    }
}

/// A daemon started by [`start_notified`], its socket, and what it sent until it was ready.
pub struct Notified {
    /// The running daemon.
    pub daemon: Daemon,
    /// Its `NOTIFY_SOCKET`, read from after `READY=1`.
    pub notify: NotifySocket,
    /// The messages up to and including the one with `READY=1`.
    pub ready: Vec<String>,
}

/// Every datagram the daemon sends to `NOTIFY_SOCKET`.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// Where it is bound: the value for `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket, path }
    }

    /// Messages until one has the line `wanted` (included), or panics after [`LIMIT`].
    pub fn until(&self, wanted: &str) -> Vec<String> {
        let deadline = Instant::now() + LIMIT;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buffer) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let done = message.lines().any(|line| line == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
        let last = &seen[seen.len().saturating_sub(5)..];
        panic!(
            "no {wanted} within {LIMIT:?}; got {} messages, the last: {last:?}",
            seen.len()
        );
    }

    /// Every message that has arrived and not been read, without waiting for more.
    pub fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut messages = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).unwrap();
        messages
    }
}
