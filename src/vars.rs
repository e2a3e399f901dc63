//! Stage 3: layered variables with provenance, and secrets from their sources.
//!
//! Layers, lowest first: inventory defaults < app < environment < app-in-environment < target <
//! `--set` on the command line. Each resolved value remembers the layer that set it and the
//! layers it overrode, so `ferry vars` can say where a value came from, which is the first
//! question anyone debugging a deployment asks.
//!
//! Secrets are resolved per app and environment from the runner's environment variables or
//! files, into [`Secret`]s. The lookup of environment variables is a parameter so tests (and
//! fuzzing) can supply their own environment without touching the process's.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::inventory::{App, Environment, Inventory, SecretDef, SecretSource, Target, Vars};
use crate::secret::Secret;
use crate::secret_command;

/// Errors of the variables stage.
#[derive(Debug, thiserror::Error)]
pub enum VarsError {
    /// A secret's source is missing (unset variable, unreadable file).
    #[error("{0}")]
    MissingSecret(Diagnostic),
    /// A secret's value cannot travel in a Docker env file.
    #[error("{0}")]
    InvalidSecret(Diagnostic),
}

/// The layer a value was set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// `[defaults] vars`.
    Defaults,
    /// `[apps.APP] vars`.
    App,
    /// `[environments.ENV] vars`.
    Environment,
    /// `[apps.APP.environments.ENV] vars`.
    AppEnvironment,
    /// `[targets.T] vars`.
    Target,
    /// `--set k=v`.
    CommandLine,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    /// The layer.
    pub layer: Layer,
    /// Line in the inventory (none for `--set`). A number, not a formatted `file:line`: a plan
    /// resolves every variable for every target, and only `ferry vars` shows where they came from.
    pub line: Option<usize>,
}

impl Origin {
    /// A phrase for tables: `environment prod (inventories/example.toml:18)`.
    pub fn describe(&self, file: &std::path::Path, app: &str, env: &str, target: Option<&str>) -> String {
        let layer = match self.layer {
            Layer::Defaults => "defaults".to_string(),
            Layer::App => format!("app {app}"),
            Layer::Environment => format!("environment {env}"),
            Layer::AppEnvironment => format!("app {app} in {env}"),
            Layer::Target => format!("target {}", target.unwrap_or("?")),
            Layer::CommandLine => return "--set".to_string(),
        };
        match self.line {
            Some(line) => format!("{layer} ({}:{line})", file.display()),
            None => layer,
        }
    }
}

/// One resolved variable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    /// The winning value.
    pub value: toml::Value,
    /// Where it was set.
    pub origin: Origin,
    /// Lower layers that set it too, lowest first.
    pub overrides: Vec<Origin>,
}

/// All variables of one app × environment (× target).
pub type Variables = BTreeMap<String, Resolved>;

/// Resolves the variables of `app` in `env` (and on `target`, when given), highest layer winning.
pub fn resolve(
    inventory: &Inventory,
    app: &App,
    env: &Environment,
    target: Option<&Target>,
    sets: &[(String, String)],
) -> Variables {
    let mut out = Variables::new();
    let empty = Vars::new();
    let app_env = app.environments.get(&env.name).map_or(&empty, |o| &o.vars);
    let layers = [
        (Layer::Defaults, &inventory.defaults.vars),
        (Layer::App, &app.vars),
        (Layer::Environment, &env.vars),
        (Layer::AppEnvironment, app_env),
        (Layer::Target, target.map_or(&empty, |t| &t.vars)),
    ];
    for (layer, vars) in layers {
        for (name, def) in vars {
            let line = Some(inventory.source.line_of(def.span.start));
            set(&mut out, name, def.value.clone(), Origin { layer, line });
        }
    }
    for (name, value) in sets {
        let origin = Origin { layer: Layer::CommandLine, line: None };
        set(&mut out, name, toml::Value::String(value.clone()), origin);
    }
    out
}

fn set(out: &mut Variables, name: &str, value: toml::Value, origin: Origin) {
    match out.get_mut(name) {
        Some(existing) => {
            let previous = std::mem::replace(&mut existing.origin, origin);
            existing.overrides.push(previous);
            existing.value = value;
        }
        None => {
            out.insert(name.to_string(), Resolved { value, origin, overrides: Vec::new() });
        }
    }
}

/// A secret with its value and where it was read from.
#[derive(Debug, Clone)]
pub struct ResolvedSecret {
    /// Where the value came from (shown by `ferry vars`; the value never is).
    pub source: SecretSource,
    /// The value.
    pub value: Secret,
}

/// The secrets of one app in one environment, by env-var name.
pub type Secrets = BTreeMap<String, ResolvedSecret>;

/// The secret definitions of `app` in `env` (app-in-environment overriding the app's).
pub fn secret_defs<'a>(app: &'a App, env: &Environment) -> BTreeMap<&'a str, &'a SecretDef> {
    let mut defs: BTreeMap<&str, &SecretDef> = app.secrets.iter().map(|(k, v)| (k.as_str(), v)).collect();
    if let Some(overrides) = app.environments.get(&env.name) {
        defs.extend(overrides.secrets.iter().map(|(k, v)| (k.as_str(), v)));
    }
    defs
}

/// What to do when a secret's source is not available on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSecrets {
    /// Fail: a plan or deploy needs every real value.
    Error,
    /// Use a placeholder and report the problem: `ferry check` validates on machines (a PR's CI
    /// job, a laptop) that do not hold production secrets.
    Placeholder,
}

/// The value that stands in for an unavailable secret under [`MissingSecrets::Placeholder`].
pub const PLACEHOLDER: &str = "<unavailable>";

/// Reads every secret of `app` in `env`; `lookup_env` reads the runner's environment. Returns
/// the secrets and, under [`MissingSecrets::Placeholder`], the problems with missing ones.
pub fn resolve_secrets(
    inventory: &Inventory,
    app: &App,
    env: &Environment,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    missing: MissingSecrets,
) -> Result<(Secrets, Vec<Diagnostic>), VarsError> {
    let mut out = Secrets::new();
    let mut problems = Vec::new();
    for (name, def) in secret_defs(app, env) {
        // `ferry check` validates without running programs (a PR's job must not ask a vault);
        // the value it cannot know stands in, as for a variable this machine lacks.
        if missing == MissingSecrets::Placeholder && matches!(def.source, SecretSource::Command { .. }) {
            out.insert(
                name.to_string(),
                ResolvedSecret { source: def.source.clone(), value: Secret::new(PLACEHOLDER) },
            );
            continue;
        }
        let value = match (
            read_source(inventory, name, def, lookup_env).and_then(|v| refuse_empty(inventory, name, def, v)),
            missing,
        ) {
            (Ok(value), _) => value,
            (Err(VarsError::MissingSecret(d)), MissingSecrets::Placeholder) => {
                problems.push(d);
                Secret::new(PLACEHOLDER)
            }
            (Err(e), _) => return Err(e),
        };
        check_env_file_value(inventory, name, &value, def.span.clone())?;
        tracing::debug!(secret = name, source = %def.source, value = ?value, "secret resolved");
        out.insert(name.to_string(), ResolvedSecret { source: def.source.clone(), value });
    }
    Ok((out, problems))
}

/// Reads one secret source (also used for feed credentials).
pub fn read_source(
    inventory: &Inventory,
    name: &str,
    def: &SecretDef,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, VarsError> {
    let missing = |what: String, help: String| {
        VarsError::MissingSecret(Diagnostic::new(what).at(&inventory.source, def.span.clone()).help(help))
    };
    match &def.source {
        SecretSource::Env(var) => lookup_env(var).map(Secret::new).ok_or_else(|| {
            missing(
                format!("secret {name}: environment variable {var} is not set"),
                format!("export {var} in the environment that runs ferry (CI secret, cron environment file)"),
            )
        }),
        SecretSource::File(path) => match std::fs::read_to_string(path) {
            // One trailing newline is what `echo value > file` writes; it is not part of the value.
            Ok(text) => Ok(Secret::new(
                text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(&text),
            )),
            Err(e) => Err(missing(
                format!("secret {name}: cannot read {}: {e}", path.display()),
                "create the file (readable by the user running ferry) or change the secret's source".into(),
            )),
        },
        SecretSource::Plain(text) => Ok(Secret::new(text.as_str())),
        SecretSource::Command { argv, timeout } => {
            let known = plain_secrets(inventory, lookup_env);
            let invocation = secret_command::Invocation {
                argv,
                stdin: None,
                dir: Some(&inventory.dir),
                timeout: *timeout,
            };
            match secret_command::output(invocation, &known) {
                Ok(stdout) => Ok(secret_command::value(&stdout)),
                Err(failure) => Err(missing(
                    format!("secret {name}: command {} {failure}", argv.first().map_or("", String::as_str)),
                    format!(
                        "run it by hand in the inventory's folder, as the user that runs ferry; it may take {} (`timeout`)",
                        crate::duration::format(*timeout)
                    ),
                )),
            }
        }
    }
}

/// The values of every secret the inventory reads from a variable or a file (that this machine
/// has), and of every command already run: what a failing command's stderr is masked with.
/// Commands not yet run are not started for this.
fn plain_secrets(inventory: &Inventory, lookup_env: &dyn Fn(&str) -> Option<String>) -> Vec<Secret> {
    let apps = inventory
        .apps
        .iter()
        .flat_map(|a| a.secrets.values().chain(a.environments.values().flat_map(|o| o.secrets.values())));
    let feeds = inventory.feeds.values().flat_map(|f| f.username.iter().chain(&f.password));
    let others = inventory.notifiers.iter().map(|n| &n.url).chain(&inventory.state_url);
    let mut out = secret_command::cached_values();
    for def in apps.chain(feeds).chain(others) {
        let value = match &def.source {
            SecretSource::Env(var) => lookup_env(var),
            SecretSource::File(path) => std::fs::read_to_string(path).ok(),
            // Not a secret (a feed's plain username): masking it would hide every `AWS`.
            SecretSource::Command { .. } | SecretSource::Plain(_) => None,
        };
        out.extend(value.map(|v| Secret::new(v.trim_end_matches(['\r', '\n']))));
    }
    out
}

/// An empty value, unless the secret says `allow_empty = true`, is taken for a missing one: CI
/// systems (GitHub Actions among them) expand a secret that does not exist to "", and a deploy
/// would then replace a working container with one that has an empty password.
fn refuse_empty(
    inventory: &Inventory,
    name: &str,
    def: &SecretDef,
    value: Secret,
) -> Result<Secret, VarsError> {
    if !value.expose().is_empty() || def.allow_empty {
        return Ok(value);
    }
    let what = match &def.source {
        SecretSource::Env(var) => format!("secret {name}: environment variable {var} is set but empty"),
        SecretSource::File(path) => format!("secret {name}: file {} is empty", path.display()),
        SecretSource::Command { argv, .. } => {
            format!("secret {name}: command {} printed nothing", argv.first().map_or("", String::as_str))
        }
        SecretSource::Plain(_) => format!("{name} is empty"),
    };
    Err(VarsError::MissingSecret(Diagnostic::new(what).at(&inventory.source, def.span.clone()).help(
        "GitHub Actions sets a missing secret to an empty string: check that the secret exists where the job runs; \
         if an empty value is meant, add `allow_empty = true` to the secret's source",
    )))
}

/// Docker env files hold one `NAME=value` per line: a newline or NUL would change the meaning.
fn check_env_file_value(
    inventory: &Inventory,
    name: &str,
    value: &Secret,
    span: Range<usize>,
) -> Result<(), VarsError> {
    let bad = value.expose().contains(['\n', '\r', '\0']);
    if bad {
        return Err(VarsError::InvalidSecret(
            Diagnostic::new(format!(
                "secret {name} contains a newline or NUL byte, which cannot travel in a Docker env file"
            ))
            .at(&inventory.source, span)
            .help(
                "encode the value (e.g. base64) and decode it in the container; ferry never alters secrets",
            ),
        ));
    }
    Ok(())
}
