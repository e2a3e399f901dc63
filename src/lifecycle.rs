//! The lifecycle gate: a release reaches phase N only after it succeeded in phase N-1.
//!
//! `[lifecycle] phases = ["dev", "staging", "prod"]` orders environments. Deploying to a phase
//! requires a successful deployment of the *same digest* (the same bytes, whatever the tag) to
//! the nearest earlier phase that is not `optional`; an optional phase counts when it was used
//! and is skipped when it was not. The record is the audit log. Environments outside the phases,
//! and the first phase, are not gated.

use crate::deployments::Deployment;

/// What the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The environment is not gated (no lifecycle, first phase, not a phase).
    Free,
    /// The release succeeded in `phase` (deployment `deployment`).
    Passed {
        /// The earlier phase.
        phase: String,
        /// Its successful deployment.
        deployment: String,
    },
    /// No earlier phase that must be passed has a success of this release.
    Refused {
        /// The phase where it is missing.
        missing: String,
    },
}

/// The gate for deploying `release` (a digest, or a tag when no digest is known) to `environment`.
/// `successes(phase)` gives the phase's successful deployments.
pub fn check<'a>(
    phases: &[String],
    optional: &[String],
    environment: &str,
    release: &str,
    successes: impl Fn(&str) -> Vec<&'a Deployment>,
) -> Gate {
    let Some(index) = phases.iter().position(|p| p == environment) else { return Gate::Free };
    for phase in phases[..index].iter().rev() {
        if let Some(d) = successes(phase).into_iter().rev().find(|d| matches(d, release)) {
            return Gate::Passed { phase: phase.clone(), deployment: d.id.clone() };
        }
        if !optional.contains(phase) {
            return Gate::Refused { missing: phase.clone() };
        }
    }
    Gate::Free
}

/// The phase `ferry promote --to environment` takes its release from, and that release: the
/// last success of the nearest earlier phase that has one (optional phases without one are
/// passed over).
pub fn source<'a>(
    phases: &[String],
    optional: &[String],
    environment: &str,
    successes: impl Fn(&str) -> Vec<&'a Deployment>,
) -> Result<&'a Deployment, String> {
    let index = phases
        .iter()
        .position(|p| p == environment)
        .ok_or_else(|| format!("{environment} is not a lifecycle phase: nothing to promote from"))?;
    if index == 0 {
        return Err(format!("{environment} is the first phase: deploy to it with `ferry deploy`"));
    }
    for phase in phases[..index].iter().rev() {
        if let Some(d) = successes(phase).last() {
            return Ok(d);
        }
        if !optional.contains(phase) {
            return Err(format!("no successful deployment to {phase} on record"));
        }
    }
    Err("no successful deployment in an earlier phase on record".into())
}

/// A digest matches the recorded digest. A tag (an app without a feed, whose digest is known only
/// once a target pulled it) matches the recorded version: weaker, but all ferry can know before
/// the rollout.
fn matches(d: &Deployment, release: &str) -> bool {
    if release.starts_with("sha256:") { d.digest.as_deref() == Some(release) } else { d.version == release }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::deployments::Recorded;

    fn d(id: &str, digest: &str) -> Deployment {
        Deployment {
            id: id.into(),
            command: "deploy".into(),
            time: String::new(),
            version: "1.0".into(),
            digest: Some(digest.into()),
            recorded: Recorded {
                image: String::new(),
                succeeded: true,
                rollback_to: None,
                targets: BTreeMap::new(),
            },
        }
    }

    fn lookup<'a>(
        dev: &'a [Deployment],
        staging: &'a [Deployment],
        with_staging: bool,
    ) -> impl Fn(&str) -> Vec<&'a Deployment> {
        move |p: &str| match p {
            "dev" => dev.iter().collect(),
            "staging" if with_staging => staging.iter().collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_release_moves_one_phase_at_a_time() {
        let phases: Vec<String> = ["dev", "qa", "staging", "prod"].map(String::from).to_vec();
        let optional = vec!["qa".to_string()];
        let dev = [d("a", "sha256:1")];
        let staging = [d("b", "sha256:1")];
        let lookup = |with_staging: bool| lookup(&dev, &staging, with_staging);
        assert_eq!(check(&phases, &optional, "dev", "sha256:1", lookup(false)), Gate::Free);
        assert_eq!(check(&phases, &optional, "other", "sha256:1", lookup(false)), Gate::Free);
        // qa is optional and unused: staging may follow dev.
        assert_eq!(
            check(&phases, &optional, "staging", "sha256:1", lookup(false)),
            Gate::Passed { phase: "dev".into(), deployment: "a".into() }
        );
        assert_eq!(
            check(&phases, &optional, "prod", "sha256:1", lookup(false)),
            Gate::Refused { missing: "staging".into() }
        );
        assert_eq!(
            check(&phases, &optional, "prod", "sha256:2", lookup(true)),
            Gate::Refused { missing: "staging".into() },
            "another digest never passed staging"
        );
        assert_eq!(source(&phases, &optional, "prod", lookup(true)).unwrap().id, "b");
        assert!(source(&phases, &optional, "prod", lookup(false)).unwrap_err().contains("staging"));
        assert!(source(&phases, &optional, "dev", lookup(true)).is_err());
        // Without a feed, only the tag is known before the rollout: it matches the version.
        assert_eq!(
            check(&phases, &optional, "prod", "1.0", lookup(true)),
            Gate::Passed { phase: "staging".into(), deployment: "b".into() }
        );
    }
}
