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

use super::feed::LATEST;

/// Runs `ferry plan`.
///
/// No `--version` means `latest`, as `--version latest` does: the newest version the app's feed
/// has (the feed must answer), or, for an app without a feed, the tag named `latest` (offline;
/// `deploy` needs a tag then). A named tag is looked up in the app's feed when it has one: a tag
/// the registry does not have is exit 2, an unreachable feed only a note (the plan is offline
/// otherwise). Input problems are found first, offline, so a broken inventory is exit 2 whether
/// or not the feed answers.
pub fn run(inventory: &Inventory, args: &PlanArgs, output: OutputFormat) -> Result<i32, Error> {
    // Before the store or the feed is asked: a plan that cannot be deployed is bad input.
    let app = inventory.app(&args.selection.app)?;
    inventory.environment(&args.selection.environment)?;
    app.check_deploys_to(&args.selection.environment)?;
    let renderer = Renderer::new(inventory).map_err(Error::Render)?;
    let deployment = new_deployment_id();
    let asked = args.version.as_deref().unwrap_or(LATEST);
    let hash_key = crate::planning::hash_key(&*super::store(inventory)?)?;
    let request = |version: &'_ str, digest: Option<&'_ str>| -> Result<Plan, Error> {
        let request = PlanRequest {
            app: &args.selection.app,
            environment: &args.selection.environment,
            version,
            digest,
            limits: &args.selection.limits,
            sets: &args.selection.sets,
            deployment: &deployment,
            env: &process_env,
            missing_secrets: MissingSecrets::Error,
            hash_key: &hash_key,
        };
        build_plan(inventory, &renderer, &request)
    };
    // Offline first: every input problem is reported before any feed is asked.
    let mut plan = request(asked, None)?;
    // Where each planned target is really reached, when ssh_config decides part of it.
    let mut ssh: std::collections::BTreeMap<String, crate::host::resolve::Resolution> = Default::default();
    for t in &plan.targets {
        if let Some(target) =
            inventory.target(&t.target).filter(|t| t.transport == crate::inventory::Transport::Ssh)
        {
            let resolution = crate::host::resolve::resolve(inventory, target)?;
            super::warn_ssh_config(&resolution.reported);
            if resolution.uses_config {
                ssh.insert(t.target.clone(), resolution);
            }
        }
    }
    let app = inventory.app(&args.selection.app)?;
    let mut check = None;
    let note = match (asked, app.feed.as_deref()) {
        (LATEST, Some(feed)) => {
            let (version, digest) =
                super::runtime()?.block_on(super::feed::resolve(inventory, app, LATEST))?;
            plan = request(&version, digest.as_deref())?;
            Some(format!("latest is {version} (the newest version in feed {feed})"))
        }
        (LATEST, None) => Some(format!(
            "app {} has no feed: planned the tag \"latest\" (deploy needs --version TAG)",
            app.name
        )),
        (tag, Some(_)) => {
            check = super::runtime()?.block_on(super::feed::check_tag(inventory, app, tag))?;
            if let Some(digest) = check.as_ref().and_then(|c| c.digest.as_deref()) {
                plan = request(tag, Some(digest))?;
            }
            check.as_ref().map(super::feed::FeedCheck::describe)
        }
        (_, None) => None,
    };
    if let Some(note) = note.filter(|_| !is_json(output)) {
        eprintln!("note: {note}");
    }
    // When a deploy of this plan would be refused: now, or within the next days.
    let environment = [args.selection.environment.as_str()];
    let freeze = crate::freeze::Outlook::at(&inventory.freezes, &environment, jiff::Timestamp::now());
    if !is_json(output) {
        for (i, line) in freeze.lines.iter().enumerate() {
            let now = if i < freeze.active.len() {
                " (a deploy now is refused without --override-freeze)"
            } else {
                ""
            };
            eprintln!("freeze: {line}{now}");
        }
    }
    let freeze = Some(&freeze).filter(|f| !f.active.is_empty() || !f.upcoming.is_empty());
    if args.diff {
        let (version, digest) = (plan.version.clone(), plan.digest.clone());
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
        return super::diff::run(inventory, &renderer, &request, plan, args.connect_timeout, output, freeze);
    }
    match output {
        OutputFormat::Json => {
            /// The plan, and what the feed said about its tag.
            #[derive(serde::Serialize)]
            struct WithFeed<'a> {
                /// The plan's own fields, at the top level as before.
                #[serde(flatten)]
                plan: &'a Plan,
                /// The feed's word on a named tag (absent without a feed, and for `latest`).
                #[serde(skip_serializing_if = "Option::is_none")]
                feed: Option<&'a super::feed::FeedCheck>,
                /// The freeze windows of the environment now and in the next 7 days (absent
                /// when none).
                #[serde(skip_serializing_if = "Option::is_none")]
                freeze: Option<&'a crate::freeze::Outlook>,
                /// Per target whose SSH settings come partly from ssh_config: each setting and
                /// where it came from (absent when ssh_config decides nothing).
                #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
                ssh: std::collections::BTreeMap<&'a str, &'a [crate::host::resolve::Provenance]>,
            }
            let ssh = ssh.iter().map(|(k, r)| (k.as_str(), r.provenance.as_slice())).collect();
            output::print_json(&WithFeed { plan: &plan, feed: check.as_ref(), freeze, ssh })?;
        }
        OutputFormat::Plain => output::print(&plain(&plan))?,
        OutputFormat::Human => {
            let mut text = human(&plan);
            for (name, r) in &ssh {
                text +=
                    &format!("ssh: {name} is {} (ssh_config)\n", crate::host::resolve::describe(&r.endpoint));
            }
            output::print(&text)?
        }
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
        "plan: {} {} → {}: {}, {batch}, max_failures {}\nimage: {}\ndeployment: {}\n",
        plan.app,
        plan.version,
        plan.environment,
        output::count(plan.targets.len(), "target"),
        plan.rollout.max_failures,
        plan.image,
        plan.deployment
    );
    if let Some(first) = plan.targets.first().filter(|t| !t.secrets.is_empty()) {
        out += &format!("secrets (env file, values hidden): {}\n", first.secrets.join(", "));
    }
    if let Some(route) = plan.targets.first().and_then(|t| t.route.as_ref()) {
        out += &format!("proxy: {}\n", route.describe());
    }
    if let Some(first) = plan.targets.first() {
        if !first.networks.is_empty() {
            out += &format!("networks (created where missing): {}\n", first.networks.join(", "));
        }
        if !first.volumes.is_empty() {
            let volumes = crate::netvol::describe_volumes(&first.volumes);
            out += &format!("volumes (created where missing, never removed): {volumes}\n");
        }
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
