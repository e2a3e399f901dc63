//! `ferry init [DIR]`: a commented starter inventory and template, for a first run.
//!
//! A new user should get from nothing to a passing `ferry check` in one command, with every
//! key they will touch first explained where it stands. The starter must be safe to play
//! with: its one target is `transport = "local"` (this machine, through `/bin/sh`) and its
//! feed a registry on loopback, and its example SSH host is a documentation address
//! (RFC 5737) in a comment, so no command run on it can reach another machine by accident.
//! It never overwrites anything: if either file exists, nothing is written (exit 2); if the
//! second file cannot be written, the first is taken back.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, display_path};
use crate::error::Error;
use crate::output::{self, OutputFormat};
use crate::request::Init;

/// The starter inventory (`ferry.toml`: what ferry reads when no `-i` is given).
pub const INVENTORY: &str = r#"# ferry's starter inventory, written by `ferry init`. Edit it, then:
#   ferry check                        validate it, render every app in every environment
#   ferry ls                           the apps, their environments and targets
#   ferry plan web --env dev           what a deployment would run (no SSH)
# Every key is described in ferry's README ("Inventory reference").
#
# As written, nothing leaves this machine: the one target is `transport = "local"` (commands
# run here through /bin/sh, not over SSH) and the feed is a registry on loopback. Put your
# hosts under [targets.*] (then `ferry trust --env ENV` records their host keys) and your
# registry under [feeds.*].

[defaults]
# user = "deploy"                        # the SSH user for every target (default: yours)
# identity = "~/.ssh/id_ed25519"         # the SSH key (default: the agent, then ~/.ssh/id_*)
# known_hosts = "known_hosts"            # host keys, relative to this file, checked strictly

[lifecycle]
phases = ["dev", "prod"]                 # a release must succeed in dev before it goes to prod

[environments.dev]
targets = ["here"]                       # target names, or globs: ["dev-*"]

[environments.prod]
targets = ["here"]
rollout = { batch = 1, max_failures = 0 }   # one target at a time; stop at the first failure

[targets.here]
transport = "local"                      # this machine; an SSH target has `host = "…"` instead
roles = ["web"]

# [targets.prod-1]
# host = "192.0.2.10"                    # a documentation address (RFC 5737): put yours here
# roles = ["web"]

[feeds.local]
url = "http://127.0.0.1:5000"            # a registry on this machine; yours: "https://registry.example.com"
# username = { env = "REGISTRY_USER" }   # credentials come from the environment or a file,
# password = { env = "REGISTRY_PASSWORD" }   # never from this file

[apps.web]
feed = "local"
image = "acme/web"                       # the repository your CI pushes, without a tag
template = "web.j2"                      # templates/web.j2
roles = ["web"]                          # runs on the targets with one of these roles
vars = { port = 8080 }                   # variables for the template (`ferry vars web --env dev`)
env = { LOG_LEVEL = "info" }             # the container's environment
# secrets = { DATABASE_URL = { env = "WEB_DATABASE_URL" } }   # read from the runner, never written here
health = { cmd = "wget -qO- http://127.0.0.1:{{ port }}/", timeout = "60s" }

[apps.web.environments.prod]
vars = { port = 8081 }                   # dev and prod share the one target here: a port each
"#;

/// The starter template (`templates/web.j2`).
pub const TEMPLATE: &str = r#"{#- The docker run of app "web", written by `ferry init`. ferry shell-quotes every
    {{ value }}: write no quotes around it. ferry adds the container's name, its labels and
    --detach itself. -#}
docker run --restart unless-stopped
  -p {{ port }}:8080
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }}
"#;

/// Runs `ferry init`.
pub fn run(args: &Init, output: OutputFormat) -> Result<i32, Error> {
    let dir = args.dir.clone().unwrap_or_default();
    let files: [(PathBuf, &str); 2] =
        [(dir.join("ferry.toml"), INVENTORY), (dir.join("templates").join("web.j2"), TEMPLATE)];
    // All or nothing: every file is checked before any is written.
    if let Some((path, _)) = files.iter().find(|(path, _)| path.symlink_metadata().is_ok()) {
        return Err(Error::Input(
            Diagnostic::new(format!(
                "{} already exists; ferry init never overwrites a file: nothing was written",
                shown(path).display()
            ))
            .help("move it away, or write the starter into another folder: `ferry init DIR`"),
        ));
    }
    // A folder on the way that is a file would fail the second write after the first was done.
    if let Some(parent) =
        files.iter().filter_map(|(path, _)| path.parent()).find(|p| p.exists() && !p.is_dir())
    {
        return Err(Error::Input(
            Diagnostic::new(format!(
                "{} is not a folder; ferry init writes its template into it: nothing was written",
                shown(parent).display()
            ))
            .help("move it away, or write the starter into another folder: `ferry init DIR`"),
        ));
    }
    let mut written = Vec::new();
    for (path, text) in &files {
        if let Err(e) = write_new(path, text) {
            // All or nothing: what this run wrote goes again (it is ours: created new).
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(Error::Failed(Diagnostic::new(format!(
                "cannot write {}: {e}; nothing was written",
                shown(path).display()
            ))));
        }
        written.push(path.clone());
    }
    let written: Vec<String> = files.iter().map(|(p, _)| shown(p).display().to_string()).collect();
    match output {
        OutputFormat::Json => {
            output::print_json(&serde_json::json!({ "schema": 1, "type": "init", "files": written }))?;
        }
        OutputFormat::Plain => output::print(&written.iter().map(|w| format!("{w}\n")).collect::<String>())?,
        OutputFormat::Human => {
            let next = match &args.dir {
                Some(d) => format!("cd {} && ferry check", d.display()),
                None => "ferry check".to_string(),
            };
            output::print(&format!(
                "wrote {}\nnext: `{next}`, then `ferry plan web --env dev --version 1.0`\n",
                written.join(" and ")
            ))?;
        }
    }
    Ok(0)
}

/// `path` as messages show it (relative paths as given).
fn shown(path: &Path) -> PathBuf {
    display_path(path)
}

/// Writes `text` to a file that must not exist yet (creating its folder).
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
