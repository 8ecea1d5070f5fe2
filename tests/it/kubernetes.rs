//! `deploy/kubernetes/`: the plain manifests for SQLite (`sqlite.yaml`: a StatefulSet of one
//! replica on a ReadWriteOnce volume) and PostgreSQL (`postgres.yaml`: a Deployment of several
//! replicas with a PodDisruptionBudget), and their README. No cluster here (and no `helm` or
//! `kubeconform`): the files are parsed and the fields that matter checked, `yamllint` checks
//! the YAML, and the real binary's `check-config --offline` checks the container's environment
//! against the image's own config file (`deploy/container.toml`). Nothing here starts a daemon.

use std::collections::BTreeMap;
use std::process::Stdio;

use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::compose::{assert_yamllint_clean, text};
use crate::helpers::process::assert_succeeded;
use crate::helpers::{deploy_file, orderwatch, read_deploy, repo_file};

/// The two manifests, and the workload kind each runs the daemon with.
const MANIFESTS: [(&str, &str); 2] = [
    ("sqlite.yaml", "StatefulSet"),
    ("postgres.yaml", "Deployment"),
];

/// The image's user and group (`USER 10001:10001` in `deploy/Dockerfile`).
const IMAGE_UID: i64 = 10001;

/// The label every object and pod carries: `orderwatch`.
const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The label that tells the two manifests' pods apart.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

// ---- the manifests, parsed -------------------------------------------------------------------

/// `deploy/kubernetes/FILE` parsed: its documents, each one object. Each document starts with
/// `---` (yamllint's `document-start` wants it too), so objects can be appended or split off.
fn manifest(file: &str) -> Vec<Yaml> {
    let text = read_deploy(&format!("kubernetes/{file}"));
    assert!(text.starts_with("---\n"), "{file} starts with ---");
    let documents = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    for document in &documents {
        assert!(
            document.as_hash().is_some(),
            "{file}: every document is one object: {document:?}"
        );
    }
    documents
}

/// A list (an absent one is empty: Kubernetes treats both alike).
fn list(yaml: &Yaml) -> &[Yaml] {
    match yaml {
        Yaml::BadValue => &[],
        other => other
            .as_vec()
            .unwrap_or_else(|| panic!("not a list: {other:?}")),
    }
}

/// A mapping of scalars (labels, a selector's `matchLabels`, annotations) as text.
fn string_map(yaml: &Yaml) -> BTreeMap<String, String> {
    yaml.as_hash()
        .unwrap_or_else(|| panic!("not a mapping: {yaml:?}"))
        .iter()
        .map(|(key, value)| (text(key), text(value)))
        .collect()
}

/// The kinds of a manifest's objects, in order.
fn kinds(documents: &[Yaml]) -> Vec<String> {
    documents.iter().map(|doc| text(&doc["kind"])).collect()
}

/// The one object of `kind`.
fn object<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    let mut found = documents.iter().filter(|doc| text(&doc["kind"]) == kind);
    let object = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "one {kind}");
    object
}

/// A manifest's workload (the StatefulSet or the Deployment), checked to be `apps/v1`.
fn workload<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    let workload = object(documents, kind);
    assert_eq!(text(&workload["apiVersion"]), "apps/v1", "{kind}");
    workload
}

/// The pod spec of a workload's template.
fn pod_spec(workload: &Yaml) -> &Yaml {
    &workload["spec"]["template"]["spec"]
}

/// The pod template's labels, which the Service and the PodDisruptionBudget must select.
fn pod_labels(workload: &Yaml) -> BTreeMap<String, String> {
    string_map(&workload["spec"]["template"]["metadata"]["labels"])
}

/// The one container, `orderwatch` (no sidecar: the checks below speak of "the container").
fn container(workload: &Yaml) -> &Yaml {
    let containers = list(&pod_spec(workload)["containers"]);
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    assert_eq!(text(&containers[0]["name"]), "orderwatch");
    &containers[0]
}

/// Whether `selector` (a `matchLabels` mapping) selects a pod with `labels`: every one of its
/// labels is the pod's. It must name both of ours, so it cannot select the other manifest's
/// pods (or another application's) by accident.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.contains_key(NAME_LABEL) && selector.contains_key(INSTANCE_LABEL),
        "a selector names {NAME_LABEL} and {INSTANCE_LABEL}: {selector:?}"
    );
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The container's environment, every entry a literal `value`: secrets come as files (their
/// paths are not secret), and `check-config` below runs on exactly these values. No `envFrom`
/// either, which would bring in variables nobody checked here.
fn environment(container: &Yaml) -> BTreeMap<String, String> {
    assert!(container["envFrom"].is_badvalue(), "no envFrom");
    list(&container["env"])
        .iter()
        .map(|entry| {
            let name = text(&entry["name"]);
            assert!(
                entry["valueFrom"].is_badvalue(),
                "{name}: a literal value, not valueFrom"
            );
            (name, text(&entry["value"]))
        })
        .collect()
}

/// The number of the container port `port` names (a number, or a port's `name`).
fn container_port(container: &Yaml, port: &Yaml) -> i64 {
    match port {
        Yaml::Integer(number) => *number,
        Yaml::String(name) => list(&container["ports"])
            .iter()
            .find(|p| text(&p["name"]) == *name)
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("not a port: {other:?}"),
    }
}

/// The pod's volume `name`, if it is one (the StatefulSet's claims are not).
fn pod_volume<'a>(pod: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    list(&pod["volumes"])
        .iter()
        .find(|v| text(&v["name"]) == name)
}

/// The pod's volume `name`, which must exist.
fn volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    pod_volume(pod, name).unwrap_or_else(|| panic!("no volume {name}"))
}

/// The container's mount at `path`: its volume's name, or `None`.
fn mount_at(container: &Yaml, path: &str) -> Option<String> {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| text(&m["mountPath"]) == path)
        .map(|m| text(&m["name"]))
}

/// The container's read-only mounts of `secret` volumes: each mount path with the files the
/// volume projects (its `items`' paths; the Secret must then hold those keys).
fn secret_mounts(pod: &Yaml, container: &Yaml) -> Vec<(String, Vec<String>)> {
    list(&container["volumeMounts"])
        .iter()
        .filter_map(|mount| {
            let secret = &pod_volume(pod, &text(&mount["name"]))?["secret"];
            if secret.is_badvalue() {
                return None;
            }
            let path = text(&mount["mountPath"]);
            assert_eq!(
                mount["readOnly"],
                Yaml::Boolean(true),
                "the secret volume at {path} is mounted read-only"
            );
            let items = list(&secret["items"])
                .iter()
                .map(|item| text(&item["path"]))
                .collect();
            Some((path, items))
        })
        .collect()
}

/// Whether `path` is a file the pod's secret volumes project (and so the Secret must hold).
fn in_secret_volume(pod: &Yaml, container: &Yaml, path: &str) -> bool {
    secret_mounts(pod, container).iter().any(|(mount, items)| {
        path.strip_prefix(mount.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|file| items.is_empty() || items.iter().any(|item| item == file))
    })
}

/// The container's security setting `key`: its own, else the pod's (Kubernetes' precedence).
fn security<'a>(pod: &'a Yaml, container: &'a Yaml, key: &str) -> &'a Yaml {
    match &container["securityContext"][key] {
        Yaml::BadValue => &pod["securityContext"][key],
        own => own,
    }
}

/// Every manifest with its workload, for the checks both must pass.
fn each_workload(check: impl Fn(&str, &[Yaml], &Yaml)) {
    for (file, kind) in MANIFESTS {
        let documents = manifest(file);
        check(file, &documents, workload(&documents, kind));
    }
}

/// The image's config file, whose keys the environment completes.
fn container_toml() -> toml::Table {
    read_deploy("container.toml")
        .parse()
        .expect("container.toml is TOML")
}

// ---- each engine -----------------------------------------------------------------------------

#[test]
fn sqlite_runs_exactly_one_pod_on_a_read_write_once_volume() {
    let documents = manifest("sqlite.yaml");
    assert_eq!(
        kinds(&documents),
        ["Service", "StatefulSet"],
        "sqlite.yaml's objects"
    );
    let set = workload(&documents, "StatefulSet");
    let spec = &set["spec"];
    // One writer owns the file; a StatefulSet stops the old pod before it starts the new one.
    assert_eq!(spec["replicas"].as_i64(), Some(1), "exactly one replica");
    // Both are the defaults; either may be left out.
    let policy = &spec["podManagementPolicy"];
    assert!(
        policy.is_badvalue() || text(policy) == "OrderedReady",
        "{policy:?}"
    );
    let strategy = &spec["updateStrategy"]["type"];
    assert!(
        strategy.is_badvalue() || text(strategy) == "RollingUpdate",
        "an update replaces the pod (OnDelete would leave the old version running): {strategy:?}"
    );
    // The database folder of the image's config is the claim's mount.
    let database = container_toml()["database"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let folder = database.rsplit_once('/').expect("an absolute path").0;
    assert_eq!(folder, "/var/lib/orderwatch");
    let claims = list(&spec["volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1, "one volume claim template");
    let claim = &claims[0];
    let claim_name = text(&claim["metadata"]["name"]);
    assert_eq!(
        mount_at(container(set), folder).as_deref(),
        Some(claim_name.as_str()),
        "the claim {claim_name} is mounted at {folder}"
    );
    assert_eq!(
        list(&claim["spec"]["accessModes"])
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        ["ReadWriteOnce"],
        "a block volume, one node at a time"
    );
    let mode = &claim["spec"]["volumeMode"];
    assert!(
        mode.is_badvalue() || text(mode) == "Filesystem",
        "a file system on the block volume (the default), not a raw device: {mode:?}"
    );
    assert!(!text(&claim["spec"]["resources"]["requests"]["storage"]).is_empty());
    // The image writes there as 10001: the volume must be its group's.
    assert_eq!(
        pod_spec(set)["securityContext"]["fsGroup"].as_i64(),
        Some(IMAGE_UID)
    );
    // SQLite: no URL (and, above, no PodDisruptionBudget: on one pod it would block drains).
    assert!(!environment(container(set)).contains_key("ORDERWATCH_DATABASE__URL"));
    // The warning, where whoever edits the manifest reads it.
    let text = read_deploy("kubernetes/sqlite.yaml");
    for words in [
        "block volume",
        "ReadWriteOnce",
        "Never NFS",
        "network file system",
    ] {
        assert!(text.contains(words), "sqlite.yaml warns: {words:?}");
    }
}

#[test]
fn postgres_runs_several_pods_with_a_disruption_budget_and_the_password_from_the_secret() {
    let documents = manifest("postgres.yaml");
    assert_eq!(
        kinds(&documents),
        ["Service", "Deployment", "PodDisruptionBudget"],
        "postgres.yaml's objects"
    );
    let deployment = workload(&documents, "Deployment");
    let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
    assert!(replicas >= 2, "several replicas: {replicas}");
    // A rolling update never takes a ready pod away before its successor is ready.
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(text(&rolling["maxUnavailable"]), "0", "maxUnavailable");

    let labels = pod_labels(deployment);
    assert!(selects(
        &string_map(&deployment["spec"]["selector"]["matchLabels"]),
        &labels
    ));
    let budget = object(&documents, "PodDisruptionBudget");
    assert_eq!(text(&budget["apiVersion"]), "policy/v1");
    assert!(
        selects(
            &string_map(&budget["spec"]["selector"]["matchLabels"]),
            &labels
        ),
        "the PodDisruptionBudget selects the Deployment's pods"
    );
    let min_available = budget["spec"]["minAvailable"]
        .as_i64()
        .expect("minAvailable");
    assert!(
        (1..replicas).contains(&min_available),
        "at least one pod stays up, and a drain can still evict one: {min_available}"
    );

    // The URL names the server and the user, the password is the Secret's file.
    let container = container(deployment);
    let env = environment(container);
    let url = &env["ORDERWATCH_DATABASE__URL"];
    assert!(url.starts_with("postgres://"), "{url}");
    let authority = url["postgres://".len()..].split('/').next().unwrap();
    let (user, _) = authority.rsplit_once('@').expect("a user in the URL");
    assert!(!user.contains(':'), "no password in the URL: {url}");
    let password = &env["ORDERWATCH_DATABASE__PASSWORD_FILE"];
    assert!(
        in_secret_volume(pod_spec(deployment), container, password),
        "ORDERWATCH_DATABASE__PASSWORD_FILE={password} is in the Secret's volume"
    );
    // Off loopback TLS checks the server: stated, not left to a default nobody reads.
    assert_eq!(env["ORDERWATCH_DATABASE__TLS"], "verify-full");
    // No SQLite volume: the pods are interchangeable.
    assert!(deployment["spec"]["volumeClaimTemplates"].is_badvalue());
    for volume in list(&pod_spec(deployment)["volumes"]) {
        assert!(volume["persistentVolumeClaim"].is_badvalue(), "{volume:?}");
    }
}

// ---- both ------------------------------------------------------------------------------------

#[test]
fn both_run_a_named_image_probed_on_readyz_and_healthz_at_the_webhook_port() {
    let listen = container_toml()["server"]["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let webhook_port: i64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(webhook_port, 8080);
    each_workload(|file, _, workload| {
        let container = container(workload);
        let image = text(&container["image"]);
        let (_, tag) = image.rsplit_once(':').expect("an image with a tag");
        assert!(
            !image.is_empty() && tag != "latest",
            "{file}: a fixed image version: {image}"
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(text(&get["path"]), path, "{file}: {probe}");
            assert_eq!(
                container_port(container, &get["port"]),
                webhook_port,
                "{file}: {probe} on the webhook port"
            );
        }
        // SIGTERM lets in-flight work finish within shutdown_grace (10 s) plus a lock wait.
        let grace = pod_spec(workload)["terminationGracePeriodSeconds"].as_i64();
        assert!(grace.is_some_and(|s| s >= 30), "{file}: {grace:?}");
    });
}

#[test]
fn both_give_secrets_only_as_files_from_a_secret_volume() {
    each_workload(|file, _, workload| {
        let pod = pod_spec(workload);
        let container = container(workload);
        let env = environment(container);
        let files: Vec<_> = env
            .iter()
            .filter(|(var, _)| var.ends_with("_FILE"))
            .collect();
        assert!(
            files.len() >= 3,
            "{file}: the webhook and Musement secrets as files"
        );
        for (var, path) in files {
            assert!(
                in_secret_volume(pod, container, path),
                "{file}: {var}={path} is a file of a secret volume mounted read-only"
            );
        }
        // A variable about a secret names its file; none holds the value itself.
        for var in env.keys() {
            if ["PASSWORD", "SECRET", "CLIENT_ID", "TOKEN"]
                .iter()
                .any(|word| var.contains(word))
            {
                assert!(
                    var.ends_with("_FILE"),
                    "{file}: {var} must name a file, not hold a value"
                );
            }
        }
        // No Secret object with data ships with the manifests: it is created from files.
        for document in &manifest(file) {
            assert_ne!(text(&document["kind"]), "Secret", "{file}");
        }
    });
}

#[test]
fn both_run_as_the_image_user_on_a_read_only_root_file_system() {
    each_workload(|file, _, workload| {
        let pod = pod_spec(workload);
        let container = container(workload);
        let setting = |key| security(pod, container, key);
        assert_eq!(setting("runAsNonRoot"), &Yaml::Boolean(true), "{file}");
        assert_eq!(setting("runAsUser").as_i64(), Some(IMAGE_UID), "{file}");
        assert_eq!(setting("runAsGroup").as_i64(), Some(IMAGE_UID), "{file}");
        assert_eq!(
            setting("seccompProfile")["type"].as_str(),
            Some("RuntimeDefault"),
            "{file}"
        );
        let own = &container["securityContext"];
        assert_eq!(own["readOnlyRootFilesystem"], Yaml::Boolean(true), "{file}");
        assert_eq!(
            own["allowPrivilegeEscalation"],
            Yaml::Boolean(false),
            "{file}"
        );
        let dropped: Vec<_> = list(&own["capabilities"]["drop"])
            .iter()
            .map(text)
            .collect();
        assert_eq!(dropped, ["ALL"], "{file}: every capability dropped");
        assert!(
            own["capabilities"]["add"].is_badvalue(),
            "{file}: none added"
        );
        // The one writable place besides the database: /tmp, for temporary files.
        let tmp = mount_at(container, "/tmp").unwrap_or_else(|| panic!("{file}: /tmp mounted"));
        assert!(
            !volume(pod, &tmp)["emptyDir"].is_badvalue(),
            "{file}: /tmp is an emptyDir"
        );
        let requests = &container["resources"]["requests"];
        for resource in ["cpu", "memory"] {
            assert!(
                !requests[resource].is_badvalue(),
                "{file}: a {resource} request"
            );
        }
        assert!(
            !container["resources"]["limits"]["memory"].is_badvalue(),
            "{file}: a memory limit"
        );
        // Service links would set ORDERWATCH_<SERVICE>_PORT and the like, which the daemon
        // warns about as variables that set no key.
        assert_eq!(pod["enableServiceLinks"], Yaml::Boolean(false), "{file}");
    });
}

#[test]
fn both_have_prometheus_scrape_the_metrics_listener() {
    each_workload(|file, _, workload| {
        let annotations = string_map(&workload["spec"]["template"]["metadata"]["annotations"]);
        let env = environment(container(workload));
        let metrics = env
            .get("ORDERWATCH_SERVER__METRICS_LISTEN")
            .unwrap_or_else(|| panic!("{file}: /metrics on its own listener"));
        let port = metrics.rsplit_once(':').expect("HOST:PORT").1;
        assert!(
            !metrics.starts_with("127.") && !metrics.starts_with("[::1]"),
            "{file}: Prometheus reaches it from outside the pod: {metrics}"
        );
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            annotations.get("prometheus.io/port").map(String::as_str),
            Some(port),
            "{file}: the annotation names the port of ORDERWATCH_SERVER__METRICS_LISTEN"
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );
        let declared = list(&container(workload)["ports"]).iter().any(|p| {
            p["containerPort"]
                .as_i64()
                .map(|n| n.to_string())
                .as_deref()
                == Some(port)
        });
        assert!(declared, "{file}: port {port} is a declared container port");
    });
}

#[test]
fn each_service_selects_its_pods_and_targets_the_webhook_port() {
    each_workload(|file, documents, workload| {
        let labels = pod_labels(workload);
        assert_eq!(
            labels.get(NAME_LABEL).map(String::as_str),
            Some("orderwatch")
        );
        assert!(selects(
            &string_map(&workload["spec"]["selector"]["matchLabels"]),
            &labels
        ));
        let service = object(documents, "Service");
        assert_eq!(text(&service["apiVersion"]), "v1");
        assert!(
            selects(&string_map(&service["spec"]["selector"]), &labels),
            "{file}: the Service selects the pods"
        );
        let ports = list(&service["spec"]["ports"]);
        assert_eq!(
            ports.len(),
            1,
            "{file}: the webhook port only, not the metrics one"
        );
        let target = match &ports[0]["targetPort"] {
            Yaml::BadValue => &ports[0]["port"],
            target => target,
        };
        assert_eq!(container_port(container(workload), target), 8080, "{file}");
        if workload["kind"].as_str() == Some("StatefulSet") {
            assert_eq!(
                workload["spec"]["serviceName"], service["metadata"]["name"],
                "{file}"
            );
        }
    });
}

/// The container's environment as the image sees it: `ORDERWATCH_CONFIG` names the image's
/// config file (here the repository's copy), and every variable of the manifest sets a key.
/// `--offline` names the secret files without reading them (they exist only in the pod).
#[test]
fn each_container_environment_passes_check_config_with_the_image_config() {
    let image_config = deploy_file("container.toml");
    each_workload(|file, _, workload| {
        let env = environment(container(workload));
        let output = orderwatch()
            .args(["check-config", "--offline"])
            .env("ORDERWATCH_CONFIG", &image_config)
            .envs(&env)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = assert_succeeded(&format!("check-config for {file}"), &output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.trim().is_empty(), "{file}: no warning: {stderr}");
        for var in env.keys() {
            assert!(
                var.starts_with("ORDERWATCH_") && var.contains("__"),
                "{file}: {var}"
            );
            assert!(
                shown.contains(&format!("# env {var}")),
                "{file}: {var} sets a key: {shown}"
            );
        }
    });
}

#[test]
fn the_manifests_pass_yamllint() {
    for (file, _) in MANIFESTS {
        assert_yamllint_clean(&deploy_file("kubernetes").join(file));
    }
}

/// The README says what the manifests cannot enforce (the volume's kind) and how to create the
/// Secret: every key a manifest's secret volume projects is given with `--from-file`.
#[test]
fn the_readme_warns_about_the_volume_and_creates_every_secret_key() {
    let path = repo_file("deploy/kubernetes/README.md");
    assert!(path.is_file(), "{} exists", path.display());
    let readme = read_deploy("kubernetes/README.md");
    for words in [
        "ReadWriteOnce",
        "NFS",
        "block volume",
        "create secret generic",
    ] {
        assert!(readme.contains(words), "the README mentions {words:?}");
    }
    each_workload(|file, _, workload| {
        let pod = pod_spec(workload);
        for volume in list(&pod["volumes"]) {
            for item in list(&volume["secret"]["items"]) {
                let key = text(&item["key"]);
                assert!(
                    readme.contains(&format!("--from-file={key}=")),
                    "{file}: the README creates the Secret's key {key}"
                );
            }
        }
    });
}
