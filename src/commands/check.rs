//! `ferry check`: the inventory is valid and every app renders in every environment.
//!
//! It builds the same plans a deploy would (all targets, a placeholder version) and so catches
//! what a deploy would trip on, before any target is touched: bad references, template errors,
//! missing secrets. Unused variables and `|safe` are warnings: legal, but usually a mistake.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{is_json, process_env};
use crate::diagnostic::Diagnostic;
use crate::error::{EXIT_INVALID, Error};
use crate::inventory::{Inventory, Vars};
use crate::output::{self, OutputFormat};
use crate::planning::{PlanRequest, build_plan};
use crate::render::Renderer;
use crate::request::Check;
use crate::vars::MissingSecrets;

/// Version and deployment id used for check renders (any string renders like a real tag).
const CHECK_VERSION: &str = "check";

/// The JSON result.
#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    r#type: &'static str,
    ok: bool,
    inventory: String,
    apps: usize,
    environments: usize,
    targets: usize,
    renders: usize,
    warnings: &'a [Diagnostic],
    /// Freeze windows in force now and starting within 7 days (absent without `[[freeze]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze: Option<crate::freeze::Outlook>,
}

/// Runs `ferry check`.
pub fn run(inventory: &Inventory, args: &Check, output: OutputFormat) -> Result<i32, Error> {
    let renderer = Renderer::new(inventory).map_err(Error::Render)?;
    let mut renders = 0;
    let mut errors: Vec<Error> = Vec::new();
    let mut seen = BTreeSet::new();
    // One warning per unavailable secret, naming every deployment it would break.
    let mut unavailable = BTreeMap::new();
    for app in &inventory.apps {
        for env in inventory.environments.iter().filter(|e| app.deploys_to(&e.name)) {
            let request = PlanRequest {
                app: &app.name,
                environment: &env.name,
                version: CHECK_VERSION,
                digest: None,
                limits: &[],
                sets: &[],
                deployment: CHECK_VERSION,
                env: &process_env,
                missing_secrets: MissingSecrets::Placeholder,
                // `check` shows and compares no config hash: it needs no key (and makes none).
                hash_key: b"",
            };
            match build_plan(inventory, &renderer, &request) {
                Ok(plan) => {
                    renders += plan.targets.len();
                    for problem in plan.problems {
                        let at = problem.location.as_ref().map(|l| (l.line, l.column));
                        let entry = unavailable
                            .entry((problem.message.clone(), at))
                            .or_insert_with(|| (problem, Vec::new()));
                        entry.1.push(format!("{} to {}", app.name, env.name));
                    }
                }
                // One template error usually repeats in every environment: report it once.
                Err(e) if seen.insert(e.to_string()) => errors.push(e),
                Err(_) => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(Error::Multiple(errors));
    }
    let mut warnings = warnings(inventory, &renderer);
    warnings.extend(unavailable.into_values().map(|(d, deploys)| {
        let message = format!("{} (deploying {} from here would fail)", d.message, deploys.join(", "));
        Diagnostic { message, ..d }
    }));
    let ok = warnings.is_empty() || !args.deny_warnings;
    for w in &warnings {
        eprint!("{}", w.render("warning"));
    }
    let path = inventory.source.path.display().to_string();
    let names: Vec<&str> = inventory.environments.iter().map(|e| e.name.as_str()).collect();
    let freeze = (!inventory.freezes.is_empty())
        .then(|| crate::freeze::Outlook::at(&inventory.freezes, &names, jiff::Timestamp::now()));
    if is_json(output) {
        output::print_json(&Report {
            schema: 1,
            r#type: "check",
            ok,
            inventory: path,
            apps: inventory.apps.len(),
            environments: inventory.environments.len(),
            targets: inventory.targets.len(),
            renders,
            warnings: &warnings,
            freeze,
        })?;
    } else {
        let verdict = if ok { "ok" } else { "failed (warnings denied)" };
        output::print(&format!(
            "{path}: {verdict}: {} × {}, {}, {}, {}\n",
            output::count(inventory.apps.len(), "app"),
            output::count(inventory.environments.len(), "environment"),
            output::count(inventory.targets.len(), "target"),
            output::count(renders, "render"),
            output::count(warnings.len(), "warning")
        ))?;
        for line in freeze.iter().flat_map(|f| &f.lines) {
            output::print(&format!("freeze: {line}\n"))?;
        }
        let commands = command_secrets(inventory);
        if commands > 0 {
            let which =
                if commands == 1 { "1 secret comes".to_string() } else { format!("{commands} secrets come") };
            eprintln!("note: {which} from a command, which check does not run (plan and deploy do)");
        }
    }
    Ok(if ok { 0 } else { EXIT_INVALID })
}

/// How many secret definitions of apps read a `command`: `check` leaves them unrun.
fn command_secrets(inventory: &Inventory) -> usize {
    inventory
        .apps
        .iter()
        .flat_map(|a| a.secrets.values().chain(a.environments.values().flat_map(|o| o.secrets.values())))
        .filter(|d| matches!(d.source, crate::inventory::SecretSource::Command { .. }))
        .count()
}

/// Unused variables, env values no template reads, and `|safe` uses.
fn warnings(inventory: &Inventory, renderer: &Renderer) -> Vec<Diagnostic> {
    let referenced: Vec<BTreeSet<String>> =
        inventory.apps.iter().map(|a| renderer.referenced_names(a).into_iter().collect()).collect();
    let mut out = Vec::new();
    let mut unused = |vars: &Vars, users: &mut dyn Iterator<Item = usize>, layer: &str| {
        let users: Vec<usize> = users.collect();
        for (name, def) in vars {
            if !users.iter().any(|&i| referenced[i].contains(name)) {
                out.push(
                    Diagnostic::new(format!(
                        "variable `{name}` ({layer}) is not used by any template that sees it"
                    ))
                    .at(&inventory.source, def.span.clone())
                    .help("remove it, or use it in a template"),
                );
            }
        }
    };
    let all = 0..inventory.apps.len();
    unused(&inventory.defaults.vars, &mut all.clone(), "defaults");
    for (i, app) in inventory.apps.iter().enumerate() {
        unused(&app.vars, &mut std::iter::once(i), &format!("app {}", app.name));
        for (env, overrides) in &app.environments {
            unused(&overrides.vars, &mut std::iter::once(i), &format!("app {} in {env}", app.name));
        }
    }
    for env in &inventory.environments {
        unused(&env.vars, &mut all.clone(), &format!("environment {}", env.name));
    }
    for target in &inventory.targets {
        let mut users = inventory.apps.iter().enumerate().filter_map(|(i, app)| {
            let runs_here =
                app.roles.as_ref().is_none_or(|roles| target.roles.iter().any(|r| roles.contains(r)));
            runs_here.then_some(i)
        });
        unused(&target.vars, &mut users, &format!("target {}", target.name));
    }
    for (i, app) in inventory.apps.iter().enumerate() {
        let has_env = !app.env.is_empty() || app.environments.values().any(|o| !o.env.is_empty());
        if has_env && !referenced[i].contains("container_env") {
            out.push(
                Diagnostic::new(format!("app {} sets env values, but its template never uses `container_env`", app.name))
                    .at(&inventory.source, app.template_span.clone())
                    .help("add {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %} to the template"),
            );
        }
        out.extend(renderer.safe_uses(app));
    }
    out
}
