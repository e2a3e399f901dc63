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
    /// Reads `changes`, oldest first.
    pub fn of(changes: &[Change]) -> Standing {
        let mut standing = Standing::default();
        for change in changes {
            match change {
                Change::Deployed(d) if d.recorded.succeeded => {
                    standing = Standing { last: Some(d.clone()), removals: Vec::new() };
                }
                Change::Deployed(_) => {}
                Change::Removed(r) => standing.removals.push(r.clone()),
            }
        }
        standing
    }

    /// The newest removal since the last success that took the app off `target`.
    pub fn removed_from(&self, target: &str) -> Option<&Removed> {
        self.removals.iter().rev().find(|r| r.removal.targets.contains_key(target))
    }

    /// The newest removal since the last success, if any.
    pub fn last_removal(&self) -> Option<&Removed> {
        self.removals.last()
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
/// environment, or part of it, since then), if the last change is one.
pub fn removed_last(changes: &[Change]) -> Option<&Removed> {
    match changes.last() {
        Some(Change::Removed(r)) => Some(r),
        _ => None,
    }
}

/// What `rollback` goes back to: with `to`, that deployment (it must have succeeded); else the
/// successful one before the last successful one when the last attempt succeeded, or the last
/// successful one when the last attempt failed (its targets may be half way).
pub fn rollback_target<'a>(
    deployments: &'a [Deployment],
    to: Option<&str>,
) -> Result<&'a Deployment, String> {
    if let Some(id) = to {
        let found =
            deployments.iter().find(|d| d.id == id).ok_or_else(|| format!("no deployment {id} on record"))?;
        if !found.recorded.succeeded {
            return Err(format!("deployment {id} did not succeed; roll back to one that did"));
        }
        return Ok(found);
    }
    let last = deployments.last().ok_or("no deployment of it on record")?;
    let successes: Vec<&Deployment> = deployments.iter().filter(|d| d.recorded.succeeded).collect();
    let pick = if last.recorded.succeeded { successes.iter().rev().nth(1) } else { successes.last() };
    pick.copied().ok_or_else(|| "no earlier successful deployment on record".to_string())
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
        assert!(rollback_target(&after_success, Some("b")).unwrap_err().contains("did not succeed"));
        assert!(rollback_target(&after_success, Some("zz")).is_err());
    }
}
