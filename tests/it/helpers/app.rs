//! The app in this process on 127.0.0.1:0 with a temp-dir database: [`TestApp`] and the
//! functions that spawn it. Every test that runs the app in-process starts it here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orderwatch::app::{App, Listeners, StartupError};
use orderwatch::clock::{Clock, SystemClock};
use orderwatch::config::Config;
use orderwatch::reload::Reload;
use orderwatch::store;
use orderwatch::store::observer::Unobserved;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::db::TestDb;

/// A running orderwatch server and what a test needs to talk to it.
pub struct TestApp {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Where `/metrics` has a listener of its own (`[server] metrics_listen`), when it has.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the partner API listens (`[api] listen` set: on `127.0.0.1:0`).
    pub api_addr: Option<SocketAddr>,
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

/// Spawns the app in `dir` (which may already hold a database) with `toml` and `clock`.
pub async fn spawn_app_in(dir: TempDir, toml: &str, clock: Arc<dyn Clock>) -> TestApp {
    spawn(dir, toml, clock, None).await
}

/// Spawns the app with `toml` (which sets `[server] metrics_listen`) and both listeners on
/// `127.0.0.1:0`.
pub async fn spawn_app_with_metrics_listener(toml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn(dir, toml, Arc::new(SystemClock), Some(loopback())).await
}

/// `127.0.0.1:0`.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Builds the app as `orderwatch run` does, on `127.0.0.1:0` (and `metrics` if given), and
/// runs it until the [`TestApp`] is stopped or dropped.
async fn spawn(
    dir: TempDir,
    toml: &str,
    clock: Arc<dyn Clock>,
    metrics: Option<SocketAddr>,
) -> TestApp {
    let config = write_config(dir.path(), toml);
    let api = config.api.listen.map(|_| loopback());
    let listeners = Listeners::on(loopback(), metrics, api).unwrap();
    let (db_path, path) = (config.database.path.clone(), config.server.path.clone());
    let app = App::build(config, clock, listeners).await.unwrap();
    let (addr, metrics_addr, api_addr) = (app.addr(), app.metrics_addr(), app.api_addr());
    let (shutdown, stop) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stop.await;
    };
    let task = tokio::spawn(app.run_until(stopped, Reload::none()));
    TestApp::ready(
        (addr, metrics_addr, api_addr),
        dir,
        db_path,
        path,
        shutdown,
        task,
    )
    .await
}

/// Writes `toml` to `dir/config.toml` and loads it.
fn write_config(dir: &Path, toml: &str) -> Config {
    let path = super::config_file(dir, toml);
    Config::load(&path).expect("test config is valid")
}

/// Registers `orders` in the database of `config` (written to `dir/config.toml`) before any
/// app or daemon starts there, as `orderwatch watch` would.
pub async fn watch_before_start(dir: &Path, config: &str, orders: &[Uuid]) {
    let config = write_config(dir, config);
    let (writer, thread) = store::open_writer(&config, Arc::new(SystemClock), Arc::new(Unobserved))
        .await
        .unwrap();
    writer.watch(orders.to_vec()).await.unwrap();
    drop(writer);
    thread.shutdown().await;
}

impl TestApp {
    /// The app spawned as `task`, once it answers `/readyz`.
    async fn ready(
        (addr, metrics_addr, api_addr): (SocketAddr, Option<SocketAddr>, Option<SocketAddr>),
        dir: TempDir,
        db_path: PathBuf,
        path: String,
        shutdown: oneshot::Sender<()>,
        task: JoinHandle<Result<(), StartupError>>,
    ) -> Self {
        let app = TestApp {
            addr,
            metrics_addr,
            api_addr,
            dir,
            db_path,
            client: super::http_client(),
            path,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        app.wait_ready().await;
        app
    }

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
        super::json_post(&self.client, self.url(&self.path))
    }

    /// The `/metrics` text as a loopback client reads it on the webhook listener.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
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

    /// A separate connection to the database, as an operator's `sqlite3` (or `psql`) would
    /// have.
    pub fn db(&self) -> TestDb {
        TestDb::open(self.dir.path(), &self.db_path)
    }

    /// Asserts the database holds no item, event or order: nothing half-read was stored.
    pub fn assert_nothing_stored(&self) {
        assert_eq!(self.count("order_items"), 0, "no item row");
        assert_eq!(self.count("item_events"), 0, "no event");
        assert_eq!(self.count("orders"), 0, "no order row");
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
