//! `ferry rollback`: run the previous successful deployment again, from its record.
//!
//! The record keeps each target's exact `docker run` argv and the image by digest, so the
//! rollback runs those bytes with that config, whatever the inventory says today and whether or
//! not an old container is still around. Secrets are the one thing not on record: their current
//! values go into the env file (rotating a secret is never undone by a rollback). The health gate
//! and rollout policy are today's. It is audited as a `rollback`, naming the deployment it
//! returns to, and it is itself a deployment that a later rollback can return from. After a
//! `ferry remove`, a rollback without `--to` redeploys the last successful deployment (the one
//! that ran before the removal).

use std::sync::Arc;

use super::deploy::{Kind, execute};
use super::{new_deployment_id, store};
use crate::deployments;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::OutputFormat;
use crate::planning::RecordPlanner;
use crate::render::Renderer;
use crate::request::Rollback as RollbackArgs;

/// Runs `ferry rollback`.
pub fn run(inventory: Inventory, args: &RollbackArgs, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?.name.clone();
    let env = inventory.environment(&args.environment)?.name.clone();
    inventory.app(&app)?.check_deploys_to(&env)?;
    let freeze = super::deploy::freeze_gate(&inventory, "rollback", &env, &args.apply)?;
    let store = store(&inventory)?;
    let changes = store.changes(&app, &env)?;
    let history = deployments::deployed(&changes);
    // After a removal, "the previous deployment" is the one that ran before it: the last
    // successful one.
    let after_removal = deployments::removed_last(&changes).map(|removed| {
        let last = history.iter().rev().find(|d| d.recorded.succeeded).map(|d| d.id.clone());
        (removed.clone(), last)
    });
    let to_id = match (&args.to, &after_removal) {
        (None, Some((_, Some(last)))) => Some(last.clone()),
        _ => args.to.clone(),
    };
    if let (None, Some((removed, _))) = (&args.to, &after_removal) {
        eprintln!(
            "rollback: {app} was removed from {env} {} by {} (run {}); redeploying its last successful deployment",
            removed.time,
            removed.actor.describe(),
            removed.id
        );
    }
    let to = deployments::rollback_target(&history, to_id.as_deref()).map_err(|why| {
        let said = Diagnostic::new(format!("cannot roll back {app} in {env}: {why}"))
            .help(format!("`ferry history {app} --env {env}` lists the deployments on record"));
        match why {
            // A --to that names no deployment (or several) is the command line's fault: exit 2.
            deployments::NoTarget::BadId(_) => Error::Input(said),
            deployments::NoTarget::Nothing(_) => Error::Failed(said),
        }
    })?;
    let renderer = Renderer::new(&inventory).map_err(Error::Render)?;
    let hash_key = crate::planning::hash_key(&*store)?;
    let planner = RecordPlanner {
        inventory: Arc::new(inventory),
        renderer,
        app: app.clone(),
        environment: env.clone(),
        record: to.clone(),
        deployment: new_deployment_id(),
        hash_key,
    };
    let plan = planner.plan(to.digest.as_deref())?;
    eprintln!(
        "rollback: {app} in {env} returns to deployment {} ({} {}, finished {})",
        to.id,
        to.version,
        to.digest.as_deref().unwrap_or("digest not recorded"),
        to.time
    );
    let inventory = Arc::clone(&planner.inventory);
    let to_id = to.id.clone();
    let notes =
        super::deploy::Notes { rollback_to: Some(to_id), freeze_override: freeze, ..Default::default() };
    execute(&inventory, plan, Arc::new(planner), Kind::Rollback, &args.apply, output, notes)
}
