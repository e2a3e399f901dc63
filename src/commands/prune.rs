//! `ferry prune APP --env ENV [--dry-run]`: image retention on demand, and the retention step
//! every deployment runs after a successful rollout.
//!
//! Both do the same per target (see [`crate::retention`]): read from the records which images
//! the target keeps (the last N deployments of each environment and app of the repository that
//! it serves, plus the deployment a rollback returns to), list what it has, and remove the rest
//! of the app's repository and the app's stopped leftover containers in the environment. Each
//! target's result is a `pruned` event and an entry of the run's `run_finished` record
//! (`retention`, one record for the run, not one per target): images removed (short digest,
//! version when a record knows it), containers removed, bytes freed.
//!
//! After a deployment, retention runs on the targets that succeeded, under the deployment's lock
//! and before its `run_finished` record, from records read before the rollout; a failure is a
//! warning on the event stream and in the record, never the deployment's exit code, and a target
//! with nothing removed is not an event (only an entry in the record).
//!
//! `prune` runs as a session of its own like `remove` (confirmation unless `--dry-run`, the
//! environment lock, records): exit 0 when every target was pruned, 1 when one failed, 3
//! locked, 4 not confirmed, 130 interrupted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::{Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, ssh_options, store};
use crate::apply::Connections;
use crate::audit::Entry;
use crate::error::Error;
use crate::fanout::millis;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::records::{RunFinished, RunStarted};
use crate::report::{Event, Events, Status};
use crate::request::Prune as PruneArgs;
use crate::retention::{Keep, Pruned, Scope};
use crate::secret::mask;
use crate::select;
use crate::store::{Store, StoreError};

/// What each target keeps, decided from the records before anything is listed.
pub struct Kept {
    /// Per target: the digests it keeps.
    pub targets: BTreeMap<String, Keep>,
    /// The version of every digest on record, for the report.
    pub versions: Keep,
}

/// The deployments on record that decide what `app`'s targets keep: of every (app,
/// environment) whose images share `app`'s repository and whose environment holds one of the
/// targets. Read once, under the lock, before anything changes (a deployment reads them before
/// its rollout, so a store that goes away mid-run does not cost the retention step).
pub struct Histories {
    /// `app`'s repository.
    repository: String,
    /// Per (app, environment), oldest first.
    deployments: BTreeMap<(String, String), Vec<crate::deployments::Deployment>>,
}

impl Histories {
    /// Reads them; see [`Histories`].
    pub fn read(
        inventory: &Inventory,
        store: &dyn Store,
        app: &str,
        targets: &[String],
    ) -> Result<Histories, StoreError> {
        let repository =
            inventory.app(app).map(|a| crate::planning::repository(inventory, a)).unwrap_or_default();
        let mut deployments = BTreeMap::new();
        for (key, _) in serving(inventory, &repository, targets) {
            if let std::collections::btree_map::Entry::Vacant(slot) = deployments.entry(key) {
                let (app, env) = slot.key();
                let history = store.deployments(app, env)?;
                slot.insert(history);
            }
        }
        Ok(Histories { repository, deployments })
    }

    /// What each of `targets` keeps of the repository: for every environment the target
    /// belongs to, and every app of the repository that deploys there, the last N deployments
    /// and the one a rollback returns to. `current` (digest, version) is the deployment in
    /// progress of `app` in `environment`, which counts as one of its N.
    pub fn kept(
        &self,
        inventory: &Inventory,
        app: &str,
        environment: &str,
        targets: &[String],
        current: Option<(&str, &str)>,
    ) -> Kept {
        let mut kept = Kept { targets: BTreeMap::new(), versions: Keep::new() };
        for history in self.deployments.values() {
            kept.versions.extend(crate::retention::versions(history));
        }
        if let Some((digest, version)) = current {
            kept.versions.insert(digest.to_string(), version.to_string());
        }
        for target in targets {
            let mut keep = Keep::new();
            for (key, images) in serving(inventory, &self.repository, std::slice::from_ref(target)) {
                let history = self.deployments.get(&key).map_or(&[][..], Vec::as_slice);
                let ours = key.0 == app && key.1 == environment;
                keep.extend(crate::retention::keep(history, images, current.filter(|_| ours)));
            }
            kept.targets.insert(target.clone(), keep);
        }
        kept
    }
}

/// The (app, environment) pairs whose images of `repository` `targets` hold, each with how many
/// deployments it keeps.
fn serving(inventory: &Inventory, repository: &str, targets: &[String]) -> Vec<((String, String), usize)> {
    // Every target name on the same Docker daemon as one of `targets`: two names (two users,
    // an alias, every local target) can reach one host, whose images all of them hold.
    let daemon = |t: &crate::inventory::Target| match t.transport {
        crate::inventory::Transport::Local => (String::new(), 0, t.jump.clone()),
        _ => (t.host.to_ascii_lowercase(), t.port, t.jump.clone()),
    };
    let daemons: Vec<_> =
        inventory.targets.iter().filter(|t| targets.contains(&t.name)).map(daemon).collect();
    let indexes: Vec<usize> = inventory
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| daemons.contains(&daemon(t)))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    for env in inventory.environments.iter().filter(|e| indexes.iter().any(|i| e.targets.contains(i))) {
        for app in &inventory.apps {
            if app.deploys_to(&env.name) && crate::planning::repository(inventory, app) == repository {
                out.push(((app.name.clone(), env.name.clone()), app.retained_images(&env.name)));
            }
        }
    }
    out
}

/// How [`retain`] runs.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// List only; remove nothing.
    pub dry_run: bool,
    /// A deployment's step: no event for a target with nothing to say.
    pub quiet: bool,
    /// Targets at once.
    pub parallel: usize,
}

/// Runs retention on each of `targets` over the lock's `connections`, at most `parallel` at
/// once; returns the results in target order. Each is sent as a `pruned` event, except, when
/// `quiet` (after a deployment), one that removed nothing and met no error.
pub async fn retain(
    scope: &Scope,
    kept: &Kept,
    targets: Vec<String>,
    connections: &Connections,
    how: How,
    events: &Events,
) -> Vec<(String, Result<Pruned, String>)> {
    let How { dry_run, quiet, parallel } = how;
    // Each target's task owns what it reads.
    let (scope, versions) = (Arc::new(scope.clone()), Arc::new(kept.versions.clone()));
    let outcomes = crate::fanout::ordered(
        targets.clone(),
        crate::fanout::Limits::parallel(parallel),
        |_, target| {
            let host = connections.get(&target).cloned();
            let keep = kept.targets.get(&target).cloned().unwrap_or_default();
            let (scope, versions, events) = (Arc::clone(&scope), Arc::clone(&versions), events.clone());
            async move {
                let result = match host {
                    Some(host) => crate::retention::run(&*host, &scope, &keep, &versions, dry_run)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("unreachable: no connection to it".to_string()),
                };
                let pruned = match &result {
                    Ok(p) => p.clone(),
                    Err(e) => Pruned {
                        target: target.clone(),
                        dry_run,
                        error: Some(e.clone()),
                        ..Pruned::default()
                    },
                };
                // After a deployment, a target with nothing removed and nothing wrong is no news.
                if !quiet
                    || pruned.error.is_some()
                    || !pruned.images.is_empty()
                    || !pruned.containers.is_empty()
                {
                    let _ = events.send(Event::Pruned(pruned));
                }
                result
            }
        },
        |_, _| {},
    )
    .await;
    targets.into_iter().zip(outcomes).map(|(t, o)| (t, o.unwrap_or_else(|e| Err(e.to_string())))).collect()
}

/// The retention step after a rollout, on the targets that succeeded: see the module docs.
/// `histories` were read before the rollout. Nothing here fails the deployment; what goes wrong
/// is a result with its error. Returns what each target did, for `run_finished`.
pub async fn after_rollout(
    inventory: &Inventory,
    histories: &Result<Histories, String>,
    plan: &crate::plan::Plan,
    succeeded: Vec<String>,
    connections: &Connections,
    parallel: usize,
    events: &Events,
) -> Vec<Pruned> {
    let Ok(app) = inventory.app(&plan.app) else { return Vec::new() };
    let scope = Scope {
        app: plan.app.clone(),
        environment: plan.environment.clone(),
        repository: crate::planning::repository(inventory, app),
    };
    let current = plan.digest.as_deref().map(|d| (d, plan.version.as_str()));
    match histories {
        Ok(histories) => {
            let kept = histories.kept(inventory, &plan.app, &plan.environment, &succeeded, current);
            retain(
                &scope,
                &kept,
                succeeded,
                connections,
                How { dry_run: false, quiet: true, parallel },
                events,
            )
            .await
            .into_iter()
            .map(|(target, result)| {
                result.unwrap_or_else(|error| Pruned { target, error: Some(error), ..Pruned::default() })
            })
            .collect()
        }
        Err(e) => succeeded
            .into_iter()
            .map(|target| {
                let error = Some(format!("nothing removed: cannot read the records: {e}"));
                let pruned = Pruned { target, error, ..Pruned::default() };
                let _ = events.send(Event::Pruned(pruned.clone()));
                pruned
            })
            .collect(),
    }
}

/// How one target ended.
#[derive(Debug, Clone)]
struct TargetPrune {
    target: String,
    status: Status,
    pruned: Option<Pruned>,
    error: Option<String>,
    duration: Duration,
}

/// Runs `ferry prune`.
pub fn run(inventory: Inventory, args: &PruneArgs, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?.clone();
    let env = inventory.environment(&args.environment)?.clone();
    app.check_deploys_to(&env.name)?;
    let targets: Vec<String> =
        select::select(&inventory, &app, &env, &args.limits)?.iter().map(|t| t.name.clone()).collect();
    let what = if args.dry_run {
        format!("prune {} in {} (dry run)", app.name, env.name)
    } else {
        format!("prune {} in {}", app.name, env.name)
    };
    let prompt = format!("{what} ({})", crate::output::count(targets.len(), "target"));
    // A dry run changes nothing: no confirmation.
    Session::confirm(args.yes || args.dry_run, &prompt, || {
        format!(
            "removes the images of {} that {} no longer keeps (retention: the last {}) and its stopped containers on: {}",
            app.name,
            env.name,
            app.retained_images(&env.name),
            targets.join(", ")
        )
    })?;
    let store = store(&inventory)?;
    let secrets = known_secrets(&inventory, &env.name);
    let ssh = ssh_options(&inventory, args.connect_timeout)?;
    let scope = Scope {
        app: app.name.clone(),
        environment: env.name.clone(),
        repository: crate::planning::repository(&inventory, &app),
    };
    let records = Arc::clone(&store);
    let inventory = Arc::new(inventory);
    let session = Session {
        inventory: Arc::clone(&inventory),
        store,
        base: Entry {
            run: new_deployment_id(),
            command: "prune".into(),
            app: Some(app.name.clone()),
            environment: Some(env.name.clone()),
            ..Entry::default()
        },
        environment: env,
        what: what.clone(),
        secrets: secrets.clone(),
        output,
        quiet: false,
        lock: Some((args.lock, format!("ferry {what}"))),
        ssh,
    };
    let started = RunStarted {
        notes: Some(serde_json::json!({ "action": "prune", "dry_run": args.dry_run })),
        ..RunStarted::default()
    };
    let (parallel, dry_run) = (args.parallel, args.dry_run);
    let outcome = session.run(targets.clone(), started, |context: Context| async move {
        let pruned =
            prune_everywhere(&inventory, &*records, &scope, targets, parallel, dry_run, &context).await;
        let interrupted = *context.cancel.borrow();
        drop(context);
        finish(pruned, interrupted)
    })?;
    let Outcome::Finished { value: (pruned, interrupted), audited } = outcome else {
        return Ok(EXIT_INTERRUPTED);
    };
    if output != OutputFormat::Json {
        output::print(&mask(&summary(&pruned, &what), &secrets))?;
    }
    Ok(super::session::targets_exit_code(pruned.iter().map(|r| r.status), interrupted, audited))
}

/// Prunes every reachable target; the ones the session could not reach end as it found them.
async fn prune_everywhere(
    inventory: &Inventory,
    store: &dyn Store,
    scope: &Scope,
    targets: Vec<String>,
    parallel: usize,
    dry_run: bool,
    context: &Context,
) -> Vec<TargetPrune> {
    let started = Instant::now();
    let reached: Vec<String> =
        targets.iter().filter(|t| context.connections.contains_key(*t)).cloned().collect();
    let results: BTreeMap<String, Result<Pruned, String>> =
        match Histories::read(inventory, store, &scope.app, &reached) {
            Ok(histories) => {
                let kept = histories.kept(inventory, &scope.app, &scope.environment, &reached, None);
                retain(
                    scope,
                    &kept,
                    reached,
                    &context.connections,
                    How { dry_run, quiet: false, parallel },
                    &context.events,
                )
                .await
                .into_iter()
                .collect()
            }
            Err(e) => {
                reached.into_iter().map(|t| (t, Err(format!("cannot read the records: {e}")))).collect()
            }
        };
    let mut out = Vec::new();
    for target in targets {
        let mut done = TargetPrune {
            target: target.clone(),
            status: Status::Error,
            pruned: None,
            error: None,
            duration: started.elapsed(),
        };
        match results.get(&target) {
            Some(Ok(pruned)) => {
                done.status = if pruned.error.is_some() { Status::Failed } else { Status::Ok };
                done.error.clone_from(&pruned.error);
                done.pruned = Some(pruned.clone());
            }
            Some(Err(e)) => done.error = Some(e.clone()),
            None => match context.unreached.iter().find(|u| u.target == target) {
                Some(u) => {
                    (done.status, done.error, done.duration) = (u.status, Some(u.error.clone()), u.duration)
                }
                None => done.error = Some("unreachable: no connection to it".into()),
            },
        }
        let _ = context.events.send(Event::TargetFinished {
            target: done.target.clone(),
            status: done.status,
            exit_code: None,
            signal: None,
            error: done.error.clone(),
            ms: millis(done.duration),
            action: None,
            container: None,
            logs: Vec::new(),
        });
        out.push(done);
    }
    out
}

/// The run's end as the session records it.
fn finish(pruned: Vec<TargetPrune>, interrupted: bool) -> Finish<(Vec<TargetPrune>, bool)> {
    let count = |s: Status| pruned.iter().filter(|r| r.status == s).count();
    let retention = pruned.iter().filter_map(|r| r.pruned.clone()).map(|p| (p.target.clone(), p)).collect();
    Finish {
        ok: count(Status::Ok),
        failed: pruned.len() - count(Status::Ok) - count(Status::Skipped),
        skipped: count(Status::Skipped),
        interrupted,
        stopped: None,
        record: Some(RunFinished { retention: Some(retention), ..RunFinished::default() }),
        digest: None,
        after: None,
        value: (pruned, interrupted),
    }
}

/// The table printed after the run (not with `--output json`, whose events say it all).
fn summary(pruned: &[TargetPrune], what: &str) -> String {
    let rows: Vec<Vec<String>> = pruned
        .iter()
        .map(|r| {
            let p = r.pruned.as_ref();
            vec![
                r.target.clone(),
                r.status.label().to_string(),
                p.map_or_else(|| "-".into(), |p| p.images.len().to_string()),
                p.map_or_else(|| "-".into(), |p| p.containers.len().to_string()),
                p.map_or_else(|| "-".into(), |p| crate::retention::bytes(p.bytes)),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let freed = if what.ends_with("(dry run)") { "WOULD FREE" } else { "FREED" };
    let mut out = format!("\n{what}\n");
    out += &table(&["TARGET", "STATUS", "IMAGES", "CONTAINERS", freed, "DETAIL"], &rows);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployments::{Deployment, Recorded};

    /// Targets a (staging and prod) and b (prod); web and worker share acme/web, other does not.
    const INVENTORY: &str = r#"
[environments.staging]
targets = ["a"]

[environments.prod]
targets = ["a", "b"]

[targets.a]
host = "10.200.0.21"

[targets.b]
host = "10.200.0.22"

[apps.web]
image = "acme/web"
template = "t.j2"
retention = { images = 2 }

[apps.web.environments.staging]
retention = { images = 1 }

[apps.worker]
image = "acme/web"
template = "t.j2"
deploy_to = ["prod"]

[apps.other]
image = "acme/other"
template = "t.j2"
"#;

    fn deployment(name: &str) -> Deployment {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        let digest = format!("sha256:{hex:0>64}");
        Deployment {
            id: name.into(),
            command: "deploy".into(),
            time: String::new(),
            version: name.into(),
            digest: Some(digest),
            recorded: Recorded {
                image: String::new(),
                succeeded: true,
                rollback_to: None,
                targets: BTreeMap::new(),
            },
        }
    }

    fn versions(kept: &Kept, target: &str) -> Vec<String> {
        let mut out: Vec<String> =
            kept.targets[target].keys().map(|d| kept.versions.get(d).cloned().unwrap_or_default()).collect();
        out.sort();
        out
    }

    #[test]
    fn two_target_names_on_one_daemon_keep_each_others_environments() {
        let dir = tempfile::tempdir().unwrap();
        let text = INVENTORY
            .replace(
                "[environments.prod]\ntargets = [\"a\", \"b\"]",
                "[environments.prod]\ntargets = [\"b\", \"c\"]",
            )
            .replace("[targets.b]", "[targets.c]\nhost = \"10.200.0.21\"\nuser = \"deploy\"\n\n[targets.b]");
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/t.j2"), "docker run {{ image }}\n").unwrap();
        let inventory = Inventory::load(&dir.path().join("ferry.toml")).unwrap();
        // `a` (staging) and `c` (prod) are one host under two names: pruning staging on `a`
        // keeps prod's images too.
        let served: Vec<(String, String)> =
            serving(&inventory, "acme/web", &["a".to_string()]).into_iter().map(|(k, _)| k).collect();
        assert!(served.contains(&("web".into(), "prod".into())), "{served:?}");
        assert!(served.contains(&("web".into(), "staging".into())), "{served:?}");
    }

    #[test]
    fn each_target_keeps_what_every_environment_and_app_of_the_repository_it_serves_keeps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ferry.toml"), INVENTORY).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/t.j2"), "docker run {{ image }}\n").unwrap();
        let inventory = Inventory::load(&dir.path().join("ferry.toml")).unwrap();
        let targets = ["a".to_string(), "b".to_string()];
        let served: Vec<(String, String)> =
            serving(&inventory, "acme/web", &targets).into_iter().map(|(k, _)| k).collect();
        assert!(!served.iter().any(|(app, _)| app == "other"), "another repository: {served:?}");
        let history = |names: &[&str]| names.iter().map(|n| deployment(n)).collect::<Vec<_>>();
        let histories = Histories {
            repository: "acme/web".into(),
            deployments: BTreeMap::from([
                (("web".into(), "staging".into()), history(&["s1", "s2"])),
                (("web".into(), "prod".into()), history(&["p1", "p2", "p3", "p4"])),
                (("worker".into(), "prod".into()), history(&["w1", "w2"])),
            ]),
        };
        let current = deployment("p5");
        let digest = current.digest.clone().unwrap();
        let kept = histories.kept(&inventory, "web", "prod", &targets, Some((&digest, "p5")));
        // prod: p5 (the run) and p4 (the last before it, also the rollback's): 2 deployments;
        // staging's 1 and its rollback's (s1); the worker's last 5 (both).
        assert_eq!(versions(&kept, "a"), ["p4", "p5", "s1", "s2", "w1", "w2"]);
        assert_eq!(versions(&kept, "b"), ["p4", "p5", "w1", "w2"], "b is not in staging");
    }
}
