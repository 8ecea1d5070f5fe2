//! nginx in front of the daemon, as the repository's site files configure it: the site file
//! rewritten for loopback (its `listen 443 ssl;` on a free port, a throwaway self-signed
//! certificate for Let's Encrypt's paths, and whatever the test adapts itself), one nginx
//! process in the foreground with every file in a temp dir.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{KillOnDrop, assert_succeeded};
use super::{free_port, read_deploy, replace_once, tool};

/// Bound on nginx starting to listen (noisy machines).
const LIMIT: Duration = Duration::from_secs(20);

/// A running nginx.
pub struct Nginx {
    /// The nginx process (killed when the test ends; dropped before `dir`).
    child: KillOnDrop,
    /// The loopback port it serves HTTPS on.
    pub port: u16,
    /// Its config, certificate and logs.
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `deploy/SITE` on a free loopback port and a fresh certificate, after
    /// `adapt` rewrote the rest (upstreams, other listeners); `None` when nginx or openssl is
    /// missing.
    pub fn start(site: &str, adapt: impl FnOnce(String) -> String) -> Option<Self> {
        tool("nginx", &["-v"])?;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = tool(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        )?;
        assert_succeeded("openssl req", &made);
        let port = free_port();
        let mut text = adapt(read_deploy(site));
        text = replace_once(
            &text,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{port} ssl;"),
        );
        text = replace_once(
            &text,
            "/etc/letsencrypt/live/orderwatch.example.com/fullchain.pem",
            cert.to_str().unwrap(),
        );
        text = replace_once(
            &text,
            "/etc/letsencrypt/live/orderwatch.example.com/privkey.pem",
            key.to_str().unwrap(),
        );
        std::fs::write(dir.path().join("orderwatch.conf"), text).unwrap();
        let d = dir.path().display();
        // One process as the invoking user, every file in the temp dir.
        let main = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             include {d}/orderwatch.conf;\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let error_log = dir.path().join("error.log");
        let args = [
            "-p",
            dir.path().to_str().unwrap(),
            "-e",
            error_log.to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
        ];
        let test = tool("nginx", &[&["-t"][..], &args[..]].concat()).unwrap();
        assert_succeeded("nginx -t", &test);
        let child = KillOnDrop(
            Command::new("nginx")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut nginx = Self { child, port, dir };
        let deadline = Instant::now() + LIMIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited {status}: {:?}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }

    /// nginx with `deploy/nginx.conf` (the single-instance site) in front of a daemon at
    /// `upstream` instead of 127.0.0.1:8080, on IPv4 only; `None` when nginx or openssl is
    /// missing.
    pub fn in_front_of(upstream: std::net::SocketAddr) -> Option<Self> {
        Self::start("nginx.conf", |site| {
            let site = replace_once(
                &site,
                "server 127.0.0.1:8080;",
                &format!("server {upstream};"),
            );
            replace_once(&site, "listen [::]:443 ssl;", "")
        })
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
