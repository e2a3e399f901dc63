//! `ferry plan`: what a deployment would run on each target, without touching any.

use super::{is_json, new_deployment_id, process_env};
use crate::error::Error;
use crate::inventory::{Batch, Inventory};
use crate::output::{self, OutputFormat, table};
use crate::plan::Plan;
use crate::planning::{PlanRequest, build_plan};
use crate::render::Renderer;
use crate::request::Plan as PlanArgs;
use crate::vars::MissingSecrets;

/// The tag planned when `--version` is not given.
const DEFAULT_VERSION: &str = "latest";

/// Runs `ferry plan`.
pub fn run(inventory: &Inventory, args: &PlanArgs, output: OutputFormat) -> Result<i32, Error> {
    let renderer = Renderer::new(inventory).map_err(Error::Render)?;
    let deployment = new_deployment_id();
    let asked = args.version.as_deref().unwrap_or(DEFAULT_VERSION);
    // Only `--version latest` asks the feed (which version is newest); any other tag is planned
    // offline, by tag.
    let (version, digest) = match (args.version.as_deref(), inventory.app(&args.selection.app)) {
        (Some(super::feed::LATEST), Ok(app)) => {
            super::runtime()?.block_on(super::feed::resolve(inventory, app, asked))?
        }
        _ => (asked.to_string(), None),
    };
    let hash_key = crate::planning::hash_key(&*super::store(inventory)?)?;
    let request = PlanRequest {
        app: &args.selection.app,
        environment: &args.selection.environment,
        version: &version,
        digest: digest.as_deref(),
        limits: &args.selection.limits,
        sets: &args.selection.sets,
        deployment: &deployment,
        env: &process_env,
        missing_secrets: MissingSecrets::Error,
        hash_key: &hash_key,
    };
    let plan = build_plan(inventory, &renderer, &request)?;
    if args.version.is_none() && !is_json(output) {
        eprintln!("note: no --version given; planned with tag \"{DEFAULT_VERSION}\"");
    }
    if args.diff {
        return super::diff::run(inventory, &renderer, &request, plan, args.connect_timeout, output);
    }
    match output {
        OutputFormat::Json => output::print_json(&plan)?,
        OutputFormat::Plain => output::print(&plain(&plan))?,
        OutputFormat::Human => output::print(&human(&plan))?,
    }
    Ok(0)
}

/// The plan as a header and a table (also shown by `deploy`'s confirmation prompt).
pub fn human(plan: &Plan) -> String {
    let batch = match plan.rollout.batch {
        Batch::Count(n) => format!("batches of {n}"),
        Batch::Percent(100) => "all at once".to_string(),
        Batch::Percent(p) => format!("batches of {p}%"),
    };
    let mut out = format!(
        "plan: {} {} → {}: {} targets, {batch}, max_failures {}\nimage: {}\ndeployment: {}\n",
        plan.app,
        plan.version,
        plan.environment,
        plan.targets.len(),
        plan.rollout.max_failures,
        plan.image,
        plan.deployment
    );
    if let Some(first) = plan.targets.first().filter(|t| !t.secrets.is_empty()) {
        out += &format!("secrets (env file, values hidden): {}\n", first.secrets.join(", "));
    }
    out += "\n";
    let rows: Vec<Vec<String>> = plan
        .targets
        .iter()
        .map(|t| vec![t.target.clone(), t.host.clone(), t.config_hash[..12].to_string(), t.display.clone()])
        .collect();
    out + &table(&["TARGET", "HOST", "CONFIG", "COMMAND"], &rows)
}

fn plain(plan: &Plan) -> String {
    plan.targets
        .iter()
        .map(|t| format!("{}\t{}\t{}\t{}\n", t.target, t.host, t.config_hash, t.display))
        .collect()
}
