//! The real `orderwatch run` binary as a child process: [`Daemon`], started through
//! [`Launch`] when a test needs more than a config (environment variables, a file-size limit).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::process::{self, KillOnDrop, lines_of, wait_bounded};

/// How long the real daemon may take to stop, or to log a line a test waits for.
const DAEMON_LIMIT: Duration = Duration::from_secs(10);

/// How long the real daemon may take to announce its address: generous, because a restart
/// after `kill -9` under load recovers the WAL first on a shared machine.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long one HTTP request to the daemon may take before the test fails instead of hanging.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// The real `orderwatch run` binary on `127.0.0.1:0` with its stderr collected line by line;
/// killed (SIGKILL) and reaped when dropped.
pub struct Daemon {
    child: KillOnDrop,
    /// Where it listens, from its start-up log line.
    pub addr: SocketAddr,
    /// The log lines up to and including the one announcing the address, parsed where they
    /// are JSON (`[log] format = "json"`) and kept as a JSON string where they are not.
    pub startup_log: Vec<Value>,
    /// Every later log line, in order.
    log: mpsc::Receiver<String>,
    /// The folder with its config and database.
    pub dir: TempDir,
}

/// A daemon about to start: its command line, environment and limits.
pub struct Launch {
    dir: TempDir,
    command: Command,
    /// `RLIMIT_FSIZE` for the child, in bytes.
    file_size_limit: Option<u64>,
}

impl Launch {
    /// One more environment variable for the daemon (e.g. a `password_env` secret, or a
    /// `RUST_LOG` filter: the daemon starts without the test runner's `RUST_LOG`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.command.env(name, value);
        self
    }

    /// Starts the daemon with `RLIMIT_FSIZE` at `bytes`, as `prlimit --fsize` or `ulimit -f`
    /// would start it.
    pub fn file_size_limit(mut self, bytes: u64) -> Self {
        self.file_size_limit = Some(bytes);
        self
    }

    /// Spawns the daemon and waits for the address it announces. `SIGXFSZ` starts at its
    /// default action (terminate) in the child, whatever the test runner inherited: whatever
    /// the daemon must survive, it does itself, not by a disposition inherited from the test.
    pub fn start(mut self) -> Daemon {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            let limit = self.file_size_limit.map(|bytes| libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            });
            // SAFETY: between fork and exec only async-signal-safe system calls run, on
            // values prepared before the fork.
            unsafe {
                self.command.pre_exec(move || {
                    if libc::signal(libc::SIGXFSZ, libc::SIG_DFL) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(limit) = &limit
                        && libc::setrlimit(libc::RLIMIT_FSIZE, limit) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        #[cfg(not(unix))]
        assert!(
            self.file_size_limit.is_none(),
            "a file-size limit needs setrlimit(2)"
        );
        Daemon::spawn(self.dir, self.command)
    }
}

impl Daemon {
    /// Starts the daemon on `config` (which must set `listen = "127.0.0.1:0"`) in `dir`.
    pub fn start(dir: TempDir, config: &str) -> Self {
        Self::launch(dir, config).start()
    }

    /// [`Daemon::start`] with extra environment variables (e.g. a `password_env` secret).
    pub fn start_with_env(dir: TempDir, config: &str, env: &[(&str, &str)]) -> Self {
        env.iter()
            .fold(Self::launch(dir, config), |launch, (name, value)| {
                launch.env(name, value)
            })
            .start()
    }

    /// [`Daemon::start`] with `RLIMIT_FSIZE` at `bytes` (see [`Launch::file_size_limit`]).
    #[cfg(unix)]
    pub fn start_with_file_size_limit(dir: TempDir, config: &str, bytes: u64) -> Self {
        Self::launch(dir, config).file_size_limit(bytes).start()
    }

    /// `orderwatch run` on `config`, written to `dir/config.toml`, without the test runner's
    /// `RUST_LOG`, `ORDERWATCH_…` variables or `NOTIFY_SOCKET` (a test runner started by systemd must not have its test
    /// daemons notify systemd; the tests that want a socket set their own); [`Launch::start`]
    /// starts it.
    pub fn launch(dir: TempDir, config: &str) -> Launch {
        let path = super::config_file(dir.path(), config);
        let mut command = super::orderwatch();
        command
            .args(["run", "--config", path.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Launch {
            dir,
            command,
            file_size_limit: None,
        }
    }

    /// Spawns `command` and waits for the address it announces.
    fn spawn(dir: TempDir, mut command: Command) -> Self {
        let mut child = KillOnDrop(command.spawn().expect("the orderwatch binary starts"));
        let log = lines_of(child.stderr.take().unwrap());
        let mut daemon = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            startup_log: Vec::new(),
            log,
            dir,
        };
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            let Ok(line) = daemon.log.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let json: Value = serde_json::from_str(&line).unwrap_or_default();
            let listen = json["listen"].as_str().map(str::to_owned).or_else(|| {
                let at = line.find("listen=")? + "listen=".len();
                line[at..].split_whitespace().next().map(str::to_owned)
            });
            daemon.startup_log.push(if json.is_null() {
                Value::String(line)
            } else {
                json
            });
            if let Some(addr) = listen.and_then(|a| a.parse().ok()) {
                daemon.addr = addr;
                return daemon;
            }
        }
        let _ = daemon.child.kill();
        panic!(
            "the daemon never announced its address; exit: {:?}, log: {:#?}",
            daemon.child.wait(),
            daemon.startup_log
        );
    }

    /// Waits until `/readyz` answers 200 (bounded).
    pub async fn wait_ready(&self) {
        let client = super::http_client();
        for _ in 0..500 {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the daemon at {} never became ready", self.addr);
    }

    /// `kill -9`, reap the process, and return its folder so a test can start it again on
    /// the same database.
    pub fn sigkill(mut self) -> TempDir {
        self.child.kill().expect("SIGKILL the daemon");
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status:?}");
        self.dir
    }

    /// How the daemon ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends `signal` (e.g. `"HUP"`) to the daemon.
    pub fn signal(&self, signal: &str) {
        process::signal(self.child.id(), signal);
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

    /// Every log line that arrives within `window` (for "nothing of the kind happened for a
    /// while", where the absence over time is what is tested).
    pub fn log_lines_for(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }

    /// Every log line up to and including the first containing `needle` (waiting up to 10 s
    /// for it), so a test can look at everything logged before an event.
    pub fn lines_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + DAEMON_LIMIT;
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.log.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return lines;
                }
            }
        }
        panic!("the daemon never logged {needle:?} within {DAEMON_LIMIT:?}: {lines:#?}");
    }

    /// The daemon's database file (the default `[database] path`, next to its config).
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("orderwatch.db")
    }

    /// A separate connection to the daemon's database, as an operator's `sqlite3` (or `psql`)
    /// would have.
    pub fn db(&self) -> super::db::TestDb {
        super::db::TestDb::open(self.dir.path(), &self.db_path())
    }

    /// The process id, for looking at it in /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Posts `body` as JSON to the webhook path and returns the status.
    pub async fn post_webhook(&self, body: impl Into<reqwest::Body>) -> u16 {
        let response = self.webhook_request().body(body).send().await.unwrap();
        response.status().as_u16()
    }

    /// A JSON POST to the default webhook path, ready for more headers and a body.
    pub fn webhook_request(&self) -> reqwest::RequestBuilder {
        super::json_post(&super::http_client(), self.webhook_url())
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path` on the webhook listener (bounded by [`REQUEST_LIMIT`]).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        super::http_client()
            .get(self.url(path))
            .timeout(REQUEST_LIMIT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The status of `GET path`.
    pub async fn status_of(&self, path: &str) -> u16 {
        self.get(path).await.status().as_u16()
    }

    /// The `/metrics` text (loopback clients may read it on the webhook port).
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// `http://ADDR/webhooks/musement`.
    pub fn webhook_url(&self) -> String {
        self.url("/webhooks/musement")
    }

    /// Every line logged since the last call, without waiting.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// SIGTERM, wait for exit 0 (bounded), and return every line logged since the last call.
    pub fn stop(&mut self) -> Vec<String> {
        self.signal("TERM");
        let status = wait_bounded(&mut self.child, DAEMON_LIMIT)
            .unwrap_or_else(|| panic!("the daemon did not stop within {DAEMON_LIMIT:?}"));
        assert_eq!(status.code(), Some(0), "clean exit");
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }
}
