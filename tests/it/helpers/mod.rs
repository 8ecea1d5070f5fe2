//! What the test modules share, so that no test module imports another: the app in-process
//! ([`app`]), the real binary as a process ([`daemon`]), the fake Musement API
//! ([`fake_musement`]) and the reconciler driven against it by hand ([`api`]), reading the
//! database ([`db`]), the `/metrics` text parsed ([`exposition`]), what the property tests
//! draw alike ([`strategies`]), and small builders of test input.

pub mod api;
pub mod app;
pub mod backend;
pub mod compose;
pub mod daemon;
pub mod db;
pub mod exposition;
pub mod fake_musement;
pub mod hooks;
pub mod nginx;
pub mod notify;
pub mod observations;
pub mod pg;
pub mod process;
pub mod skip;
pub mod strategies;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use api::{config_for, harness};
pub use app::{
    TestApp, spawn_app, spawn_app_in, spawn_app_with, spawn_app_with_metrics_listener,
    watch_before_start,
};
pub use daemon::Daemon;
pub use skip::skip;

/// `[server.auth]` with Musement's documented example credentials.
pub const AUTH_CONFIG: &str = "[server.auth]\nusername = \"JohnSmith\"\npassword = \"Swordfish\"\n";

/// The `Authorization` value for [`AUTH_CONFIG`]'s `JohnSmith:Swordfish`.
pub const GOOD_BASIC: &str = "Basic Sm9oblNtaXRoOlN3b3JkZmlzaA==";

/// `path` in this repository: a file the tests read as shipped (`README.md`, `deploy/…`,
/// `fixtures/…`).
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The text of [`repo_file`]`(path)`; a missing file fails the test, naming it.
pub fn read_repo_file(path: &str) -> String {
    let path = repo_file(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `deploy/NAME`: the packaging and monitoring files.
pub fn deploy_file(name: &str) -> PathBuf {
    repo_file("deploy").join(name)
}

/// The text of `deploy/NAME`.
pub fn read_deploy(name: &str) -> String {
    read_repo_file(&format!("deploy/{name}"))
}

/// The bytes of `fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = repo_file("fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An HTTP client for the app under test: it never goes through a proxy, whatever the
/// environment says, so every request stays on loopback.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A JSON `POST` to `url` on `client` (a webhook, as Musement sends it), ready for more headers
/// and a body.
pub fn json_post(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
    client.post(url).header("content-type", "application/json")
}

/// Sends `request` and reads the answer's body as JSON, whatever its status.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.send().await.unwrap();
    response.json().await.unwrap()
}

/// The path of the orderwatch binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_orderwatch")
}

/// The real orderwatch binary, without the test runner's `RUST_LOG` and `ORDERWATCH_…`
/// variables (CI sets `ORDERWATCH_TEST_NO_SKIP`, which the binary would rightly warn about as
/// setting no key, and `ORDERWATCH_CONFIG` would choose its file): a test sets what it means.
pub fn orderwatch() -> Command {
    let mut command = Command::new(binary());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("ORDERWATCH_") {
            command.env_remove(var);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// `orderwatch ARGS --config CONFIG` ([`orderwatch`]), ready to run.
pub fn cli(config: &Path, args: &[&str]) -> Command {
    let mut command = orderwatch();
    command.args(args).arg("--config").arg(config);
    command
}

/// Writes `text` to `dir/config.toml`, where the app, the daemon and the CLI look for it, on
/// the engine under test ([`backend::configured`]); its path.
pub fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    write_config_at(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// Writes `text` as a configuration file at `path` on the engine under test (the database
/// of `path`'s folder, see [`backend::configured`]).
pub fn write_config_at(path: &Path, text: impl AsRef<str>) -> std::io::Result<()> {
    let folder = path.parent().expect("a config file is in a folder");
    std::fs::write(path, backend::configured(folder, text.as_ref()))
}

/// Asserts that a command (`(exit code, stdout, stderr)`) failed with `code`, printing nothing
/// on stdout and one line on stderr; `case` names it in the messages.
pub fn assert_one_line_error(output: &(i32, String, String), code: i32, case: &str) {
    let (got, stdout, stderr) = output;
    assert_eq!(*got, code, "{case}: {stderr}");
    assert!(stdout.is_empty(), "{case}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{case}: one line: {stderr}");
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

/// A valid webhook for a fresh item `n` (item `uuid(1, n)` of order `uuid(2, n)`, version 1,
/// `PENDING`).
pub fn valid_webhook(n: u64) -> String {
    webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING")
}

/// [`valid_webhook`]`(1)` with `field` replaced by `value` (raw JSON text).
pub fn webhook_with_field(field: &str, value: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&valid_webhook(1)).unwrap();
    body[field] = serde_json::Value::String("@@".into());
    body.to_string().replace("\"@@\"", value)
}

/// [`valid_webhook`]`(n)` with every timestamp (order and item, created and updated) set to
/// `at`, as sent.
pub fn webhook_at(n: u64, at: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&valid_webhook(n)).unwrap();
    for field in [
        "order_created",
        "order_updated",
        "order_item_created",
        "order_item_updated",
    ] {
        body[field] = serde_json::json!(at);
    }
    body.to_string()
}

/// A loopback port that was free a moment ago: bound to `127.0.0.1:0` and released, for a
/// process that must be told its port up front (the simulator, nginx) or for an address where
/// nothing listens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deterministic UUID-shaped string for test item/order `n`.
pub fn uuid(kind: u8, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// Replaces the single occurrence of `from`, so a test notices when the file it adapts changes.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected `{from}` once in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// Runs a tool, `None` when it is not installed.
pub fn tool(program: &str, args: &[&str]) -> Option<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}
