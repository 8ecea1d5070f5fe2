//! PostgreSQL for the tests, provisioned like the SQLite temp files: a fresh database per test
//! ([`database`]) on one throwaway cluster per test run.
//!
//! - `ORDERWATCH_TEST_PG` (a `postgres://` URL of a role that may create databases) points the
//!   tests at an existing server instead.
//! - Otherwise, when PostgreSQL's server binaries are installed (Debian's `postgresql`), the
//!   first test that asks starts a cluster in a temp dir (`initdb` as the `postgres` user when
//!   run as root, as PostgreSQL requires), listening on 127.0.0.1 on a free port; a watchdog
//!   stops it and removes the dir when the test process ends, however it ends.
//! - Without either, the test skips with one line naming what is missing; under
//!   `ORDERWATCH_TEST_PG_REQUIRED=1` (CI) a skip fails, like [`super::skip`] under its switch.
//!
//! The cluster runs with `fsync=off`: the tests kill processes and the server, never the
//! machine, and the page cache survives both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A URL of an existing server to use instead of a throwaway cluster.
pub const TEST_PG: &str = "ORDERWATCH_TEST_PG";

/// Set (non-empty) to make a PostgreSQL test that cannot get a server fail instead of skip.
pub const TEST_PG_REQUIRED: &str = "ORDERWATCH_TEST_PG_REQUIRED";

/// A database of its own for one test; dropped (on a shared server) when the test ends.
pub struct TestDatabase {
    /// `postgres://…/NAME`, for the daemon's `[database] url` and for the test's own client.
    pub url: String,
    name: String,
    server: &'static Server,
}

impl TestDatabase {
    /// A connected client (its connection driven on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// A connected client, the schema migrated first.
    pub async fn migrated_client(&self) -> tokio_postgres::Client {
        let mut client = self.client().await;
        orderwatch::store::postgres::migrate::migrate(&mut client, "test")
            .await
            .expect("the schema migrates");
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A throwaway cluster goes with the test run; a shared server must not fill up.
        if self.server.owned.is_none() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = admin(&self.server.admin_url, &sql);
        }
    }
}

/// A fresh, empty database for the test named `what`, or `None` after saying why there is no
/// server (the test returns then).
pub fn database(what: &str) -> Option<TestDatabase> {
    let server = match SERVER.get_or_init(Server::provision) {
        Ok(server) => server,
        Err(why) => {
            let required = std::env::var(TEST_PG_REQUIRED).is_ok_and(|v| !v.is_empty());
            assert!(
                !required,
                "SKIPPED {what} on PostgreSQL: {why}; {TEST_PG_REQUIRED} is set"
            );
            super::skip(&format!("{what} on PostgreSQL"), why);
            return None;
        }
    };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "orderwatch_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    admin(&server.admin_url, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    Some(TestDatabase {
        url: server.url_of(&name),
        name,
        server,
    })
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The server the tests use.
struct Server {
    /// `postgres://…/postgres`: where databases are created.
    admin_url: String,
    /// The throwaway cluster's folder, when we started it.
    owned: Option<PathBuf>,
}

impl Server {
    fn provision() -> Result<Self, String> {
        if let Ok(url) = std::env::var(TEST_PG) {
            return Ok(Self {
                admin_url: url,
                owned: None,
            });
        }
        let bin = server_binaries().ok_or_else(|| {
            format!(
                "PostgreSQL's server binaries are not installed (Debian: apt-get install \
                 postgresql) and {TEST_PG} is unset"
            )
        })?;
        start_cluster(&bin)
    }

    /// The URL of database `name` on this server.
    fn url_of(&self, name: &str) -> String {
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .expect("the admin URL names a database");
        format!("{base}/{name}")
    }
}

/// The folder holding `initdb` and `pg_ctl`: the newest of Debian's versions, else `pg_config
/// --bindir`.
fn server_binaries() -> Option<PathBuf> {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| v.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
                .max()
                .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        });
    let from_pg_config = || {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
    };
    debian
        .or_else(from_pg_config)
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
}

/// A PostgreSQL client program (`pg_dump`, `pg_restore`) beside the server binaries; `None`
/// when none is installed.
pub fn client_program(name: &str) -> Option<PathBuf> {
    server_binaries()
        .map(|bin| bin.join(name))
        .filter(|program| program.is_file())
}

/// Whether this process runs as root (then PostgreSQL's tools must run as `postgres`).
fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and touches no memory.
    unsafe { libc::getuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn start_cluster(bin: &Path) -> Result<Server, String> {
    let cluster = Cluster::init(bin)?;
    cluster.pg_ctl("start")?;
    spawn_watchdog(bin, &cluster.dir, &cluster.data);
    Ok(Server {
        admin_url: cluster.url_of("postgres"),
        owned: Some(cluster.dir),
    })
}

/// A new cluster's files and how to start it (on 127.0.0.1, a free port, `fsync=off`).
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Cluster {
    /// `initdb` in a new temp dir (owned by `postgres` when we are root).
    fn init(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("orderwatch-test-pg-")
            .tempdir()
            .map_err(|e| format!("a temp dir for the cluster: {e}"))?
            .keep();
        if is_root() {
            run(
                Command::new("chown").args(["postgres:"]).arg(&dir),
                "chown postgres: on the cluster's dir",
            )?;
        }
        let data = dir.join("data");
        run(
            as_server_user(&bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .args(["--locale", "C"]),
            "initdb",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        Ok(Self {
            bin: bin.to_owned(),
            dir,
            data,
            port,
        })
    }

    /// `pg_ctl ACTION` (`start`, or `stop` at once) on this cluster, waiting for it.
    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let mut command = as_server_user(&self.bin.join("pg_ctl"));
        command.args(["-w", "-D"]).arg(&self.data);
        match action {
            "start" => command
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("server.log"))
                .arg("start"),
            _ => command.args(["stop", "-m", "immediate"]),
        };
        run(&mut command, &format!("pg_ctl {action}"))
    }

    /// The URL of database `name`, as the `postgres` superuser.
    fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// A cluster of one test's own, for faults that would disturb every other test (stopping the
/// server); stopped and removed when dropped (and by a watchdog if the test process dies).
pub struct OwnCluster {
    /// A database of its own on it (`orderwatch`).
    pub url: String,
    /// The `postgres` database, for administration.
    pub admin_url: String,
    cluster: Cluster,
}

impl OwnCluster {
    /// Starts one, or `None` after saying why it cannot (the test returns then). Needs the
    /// server binaries even when `ORDERWATCH_TEST_PG` names a server: only a cluster of its
    /// own can be restarted.
    pub fn start(what: &str) -> Option<Self> {
        Self::start_prepared(what, |_| Ok(()))
    }

    /// [`OwnCluster::start`] with TLS on, its certificate (for `localhost` and 127.0.0.1)
    /// signed by a CA made for it; the role `orderwatch` may connect only over TLS (the
    /// `postgres` superuser still connects without). Also gives the CA's certificate file.
    pub fn start_with_tls(what: &str) -> Option<(Self, PathBuf)> {
        let cluster = Self::start_prepared(what, |cluster| {
            make_certificates(&cluster.dir)?;
            let conf = cluster.data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
            text.push_str(&format!(
                "\nssl = on\nssl_cert_file = '{0}/server.pem'\nssl_key_file = '{0}/server.key'\n",
                cluster.dir.display()
            ));
            std::fs::write(&conf, text).map_err(|e| e.to_string())?;
            let hba = cluster.data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
            std::fs::write(
                &hba,
                format!(
                    "hostnossl all orderwatch 127.0.0.1/32 reject\n\
                     hostssl all orderwatch 127.0.0.1/32 trust\n{rules}"
                ),
            )
            .map_err(|e| e.to_string())
        })?;
        admin(
            &cluster.admin_url,
            "CREATE ROLE orderwatch LOGIN SUPERUSER; ALTER DATABASE orderwatch OWNER TO orderwatch",
        )
        .unwrap();
        let ca = cluster.cluster.dir.join("ca.pem");
        Some((cluster, ca))
    }

    /// Starts one after `prepare` has seen its files (`initdb` done, not started yet).
    fn start_prepared(
        what: &str,
        prepare: impl FnOnce(&Cluster) -> Result<(), String>,
    ) -> Option<Self> {
        let started = server_binaries()
            .ok_or_else(|| {
                "PostgreSQL's server binaries are not installed (Debian: apt-get install \
                 postgresql); a cluster of the test's own is needed"
                    .to_owned()
            })
            .and_then(|bin| {
                let cluster = Cluster::init(&bin)?;
                prepare(&cluster)?;
                cluster.pg_ctl("start")?;
                spawn_watchdog(&bin, &cluster.dir, &cluster.data);
                admin(&cluster.url_of("postgres"), "CREATE DATABASE orderwatch")?;
                Ok(cluster)
            });
        match started {
            Ok(cluster) => Some(Self {
                url: cluster.url_of("orderwatch"),
                admin_url: cluster.url_of("postgres"),
                cluster,
            }),
            Err(why) => {
                let required = std::env::var(TEST_PG_REQUIRED).is_ok_and(|v| !v.is_empty());
                assert!(
                    !required,
                    "SKIPPED {what} on PostgreSQL: {why}; {TEST_PG_REQUIRED} is set"
                );
                super::skip(&format!("{what} on PostgreSQL"), &why);
                None
            }
        }
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediately(&self) {
        self.cluster.pg_ctl("stop").unwrap();
    }

    /// Starts the server again on the same files and port (it recovers from its WAL).
    pub fn restart(&self) {
        self.cluster.pg_ctl("start").unwrap();
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, with the real
/// `openssl` tool, in `dir`: `ca.pem`, `server.pem` and `server.key` (readable by the server
/// only, as PostgreSQL demands).
fn make_certificates(dir: &Path) -> Result<(), String> {
    let openssl =
        |args: &[&str], what: &str| run(Command::new("openssl").current_dir(dir).args(args), what);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=orderwatch test CA"],
        ]
        .concat(),
        "openssl: the CA",
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
        "openssl: the server's request",
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        "openssl: the server's certificate",
    )?;
    let key = dir.join("server.key");
    if is_root() {
        run(
            Command::new("chown").args(["postgres:"]).arg(&key),
            "chown the key",
        )?;
    }
    run(Command::new("chmod").arg("600").arg(&key), "chmod the key")
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.cluster.pg_ctl("stop");
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
}

/// Stops the cluster and removes its folder once this test process is gone.
fn spawn_watchdog(bin: &Path, dir: &Path, data: &Path) {
    let stop = if is_root() {
        format!(
            "runuser -u postgres -- '{}' -D '{}' stop -m immediate",
            bin.join("pg_ctl").display(),
            data.display()
        )
    } else {
        format!(
            "'{}' -D '{}' stop -m immediate",
            bin.join("pg_ctl").display(),
            data.display()
        )
    };
    // Started in the background by a shell that exits at once, so the watchdog belongs to
    // init, not to this process, and nothing is left to reap.
    let script = format!(
        "(while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop}; rm -rf '{dir}') &",
        pid = std::process::id(),
        dir = dir.display()
    );
    let started = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the cluster's watchdog starts");
    assert!(
        started.success(),
        "the cluster's watchdog starts: {started}"
    );
}

/// Connects to `url` and drives the connection on the current runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The deadlocks PostgreSQL counted in `client`'s database, read once every other client
/// session there has ended: a backend reports its counters when it exits or after a while
/// idle, so a count read while the writers are still connected can miss theirs.
pub async fn deadlocks_once_alone(client: &tokio_postgres::Client) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND backend_type = 'client backend'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if others == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{others} other sessions still connected after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    client
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every (item, version) a webhook event was stored for: what acknowledged webhooks are
/// checked against.
pub async fn stored_versions(
    client: &tokio_postgres::Client,
) -> std::collections::HashSet<(String, u64)> {
    client
        .query(
            "SELECT item_uuid::text, item_version FROM item_events WHERE item_version IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect()
}

/// Stores the webhook `body` inside `tx` as the daemon's writer would (and leaves the
/// transaction open: the feed tests hold a change back with it).
pub async fn store_webhook_in(tx: &tokio_postgres::Transaction<'_>, body: &str) {
    use orderwatch::store::postgres::session::{Session, Statements};
    let now = chrono::Utc::now();
    let observation =
        orderwatch::observation::Observation::from_webhook(body.as_bytes(), now).unwrap();
    let statements = Statements::default();
    orderwatch::store::postgres::apply::apply_batch(
        &Session::new(tx, &statements),
        &[&observation],
        &orderwatch::store::StoreSettings::default(),
        now,
        "test",
    )
    .await
    .unwrap();
}

/// Runs one statement on `url` from a thread of its own (callers may be inside a runtime).
fn admin(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}
