//! `[api]`: the HTTP API for the partner's booking system, on a listener of its own, and the
//! bearer tokens that may call it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::secret::{Secret, SecretSource};
use super::{ConfigError, Secrets};

/// `[api]`: off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the API's own listener (absent: no API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Who may call it. None: every route is open, and the API may only listen on loopback;
    /// one or more: every route needs one of them.
    pub tokens: Vec<ApiToken>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The `GET` routes.
    #[default]
    Read,
    /// Every route: registering and unregistering orders too.
    Write,
}

/// `[[api.tokens]]`: one bearer token, from exactly one of `token_env` / `token_file`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Shown in the log for each request made with it (the token itself never is).
    pub name: String,
    /// Name of an environment variable holding the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the token (trailing newline ignored; relative to the config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `read` (the default) or `write`.
    #[serde(default)]
    pub scope: Scope,
    /// The token, loaded from its source.
    #[serde(skip)]
    pub resolved: Secret,
}

impl ApiConfig {
    /// The token files, to resolve against the configuration's folder.
    pub(super) fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.tokens.iter_mut().filter_map(|t| t.token_file.as_mut())
    }

    /// The rules that span keys: unique, non-empty names; tokens for a listener beyond
    /// loopback. `(key, reason)` each.
    pub(super) fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for (n, token) in self.tokens.iter().enumerate() {
            let key = format!("api.tokens[{n}].name");
            if token.name.trim().is_empty() {
                problems.push((key, "is empty: name every token (the log shows it)".into()));
            } else if !names.insert(token.name.as_str()) {
                problems.push((key, format!("{:?} names two tokens", token.name)));
            }
        }
        if let Some(listen) = self.listen
            && !listen.ip().is_loopback()
            && self.tokens.is_empty()
        {
            problems.push((
                "api.listen".into(),
                "listening beyond loopback needs [[api.tokens]]".into(),
            ));
        }
        problems
    }

    /// Loads every token (with [`Secrets::Check`], only checks how each is given); a problem
    /// for each that cannot be loaded.
    pub(super) fn resolve(&mut self, file: &Path, secrets: Secrets) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for (n, token) in self.tokens.iter_mut().enumerate() {
            if token.token_env.is_some() == token.token_file.is_some() {
                problems.push(ConfigError {
                    file: file.to_owned(),
                    key: format!("api.tokens[{n}]"),
                    reason: "set exactly one of token_env, token_file".into(),
                });
                continue;
            }
            let key = format!("api.tokens[{n}].token");
            let loaded = SecretSource {
                key: &key,
                value: None,
                env: token.token_env.as_deref(),
                file: token.token_file.as_deref(),
            }
            .load(file, secrets);
            match loaded {
                Ok(secret) => token.resolved = secret.unwrap_or_default(),
                Err(problem) => problems.push(problem),
            }
        }
        problems
    }
}
