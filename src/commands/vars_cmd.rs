//! `ferry vars`: the resolved variables of an app in an environment, and where each came from.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::request::Vars;
use crate::secret::{MASK, mask};
use crate::vars::{self, Origin, Variables};

#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    inventory: String,
    app: &'a str,
    environment: &'a str,
    target: Option<&'a str>,
    vars: &'a Variables,
    env: BTreeMap<&'a str, &'a str>,
    secrets: BTreeMap<&'a str, SecretReport>,
    /// With a target: each SSH setting, its value and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    ssh: Option<&'a [crate::host::resolve::Provenance]>,
}

#[derive(Serialize)]
struct SecretReport {
    value: &'static str,
    source: String,
    /// Readable here, and not an empty value the deploy would refuse.
    available: bool,
    /// Readable, but empty (without `allow_empty`): a deploy refuses it.
    #[serde(skip)]
    empty: bool,
}

/// The target named on the command line, or an error suggesting one of the environment's.
fn find_target<'a>(
    inventory: &'a Inventory,
    env: &crate::inventory::Environment,
    name: &str,
) -> Result<&'a crate::inventory::Target, Diagnostic> {
    inventory.target(name).ok_or_else(|| {
        Diagnostic::new(format!("unknown target \"{name}\""))
            .maybe_help(did_you_mean(name, env.targets.iter().map(|&i| inventory.targets[i].name.as_str())))
    })
}

/// Runs `ferry vars`.
pub fn run(inventory: &Inventory, args: &Vars, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?;
    let env = inventory.environment(&args.environment)?;
    let target = args.target.as_deref().map(|name| find_target(inventory, env, name)).transpose()?;
    let mut resolved = vars::resolve(inventory, app, env, target, &args.sets);
    let mut env_values: BTreeMap<&str, &str> =
        app.env.iter().map(|(k, d)| (k.as_str(), d.text.as_str())).collect();
    if let Some(o) = app.environments.get(&env.name) {
        env_values.extend(o.env.iter().map(|(k, d)| (k.as_str(), d.text.as_str())));
    }
    let mut values = Vec::new();
    let secrets: BTreeMap<&str, SecretReport> = vars::secret_defs(app, env)
        .into_iter()
        .map(|(name, def)| {
            let value = vars::read_source(inventory, name, def, &super::process_env).ok();
            let empty = value.as_ref().is_some_and(|v| v.expose().is_empty() && !def.allow_empty);
            let available = value.is_some() && !empty;
            values.extend(value);
            (name, SecretReport { value: MASK, source: def.source.to_string(), available, empty })
        })
        .collect();
    // A variable that happens to hold a secret's value is shown masked, as in plans.
    for r in resolved.values_mut() {
        if let toml::Value::String(text) = &mut r.value {
            *text = mask(text, &values);
        }
    }
    let target_name = target.map(|t| t.name.as_str());
    let ssh = match target {
        Some(t) if t.transport == crate::inventory::Transport::Ssh => {
            let resolution = crate::host::resolve::resolve(inventory, t)?;
            super::warn_ssh_config(&resolution.reported);
            Some(resolution.provenance)
        }
        _ => None,
    };
    if output == OutputFormat::Json {
        output::print_json(&Report {
            schema: 1,
            inventory: inventory.source.path.display().to_string(),
            app: &app.name,
            environment: &env.name,
            target: target_name,
            vars: &resolved,
            env: env_values,
            secrets,
            ssh: ssh.as_deref(),
        })?;
        return Ok(0);
    }
    let file = &inventory.source.path;
    let from = |o: &Origin| o.describe(file, &app.name, &env.name, target_name);
    let rows: Vec<Vec<String>> = resolved
        .iter()
        .map(|(name, r)| {
            let mut origin = from(&r.origin);
            if let Some(last) = r.overrides.last() {
                origin += &format!(", overrides {}", from(last));
            }
            vec![name.clone(), r.value.to_string(), origin]
        })
        .collect();
    let where_ = target_name.map_or(String::new(), |t| format!(" on {t}"));
    let mut out = format!("{} in {}{where_}\n\n", app.name, env.name);
    out += &table(&["VARIABLE", "VALUE", "FROM"], &rows);
    if !env_values.is_empty() {
        let rows: Vec<Vec<String>> =
            env_values.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect();
        out += "\n";
        out += &table(&["CONTAINER ENV", "TEMPLATE"], &rows);
    }
    if !secrets.is_empty() {
        let rows: Vec<Vec<String>> = secrets
            .iter()
            .map(|(k, s)| {
                let status = match (s.available, s.empty) {
                    (true, _) => "available",
                    (false, true) => "EMPTY",
                    (false, false) => "MISSING",
                };
                vec![k.to_string(), s.value.to_string(), status.to_string(), s.source.clone()]
            })
            .collect();
        out += "\n";
        out += &table(&["SECRET", "VALUE", "STATUS", "SOURCE"], &rows);
    }
    if let Some(ssh) = &ssh {
        let rows: Vec<Vec<String>> =
            ssh.iter().map(|p| vec![p.setting.to_string(), p.value.clone(), p.from.clone()]).collect();
        out += "\n";
        out += &table(&["SSH", "VALUE", "FROM"], &rows);
    }
    if target.is_none() && env.targets.iter().any(|&i| !inventory.targets[i].vars.is_empty()) {
        out += "\nnote: some targets set their own variables; add --target NAME to see them\n";
    }
    output::print(&out)?;
    Ok(0)
}
