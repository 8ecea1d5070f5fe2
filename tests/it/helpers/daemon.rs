//! The real `orderwatch run` binary as a child process: [`Daemon`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the real daemon may take to start or stop.
const DAEMON_LIMIT: Duration = Duration::from_secs(10);

/// The real `orderwatch run` binary on `127.0.0.1:0` with its stderr collected line by line.
pub struct Daemon {
    child: std::process::Child,
    /// Where it listens, from its start-up log line.
    pub addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
    /// The folder with its config and database.
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon on `config` (which must set `listen = "127.0.0.1:0"`) in `dir`.
    pub fn start(dir: tempfile::TempDir, config: &str) -> Self {
        Self::start_with_env(dir, config, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. a `password_env` secret).
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Self::command(&dir, config);
        command.envs(env.iter().copied());
        Self::spawn(dir, command)
    }

    /// [`Daemon::start`] with `RLIMIT_FSIZE` at `bytes` and `SIGXFSZ` at its default action
    /// (terminate) in the child, as `prlimit --fsize` or `ulimit -f` would start it: whatever
    /// the daemon must survive, it does itself, not by a disposition inherited from the test.
    #[cfg(unix)]
    pub fn start_with_file_size_limit(dir: tempfile::TempDir, config: &str, bytes: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Self::command(&dir, config);
        let limit = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: between fork and exec only two async-signal-safe system calls run, on
        // values prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::signal(libc::SIGXFSZ, libc::SIG_DFL) == libc::SIG_ERR
                    || libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn(dir, command)
    }

    /// `orderwatch run` on `config`, written to `dir/config.toml`, with the default log.
    fn command(dir: &tempfile::TempDir, config: &str) -> std::process::Command {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = std::process::Command::new(super::binary());
        command
            .args(["run", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Spawns `command` and waits for the address it announces.
    fn spawn(dir: tempfile::TempDir, mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command.spawn().unwrap();
        let (lines, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            dir,
        };
        let deadline = Instant::now() + DAEMON_LIMIT;
        while Instant::now() < deadline {
            let Ok(line) = daemon.log.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let json: Value = serde_json::from_str(&line).unwrap_or_default();
            let listen = json["fields"]["listen"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    let at = line.find("listen=")? + "listen=".len();
                    line[at..].split_whitespace().next().map(str::to_owned)
                });
            if let Some(addr) = listen.and_then(|a| a.parse().ok()) {
                daemon.addr = addr;
                return daemon;
            }
        }
        let _ = daemon.child.kill();
        panic!(
            "the daemon never announced its address; exit: {:?}",
            daemon.child.wait()
        );
    }

    /// How the daemon ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends `signal` (e.g. `"HUP"`) to the daemon.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits (up to 10 s) for a log line containing `needle` and returns it; lines read on the
    /// way are dropped.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + DAEMON_LIMIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.log.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return line;
            }
        }
        panic!("the daemon never logged {needle:?} within {DAEMON_LIMIT:?}");
    }

    /// Every log line that arrives within `window`.
    pub fn log_lines_for(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        lines
    }

    /// The process id, for looking at it in /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Posts `body` as JSON to the webhook path and returns the status.
    pub async fn post_webhook(&self, body: impl Into<reqwest::Body>) -> u16 {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `http://ADDR/webhooks/musement`.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/musement", self.addr)
    }

    /// Every line logged since the last call, without waiting.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// SIGTERM, wait for exit 0 (bounded), and return every line logged since the last call.
    pub fn stop(&mut self) -> Vec<String> {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + DAEMON_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the daemon did not stop within {DAEMON_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "clean exit");
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
