//! The monitoring files in `deploy/`: the alert rules (`prometheus/alerts.yml`), their unit tests
//! (`prometheus/alerts_test.yml`), the example Prometheus config and the Grafana dashboard
//! (`grafana/orderwatch.json`), checked by real tools against the real daemon:
//!
//! - `promtool check rules`, `promtool test rules` and `promtool check config` on the files,
//!   `promtool check metrics` on a live `/metrics`, and `promtool check rules` on the dashboard's
//!   queries (so Prometheus' own parser reads every one);
//! - every series a rule selects (name and label matchers, read with a PromQL parser) is in a
//!   scrape taken right after start-up, before any event; every series a dashboard panel names
//!   is in a scrape after one webhook and one pass; every series the unit tests feed has a
//!   metric name and label names that a live scrape has;
//! - every alert has a summary, a description, a runbook section that exists, and a unit test
//!   that sees it fire; README.md's metrics table names every metric family of a scrape.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use promql_parser::label::Matcher;
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::exposition::{Exposition, Sample};
use crate::helpers::fake_musement::{FakeMusement, new_uuid, order_json};
use crate::helpers::process::assert_succeeded;
use crate::helpers::{
    Daemon, config_for, deploy_file, fixture, free_port, read_deploy, read_repo_file, skip,
    watch_before_start,
};

/// Series Prometheus makes itself, never in a scrape.
const SYNTHETIC: &[&str] = &["up", "ALERTS", "ALERTS_FOR_STATE"];

/// Labels Prometheus adds to every scraped series (`instance`, `job`): a selector may name
/// them, a scrape never has them.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Bound on the daemon's first pass reaching the fake API.
const LIMIT: Duration = Duration::from_secs(20);

/// `promtool ARGS` with `stdin`, or `None` (said through the skip helper) where promtool is not
/// installed (Debian: `apt-get install prometheus`; `.ci/run` installs it).
fn promtool(args: &[&str], stdin: Option<&str>) -> Option<Output> {
    use std::io::Write;
    let spawned = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            skip("promtool", &format!("cannot run promtool: {error}"));
            return None;
        }
    };
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    Some(child.wait_with_output().unwrap())
}

// ---- the files, read -------------------------------------------------------------------------

/// One alerting rule of alerts.yml.
#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
    labels: Yaml,
    annotations: Yaml,
}

/// Every alerting rule of every group in alerts.yml.
fn alerts() -> Vec<Alert> {
    let docs = YamlLoader::load_from_str(&read_deploy("prometheus/alerts.yml")).unwrap();
    let groups = docs[0]["groups"].as_vec().expect("groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("rules").iter())
        .map(|rule| Alert {
            name: rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_owned(),
            expr: rule["expr"].as_str().expect("expr").to_owned(),
            labels: rule["labels"].clone(),
            annotations: rule["annotations"].clone(),
        })
        .collect()
}

/// The dashboard, parsed.
fn dashboard() -> Value {
    serde_json::from_str(&read_deploy("grafana/orderwatch.json")).expect("the dashboard is JSON")
}

/// Every PromQL query of the dashboard (panel targets, the template variable's metric, the
/// annotation), with Grafana's variables replaced by values Prometheus accepts, as Grafana
/// would send them.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", panel["title"]));
            queries.push(expr.to_owned());
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        queries.extend(annotation["expr"].as_str().map(str::to_owned));
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        // `label_values(METRIC, LABEL)` is Grafana's, not PromQL: its metric is what Prometheus
        // is asked for.
        let query = variable["query"]["query"]
            .as_str()
            .expect("a query variable");
        let metric = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        queries.push(metric.trim().to_owned());
    }
    queries
        .into_iter()
        .map(|query| {
            query
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$instance", ".*")
        })
        .collect()
}

/// The vector selectors of `expr` (those inside range selectors and subqueries too).
fn selectors(expr: &str) -> Vec<VectorSelector> {
    struct Collect(Vec<VectorSelector>);
    impl ExprVisitor for Collect {
        type Error = ();
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
            match expr {
                Expr::VectorSelector(selector) => self.0.push(selector.clone()),
                Expr::MatrixSelector(matrix) => self.0.push(matrix.vs.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut collect = Collect(Vec::new());
    walk_expr(&mut collect, &parsed).unwrap();
    collect.0
}

/// The metric name a selector selects.
fn metric_name(selector: &VectorSelector) -> String {
    selector
        .name
        .clone()
        .or_else(|| {
            selector
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        })
        .unwrap_or_else(|| panic!("a selector without a metric name: {selector}"))
}

/// Whether `sample` is a series `selector` selects, the target labels aside.
fn selects(selector: &VectorSelector, sample: &Sample) -> bool {
    let label_matchers = || {
        selector
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name != "__name__" && !TARGET_LABELS.contains(&m.name.as_str()))
    };
    sample.name == metric_name(selector)
        && label_matchers()
            .all(|m: &Matcher| m.is_match(sample.labels.get(&m.name).map_or("", String::as_str)))
}

/// Asserts that the `/metrics` text `scrape` has a series for every selector of `queries`
/// (`missing` says what a miss means) and that `promtool check metrics` has nothing to say about
/// it; the scrape, parsed.
fn assert_scrape_serves(queries: &[String], scrape: &str, missing: &str) -> Exposition {
    let parsed = Exposition::parse(scrape);
    let unserved = unmatched(queries, &parsed);
    assert!(
        unserved.is_empty(),
        "{missing}:\n{}\n\nscrape:\n{scrape}",
        unserved.join("\n")
    );
    if let Some(linted) = promtool(&["check", "metrics"], Some(scrape)) {
        let said = assert_succeeded("promtool check metrics", &linted);
        assert!(said.trim().is_empty(), "promtool check metrics: {said}");
    }
    parsed
}

/// Every selector of `queries` that selects no live series, named with its query.
fn unmatched(queries: &[String], scrape: &Exposition) -> Vec<String> {
    let mut missing = Vec::new();
    for query in queries {
        for selector in selectors(query) {
            let name = metric_name(&selector);
            if SYNTHETIC.contains(&name.as_str()) {
                continue;
            }
            if !scrape.samples.iter().any(|s| selects(&selector, s)) {
                missing.push(format!("{selector}   (in {query})"));
            }
        }
    }
    missing
}

// ---- the live daemon -------------------------------------------------------------------------

/// The real daemon with its reconciler on against `fake`, `orders` watched before it starts,
/// and a destination of signed webhooks out (where nothing listens: its series exist, as a
/// partner's would).
async fn daemon_against(fake: &FakeMusement, orders: &[uuid::Uuid]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    // 24 bytes in base64 after whsec_.
    std::fs::write(
        dir.path().join("forward-secret"),
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3\n",
    )
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[forward]]\nname = \"booking\"\n\
         url = \"http://127.0.0.1:{}/hooks\"\nsecret_file = \"forward-secret\"\n\n{}",
        free_port(),
        config_for(fake, "")
    );
    watch_before_start(dir.path(), &config, orders).await;
    Daemon::start(dir, &config)
}

async fn scrape_text(daemon: &Daemon) -> String {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn promtool_accepts_the_rules_and_the_config_and_the_rule_unit_tests_pass() {
    let rules = deploy_file("prometheus/alerts.yml");
    let Some(checked) = promtool(&["check", "rules", rules.to_str().unwrap()], None) else {
        return;
    };
    let said = assert_succeeded("promtool check rules", &checked);
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", alerts().len())),
        "{said}"
    );
    let tests = deploy_file("prometheus/alerts_test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()], None).unwrap();
    assert_succeeded("promtool test rules", &tested);
    let config = deploy_file("prometheus/prometheus.yml");
    let configured = promtool(&["check", "config", config.to_str().unwrap()], None).unwrap();
    let said = assert_succeeded("promtool check config", &configured);
    assert!(
        said.contains("1 rule files found"),
        "loads alerts.yml: {said}"
    );
}

#[test]
fn promtool_parses_every_dashboard_query() {
    // As recording rules, every query goes through Prometheus' own parser and type checks
    // (a range vector where an instant one belongs, an unknown function, a bad matcher).
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() > 20, "{queries:?}");
    let rules: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(n, query)| {
            let quoted = serde_json::to_string(query).unwrap();
            format!("      - record: dashboard:query_{n}\n        expr: {quoted}\n")
        })
        .collect();
    let file = format!(
        "groups:\n  - name: dashboard\n    rules:\n{}",
        rules.concat()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, file).unwrap();
    let Some(checked) = promtool(&["check", "rules", path.to_str().unwrap()], None) else {
        return;
    };
    let said = assert_succeeded("promtool check rules (the dashboard's queries)", &checked);
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rules_and_the_dashboard_name_is_in_a_live_scrape() {
    let fake = FakeMusement::start().await;
    let order = new_uuid();
    fake.put_order(order_json(order, &[(new_uuid(), "PENDING")]));

    // Right after start-up, before any webhook or poll: every series a rule reads is there.
    let idle_fake = FakeMusement::start().await;
    let idle = daemon_against(&idle_fake, &[]).await;
    let at_start = scrape_text(&idle).await;
    let alert_queries: Vec<String> = alerts().into_iter().map(|a| a.expr).collect();
    assert_scrape_serves(
        &alert_queries,
        &at_start,
        "selected by a rule but not in a scrape at start-up",
    );
    drop(idle);

    // After one webhook and one pass that reached the API: every series a panel names.
    let daemon = daemon_against(&fake, &[order]).await;
    assert_eq!(
        daemon
            .post_webhook(fixture("webhooks/documented-example.json"))
            .await,
        200
    );
    let deadline = Instant::now() + LIMIT;
    let busy = loop {
        let text = scrape_text(&daemon).await;
        let scrape = Exposition::parse(&text);
        let polled = scrape.count(
            "orderwatch_reconciler_orders_total",
            &[("result", "polled")],
        );
        if polled >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the first pass never polled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let scrape = assert_scrape_serves(
        &dashboard_queries(&dashboard()),
        &busy,
        "named by the dashboard but not in a live scrape",
    );

    // The README's metrics table names every family a scrape has.
    let readme = read_repo_file("README.md");
    let metrics_section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section in README.md");
    let undocumented: Vec<&String> = scrape
        .types
        .keys()
        .filter(|family| !metrics_section.contains(&format!("`{family}")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in README.md's Metrics section: {undocumented:?}"
    );

    // The unit tests feed series a scrape could have: real names and label names.
    for series in unit_test_series() {
        let selector = selectors(&series).remove(0);
        let name = metric_name(&selector);
        if SYNTHETIC.contains(&name.as_str()) {
            continue;
        }
        let wanted: BTreeSet<&str> = selector
            .matchers
            .matchers
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| !TARGET_LABELS.contains(n))
            .collect();
        let live: Vec<BTreeSet<&str>> = scrape
            .all(&name)
            .into_iter()
            .map(|s| {
                s.labels
                    .keys()
                    .map(String::as_str)
                    .filter(|n| *n != "le")
                    .collect()
            })
            .collect();
        assert!(
            live.contains(&wanted),
            "alerts_test.yml feeds {series}, but a scrape has {name} with label names {live:?}"
        );
    }
}

/// The `series:` of every unit test in alerts_test.yml.
fn unit_test_series() -> Vec<String> {
    let docs = YamlLoader::load_from_str(&read_deploy("prometheus/alerts_test.yml")).unwrap();
    docs[0]["tests"]
        .as_vec()
        .expect("tests")
        .iter()
        .flat_map(|test| test["input_series"].as_vec().expect("input_series").iter())
        .map(|input| input["series"].as_str().expect("series").to_owned())
        .collect()
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`, most punctuation gone.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_says_what_happened_where_to_look_and_is_seen_firing_by_a_unit_test() {
    let readme = read_deploy("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect();
    let tests = YamlLoader::load_from_str(&read_deploy("prometheus/alerts_test.yml")).unwrap();
    let fired: BTreeSet<&str> = tests[0]["tests"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_vec().unwrap().iter())
        .filter(|case| case["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()))
        .map(|case| case["alertname"].as_str().unwrap())
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names.len(), alerts.len(), "alert names are unique");
    for alert in &alerts {
        for key in ["summary", "description"] {
            assert!(
                alert.annotations[key]
                    .as_str()
                    .is_some_and(|t| t.len() > 10),
                "{}: no {key}",
                alert.name
            );
        }
        let runbook = alert.annotations["runbook"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no runbook", alert.name));
        let section = runbook
            .strip_prefix("deploy/README.md#")
            .unwrap_or_else(|| {
                panic!(
                    "{}: runbook {runbook} is not in deploy/README.md",
                    alert.name
                )
            });
        assert!(
            anchors.contains(section),
            "{}: deploy/README.md has no heading for #{section}",
            alert.name
        );
        assert!(
            ["page", "ticket"].contains(&alert.labels["severity"].as_str().unwrap_or("")),
            "{}: severity page or ticket",
            alert.name
        );
        assert!(
            fired.contains(alert.name.as_str()),
            "{}: no case in alerts_test.yml sees it fire",
            alert.name
        );
    }
}

#[test]
fn the_dashboard_asks_for_its_data_source_on_import_and_every_panel_has_a_query() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "orderwatch");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut titles = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().expect("a title");
        if panel["type"] == "row" {
            continue;
        }
        assert!(titles.insert(title), "two panels titled {title}");
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: the imported data source"
        );
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "{title}: no query");
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: says what it shows"
        );
    }
}
