//! The inventory file exactly as TOML spells it, before cross-checks.
//!
//! Every name that another part of the file refers to is `Spanned`, so a dangling reference can
//! be reported at its own line and column. `deny_unknown_fields` everywhere: a misspelt key is an
//! error with a suggestion, never silently ignored.

// Fields are the TOML keys themselves, documented in the README's inventory reference.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A map whose keys remember where they were written.
pub type SpannedMap<T> = BTreeMap<Spanned<String>, T>;

/// Variables: any TOML value, with the span of the value.
pub type RawVars = SpannedMap<Spanned<toml::Value>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    #[serde(default)]
    pub defaults: RawDefaults,
    pub lifecycle: Option<Spanned<RawLifecycle>>,
    #[serde(default)]
    pub environments: SpannedMap<Spanned<RawEnvironment>>,
    #[serde(default)]
    pub targets: SpannedMap<Spanned<RawTarget>>,
    #[serde(default)]
    pub feeds: SpannedMap<Spanned<RawFeed>>,
    #[serde(default)]
    pub apps: SpannedMap<Spanned<RawApp>>,
    pub state: Option<Spanned<RawState>>,
    pub proxy: Option<Spanned<RawProxy>>,
    #[serde(default)]
    pub notify: SpannedMap<Spanned<RawNotify>>,
    #[serde(default)]
    pub freeze: Vec<Spanned<RawFreeze>>,
    pub hooks: Option<RawHooks>,
}

/// `[notify.NAME]`: a receiver of deployment notifications (issue 16).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub url: Spanned<RawSecretSource>,
    pub format: Spanned<String>,
    pub on: Option<Spanned<Vec<Spanned<String>>>>,
    pub environments: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[freeze]]`: a window when deploys to some environments are refused (issue 16).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreeze {
    pub name: Option<Spanned<String>>,
    pub environments: Spanned<Vec<Spanned<String>>>,
    pub reason: Spanned<String>,
    pub from: Option<Spanned<toml::Value>>,
    pub until: Option<Spanned<toml::Value>>,
    pub days: Option<Spanned<Vec<Spanned<String>>>>,
    pub hours: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
}

/// `[hooks]`: executables on the runner around a deployment (issue 16; not the app's
/// `post_deploy`, which runs on targets).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre_deploy: Option<Spanned<String>>,
    pub post_deploy: Option<Spanned<String>>,
    pub failed: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `[proxy]`: the proxy every target of a proxied app runs (issue 15).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub image: Option<Spanned<String>>,
    pub feed: Option<Spanned<String>>,
    pub drain: Option<Spanned<String>>,
}

/// `proxy = { host, port, health, path, tls }` on an app, or (key by key) on an app's
/// environment. Every key is optional here: the merged route is checked for completeness.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub health: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub tls: Option<Spanned<String>>,
}

/// `[state]`: where the records live when they are shared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub url: Spanned<RawSecretSource>,
}

/// `[defaults]`: connection settings and the lowest variable layer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub user: Option<String>,
    pub port: Option<Spanned<i64>>,
    pub identity: Option<String>,
    pub known_hosts: Option<String>,
    pub templates: Option<String>,
    pub state_dir: Option<String>,
    #[serde(default)]
    pub vars: RawVars,
}

/// `[lifecycle]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    pub phases: Vec<Spanned<String>>,
    #[serde(default)]
    pub optional: Vec<Spanned<String>>,
}

/// `[environments.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub vars: RawVars,
    pub rollout: Option<Spanned<RawRollout>>,
}

/// `rollout = { batch = 1, max_failures = 0 }`; batch may be a count or `"25%"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub batch: Option<Spanned<toml::Value>>,
    pub max_failures: Option<Spanned<i64>>,
}

/// `[targets.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub user: Option<String>,
    pub identity: Option<String>,
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    #[serde(default)]
    pub vars: RawVars,
    pub transport: Option<Spanned<String>>,
    pub jump: Option<Spanned<String>>,
}

/// `[feeds.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub url: Spanned<String>,
    pub username: Option<Spanned<RawUsername>>,
    pub password: Option<Spanned<RawSecretSource>>,
    pub ca_file: Option<String>,
}

/// `{ env = "NAME" }`, `{ file = "path" }` or `{ command = ["prog", "arg"] }` (with an optional
/// `timeout`), optionally with `allow_empty = true`. A bare string is refused: credentials and
/// secrets are never written inline in an inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSecretSource {
    /// Where the value is read.
    pub from: RawSecretFrom,
    /// An empty value is meant (else it is refused: CI systems turn a missing secret into "").
    pub allow_empty: bool,
    /// How long a `command` may run (checked with the rest of the inventory).
    pub timeout: Option<String>,
}

/// The place a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSecretFrom {
    /// An environment variable of the process running ferry.
    Env(String),
    /// A file, relative to the inventory's folder.
    File(String),
    /// A program run on the runner (argv, non-empty), its stdout the value.
    Command(Vec<String>),
    /// Written in the inventory: only a feed's `username`, which is not a secret.
    Plain(String),
}

/// A feed's `username`: a secret source, or a plain string (a user name is no secret, and
/// some are fixed words: ECR's is `AWS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUsername(pub RawSecretSource);

impl<'de> Deserialize<'de> for RawUsername {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(de)? {
            toml::Value::String(text) if !text.is_empty() => Ok(RawUsername(RawSecretSource {
                from: RawSecretFrom::Plain(text),
                allow_empty: false,
                timeout: None,
            })),
            toml::Value::String(_) => Err(D::Error::custom("`username` must not be empty")),
            other => RawSecretSource::deserialize(other).map(RawUsername).map_err(D::Error::custom),
        }
    }
}

/// How a secret source is written, for error messages.
const SOURCE_FORMS: &str = "{ env = \"VAR\" }, { file = \"path\" } or { command = [\"prog\", \"arg\"] }";

impl<'de> Deserialize<'de> for RawSecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = match toml::Value::deserialize(de)? {
            toml::Value::Table(table) => table,
            _ => {
                return Err(D::Error::custom(format!(
                    "secret values are never written inline: use {SOURCE_FORMS}"
                )));
            }
        };
        let mut source = None;
        let mut allow_empty = false;
        let mut timeout = None;
        for (key, value) in table {
            let from = match (key.as_str(), value) {
                ("allow_empty", value) => {
                    allow_empty = value
                        .as_bool()
                        .ok_or_else(|| D::Error::custom("`allow_empty` must be true or false"))?;
                    continue;
                }
                ("timeout", toml::Value::String(text)) => {
                    timeout = Some(text);
                    continue;
                }
                ("timeout", _) => return Err(D::Error::custom("`timeout` must be a duration like \"10s\"")),
                ("env", toml::Value::String(text)) if !text.is_empty() => RawSecretFrom::Env(text),
                ("file", toml::Value::String(text)) if !text.is_empty() => RawSecretFrom::File(text),
                ("command", toml::Value::Array(items)) => {
                    let argv: Option<Vec<String>> =
                        items.into_iter().map(|i| i.as_str().map(String::from)).collect();
                    match argv {
                        Some(argv) if argv.first().is_some_and(|p| !p.is_empty()) => {
                            RawSecretFrom::Command(argv)
                        }
                        _ => {
                            return Err(D::Error::custom(
                                "`command` must be a list of strings, the program first: [\"op\", \"read\", \"op://vault/item/field\"]",
                            ));
                        }
                    }
                }
                ("command", _) => {
                    return Err(D::Error::custom(
                        "`command` is a list (no shell): [\"op\", \"read\", \"op://vault/item/field\"]",
                    ));
                }
                ("env" | "file", _) => {
                    return Err(D::Error::custom(format!("`{key}` must be a non-empty string")));
                }
                (other, _) => {
                    return Err(D::Error::custom(format!(
                        "unknown key `{other}` in a secret source: use {SOURCE_FORMS}"
                    )));
                }
            };
            if source.replace(from).is_some() {
                return Err(D::Error::custom("give only one of `env`, `file` or `command`"));
            }
        }
        let from = source.ok_or_else(|| {
            D::Error::custom(format!("a secret source needs `env`, `file` or `command`, e.g. {SOURCE_FORMS}"))
        })?;
        if timeout.is_some() && !matches!(from, RawSecretFrom::Command(_)) {
            return Err(D::Error::custom("`timeout` is only for a `command` source"));
        }
        Ok(RawSecretSource { from, allow_empty, timeout })
    }
}

/// `[apps.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub feed: Option<Spanned<String>>,
    pub image: Spanned<String>,
    pub template: Spanned<String>,
    pub roles: Option<Vec<Spanned<String>>>,
    pub container_name: Option<Spanned<String>>,
    #[serde(default)]
    pub vars: RawVars,
    #[serde(default)]
    pub env: SpannedMap<Spanned<toml::Value>>,
    #[serde(default)]
    pub secrets: SpannedMap<Spanned<RawSecretSource>>,
    pub health: Option<Spanned<RawHealth>>,
    pub post_deploy: Option<Spanned<String>>,
    pub versions: Option<RawVersions>,
    pub proxy: Option<Spanned<RawRoute>>,
    /// The only environments the app deploys to (absent: every environment).
    pub deploy_to: Option<Spanned<Vec<Spanned<String>>>>,
    /// `retention = { images = 5 }`.
    pub retention: Option<Spanned<RawRetention>>,
    /// Docker networks the container joins, created by ferry when missing (issue 16).
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    /// Named volumes: volume name -> absolute container path (issue 16).
    pub volumes: Option<Spanned<SpannedMap<Spanned<String>>>>,
    #[serde(default)]
    pub environments: SpannedMap<Spanned<RawAppEnvironment>>,
}

/// `retention = { images = 5 }`: how many deployments' images each target keeps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub images: Spanned<i64>,
}

/// `versions = { pattern = "regex", prerelease = false }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersions {
    pub pattern: Option<Spanned<String>>,
    pub prerelease: Option<bool>,
}

/// `health = { cmd = "...", timeout = "60s", interval = "2s", grace = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub cmd: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
}

/// `[apps.NAME.environments.ENV]`: the app-in-environment layer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppEnvironment {
    #[serde(default)]
    pub vars: RawVars,
    #[serde(default)]
    pub env: SpannedMap<Spanned<toml::Value>>,
    #[serde(default)]
    pub secrets: SpannedMap<Spanned<RawSecretSource>>,
    pub proxy: Option<Spanned<RawRoute>>,
    pub retention: Option<Spanned<RawRetention>>,
    /// Replaces the app's `networks` in this environment.
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    /// Replaces the app's `volumes` in this environment.
    pub volumes: Option<Spanned<SpannedMap<Spanned<String>>>>,
}
