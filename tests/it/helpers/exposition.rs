//! The Prometheus text exposition (0.0.4), parsed strictly: what `/metrics` answers, read the
//! way a scraper reads it, for the tests that compare it with traffic and with the alert rules.

use std::collections::{BTreeMap, HashMap};

/// A series (name and labels) and the value it must have.
pub type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// A histogram series' `(le, cumulative count)` pairs.
pub type Buckets = Vec<(f64, f64)>;

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name, with its `_total`, `_bucket`, … suffix.
    pub name: String,
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed exposition: the samples and each family's `# TYPE`.
#[derive(Debug)]
pub struct Exposition {
    /// Every sample line, in order.
    pub samples: Vec<Sample>,
    /// Each family's `# TYPE`, by family name.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses the Prometheus text format (0.0.4), panicking on any line it does not follow.
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(
                    ["counter", "gauge", "histogram", "untyped", "summary"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE given twice: {line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            samples.push(parse_sample(line));
        }
        let exposition = Self { samples, types };
        for sample in &exposition.samples {
            let family = exposition.family_of(&sample.name);
            assert!(
                family.is_some(),
                "{} has no # TYPE line before it",
                sample.name
            );
        }
        exposition.check_histograms();
        exposition
    }

    /// The `# TYPE` family a sample belongs to (histograms add `_bucket`, `_sum`, `_count`).
    pub fn family_of(&self, name: &str) -> Option<&str> {
        if self.types.contains_key(name) {
            return Some(self.types[name].as_str());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base)? == "histogram").then_some("histogram")
        })
    }

    /// Buckets are cumulative and `+Inf` equals `_count`, for every label set.
    pub fn check_histograms(&self) {
        for (name, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket = format!("{name}_bucket");
            // Label set (without `le`) → its `(le, cumulative count)` buckets.
            let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
            for sample in self.samples.iter().filter(|s| s.name == bucket) {
                let mut labels = sample.labels.clone();
                let le = labels.remove("le").expect("bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series
                    .entry(labels.into_iter().collect())
                    .or_default()
                    .push((le, sample.value));
            }
            for (labels, buckets) in series {
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{name}{labels:?}: buckets not cumulative: {buckets:?}"
                );
                let inf = buckets.last().unwrap();
                assert_eq!(inf.0, f64::INFINITY, "{name}: no +Inf bucket");
                let label_refs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(
                    Some(inf.1),
                    self.get(&format!("{name}_count"), &label_refs),
                    "{name}: +Inf bucket is not the count"
                );
            }
        }
    }

    /// The value of the sample `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert!(found.len() <= 1, "duplicate series {name}{labels:?}");
        found.first().map(|s| s.value)
    }

    /// Like [`Exposition::get`], 0 when the series does not exist yet (a counter never hit).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Asserts every `(series, labels, value)` of `expected`, naming `phase` and the series.
    pub fn expect(&self, phase: &str, expected: &[Expected]) {
        for &(name, labels, value) in expected {
            assert_eq!(
                self.get(name, labels),
                Some(value),
                "{phase}: {name}{labels:?}"
            );
        }
    }

    /// Every sample of `name`, whatever its labels.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

pub fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect(line);
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect(line);
            (name, parse_labels(body, line))
        }
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name: {line}"
    );
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect(line);
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect(line) {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect(line).1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "label twice: {line}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}
