//! Stage 2: which targets a deployment touches.
//!
//! The environment's targets, intersected with the app's roles (or `--role` for commands that are
//! not about an app), then with `--limit` globs. A limit or role that selects nothing is an error
//! rather than a silent no-op: a cron job with a typo in its `--limit` must fail loudly, not
//! report success forever.

use std::collections::BTreeSet;

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::glob;
use crate::inventory::{App, Environment, Inventory, Target};

/// Errors of the selection stage.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A `--limit` pattern or `--role` matched none of the candidate targets.
    #[error("{0}")]
    LimitMatchesNothing(Diagnostic),
}

/// The targets of `app` in `env`, restricted by `limits` (globs; each may be a comma list).
pub fn select<'a>(
    inventory: &'a Inventory,
    app: &App,
    env: &Environment,
    limits: &[String],
) -> Result<Vec<&'a Target>, SelectError> {
    let candidates: Vec<&Target> = env
        .targets
        .iter()
        .map(|&i| &inventory.targets[i])
        .filter(|t| app.roles.as_ref().is_none_or(|roles| t.roles.iter().any(|r| roles.contains(r))))
        .collect();
    limit(candidates, limits, &format!("app \"{}\" in environment \"{}\"", app.name, env.name))
}

/// The targets of `env` that have one of `roles` (all when empty), restricted by `limits`: the
/// selection of commands that are not about an app (`ferry run`, `ferry trust`).
pub fn select_environment<'a>(
    inventory: &'a Inventory,
    env: &Environment,
    roles: &[String],
    limits: &[String],
) -> Result<Vec<&'a Target>, SelectError> {
    let targets: Vec<&Target> = env.targets.iter().map(|&i| &inventory.targets[i]).collect();
    for role in roles {
        if !targets.iter().any(|t| t.roles.contains(role)) {
            let known: BTreeSet<&str> =
                targets.iter().flat_map(|t| t.roles.iter().map(String::as_str)).collect();
            let listed = known.iter().copied().collect::<Vec<_>>().join(", ");
            let help = did_you_mean(role, known.iter().copied())
                .unwrap_or_else(|| format!("roles in {}: {listed}", env.name));
            return Err(SelectError::LimitMatchesNothing(
                Diagnostic::new(format!("no target of environment \"{}\" has role \"{role}\"", env.name))
                    .help(help),
            ));
        }
    }
    let candidates =
        targets.into_iter().filter(|t| roles.is_empty() || t.roles.iter().any(|r| roles.contains(r)));
    limit(candidates.collect(), limits, &format!("environment \"{}\"", env.name))
}

/// Keeps the candidates matching any of `limits`; every pattern must match at least one.
fn limit<'a>(
    candidates: Vec<&'a Target>,
    limits: &[String],
    what: &str,
) -> Result<Vec<&'a Target>, SelectError> {
    let patterns: Vec<&str> =
        limits.iter().flat_map(|l| l.split(',')).map(str::trim).filter(|p| !p.is_empty()).collect();
    if patterns.is_empty() {
        return Ok(candidates);
    }
    for pattern in &patterns {
        if !candidates.iter().any(|t| glob::matches(pattern, &t.name)) {
            let help =
                did_you_mean(pattern, candidates.iter().map(|t| t.name.as_str())).unwrap_or_else(|| {
                    let names: Vec<&str> = candidates.iter().take(10).map(|t| t.name.as_str()).collect();
                    let more = if candidates.len() > 10 { ", ..." } else { "" };
                    format!("targets of {what}: {}{more}", names.join(", "))
                });
            return Err(SelectError::LimitMatchesNothing(
                Diagnostic::new(match candidates.len() {
                    1 => format!("--limit \"{pattern}\" does not match the only target of {what}"),
                    n => format!("--limit \"{pattern}\" matches none of the {n} targets of {what}"),
                })
                .help(help),
            ));
        }
    }
    Ok(candidates.into_iter().filter(|t| patterns.iter().any(|p| glob::matches(p, &t.name))).collect())
}
