//! The deployments on record: what the audit log says ran where.
//!
//! A deployment's `run_finished` record keeps, per target, the container name, the config hash
//! and the exact `docker run` argv (without the per-deployment labels; secrets are never in it,
//! only their names), plus the image by digest. `status` compares targets against it, `plan
//! --diff` explains a replacement with it, and `rollback` runs it again: a rollback does not
//! depend on leftover containers or on the inventory still saying what it said then.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apply::TargetReport;
use crate::audit::Record;
use crate::docker::Action;
use crate::plan::Plan;
use crate::report::Status;

/// What one target ran in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// Container name.
    pub container: String,
    /// The planned config hash.
    pub config_hash: String,
    /// The `docker run` argv without per-deployment labels.
    pub argv: Vec<String>,
    /// Names of the secrets delivered through the env file.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// How it ended.
    pub status: Status,
    /// What happened to its container.
    pub action: Option<Action>,
}

/// The deployment part of a `run_finished` record's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The image reference that ran (`repo@digest` once pinned).
    pub image: String,
    /// Every target succeeded (or was already up to date) and the rollout was not cut short.
    pub succeeded: bool,
    /// The deployment this one rolled back to, for rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// Per target.
    pub targets: BTreeMap<String, TargetRecord>,
}

/// The removal part of a `run_finished` record's detail (`ferry remove`): the app's containers
/// in the environment were stopped and removed on these targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Every selected target ended with none of the app's containers left.
    pub complete: bool,
    /// Per target: how it ended and the containers removed there.
    pub targets: BTreeMap<String, RemovedTarget>,
}

/// What `ferry remove` did on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedTarget {
    /// How it ended.
    pub status: Status,
    /// The containers removed (the app's current one and any ferry kept, such as an old one).
    #[serde(default)]
    pub containers: Vec<String>,
}

impl RemovedTarget {
    /// The removal ran on this target, or may have (a connection lost half way): a target
    /// skipped after a signal, or refused for its host key, was never touched, and still runs
    /// what its last deployment left there.
    pub fn acted(&self) -> bool {
        !matches!(self.status, Status::Skipped | Status::Refused)
    }
}

impl Removal {
    /// The targets the removal ran on (not the ones an interrupt skipped), in name order.
    pub fn acted_on(&self) -> Vec<&str> {
        self.targets.iter().filter(|(_, t)| t.acted()).map(|(name, _)| name.as_str()).collect()
    }
}

/// One removal read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The run's id.
    pub id: String,
    /// When it finished.
    pub time: String,
    /// Who ran it.
    pub actor: crate::audit::Actor,
    /// What it did.
    pub removal: Removal,
}

/// What changed an app in an environment, as the record tells it: a deployment (deploy,
/// rollback, promote) or a removal. Read in order, so that what came last wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A deployment.
    Deployed(Deployment),
    /// A removal.
    Removed(Removed),
}

/// One deployment read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Deployment id.
    pub id: String,
    /// `deploy`, `rollback` or `promote`.
    pub command: String,
    /// When it finished.
    pub time: String,
    /// Tag asked for.
    pub version: String,
    /// Digest it ran, when known.
    pub digest: Option<String>,
    /// The rest.
    pub recorded: Recorded,
}

/// The `deployment` detail for a finished rollout.
pub fn detail(
    plan: &Plan,
    reports: &[TargetReport],
    interrupted: bool,
    rollback_to: Option<&str>,
) -> Recorded {
    let outcome: BTreeMap<&str, &TargetReport> = reports.iter().map(|r| (r.target.as_str(), r)).collect();
    let targets = plan
        .targets
        .iter()
        .map(|t| {
            let report = outcome.get(t.target.as_str());
            let record = TargetRecord {
                container: t.container.clone(),
                config_hash: t.config_hash.clone(),
                argv: t.stable_argv.clone(),
                secrets: t.secrets.clone(),
                status: report.map_or(Status::Skipped, |r| r.status),
                action: report.and_then(|r| r.action),
            };
            (t.target.clone(), record)
        })
        .collect();
    Recorded {
        image: plan.image.clone(),
        succeeded: !interrupted && !reports.is_empty() && reports.iter().all(|r| r.status == Status::Ok),
        rollback_to: rollback_to.map(str::to_string),
        targets,
    }
}

/// The deployment a record holds, when it is the end of a deployment of `app` in `environment`.
pub fn from_record(record: Record, app: &str, environment: &str) -> Option<Deployment> {
    let ours = matches!(record.entry.command.as_str(), "deploy" | "rollback" | "promote")
        && record.entry.app.as_deref() == Some(app)
        && record.entry.environment.as_deref() == Some(environment);
    if !ours {
        return None;
    }
    let recorded = record.run_finished()?.deployment?;
    let entry = record.entry;
    Some(Deployment {
        id: entry.run,
        command: entry.command,
        time: record.time,
        version: entry.version.unwrap_or_default(),
        digest: entry.digest,
        recorded,
    })
}

/// The change a record holds, when it is the end of a deployment or a removal of `app` in
/// `environment`.
pub fn change_from_record(record: Record, app: &str, environment: &str) -> Option<Change> {
    let removal = record.entry.command == "remove"
        && record.entry.app.as_deref() == Some(app)
        && record.entry.environment.as_deref() == Some(environment);
    if !removal {
        return from_record(record, app, environment).map(Change::Deployed);
    }
    let removal = record.run_finished()?.removal?;
    Some(Change::Removed(Removed { id: record.entry.run, time: record.time, actor: record.actor, removal }))
}

/// Where an app stands in an environment after `changes` (oldest first): its last successful
/// deployment, and the removals since then (which take the app off their targets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// The last successful deployment.
    pub last: Option<Deployment>,
    /// The removals after it, oldest first.
    pub removals: Vec<Removed>,
}

impl Standing {
    /// Reads `changes`, oldest first. A removal that ran on no target (interrupted before it
    /// started anywhere) changed nothing and does not count.
    pub fn of(changes: &[Change]) -> Standing {
        let mut standing = Standing::default();
        for change in changes {
            match change {
                Change::Deployed(d) if d.recorded.succeeded => {
                    standing = Standing { last: Some(d.clone()), removals: Vec::new() };
                }
                Change::Deployed(_) => {}
                Change::Removed(r) if r.removal.acted_on().is_empty() => {}
                Change::Removed(r) => standing.removals.push(r.clone()),
            }
        }
        standing
    }

    /// The newest removal since the last success that ran on `target` (a target it skipped
    /// still runs what the last deployment left there).
    pub fn removed_from(&self, target: &str) -> Option<&Removed> {
        self.removals.iter().rev().find(|r| r.removal.targets.get(target).is_some_and(RemovedTarget::acted))
    }

    /// The newest removal since the last success, if any.
    pub fn last_removal(&self) -> Option<&Removed> {
        self.removals.last()
    }

    /// The newest removal, when the removals since the last success ran on every target of
    /// that deployment: none of the release it deployed is left in the environment. A removal
    /// from some of its targets (`remove --limit`) leaves the release running on the others.
    pub fn removed_everywhere(&self) -> Option<&Removed> {
        let last = self.last.as_ref()?;
        let gone = last.recorded.targets.keys().all(|t| self.removed_from(t).is_some());
        if gone { self.last_removal() } else { None }
    }
}

/// The deployments among `changes`, in order.
pub fn deployed(changes: &[Change]) -> Vec<Deployment> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Deployed(d) => Some(d.clone()),
            Change::Removed(_) => None,
        })
        .collect()
}

/// The removal that came after every deployment attempt in `changes` (the app is off the
/// environment, or part of it, since then), if the last change is one. A removal that ran on
/// no target (interrupted before it started anywhere) changed nothing and is passed over.
pub fn removed_last(changes: &[Change]) -> Option<&Removed> {
    let last = changes.iter().rev().find(|c| match c {
        Change::Removed(r) => !r.removal.acted_on().is_empty(),
        Change::Deployed(_) => true,
    });
    match last {
        Some(Change::Removed(r)) => Some(r),
        _ => None,
    }
}

/// Why `rollback` has nothing to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTarget {
    /// `--to` names no deployment on record, or too many, or one that failed: bad input.
    BadId(String),
    /// The record holds nothing to go back to: a failure of the command, not of its input.
    Nothing(String),
}

impl std::fmt::Display for NoTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoTarget::BadId(why) | NoTarget::Nothing(why) => f.write_str(why),
        }
    }
}

/// What `rollback` goes back to: with `to`, that deployment (an id or a unique prefix of one,
/// which must have succeeded); else the successful one before the last successful one when the
/// last attempt succeeded, or the last successful one when the last attempt failed (its targets
/// may be half way).
pub fn rollback_target<'a>(
    deployments: &'a [Deployment],
    to: Option<&str>,
) -> Result<&'a Deployment, NoTarget> {
    if let Some(id) = to {
        let found = match crate::ids::resolve(id, deployments.iter().map(|d| d.id.as_str())) {
            Ok(full) => deployments.iter().find(|d| d.id == full),
            Err(crate::ids::Unresolved::NotFound) => None,
            Err(other) => return Err(NoTarget::BadId(other.describe(id, "deployment"))),
        };
        let found = found.ok_or_else(|| NoTarget::BadId(format!("no deployment {id} on record")))?;
        if !found.recorded.succeeded {
            return Err(NoTarget::BadId(format!(
                "deployment {} did not succeed; roll back to one that did",
                found.id
            )));
        }
        return Ok(found);
    }
    let last = deployments.last().ok_or_else(|| NoTarget::Nothing("no deployment of it on record".into()))?;
    let successes: Vec<&Deployment> = deployments.iter().filter(|d| d.recorded.succeeded).collect();
    let pick = if last.recorded.succeeded { successes.iter().rev().nth(1) } else { successes.last() };
    pick.copied().ok_or_else(|| NoTarget::Nothing("no earlier successful deployment on record".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, succeeded: bool) -> Deployment {
        Deployment {
            id: id.into(),
            command: "deploy".into(),
            time: String::new(),
            version: id.into(),
            digest: None,
            recorded: Recorded {
                image: String::new(),
                succeeded,
                rollback_to: None,
                targets: BTreeMap::new(),
            },
        }
    }

    fn removed(id: &str, targets: &[&str]) -> Change {
        let targets = targets
            .iter()
            .map(|t| ((*t).to_string(), RemovedTarget { status: Status::Ok, containers: Vec::new() }))
            .collect();
        Change::Removed(Removed {
            id: id.into(),
            time: String::new(),
            actor: crate::audit::Actor {
                user: "u".into(),
                host: "h".into(),
                via: "terminal".into(),
                job: None,
            },
            removal: Removal { complete: true, targets },
        })
    }

    /// A successful deployment to `targets`.
    fn on(id: &str, targets: &[&str]) -> Change {
        let mut deployment = d(id, true);
        for t in targets {
            let record = TargetRecord {
                container: "web-prod".into(),
                config_hash: "h".into(),
                argv: Vec::new(),
                secrets: Vec::new(),
                status: Status::Ok,
                action: None,
            };
            deployment.recorded.targets.insert((*t).to_string(), record);
        }
        Change::Deployed(deployment)
    }

    /// A removal that ended on each target as given.
    fn removal(id: &str, targets: &[(&str, Status)]) -> Change {
        let Change::Removed(mut r) = removed(id, &[]) else { unreachable!() };
        for (t, status) in targets {
            r.removal
                .targets
                .insert((*t).to_string(), RemovedTarget { status: *status, containers: Vec::new() });
        }
        Change::Removed(r)
    }

    #[test]
    fn a_target_an_interrupted_removal_never_touched_is_not_removed() {
        let changes =
            [on("a", &["h1", "h2", "h3"]), removal("r", &[("h1", Status::Ok), ("h2", Status::Skipped)])];
        let standing = Standing::of(&changes);
        assert_eq!(standing.removed_from("h1").map(|r| r.id.as_str()), Some("r"));
        assert_eq!(standing.removed_from("h2"), None, "skipped: still runs deployment a");
        // A removal that failed there, or lost its connection, may have half run: it counts.
        let tried = Standing::of(&[on("a", &["h1"]), removal("r", &[("h1", Status::Error)])]);
        assert_eq!(tried.removed_from("h1").map(|r| r.id.as_str()), Some("r"));
        // Interrupted before it started anywhere (or refused everywhere): it changed nothing.
        let nothing = [on("a", &["h1"]), removal("r", &[("h1", Status::Skipped)])];
        assert_eq!(Standing::of(&nothing).last_removal(), None);
        assert_eq!(removed_last(&nothing), None, "rollback still goes back from a");
        let refused = [on("a", &["h1"]), removal("r", &[("h1", Status::Refused)])];
        assert_eq!(removed_last(&refused), None);
    }

    #[test]
    fn only_removals_from_every_target_of_the_last_success_leave_nothing_of_it() {
        let partial = Standing::of(&[on("a", &["h1", "h2"]), removal("r1", &[("h1", Status::Ok)])]);
        assert_eq!(partial.removed_everywhere(), None, "a still runs on h2");
        let both = Standing::of(&[
            on("a", &["h1", "h2"]),
            removal("r1", &[("h1", Status::Ok)]),
            removal("r2", &[("h2", Status::Failed)]),
        ]);
        assert_eq!(both.removed_everywhere().map(|r| r.id.as_str()), Some("r2"));
        let skipped = Standing::of(&[
            on("a", &["h1", "h2"]),
            removal("r", &[("h1", Status::Ok), ("h2", Status::Skipped)]),
        ]);
        assert_eq!(skipped.removed_everywhere(), None);
        assert_eq!(Standing::of(&[removal("r", &[("h1", Status::Ok)])]).removed_everywhere(), None);
    }

    #[test]
    fn a_removal_counts_until_the_next_success() {
        let ok = |id| Change::Deployed(d(id, true));
        let failed = |id| Change::Deployed(d(id, false));
        let standing = Standing::of(&[ok("a"), removed("r1", &["h1"]), failed("b"), removed("r2", &["h2"])]);
        assert_eq!(standing.last.as_ref().map(|d| d.id.as_str()), Some("a"));
        assert_eq!(standing.removed_from("h1").map(|r| r.id.as_str()), Some("r1"));
        assert_eq!(standing.removed_from("h2").map(|r| r.id.as_str()), Some("r2"));
        assert_eq!(standing.removed_from("h3"), None);
        assert_eq!(standing.last_removal().map(|r| r.id.as_str()), Some("r2"));
        let redeployed = Standing::of(&[ok("a"), removed("r1", &["h1"]), ok("c")]);
        assert_eq!((redeployed.last.map(|d| d.id), redeployed.removals.len()), (Some("c".into()), 0));
        assert_eq!(Standing::of(&[removed("r1", &["h1"])]).last, None);
    }

    #[test]
    fn only_a_removal_after_every_attempt_is_the_last_change() {
        let ok = |id| Change::Deployed(d(id, true));
        let changes = [ok("a"), removed("r", &["h1"])];
        assert_eq!(removed_last(&changes).map(|r| r.id.as_str()), Some("r"));
        assert_eq!(deployed(&changes).len(), 1);
        assert_eq!(removed_last(&[removed("r", &["h1"]), ok("b")]), None);
        assert_eq!(removed_last(&[]), None);
    }

    #[test]
    fn rollback_goes_to_the_previous_success() {
        let after_success = [d("a", true), d("b", false), d("c", true)];
        assert_eq!(rollback_target(&after_success, None).unwrap().id, "a");
        let after_failure = [d("a", true), d("b", true), d("c", false)];
        assert_eq!(rollback_target(&after_failure, None).unwrap().id, "b");
        assert!(rollback_target(&[d("a", true)], None).is_err());
        assert!(rollback_target(&[], None).is_err());
        assert_eq!(rollback_target(&after_success, Some("c")).unwrap().id, "c");
        assert!(
            rollback_target(&after_success, Some("b")).unwrap_err().to_string().contains("did not succeed")
        );
        assert!(matches!(rollback_target(&after_success, Some("zz")), Err(NoTarget::BadId(_))));
        let long = [d("0192aaaa-0001", true), d("0192aaaa-0002", true), d("0192bbbb-0001", true)];
        assert_eq!(rollback_target(&long, Some("0192b")).unwrap().id, "0192bbbb-0001", "a unique prefix");
        let ambiguous = rollback_target(&long, Some("0192aaaa")).unwrap_err().to_string();
        assert!(ambiguous.contains("0192aaaa-0001") && ambiguous.contains("0192aaaa-0002"), "{ambiguous}");
        assert!(rollback_target(&long, Some("019")).unwrap_err().to_string().contains("at least 4"));
    }
}
