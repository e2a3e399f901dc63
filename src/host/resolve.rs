//! A target's SSH endpoint from the inventory and the user's ssh_config, with where each
//! setting came from.
//!
//! Precedence, as the inventory promises: the target's own keys, then `[defaults]`, then
//! ssh_config (`[defaults] ssh_config`, default `~/.ssh/config`), then built-ins. ProxyJump
//! hops are not targets: each is looked up in ssh_config by its own name, as `ssh -J` does,
//! with `[defaults]` `user`/`identity` only as fallbacks. A chain (`ProxyJump a,b`, or an
//! inventory `jump` to a target that has one) is followed hop by hop with cycle detection
//! and at most [`MAX_JUMPS`] hops, so a bad chain is an input error (exit 2), not a hang.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::inventory::{Inventory, MAX_JUMPS, Target, Transport};
use crate::known_hosts::KnownHosts;
use crate::ssh::{Endpoint, IdentityAgent};
use crate::ssh_config::{self, ConfigError, Hop, Query, Reported, Resolved, Setting, SshConfig};

/// One SSH setting of a target, its value and where it came from (`inventory.toml:12`,
/// `~/.ssh/config:3`, `default`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// The setting (`hostname`, `port`, `user`, `identity`, ...).
    pub setting: &'static str,
    /// Its value.
    pub value: String,
    /// Where it came from.
    pub from: String,
}

/// A target's endpoint, how it was made, and what ssh_config said that ferry does not apply.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Where and as whom to connect.
    pub endpoint: Endpoint,
    /// Each setting of the target itself (not its hops), in a fixed order.
    pub provenance: Vec<Provenance>,
    /// Security-relevant directives read but not applied (the target's and its hops').
    pub reported: Vec<Reported>,
    /// True when ssh_config set any of the target's settings.
    pub uses_config: bool,
}

/// What every resolution of one inventory shares.
struct Context<'a> {
    inventory: &'a Inventory,
    config: SshConfig,
    home: Option<PathBuf>,
    local_user: String,
}

/// Resolves `target`'s endpoint. Errors (a refused directive, a bad value, a jump cycle) are
/// input errors naming the file and line.
pub fn resolve(inventory: &Inventory, target: &Target) -> Result<Resolution, Diagnostic> {
    let context = Context::new(inventory)?;
    let mut reported = Vec::new();
    let (endpoint, provenance) = context.target(target, &mut vec![target.name.clone()], &mut reported)?;
    let inventory_file = format!("{}:", inventory.source.path.display());
    let uses_config =
        provenance.iter().any(|p| !p.from.starts_with("default") && !p.from.starts_with(&inventory_file));
    Ok(Resolution { endpoint, provenance, reported, uses_config })
}

/// `user@host:port via HOP → HOP`, for plans.
pub fn describe(endpoint: &Endpoint) -> String {
    let mut hops = Vec::new();
    let mut at = endpoint.jump.as_deref();
    while let Some(hop) = at {
        hops.push(format!("{}@{}:{}", hop.user, hop.host, hop.port));
        at = hop.jump.as_deref();
    }
    hops.reverse();
    let via = if hops.is_empty() { String::new() } else { format!(" via {}", hops.join(" → ")) };
    format!("{}@{}:{}{via}", endpoint.user, endpoint.host, endpoint.port)
}

/// Resolves every SSH target (before any connection of a run) and returns the reported
/// directives, each once.
pub fn check_all(inventory: &Inventory) -> Result<Vec<Reported>, Diagnostic> {
    let context = Context::new(inventory)?;
    let mut reported = Vec::new();
    for target in inventory.targets.iter().filter(|t| t.transport == Transport::Ssh) {
        context.target(target, &mut vec![target.name.clone()], &mut reported)?;
    }
    Ok(reported)
}

/// The ssh_config file the inventory reads, if any.
pub fn config_path(inventory: &Inventory) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let written = inventory.defaults.ssh_config.as_deref()?;
    match (written.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Some(home.join(rest)),
        (Some(_), None) => None, // no home: no ~/.ssh/config, as for a missing file
        _ => Some(crate::diagnostic::normalize(&inventory.dir.join(written))),
    }
}

fn config_error(e: ConfigError, target: &str) -> Diagnostic {
    Diagnostic::new(format!("{e} (for target \"{target}\")")).help(e.help)
}

impl<'a> Context<'a> {
    fn new(inventory: &'a Inventory) -> Result<Context<'a>, Diagnostic> {
        let home = std::env::var_os("HOME").map(PathBuf::from).filter(|h| !h.as_os_str().is_empty());
        let config = match config_path(inventory) {
            Some(path) => SshConfig::load(&path, home.as_deref())
                .map_err(|e| Diagnostic::new(e.to_string()).help(e.help.clone()))?,
            None => SshConfig::default(),
        };
        let local_user =
            std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        Ok(Context { inventory, config, home, local_user })
    }

    fn inventory_at(&self, span: &std::ops::Range<usize>) -> String {
        let source = &self.inventory.source;
        format!("{}:{}", source.path.display(), source.line_of(span.start))
    }

    fn lookup(&self, alias: &str, user: Option<&str>, name: &str) -> Result<Resolved, Diagnostic> {
        self.config
            .resolve(&Query { alias, user, local_user: &self.local_user })
            .map_err(|e| config_error(e, name))
    }

    /// `target`'s endpoint; `chain` holds the names on the way here (for cycles).
    fn target(
        &self,
        target: &Target,
        chain: &mut Vec<String>,
        reported: &mut Vec<Reported>,
    ) -> Result<(Endpoint, Vec<Provenance>), Diagnostic> {
        let inv = self.inventory;
        let name = target.name.as_str();
        let mut provenance = Vec::new();
        let mut note = |setting: &'static str, value: String, from: String| {
            provenance.push(Provenance { setting, value, from });
        };
        let at_target = self.inventory_at(&target.name_span);
        if target.transport == Transport::Local {
            let endpoint = plain(inv, target, None);
            return Ok((endpoint, provenance));
        }
        let r = self.lookup(&target.host, target.user.as_deref(), name)?;
        merge_reported(reported, &r.reported);
        let host = match r.get("hostname") {
            Some(h) => {
                let value = ssh_config::expand_hostname(&h.value, &target.host);
                note("hostname", value.clone(), h.at.to_string());
                value
            }
            None => {
                note("hostname", target.host.clone(), at_target.clone());
                target.host.clone()
            }
        };
        let port = match (&target.spans.port, r.get("port")) {
            (Some(span), _) => {
                note("port", target.port.to_string(), self.inventory_at(span));
                target.port
            }
            (None, Some(p)) => {
                let port = parse_port(p).map_err(|e| config_error(e, name))?;
                note("port", port.to_string(), p.at.to_string());
                port
            }
            (None, None) => {
                note("port", "22".into(), "default".into());
                22
            }
        };
        let user = match (&target.user, &target.spans.user, r.get("user")) {
            (Some(user), Some(span), _) => {
                note("user", user.clone(), self.inventory_at(span));
                user.clone()
            }
            (_, _, Some(u)) => {
                note("user", u.value.clone(), u.at.to_string());
                u.value.clone()
            }
            _ => {
                note("user", self.local_user.clone(), "default (the local user)".into());
                self.local_user.clone()
            }
        };
        let mut identities = Vec::new();
        if let (Some(identity), Some(span)) = (&target.identity, &target.spans.identity) {
            let path = super::resolve_path(&inv.dir, identity);
            note("identity", path.display().to_string(), self.inventory_at(span));
            identities.push(path);
        }
        let tokens = Tokens { host: &host, alias: &target.host, port, user: &user };
        let mut settings = self.settings(&r, &tokens, name)?;
        for (path, at) in &settings.identity_origins {
            note("identity", path.display().to_string(), at.clone());
        }
        identities.append(&mut settings.identities);
        for (setting, value, at) in settings.notes.drain(..) {
            note(setting, value, at);
        }
        let known_hosts = if let Some(span) = &inv.defaults.known_hosts_span {
            note("known_hosts", inv.defaults.known_hosts.display().to_string(), self.inventory_at(span));
            None
        } else if let Some(found) = settings.known_hosts.take() {
            let (path, at) = found?;
            note("known_hosts", path.display().to_string(), at);
            Some(known_hosts_file(&path)?)
        } else {
            note("known_hosts", inv.defaults.known_hosts.display().to_string(), "default".into());
            None
        };
        let jump = match (&target.jump, &target.spans.jump) {
            (Some(via), span) => {
                let from = span.as_ref().map_or_else(|| at_target.clone(), |s| self.inventory_at(s));
                note("jump", via.clone(), from);
                let Some(jump) = inv.target(via) else {
                    return Err(Diagnostic::new(format!(
                        "unknown jump host \"{via}\" for target \"{name}\""
                    )));
                };
                self.enter(chain, via, name)?;
                let (endpoint, _) = self.target(jump, chain, reported)?;
                Some(Box::new(endpoint))
            }
            (None, _) => match r.get("proxyjump") {
                Some(p) if !p.value.eq_ignore_ascii_case("none") => {
                    note("jump", p.value.clone(), p.at.to_string());
                    self.hops(p, chain, reported, name)?
                }
                _ => None,
            },
        };
        let endpoint = Endpoint {
            name: name.to_string(),
            host,
            port,
            user,
            identities,
            identities_only: settings.identities_only,
            certificate_files: settings.certificate_files,
            identity_agent: settings.identity_agent,
            host_key_alias: settings.host_key_alias,
            known_hosts,
            connect_timeout: settings.connect_timeout,
            jump,
        };
        Ok((endpoint, provenance))
    }

    /// Records one more hop on the way, refusing a cycle or a chain too long.
    fn enter(&self, chain: &mut Vec<String>, next: &str, name: &str) -> Result<(), Diagnostic> {
        if chain.iter().any(|c| c == next) {
            chain.push(next.to_string());
            return Err(Diagnostic::new(format!(
                "the jump hosts of target \"{name}\" go round in a circle: {}",
                chain.join(" -> ")
            ))
            .help("break the circle in the inventory's `jump` or ssh_config's ProxyJump"));
        }
        chain.push(next.to_string());
        if chain.len() > MAX_JUMPS + 1 {
            return Err(Diagnostic::new(format!(
                "target \"{name}\" is more than {MAX_JUMPS} jump hosts away"
            ))
            .help("reach a bastion nearer the target"));
        }
        Ok(())
    }

    /// The chain a ProxyJump value makes: `a,b` → b reached through a, a dialled first (with
    /// its own ssh_config ProxyJump, as `ssh -J a,b` does; later hops ignore theirs).
    fn hops(
        &self,
        setting: &Setting,
        chain: &mut Vec<String>,
        reported: &mut Vec<Reported>,
        name: &str,
    ) -> Result<Option<Box<Endpoint>>, Diagnostic> {
        let hops = ssh_config::parse_jumps(&setting.value).map_err(|m| {
            Diagnostic::new(format!("{}: {m} (for target \"{name}\")", setting.at))
                .help("write ProxyJump [user@]host[:port][,...]")
        })?;
        let mut via: Option<Box<Endpoint>> = None;
        for (i, hop) in hops.iter().enumerate() {
            self.enter(chain, &hop.host, name)?;
            let endpoint = self.hop(hop, via.take(), i == 0, chain, reported, name)?;
            via = Some(Box::new(endpoint));
        }
        Ok(via)
    }

    fn hop(
        &self,
        hop: &Hop,
        via: Option<Box<Endpoint>>,
        own_jump: bool,
        chain: &mut Vec<String>,
        reported: &mut Vec<Reported>,
        name: &str,
    ) -> Result<Endpoint, Diagnostic> {
        let defaults = &self.inventory.defaults;
        let r = self.lookup(&hop.host, hop.user.as_deref(), name)?;
        merge_reported(reported, &r.reported);
        let host = r
            .get("hostname")
            .map_or_else(|| hop.host.clone(), |h| ssh_config::expand_hostname(&h.value, &hop.host));
        let port = match (hop.port, r.get("port")) {
            (Some(port), _) => port,
            (None, Some(p)) => parse_port(p).map_err(|e| config_error(e, name))?,
            (None, None) => 22,
        };
        let user = hop
            .user
            .clone()
            .or_else(|| r.get("user").map(|u| u.value.clone()))
            .or_else(|| defaults.user.clone())
            .unwrap_or_else(|| self.local_user.clone());
        let tokens = Tokens { host: &host, alias: &hop.host, port, user: &user };
        let mut settings = self.settings(&r, &tokens, name)?;
        let mut identities = std::mem::take(&mut settings.identities);
        identities.extend(defaults.identity.as_deref().map(|p| super::resolve_path(&self.inventory.dir, p)));
        let known_hosts = match (&defaults.known_hosts_span, settings.known_hosts.take()) {
            (None, Some(found)) => Some(known_hosts_file(&found?.0)?),
            _ => None,
        };
        let jump = match (via, own_jump, r.get("proxyjump")) {
            (Some(via), _, _) => Some(via),
            (None, true, Some(p)) if !p.value.eq_ignore_ascii_case("none") => {
                self.hops(p, chain, reported, name)?
            }
            _ => None,
        };
        Ok(Endpoint {
            name: format!("{} (jump host of {name})", hop.host),
            host,
            port,
            user,
            identities,
            identities_only: settings.identities_only,
            certificate_files: settings.certificate_files,
            identity_agent: settings.identity_agent,
            host_key_alias: settings.host_key_alias,
            known_hosts,
            connect_timeout: settings.connect_timeout,
            jump,
        })
    }

    /// The settings a target and a hop read alike from ssh_config.
    fn settings(&self, r: &Resolved, tokens: &Tokens<'_>, name: &str) -> Result<Settings, Diagnostic> {
        let uid = rustix::process::getuid().as_raw().to_string();
        let port = tokens.port.to_string();
        let home = self.home.as_ref().map(|h| h.display().to_string()).unwrap_or_default();
        let table = [
            ('h', tokens.host),
            ('n', tokens.alias),
            ('p', port.as_str()),
            ('r', tokens.user),
            ('u', self.local_user.as_str()),
            ('d', home.as_str()),
            ('i', uid.as_str()),
        ];
        let path = |s: &Setting| {
            ssh_config::expand_path(s, &table, self.home.as_deref()).map_err(|e| config_error(e, name))
        };
        let mut out = Settings::default();
        for s in &r.identity_files {
            if s.value.eq_ignore_ascii_case("none") {
                continue;
            }
            let p = path(s)?;
            // A missing IdentityFile is skipped, as OpenSSH does (`Host *` blocks often name
            // keys that only some machines have); the inventory's own `identity` must exist.
            if p.exists() {
                out.identity_origins.push((p.clone(), s.at.to_string()));
                out.identities.push(p);
            } else {
                out.notes.push(("identity", format!("{} (missing, skipped)", p.display()), s.at.to_string()));
            }
        }
        for s in &r.certificate_files {
            let p = path(s)?;
            // Skipped when missing, like a missing IdentityFile (ssh only warns about it).
            if p.is_file() {
                out.notes.push(("certificate_file", p.display().to_string(), s.at.to_string()));
                out.certificate_files.push(p);
            } else {
                out.notes.push((
                    "certificate_file",
                    format!("{} (missing, skipped)", p.display()),
                    s.at.to_string(),
                ));
            }
        }
        if let Some(s) = r.get("identitiesonly") {
            out.identities_only = yes_no(s).map_err(|e| config_error(e, name))?;
            out.notes.push(("identities_only", s.value.to_ascii_lowercase(), s.at.to_string()));
        }
        if let Some(s) = r.get("identityagent") {
            let agent = if s.value.eq_ignore_ascii_case("none") {
                Some(IdentityAgent::Disabled)
            } else if s.value == "SSH_AUTH_SOCK" {
                None
            } else if let Some(var) = s.value.strip_prefix('$').filter(|v| !v.starts_with('{')) {
                // `$NAME` unset turns the agent off, as ssh does; it never falls back to
                // SSH_AUTH_SOCK. (`${NAME}` is path expansion: unset is an error.)
                match std::env::var_os(var).filter(|v| !v.is_empty()) {
                    Some(v) => Some(IdentityAgent::Socket(PathBuf::from(v))),
                    None => Some(IdentityAgent::Disabled),
                }
            } else {
                Some(IdentityAgent::Socket(path(s)?))
            };
            let shown = match &agent {
                Some(IdentityAgent::Disabled) if s.value.starts_with('$') => {
                    format!("{} (unset: no agent)", s.value)
                }
                _ => s.value.clone(),
            };
            out.identity_agent = agent;
            out.notes.push(("identity_agent", shown, s.at.to_string()));
        }
        if let Some(s) = r.get("hostkeyalias") {
            out.host_key_alias = Some(s.value.clone());
            out.notes.push(("host_key_alias", s.value.clone(), s.at.to_string()));
        }
        if let Some(s) = r.get("connecttimeout") {
            if !s.value.eq_ignore_ascii_case("none") {
                let secs = s.value.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    Diagnostic::new(format!(
                        "{}: ConnectTimeout {} is not a number of seconds",
                        s.at, s.value
                    ))
                })?;
                out.connect_timeout = Some(Duration::from_secs(secs));
            }
            out.notes.push(("connect_timeout", s.value.clone(), s.at.to_string()));
        }
        if let Some(s) = r.get("userknownhostsfile") {
            // `none`, /dev/null or a device would make `ferry trust` rename a file over it, and
            // every host would be unknown: ferry needs a real file it can read and write.
            let unusable = || {
                Diagnostic::new(format!(
                    "{}: UserKnownHostsFile {} is not a file ferry can use (for target \"{name}\")",
                    s.at, s.value
                ))
                .help("ferry needs a known_hosts file: set `known_hosts` in [defaults] or give a real file")
            };
            // The error waits until the file is used: `known_hosts` in [defaults] overrides it.
            out.known_hosts = Some(if s.value.eq_ignore_ascii_case("none") {
                Err(unusable())
            } else {
                let p = path(s)?;
                let regular = std::fs::metadata(&p).map(|m| m.is_file());
                if p == Path::new("/dev/null") || matches!(regular, Ok(false)) {
                    Err(unusable())
                } else {
                    Ok((p, s.at.to_string()))
                }
            });
        }
        Ok(out)
    }
}

/// The values `%` tokens expand to.
struct Tokens<'t> {
    host: &'t str,
    alias: &'t str,
    port: u16,
    user: &'t str,
}

/// What [`Context::settings`] read.
#[derive(Default)]
struct Settings {
    identities: Vec<PathBuf>,
    identity_origins: Vec<(PathBuf, String)>,
    certificate_files: Vec<PathBuf>,
    identities_only: bool,
    identity_agent: Option<IdentityAgent>,
    host_key_alias: Option<String>,
    connect_timeout: Option<Duration>,
    /// UserKnownHostsFile and its line, or why it cannot be used.
    known_hosts: Option<Result<(PathBuf, String), Diagnostic>>,
    notes: Vec<(&'static str, String, String)>,
}

fn parse_port(setting: &Setting) -> Result<u16, ConfigError> {
    setting.value.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| ConfigError {
        at: Some(setting.at.clone()),
        file: setting.at.file.to_string(),
        message: format!("Port {} is not a port", setting.value),
        help: "a port is 1 to 65535".into(),
    })
}

fn yes_no(setting: &Setting) -> Result<bool, ConfigError> {
    match setting.value.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        other => Err(ConfigError {
            at: Some(setting.at.clone()),
            file: setting.at.file.to_string(),
            message: format!("expected yes or no, not {other}"),
            help: "write yes or no".into(),
        }),
    }
}

fn merge_reported(into: &mut Vec<Reported>, new: &[Reported]) {
    for r in new {
        if !into.contains(r) {
            into.push(r.clone());
        }
    }
}

/// A known_hosts file named by ssh_config, parsed once per run (every target and hop naming
/// the same file shares it).
fn known_hosts_file(path: &Path) -> Result<Arc<KnownHosts>, Diagnostic> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<KnownHosts>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
        return Ok(found);
    }
    let loaded = KnownHosts::load(path).map_err(|e| {
        Diagnostic::new(format!("cannot read {}: {e}", path.display())).help(
            "fix its permissions, or point UserKnownHostsFile (or `known_hosts` in [defaults]) elsewhere",
        )
    })?;
    let loaded = Arc::new(loaded);
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_path_buf(), Arc::clone(&loaded));
    }
    Ok(loaded)
}

/// The endpoint from the inventory alone (a local target, or when ssh_config cannot be read
/// at connect time after it was checked at the start of the run).
pub fn plain(inventory: &Inventory, target: &Target, jump: Option<Box<Endpoint>>) -> Endpoint {
    let user = target.user.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "root".into());
    Endpoint {
        name: target.name.clone(),
        host: target.host.clone(),
        port: target.port,
        user,
        identities: target
            .identity
            .as_deref()
            .map(|p| super::resolve_path(&inventory.dir, p))
            .into_iter()
            .collect(),
        identities_only: false,
        certificate_files: Vec::new(),
        identity_agent: None,
        host_key_alias: None,
        known_hosts: None,
        connect_timeout: None,
        jump,
    }
}
