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
