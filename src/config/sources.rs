//! Environment overrides and where each value came from.
//!
//! `ORDERWATCH_SECTION__KEY=value` overrides `key` in `[section]` (`__` separates levels, since
//! keys contain single underscores): `ORDERWATCH_SERVER__LISTEN=0.0.0.0:8080`,
//! `ORDERWATCH_SERVER__AUTH__USERNAME=musement`. A value is taken as plain text for keys whose
//! value is text; for the others it is read as a TOML value (`64`, `true`, `["10.0.0.0/8"]`);
//! a list key also takes comma-separated text (`10.0.0.0/8,192.0.2.7`). An `ORDERWATCH_`
//! variable without `__` sets nothing and is warned about (see [`unused_variables`]).

use std::collections::BTreeMap;
use std::fmt;

/// Prefix of the override variables. `ORDERWATCH_CONFIG` (no `__`) names the file instead.
pub const ENV_PREFIX: &str = "ORDERWATCH_";

/// `ORDERWATCH_` variables that are not overrides but mean something: the configuration file,
/// and the commit given to a build (read by build.rs; harmless if left in the environment).
const NOT_OVERRIDES: &[&str] = &["ORDERWATCH_CONFIG", "ORDERWATCH_COMMIT"];

/// The configuration's sections, to suggest the override a misspelled variable meant.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "store",
    "musement",
    "reconciler",
    "log",
];

/// Keys whose values are text even when they look like numbers (a numeric password is text).
const TEXT_KEYS: &[&str] = &["username", "password", "client_id", "client_secret"];

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File,
    /// An environment override, by variable name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => f.write_str("file"),
            Self::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// Every key set by the file or the environment; the rest are defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Dotted key (`server.listen`) → where it was set.
    by_key: BTreeMap<String, Origin>,
}

impl Sources {
    /// Where `dotted_key` was set; `None` means it has its default.
    pub fn origin(&self, dotted_key: &str) -> Option<&Origin> {
        self.by_key.get(dotted_key)
    }

    /// The variable that set `dotted_key` or a table holding it, for error messages.
    pub fn env_var_for(&self, dotted_key: &str) -> Option<&str> {
        self.by_key.iter().find_map(|(key, origin)| match origin {
            Origin::Env(var)
                if dotted_key == key
                    || dotted_key.starts_with(&format!("{key}."))
                    || dotted_key.starts_with(&format!("{key}[")) =>
            {
                Some(var.as_str())
            }
            _ => None,
        })
    }
}

/// One `ORDERWATCH_…__…` variable, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The variable's name.
    pub var: String,
    /// The key path it sets, lower case: `["server", "listen"]`.
    pub path: Vec<String>,
    /// Its raw value.
    pub raw: String,
}

/// The override variables among `vars`, sorted by name so results never depend on env order.
/// A name with an empty level (`ORDERWATCH_SERVER____X`) is an error naming it.
pub fn overrides(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, String> {
    let mut found = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{var}: empty key between '__' separators"));
        }
        found.push(Override { var, path, raw });
    }
    found.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(found)
}

/// Writes `overrides` into `table` (the parsed file) and returns where every key came from.
/// `defaults` is the default configuration as TOML, used to tell text keys from typed ones.
pub fn apply(
    table: &mut toml::Table,
    overrides: &[Override],
    defaults: &toml::Table,
) -> Result<Sources, String> {
    let mut sources = Sources::default();
    for (key, _) in leaves(table) {
        sources.by_key.insert(key, Origin::File);
    }
    for item in overrides {
        let (last, parents) = item
            .path
            .split_last()
            .expect("paths have at least two parts");
        let mut at = &mut *table;
        for part in parents {
            let entry = at
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry
                .as_table_mut()
                .ok_or_else(|| format!("{}: {part} is not a table", item.var))?;
        }
        at.insert(last.clone(), value_of(item, defaults));
        let dotted = item.path.join(".");
        // A table set from the environment replaces what the file had under it.
        sources
            .by_key
            .retain(|key, _| !key.starts_with(&format!("{dotted}.")));
        sources.by_key.insert(dotted, Origin::Env(item.var.clone()));
    }
    Ok(sources)
}

/// The override's value: text for text keys, else TOML if it reads as one value; for a list
/// key that is not a TOML array, the comma-separated items as text; else text.
fn value_of(item: &Override, defaults: &toml::Table) -> toml::Value {
    let text = toml::Value::String(item.raw.clone());
    let last = item.path.last().map(String::as_str).unwrap_or("");
    let default = lookup(defaults, &item.path);
    if default.is_some_and(toml::Value::is_str) || TEXT_KEYS.contains(&last) {
        return text;
    }
    let parsed = match toml::from_str::<toml::Table>(&format!("value = {}", item.raw)) {
        Ok(parsed) if parsed.len() == 1 => parsed.get("value").cloned(),
        _ => None,
    };
    let is_list = default.is_some_and(toml::Value::is_array);
    match parsed {
        Some(value) if value.is_array() || !is_list => value,
        _ if is_list => toml::Value::Array(
            item.raw
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(|part| toml::Value::String(part.to_owned()))
                .collect(),
        ),
        _ => text,
    }
}

/// Warnings for the `ORDERWATCH_…` variables among `vars` that set nothing: not overrides (no
/// `__` between levels, e.g. `ORDERWATCH_SERVER_LISTEN`), not [`NOT_OVERRIDES`], and not
/// named by one of the configuration's `*_env` keys (`named`). Overrides naming an unknown key
/// are errors instead, when the configuration is parsed.
pub fn unused_variables<'a>(
    vars: impl IntoIterator<Item = &'a str>,
    named: &[String],
) -> Vec<String> {
    let mut unused: Vec<&str> = vars
        .into_iter()
        .filter(|var| {
            var.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| !rest.contains("__"))
        })
        .filter(|var| !NOT_OVERRIDES.contains(var) && !named.iter().any(|n| n == var))
        .collect();
    unused.sort_unstable();
    unused
        .into_iter()
        .map(|var| {
            format!(
                "{var} is set but matches no configuration key and no *_env key names it, so \
                 it changes nothing; an override is {ENV_PREFIX}<SECTION>__<KEY>, with two \
                 underscores between levels{}",
                suggestion(var)
            )
        })
        .collect()
}

/// `(ORDERWATCH_SERVER__LISTEN?)` for `ORDERWATCH_SERVER_LISTEN`: the section, `__`, the rest.
fn suggestion(var: &str) -> String {
    let rest = &var[ENV_PREFIX.len()..];
    SECTIONS
        .iter()
        .find_map(|section| {
            let key = rest.to_ascii_lowercase();
            let tail = key.strip_prefix(section)?.strip_prefix('_')?;
            (!tail.is_empty()).then(|| {
                format!(
                    " ({ENV_PREFIX}{}__{}?)",
                    section.to_ascii_uppercase(),
                    tail.to_ascii_uppercase()
                )
            })
        })
        .unwrap_or_default()
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut at = table;
    for part in parents {
        at = at.get(part)?.as_table()?;
    }
    at.get(last)
}

/// Every leaf of `table` (arrays count as leaves) by dotted key, e.g. `server.listen`.
pub fn leaves(table: &toml::Table) -> Vec<(String, &toml::Value)> {
    let mut found = Vec::new();
    collect_leaves(table, "", &mut found);
    found
}

fn collect_leaves<'a>(
    table: &'a toml::Table,
    prefix: &str,
    into: &mut Vec<(String, &'a toml::Value)>,
) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => collect_leaves(inner, &dotted, into),
            leaf => into.push((dotted, leaf)),
        }
    }
}

/// Appends `# file`, `# env VAR` or `# default` to each `key = value` line of `rendered` (the
/// effective configuration as TOML), so `check-config` shows where every value came from.
pub fn annotate(rendered: &str, sources: &Sources) -> String {
    let mut section = String::new();
    let mut out = String::with_capacity(rendered.len() * 2);
    for line in rendered.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        }
        out.push_str(line);
        if let Some((key, _)) = line.split_once(" = ")
            && !line.starts_with(' ')
            && !key.is_empty()
        {
            let dotted = if section.is_empty() {
                key.trim().to_owned()
            } else {
                format!("{section}.{}", key.trim())
            };
            let origin = sources
                .origin(&dotted)
                .map_or_else(|| "default".to_owned(), Origin::to_string);
            out.push_str("  # ");
            out.push_str(&origin);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn defaults() -> toml::Table {
        toml::from_str(
            "[server]\nlisten = \"127.0.0.1:8080\"\nmax_connections = 1024\nallow_ips = []\n",
        )
        .unwrap()
    }

    #[test]
    fn only_prefixed_names_with_levels_are_overrides() {
        let found = overrides(vars(&[
            ("ORDERWATCH_CONFIG", "x.toml"),
            ("PATH", "/bin"),
            ("ORDERWATCH_SERVER__LISTEN", "0.0.0.0:1"),
        ]))
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, ["server", "listen"]);
        assert!(overrides(vars(&[("ORDERWATCH_SERVER____X", "1")])).is_err());
    }

    #[test]
    fn values_take_the_type_their_key_needs() {
        let mut table = toml::Table::new();
        let found = overrides(vars(&[
            ("ORDERWATCH_SERVER__LISTEN", "0.0.0.0:1"),
            ("ORDERWATCH_SERVER__MAX_CONNECTIONS", "64"),
            ("ORDERWATCH_SERVER__ALLOW_IPS", "[\"10.0.0.0/8\"]"),
            ("ORDERWATCH_SERVER__AUTH__PASSWORD", "12345"),
        ]))
        .unwrap();
        let sources = apply(&mut table, &found, &defaults()).unwrap();
        let server = table["server"].as_table().unwrap();
        assert_eq!(server["listen"].as_str(), Some("0.0.0.0:1"));
        assert_eq!(server["max_connections"].as_integer(), Some(64));
        assert_eq!(server["allow_ips"].as_array().map(Vec::len), Some(1));
        assert_eq!(server["auth"]["password"].as_str(), Some("12345"));
        assert_eq!(
            sources.origin("server.listen"),
            Some(&Origin::Env("ORDERWATCH_SERVER__LISTEN".into()))
        );
    }

    #[test]
    fn list_keys_take_comma_separated_text_or_a_toml_array() {
        let mut table = toml::Table::new();
        let found = overrides(vars(&[
            (
                "ORDERWATCH_SERVER__ALLOW_IPS",
                " 192.0.2.0/24, 198.51.100.7 ,",
            ),
            ("ORDERWATCH_SERVER__TRUSTED_PROXIES", "[\"10.0.0.1\"]"),
        ]))
        .unwrap();
        let defaults: toml::Table =
            toml::from_str("[server]\nallow_ips = []\ntrusted_proxies = []\n").unwrap();
        apply(&mut table, &found, &defaults).unwrap();
        let server = table["server"].as_table().unwrap();
        let texts = |key: &str| -> Vec<String> {
            server[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(texts("allow_ips"), ["192.0.2.0/24", "198.51.100.7"]);
        assert_eq!(texts("trusted_proxies"), ["10.0.0.1"]);
    }

    #[test]
    fn variables_that_set_nothing_are_named_with_the_override_meant() {
        let named = vec!["ORDERWATCH_WEBHOOK_PASSWORD".to_owned()];
        let warnings = unused_variables(
            [
                "ORDERWATCH_SERVER_LISTEN",
                "ORDERWATCH_CONFIG",
                "ORDERWATCH_COMMIT",
                "ORDERWATCH_WEBHOOK_PASSWORD",
                "ORDERWATCH_SERVER__LISTEN",
                "ORDERWATCH_SOMETHING",
                "PATH",
            ],
            &named,
        );
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("ORDERWATCH_SERVER_LISTEN is set but matches no")
                && warnings[0].ends_with("(ORDERWATCH_SERVER__LISTEN?)"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("ORDERWATCH_SOMETHING is set") && !warnings[1].contains('?'),
            "{}",
            warnings[1]
        );
    }

    #[test]
    fn check_config_output_names_each_origin() {
        let mut table: toml::Table = toml::from_str("[server]\npath = \"/hook\"\n").unwrap();
        let found = overrides(vars(&[("ORDERWATCH_SERVER__LISTEN", "0.0.0.0:1")])).unwrap();
        let sources = apply(&mut table, &found, &defaults()).unwrap();
        let annotated = annotate(
            "[server]\nlisten = \"0.0.0.0:1\"\npath = \"/hook\"\nmax_body_bytes = 1\n",
            &sources,
        );
        assert!(annotated.contains("listen = \"0.0.0.0:1\"  # env ORDERWATCH_SERVER__LISTEN"));
        assert!(annotated.contains("path = \"/hook\"  # file"));
        assert!(annotated.contains("max_body_bytes = 1  # default"));
    }
}
