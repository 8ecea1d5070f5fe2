//! [`Secret`]: a value that never prints, and [`SecretSource`]: where one comes from (the
//! configuration file, an environment variable, or a file of its own).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, Secrets};

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

/// Where one secret is configured: exactly one of `KEY` (the value, in the configuration),
/// `KEY_env` (an environment variable holding it) or `KEY_file` (a file holding it). No
/// `Debug`: `value` is the secret itself.
#[derive(Clone, Copy)]
pub(super) struct SecretSource<'a> {
    /// The dotted key errors name, e.g. `server.auth.password`.
    pub(super) key: &'a str,
    /// `KEY`.
    pub(super) value: Option<&'a str>,
    /// `KEY_env`.
    pub(super) env: Option<&'a str>,
    /// `KEY_file`, already resolved against the configuration's folder.
    pub(super) file: Option<&'a Path>,
}

impl SecretSource<'_> {
    /// Loads the secret with [`Secrets::Resolve`]; with [`Secrets::Check`] only checks how it is
    /// given (`None`), and with [`Secrets::Skip`] does neither (`None`). `config` is the
    /// configuration file errors name.
    pub(super) fn load(
        &self,
        config: &Path,
        secrets: Secrets,
    ) -> Result<Option<Secret>, ConfigError> {
        match secrets {
            Secrets::Resolve => self.resolve(config).map(Some),
            Secrets::Check => self.check(config).map(|()| None),
            Secrets::Skip => Ok(None),
        }
    }

    /// Checks that exactly one source is set, without reading the variable or the file
    /// (`check-config --offline`); a value given in the configuration must not be empty.
    fn check(&self, config: &Path) -> Result<(), ConfigError> {
        match (self.value, self.env, self.file) {
            (Some(""), None, None) => Err(self.error(config, "", "is empty".into())),
            (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => Ok(()),
            _ => Err(self.not_exactly_one(config)),
        }
    }

    /// Loads the secret from its one source; errors name the key but never the value.
    fn resolve(&self, config: &Path) -> Result<Secret, ConfigError> {
        let secret = match (self.value, self.env, self.file) {
            (Some(value), None, None) => Secret::new(value),
            (None, Some(var), None) => std::env::var(var).map(Secret::new).map_err(|_| {
                self.error(
                    config,
                    "_env",
                    format!("environment variable {var} is not set"),
                )
            })?,
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])))
                .map_err(|e| {
                    self.error(
                        config,
                        "_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
            _ => return Err(self.not_exactly_one(config)),
        };
        if secret.expose().is_empty() {
            return Err(self.error(config, "", "is empty".into()));
        }
        Ok(secret)
    }

    /// The error when not exactly one source is set.
    fn not_exactly_one(&self, config: &Path) -> ConfigError {
        let key = self.key;
        self.error(
            config,
            "",
            format!("set exactly one of {key}, {key}_env, {key}_file"),
        )
    }

    /// An error about `KEY` followed by `suffix` (`""`, `_env` or `_file`).
    fn error(&self, config: &Path, suffix: &str, reason: String) -> ConfigError {
        ConfigError {
            file: config.to_owned(),
            key: format!("{}{suffix}", self.key),
            reason,
        }
    }
}
