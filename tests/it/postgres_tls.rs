//! TLS to PostgreSQL, against a real server with TLS on and a certificate signed by a CA made
//! for the test (`openssl`), whose role `orderwatch` is refused without TLS: each
//! `[database] tls` mode does what it says, probed with `orderwatch migrate`.

use std::path::Path;

use crate::helpers::pg::OwnCluster;
use crate::helpers::{cli, config_file};

/// `orderwatch migrate` with `[database]` given by `env` (the URL included): its exit code and
/// its output, both streams.
fn migrate(dir: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let config = config_file(dir, "");
    let mut command = cli(&config, &["migrate"]);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What is set, and whether `migrate` succeeds or fails saying what.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Result<(), &'a str>);

#[test]
fn each_tls_mode_does_what_it_says_against_a_real_server() {
    let Some((cluster, ca)) = OwnCluster::start_with_tls("TLS modes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = cluster
        .url
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let url = |host: &str| format!("postgres://orderwatch@{host}:{port}/orderwatch");
    let ca = ca.to_str().unwrap();
    let (localhost, ip) = (url("localhost"), url("127.0.0.1"));
    let cases: [Case; 6] = [
        (
            "verify-full against the test CA, by name",
            vec![
                ("ORDERWATCH_DATABASE__TLS", "verify-full"),
                ("ORDERWATCH_DATABASE__TLS_CA_FILE", ca),
            ],
            Ok(()),
        ),
        (
            "verify-full against the test CA, by address",
            vec![
                ("ORDERWATCH_DATABASE__TLS", "verify-full"),
                ("ORDERWATCH_DATABASE__TLS_CA_FILE", ca),
            ],
            Ok(()),
        ),
        (
            "verify-full against the system's CAs",
            vec![("ORDERWATCH_DATABASE__TLS", "verify-full")],
            Err("invalid peer certificate: UnknownIssuer"),
        ),
        (
            "require: encrypted, the certificate not checked",
            vec![("ORDERWATCH_DATABASE__TLS", "require")],
            Ok(()),
        ),
        (
            "the default on loopback: disable, which this role may not use",
            vec![],
            Err(
                "rejects connection for host \"127.0.0.1\", user \"orderwatch\", database \"orderwatch\", no encryption",
            ),
        ),
        (
            "a CA file that is not one",
            vec![
                ("ORDERWATCH_DATABASE__TLS", "verify-full"),
                ("ORDERWATCH_DATABASE__TLS_CA_FILE", "/dev/null"),
            ],
            Err("database.tls_ca_file"),
        ),
    ];
    for (n, (case, mut env, expected)) in cases.into_iter().enumerate() {
        let target = if n == 1 { &ip } else { &localhost };
        env.push(("ORDERWATCH_DATABASE__URL", target));
        let (code, output) = migrate(dir.path(), &env);
        eprintln!("{case}: {}", output.trim());
        match expected {
            Ok(()) => {
                assert_eq!(code, 0, "{case}: {output}");
                let current = format!(
                    "schema version {}",
                    orderwatch::store::postgres::migrate::SCHEMA_VERSION
                );
                assert!(output.contains(&current), "{case}: {output}");
            }
            Err(says) => {
                assert_eq!(code, 1, "{case}: {output}");
                assert!(output.contains(says), "{case}: {output}");
                assert_eq!(output.lines().count(), 1, "{case}: one line: {output}");
            }
        }
    }
}
