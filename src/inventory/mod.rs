//! Stage 1: read an inventory file into a typed, cross-checked model.
//!
//! Parsing is two steps. [`raw`] is the file as TOML spells it (every referenced name with its
//! span); [`Inventory::parse`] then resolves references (environment → targets, app → feed,
//! template, roles, lifecycle → environments) and collects *every* problem it finds, each a
//! [`Diagnostic`] pointing at the offending text, so one `ferry check` shows all of them.
//!
//! Nothing here touches the network; the only file-system reads are the inventory itself and the
//! templates folder listing (to check that templates exist and stay inside it).

mod freeze;
pub mod proxy;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean, display_path};
use crate::{duration, glob};
pub use proxy::{Proxy, Route, Tls};
use raw::{RawInventory, RawSecretFrom, RawSecretSource, RawVars};

/// Names ferry puts into every template context; a variable may not shadow them.
pub const RESERVED_NAMES: &[&str] =
    &["image", "version", "app", "environment", "target", "container_env", "deployment", "container"];

/// Errors of the inventory stage.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {}: {source}", path.display())]
    Read {
        /// The path tried.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file was read but is not a valid inventory; every problem found.
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let parts: Vec<String> = diagnostics.iter().map(|d| d.render("error")).collect();
    parts.join("\n").trim_end().to_string()
}

/// A validated inventory.
#[derive(Debug)]
pub struct Inventory {
    /// The file's text, for locating spans in messages.
    pub source: Arc<SourceFile>,
    /// The folder that relative paths in the file are resolved against.
    pub dir: PathBuf,
    /// Where templates are loaded from (nothing outside it is ever read).
    pub templates_dir: PathBuf,
    /// `[defaults]`.
    pub defaults: Defaults,
    /// `[lifecycle] phases`, in order (empty when there is no lifecycle).
    pub phases: Vec<String>,
    /// `[lifecycle] optional`: phases a release may skip.
    pub optional_phases: Vec<String>,
    /// Environments in file order.
    pub environments: Vec<Environment>,
    /// Targets in file order.
    pub targets: Vec<Target>,
    /// Feeds by name.
    pub feeds: BTreeMap<String, Feed>,
    /// Apps in file order.
    pub apps: Vec<App>,
    /// `[state] url`: the shared store's URL (a secret: it may hold a password). `None`: the
    /// process's `FERRY_STATE_URL`, else the local files.
    pub state_url: Option<SecretDef>,
    /// `[proxy]` (defaults when absent): the proxy that routes to apps with a `proxy` route.
    pub proxy: Proxy,
    /// `[notify.NAME]`: where deployments are announced, by name.
    pub notifiers: Vec<Notifier>,
    /// `[[freeze]]` windows, in file order.
    pub freezes: Vec<crate::freeze::Window>,
    /// `[hooks]`: executables run on the runner around deploy, promote and rollback.
    pub hooks: crate::hooks::Hooks,
}

/// `[defaults]`: connection settings every target inherits, and the lowest variable layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// SSH user; `None` means the local user name, as `ssh` does.
    pub user: Option<String>,
    /// SSH port (22).
    pub port: u16,
    /// Identity file, relative to the inventory folder or `~/`.
    pub identity: Option<String>,
    /// known_hosts file, relative to the inventory folder (default `known_hosts`).
    pub known_hosts: PathBuf,
    /// Where the audit log and local locks live (default `.ferry` beside the inventory).
    pub state_dir: PathBuf,
    /// The defaults variable layer.
    pub vars: Vars,
}

/// Variables of one layer: name → value and where it was written.
pub type Vars = BTreeMap<String, VarDef>;

/// One variable as written in one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct VarDef {
    /// The TOML value.
    pub value: toml::Value,
    /// Byte span of the value in the inventory.
    pub span: Range<usize>,
}

/// How ferry reaches a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// OpenSSH-compatible SSH (the default).
    Ssh,
    /// A local `sh`, for the machine ferry runs on.
    Local,
}

/// A deployment target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its name in `[targets.NAME]`.
    pub name: String,
    /// Span of the name.
    pub name_span: Range<usize>,
    /// Address (for `local`, `localhost`).
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// SSH user (falls back to defaults).
    pub user: Option<String>,
    /// Identity file (falls back to defaults).
    pub identity: Option<String>,
    /// Roles, matched against apps' roles.
    pub roles: Vec<String>,
    /// The target variable layer.
    pub vars: Vars,
    /// SSH or local.
    pub transport: Transport,
    /// Another target to reach this one through (an SSH jump host / bastion).
    pub jump: Option<String>,
}

/// A named set of targets with its own variables and rollout policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Span of the name.
    pub name_span: Range<usize>,
    /// Indices into [`Inventory::targets`], in file order.
    pub targets: Vec<usize>,
    /// The environment variable layer.
    pub vars: Vars,
    /// How a deployment proceeds through the targets.
    pub rollout: Rollout,
}

/// Rollout policy of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rollout {
    /// Targets per batch.
    pub batch: Batch,
    /// Failed targets tolerated before the rollout stops.
    pub max_failures: u32,
}

/// A batch size: a count, or a percentage of the environment's selected targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    /// This many targets at once.
    Count(u32),
    /// This percentage of the targets (rounded up, at least one).
    Percent(u8),
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout { batch: Batch::Percent(100), max_failures: 0 }
    }
}

/// Where a secret's value comes from on the machine running ferry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file (already resolved against the inventory folder).
    File(PathBuf),
    /// Written in the inventory (only a feed's `username`, which is not a secret).
    Plain(String),
    /// A program run on the runner in the inventory's folder (src/secret_command.rs).
    Command {
        /// Its argv, never empty.
        argv: Vec<String>,
        /// How long it may run.
        timeout: Duration,
    },
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Command { argv, .. } => write!(f, "command {}", argv.join(" ")),
            SecretSource::Plain(_) => write!(f, "the inventory"),
        }
    }
}

/// `[notify.NAME]`: a receiver of deployment notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    /// NAME.
    pub name: String,
    /// The webhook URL: a secret (whoever has a chat's webhook URL posts into it).
    pub url: SecretDef,
    /// The payload's shape.
    pub format: crate::notify::Format,
    /// Which moments it is told of (`on`; default all three).
    pub on: Vec<crate::notify::Moment>,
    /// Only these environments (`environments`; `None`: every one).
    pub environments: Option<Vec<String>>,
}

impl Notifier {
    /// Whether a deployment to `environment` at `moment` is announced here.
    pub fn wants(&self, environment: &str, moment: crate::notify::Moment) -> bool {
        self.on.contains(&moment)
            && self.environments.as_ref().is_none_or(|e| e.iter().any(|n| n == environment))
    }
}

/// A secret source and where the inventory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    /// The source.
    pub source: SecretSource,
    /// Span in the inventory.
    pub span: Range<usize>,
    /// `allow_empty = true`: an empty value is meant, not a CI's stand-in for a missing secret.
    pub allow_empty: bool,
}

/// A Docker registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    /// Its name.
    pub name: String,
    /// The URL as written.
    pub url: String,
    /// `host[:port]`, the prefix of image references pulled from it.
    pub registry: String,
    /// Registry user name source.
    pub username: Option<SecretDef>,
    /// Registry password source.
    pub password: Option<SecretDef>,
    /// Extra CA certificates (PEM) to trust for this registry, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// A container environment value: a template string, or a TOML scalar written as TOML writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvDef {
    /// The text; for strings, a template rendered against the variables.
    pub text: String,
    /// Whether `text` is a template (TOML string) or a literal (number, boolean).
    pub is_template: bool,
    /// Span in the inventory.
    pub span: Range<usize>,
}

/// The health gate settings of an app.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// A templated shell command run on the target, if any.
    pub cmd: Option<(String, Range<usize>)>,
    /// How long the gate waits for health.
    pub timeout: Duration,
    /// Delay between tries of `cmd`.
    pub interval: Duration,
    /// Without a health check: how long the container must keep running.
    pub grace: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            cmd: None,
            timeout: Duration::from_secs(60),
            interval: Duration::from_secs(2),
            grace: Duration::from_secs(5),
        }
    }
}

/// An app's settings for one environment (`[apps.APP.environments.ENV]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppEnvironment {
    /// The app-in-environment variable layer.
    pub vars: Vars,
    /// Env values that override the app's.
    pub env: BTreeMap<String, EnvDef>,
    /// Secrets that override or add to the app's.
    pub secrets: BTreeMap<String, SecretDef>,
    /// `retention = { images = N }` for this environment, overriding the app's.
    pub retention: Option<usize>,
    /// `networks` here: replaces the app's list in this environment.
    pub networks: Option<Vec<String>>,
    /// `volumes` here: replaces the app's volumes in this environment.
    pub volumes: Option<Vec<crate::netvol::Volume>>,
}

/// An app: image, template, variables, env, secrets and health check.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Its name.
    pub name: String,
    /// Span of the name.
    pub name_span: Range<usize>,
    /// The feed's name, when the image comes from one.
    pub feed: Option<String>,
    /// Repository (without tag), e.g. `acme/web`.
    pub image: String,
    /// Template file name under the templates folder.
    pub template: String,
    /// Span of the template name.
    pub template_span: Range<usize>,
    /// Roles a target needs to run the app (`None`: every target of the environment).
    pub roles: Option<Vec<String>>,
    /// Container name override (default `{app}-{environment}`).
    pub container_name: Option<String>,
    /// The app variable layer.
    pub vars: Vars,
    /// Container environment.
    pub env: BTreeMap<String, EnvDef>,
    /// Secrets delivered through the env file.
    pub secrets: BTreeMap<String, SecretDef>,
    /// Health gate.
    pub health: Health,
    /// A shell script template run on each target after a healthy start (a smoke test); it sees
    /// the new container's details as `container`. Its failure fails the target's deployment.
    pub post_deploy: Option<(String, Range<usize>)>,
    /// Which tags count as versions (`--version latest`, `ferry versions`).
    pub versions: crate::version::Rules,
    /// Per-environment overrides.
    pub environments: BTreeMap<String, AppEnvironment>,
    /// The app's route through the proxy per environment name (the app's `proxy` merged with
    /// the environment's, key by key); an environment without one runs the app unproxied.
    pub routes: BTreeMap<String, Route>,
    /// `deploy_to`: the only environments the app deploys to; `None` deploys it to every one.
    pub deploy_to: Option<DeployTo>,
    /// `retention = { images = N }`: the deployments whose images each target keeps
    /// ([`crate::retention`]); default [`crate::retention::DEFAULT_IMAGES`].
    pub retention: usize,
    /// `networks`: Docker networks the container joins (see [`crate::netvol`]).
    pub networks: Vec<String>,
    /// `volumes`: named volumes and their container paths, by name.
    pub volumes: Vec<crate::netvol::Volume>,
}

/// `deploy_to = ["staging", "prod"]` on an app: where it deploys, so that an environment it
/// has no place in (an ops-only one, staging for a prod-only worker) can be described. The
/// name is not `environments`, which is the app's table of per-environment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployTo {
    /// The environments, in the order written.
    pub environments: Vec<String>,
    /// Where the key is written (`ferry.toml:12`), for messages.
    pub at: String,
}

impl App {
    /// How many deployments' images a target keeps in `environment` (its override, else the
    /// app's).
    pub fn retained_images(&self, environment: &str) -> usize {
        self.environments.get(environment).and_then(|e| e.retention).unwrap_or(self.retention)
    }

    /// Whether the app deploys to `environment`: listed in `deploy_to`, or no `deploy_to`.
    pub fn deploys_to(&self, environment: &str) -> bool {
        self.deploy_to.as_ref().is_none_or(|d| d.environments.iter().any(|e| e == environment))
    }

    /// Exit 2 unless the app deploys to `environment`: deploy, plan, promote and rollback ask
    /// this before anything else.
    pub fn check_deploys_to(&self, environment: &str) -> Result<(), Diagnostic> {
        match &self.deploy_to {
            Some(d) if !self.deploys_to(environment) => Err(Diagnostic::new(format!(
                "{} deploys only to {} (deploy_to, {})",
                self.name,
                d.environments.join(", "),
                d.at
            ))
            .help(format!("to deploy it to {environment}, add \"{environment}\" to its deploy_to"))),
            _ => Ok(()),
        }
    }

    /// The lifecycle phases that concern the app: `phases` without the environments it does not
    /// deploy to, so a prod-only worker is not held back by a staging it never runs in.
    pub fn phases(&self, phases: &[String]) -> Vec<String> {
        phases.iter().filter(|p| self.deploys_to(p)).cloned().collect()
    }

    /// The app's route through the proxy in `environment`, if it sits behind the proxy there.
    pub fn route(&self, environment: &str) -> Option<&Route> {
        self.routes.get(environment)
    }

    /// The networks the container joins in `environment` (the environment's list replaces the
    /// app's).
    pub fn networks(&self, environment: &str) -> &[String] {
        self.environments.get(environment).and_then(|e| e.networks.as_deref()).unwrap_or(&self.networks)
    }

    /// The volumes the container mounts in `environment` (the environment's table replaces the
    /// app's).
    pub fn volumes(&self, environment: &str) -> &[crate::netvol::Volume] {
        self.environments.get(environment).and_then(|e| e.volumes.as_deref()).unwrap_or(&self.volumes)
    }
}

impl Inventory {
    /// Reads and validates the inventory at `path`.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| InventoryError::Read { path: path.to_path_buf(), source })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let _span = tracing::debug_span!("inventory", path = %path.display()).entered();
        let inventory = Self::parse(SourceFile::new(display_path(path), text), &dir)?;
        tracing::debug!(
            targets = inventory.targets.len(),
            environments = inventory.environments.len(),
            apps = inventory.apps.len(),
            "inventory loaded"
        );
        Ok(inventory)
    }

    /// Validates `source`, resolving relative paths against `dir`.
    pub fn parse(source: Arc<SourceFile>, dir: &Path) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = toml::from_str(&source.text)
            .map_err(|e| InventoryError::Invalid(vec![toml_diagnostic(&source, &e)]))?;
        let mut checker = Checker { source: &source, shared: Arc::clone(&source), dir, errors: Vec::new() };
        let inventory = checker.build(raw);
        if checker.errors.is_empty() { Ok(inventory) } else { Err(InventoryError::Invalid(checker.errors)) }
    }

    /// The environment named `name`, or an error with a suggestion.
    pub fn environment(&self, name: &str) -> Result<&Environment, Diagnostic> {
        self.environments.iter().find(|e| e.name == name).ok_or_else(|| {
            Diagnostic::new(format!("unknown environment \"{name}\" in {}", self.source.path.display()))
                .maybe_help(did_you_mean(name, self.environments.iter().map(|e| e.name.as_str())))
                .maybe_help_if_none(list_help("environments", self.environments.iter().map(|e| &e.name)))
        })
    }

    /// The app named `name`, or an error with a suggestion.
    pub fn app(&self, name: &str) -> Result<&App, Diagnostic> {
        self.apps.iter().find(|a| a.name == name).ok_or_else(|| {
            Diagnostic::new(format!("unknown app \"{name}\" in {}", self.source.path.display()))
                .maybe_help(did_you_mean(name, self.apps.iter().map(|a| a.name.as_str())))
                .maybe_help_if_none(list_help("apps", self.apps.iter().map(|a| &a.name)))
        })
    }

    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

impl Diagnostic {
    fn maybe_help_if_none(self, help: Option<String>) -> Self {
        if self.help.is_none() { self.maybe_help(help) } else { self }
    }
}

fn list_help<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> Option<String> {
    let names: Vec<&str> = names.map(String::as_str).collect();
    (!names.is_empty()).then(|| format!("known {what}: {}", names.join(", ")))
}

/// Turns a TOML or serde error into a diagnostic, adding a suggestion for unknown keys.
fn toml_diagnostic(source: &SourceFile, error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim().to_string();
    let span = error.span().unwrap_or(0..0);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let help = did_you_mean(field, valid.iter().copied())
            .map(|d| format!("{d} (valid keys here: {})", valid.join(", ")))
            .or_else(|| (!valid.is_empty()).then(|| format!("valid keys here: {}", valid.join(", "))));
        return Diagnostic::new(format!("unknown key `{field}`")).at(source, span).maybe_help(help);
    }
    if message.starts_with("invalid float") || message.starts_with("invalid number") {
        // `host = 10.0.0.11` parses as a broken number: the value was meant as a string. The
        // value is the word around the error, not the rest of its line (a comment may follow, or
        // more of an inline table).
        let text = source.text.as_str();
        let at = span.start.min(text.len());
        let (before, after) = (text.get(..at).unwrap_or_default(), text.get(at..).unwrap_or_default());
        let start = before.rfind(|c: char| c.is_whitespace() || "=,{[".contains(c)).map_or(0, |i| i + 1);
        let end =
            after.find(|c: char| c.is_whitespace() || ",}]#".contains(c)).map_or(text.len(), |i| at + i);
        let value = text.get(start..end).unwrap_or_default();
        let key = text.get(..start).unwrap_or_default().trim_end().strip_suffix('=').and_then(|k| {
            k.trim_end()
                .rsplit(|c: char| c.is_whitespace() || "{,".contains(c))
                .next()
                .filter(|k| !k.is_empty())
        });
        let help = match (key, value) {
            (_, "") => "quote the value (unquoted, TOML reads it as a number)".to_string(),
            (Some(key), value) => {
                format!("quote the value: {key} = \"{value}\" (unquoted, TOML reads it as a number)")
            }
            (None, value) => format!("quote the value: \"{value}\" (unquoted, TOML reads it as a number)"),
        };
        return Diagnostic::new(message.replace('\n', " ")).at(source, span).help(help);
    }
    let says_what_to_do = message.contains("use ") || message.contains("give ");
    let diagnostic = Diagnostic::new(message.replace('\n', " ")).at(source, span);
    if says_what_to_do {
        diagnostic
    } else {
        diagnostic.help("fix the TOML at this place; README.md describes every inventory key")
    }
}

/// Walks the raw inventory, building the model and collecting every problem.
struct Checker<'a> {
    source: &'a SourceFile,
    shared: Arc<SourceFile>,
    dir: &'a Path,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, help: Option<String>) {
        let diagnostic = Diagnostic::new(message).at(self.source, span).maybe_help(help);
        self.errors.push(diagnostic);
    }

    fn build(&mut self, raw: RawInventory) -> Inventory {
        let defaults = self.defaults(raw.defaults);
        let targets = self.targets(raw.targets, &defaults);
        let environments = self.environments(raw.environments, &targets);
        let (phases, optional_phases) = self.phases(raw.lifecycle, &environments);
        let feeds = self.feeds(raw.feeds);
        let templates_dir = self.templates_dir(&defaults.1);
        let apps = self.apps(raw.apps, &feeds, &targets, &environments, &templates_dir);
        let state_url = raw.state.map(|state| self.secret_def(state.into_inner().url));
        let proxy = raw.proxy.map(|p| self.proxy(p.into_inner(), &feeds)).unwrap_or_default();
        let notifiers = self.notifiers(raw.notify, &environments);
        let mut problems = Vec::new();
        let freezes = freeze::windows(raw.freeze, &environments, &mut problems);
        for (span, message, help) in problems {
            self.error(span, message, help);
        }
        let hooks = self.hooks(raw.hooks);
        Inventory {
            source: Arc::clone(&self.shared),
            dir: self.dir.to_path_buf(),
            templates_dir,
            defaults: defaults.0,
            phases,
            optional_phases,
            environments,
            targets,
            feeds,
            apps,
            state_url,
            proxy,
            notifiers,
            freezes,
            hooks,
        }
    }

    /// `[hooks]`: each path is checked now (a file with an execute bit), so a typo is exit 2
    /// at its line before anything runs, not a refused deployment later.
    fn hooks(&mut self, raw: Option<raw::RawHooks>) -> crate::hooks::Hooks {
        // Absolute, so the hook starts whatever ferry's own working folder is.
        let dir = self.dir.canonicalize().unwrap_or_else(|_| self.dir.to_path_buf());
        let mut hooks = crate::hooks::Hooks { dir, ..crate::hooks::Hooks::default() };
        let Some(raw) = raw else { return hooks };
        if let Some(text) = raw.timeout {
            match duration::parse(text.get_ref()) {
                Ok(d) if !d.is_zero() => hooks.timeout = d,
                Ok(_) => self.error(text.span(), "a hook timeout must be longer than 0", None),
                Err(e) => self.errors.push(Diagnostic::new(e).at(self.source, text.span())),
            }
        }
        hooks.pre_deploy = raw.pre_deploy.and_then(|p| self.hook(p, &hooks.dir));
        hooks.post_deploy = raw.post_deploy.and_then(|p| self.hook(p, &hooks.dir));
        hooks.failed = raw.failed.and_then(|p| self.hook(p, &hooks.dir));
        hooks
    }

    fn hook(&mut self, raw: Spanned<String>, dir: &Path) -> Option<crate::hooks::Hook> {
        use std::os::unix::fs::PermissionsExt;
        let text = raw.get_ref();
        let path = dir.join(text);
        let problem = match std::fs::metadata(&path) {
            _ if text.trim().is_empty() => Some(("a hook path is empty".to_string(), None)),
            Err(_) => Some((format!("hook \"{text}\" not found"), None)),
            Ok(m) if !m.is_file() => Some((format!("hook \"{text}\" is not a file"), None)),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Some((
                format!("hook \"{text}\" is not executable"),
                Some(format!("make it executable: chmod +x {}", display_path(&path).display())),
            )),
            Ok(_) => None,
        };
        let Some((message, help)) = problem else {
            return Some(crate::hooks::Hook { shown: text.clone(), path });
        };
        let help = help.unwrap_or_else(|| {
            "name an executable file, relative to the inventory's folder (or remove the key)".into()
        });
        self.error(raw.span(), message, Some(help));
        None
    }

    fn notifiers(
        &mut self,
        raw: raw::SpannedMap<Spanned<raw::RawNotify>>,
        environments: &[Environment],
    ) -> Vec<Notifier> {
        use crate::notify::{Format, Moment};
        let mut notifiers = Vec::new();
        for (name, notify) in raw {
            let name = name.into_inner();
            let notify = notify.into_inner();
            let format = match Format::parse(notify.format.get_ref()) {
                Some(f) => f,
                None => {
                    self.error(
                        notify.format.span(),
                        format!("notifier \"{name}\" has an unknown format \"{}\"", notify.format.get_ref()),
                        Some("write \"slack\", \"teams\" or \"cloudevents\"".into()),
                    );
                    continue;
                }
            };
            let mut on = Vec::new();
            match notify.on {
                None => on = vec![Moment::Started, Moment::Succeeded, Moment::Failed],
                Some(list) => {
                    if list.get_ref().is_empty() {
                        // A notifier that never sends is a mistake more often than a choice.
                        self.error(
                            list.span(),
                            format!("notifier \"{name}\" has no moment in `on`: it would never send"),
                            Some("name any of \"started\", \"succeeded\", \"failed\", or remove the key (all three), or the table".into()),
                        );
                    }
                    for word in list.into_inner() {
                        match Moment::parse(word.get_ref()) {
                            Some(m) if !on.contains(&m) => on.push(m),
                            Some(_) => {}
                            None => self.error(
                                word.span(),
                                format!("unknown moment \"{}\" in `on`", word.get_ref()),
                                Some("write any of \"started\", \"succeeded\", \"failed\"".into()),
                            ),
                        }
                    }
                }
            }
            let environments = notify.environments.map(|list| {
                if list.get_ref().is_empty() {
                    self.error(
                        list.span(),
                        format!("notifier \"{name}\" has no environment in `environments`: it would never send"),
                        Some("name the environments it announces, or remove the key (all of them), or the table".into()),
                    );
                }
                let mut names = Vec::new();
                for env in list.into_inner() {
                    if !environments.iter().any(|e| &e.name == env.get_ref()) {
                        let help = did_you_mean(env.get_ref(), environments.iter().map(|e| e.name.as_str()))
                            .or(Some("name an environment defined as [environments.NAME]".into()));
                        self.error(env.span(), format!("unknown environment \"{}\"", env.get_ref()), help);
                    }
                    names.push(env.into_inner());
                }
                names
            });
            let url = self.secret_def(notify.url);
            notifiers.push(Notifier { name, url, format, on, environments });
        }
        notifiers
    }

    fn templates_dir(&self, configured: &Option<PathBuf>) -> PathBuf {
        if let Some(dir) = configured {
            return dir.clone();
        }
        let beside = crate::diagnostic::normalize(&self.dir.join("templates"));
        let above = crate::diagnostic::normalize(&self.dir.join("..").join("templates"));
        if !beside.is_dir() && above.is_dir() { above } else { beside }
    }

    fn defaults(&mut self, raw: raw::RawDefaults) -> (Defaults, Option<PathBuf>) {
        let port = raw.port.map_or(22, |p| self.port(p));
        let vars = self.vars(raw.vars);
        let templates = raw.templates.map(|t| self.dir.join(t));
        let defaults = Defaults {
            user: raw.user,
            port,
            identity: raw.identity,
            known_hosts: self.dir.join(raw.known_hosts.unwrap_or_else(|| "known_hosts".into())),
            state_dir: self.dir.join(raw.state_dir.unwrap_or_else(|| ".ferry".into())),
            vars,
        };
        (defaults, templates)
    }

    fn port(&mut self, port: Spanned<i64>) -> u16 {
        let span = port.span();
        match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                self.error(
                    span,
                    format!("port {} is out of range", port.get_ref()),
                    Some("a port is 1 to 65535".into()),
                );
                22
            }
        }
    }

    fn vars(&mut self, raw: RawVars) -> Vars {
        let mut vars = Vars::new();
        for (name, value) in raw {
            let span = name.span();
            let name = name.into_inner();
            if !is_identifier(&name) {
                self.error(
                    span,
                    format!("variable name `{name}` cannot be used in a template"),
                    Some("use letters, digits and `_`, not starting with a digit".into()),
                );
            } else if RESERVED_NAMES.contains(&name.as_str()) {
                self.error(
                    span,
                    format!("variable name `{name}` is reserved: ferry sets it in every template"),
                    Some(format!("rename it; reserved names: {}", RESERVED_NAMES.join(", "))),
                );
            }
            let span = value.span();
            vars.insert(name, VarDef { value: value.into_inner(), span });
        }
        vars
    }

    fn targets(
        &mut self,
        raw: raw::SpannedMap<Spanned<raw::RawTarget>>,
        defaults: &(Defaults, Option<PathBuf>),
    ) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::with_capacity(raw.len());
        let mut jumps: Vec<(String, Spanned<String>)> = Vec::new();
        for (name, target) in raw {
            let name_span = name.span();
            let name = name.into_inner();
            let target_span = target.span();
            let target = target.into_inner();
            if !is_target_name(&name) {
                self.error(
                    name_span.clone(),
                    format!("target name \"{name}\" is not usable in selections"),
                    Some("use letters, digits, `.`, `_` and `-`".into()),
                );
            }
            let transport = match target.transport {
                None => Transport::Ssh,
                Some(t) => match t.get_ref().as_str() {
                    "ssh" => Transport::Ssh,
                    "local" => Transport::Local,
                    other => {
                        let help =
                            did_you_mean(other, ["ssh", "local"]).or(Some("use \"ssh\" or \"local\"".into()));
                        self.error(t.span(), format!("unknown transport \"{other}\""), help);
                        Transport::Ssh
                    }
                },
            };
            let host = match (target.host, transport) {
                (Some(host), _)
                    if host.get_ref().trim().is_empty() || host.get_ref().contains(char::is_whitespace) =>
                {
                    self.error(host.span(), "a host must be an address or DNS name without spaces", None);
                    String::new()
                }
                (Some(host), _) => host.into_inner(),
                (None, Transport::Local) => "localhost".to_string(),
                (None, Transport::Ssh) => {
                    self.error(
                        target_span.start..target_span.start,
                        format!("target \"{name}\" has no `host`"),
                        Some("add host = \"ADDRESS\", or transport = \"local\" for this machine".into()),
                    );
                    String::new()
                }
            };
            let port = target.port.map_or(defaults.0.port, |p| self.port(p));
            let roles = target.roles.into_iter().map(Spanned::into_inner).collect();
            let vars = self.vars(target.vars);
            let jump = target.jump.map(|j| {
                jumps.push((name.clone(), j.clone()));
                j.into_inner()
            });
            targets.push(Target {
                name,
                name_span,
                host,
                port,
                user: target.user.or_else(|| defaults.0.user.clone()),
                identity: target.identity.or_else(|| defaults.0.identity.clone()),
                roles,
                vars,
                transport,
                jump,
            });
        }
        // File order is the order users expect in tables and rollouts.
        targets.sort_by_key(|t| t.name_span.start);
        self.check_jumps(&targets, &jumps);
        targets
    }

    /// A jump host must be another SSH target that is reached directly (one hop).
    fn check_jumps(&mut self, targets: &[Target], jumps: &[(String, Spanned<String>)]) {
        for (name, jump) in jumps {
            let via = targets.iter().find(|t| &t.name == jump.get_ref());
            let this = targets.iter().find(|t| &t.name == name);
            let problem = match (via, this) {
                (None, _) => Some((
                    format!("unknown jump host \"{}\" for target \"{name}\"", jump.get_ref()),
                    did_you_mean(jump.get_ref(), targets.iter().map(|t| t.name.as_str()))
                        .or(Some("a jump host is another [targets.NAME]".into())),
                )),
                (Some(v), _) if v.name == *name => {
                    Some((format!("target \"{name}\" cannot be its own jump host"), None))
                }
                (Some(v), _) if v.jump.is_some() => Some((
                    format!("jump host \"{}\" has a jump host itself", v.name),
                    Some("ferry goes through one jump host; reach the bastion directly".into()),
                )),
                (Some(v), Some(t)) if v.transport == Transport::Local || t.transport == Transport::Local => {
                    Some(("jump hosts work only between SSH targets".to_string(), None))
                }
                _ => None,
            };
            if let Some((message, help)) = problem {
                self.error(jump.span(), message, help);
            }
        }
    }

    fn environments(
        &mut self,
        raw: raw::SpannedMap<Spanned<raw::RawEnvironment>>,
        targets: &[Target],
    ) -> Vec<Environment> {
        let by_name: HashMap<&str, usize> =
            targets.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut environments = Vec::with_capacity(raw.len());
        for (name, env) in raw {
            let name_span = name.span();
            let name = name.into_inner();
            let env = env.into_inner();
            self.check_object_name(&name, name_span.clone(), "environment");
            let selected = self.select_targets(&name, &env.targets, targets, &by_name);
            self.check_duplicate_addresses(&name, &selected, targets);
            let vars = self.vars(env.vars);
            let rollout = env.rollout.map(|r| self.rollout(r)).unwrap_or_default();
            environments.push(Environment { name, name_span, targets: selected, vars, rollout });
        }
        environments.sort_by_key(|e| e.name_span.start);
        environments
    }

    fn select_targets(
        &mut self,
        env: &str,
        selectors: &Spanned<Vec<Spanned<String>>>,
        targets: &[Target],
        by_name: &HashMap<&str, usize>,
    ) -> Vec<usize> {
        if selectors.get_ref().is_empty() {
            self.error(
                selectors.span(),
                format!("environment \"{env}\" selects no targets"),
                Some("list target names or globs, e.g. targets = [\"web-*\"]".into()),
            );
        }
        let mut chosen = BTreeSet::new();
        for selector in selectors.get_ref() {
            let pattern = selector.get_ref();
            if glob::is_glob(pattern) {
                let before = chosen.len();
                let mut matched = false;
                for (i, t) in targets.iter().enumerate() {
                    if glob::matches(pattern, &t.name) {
                        matched = true;
                        chosen.insert(i);
                    }
                }
                if !matched && before == chosen.len() {
                    self.error(
                        selector.span(),
                        format!("target glob \"{pattern}\" in environment \"{env}\" matches no target"),
                        Some(match targets.len() {
                            1 => "1 target is defined; check the pattern".to_string(),
                            n => format!("{n} targets are defined; check the pattern"),
                        }),
                    );
                }
            } else if let Some(&i) = by_name.get(pattern.as_str()) {
                chosen.insert(i);
            } else {
                let help = did_you_mean(pattern, targets.iter().map(|t| t.name.as_str()))
                    .or(Some("define it as [targets.NAME], or use a glob like \"web-*\"".into()));
                self.error(
                    selector.span(),
                    format!("unknown target \"{pattern}\" in environment \"{env}\""),
                    help,
                );
            }
        }
        // Indices are in file order already: targets were sorted by position.
        chosen.into_iter().collect()
    }

    fn check_duplicate_addresses(&mut self, env: &str, selected: &[usize], targets: &[Target]) {
        let mut seen: HashMap<(Transport, &str, u16), &Target> = HashMap::new();
        for &i in selected {
            let t = &targets[i];
            let key = match t.transport {
                Transport::Ssh => (Transport::Ssh, t.host.as_str(), t.port),
                Transport::Local => (Transport::Local, "", 0),
            };
            if let Some(first) = seen.insert(key, t) {
                self.error(
                    t.name_span.clone(),
                    format!(
                        "targets \"{}\" and \"{}\" in environment \"{env}\" are the same host ({}:{})",
                        first.name, t.name, t.host, t.port
                    ),
                    Some("a deployment would run twice on one Docker engine: remove one of them from the environment".into()),
                );
            }
        }
    }

    fn rollout(&mut self, raw: Spanned<raw::RawRollout>) -> Rollout {
        let raw = raw.into_inner();
        let mut rollout = Rollout::default();
        if let Some(batch) = raw.batch {
            let span = batch.span();
            let parsed = match batch.get_ref() {
                toml::Value::Integer(n) => u32::try_from(*n).ok().filter(|&n| n > 0).map(Batch::Count),
                toml::Value::String(s) => s
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .filter(|p| (1..=100).contains(p))
                    .map(Batch::Percent),
                _ => None,
            };
            match parsed {
                Some(b) => rollout.batch = b,
                None => self.error(
                    span,
                    "invalid rollout batch",
                    Some("use a count like 2 or a percentage like \"25%\"".into()),
                ),
            }
        }
        if let Some(max) = raw.max_failures {
            match u32::try_from(*max.get_ref()) {
                Ok(m) => rollout.max_failures = m,
                Err(_) => self.error(max.span(), "max_failures must be 0 or more", None),
            }
        }
        rollout
    }

    fn phases(
        &mut self,
        raw: Option<Spanned<raw::RawLifecycle>>,
        envs: &[Environment],
    ) -> (Vec<String>, Vec<String>) {
        let Some(raw) = raw else { return (Vec::new(), Vec::new()) };
        let raw = raw.into_inner();
        let mut phases: Vec<String> = Vec::new();
        for phase in raw.phases {
            let name = phase.get_ref();
            if !envs.iter().any(|e| &e.name == name) {
                let help = did_you_mean(name, envs.iter().map(|e| e.name.as_str()))
                    .or(Some("every phase must be an [environments.NAME]".into()));
                self.error(phase.span(), format!("lifecycle phase \"{name}\" is not an environment"), help);
            } else if phases.contains(name) {
                self.error(phase.span(), format!("lifecycle phase \"{name}\" is listed twice"), None);
            }
            phases.push(phase.into_inner());
        }
        let mut optional = Vec::new();
        for phase in raw.optional {
            if !phases.contains(phase.get_ref()) {
                let help = did_you_mean(phase.get_ref(), phases.iter().map(String::as_str))
                    .or(Some("an optional phase must be one of `phases`".into()));
                self.error(
                    phase.span(),
                    format!("optional phase \"{}\" is not in the lifecycle", phase.get_ref()),
                    help,
                );
            }
            optional.push(phase.into_inner());
        }
        (phases, optional)
    }

    fn feeds(&mut self, raw: raw::SpannedMap<Spanned<raw::RawFeed>>) -> BTreeMap<String, Feed> {
        let mut feeds = BTreeMap::new();
        for (name, feed) in raw {
            let name = name.into_inner();
            let feed = feed.into_inner();
            let registry = match registry_of(feed.url.get_ref()) {
                Some(r) => r,
                None => {
                    self.error(
                        feed.url.span(),
                        format!("feed \"{name}\" has an invalid url"),
                        Some(
                            "write it like \"https://registry.example.com\" or \"http://127.0.0.1:5000\""
                                .into(),
                        ),
                    );
                    String::new()
                }
            };
            let username = feed.username.map(|s| {
                let span = s.span();
                self.secret_def_at(span, s.into_inner().0)
            });
            let password = feed.password.map(|s| self.secret_def(s));
            let url = feed.url.into_inner();
            let ca_file = feed.ca_file.map(|f| self.dir.join(f));
            feeds.insert(name.clone(), Feed { name, url, registry, username, password, ca_file });
        }
        feeds
    }

    fn secret_def(&mut self, raw: Spanned<RawSecretSource>) -> SecretDef {
        let span = raw.span();
        self.secret_def_at(span, raw.into_inner())
    }

    fn secret_def_at(&mut self, span: Range<usize>, raw: RawSecretSource) -> SecretDef {
        let source = match raw.from {
            RawSecretFrom::Plain(text) => SecretSource::Plain(text),
            RawSecretFrom::Env(name) => SecretSource::Env(name),
            RawSecretFrom::File(path) => SecretSource::File(self.dir.join(path)),
            RawSecretFrom::Command(argv) => {
                let timeout = match raw.timeout.as_deref().map(crate::duration::parse) {
                    None => crate::secret_command::DEFAULT_TIMEOUT,
                    Some(Ok(d)) if !d.is_zero() => d,
                    Some(Ok(_)) => {
                        self.error(span.clone(), "a secret command's timeout must be longer than 0", None);
                        crate::secret_command::DEFAULT_TIMEOUT
                    }
                    Some(Err(e)) => {
                        self.error(span.clone(), format!("secret command timeout: {e}"), None);
                        crate::secret_command::DEFAULT_TIMEOUT
                    }
                };
                SecretSource::Command { argv, timeout }
            }
        };
        SecretDef { source, span, allow_empty: raw.allow_empty }
    }

    fn apps(
        &mut self,
        raw: raw::SpannedMap<Spanned<raw::RawApp>>,
        feeds: &BTreeMap<String, Feed>,
        targets: &[Target],
        envs: &[Environment],
        templates_dir: &Path,
    ) -> Vec<App> {
        let templates = list_templates(templates_dir);
        let roles: BTreeSet<&str> = targets.iter().flat_map(|t| t.roles.iter().map(String::as_str)).collect();
        let mut apps = Vec::with_capacity(raw.len());
        // (index into `apps`, environment, span of the route that decided it): for messages.
        let mut route_spans: Vec<(usize, String, Range<usize>)> = Vec::new();
        for (name, app) in raw {
            let name_span = name.span();
            let name = name.into_inner();
            let app_span = app.span();
            let app = app.into_inner();
            self.check_object_name(&name, name_span.clone(), "app");
            let feed = app.feed.map(|f| {
                if !feeds.contains_key(f.get_ref()) {
                    let help = did_you_mean(f.get_ref(), feeds.keys().map(String::as_str))
                        .or(Some("define it as [feeds.NAME]".into()));
                    self.error(f.span(), format!("unknown feed \"{}\"", f.get_ref()), help);
                }
                f.into_inner()
            });
            self.check_image(&app.image);
            self.check_template(&app.template, templates_dir, &templates);
            let app_roles = app.roles.map(|list| {
                for role in &list {
                    if !roles.contains(role.get_ref().as_str()) {
                        let help = did_you_mean(role.get_ref(), roles.iter().copied())
                            .or(Some("no target has this role; add it to a target's roles".into()));
                        self.error(role.span(), format!("unknown role \"{}\"", role.get_ref()), help);
                    }
                }
                list.into_iter().map(Spanned::into_inner).collect::<Vec<_>>()
            });
            let container_name = app.container_name.map(|c| {
                if !is_container_name(c.get_ref()) {
                    self.error(
                        c.span(),
                        "invalid container name",
                        Some("Docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]*".into()),
                    );
                }
                c.into_inner()
            });
            let vars = self.vars(app.vars);
            let env = self.env(app.env);
            let secrets = self.secrets(app.secrets, &env);
            let health = app.health.map(|h| self.health(h)).unwrap_or_default();
            let versions = app.versions.map(|v| self.versions(v)).unwrap_or_default();
            let mut problems = Vec::new();
            let app_route = app.proxy.map(|r| proxy::layer(r, &mut problems));
            let mut env_routes = BTreeMap::new();
            for (env_name, overrides) in &app.environments {
                if let Some(route) = &overrides.get_ref().proxy {
                    let route = route.clone();
                    env_routes.insert(env_name.get_ref().clone(), proxy::layer(route, &mut problems));
                }
            }
            let deploy_to = app.deploy_to.map(|list| self.deploy_to(list, envs));
            let retention = app.retention.map_or(crate::retention::DEFAULT_IMAGES, |r| self.retention(r));
            let deploys_to = |env: &str| {
                deploy_to.as_ref().is_none_or(|d: &DeployTo| d.environments.iter().any(|e| e == env))
            };
            for env_name in app.environments.keys() {
                if let Some(d) = deploy_to.as_ref().filter(|_| !deploys_to(env_name.get_ref())) {
                    let env = env_name.get_ref();
                    self.error(
                        env_name.span(),
                        format!("app \"{name}\" has settings for \"{env}\", an environment it does not deploy to ({})", d.environments.join(", ")),
                        Some(format!("add \"{env}\" to its deploy_to, or remove [apps.{name}.environments.{env}]")),
                    );
                }
            }
            let mut routes = BTreeMap::new();
            for e in envs.iter().filter(|e| deploys_to(&e.name)) {
                let merged = proxy::merge(app_route.as_ref(), env_routes.get(&e.name), &mut problems);
                if let Some(route) = merged {
                    let at = env_routes.get(&e.name).or(app_route.as_ref()).map_or(0..0, |l| l.span.clone());
                    route_spans.push((apps.len(), e.name.clone(), at));
                    routes.insert(e.name.clone(), route);
                }
            }
            problems.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            let mut seen = BTreeSet::new();
            for (span, message, help) in problems {
                if seen.insert((span.start, message.clone())) {
                    self.error(span, message, help);
                }
            }
            let networks = app.networks.map(|n| self.networks(n, !routes.is_empty())).unwrap_or_default();
            let volumes = app.volumes.map(|v| self.volumes(v)).unwrap_or_default();
            let environments =
                self.app_environments(app.environments, envs, &env, &secrets, !routes.is_empty());
            let app = App {
                name,
                name_span,
                feed,
                image: app.image.into_inner(),
                template: app.template.get_ref().clone(),
                template_span: app.template.span(),
                roles: app_roles,
                container_name,
                vars,
                env,
                secrets,
                health,
                post_deploy: app.post_deploy.map(|p| (p.get_ref().clone(), p.span())),
                versions,
                environments,
                routes,
                deploy_to,
                retention,
                networks,
                volumes,
            };
            self.check_app_has_targets(&app, app_span.start, targets, envs);
            apps.push(app);
        }
        self.check_routes(&apps, &route_spans, targets, envs);
        apps.sort_by_key(|a| a.name_span.start);
        self.check_container_names(&apps, envs);
        apps
    }

    fn check_object_name(&mut self, name: &str, span: Range<usize>, what: &str) {
        if !is_container_name(name) {
            self.error(
                span,
                format!("{what} name \"{name}\" cannot be part of a container name"),
                Some("use letters, digits, `_`, `.` and `-`, starting with a letter or digit".into()),
            );
        }
    }

    fn check_image(&mut self, image: &Spanned<String>) {
        let text = image.get_ref();
        let last = text.rsplit('/').next().unwrap_or_default();
        if text.is_empty() || text.contains(char::is_whitespace) {
            self.error(
                image.span(),
                "invalid image name",
                Some("write the repository, like \"acme/web\"".into()),
            );
        } else if last.contains(':') || text.contains('@') {
            self.error(
                image.span(),
                "the image must not carry a tag or digest",
                Some("write the repository only (\"acme/web\"); the version comes from --version".into()),
            );
        }
    }

    fn check_template(&mut self, name: &Spanned<String>, dir: &Path, known: &[String]) {
        let text = name.get_ref();
        let path = Path::new(text);
        let escapes = path.is_absolute()
            || path.components().any(|c| !matches!(c, Component::Normal(_)))
            || text.is_empty();
        if escapes {
            self.error(
                name.span(),
                format!("template \"{text}\" is outside the templates folder"),
                Some(format!(
                    "name a file inside {} without `..` or an absolute path",
                    display_path(dir).display()
                )),
            );
            return;
        }
        let full = dir.join(path);
        let inside = match (full.canonicalize(), dir.canonicalize()) {
            (Ok(f), Ok(d)) => f.starts_with(d) && f.is_file(),
            _ => false,
        };
        if inside {
            return;
        }
        let help = did_you_mean(text, known.iter().map(String::as_str)).or_else(|| {
            Some(format!(
                "create {} (templates are read only from {})",
                display_path(&full).display(),
                display_path(dir).display()
            ))
        });
        let message = if full.exists() {
            format!("template \"{text}\" resolves outside the templates folder")
        } else {
            format!("template \"{text}\" not found")
        };
        self.error(name.span(), message, help);
    }

    fn env(&mut self, raw: raw::SpannedMap<Spanned<toml::Value>>) -> BTreeMap<String, EnvDef> {
        let mut env = BTreeMap::new();
        for (key, value) in raw {
            let key_span = key.span();
            let key = key.into_inner();
            if !is_env_name(&key) {
                self.error(
                    key_span,
                    format!("`{key}` is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".into()),
                );
            }
            let span = value.span();
            let (text, is_template) = match value.into_inner() {
                toml::Value::String(s) => (s, true),
                toml::Value::Integer(i) => (i.to_string(), false),
                toml::Value::Float(f) => (toml::Value::Float(f).to_string(), false),
                toml::Value::Boolean(b) => (b.to_string(), false),
                toml::Value::Datetime(d) => (d.to_string(), false),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    self.error(
                        span.clone(),
                        format!("env value `{key}` must be a string, number or boolean"),
                        Some("a container env var holds one value; join lists into a string".into()),
                    );
                    (String::new(), false)
                }
            };
            env.insert(key, EnvDef { text, is_template, span });
        }
        env
    }

    fn secrets(
        &mut self,
        raw: raw::SpannedMap<Spanned<RawSecretSource>>,
        env: &BTreeMap<String, EnvDef>,
    ) -> BTreeMap<String, SecretDef> {
        let mut secrets = BTreeMap::new();
        for (key, source) in raw {
            let key_span = key.span();
            let key = key.into_inner();
            if !is_env_name(&key) {
                self.error(
                    key_span.clone(),
                    format!("`{key}` is not a valid environment variable name"),
                    None,
                );
            }
            if env.contains_key(&key) {
                self.error(
                    key_span,
                    format!("`{key}` is both an env value and a secret"),
                    Some("keep only one of them".into()),
                );
            }
            let def = self.secret_def(source);
            secrets.insert(key, def);
        }
        secrets
    }

    fn versions(&mut self, raw: raw::RawVersions) -> crate::version::Rules {
        let pattern = raw.pattern.and_then(|p| match crate::version::anchored(p.get_ref()) {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.error(p.span(), format!("invalid version pattern: {e}"), Some("a regular expression that a whole tag must match, e.g. \"v\\\\d+\\\\.\\\\d+\\\\.\\\\d+\"".into()));
                None
            }
        });
        crate::version::Rules { pattern, prerelease: raw.prerelease.unwrap_or(false) }
    }

    /// `retention = { images = N }`: N at least 1 (the running image is always kept).
    fn retention(&mut self, raw: Spanned<raw::RawRetention>) -> usize {
        let images = raw.into_inner().images;
        match usize::try_from(*images.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.error(
                    images.span(),
                    format!("retention.images = {}: keep at least 1", images.get_ref()),
                    Some(
                        "the number of deployments whose images each target keeps, e.g. { images = 5 }"
                            .into(),
                    ),
                );
                crate::retention::DEFAULT_IMAGES
            }
        }
    }

    fn health(&mut self, raw: Spanned<raw::RawHealth>) -> Health {
        let raw = raw.into_inner();
        let mut health =
            Health { cmd: raw.cmd.map(|c| (c.get_ref().clone(), c.span())), ..Health::default() };
        for (field, slot) in [
            (raw.timeout, &mut health.timeout),
            (raw.interval, &mut health.interval),
            (raw.grace, &mut health.grace),
        ] {
            if let Some(text) = field {
                match duration::parse(text.get_ref()) {
                    Ok(d) => *slot = d,
                    Err(e) => self.errors.push(Diagnostic::new(e).at(self.source, text.span())),
                }
            }
        }
        health
    }

    fn app_environments(
        &mut self,
        raw: raw::SpannedMap<Spanned<raw::RawAppEnvironment>>,
        envs: &[Environment],
        app_env: &BTreeMap<String, EnvDef>,
        app_secrets: &BTreeMap<String, SecretDef>,
        proxied: bool,
    ) -> BTreeMap<String, AppEnvironment> {
        let mut out = BTreeMap::new();
        for (name, overrides) in raw {
            let name_span = name.span();
            let name = name.into_inner();
            if !envs.iter().any(|e| e.name == name) {
                let help = did_you_mean(&name, envs.iter().map(|e| e.name.as_str()))
                    .or_else(|| list_help("environments", envs.iter().map(|e| &e.name)));
                self.error(name_span, format!("unknown environment \"{name}\""), help);
            }
            let overrides = overrides.into_inner();
            let vars = self.vars(overrides.vars);
            let env = self.env(overrides.env);
            let secrets = self.secrets(overrides.secrets, &env);
            for (key, def) in &env {
                if app_secrets.contains_key(key) {
                    self.error(
                        def.span.clone(),
                        format!("`{key}` is a secret of the app; it cannot also be an env value"),
                        None,
                    );
                }
            }
            for (key, def) in &secrets {
                if app_env.contains_key(key) {
                    self.error(
                        def.span.clone(),
                        format!("`{key}` is an env value of the app; it cannot also be a secret"),
                        None,
                    );
                }
            }
            let retention = overrides.retention.map(|r| self.retention(r));
            let networks = overrides.networks.map(|n| self.networks(n, proxied));
            let volumes = overrides.volumes.map(|v| self.volumes(v));
            out.insert(name, AppEnvironment { vars, env, secrets, retention, networks, volumes });
        }
        out
    }

    /// `networks = [...]`: Docker names, each once, none of Docker's own networks nor the
    /// proxy's (`proxied`: the app has a route somewhere, so `ferry` is joined already).
    fn networks(&mut self, raw: Spanned<Vec<Spanned<String>>>, proxied: bool) -> Vec<String> {
        let mut networks: Vec<String> = Vec::new();
        for name in raw.into_inner() {
            let text = name.get_ref();
            let problem = if let Some(p) = crate::netvol::name_problem(text) {
                Some((
                    format!("network name {p}"),
                    "use letters, digits, `_`, `.` and `-`, starting with a letter or digit".to_string(),
                ))
            } else if crate::netvol::PREDEFINED.contains(&text.as_str()) {
                Some((
                    format!("\"{text}\" is one of Docker's own networks"),
                    "name a network of the app's own: ferry creates it (driver bridge) where it is missing"
                        .into(),
                ))
            } else if text == crate::plan::NETWORK {
                let why = if proxied {
                    "the app joins it through its `proxy` route"
                } else {
                    "give the app a `proxy` route to join it"
                };
                Some((format!("\"{text}\" is the proxy's network"), format!("remove it: {why}")))
            } else if networks.contains(text) {
                Some((format!("network \"{text}\" is listed twice"), "list it once".into()))
            } else {
                None
            };
            match problem {
                Some((message, help)) => self.error(name.span(), message, Some(help)),
                None => networks.push(name.into_inner()),
            }
        }
        networks
    }

    /// `volumes = { NAME = "/path" }`: Docker names, absolute container paths, each path once.
    fn volumes(&mut self, raw: Spanned<raw::SpannedMap<Spanned<String>>>) -> Vec<crate::netvol::Volume> {
        let mut volumes: Vec<crate::netvol::Volume> = Vec::new();
        let mut entries: Vec<_> = raw.into_inner().into_iter().collect();
        // File order, so a repeated path is reported at its second mention.
        entries.sort_by_key(|(name, _)| name.span().start);
        for (name, path) in entries {
            if let Some(p) = crate::netvol::name_problem(name.get_ref()) {
                self.error(
                    name.span(),
                    format!("volume name {p}"),
                    Some("use letters, digits, `_`, `.` and `-`, starting with a letter or digit".into()),
                );
                continue;
            }
            if let Some(p) = crate::netvol::path_problem(path.get_ref()) {
                self.error(
                    path.span(),
                    format!("volume \"{}\": {p}", name.get_ref()),
                    Some("write the absolute path inside the container, like \"/var/lib/app\"".into()),
                );
                continue;
            }
            if let Some(other) = volumes.iter().find(|v| crate::netvol::same_path(&v.path, path.get_ref())) {
                self.error(
                    path.span(),
                    format!(
                        "volumes \"{}\" and \"{}\" are both mounted at {}",
                        other.name,
                        name.get_ref(),
                        path.get_ref()
                    ),
                    Some("a container path takes one volume: give one of them another path".into()),
                );
                continue;
            }
            volumes.push(crate::netvol::Volume { name: name.into_inner(), path: path.into_inner() });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        volumes
    }

    /// `deploy_to`: known environments, each once, at least one.
    fn deploy_to(&mut self, raw: Spanned<Vec<Spanned<String>>>, envs: &[Environment]) -> DeployTo {
        let span = raw.span();
        let at = format!("{}:{}", self.source.path.display(), self.source.line_of(span.start));
        let list = raw.into_inner();
        if list.is_empty() {
            self.error(
                span,
                "deploy_to = [] deploys the app nowhere",
                Some("list the environments it deploys to, or remove the key to deploy it to every environment".into()),
            );
        }
        let mut environments: Vec<String> = Vec::with_capacity(list.len());
        for name in list {
            let text = name.get_ref();
            if !envs.iter().any(|e| &e.name == text) {
                let help = did_you_mean(text, envs.iter().map(|e| e.name.as_str()))
                    .or_else(|| list_help("environments", envs.iter().map(|e| &e.name)));
                self.error(name.span(), format!("unknown environment \"{text}\" in deploy_to"), help);
            } else if environments.contains(text) {
                self.error(name.span(), format!("\"{text}\" is listed twice in deploy_to"), None);
                continue;
            }
            environments.push(name.into_inner());
        }
        DeployTo { environments, at }
    }

    /// Today's rule, kept: an app with roles must find a target with one of them in each
    /// environment that has targets. With `deploy_to`, only in the environments it lists: an
    /// ops-only environment (bastions, a database host) needs none of the app's roles.
    fn check_app_has_targets(&mut self, app: &App, at: usize, targets: &[Target], envs: &[Environment]) {
        let Some(roles) = &app.roles else { return };
        for env in envs.iter().filter(|e| app.deploys_to(&e.name)) {
            let any = env.targets.iter().any(|&i| targets[i].roles.iter().any(|r| roles.contains(r)));
            if !any && !env.targets.is_empty() {
                self.error(
                    app.name_span.start.min(at)..app.name_span.end,
                    format!(
                        "app \"{}\" has no targets in environment \"{}\": no target there has role {}",
                        app.name,
                        env.name,
                        roles.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(" or ")
                    ),
                    Some(format!(
                        "give a target of \"{}\" one of these roles, or change the app's roles",
                        env.name
                    )),
                );
            }
        }
    }

    fn proxy(&mut self, raw: raw::RawProxy, feeds: &BTreeMap<String, Feed>) -> Proxy {
        let mut proxy = Proxy::default();
        if let Some(image) = raw.image {
            let text = image.get_ref();
            if text.is_empty() || text.contains(char::is_whitespace) || text.starts_with('-') {
                self.error(
                    image.span(),
                    "invalid proxy image",
                    Some("write an image reference with its tag, like \"caddy:2\"".into()),
                );
            } else {
                proxy.image = text.clone();
            }
        }
        if let Some(feed) = raw.feed {
            if !feeds.contains_key(feed.get_ref()) {
                let help = did_you_mean(feed.get_ref(), feeds.keys().map(String::as_str))
                    .or(Some("define it as [feeds.NAME]".into()));
                self.error(feed.span(), format!("unknown feed \"{}\"", feed.get_ref()), help);
            }
            proxy.feed = Some(feed.into_inner());
        }
        if let Some(drain) = raw.drain {
            match duration::parse(drain.get_ref()) {
                Ok(d) => proxy.drain = d,
                Err(e) => self.errors.push(Diagnostic::new(e).at(self.source, drain.span())),
            }
        }
        proxy
    }

    /// Two apps (or one app in two environments) that route the same host and path on one
    /// target: the proxy there could only send that traffic to one of them.
    fn check_routes(
        &mut self,
        apps: &[App],
        spans: &[(usize, String, Range<usize>)],
        targets: &[Target],
        envs: &[Environment],
    ) {
        let mut reported = BTreeSet::new();
        for (t, target) in targets.iter().enumerate() {
            let mut claimed: BTreeMap<(String, String), &(usize, String, Range<usize>)> = BTreeMap::new();
            for entry in spans {
                let (a, env_name, span) = entry;
                let (Some(app), Some(env)) = (apps.get(*a), envs.iter().find(|e| &e.name == env_name)) else {
                    continue;
                };
                let runs_here = env.targets.contains(&t)
                    && app.roles.as_ref().is_none_or(|roles| target.roles.iter().any(|r| roles.contains(r)));
                let Some(route) = app.route(env_name).filter(|_| runs_here) else { continue };
                let Some(first) = claimed.get(&route.key()).copied() else {
                    claimed.insert(route.key(), entry);
                    continue;
                };
                if !reported.insert((first.2.start, span.start)) {
                    continue;
                }
                let other = apps.get(first.0).map_or("?", |a| a.name.as_str());
                self.error(
                    span.clone(),
                    format!(
                        "{}{} is routed twice on target \"{}\": app \"{other}\" in \"{}\" and app \"{}\" in \"{env_name}\"",
                        route.host,
                        route.path.as_deref().unwrap_or(""),
                        target.name,
                        first.1,
                        app.name,
                    ),
                    Some("a target's proxy can send a host and path to one app only: give one of them another host or path".into()),
                );
            }
        }
    }

    fn check_container_names(&mut self, apps: &[App], envs: &[Environment]) {
        for env in envs {
            let mut seen: HashMap<String, &App> = HashMap::new();
            // Two apps that never deploy to one environment never meet there.
            for app in apps.iter().filter(|a| a.deploys_to(&env.name)) {
                let name = container_name(app, &env.name);
                if let Some(first) = seen.insert(name.clone(), app) {
                    self.error(
                        app.name_span.clone(),
                        format!(
                            "apps \"{}\" and \"{}\" would both run a container named \"{name}\" in \"{}\"",
                            first.name, app.name, env.name
                        ),
                        Some("set a different container_name on one of them".into()),
                    );
                }
            }
        }
    }
}

/// The container name of `app` in environment `env`: `container_name` or `{app}-{env}`.
pub fn container_name(app: &App, env: &str) -> String {
    app.container_name.clone().unwrap_or_else(|| format!("{}-{env}", app.name))
}

/// `host[:port]` of a registry URL, or `None` when it is not an http(s) URL with a host.
fn registry_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let host = rest.trim_end_matches('/');
    let valid = !host.is_empty()
        && !host.contains(['/', '?', '#', '@', ' '])
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    valid.then(|| host.to_string())
}

fn list_templates(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect()
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_env_name(name: &str) -> bool {
    is_identifier(name)
}

fn is_target_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
