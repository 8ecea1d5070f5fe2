//! Compose files under `deploy/` as the tests read them: parsed with merge keys applied, and
//! the few shapes compose gives values (scalars as text, the mapping form of `environment`).

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

use super::process::assert_succeeded;
use super::{read_deploy, skip, tool};

/// Where compose mounts a secret named `NAME`: `/run/secrets/NAME`.
pub const SECRETS: &str = "/run/secrets/";

/// `deploy/FILE` (a compose file) parsed, its merge keys (`<<: *anchor`) applied as compose
/// applies them: the anchored mapping's entries first, the mapping's own entries over them.
pub fn compose(file: &str) -> Yaml {
    let text = read_deploy(file);
    let mut documents =
        YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
    assert_eq!(documents.len(), 1, "{file}: one YAML document");
    merged(documents.remove(0))
}

pub fn merged(yaml: Yaml) -> Yaml {
    match yaml {
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".into());
            let mut out = Hash::new();
            let mut own = Vec::new();
            for (key, value) in hash {
                let value = merged(value);
                if key == merge_key {
                    let Yaml::Hash(base) = value else {
                        panic!("<< takes one mapping here: {value:?}")
                    };
                    out.extend(base);
                } else {
                    own.push((key, value));
                }
            }
            out.extend(own);
            Yaml::Hash(out)
        }
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(merged).collect()),
        other => other,
    }
}

/// `services.NAME`, which must exist.
pub fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.as_hash().is_some(),
        "the compose file has no service {name}"
    );
    service
}

/// A scalar as text (compose reads `environment` values and the like as strings).
pub fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The keys of a mapping, as text.
pub fn keys(yaml: &Yaml) -> BTreeSet<String> {
    yaml.as_hash()
        .unwrap_or_else(|| panic!("not a mapping: {yaml:?}"))
        .keys()
        .map(text)
        .collect()
}

/// A list of scalars, as text.
pub fn texts(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("not a list: {yaml:?}"))
        .iter()
        .map(text)
        .collect()
}

/// A service's `environment` (the mapping form).
pub fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .expect("environment is a mapping")
        .iter()
        .map(|(key, value)| (text(key), text(value)))
        .collect()
}

/// The secret a `/run/secrets/NAME` path names.
pub fn secret_name(path: &str) -> &str {
    path.strip_prefix(SECRETS)
        .unwrap_or_else(|| panic!("{path} is not a compose secret's path ({SECRETS}NAME)"))
}

/// The Dockerfile's HEALTHCHECK command (exec form).
pub fn dockerfile_healthcheck() -> Vec<String> {
    let dockerfile = read_deploy("Dockerfile").replace("\\\n", " ");
    let line = dockerfile
        .lines()
        .find(|line| line.starts_with("HEALTHCHECK "))
        .expect("the Dockerfile has a HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("exec form") + "CMD ".len()..];
    serde_json::from_str(json).unwrap()
}

/// yamllint's default rules without the line-length limit (health checks' one-line shell
/// commands are long).
const YAMLLINT_CONFIG: &str = "{extends: default, rules: {line-length: disable}}";

/// Asserts that `yamllint --strict` finds nothing in `path` (skipped where yamllint is missing).
pub fn assert_yamllint_clean(path: &std::path::Path) {
    let Some(output) = tool(
        "yamllint",
        &["--strict", "-d", YAMLLINT_CONFIG, path.to_str().unwrap()],
    ) else {
        return skip("yamllint", "yamllint is not installed");
    };
    assert_succeeded(&format!("yamllint --strict {}", path.display()), &output);
}
