//! `ferry remove APP --env ENV`: take an app out of an environment, on the record.
//!
//! An app that is no longer wanted somewhere (a retired service, a staging copy nobody uses)
//! must leave no container behind and must stop being expected there, or `status` reports
//! drift forever. So the removal runs as a session like a deployment (confirmation, the
//! environment lock, records, signals), stops and removes every container labelled with the
//! app and this environment on each selected target (the current one, an old one a
//! deployment kept, a stopped one), and records what it removed where in its `run_finished`
//! record (`removal`). `status` reads that record and no longer expects the app there; the
//! next `deploy` creates it again as usual; `rollback` after a removal redeploys the last
//! successful deployment; `promote` from an environment the app was removed from (from every
//! target of its last success there) refuses. A
//! target where a replace step of the app still runs (its runner died moments ago) fails with
//! nothing removed: that step would start or restore a container after the removal.
//! Containers of other apps, or of this app in other environments on the same host, never
//! match: both labels must be equal. An app behind the proxy loses its route on the target
//! first (`~/.ferry/proxy/routes/APP@ENV.*`, one config load); other routes stay.
//!
//! Exit code: 0 when every selected target has none of the app's containers left; 1 when one
//! failed; 3 locked; 4 not confirmed; 130 interrupted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::{Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, ssh_options, store};
use crate::audit::Entry;
use crate::deployments::{Removal, RemovedTarget};
use crate::error::Error;
use crate::fanout::{Limits, millis};
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::records::{RunFinished, RunStarted};
use crate::report::{Event, Events, Status};
use crate::request::Remove as RemoveArgs;
use crate::secret::{Secret, mask};
use crate::select;

/// How one target ended.
#[derive(Debug, Clone)]
struct TargetRemoval {
    /// The target.
    target: String,
    /// How it ended.
    status: Status,
    /// The containers removed there.
    containers: Vec<String>,
    /// Why it did not end `ok`.
    error: Option<String>,
    /// How long it took.
    duration: Duration,
}

/// Runs `ferry remove`.
pub fn run(inventory: Inventory, args: &RemoveArgs, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?.clone();
    let env = inventory.environment(&args.environment)?.clone();
    let targets: Vec<String> =
        select::select(&inventory, &app, &env, &args.limits)?.iter().map(|t| t.name.clone()).collect();
    let what = format!("remove {} from {}", app.name, env.name);
    let prompt = format!("{what} ({})", crate::output::count(targets.len(), "target"));
    Session::confirm(args.yes, &prompt, || {
        format!(
            "stops and removes every container of {} in {} on: {}",
            app.name,
            env.name,
            targets.join(", ")
        )
    })?;
    let store = store(&inventory)?;
    let secrets = known_secrets(&inventory, &env.name);
    let ssh = ssh_options(&inventory, args.connect_timeout)?;
    let mirror = format!("ferry {what} by {}", store.actor().describe());
    let (app_name, env_name) = (app.name.clone(), env.name.clone());
    let session = Session {
        inventory: Arc::new(inventory),
        store,
        base: Entry {
            run: new_deployment_id(),
            command: "remove".into(),
            app: Some(app_name.clone()),
            environment: Some(env_name.clone()),
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
    let parallel = args.parallel;
    let work_secrets = secrets.clone();
    let outcome = session.run(targets.clone(), RunStarted::default(), |context: Context| async move {
        let job = Job { app: app_name, environment: env_name, mirror, secrets: work_secrets };
        let removed = remove_everywhere(Arc::new(job), targets, parallel, &context).await;
        let interrupted = *context.cancel.borrow();
        drop(context);
        finish(removed, interrupted)
    })?;
    let Outcome::Finished { value: (removed, interrupted), audited } = outcome else {
        return Ok(EXIT_INTERRUPTED);
    };
    if output != OutputFormat::Json {
        output::print(&mask(&summary(&removed, &what), &secrets))?;
    }
    Ok(super::session::targets_exit_code(removed.iter().map(|r| r.status), interrupted, audited))
}

/// What every target's removal needs.
struct Job {
    /// The app removed.
    app: String,
    /// From this environment.
    environment: String,
    /// The start of each target's audit mirror line.
    mirror: String,
    /// Masked in the mirror line.
    secrets: Vec<Secret>,
}

/// Removes the app's containers on every target, at most `parallel` at once; after the first
/// signal no further target starts (those are `skipped`).
async fn remove_everywhere(
    job: Arc<Job>,
    targets: Vec<String>,
    parallel: usize,
    context: &Context,
) -> Vec<TargetRemoval> {
    let limits = Limits { parallel, cancel: Some(context.cancel.clone()) };
    let outcomes = crate::fanout::ordered(
        targets.clone(),
        limits,
        |_, target| {
            let host = context.connections.get(&target).cloned();
            let unreached = context.unreached.iter().find(|u| u.target == target).cloned();
            let (job, events) = (Arc::clone(&job), context.events.clone());
            async move { remove_on(&job, target, host, unreached, &events).await }
        },
        |_, target| {
            let skipped = TargetRemoval {
                target,
                status: Status::Skipped,
                containers: Vec::new(),
                error: Some("not started: interrupted".into()),
                duration: Duration::ZERO,
            };
            finished(&context.events, &skipped);
        },
    )
    .await;
    targets
        .into_iter()
        .zip(outcomes)
        .map(|(target, outcome)| {
            outcome.unwrap_or_else(|unfinished| {
                let status = if matches!(unfinished, crate::fanout::Unfinished::Skipped) {
                    Status::Skipped
                } else {
                    Status::Error
                };
                TargetRemoval {
                    target,
                    status,
                    containers: Vec::new(),
                    error: Some(unfinished.to_string()),
                    duration: Duration::ZERO,
                }
            })
        })
        .collect()
}

/// Removes the app's containers on one target over the lock's connection to it.
async fn remove_on(
    job: &Job,
    target: String,
    host: Option<Arc<dyn crate::host::Host>>,
    unreached: Option<crate::fanout::Unreached>,
    events: &Events,
) -> TargetRemoval {
    let started = Instant::now();
    let mut removed = TargetRemoval {
        target,
        status: Status::Error,
        containers: Vec::new(),
        error: None,
        duration: Duration::ZERO,
    };
    let Some(host) = host else {
        // The session could not reach it (or refused its host key): reported as it found it.
        match unreached {
            Some(u) => {
                (removed.status, removed.error, removed.duration) = (u.status, Some(u.error), u.duration)
            }
            None => removed.error = Some("unreachable: no connection to it".into()),
        }
        finished(events, &removed);
        return removed;
    };
    let _ = events.send(Event::TargetStep { target: removed.target.clone(), step: "removing".into() });
    // The route first, before its containers stop: the proxy answers "no route" rather than
    // sending requests to a container that is going away. A route that cannot be removed
    // fails the target with nothing else removed.
    let result = match crate::proxy::remove(&*host, &job.app, &job.environment).await {
        Ok(dropped) => {
            if dropped {
                let step = "removed its route from the proxy".to_string();
                let _ = events.send(Event::TargetStep { target: removed.target.clone(), step });
            }
            crate::docker::remove_all(&*host, &job.app, &job.environment).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(crate::docker::RemovedAll { containers: names, leftovers }) => {
            // As a deployment reports them before it clears them: the outcome of a replace step
            // whose runner died is told, not lost.
            for l in &leftovers {
                let step = format!(
                    "an earlier replace step here (deployment {}, {}) ended with nobody to read it: {}",
                    l.deployment, l.version, l.outcome
                );
                let _ = events.send(Event::TargetStep { target: removed.target.clone(), step });
            }
            let step = if names.is_empty() {
                "nothing to remove".to_string()
            } else {
                format!("removed {}", names.join(", "))
            };
            let _ = events.send(Event::TargetStep { target: removed.target.clone(), step });
            removed.status = Status::Ok;
            removed.containers = names;
        }
        Err(e) => {
            removed.status = if e.is_connection() { Status::Error } else { Status::Failed };
            removed.error = Some(e.to_string());
        }
    }
    removed.duration = started.elapsed();
    // A local target is the machine that holds the audit log itself: no mirror.
    if !host.is_local() {
        let outcome = match &removed.error {
            Some(e) => format!("{}: {e}", removed.status.label()),
            None => format!("removed {}", crate::output::count(removed.containers.len(), "container")),
        };
        let line = format!("{} -> {outcome}", job.mirror);
        crate::fanout::write_mirror(&*host, &removed.target, &line, &job.secrets).await;
    }
    finished(events, &removed);
    removed
}

/// The target's end as an event (the audit trail records it as its `target_outcome`).
fn finished(events: &Events, removed: &TargetRemoval) {
    let _ = events.send(Event::TargetFinished {
        target: removed.target.clone(),
        status: removed.status,
        exit_code: None,
        signal: None,
        error: removed.error.clone(),
        ms: millis(removed.duration),
        action: None,
        container: None,
        logs: Vec::new(),
    });
}

/// The run's end as the session records it: counts and the removal.
fn finish(removed: Vec<TargetRemoval>, interrupted: bool) -> Finish<(Vec<TargetRemoval>, bool)> {
    let count = |s: Status| removed.iter().filter(|r| r.status == s).count();
    let removal = Removal {
        complete: !interrupted && removed.iter().all(|r| r.status == Status::Ok),
        targets: removed
            .iter()
            .map(|r| (r.target.clone(), RemovedTarget { status: r.status, containers: r.containers.clone() }))
            .collect::<BTreeMap<_, _>>(),
    };
    Finish {
        ok: count(Status::Ok),
        failed: removed.len() - count(Status::Ok) - count(Status::Skipped),
        skipped: count(Status::Skipped),
        interrupted,
        stopped: None,
        record: Some(RunFinished { removal: Some(removal), ..RunFinished::default() }),
        digest: None,
        after: None,
        value: (removed, interrupted),
    }
}

/// The table printed after the run (not with `--output json`, whose events say it all).
fn summary(removed: &[TargetRemoval], what: &str) -> String {
    let rows: Vec<Vec<String>> = removed
        .iter()
        .map(|r| {
            vec![
                r.target.clone(),
                r.status.label().to_string(),
                if r.containers.is_empty() { "-".into() } else { r.containers.join(", ") },
                crate::duration::format_short(r.duration),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = format!("\n{what}\n");
    out += &table(&["TARGET", "STATUS", "REMOVED", "TIME", "DETAIL"], &rows);
    out
}
