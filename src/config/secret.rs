//! [`Secret`]: a value that never prints, and [`resolve_secret`]: where one comes from (the
//! file, an environment variable, or a file of its own).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// A secret value (password, client secret). Debug, Display and Serialize print a mask, so it
/// cannot leak into logs, errors or `check-config` output by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is compared or sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

pub(super) const MASK: &str = "********";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretVisitor)
    }
}

/// Accepts only strings, and refuses anything else without echoing it (serde's default message
/// would quote a numeric password in the config error).
struct SecretVisitor;

const NOT_A_STRING: &str = "must be a quoted string (value not shown)";

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }
}

/// Checks that exactly one of `KEY`, `KEY_env` or `KEY_file` is set, without reading the
/// variable or the file (`check-config --offline`); a value given in the file must not be
/// empty.
pub fn check_secret_source(
    file: &Path,
    key: &str,
    value: Option<&Secret>,
    env: Option<&str>,
    secret_file: Option<&Path>,
) -> Result<(), ConfigError> {
    let error = |reason: String| ConfigError {
        file: file.to_owned(),
        key: key.into(),
        reason,
    };
    match (value, env, secret_file) {
        (Some(value), None, None) if value.expose().is_empty() => Err(error("is empty".into())),
        (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => Ok(()),
        _ => Err(error(exactly_one(key))),
    }
}

/// The reason given when not exactly one source of `key` is set.
fn exactly_one(key: &str) -> String {
    format!("set exactly one of {key}, {key}_env, {key}_file")
}

/// Loads a secret from exactly one of `KEY`, `KEY_env` or `KEY_file`; errors name `key` but
/// never the value.
pub fn resolve_secret(
    file: &Path,
    key: &str,
    value: Option<&Secret>,
    env: Option<&str>,
    secret_file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    let error = |key: String, reason: String| ConfigError {
        file: file.to_owned(),
        key,
        reason,
    };
    let secret = match (value, env, secret_file) {
        (Some(value), None, None) => value.clone(),
        (None, Some(var), None) => std::env::var(var).map(Secret::new).map_err(|_| {
            error(
                format!("{key}_env"),
                format!("environment variable {var} is not set"),
            )
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])))
            .map_err(|e| {
                error(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?,
        _ => return Err(error(key.into(), exactly_one(key))),
    };
    if secret.expose().is_empty() {
        return Err(error(key.into(), "is empty".into()));
    }
    Ok(secret)
}
