//! `ferry rollback`: run the previous successful deployment again, from its record.
//!
//! The record keeps each target's exact `docker run` argv and the image by digest, so the
//! rollback runs those bytes with that config, whatever the inventory says today and whether or
//! not an old container is still around. Secrets are the one thing not on record: their current
//! values go into the env file (rotating a secret is never undone by a rollback). The health gate
//! and rollout policy are today's. It is audited as a `rollback`, naming the deployment it
//! returns to, and it is itself a deployment that a later rollback can return from.

use std::sync::Arc;

use super::deploy::{Kind, execute};
use super::{new_deployment_id, process_env, store};
use crate::apply::Planner;
use crate::deployments::{self, Deployment};
use crate::diagnostic::Diagnostic;
use crate::docker::ContainerDetails;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::OutputFormat;
use crate::plan::{Plan, TargetInput, finish};
use crate::render::{Context, Renderer};
use crate::request::Rollback as RollbackArgs;
use crate::vars::{self, MissingSecrets};

/// Runs `ferry rollback`.
pub fn run(inventory: Inventory, args: &RollbackArgs, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?.name.clone();
    let env = inventory.environment(&args.environment)?.name.clone();
    let history = store(&inventory).deployments(&app, &env)?;
    let to = deployments::rollback_target(&history, args.to.as_deref()).map_err(|why| {
        Error::Failed(
            Diagnostic::new(format!("cannot roll back {app} in {env}: {why}"))
                .help(format!("`ferry history {app} --env {env}` lists the deployments on record")),
        )
    })?;
    let renderer = Renderer::new(&inventory).map_err(Error::Render)?;
    let planner = RecordPlanner {
        inventory: Arc::new(inventory),
        renderer,
        app: app.clone(),
        environment: env.clone(),
        record: to.clone(),
        deployment: new_deployment_id(),
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
    let notes = super::deploy::Notes { rollback_to: Some(to_id), ..Default::default() };
    execute(&inventory, plan, Arc::new(planner), Kind::Rollback, &args.apply, output, notes)
}

/// Plans from a deployment record.
struct RecordPlanner {
    inventory: Arc<Inventory>,
    renderer: Renderer,
    app: String,
    environment: String,
    record: Deployment,
    deployment: String,
}

impl RecordPlanner {
    /// The recorded deployment as a plan: its targets that are still in the environment, each
    /// with its recorded argv, and the recorded image (or `digest`'s).
    fn plan(&self, digest: Option<&str>) -> Result<Plan, Error> {
        let inventory = &self.inventory;
        let app = inventory.app(&self.app)?;
        let env = inventory.environment(&self.environment)?;
        let (secrets, problems) =
            vars::resolve_secrets(inventory, app, env, &process_env, MissingSecrets::Error)?;
        let hash_key = process_env("FERRY_HASH_KEY");
        let secret_hashes = crate::plan::secret_hashes(
            &app.name,
            &env.name,
            &secrets,
            hash_key.as_deref().map(str::as_bytes),
        );
        let image = match digest {
            Some(d) => super::image_reference(inventory, app, &self.record.version, Some(d)),
            None => self.record.recorded.image.clone(),
        };
        let mut targets = Vec::new();
        for target in super::environment_targets(inventory, env) {
            let Some(recorded) = self.record.recorded.targets.get(&target.name) else { continue };
            let variables = vars::resolve(inventory, app, env, Some(target), &[]);
            let ctx = Context {
                vars: &variables,
                app,
                environment: &env.name,
                target,
                image: &image,
                version: &self.record.version,
                deployment_id: &self.deployment,
            };
            // Today's health check; the container's config is the record's.
            let health_cmd = self.renderer.render(&ctx)?.health_cmd;
            let input = TargetInput {
                target,
                app: &app.name,
                environment: &env.name,
                container: &recorded.container,
                image: &image,
                version: &self.record.version,
                digest,
                deployment: &self.deployment,
                secrets: &secrets,
                secret_hashes: &secret_hashes,
            };
            targets.push(finish(&input, recorded.argv.clone(), health_cmd));
        }
        if targets.is_empty() {
            return Err(Error::Failed(Diagnostic::new(format!(
                "none of the targets of deployment {} is in environment {} any more",
                self.record.id, env.name
            ))));
        }
        Ok(Plan {
            schema: crate::plan::SCHEMA_VERSION,
            app: app.name.clone(),
            environment: env.name.clone(),
            version: self.record.version.clone(),
            image,
            digest: digest.map(str::to_string),
            deployment: self.deployment.clone(),
            rollout: env.rollout,
            targets,
            problems,
        })
    }
}

impl Planner for RecordPlanner {
    fn pinned(&self, digest: &str) -> Result<Plan, String> {
        self.plan(Some(digest)).map_err(|e| e.to_string())
    }

    fn post_deploy(&self, target: &str, container: &ContainerDetails) -> Result<Option<String>, String> {
        let post = super::deploy::PostDeploy {
            inventory: &self.inventory,
            renderer: &self.renderer,
            app: &self.app,
            environment: &self.environment,
            version: &self.record.version,
            sets: &[],
            deployment: &self.deployment,
        };
        post.render(target, self.record.digest.as_deref(), container)
    }
}
