//! `ferry status`: what runs on each target, and drift against the record.
//!
//! Per target: the app's container in this environment (by its `ferry.*` labels), its version,
//! digest, config hash, health and uptime. Drift is judged against the last successful
//! deployment in the audit log: a missing or stopped container, another config hash, an
//! unhealthy check, extra containers of the app, an unreachable target. A removal on record
//! (`ferry remove`) after that deployment means the app is not expected on the targets it was
//! removed from: none of its containers there is no drift, one that is left is. Exit 1 on any
//! drift, so a cron job or a monitoring check can alert on it. It changes nothing.
//!
//! Without an app (`ferry status --env ENV`) it shows every app of the environment, one row
//! per app and target, asking each target about all of them over one connection; the exit code
//! is the same rule over all rows.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{runtime, ssh_options, store};
use crate::deployments::{Change, Deployment, Removed, Standing};
use crate::diagnostic::Diagnostic;
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

/// `--output json` of one app (`schema` only at the top level).
#[derive(Serialize)]
struct Report<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<u32>,
    app: &'a str,
    environment: &'a str,
    deployment: Option<RecordRef<'a>>,
    /// The newest removal since that deployment, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<RemovedRef>,
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

/// A removal as `--output json` names it.
#[derive(Serialize)]
struct RemovedRef {
    /// The removal's run id.
    id: String,
    /// When it finished.
    time: String,
    /// Who ran it.
    by: String,
    /// The targets it ran on.
    targets: Vec<String>,
}

/// One app's status in the environment.
struct AppStatus<'a> {
    /// The app.
    app: &'a inventory::App,
    /// What the records expect of it there.
    standing: Standing,
    /// One per selected target, in inventory order.
    statuses: Vec<TargetStatus>,
    /// Deployed tags that moved in the feed.
    warnings: Vec<String>,
}

impl AppStatus<'_> {
    /// Any of its targets drifts.
    fn drift(&self) -> bool {
        self.statuses.iter().any(|s| !s.drift.is_empty())
    }

    /// Its `--output json` report (`schema` given at the top level only).
    fn report<'s>(&'s self, environment: &'s str, schema: Option<u32>) -> Report<'s> {
        Report {
            schema,
            app: &self.app.name,
            environment,
            deployment: self.standing.last.as_ref().map(|d| RecordRef {
                id: &d.id,
                version: &d.version,
                digest: d.digest.as_deref(),
                time: &d.time,
            }),
            removed: self.standing.last_removal().map(|r| RemovedRef {
                id: r.id.clone(),
                time: r.time.clone(),
                by: r.actor.describe(),
                targets: r.removal.acted_on().into_iter().map(str::to_string).collect(),
            }),
            drift: self.drift(),
            warnings: &self.warnings,
            targets: &self.statuses,
        }
    }
}

/// What one target showed: per app, its containers and unread replace steps. The outer error is
/// a connection that could not be opened (the target is unreachable); the inner one, a
/// connected target that could not be read.
type Seen = Result<Result<BTreeMap<String, (Vec<Container>, Vec<Leftover>)>, String>, String>;

/// Why a target's containers are not known.
enum Unseen {
    /// No connection within the connect timeout (or the host key was refused).
    Unreachable(String),
    /// Connected, but listing them failed.
    Unreadable(String),
}

/// The newest deployment among `changes` when it failed: the targets it did not reach still
/// run the older release, and `status` says so.
fn failed_last(changes: &[Change]) -> Option<Deployment> {
    match changes.last() {
        Some(Change::Deployed(d)) if !d.recorded.succeeded => Some(d.clone()),
        _ => None,
    }
}

/// Notes on each status whose target `newest` (a failed deployment) did not reach.
fn not_reached(statuses: &mut [TargetStatus], newest: Option<&Deployment>) {
    let Some(newest) = newest else { return };
    for s in statuses {
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

/// Runs `ferry status`.
pub fn run(inventory: &Inventory, args: &Status, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.environment)?;
    let selected = selection(inventory, env, args)?;
    let store = store(inventory)?;
    let mut standings = Vec::new();
    let mut failed = Vec::new();
    for (app, _) in &selected {
        let changes = store.changes(&app.name, &env.name)?;
        standings.push(Standing::of(&changes));
        failed.push(failed_last(&changes));
    }
    let ssh = ssh_options(inventory, args.connect_timeout)?;
    // Every target any selected app runs on, in inventory order, asked once about all of them.
    let mut targets: Vec<&inventory::Target> = Vec::new();
    for t in selected.iter().flat_map(|(_, ts)| ts) {
        if !targets.iter().any(|k| k.name == t.name) {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| inventory.targets.iter().position(|k| k.name == t.name));
    let names: Vec<(String, Option<String>)> = selected
        .iter()
        .map(|(a, _)| {
            // Behind the proxy, a stray NAME-next is cleaned up (and reported) by status too.
            let proxied = a.route(&env.name).map(|_| inventory::container_name(a, &env.name));
            (a.name.clone(), proxied)
        })
        .collect();
    let observed: BTreeMap<String, Seen> =
        runtime()?.block_on(observe(inventory, &targets, &ssh, &names, &env.name)).into_iter().collect();
    let mut apps = Vec::new();
    for (((app, app_targets), standing), failed) in selected.into_iter().zip(standings).zip(failed) {
        let container = inventory::container_name(app, &env.name);
        let mut statuses: Vec<TargetStatus> = app_targets
            .iter()
            .map(|t| {
                let removed = standing.removed_from(&t.name);
                let seen = observed.get(&t.name).cloned().unwrap_or_else(|| Ok(Err("not asked".into())));
                let last = standing.last.as_ref();
                match seen.map(|read| read.map(|mut per_app| per_app.remove(&app.name).unwrap_or_default())) {
                    Ok(Ok((containers, leftovers))) => {
                        let mut status = judge(&t.name, Ok(containers), last, removed, &container);
                        status.unread_replace_steps = leftovers;
                        status
                    }
                    Ok(Err(e)) => judge(&t.name, Err(Unseen::Unreadable(e)), last, removed, &container),
                    Err(e) => judge(&t.name, Err(Unseen::Unreachable(e)), last, removed, &container),
                }
            })
            .collect();
        not_reached(&mut statuses, failed.as_ref());
        let warnings = runtime()?.block_on(moved_tags(inventory, app, &statuses));
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        apps.push(AppStatus { app, standing, statuses, warnings });
    }
    let drift = apps.iter().any(AppStatus::drift);
    match (&args.app, output) {
        (Some(_), OutputFormat::Json) => output::print_json(&apps[0].report(&env.name, Some(1)))?,
        (Some(_), OutputFormat::Plain) => output::print(&plain(None, &apps[0].statuses))?,
        (Some(_), OutputFormat::Human) => output::print(&human(&env.name, &apps[0]))?,
        (None, OutputFormat::Json) => {
            let reports: Vec<Report<'_>> = apps.iter().map(|a| a.report(&env.name, None)).collect();
            let warnings: Vec<&String> = apps.iter().flat_map(|a| &a.warnings).collect();
            output::print_json(&serde_json::json!({
                "schema": 1,
                "environment": env.name,
                "drift": drift,
                "warnings": warnings,
                "apps": reports,
            }))?;
        }
        (None, OutputFormat::Plain) => {
            output::print(&apps.iter().map(|a| plain(Some(&a.app.name), &a.statuses)).collect::<String>())?;
        }
        (None, OutputFormat::Human) => output::print(&human_all(&env.name, &apps))?,
    }
    Ok(i32::from(drift))
}

/// The apps asked about, each with its selected targets: the one named, or every app of the
/// environment. For the whole environment, each `--limit` pattern must match a target of the
/// environment, not one of every app (apps run on different targets: `--limit web-1,worker-1`
/// names one of each); an app none of whose targets is matched is left out.
fn selection<'a>(
    inventory: &'a Inventory,
    env: &inventory::Environment,
    args: &Status,
) -> Result<Vec<(&'a inventory::App, Vec<&'a inventory::Target>)>, Error> {
    if let Some(name) = &args.app {
        let app = inventory.app(name)?;
        return Ok(vec![(app, select::select(inventory, app, env, &args.limits)?)]);
    }
    let limited = select::select_environment(inventory, env, &[], &args.limits)?;
    let mut selected = Vec::new();
    // The environment's apps: those that deploy to it.
    for app in inventory.apps.iter().filter(|a| a.deploys_to(&env.name)) {
        let targets: Vec<&inventory::Target> = select::select(inventory, app, env, &[])?
            .into_iter()
            .filter(|t| limited.iter().any(|l| l.name == t.name))
            .collect();
        if !targets.is_empty() {
            selected.push((app, targets));
        }
    }
    if selected.is_empty() && !args.limits.is_empty() {
        let names: Vec<&str> = limited.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::Input(
            Diagnostic::new(format!(
                "--limit \"{}\" matches no target an app of environment \"{}\" runs on",
                args.limits.join(","),
                env.name
            ))
            .help(format!("it matches {}; `ferry ls` lists each app's targets", names.join(", "))),
        ));
    }
    Ok(selected)
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
        // Started from an image id (`deploy --archive`): its digest is the image's, which no
        // feed tag ever points at, so the feed has nothing to say about it.
        if s.container.as_ref().is_some_and(|c| crate::docker::is_image_id(&c.image)) {
            continue;
        }
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

/// Lists the apps' containers (and unread replace steps) on every target at once, over one
/// connection per target.
async fn observe(
    inventory: &Inventory,
    targets: &[&inventory::Target],
    ssh: &crate::ssh::Options,
    apps: &[(String, Option<String>)],
    environment: &str,
) -> Vec<(String, Seen)> {
    crate::host::on_each(inventory, targets, ssh, |connection| {
        let (apps, environment) = (apps.to_vec(), environment.to_string());
        async move {
            let read = async {
                let mut seen = BTreeMap::new();
                for (app, proxied) in apps {
                    let stray = match &proxied {
                        Some(container) => {
                            replace::remove_stray_next(&connection, &app, &environment, container)
                                .await
                                .map_err(|e| e.to_string())?
                        }
                        None => None,
                    };
                    let containers =
                        docker::list(&connection, &app, &environment).await.map_err(|e| e.to_string())?;
                    let mut leftovers = replace::leftovers(&connection, &app, &environment)
                        .await
                        .map_err(|e| e.to_string())?;
                    leftovers.extend(stray);
                    seen.insert(app, (containers, leftovers));
                }
                Ok(seen)
            };
            Ok(read.await)
        }
    })
    .await
}

fn judge(
    target: &str,
    seen: Result<Vec<Container>, Unseen>,
    last: Option<&Deployment>,
    removed: Option<&Removed>,
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
    if let Some(removed) = removed {
        // Removed since the last success: nothing of the app is expected here.
        if !containers.is_empty() {
            let names: Vec<&str> = containers.iter().map(|c| c.details.name.as_str()).collect();
            status.drift.push(format!(
                "removed by run {} ({}), yet containers of the app remain: {}",
                removed.id,
                removed.time,
                names.join(", ")
            ));
        }
        return status;
    }
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

/// The line that says what the app is compared against.
fn headline(env: &str, a: &AppStatus<'_>) -> String {
    let app = &a.app.name;
    let removed = a.standing.last_removal();
    let everywhere = a.statuses.iter().all(|s| a.standing.removed_from(&s.target).is_some());
    match (&a.standing.last, removed) {
        (_, Some(r)) if everywhere => {
            format!("{app} in {env}: not deployed (removed {} by {})", r.time, r.actor.describe())
        }
        (Some(d), removed) => {
            let mut line = format!(
                "{app} in {env}: last successful deployment {} ({} {}, {})",
                d.id,
                d.version,
                d.digest.as_deref().unwrap_or("no digest"),
                d.time
            );
            if let Some(r) = removed {
                let on = r.removal.acted_on();
                line += &format!("; removed from {} {} by {}", on.join(", "), r.time, r.actor.describe());
            }
            line
        }
        (None, _) => {
            format!("{app} in {env}: no successful deployment on record here; nothing to compare against")
        }
    }
}

/// The columns of a status row after the target (and the app, for a whole environment).
fn cells(s: &TargetStatus) -> Vec<String> {
    vec![
        short(s.container.as_ref().map(|c| c.id.as_str()), 12),
        s.version.clone().unwrap_or_else(|| "-".into()),
        short(s.digest.as_deref(), 12),
        short(s.config_hash.as_deref(), 12),
        s.health.clone().unwrap_or_else(|| "-".into()),
        s.uptime_s.map_or_else(
            || "-".into(),
            |u| crate::duration::format_uptime(std::time::Duration::from_secs(u.unsigned_abs())),
        ),
        if s.drift.is_empty() { "ok".into() } else { s.drift.join("; ") },
    ]
}

/// The columns after the row's first ones.
const COLUMNS: [&str; 7] = ["CONTAINER", "VERSION", "DIGEST", "CONFIG", "HEALTH", "UPTIME", "DRIFT"];

/// One app: its headline, then one row per target.
fn human(env: &str, a: &AppStatus<'_>) -> String {
    let mut out = format!("{}\n\n", headline(env, a));
    let rows: Vec<Vec<String>> =
        a.statuses.iter().map(|s| std::iter::once(s.target.clone()).chain(cells(s)).collect()).collect();
    let headers: Vec<&str> = std::iter::once("TARGET").chain(COLUMNS).collect();
    out += &table(&headers, &rows);
    out += &unread_steps(&a.statuses);
    out
}

/// Every app of the environment: one headline per app, then one row per app and target.
fn human_all(env: &str, apps: &[AppStatus<'_>]) -> String {
    let mut out: String = apps.iter().map(|a| format!("{}\n", headline(env, a))).collect();
    let rows: Vec<Vec<String>> = apps
        .iter()
        .flat_map(|a| {
            a.statuses
                .iter()
                .map(|s| [a.app.name.clone(), s.target.clone()].into_iter().chain(cells(s)).collect())
        })
        .collect();
    let headers: Vec<&str> = ["APP", "TARGET"].into_iter().chain(COLUMNS).collect();
    out += "\n";
    out += &table(&headers, &rows);
    for a in apps {
        out += &unread_steps(&a.statuses);
    }
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

/// Tab-separated rows: `[app]` target, version, digest, health, drift.
fn plain(app: Option<&str>, statuses: &[TargetStatus]) -> String {
    let prefix = app.map_or_else(String::new, |a| format!("{a}\t"));
    statuses
        .iter()
        .map(|s| {
            format!(
                "{prefix}{}\t{}\t{}\t{}\t{}\n",
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

    /// Two apps on different targets of one environment (roles), as `status --env` sees them.
    fn two_apps() -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        let text = "[environments.prod]\ntargets = [\"a\", \"b\", \"c\"]\n\n\
                    [targets.a]\nhost = \"127.0.0.1\"\nroles = [\"web\"]\n\n\
                    [targets.b]\nhost = \"127.0.0.2\"\nroles = [\"worker\"]\n\n\
                    [targets.c]\nhost = \"127.0.0.3\"\nroles = [\"db\"]\n\n\
                    [apps.web]\nimage = \"acme/web\"\ntemplate = \"t.j2\"\nroles = [\"web\"]\n\n\
                    [apps.worker]\nimage = \"acme/worker\"\ntemplate = \"t.j2\"\nroles = [\"worker\"]\n";
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/t.j2"), "docker run {{ image }}\n").unwrap();
        let source = crate::diagnostic::SourceFile::new(dir.path().join("ferry.toml"), text.to_string());
        let inventory = Inventory::parse(source, dir.path()).unwrap();
        (dir, inventory)
    }

    fn selected(inventory: &Inventory, limits: &[&str]) -> Result<Vec<(String, Vec<String>)>, String> {
        let args = Status {
            app: None,
            environment: "prod".into(),
            limits: limits.iter().map(|l| (*l).to_string()).collect(),
            connect_timeout: std::time::Duration::from_secs(1),
        };
        let env = inventory.environment("prod").unwrap();
        selection(inventory, env, &args).map_err(|e| e.to_string()).map(|apps| {
            apps.into_iter()
                .map(|(a, ts)| (a.name.clone(), ts.into_iter().map(|t| t.name.clone()).collect()))
                .collect()
        })
    }

    #[test]
    fn a_limit_over_the_whole_environment_names_targets_of_any_app() {
        let (_dir, inventory) = two_apps();
        let both =
            vec![("web".to_string(), vec!["a".to_string()]), ("worker".to_string(), vec!["b".to_string()])];
        assert_eq!(selected(&inventory, &[]), Ok(both.clone()));
        // One target of each app: both apps, each on its own target.
        assert_eq!(selected(&inventory, &["a,b"]), Ok(both));
        assert_eq!(selected(&inventory, &["b"]), Ok(vec![("worker".to_string(), vec!["b".to_string()])]));
        // A pattern that matches no target of the environment is refused as for one app.
        let typo = selected(&inventory, &["a", "zz"]).unwrap_err();
        assert!(typo.contains("--limit \"zz\" matches none of the 3 targets"), "{typo}");
        // A target no app runs on leaves nothing to show: said, not an empty table.
        let idle = selected(&inventory, &["c"]).unwrap_err();
        assert_eq!(
            idle,
            "error: --limit \"c\" matches no target an app of environment \"prod\" runs on\n  \
             = help: it matches c; `ferry ls` lists each app's targets"
        );
    }

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

    #[test]
    fn the_table_shows_uptimes_as_people_read_them() {
        let at = |target: &str, uptime_s| TargetStatus {
            target: target.into(),
            container: None,
            state: Some("running".into()),
            version: Some("1.0".into()),
            digest: None,
            config_hash: None,
            health: Some("healthy".into()),
            uptime_s: Some(uptime_s),
            drift: Vec::new(),
            unread_replace_steps: Vec::new(),
        };
        // A row's cells after the target, whole: the uptime column reads as people say it.
        let row = |uptime_s| cells(&at("h1", uptime_s)).join("|");
        assert_eq!(row(0), "-|1.0|-|-|healthy|0s|ok");
        assert_eq!(row(125), "-|1.0|-|-|healthy|2m 5s|ok");
        assert_eq!(row(3 * 86_400 + 4 * 3600), "-|1.0|-|-|healthy|3d 4h|ok");
    }
}
