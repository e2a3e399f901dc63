//! Stage 2: which targets a deployment touches.
//!
//! The environment's targets, intersected with the app's roles, then with `--limit` globs. A limit
//! that selects nothing is an error rather than a silent no-op: a cron job with a typo in its
//! `--limit` must fail loudly, not report success forever.

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::glob;
use crate::inventory::{App, Environment, Inventory, Target};

/// Errors of the selection stage.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A `--limit` pattern matched none of the app's targets in the environment.
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
                    format!("targets of app {} in {}: {}{more}", app.name, env.name, names.join(", "))
                });
            return Err(SelectError::LimitMatchesNothing(
                Diagnostic::new(format!(
                    "--limit \"{pattern}\" matches none of the {} targets of app \"{}\" in environment \"{}\"",
                    candidates.len(),
                    app.name,
                    env.name
                ))
                .help(help),
            ));
        }
    }
    Ok(candidates.into_iter().filter(|t| patterns.iter().any(|p| glob::matches(p, &t.name))).collect())
}
