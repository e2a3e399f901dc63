//! `ferry status`: what runs on each target, and drift against the record.
//!
//! Per target: the app's container in this environment (by its `ferry.*` labels), its version,
//! digest, config hash, health and uptime. Drift is judged against the last successful
//! deployment in the audit log: a missing or stopped container, another config hash, an
//! unhealthy check, extra containers of the app, an unreachable target. Exit 1 on any drift, so
//! a cron job or a monitoring check can alert on it. It changes nothing.

use serde::Serialize;

use super::{runtime, ssh_options, store};
use crate::deployments::Deployment;
use crate::docker::{self, Container, ContainerDetails};
use crate::error::Error;
use crate::inventory::{self, Inventory};
use crate::output::{self, OutputFormat, table};
use crate::replace::{self, Leftover};
use crate::report;
use crate::request::Status;
use crate::select;

/// One target's state.
#[derive(Debug, Serialize)]
struct TargetStatus {
    target: String,
    container: Option<ContainerDetails>,
    state: Option<String>,
    version: Option<String>,
    digest: Option<String>,
    config_hash: Option<String>,
    health: Option<String>,
    uptime_s: Option<i64>,
    drift: Vec<String>,
    /// Replace steps that ended on the target with nobody to read their outcome (the runner
    /// died or its link dropped): what they did.
    unread_replace_steps: Vec<Leftover>,
}

/// `--output json`.
#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    app: &'a str,
    environment: &'a str,
    deployment: Option<RecordRef<'a>>,
    drift: bool,
    /// Deployed tags that now point at other bytes in the feed.
    warnings: &'a [String],
    targets: &'a [TargetStatus],
}

#[derive(Serialize)]
struct RecordRef<'a> {
    id: &'a str,
    version: &'a str,
    digest: Option<&'a str>,
    time: &'a str,
}

/// Runs `ferry status`.
pub fn run(inventory: &Inventory, args: &Status, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?;
    let env = inventory.environment(&args.environment)?;
    let targets = select::select(inventory, app, env, &args.limits)?;
    let deployments = store(inventory)?.deployments(&app.name, &env.name)?;
    let last = deployments.iter().rev().find(|d| d.recorded.succeeded);
    // A later deployment that could not reach some targets: they still run the older release.
    let newest = deployments.last().filter(|d| !d.recorded.succeeded);
    let ssh = ssh_options(inventory, args.connect_timeout)?;
    let observed = runtime()?.block_on(observe(inventory, &targets, &ssh, &app.name, &env.name));
    let container = inventory::container_name(app, &env.name);
    let mut statuses: Vec<TargetStatus> = observed
        .into_iter()
        .map(|(name, seen)| match seen {
            Ok(Ok((containers, leftovers))) => {
                let mut status = judge(&name, Ok(containers), last, &container);
                status.unread_replace_steps = leftovers;
                status
            }
            Ok(Err(e)) => judge(&name, Err(Unseen::Unreadable(e)), last, &container),
            Err(e) => judge(&name, Err(Unseen::Unreachable(e)), last, &container),
        })
        .collect();
    if let Some(newest) = newest {
        for s in &mut statuses {
            let missed = newest.recorded.targets.get(&s.target).map(|t| t.status);
            if let Some(status @ (report::Status::Unreachable | report::Status::Refused)) = missed {
                s.drift.push(format!(
                    "not reached by deployment {} ({}): {}",
                    newest.id,
                    newest.version,
                    status.label()
                ));
            }
        }
    }
    let warnings = runtime()?.block_on(moved_tags(inventory, app, &statuses));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let drift = statuses.iter().any(|s| !s.drift.is_empty());
    match output {
        OutputFormat::Json => {
            let deployment = last.map(|d| RecordRef {
                id: &d.id,
                version: &d.version,
                digest: d.digest.as_deref(),
                time: &d.time,
            });
            let report = Report {
                schema: 1,
                app: &app.name,
                environment: &env.name,
                deployment,
                drift,
                warnings: &warnings,
                targets: &statuses,
            };
            output::print_json(&report)?;
        }
        OutputFormat::Plain => output::print(&plain(&statuses))?,
        OutputFormat::Human => output::print(&human(&app.name, &env.name, last, &statuses))?,
    }
    Ok(i32::from(drift))
}

/// Warnings for deployed tags that the feed now resolves to other bytes (the tag moved since:
/// a redeploy of "the same version" would change what runs). Not drift: what runs is what was
/// deployed.
async fn moved_tags(inventory: &Inventory, app: &inventory::App, statuses: &[TargetStatus]) -> Vec<String> {
    let client = match super::feed::registry_for(inventory, app) {
        Ok(Some(client)) => client,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![format!("cannot ask the feed whether tags moved: {e}")],
    };
    let (registry, repository) = client;
    let mut asked: std::collections::BTreeMap<String, Result<String, String>> = Default::default();
    let mut out = Vec::new();
    for s in statuses {
        let (Some(version), Some(digest)) = (&s.version, &s.digest) else { continue };
        if !asked.contains_key(version) {
            let now = registry.digest(&repository, version).await.map_err(|e| e.to_string());
            asked.insert(version.clone(), now);
        }
        match &asked[version] {
            Ok(now) if now != digest => out.push(format!(
                "{}: tag {version} now points at {now} in the feed; this target runs {digest}",
                s.target
            )),
            Err(e) => out.push(format!("{}: cannot resolve tag {version} in the feed: {e}", s.target)),
            Ok(_) => {}
        }
    }
    out.dedup();
    out
}

/// What a target's containers are, as far as they could be read.
type Observed = Result<(Vec<Container>, Vec<Leftover>), String>;

/// Lists the app's containers on every target at once. The outer error is a connection that
/// could not be opened (the target is unreachable); the inner one, a connected target that
/// could not be read.
async fn observe(
    inventory: &Inventory,
    targets: &[&inventory::Target],
    ssh: &crate::ssh::Options,
    app: &str,
    environment: &str,
) -> Vec<(String, Result<Observed, String>)> {
    crate::host::on_each(inventory, targets, ssh, |connection| {
        let (app, environment) = (app.to_string(), environment.to_string());
        async move {
            let read = async {
                let containers =
                    docker::list(&connection, &app, &environment).await.map_err(|e| e.to_string())?;
                let leftovers =
                    replace::leftovers(&connection, &app, &environment).await.map_err(|e| e.to_string())?;
                Ok((containers, leftovers))
            };
            Ok(read.await)
        }
    })
    .await
}

/// Why a target's containers are not known.
enum Unseen {
    /// No connection within the connect timeout (or the host key was refused).
    Unreachable(String),
    /// Connected, but listing them failed.
    Unreadable(String),
}

fn judge(
    target: &str,
    seen: Result<Vec<Container>, Unseen>,
    last: Option<&Deployment>,
    default_container: &str,
) -> TargetStatus {
    let mut status = TargetStatus {
        target: target.to_string(),
        container: None,
        state: None,
        version: None,
        digest: None,
        config_hash: None,
        health: None,
        uptime_s: None,
        drift: Vec::new(),
        unread_replace_steps: Vec::new(),
    };
    let containers = match seen {
        Ok(c) => c,
        Err(Unseen::Unreachable(e)) => {
            // Said in the state and health columns too, so no reader takes it for "nothing runs".
            status.state = Some("unreachable".into());
            status.health = Some("unreachable".into());
            status.drift.push(format!("unreachable: {e}"));
            return status;
        }
        Err(Unseen::Unreadable(e)) => {
            status.drift.push(format!("cannot read its containers: {e}"));
            return status;
        }
    };
    let recorded = last.and_then(|d| d.recorded.targets.get(target));
    let name = recorded.map_or(default_container, |r| r.container.as_str());
    let extras: Vec<&str> =
        containers.iter().filter(|c| c.details.name != name).map(|c| c.details.name.as_str()).collect();
    if !extras.is_empty() {
        status.drift.push(format!("extra containers of the app: {}", extras.join(", ")));
    }
    let Some(current) = containers.iter().find(|c| c.details.name == name) else {
        if let (Some(d), Some(_)) = (last, recorded) {
            status.drift.push(format!("missing container {name} (deployment {} ran it)", d.id));
        }
        return status;
    };
    status.container = Some(current.details.clone());
    status.state = Some(current.status.clone());
    status.version = current.label("ferry.version").map(str::to_string);
    status.digest = current.details.digest.clone();
    status.config_hash = current.label("ferry.config-hash").map(str::to_string);
    status.health = Some(current.health.clone().unwrap_or_else(|| current.status.clone()));
    status.uptime_s = current.running().then(|| uptime_seconds(&current.started_at)).flatten();
    if !current.running() {
        status.drift.push(format!("container {name} is {}", current.status));
    }
    if current.health.as_deref() == Some("unhealthy") {
        status.drift.push("unhealthy (HEALTHCHECK)".into());
    }
    match (last, recorded) {
        (Some(d), Some(r)) if status.config_hash.as_deref() != Some(r.config_hash.as_str()) => {
            status.drift.push(format!("config differs from deployment {} ({})", d.id, d.version));
        }
        (Some(d), None) => status.drift.push(format!("not part of deployment {}", d.id)),
        _ => {}
    }
    status
}

/// Seconds since Docker's `StartedAt` (nanosecond RFC 3339, read to the millisecond).
fn uptime_seconds(started_at: &str) -> Option<i64> {
    let ms_text = match started_at.split_once('.') {
        Some((whole, frac)) => {
            format!("{whole}.{:0<3}Z", frac.trim_end_matches('Z').chars().take(3).collect::<String>())
        }
        None => started_at.to_string(),
    };
    let started = crate::time::parse_ms(&ms_text)?;
    Some((crate::time::now_ms() - started).max(0) / 1000)
}

fn short(text: Option<&str>, n: usize) -> String {
    text.map_or_else(|| "-".to_string(), |t| t.trim_start_matches("sha256:").chars().take(n).collect())
}

fn human(app: &str, env: &str, last: Option<&Deployment>, statuses: &[TargetStatus]) -> String {
    let mut out = match last {
        Some(d) => format!(
            "{app} in {env}: last successful deployment {} ({} {}, {})\n\n",
            d.id,
            d.version,
            d.digest.as_deref().unwrap_or("no digest"),
            d.time
        ),
        None => {
            format!("{app} in {env}: no successful deployment on record here; nothing to compare against\n\n")
        }
    };
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            vec![
                s.target.clone(),
                short(s.container.as_ref().map(|c| c.id.as_str()), 12),
                s.version.clone().unwrap_or_else(|| "-".into()),
                short(s.digest.as_deref(), 12),
                short(s.config_hash.as_deref(), 12),
                s.health.clone().unwrap_or_else(|| "-".into()),
                s.uptime_s.map_or_else(
                    || "-".into(),
                    |u| crate::duration::format(std::time::Duration::from_secs(u.unsigned_abs())),
                ),
                if s.drift.is_empty() { "ok".into() } else { s.drift.join("; ") },
            ]
        })
        .collect();
    out +=
        &table(&["TARGET", "CONTAINER", "VERSION", "DIGEST", "CONFIG", "HEALTH", "UPTIME", "DRIFT"], &rows);
    out += &unread_steps(statuses);
    out
}

/// One line per replace step that ended with nobody to read it (the next deploy clears them).
fn unread_steps(statuses: &[TargetStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        for l in &s.unread_replace_steps {
            out += &format!(
                "{}: the replace step of deployment {} ({}) ended with nobody to read it: {}\n",
                s.target, l.deployment, l.version, l.outcome
            );
        }
    }
    if out.is_empty() { out } else { format!("\n{out}") }
}

fn plain(statuses: &[TargetStatus]) -> String {
    statuses
        .iter()
        .map(|s| {
            format!(
                "{}\t{}\t{}\t{}\t{}\n",
                s.target,
                s.version.as_deref().unwrap_or("-"),
                s.digest.as_deref().unwrap_or("-"),
                s.health.as_deref().unwrap_or("-"),
                if s.drift.is_empty() { "ok".to_string() } else { s.drift.join("; ") }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_dockers_nanoseconds() {
        let now = crate::time::now_ms();
        let ten_ago = crate::time::format_ms(now - 10_000);
        let docker_style = ten_ago.replace('Z', "456789Z");
        let up = uptime_seconds(&docker_style).unwrap();
        assert!((9..=11).contains(&up), "{up}");
        assert_eq!(uptime_seconds("0001-01-01T00:00:00Z").map(|u| u > 0), Some(true));
        assert_eq!(uptime_seconds("garbage"), None);
    }
}
