//! Packaging (issue 20): the container image runs from its own config
//! (`deploy/container.toml`) and environment variables alone (`deploy/docker.env`), the
//! single-node compose file (`deploy/compose.yaml`), and restoring a backup. The real binary
//! on loopback throughout: the container's `0.0.0.0` and `/run/secrets` become a loopback
//! port and files in a temp folder, nothing else changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use crate::helpers::compose::{
    compose, dockerfile_healthcheck, environment, keys, secret_name, service, text, texts,
};
use crate::helpers::db::value;
use crate::helpers::fake_musement::{APPLICATION, CLIENT_ID, CLIENT_SECRET, FakeMusement};
use crate::helpers::nginx::Nginx;
use crate::helpers::process::assert_succeeded;
use crate::helpers::{Daemon, json_post, orderwatch, read_deploy, valid_webhook};

/// Where the container reads its secrets, in `deploy/docker.env` and `deploy/compose.yaml`.
const SECRETS: &str = "/run/secrets/";

/// The webhook password written to the test's secret file.
const WEBHOOK_PASSWORD: &str = "container-webhook-pw-71c3";

/// The `NAME=value` lines of an env file (`docker run --env-file`), comments and blank lines
/// skipped.
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not NAME=value: {line}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Writes the secret files a container would find under [`SECRETS`] into `folder`, and
/// points `env`'s `/run/secrets/NAME` paths there.
fn secrets_into(folder: &Path, env: &mut BTreeMap<String, String>) {
    std::fs::create_dir_all(folder).unwrap();
    for (name, value) in [
        ("webhook-password", WEBHOOK_PASSWORD),
        ("musement-client-id", CLIENT_ID),
        ("musement-client-secret", CLIENT_SECRET),
    ] {
        std::fs::write(folder.join(name), format!("{value}\n")).unwrap();
    }
    for value in env.values_mut() {
        if let Some(name) = value.strip_prefix(SECRETS) {
            *value = folder.join(name).to_str().unwrap().to_owned();
        }
    }
}

/// `deploy/docker.env` on this machine: secrets in `dir/secrets`, the database in `dir`, the
/// listener on a loopback port, the Musement API `fake` (all else as shipped).
fn docker_env_here(dir: &Path, fake: &FakeMusement) -> BTreeMap<String, String> {
    let mut env = env_file(&read_deploy("docker.env"));
    secrets_into(&dir.join("secrets"), &mut env);
    for (name, value) in [
        ("ORDERWATCH_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "ORDERWATCH_DATABASE__PATH",
            dir.join("orderwatch.db").to_str().unwrap().to_owned(),
        ),
        ("ORDERWATCH_MUSEMENT__BASE_URL", fake.base_url()),
        ("ORDERWATCH_MUSEMENT__APPLICATION", APPLICATION.to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    env
}

/// The shipped env file sets what a container needs and nothing secret: the webhook auth from
/// a file, the Musement credentials from files, no value that is a secret itself.
#[test]
fn the_docker_env_file_names_secret_files_never_secrets() {
    let env = env_file(&read_deploy("docker.env"));
    for key in [
        "ORDERWATCH_SERVER__AUTH__USERNAME",
        "ORDERWATCH_SERVER__AUTH__PASSWORD_FILE",
        "ORDERWATCH_MUSEMENT__APPLICATION",
        "ORDERWATCH_MUSEMENT__CLIENT_ID_FILE",
        "ORDERWATCH_MUSEMENT__CLIENT_SECRET_FILE",
    ] {
        assert!(env.contains_key(key), "docker.env sets {key}");
    }
    for (name, value) in &env {
        if name.ends_with("_FILE") {
            assert!(value.starts_with(SECRETS), "{name}={value}");
        }
        for secret in ["PASSWORD", "SECRET", "TOKEN"] {
            assert!(
                !name.ends_with(secret),
                "{name} would put a secret into the environment"
            );
        }
    }
}

/// The image's config file and the documented variables, nothing else: `check-config` takes
/// every variable with no warning, and the daemon starts, refuses a webhook without the
/// password from the secret file, stores one with it, and turns its reconciler on.
#[tokio::test]
async fn the_image_runs_from_its_config_and_the_documented_variables_alone() {
    let fake = FakeMusement::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = docker_env_here(dir.path(), &fake);
    let container_toml = dir.path().join("container.toml");
    std::fs::write(&container_toml, read_deploy("container.toml")).unwrap();

    // As `docker exec … orderwatch check-config` runs it: ORDERWATCH_CONFIG from the image.
    let output = orderwatch()
        .arg("check-config")
        .env("ORDERWATCH_CONFIG", &container_toml)
        .envs(&env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = assert_succeeded("check-config with docker.env", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "no warning: {stderr}");
    for var in env.keys() {
        assert!(shown.contains(&format!("# env {var}")), "{var}: {shown}");
    }
    for secret in [WEBHOOK_PASSWORD, CLIENT_SECRET] {
        assert!(!shown.contains(secret), "check-config shows no secret");
    }
    assert!(shown.contains("format = \"json\"  # file"), "{shown}");

    let launch = env.iter().fold(
        Daemon::launch(dir, &read_deploy("container.toml")),
        |launch, (name, value)| launch.env(name, value),
    );
    let mut daemon = launch.start();
    daemon.wait_ready().await;
    let body = valid_webhook(1);
    assert_eq!(daemon.post_webhook(body.clone()).await, 401, "auth is on");
    let authorized = daemon
        .webhook_request()
        .basic_auth("musement", Some(WEBHOOK_PASSWORD))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);
    let mut logged: Vec<String> = daemon.startup_log.iter().map(|e| e.to_string()).collect();
    logged.extend(daemon.stop());
    assert!(
        logged
            .iter()
            .any(|line| line.contains("\"the reconciler is on\"")),
        "the credentials from the secret files turn the reconciler on: {logged:#?}"
    );
}

// ---- deploy/compose.yaml -----------------------------------------------------------------

/// The single-node compose file: the daemon on a named volume at the image's database folder,
/// its secrets as compose secret files, its health check the Dockerfile's; nginx in its
/// network namespace with the systemd setup's site, started once the daemon is healthy.
#[test]
fn the_compose_file_runs_the_daemon_on_a_volume_with_nginx_in_its_namespace() {
    let compose = compose("compose.yaml");
    assert_eq!(
        keys(&compose["services"]),
        ["nginx", "orderwatch"].map(String::from).into(),
    );
    let daemon = service(&compose, "orderwatch");
    assert_eq!(text(&daemon["build"]["dockerfile"]), "deploy/Dockerfile");
    let mounts = texts(&daemon["volumes"]);
    assert_eq!(mounts, ["orderwatch-data:/var/lib/orderwatch"]);
    assert!(keys(&compose["volumes"]).contains("orderwatch-data"));
    assert!(
        read_deploy("container.toml").contains("path = \"/var/lib/orderwatch/orderwatch.db\""),
        "the volume holds the image's database"
    );
    let mut image_check = vec!["CMD".to_owned()];
    image_check.extend(dockerfile_healthcheck());
    assert_eq!(texts(&daemon["healthcheck"]["test"]), image_check);

    // Every secret file the environment names is one of the service's compose secrets, each
    // a file beside the compose file; no variable holds a secret itself.
    let env = environment(daemon);
    let granted = texts(&daemon["secrets"]);
    for (name, value) in &env {
        if name.ends_with("_FILE") {
            assert!(granted.contains(&secret_name(value).to_owned()), "{name}");
        }
        assert!(
            !["PASSWORD", "SECRET", "TOKEN"]
                .iter()
                .any(|s| name.ends_with(s)),
            "{name} holds a secret"
        );
    }
    for secret in &granted {
        let file = text(&compose["secrets"][secret.as_str()]["file"]);
        assert_eq!(file, format!("./secrets/{secret}"));
    }
    assert_eq!(env["ORDERWATCH_SERVER__LISTEN"], "127.0.0.1:8080");
    assert_eq!(env["ORDERWATCH_SERVER__TRUSTED_PROXIES"], "127.0.0.1");

    let nginx = service(&compose, "nginx");
    assert_eq!(text(&nginx["network_mode"]), "service:orderwatch");
    assert!(
        texts(&nginx["volumes"]).contains(&"./nginx.conf:/etc/nginx/conf.d/default.conf:ro".into())
    );
    assert_eq!(
        text(&nginx["depends_on"]["orderwatch"]["condition"]),
        "service_healthy"
    );
    assert!(
        read_deploy("nginx.conf").contains("server 127.0.0.1:8080;"),
        "nginx.conf's upstream is the daemon's listen in the shared namespace"
    );
    assert!(texts(&daemon["ports"]).contains(&"443:443".to_owned()));
}

/// The daemon's service is configured by the image's config and its environment alone: every
/// variable sets a key, with no warning (`--offline`: the secret files are named, not read).
#[test]
fn the_compose_daemon_is_configured_by_its_environment_alone() {
    let env = environment(service(&compose("compose.yaml"), "orderwatch"));
    let output = orderwatch()
        .args(["check-config", "--offline"])
        .env(
            "ORDERWATCH_CONFIG",
            crate::helpers::deploy_file("container.toml"),
        )
        .envs(&env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = assert_succeeded("check-config for compose.yaml", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "no warning: {stderr}");
    for var in env.keys() {
        assert!(shown.contains(&format!("# env {var}")), "{var}: {shown}");
    }
}

#[test]
fn the_compose_file_passes_yamllint() {
    crate::helpers::compose::assert_yamllint_clean(&crate::helpers::deploy_file("compose.yaml"));
}

/// The pair as processes: the daemon with the compose file's environment (its loopback port a
/// free one, its secrets temp files, Musement the fake), nginx with `nginx.conf` in front.
/// A webhook with the password goes through and is stored, one without is refused, and
/// nothing else of the daemon is served through nginx.
#[tokio::test]
async fn the_compose_pair_stores_webhooks_through_nginx() {
    if crate::helpers::backend::sqlite_only("the single-node compose file's SQLite volume") {
        return;
    }
    let fake = FakeMusement::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = environment(service(&compose("compose.yaml"), "orderwatch"));
    secrets_into(&dir.path().join("secrets"), &mut env);
    for (name, value) in [
        ("ORDERWATCH_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "ORDERWATCH_SERVER__METRICS_LISTEN",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "ORDERWATCH_DATABASE__PATH",
            dir.path()
                .join("orderwatch.db")
                .to_str()
                .unwrap()
                .to_owned(),
        ),
        ("ORDERWATCH_MUSEMENT__BASE_URL", fake.base_url()),
        ("ORDERWATCH_MUSEMENT__APPLICATION", APPLICATION.to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    let launch = env.iter().fold(
        Daemon::launch(dir, &read_deploy("container.toml")),
        |launch, (name, value)| launch.env(name, value),
    );
    let daemon = launch.start();
    daemon.wait_ready().await;
    let Some(nginx) = Nginx::in_front_of(daemon.addr) else {
        return crate::helpers::skip("compose pair", "nginx or openssl is not installed");
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true) // our own throwaway certificate, on loopback
        .build()
        .unwrap();
    let url = nginx.url("/webhooks/musement");
    let body = valid_webhook(7);
    let refused = json_post(&client, &url).body(body.clone()).send().await;
    assert_eq!(refused.unwrap().status(), 401);
    let stored = json_post(&client, &url)
        .basic_auth("musement", Some(WEBHOOK_PASSWORD))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let events: i64 = value(&daemon.db(), "SELECT count(*) FROM item_events", []);
    assert_eq!(events, 1, "the acknowledged webhook is stored");
    for private in ["/healthz", "/readyz", "/metrics"] {
        let response = client.get(nginx.url(private)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{private} through nginx");
    }
}
