//! `ferry plan --diff`: the plan compared with what runs, per target, without changing anything.
//!
//! Each target says `create` (no container of the app there), `unchanged` (same config hash,
//! running), `start` (same config, stopped) or `replace`, with the reasons: another image digest
//! or version, the `docker run` arguments that were removed or added (against the argv that the
//! audit log recorded for the running container's deployment), or, when the arguments and image
//! are the same, changed secret values (seen only through their keyed hashes).
//!
//! The digest comes from the app's feed (the registry); for an app without one, from the
//! targets' own image stores (what their last pull of the tag fetched).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{runtime, ssh_options, store};
use crate::apply::{Decision, Live};
use crate::deployments::Deployment;
use crate::docker::{self, Container};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::plan::{Plan, TargetPlan};
use crate::planning::{PlanRequest, build_plan};
use crate::render::Renderer;

/// What would happen to one target.
#[derive(Debug, Serialize)]
struct TargetDiff {
    target: String,
    /// `create`, `replace`, `start`, `unchanged`, `unknown` (unreachable).
    change: &'static str,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    app: &'a str,
    environment: &'a str,
    version: &'a str,
    digest: Option<&'a str>,
    targets: &'a [TargetDiff],
    /// The environment's freeze windows now and in the next 7 days (absent when none), as in
    /// `plan --output json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze: Option<&'a crate::freeze::Outlook>,
}

/// Runs `ferry plan --diff` for a plan built by tag; re-plans with the digest the targets know.
pub fn run(
    inventory: &Inventory,
    renderer: &Renderer,
    request: &PlanRequest<'_>,
    plan: Plan,
    connect_timeout: std::time::Duration,
    output: OutputFormat,
    freeze: Option<&crate::freeze::Outlook>,
) -> Result<i32, Error> {
    let ssh = ssh_options(inventory, connect_timeout)?;
    let targets: Vec<_> = plan.targets.iter().filter_map(|t| inventory.target(&t.target)).collect();
    let (app, env, image) = (plan.app.clone(), plan.environment.clone(), plan.image.clone());
    let observed = runtime()?.block_on(crate::host::on_each(inventory, &targets, &ssh, |connection| {
        let (app, env, image) = (app.clone(), env.clone(), image.clone());
        async move {
            let listed = docker::list(&connection, &app, &env).await.map_err(|e| e.to_string())?;
            let digest = docker::local_digest(&connection, &image).await.map_err(|e| e.to_string())?;
            // What the proxy routes there now (only a proxied plan's reasons use it).
            let route = crate::proxy::read_route(&connection, &app, &env).await.ok().flatten();
            Ok((listed, (digest, route)))
        }
    }));
    // The feed knows which bytes the tag names; without one, the targets' last pulls do.
    let from_feed = match inventory.app(&plan.app) {
        Ok(app) if app.feed.is_some() && plan.digest.is_none() => {
            runtime()?.block_on(super::feed::resolve(inventory, app, &plan.version))?.1
        }
        _ => plan.digest.clone(),
    };
    let digest = from_feed.or_else(|| {
        observed.iter().find_map(|(_, seen)| seen.as_ref().ok().and_then(|(_, (d, _))| d.clone()))
    });
    let plan = match &digest {
        Some(d) => build_plan(inventory, renderer, &PlanRequest { digest: Some(d), ..request.clone() })?,
        None => plan,
    };
    let history = store(inventory)?.deployments(&plan.app, &plan.environment)?;
    let diffs: Vec<TargetDiff> = plan
        .targets
        .iter()
        .zip(observed)
        .map(|(tp, (_, seen))| {
            let (containers, route) = match seen {
                Ok((c, (_, route))) => (Ok(c), route),
                Err(e) => (Err(e), None),
            };
            compare(&plan, tp, containers, route, &history)
        })
        .collect();
    match output {
        OutputFormat::Json => output::print_json(&Report {
            schema: 1,
            app: &plan.app,
            environment: &plan.environment,
            version: &plan.version,
            digest: plan.digest.as_deref(),
            targets: &diffs,
            freeze,
        })?,
        OutputFormat::Plain => output::print(
            &diffs
                .iter()
                .map(|d| format!("{}\t{}\t{}\n", d.target, d.change, d.reasons.join("; ")))
                .collect::<String>(),
        )?,
        OutputFormat::Human => {
            let image = plan
                .digest
                .as_ref()
                .map_or_else(|| plan.image.clone(), |d| format!("{} ({d})", plan.version));
            let rows: Vec<Vec<String>> = diffs
                .iter()
                .map(|d| vec![d.target.clone(), d.change.to_string(), d.reasons.join("; ")])
                .collect();
            let route = plan.targets.first().and_then(|t| t.route.as_ref());
            let route = route.map_or_else(String::new, |r| format!("proxy: {}\n", r.describe()));
            let head = format!(
                "plan --diff: {} {} → {}: {image}\n{route}\n",
                plan.app, plan.version, plan.environment
            );
            output::print(&(head + &table(&["TARGET", "CHANGE", "WHY"], &rows)))?;
        }
    }
    Ok(0)
}

fn compare(
    plan: &Plan,
    tp: &TargetPlan,
    seen: Result<Vec<Container>, String>,
    route: Option<Result<crate::proxy::Route, String>>,
    history: &[Deployment],
) -> TargetDiff {
    let diff = |change, reasons| TargetDiff { target: tp.target.clone(), change, reasons };
    let containers = match seen {
        Ok(c) => c,
        Err(e) => return diff("unknown", vec![format!("unreachable: {e}")]),
    };
    let current = containers.iter().find(|c| c.details.name == tp.container);
    let decision = crate::apply::decide(current.map(Live::from), tp, false);
    let Some(current) = current else {
        return diff(decision.label(), vec![format!("no container {} there", tp.container)]);
    };
    match decision {
        Decision::Unchanged => return diff(decision.label(), Vec::new()),
        Decision::Start => {
            return diff(decision.label(), vec![format!("the container is {}", current.status)]);
        }
        Decision::Create | Decision::Replace => {}
    }
    let mut reasons = Vec::new();
    if current.label("ferry.config-hash").is_none() {
        reasons.push("the container was not started by ferry (no ferry.config-hash label)".to_string());
    }
    match (current.details.digest.as_deref(), plan.digest.as_deref()) {
        (Some(now), Some(planned)) if now != planned => reasons.push(format!("image: {now} → {planned}")),
        (_, None) => {
            reasons.push("image: the tag's digest is not known on the targets yet (not pulled)".into())
        }
        _ => {}
    }
    if let Some(version) = current.label("ferry.version").filter(|v| *v != plan.version) {
        reasons.push(format!("version: {version} → {}", plan.version));
    }
    // The route is in the config hash but not in the argv: say what of it changed.
    let route_known = match (&tp.route, route) {
        (Some(planned), Some(Ok(now))) => {
            reasons.extend(route_changes(&now, planned));
            true
        }
        (Some(planned), None) => {
            reasons.push(format!("proxy route: none → {}", planned.describe()));
            true
        }
        _ => false,
    };
    // Networks and volumes are in the argv (and the hash); said in their own words here.
    let (networks, volumes) =
        crate::netvol::from_labels(current.label("ferry.networks"), current.label("ferry.volumes"));
    if networks != tp.networks {
        let (now, planned) =
            (crate::netvol::describe_networks(&networks), crate::netvol::describe_networks(&tp.networks));
        reasons.push(format!("networks: {now} → {planned}"));
    }
    if volumes != tp.volumes {
        let (now, planned) =
            (crate::netvol::describe_volumes(&volumes), crate::netvol::describe_volumes(&tp.volumes));
        reasons.push(format!("volumes: {now} → {planned}"));
    }
    let block_units: Vec<String> = units(&crate::netvol::block(&networks, &volumes))
        .into_iter()
        .chain(units(&crate::netvol::block(&tp.networks, &tp.volumes)))
        .collect();
    let recorded = current
        .label("ferry.deployment")
        .and_then(|id| history.iter().rev().find(|d| d.id == id))
        .and_then(|d| d.recorded.targets.get(&tp.target));
    match recorded {
        Some(r) => {
            // The image has its own reason above.
            let mut skip = vec![current.details.image.as_str(), plan.image.as_str()];
            skip.extend(block_units.iter().map(String::as_str));
            let changes = argv_changes(&r.argv, &tp.stable_argv, &skip);
            if changes.is_empty() && reasons.is_empty() {
                reasons.push(match &tp.route {
                    // The route's port, health and tls are in the hash, not in the argv.
                    Some(_) if !route_known => {
                        "the proxy route (port, health, tls) or secret values changed".into()
                    }
                    _ => "secret values changed (their keyed hashes differ)".into(),
                });
            }
            reasons.extend(changes);
        }
        None if reasons.is_empty() => {
            reasons
                .push("config hash differs; this machine's audit log has no record of its arguments".into());
        }
        None => {}
    }
    diff(Decision::Replace.label(), reasons)
}

/// What differs between the route the target's table records and the planned one.
fn route_changes(now: &crate::proxy::Route, planned: &crate::inventory::Route) -> Vec<String> {
    let tls = |t: Option<&str>| t.unwrap_or("none").to_string();
    let path = |p: Option<&str>| p.unwrap_or("(all)").to_string();
    let pairs = [
        ("host", now.host.clone(), planned.host.clone()),
        ("path", path(now.path.as_deref()), path(planned.path.as_deref())),
        ("port", now.port.to_string(), planned.port.to_string()),
        ("health", now.health.clone(), planned.health.clone()),
        ("tls", tls(now.tls.map(crate::proxy::Tls::as_str)), tls(planned.tls.map(|t| t.word()))),
    ];
    pairs
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(what, a, b)| format!("proxy route {what}: {a} → {b}"))
        .collect()
}

/// The `docker run` arguments removed and added, as units: an option with its value
/// (`-e K=V`, `-p 80:80`) or a lone word.
fn argv_changes(old: &[String], new: &[String], skip: &[&str]) -> Vec<String> {
    let keep = |units: Vec<String>| -> Vec<String> {
        units.into_iter().filter(|u| !skip.contains(&u.as_str())).collect()
    };
    let (old, new) = (keep(units(old)), keep(units(new)));
    fn count(units: &[String]) -> BTreeMap<&str, usize> {
        let mut map: BTreeMap<&str, usize> = BTreeMap::new();
        for u in units {
            *map.entry(u.as_str()).or_default() += 1;
        }
        map
    }
    let (old_count, new_count) = (count(&old), count(&new));
    let missing = |from: &[String], other: &BTreeMap<&str, usize>| -> Vec<String> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        from.iter()
            .filter(|u| {
                let n = seen.entry(u.as_str()).or_default();
                *n += 1;
                *n > other.get(u.as_str()).copied().unwrap_or(0)
            })
            .cloned()
            .collect()
    };
    let removed = missing(&old, &new_count);
    let added = missing(&new, &old_count);
    let mut out = Vec::new();
    if !removed.is_empty() {
        out.push(format!("removed: {}", removed.join(" ")));
    }
    if !added.is_empty() {
        out.push(format!("added: {}", added.join(" ")));
    }
    out
}

fn units(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = argv.iter().peekable();
    while let Some(word) = words.next() {
        let quoted = crate::shell::quote(word).unwrap_or_else(|_| word.clone());
        let takes_value = word.starts_with('-') && !word.contains('=');
        match words.peek() {
            Some(value) if takes_value && !value.starts_with('-') => {
                let value = crate::shell::quote(value).unwrap_or_else(|_| (*value).clone());
                out.push(format!("{quoted} {value}"));
                words.next();
            }
            _ => out.push(quoted),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn names_removed_and_added_options() {
        let old = argv("docker run -p 80:80 -e LOG=info -e A=1 img");
        let new = argv("docker run -p 80:80 -e LOG=debug img");
        assert_eq!(argv_changes(&old, &new, &[]), vec!["removed: -e LOG=info -e A=1", "added: -e LOG=debug"]);
        assert!(argv_changes(&old, &old, &[]).is_empty());
        let moved = argv("docker run other");
        assert_eq!(
            argv_changes(&old, &moved, &["img", "other"]),
            vec!["removed: -p 80:80 -e LOG=info -e A=1"]
        );
    }
}
