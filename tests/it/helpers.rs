//! Spawning the app on 127.0.0.1:0 with a temp-dir database, and small conveniences.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderwatch::app::{App, Listeners, StartupError};
use orderwatch::clock::{Clock, SystemClock};
use orderwatch::config::Config;
use orderwatch::reload::Reload;
use rusqlite::Connection;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running orderwatch server and what a test needs to talk to it.
pub struct TestApp {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The folder holding the config and the database; removed on drop.
    pub dir: TempDir,
    /// The SQLite file.
    pub db_path: PathBuf,
    /// An HTTP client that never uses a proxy.
    pub client: reqwest::Client,
    /// The webhook path.
    pub path: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartupError>>>,
}

/// Spawns the app with the default configuration (no auth, loopback).
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Spawns the app with `toml` as its config file in a fresh temp dir.
pub async fn spawn_app_with(toml: &str) -> TestApp {
    spawn_app_in(tempfile::tempdir().unwrap(), toml, Arc::new(SystemClock)).await
}

/// `127.0.0.1:0`.
pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Spawns the app in `dir` (which may already hold a database) with `toml` and `clock`.
pub async fn spawn_app_in(dir: TempDir, toml: &str, clock: Arc<dyn Clock>) -> TestApp {
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, toml).unwrap();
    let config = Config::load(&config_path).expect("test config is valid");
    let listeners = Listeners::on(loopback(), config.server.metrics_listen).unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let db_path = config.database.path.clone();
    let path = config.server.path.clone();
    let app = App::build(config, clock, listeners).await.unwrap();
    let addr = app.addr();
    let task = tokio::spawn(app.run_until(
        async {
            let _ = stop.await;
        },
        Reload::none(),
    ));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let app = TestApp {
        addr,
        dir,
        db_path,
        client,
        path,
        shutdown: Some(shutdown),
        task: Some(task),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts `body` to the webhook path as JSON.
    pub async fn post_webhook(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.webhook_request().body(body).send().await.unwrap()
    }

    /// A JSON POST to the webhook path, ready for more headers.
    pub fn webhook_request(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(&self.path))
            .header("content-type", "application/json")
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the app never became ready");
    }

    /// Stops the server the way SIGTERM does and waits for it; returns the temp dir so a test
    /// can start again on the same database.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// A separate connection to the database, as an operator's `sqlite3` would have.
    pub fn db(&self) -> Connection {
        Connection::open(&self.db_path).unwrap()
    }

    /// Counts rows of `table` (optionally `WHERE clause`).
    pub fn count(&self, table_and_where: &str) -> i64 {
        self.db()
            .query_row(
                &format!("SELECT count(*) FROM {table_and_where}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The text of `fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The path of the orderwatch binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_orderwatch")
}

/// A valid webhook body for `item` of `order` at `version` with `status`; the item's update
/// time is `version` seconds after 2024-01-01T00:00:00Z, as Musement's counter and clock agree.
pub fn webhook(item: &str, order: &str, version: u64, status: &str) -> String {
    let updated = chrono::DateTime::from_timestamp(1_704_067_200 + version as i64, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S+0000");
    serde_json::json!({
        "order_id": "13459345",
        "order_uuid": order,
        "order_created": "2024-01-01T00:00:00+0000",
        "order_updated": updated.to_string(),
        "order_version": version.to_string(),
        "order_item_uuid": item,
        "order_item_created": "2024-01-01T00:00:00+0000",
        "order_item_updated": updated.to_string(),
        "order_item_version": version.to_string(),
        "order_item_status": status,
    })
    .to_string()
}

/// A deterministic UUID-shaped string for test item/order `n`.
pub fn uuid(kind: u8, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

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
        let mut command = std::process::Command::new(crate::helpers::binary());
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
