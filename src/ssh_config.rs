//! The user's OpenSSH client configuration (`~/.ssh/config`), read the way `ssh` reads it.
//!
//! Operators already describe their hosts there; ferry reads it so that a target can be just
//! `host = "web-1"`. Hand-written rather than a crate because ferry needs OpenSSH's exact rules
//! (first obtained value wins, `Match`, `Include`, `%` tokens) *and* the file and line of every
//! value, to show where a setting came from and to refuse a directive by its line. Only the
//! directives that decide where and how ferry connects are applied; the ones that would make
//! ferry trust more or connect elsewhere than it can are refused ([`ConfigError`]) or reported
//! ([`Resolved::reported`]), never silently ignored. Only the user's file is read, never
//! `/etc/ssh/ssh_config`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep `Include` may nest (OpenSSH's limit).
pub const INCLUDE_DEPTH: usize = 16;

/// Where a value was written: a file (shown with `~` for the home folder) and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, for messages.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A configuration that ferry cannot use as written: the place, what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The line at fault (`None`: the file as a whole).
    pub at: Option<Origin>,
    /// The file when `at` is `None`.
    pub file: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub help: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: {}", self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// One line of a configuration file that matters to resolution.
#[derive(Debug, Clone)]
enum Entry {
    /// `Host PATTERN...`.
    Host { patterns: Vec<String> },
    /// `Match CRITERIA...`.
    Match { args: Vec<String> },
    /// `Include`: the parsed files it named, in glob order.
    Include { files: Vec<Vec<(Origin, Entry)>> },
    /// Any other directive, keyword lower-cased.
    Directive { key: String, args: Vec<String> },
}

/// A parsed configuration file, includes expanded.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    entries: Vec<(Origin, Entry)>,
}

/// One resolved value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The value as written (tokens not yet expanded).
    pub value: String,
    /// Its line.
    pub at: Origin,
}

/// A directive ferry does not apply but reports, since it changes security.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reported {
    /// `file:line`.
    pub at: String,
    /// What ferry does instead.
    pub message: String,
}

/// What the configuration says about one host.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// First value of each single-valued directive that was set, keyword lower-cased.
    pub values: BTreeMap<String, Setting>,
    /// Every `IdentityFile`, in order.
    pub identity_files: Vec<Setting>,
    /// Every `CertificateFile`, in order.
    pub certificate_files: Vec<Setting>,
    /// Security-relevant directives ferry does not apply.
    pub reported: Vec<Reported>,
}

impl Resolved {
    /// The first value of `key` (lower-case).
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.values.get(key)
    }
}

/// The host being looked up and what is known before the file is read.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The name given (the inventory's `host`, or a ProxyJump hop's host).
    pub alias: &'a str,
    /// The remote user when it is set before the file (inventory or hop spec), for `Match user`.
    pub user: Option<&'a str>,
    /// The local user name, for `Match localuser` and `%u`.
    pub local_user: &'a str,
}

/// Single-valued directives ferry keeps (first value wins), including those it reports or
/// refuses.
const KEPT: &[&str] = &[
    "hostname",
    "user",
    "port",
    "identitiesonly",
    "proxyjump",
    "proxycommand",
    "userknownhostsfile",
    "connecttimeout",
    "hostkeyalias",
    "identityagent",
    "stricthostkeychecking",
    "knownhostscommand",
    "globalknownhostsfile",
    "checkhostip",
    "verifyhostkeydns",
    "hostkeyalgorithms",
    "casignaturealgorithms",
    "kexalgorithms",
    "ciphers",
    "macs",
    "forwardagent",
    "revokedhostkeys",
    "canonicalizehostname",
];

impl SshConfig {
    /// Reads `path` (a missing file is an empty configuration). `home` resolves relative
    /// `Include`s (`~/.ssh/...`) and `~`.
    pub fn load(path: &Path, home: Option<&Path>) -> Result<SshConfig, ConfigError> {
        let entries = read_file(path, home, 0)?.unwrap_or_default();
        Ok(SshConfig { entries })
    }

    /// Parses `text` as the file `name` (for tests; `Include` resolves against `home`).
    pub fn parse(name: &str, text: &str, home: Option<&Path>) -> Result<SshConfig, ConfigError> {
        Ok(SshConfig { entries: parse_text(&display_path(Path::new(name), home), text, home, 0)? })
    }

    /// Resolves `query` as `ssh` would: every applicable block in file order, first value
    /// wins. Refused directives and unsupported `Match` criteria are errors.
    pub fn resolve(&self, query: &Query<'_>) -> Result<Resolved, ConfigError> {
        let mut state = State { query, resolved: Resolved::default() };
        let mut active = true;
        state.walk(&self.entries, &mut active)?;
        let mut resolved = state.resolved;
        refuse(&resolved)?;
        resolved.reported = report(&resolved);
        Ok(resolved)
    }
}

/// Resolution in progress.
struct State<'q, 'a> {
    query: &'q Query<'a>,
    resolved: Resolved,
}

impl State<'_, '_> {
    fn walk(&mut self, entries: &[(Origin, Entry)], active: &mut bool) -> Result<(), ConfigError> {
        for (at, entry) in entries {
            match entry {
                Entry::Host { patterns } => {
                    // `Host` compares the alias as typed, case and all (OpenSSH's match_pattern).
                    *active = host_matches(patterns, self.query.alias)
                }
                Entry::Match { args } => *active = self.match_line(at, args)?,
                Entry::Include { files } => {
                    // An included file starts in the includer's state and leaves it unchanged
                    // (OpenSSH: an inactive Include never matches inside).
                    let outer = *active;
                    for file in files {
                        let mut inner = outer;
                        if outer {
                            self.walk(file, &mut inner)?;
                        }
                    }
                    *active = outer;
                }
                Entry::Directive { key, args } if *active => self.set(at, key, args)?,
                Entry::Directive { .. } => {}
            }
        }
        Ok(())
    }

    fn set(&mut self, at: &Origin, key: &str, args: &[String]) -> Result<(), ConfigError> {
        let value = args.join(" ");
        let setting = Setting { value, at: at.clone() };
        match key {
            // The first UserKnownHostsFile line wins. Several files on it would mean checking
            // their union (an `@revoked` line in a later one counts): ferry reads one file, so
            // it refuses instead of ignoring the others. One quoted path keeps its spaces.
            "userknownhostsfile" if !self.resolved.values.contains_key(key) => {
                if args.len() > 1 {
                    return Err(error_at(
                        at,
                        format!("UserKnownHostsFile names {} files; ferry reads only one", args.len()),
                        "name one file, or set `known_hosts` in [defaults]",
                    ));
                }
                let value = args.first().cloned().unwrap_or_default();
                self.resolved.values.insert(key.to_string(), Setting { value, at: at.clone() });
            }
            "identityfile" => self.resolved.identity_files.push(setting),
            "certificatefile" => self.resolved.certificate_files.push(setting),
            // ProxyCommand and ProxyJump exclude each other: the first one set wins.
            // After `ProxyJump none` no jump wins, so a later ProxyCommand is kept (and refused
            // by the resolver) rather than silently dropped.
            "proxycommand"
                if self.resolved.get("proxyjump").is_some_and(|j| !j.value.eq_ignore_ascii_case("none")) => {}
            "proxyjump" if self.resolved.values.contains_key("proxycommand") => {}
            _ if KEPT.contains(&key) => {
                self.resolved.values.entry(key.to_string()).or_insert(setting);
            }
            _ => {}
        }
        Ok(())
    }

    /// Evaluates a `Match` line left to right; criteria after a false one are not reached.
    fn match_line(&self, at: &Origin, args: &[String]) -> Result<bool, ConfigError> {
        let mut i = 0;
        if args.is_empty() {
            return Err(error_at(at, "Match without criteria", "write `Match all` or a criterion"));
        }
        while i < args.len() {
            let raw = args[i].as_str();
            let (negated, name) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest.to_ascii_lowercase()),
                None => (false, raw.to_ascii_lowercase()),
            };
            let result = match name.as_str() {
                "all" => {
                    i += 1;
                    true
                }
                "host" | "originalhost" | "user" | "localuser" => {
                    let Some(list) = args.get(i + 1) else {
                        return Err(error_at(
                            at,
                            format!("Match {name} needs a pattern list"),
                            "add patterns",
                        ));
                    };
                    i += 2;
                    let subject = match name.as_str() {
                        "host" => self.hostname_so_far().to_lowercase(),
                        "originalhost" => self.query.alias.to_lowercase(),
                        "user" => self.user_so_far().to_string(),
                        _ => self.query.local_user.to_string(),
                    };
                    // Host names compare without case on both sides (OpenSSH's match_hostname).
                    if matches!(name.as_str(), "host" | "originalhost") {
                        pattern_list_matches(&list.to_lowercase(), &subject)
                    } else {
                        pattern_list_matches(list, &subject)
                    }
                }
                other => {
                    return Err(error_at(
                        at,
                        format!("Match {other} is not supported by ferry"),
                        "use Host blocks or Match host/originalhost/user/localuser/all, or set \
                         ssh_config = \"none\" in [defaults]",
                    ));
                }
            };
            if result == negated {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn hostname_so_far(&self) -> String {
        match self.resolved.values.get("hostname") {
            Some(h) => expand_hostname(&h.value, self.query.alias),
            None => self.query.alias.to_string(),
        }
    }

    fn user_so_far(&self) -> &str {
        self.query
            .user
            .or_else(|| self.resolved.values.get("user").map(|s| s.value.as_str()))
            .unwrap_or(self.query.local_user)
    }
}

/// `Host` patterns: a matching negated pattern disables the block whatever else matches.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if crate::glob::matches_wildcards(negated, host) {
                return false;
            }
        } else if crate::glob::matches_wildcards(pattern, host) {
            matched = true;
        }
    }
    matched
}

/// A comma-separated `Match` list: a matching negation is a miss, else any positive match.
fn pattern_list_matches(list: &str, subject: &str) -> bool {
    let patterns: Vec<String> = list.split(',').map(str::to_string).collect();
    host_matches(&patterns, subject)
}

/// The directives that would make ferry connect elsewhere or trust more than the file says.
fn refuse(resolved: &Resolved) -> Result<(), ConfigError> {
    if let Some(s) = resolved.get("proxycommand")
        && !s.value.eq_ignore_ascii_case("none")
    {
        return Err(error_at(
            &s.at,
            "ProxyCommand is not supported by ferry",
            "use ProxyJump (or the inventory's `jump`), or set ssh_config = \"none\" in [defaults]",
        ));
    }
    if let Some(s) = resolved.get("revokedhostkeys") {
        return Err(error_at(
            &s.at,
            "RevokedHostKeys (a key revocation list) cannot be read by ferry",
            "mark revoked keys with @revoked in known_hosts, or set ssh_config = \"none\" in [defaults]",
        ));
    }
    if let Some(s) = resolved.get("canonicalizehostname")
        && matches!(s.value.to_ascii_lowercase().as_str(), "yes" | "always")
    {
        return Err(error_at(
            &s.at,
            format!("CanonicalizeHostname {} is not supported by ferry", s.value),
            "write the full name as HostName, or set ssh_config = \"none\" in [defaults]",
        ));
    }
    Ok(())
}

/// Security-relevant directives that are read but not applied.
fn report(resolved: &Resolved) -> Vec<Reported> {
    let mut out = Vec::new();
    for (key, setting) in &resolved.values {
        let lower = setting.value.to_ascii_lowercase();
        let message = match key.as_str() {
            "stricthostkeychecking" if matches!(lower.as_str(), "no" | "off" | "false" | "accept-new") => {
                format!(
                    "StrictHostKeyChecking {}: ignored, ferry always checks host keys strictly",
                    setting.value
                )
            }
            "knownhostscommand" => "KnownHostsCommand: ignored, ferry reads known_hosts files only".into(),
            "globalknownhostsfile" => {
                "GlobalKnownHostsFile: ignored, ferry reads one known_hosts file".into()
            }
            "checkhostip" => format!(
                "CheckHostIP {}: ignored, ferry checks the key of the name it connects to",
                setting.value
            ),
            "verifyhostkeydns" => {
                format!("VerifyHostKeyDNS {}: ignored, ferry trusts known_hosts only", setting.value)
            }
            "hostkeyalgorithms" | "casignaturealgorithms" | "kexalgorithms" | "ciphers" | "macs" => {
                format!("{}: ignored, ferry uses its SSH library's algorithms", canonical_name(key))
            }
            "forwardagent" if lower == "yes" => {
                "ForwardAgent yes: ignored, ferry never forwards the agent".into()
            }
            _ => continue,
        };
        out.push(Reported { at: setting.at.to_string(), message });
    }
    out
}

/// The usual spelling of a lower-cased keyword, for messages.
fn canonical_name(key: &str) -> &str {
    match key {
        "hostkeyalgorithms" => "HostKeyAlgorithms",
        "casignaturealgorithms" => "CASignatureAlgorithms",
        "kexalgorithms" => "KexAlgorithms",
        "ciphers" => "Ciphers",
        "macs" => "MACs",
        other => other,
    }
}

fn error_at(at: &Origin, message: impl Into<String>, help: impl Into<String>) -> ConfigError {
    ConfigError {
        at: Some(at.clone()),
        file: at.file.to_string(),
        message: message.into(),
        help: help.into(),
    }
}

/// `path` as messages show it: under the home folder as `~/...`.
pub fn display_path(path: &Path, home: Option<&Path>) -> String {
    if let Some(home) = home
        && let Ok(rest) = path.strip_prefix(home)
    {
        return format!("~/{}", rest.display());
    }
    path.display().to_string()
}

/// Reads one file; `None` when it does not exist.
fn read_file(
    path: &Path,
    home: Option<&Path>,
    depth: usize,
) -> Result<Option<Vec<(Origin, Entry)>>, ConfigError> {
    let name = display_path(path, home);
    match read_secure(path) {
        Ok(Err(message)) => Err(ConfigError {
            at: None,
            file: name,
            message,
            help: "run `chmod go-w` on it (and own it), as ssh requires, or set ssh_config = \"none\" in [defaults]"
                .into(),
        }),
        Ok(Ok(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            parse_text(&name, &text, home, depth).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError {
            at: None,
            file: name,
            message: format!("cannot read: {e}"),
            help: "fix its permissions, or set ssh_config = \"none\" in [defaults]".into(),
        }),
    }
}

/// Reads a config file that only its reader (or root) can have written, as OpenSSH's
/// `secure_permissions` demands: a group- or world-writable file, or one owned by another
/// user, could make ssh (and ferry) connect anywhere with any key. The checks are on the
/// opened file, so a rename in between cannot swap it. `Ok(Err(why))` when it is refused.
fn read_secure(path: &Path) -> std::io::Result<Result<Vec<u8>, String>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let uid = rustix::process::getuid().as_raw();
    if meta.uid() != 0 && meta.uid() != uid {
        return Ok(Err(format!("bad owner: owned by uid {}, not by uid {uid} or root", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Ok(Err(format!(
            "bad permissions: mode {:o} is group- or world-writable",
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Ok(bytes))
}

fn parse_text(
    name: &str,
    text: &str,
    home: Option<&Path>,
    depth: usize,
) -> Result<Vec<(Origin, Entry)>, ConfigError> {
    let file: Arc<str> = Arc::from(name);
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Origin { file: Arc::clone(&file), line: i + 1 };
        let Some((key, args)) = split_line(line).map_err(|m| error_at(&at, m, "fix the quoting"))? else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let entry = match key.as_str() {
            "host" => {
                if args.is_empty() {
                    return Err(error_at(&at, "Host without patterns", "write `Host NAME`"));
                }
                Entry::Host { patterns: args }
            }
            "match" => Entry::Match { args },
            "include" => {
                if depth >= INCLUDE_DEPTH {
                    return Err(error_at(
                        &at,
                        format!("Include nested deeper than {INCLUDE_DEPTH} files"),
                        "an included file probably includes itself",
                    ));
                }
                let mut files = Vec::new();
                for pattern in &args {
                    for path in include_paths(pattern, home) {
                        if let Some(parsed) = read_file(&path, home, depth + 1)? {
                            files.push(parsed);
                        }
                    }
                }
                Entry::Include { files }
            }
            _ => {
                if args.is_empty() && KEPT.contains(&key.as_str()) {
                    return Err(error_at(&at, format!("{key} without a value"), "give it a value"));
                }
                Entry::Directive { key, args }
            }
        };
        entries.push((at, entry));
    }
    Ok(entries)
}

/// Splits a line into its keyword and arguments: `Key value`, `Key=value`, double- or
/// single-quoted arguments, `#` comments. `None` for a blank or comment line.
pub fn split_line(line: &str) -> Result<Option<(String, Vec<String>)>, String> {
    let line = line.trim_start_matches([' ', '\t', '\r']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let end = line.find([' ', '\t', '=', '\r']).unwrap_or(line.len());
    let key = line[..end].to_string();
    let mut rest = line[end..].trim_start_matches([' ', '\t', '\r']);
    if let Some(after) = rest.strip_prefix('=') {
        rest = after;
    }
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t' | '\r')).is_some() {}
        let Some(&first) = chars.peek() else { break };
        if first == '#' {
            break;
        }
        let mut arg = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, ' ' | '\t' | '\r') => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (_, '\\') => match chars.next() {
                    Some(next) if matches!(next, '"' | '\'' | '\\' | ' ') => arg.push(next),
                    Some(next) => {
                        arg.push('\\');
                        arg.push(next);
                    }
                    None => arg.push('\\'),
                },
                (_, c) => arg.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        args.push(arg);
    }
    Ok(Some((key, args)))
}

/// The files an `Include` pattern names: `~` expanded, relative to `~/.ssh`, `*`/`?` globbed
/// per path component, in sorted order.
fn include_paths(pattern: &str, home: Option<&Path>) -> Vec<PathBuf> {
    let expanded = match (pattern.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if Path::new(pattern).is_absolute() => PathBuf::from(pattern),
        _ => match home {
            Some(home) => home.join(".ssh").join(pattern),
            None => return Vec::new(),
        },
    };
    let mut found = vec![PathBuf::from("/")];
    for component in expanded.components().skip(1) {
        let part = component.as_os_str().to_string_lossy().to_string();
        let mut next = Vec::new();
        for base in found {
            if part.contains(['*', '?']) {
                let Ok(listing) = std::fs::read_dir(&base) else { continue };
                let mut names: Vec<String> = listing
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
                    .filter(|n| !n.starts_with('.') && crate::glob::matches_wildcards(&part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            } else {
                next.push(base.join(&part));
            }
        }
        found = next;
    }
    found.into_iter().filter(|p| p.is_file()).collect()
}

/// `HostName`'s value with `%h` (the alias) and `%%` expanded.
pub fn expand_hostname(value: &str, alias: &str) -> String {
    expand(value, &[('h', alias)]).unwrap_or_else(|_| value.to_string())
}

/// Expands `%` tokens from `tokens` (plus `%%`); an unknown token is an error.
pub fn expand(value: &str, tokens: &[(char, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match tokens.iter().find(|(k, _)| *k == t) {
                Some((_, v)) => out.push_str(v),
                None => return Err(format!("unknown token %{t}")),
            },
            None => return Err("a lone % at the end".into()),
        }
    }
    Ok(out)
}

/// A file-name value (`IdentityFile`, `UserKnownHostsFile`, ...) with `~` and the `%` tokens
/// expanded: `%d` home, `%h` host name, `%n` alias, `%p` port, `%r` remote user, `%u` local
/// user, `%i` uid.
pub fn expand_path(
    setting: &Setting,
    tokens: &[(char, &str)],
    home: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    let value = match (setting.value.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => format!("{}/{rest}", home.display()),
        _ => setting.value.clone(),
    };
    let value = expand_env(&value).map_err(|m| error_at(&setting.at, m, "set it, or write the path out"))?;
    let expanded = expand(&value, tokens).map_err(|m| error_at(&setting.at, m, "use %% for a literal %"))?;
    Ok(PathBuf::from(expanded))
}

/// `${NAME}` replaced by the environment variable, before `%` tokens, as OpenSSH does for
/// paths; an unset one is an error (ssh stops too) rather than an empty piece of a path.
fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated ${{ in {value}"));
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable ${{{name}}} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One ProxyJump hop: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The user, when given.
    pub user: Option<String>,
    /// The host (an alias looked up in the configuration in turn).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

/// Parses a ProxyJump value into hops in dialling order; `none` is no hop.
pub fn parse_jumps(value: &str) -> Result<Vec<Hop>, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    value.split(',').map(parse_hop).collect()
}

fn parse_hop(spec: &str) -> Result<Hop, String> {
    let bad = || format!("ProxyJump hop \"{spec}\" is not [user@]host[:port]");
    let rest = spec.strip_prefix("ssh://").unwrap_or(spec);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return Err(bad()),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
        None => None,
    };
    Ok(Hop { user, host: host.to_string(), port })
}

#[cfg(test)]
mod tests;
