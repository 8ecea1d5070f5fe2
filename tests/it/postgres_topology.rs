//! `deploy/compose.ha.yaml`: PostgreSQL, two orderwatch instances on it and nginx round-robin in
//! front (`deploy/nginx.ha.conf`). Checked statically (its structure, that secrets are only
//! files, `yamllint` where installed, `check-config --offline` on each instance's environment
//! alone), then run as processes on loopback like the nginx example in `deploy.rs`: a
//! throwaway PostgreSQL database, the real daemon twice with the compose file's environment
//! (in-container addresses and secret paths swapped for loopback ones and temp files), and
//! nginx with `nginx.ha.conf`. Named `postgres_*` so it runs once, in the outer test pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use yaml_rust2::Yaml;

use crate::helpers::compose::{
    SECRETS, assert_yamllint_clean, compose as compose_file, dockerfile_healthcheck, environment,
    keys, secret_name, service, text, texts,
};
use crate::helpers::nginx::Nginx;
use crate::helpers::pg;
use crate::helpers::process::assert_succeeded;
use crate::helpers::{
    Daemon, deploy_file, free_port, json_post, orderwatch, read_deploy, replace_once, tool, uuid,
    webhook,
};

/// Generous bound for anything a tool does here (noisy machines).
const LIMIT: Duration = Duration::from_secs(20);

/// The two instances' services.
const INSTANCES: [&str; 2] = ["orderwatch-a", "orderwatch-b"];

// ---- the compose file, parsed -------------------------------------------------------------

/// `deploy/compose.ha.yaml`, parsed.
fn compose() -> Yaml {
    compose_file("compose.ha.yaml")
}

/// A service's fixed address on the `edge` network.
fn edge_address(service: &Yaml) -> String {
    text(&service["networks"]["edge"]["ipv4_address"])
}

/// The `server ADDR;` lines of nginx.ha.conf's `upstream orderwatch` block, as ADDR.
fn upstream_servers(site: &str) -> Vec<String> {
    let block = site
        .split("upstream orderwatch {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("nginx.ha.conf has an upstream orderwatch block");
    block
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("server "))
        .map(|rest| {
            rest.trim_end_matches(';')
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

// ---- static checks -------------------------------------------------------------------------

#[test]
fn the_ha_compose_file_runs_postgres_two_instances_and_nginx_with_health_checks() {
    let compose = compose();
    assert!(
        compose["version"].is_badvalue(),
        "the Compose specification has no `version:`"
    );
    assert_eq!(
        keys(&compose["services"]),
        ["nginx", "orderwatch-a", "orderwatch-b", "postgres"]
            .map(String::from)
            .into(),
    );
    for name in keys(&compose["services"]) {
        let service = service(&compose, &name);
        let test = texts(&service["healthcheck"]["test"]);
        assert!(test.len() > 1, "{name}: a health check command: {test:?}");
        assert_eq!(text(&service["restart"]), "unless-stopped", "{name}");
    }
    let declared_secrets = keys(&compose["secrets"]);

    // PostgreSQL 15, its password from a secret file, its data on a named volume.
    let postgres = service(&compose, "postgres");
    assert!(text(&postgres["image"]).starts_with("postgres:15"));
    let pg_env = environment(postgres);
    assert!(!pg_env.contains_key("POSTGRES_PASSWORD"), "{pg_env:?}");
    let pg_password = &pg_env["POSTGRES_PASSWORD_FILE"];
    assert!(texts(&postgres["secrets"]).contains(&secret_name(pg_password).to_owned()));
    assert!(texts(&postgres["healthcheck"]["test"]).contains(&"pg_isready".to_owned()));
    let volume = texts(&postgres["volumes"])
        .into_iter()
        .find(|v| v.ends_with(":/var/lib/postgresql/data"))
        .expect("the data directory on a volume");
    let volume = volume.split(':').next().unwrap();
    assert!(
        keys(&compose["volumes"]).contains(volume),
        "named: {volume}"
    );
    assert_eq!(
        texts(&postgres["networks"]),
        ["db"],
        "only the instances reach it"
    );
    assert_eq!(compose["networks"]["db"]["internal"], Yaml::Boolean(true));

    // Two instances, built from the Dockerfile, alike but for their id and address.
    let [a, b] = INSTANCES.map(|name| service(&compose, name));
    let [env_a, env_b] = [a, b].map(environment);
    let [rest_a, rest_b] = [a.clone(), b.clone()].map(|service| {
        let mut hash = service.into_hash().unwrap();
        for key in ["environment", "networks"] {
            hash.remove(&Yaml::String(key.into()));
        }
        hash
    });
    assert_eq!(
        rest_a, rest_b,
        "the two instances differ only in env and network"
    );
    let mut without_id = [env_a.clone(), env_b.clone()].map(|mut env| {
        env.remove("ORDERWATCH_SERVER__INSTANCE_ID")
            .expect("an explicit instance id");
        env
    });
    assert_eq!(without_id[0], without_id[1], "the same settings but the id");
    let env = std::mem::take(&mut without_id[0]);
    assert_ne!(
        env_a["ORDERWATCH_SERVER__INSTANCE_ID"], env_b["ORDERWATCH_SERVER__INSTANCE_ID"],
        "distinct instance ids"
    );
    assert_eq!(text(&a["build"]["context"]), "..");
    assert_eq!(text(&a["build"]["dockerfile"]), "deploy/Dockerfile");
    assert_eq!(
        text(&a["depends_on"]["postgres"]["condition"]),
        "service_healthy"
    );
    assert_eq!(env["ORDERWATCH_SERVER__LISTEN"], "0.0.0.0:8080");
    // The one database, as the postgres service creates it, with its password.
    assert_eq!(
        env["ORDERWATCH_DATABASE__URL"],
        format!(
            "postgres://{}@postgres:5432/{}",
            pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"]
        )
    );
    assert_eq!(&env["ORDERWATCH_DATABASE__PASSWORD_FILE"], pg_password);
    assert!(env.contains_key("ORDERWATCH_SERVER__AUTH__PASSWORD_FILE"));
    // Every file it reads is a secret it is given and the file declares.
    let given: Vec<String> = texts(&a["secrets"]);
    for (var, value) in env.iter().filter(|(var, _)| var.ends_with("_FILE")) {
        let name = secret_name(value);
        assert!(given.iter().any(|g| g == name), "{var}: {name} not given");
        assert!(
            declared_secrets.contains(name),
            "{var}: {name} not declared"
        );
    }
    // The image's own health check, probing /readyz.
    let mut dockerfile = vec!["CMD".to_owned()];
    dockerfile.extend(dockerfile_healthcheck());
    assert_eq!(texts(&a["healthcheck"]["test"]), dockerfile);
    assert!(dockerfile.iter().any(|arg| arg.contains("GET /readyz")));

    // nginx: the HA site, read-only; both instances ready before it starts; its X-Forwarded-For
    // the one believed; its upstream both instances, on the port they listen on.
    let nginx = service(&compose, "nginx");
    assert!(text(&nginx["image"]).starts_with("nginx:"));
    assert!(
        texts(&nginx["volumes"])
            .contains(&"./nginx.ha.conf:/etc/nginx/conf.d/default.conf:ro".into()),
        "{:?}",
        nginx["volumes"]
    );
    for name in INSTANCES {
        assert_eq!(
            text(&nginx["depends_on"][name]["condition"]),
            "service_healthy"
        );
    }
    assert_eq!(
        env["ORDERWATCH_SERVER__TRUSTED_PROXIES"],
        edge_address(nginx)
    );
    let site = read_deploy("nginx.ha.conf");
    assert_eq!(
        upstream_servers(&site),
        [a, b].map(|service| format!("{}:8080", edge_address(service)))
    );
    let next = site
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("proxy_next_upstream "))
        .expect("proxy_next_upstream");
    for condition in ["error", "timeout", "http_502", "http_503", "non_idempotent"] {
        assert!(
            next.split_whitespace()
                .any(|word| word.trim_end_matches(';') == condition),
            "{next}"
        );
    }
    // nginx's health check asks the site's loopback status server.
    let nginx_check = texts(&nginx["healthcheck"]["test"]).join(" ");
    let status = site
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("listen 127.0.0.1:"))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("a loopback status server");
    assert!(
        nginx_check.contains(&format!("/dev/tcp/127.0.0.1/{status} ")),
        "{nginx_check}"
    );
}

#[test]
fn the_ha_compose_file_holds_no_secret_only_paths_to_secret_files() {
    let compose = compose();
    for name in keys(&compose["services"]) {
        let service = service(&compose, &name);
        if service["environment"].is_badvalue() {
            continue;
        }
        for (var, value) in environment(service) {
            let upper = var.to_ascii_uppercase();
            if ["PASSWORD", "SECRET", "CLIENT_ID", "TOKEN"]
                .iter()
                .any(|word| upper.contains(word))
            {
                assert!(
                    upper.ends_with("_FILE") && value.starts_with(SECRETS),
                    "{name}: {var} must name a secret file, not hold a value"
                );
            }
            if let Some(rest) = value.split("://").nth(1) {
                let userinfo = rest.split('/').next().unwrap().rsplit_once('@');
                assert!(
                    userinfo.is_none_or(|(user, _)| !user.contains(':')),
                    "{name}: {var} holds a password"
                );
            }
        }
    }
    let secrets = compose["secrets"].as_hash().expect("top-level secrets");
    assert!(!secrets.is_empty());
    for (name, secret) in secrets {
        assert_eq!(keys(secret), ["file".to_owned()].into(), "{name:?}: a file");
        assert!(
            text(&secret["file"]).starts_with("./secrets/"),
            "{secret:?}"
        );
    }
}

#[test]
fn each_instance_is_configured_by_its_environment_alone() {
    let compose = compose();
    for name in INSTANCES {
        let env = environment(service(&compose, name));
        assert_eq!(env["ORDERWATCH_CONFIG"], "/dev/null", "no config file");
        // No --config: ORDERWATCH_CONFIG names the (empty) file, as in the container. Offline:
        // the secret files are named, not read (they exist only in the container).
        let output = orderwatch()
            .args(["check-config", "--offline"])
            .envs(&env)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = assert_succeeded(&format!("check-config for {name}"), &output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.trim().is_empty(), "{name}: no warning: {stderr}");
        assert!(
            shown.contains(&format!(
                "instance_id = \"{name}\"  # env ORDERWATCH_SERVER__INSTANCE_ID"
            )),
            "{shown}"
        );
        // Every variable set a key (none is ignored as unknown) and nothing came from a file.
        for var in env.keys().filter(|var| var.contains("__")) {
            assert!(shown.contains(&format!("# env {var}")), "{var}: {shown}");
        }
        assert!(!shown.contains("# file"), "{shown}");
    }
}

#[test]
fn the_ha_compose_file_passes_yamllint() {
    assert_yamllint_clean(&deploy_file("compose.ha.yaml"));
}

// ---- the topology as processes ---------------------------------------------------------------

/// nginx with `deploy/nginx.ha.conf`, its upstream servers (the compose file's fixed
/// addresses, `compose_upstreams`) replaced by `upstreams` and its status server (the
/// container's health check) moved to a free loopback port; with that port. `None` when nginx
/// or openssl is missing.
fn start_nginx(compose_upstreams: &[String], upstreams: &[SocketAddr]) -> Option<(Nginx, u16)> {
    let status_port = free_port();
    let nginx = Nginx::start("nginx.ha.conf", |mut site| {
        for (from, to) in compose_upstreams.iter().zip(upstreams) {
            site = replace_once(&site, &format!("server {from};"), &format!("server {to};"));
        }
        replace_once(
            &site,
            "listen 127.0.0.1:8081;",
            &format!("listen 127.0.0.1:{status_port};"),
        )
    })?;
    Some((nginx, status_port))
}

/// Whether a `postgres://` URL carries a password.
fn has_password(url: &str) -> bool {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next()?.rsplit_once('@'))
        .is_some_and(|(user, _)| user.contains(':'))
}

/// An instance's compose environment for a process on this machine: every address on loopback
/// (nginx, the only proxy, connects from 127.0.0.1; the Musement API is nothing listening),
/// the test's database, each `/run/secrets/NAME` the file `secrets/NAME`, no reconciler (no
/// network here), and `--config` naming the (empty) file instead of `ORDERWATCH_CONFIG`.
fn on_this_machine(
    env: &BTreeMap<String, String>,
    database: &str,
    secrets: &Path,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env
        .iter()
        .filter_map(|(var, value)| {
            let value = match var.as_str() {
                "ORDERWATCH_CONFIG" => return None,
                "ORDERWATCH_SERVER__LISTEN" | "ORDERWATCH_SERVER__METRICS_LISTEN" => {
                    "127.0.0.1:0".to_owned()
                }
                "ORDERWATCH_SERVER__TRUSTED_PROXIES" => "127.0.0.1".to_owned(),
                "ORDERWATCH_DATABASE__URL" => database.to_owned(),
                // A server given by ORDERWATCH_TEST_PG may have its password in the URL.
                "ORDERWATCH_DATABASE__PASSWORD_FILE" if has_password(database) => return None,
                "ORDERWATCH_MUSEMENT__BASE_URL" => {
                    format!("http://127.0.0.1:{}/api/v3", free_port())
                }
                _ => match value.strip_prefix(SECRETS) {
                    Some(name) => secrets.join(name).display().to_string(),
                    None => value.clone(),
                },
            };
            Some((var.clone(), value))
        })
        .collect();
    vars.push(("ORDERWATCH_RECONCILER__ENABLED".into(), "false".into()));
    vars
}

/// Which instance stored each webhook: `item_events.receiver` by item, on PostgreSQL.
async fn receivers(client: &tokio_postgres::Client) -> BTreeMap<String, String> {
    client
        .query(
            "SELECT item_uuid::text, receiver FROM item_events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// How many webhooks each instance stored, of `receivers`.
fn per_instance(receivers: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for receiver in receivers.values() {
        *counts.entry(receiver.clone()).or_default() += 1;
    }
    counts
}

/// Runs a compose health check (`["CMD", program, args…]`) here, its in-container port
/// replaced by `port`; whether it passed.
fn health_check_passes(test: &[String], in_container: &str, port: u16) -> bool {
    let command: Vec<String> = test[1..]
        .iter()
        .map(|arg| {
            arg.replace(
                &format!("/dev/tcp/127.0.0.1/{in_container} "),
                &format!("/dev/tcp/127.0.0.1/{port} "),
            )
        })
        .collect();
    assert_ne!(command, test[1..], "the port was found in {test:?}");
    let output = tool(
        &command[0],
        &command[1..].iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .expect("bash is installed");
    output.status.success()
}

/// The topology of compose.ha.yaml as processes: every webhook sent through nginx is answered
/// 200 and stored, both instances take a share, and after `kill -9` of one the other takes
/// them all, still every one answered 200 (nginx retries the dead instance's requests on the
/// live one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_nginx_store_every_webhook_when_one_is_killed() {
    let Some(db) = pg::database("the HA compose topology") else {
        return;
    };
    let compose = compose();
    let secrets = tempfile::tempdir().unwrap();
    let env_a = environment(service(&compose, INSTANCES[0]));
    let user = env_a["ORDERWATCH_SERVER__AUTH__USERNAME"].clone();
    let password = "a webhook password for this test only";
    for name in keys(&compose["secrets"]) {
        let value = match name.as_str() {
            "webhook-password" => password,
            _ => "unused here",
        };
        std::fs::write(secrets.path().join(name), format!("{value}\n")).unwrap();
    }
    let mut daemons: Vec<Daemon> = INSTANCES
        .iter()
        .map(|name| {
            let env = environment(service(&compose, name));
            on_this_machine(&env, &db.url, secrets.path())
                .iter()
                .fold(
                    Daemon::launch(tempfile::tempdir().unwrap(), ""),
                    |launch, (var, value)| launch.env(var, value),
                )
                .start()
        })
        .collect();
    for daemon in &daemons {
        daemon.wait_ready().await;
    }
    let instance_check = texts(&service(&compose, INSTANCES[0])["healthcheck"]["test"]);
    assert!(
        health_check_passes(&instance_check, "8080", daemons[0].addr.port()),
        "the instances' health check passes against a ready daemon"
    );
    let compose_upstreams: Vec<String> = upstream_servers(&read_deploy("nginx.ha.conf"));
    let addrs: Vec<SocketAddr> = daemons.iter().map(|d| d.addr).collect();
    let Some((nginx, status_port)) = start_nginx(&compose_upstreams, &addrs) else {
        return crate::helpers::skip("nginx HA topology", "nginx or openssl is not installed");
    };
    let nginx_check = texts(&service(&compose, "nginx")["healthcheck"]["test"]);
    assert!(
        health_check_passes(&nginx_check, "8081", status_port),
        "nginx's health check passes: {}",
        nginx.error_log()
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true) // our own throwaway certificate, on loopback
        .timeout(LIMIT)
        .build()
        .unwrap();
    let send = |n: u64| {
        json_post(&client, nginx.url("/webhooks/musement"))
            .basic_auth(&user, Some(password))
            .body(webhook(&uuid(1, n), &uuid(2, n), 1, "PENDING"))
            .send()
    };
    // Health and metrics stay private behind the HA site too.
    for private in ["/readyz", "/metrics"] {
        let response = client.get(nginx.url(private)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{private} through nginx");
    }

    // Both alive: round-robin.
    for n in 1..=40 {
        let response = send(n).await.unwrap();
        assert_eq!(response.status(), 200, "webhook {n}");
    }
    let pg = pg::connect(&db.url).await;
    let before = receivers(&pg).await;
    assert_eq!(
        before.len(),
        40,
        "every acknowledged webhook stored: {before:?}"
    );
    let shares = per_instance(&before);
    assert_eq!(
        shares.keys().collect::<Vec<_>>(),
        INSTANCES.iter().collect::<Vec<_>>(),
        "both instances took webhooks, each under its id: {shares:?}"
    );

    // One killed: nginx sends its share to the other, and nobody sees an error.
    let killed = daemons.pop().unwrap();
    let killed_addr = killed.addr;
    drop(killed.sigkill());
    for n in 41..=60 {
        let response = send(n).await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "webhook {n} with one instance dead: {}",
            nginx.error_log()
        );
    }
    let after = receivers(&pg).await;
    let expected: BTreeSet<String> = (1..=60).map(|n| uuid(1, n)).collect();
    assert_eq!(
        after.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "all 60 acknowledged webhooks are stored"
    );
    for n in 41..=60 {
        assert_eq!(after[&uuid(1, n)], INSTANCES[0], "the survivor stored {n}");
    }
    assert!(
        nginx.error_log().contains(&killed_addr.to_string()),
        "nginx did try the dead instance (and retried on the other): {}",
        nginx.error_log()
    );
    eprintln!(
        "shares while both ran: {shares:?}; after the kill: {:?}",
        per_instance(&after)
    );
}
