//! `ferry promote APP --to ENV`: deploy, to a lifecycle phase, the release that last succeeded
//! in the phase before it: the same version and the same digest (the registry is not asked
//! again, so a tag that moved since does not change what is promoted). An app removed from every
//! target of that phase's last success (`ferry remove`) has nothing to promote: refused, exit 4.

use super::deploy::{Kind, Notes, Release, deploy_release};
use super::store;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::OutputFormat;
use crate::request::Promote as PromoteArgs;

/// Runs `ferry promote`.
pub fn run(inventory: Inventory, args: &PromoteArgs, output: OutputFormat) -> Result<i32, Error> {
    let to = &args.selection.environment;
    let app_def = inventory.app(&args.selection.app)?;
    inventory.environment(to)?;
    app_def.check_deploys_to(to)?;
    let freeze = super::deploy::freeze_gate(&inventory, "promote", to, &args.apply)?;
    // The phases the app deploys to: it is promoted from the nearest of those.
    let phases = app_def.phases(&inventory.phases);
    let app = app_def.name.clone();
    let by_phase = store(&inventory)?.successes_by_phase(&app, &phases)?;
    let successes = |phase: &str| by_phase.get(phase).map(|d| d.iter().collect()).unwrap_or_default();
    let source = crate::lifecycle::source(&phases, &inventory.optional_phases, to, successes)
        .map_err(|why| {
            // The first phase, or an environment outside the phases, has no earlier phase to
            // deploy to first: it is deployed to directly.
            let help = match phases.iter().position(|p| p == to) {
                Some(0) | None => {
                    format!("there is no earlier phase: deploy to {to} directly with `ferry deploy {app} --env {to} --version TAG`")
                }
                Some(_) => "deploy to the earlier phase first; `ferry history` shows what is on record".into(),
            };
            Error::Refused(Diagnostic::new(format!("cannot promote {app} to {to}: {why}")).help(help))
        })?;
    let source_env = by_phase
        .iter()
        .find(|(_, ds)| ds.iter().any(|d| d.id == source.id))
        .map_or_else(String::new, |(p, _)| p.clone());
    // A release taken off every target of the earlier phase no longer runs there: it is not
    // what that phase holds, so there is nothing to promote from it. Taken off some of them
    // (`remove --limit`), it still runs on the others, and is promoted as usual.
    if let Some(removed) =
        crate::deployments::Standing::of(&store(&inventory)?.changes(&app, &source_env)?).removed_everywhere()
    {
        return Err(Error::Refused(
            Diagnostic::new(format!(
                "cannot promote {app} to {to}: {app} was removed from {source_env} {} by {} (run {}), after deployment {}",
                removed.time,
                removed.actor.describe(),
                removed.id,
                source.id
            ))
            .help(format!(
                "deploy it to {source_env} again first, or deploy a version to {to} with `ferry deploy {app} --env {to} --version TAG`"
            )),
        ));
    }
    eprintln!(
        "promote: {app} {} ({}) from {source_env} (deployment {}) to {}",
        source.version,
        source.digest.as_deref().unwrap_or("no digest recorded"),
        source.id,
        to
    );
    let notes = Notes {
        promoted_from: Some(format!("{source_env} deployment {}", source.id)),
        lifecycle: Some(format!("passed {source_env} in deployment {}", source.id)),
        freeze_override: freeze,
        // An archive's deployment ran an image id that no registry has: the targets are
        // checked for it (and a target without it fails, saying so) instead of pulling.
        image: crate::docker::is_image_id(&source.recorded.image).then(|| source.recorded.image.clone()),
        ..Notes::default()
    };
    let release = Release {
        version: source.version.clone(),
        digest: source.digest.clone(),
        kind: Kind::Promote,
        notes,
    };
    deploy_release(inventory, &args.selection, release, &args.apply, output)
}
