//! Stages 2–5 wired together: select → vars → render → plan, for one app in one environment.
//!
//! Three things render an app for a target: the plan from the inventory (`check`, `plan`,
//! `deploy`, `promote`), the plan rebuilt from a deployment record (`rollback`), and an app's
//! `post_deploy` script once its new container runs. They must see the same names with the same
//! values, so they share one [`Release`]: the secrets and their keyed hashes (resolved once per
//! plan, not per target), the image reference, and [`Release::context`], the one place a
//! template context is built. A record plan differs only in where each target's argv comes from
//! (the record, not the template), never in how the rest is computed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::apply::Planner;
use crate::deployments::Deployment;
use crate::diagnostic::Diagnostic;
use crate::docker::ContainerDetails;
use crate::error::Error;
use crate::inventory::{self, App, Environment, Inventory, Target};
use crate::plan::{Plan, TargetInput, TargetPlan};
use crate::render::{Context, Renderer};
use crate::request::Set;
use crate::vars::{self, MissingSecrets, Secrets, Variables};

/// Reads a variable of the runner's environment (secrets).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// What to plan: one app in one environment, narrowed and overridden from the command line.
#[derive(Clone)]
pub struct PlanRequest<'a> {
    /// App name.
    pub app: &'a str,
    /// Environment name.
    pub environment: &'a str,
    /// Tag to deploy.
    pub version: &'a str,
    /// Digest, once resolved.
    pub digest: Option<&'a str>,
    /// `--limit` globs.
    pub limits: &'a [String],
    /// `--set` pairs.
    pub sets: &'a [Set],
    /// The deployment id to stamp into labels.
    pub deployment: &'a str,
    /// Where secrets with an `env` source are read from.
    pub env: EnvLookup<'a>,
    /// Whether an unavailable secret fails the plan or is reported in [`Plan::problems`].
    pub missing_secrets: vars::MissingSecrets,
    /// The key of the secrets' hashes in the config hash (see [`hash_key`]).
    pub hash_key: &'a [u8],
}

/// The key of the secret hashes: `FERRY_HASH_KEY` when set (the same on every machine that
/// deploys), else the store's own random key, made once and kept with the records. Never a
/// value derived from public names: then a weak secret could be guessed offline from a
/// container's `ferry.config-hash` label.
pub fn hash_key(store: &dyn crate::store::Store) -> Result<Vec<u8>, Error> {
    match process_env("FERRY_HASH_KEY").filter(|k| !k.is_empty()) {
        Some(key) => Ok(key.into_bytes()),
        None => Ok(store.hash_key()?),
    }
}

/// One app × environment × version being planned: what every target's plan shares.
pub struct Release<'a> {
    inventory: &'a Inventory,
    app: &'a App,
    env: &'a Environment,
    version: &'a str,
    digest: Option<&'a str>,
    deployment: &'a str,
    sets: &'a [Set],
    image: String,
    secrets: Secrets,
    secret_hashes: BTreeMap<String, String>,
    problems: Vec<Diagnostic>,
}

impl<'a> Release<'a> {
    /// Resolves the release's secrets and image; `image` overrides the reference (a record's).
    pub fn new(
        inventory: &'a Inventory,
        request: &PlanRequest<'a>,
        image: Option<String>,
    ) -> Result<Self, Error> {
        let app = inventory.app(request.app)?;
        let env = inventory.environment(request.environment)?;
        // Every plan passes here (deploy, plan, promote, rollback): none for an environment the
        // app does not deploy to, whatever the command checked first.
        app.check_deploys_to(&env.name)?;
        // Checked here too: a version read back from a record did not pass the command line.
        crate::request::check_tag(request.version)?;
        let (secrets, problems) =
            vars::resolve_secrets(inventory, app, env, request.env, request.missing_secrets)?;
        let secret_hashes =
            crate::plan::secret_hashes(&app.name, &env.name, &secrets, Some(request.hash_key));
        Ok(Release {
            inventory,
            app,
            env,
            version: request.version,
            digest: request.digest,
            deployment: request.deployment,
            sets: request.sets,
            image: image.unwrap_or_else(|| image_reference(inventory, app, request.version, request.digest)),
            secrets,
            secret_hashes,
            problems,
        })
    }

    /// The target's resolved variables (with `--set` on top).
    pub fn variables(&self, target: &Target) -> Variables {
        vars::resolve(self.inventory, self.app, self.env, Some(target), self.sets)
    }

    /// The template context for `target`: the one place it is built.
    pub fn context<'v>(&'v self, target: &'v Target, variables: &'v Variables) -> Context<'v> {
        Context {
            vars: variables,
            app: self.app,
            environment: &self.env.name,
            target,
            image: &self.image,
            version: self.version,
            deployment_id: self.deployment,
        }
    }

    /// What a target's plan needs besides its argv.
    pub fn input<'v>(&'v self, target: &'v Target, container: &'v str) -> TargetInput<'v> {
        TargetInput {
            target,
            app: &self.app.name,
            environment: &self.env.name,
            container,
            image: &self.image,
            version: self.version,
            digest: self.digest,
            deployment: self.deployment,
            secrets: &self.secrets,
            secret_hashes: &self.secret_hashes,
            route: self.app.route(&self.env.name),
            networks: self.app.networks(&self.env.name),
            volumes: self.app.volumes(&self.env.name),
        }
    }

    /// The plan of these targets.
    pub fn plan(self, targets: Vec<TargetPlan>) -> Plan {
        tracing::debug!(app = %self.app.name, environment = %self.env.name, targets = targets.len(), "plan built");
        Plan {
            schema: crate::plan::SCHEMA_VERSION,
            app: self.app.name.clone(),
            environment: self.env.name.clone(),
            version: self.version.to_string(),
            image: self.image,
            digest: self.digest.map(str::to_string),
            deployment: self.deployment.to_string(),
            rollout: self.env.rollout,
            targets,
            problems: self.problems,
        }
    }
}

/// Runs select → vars → render → plan for one app in one environment.
pub fn build_plan(
    inventory: &Inventory,
    renderer: &Renderer,
    request: &PlanRequest<'_>,
) -> Result<Plan, Error> {
    build_plan_as(inventory, renderer, request, None)
}

/// [`build_plan`], with `image` (an image id, `--archive`) instead of the app's reference.
pub fn build_plan_as(
    inventory: &Inventory,
    renderer: &Renderer,
    request: &PlanRequest<'_>,
    image: Option<String>,
) -> Result<Plan, Error> {
    let (app, env) = (inventory.app(request.app)?, inventory.environment(request.environment)?);
    crate::request::check_tag(request.version)?;
    let targets = crate::select::select(inventory, app, env, request.limits)?;
    let release = Release::new(inventory, request, image)?;
    let container = inventory::container_name(release.app, &release.env.name);
    // One thread on purpose: on two cores, threads saved 0.08 s of 0.6 s for 10,000 targets but
    // raised peak memory from 84 to 121 MB (a malloc arena per thread).
    let mut plans = Vec::with_capacity(targets.len());
    for target in targets {
        let variables = release.variables(target);
        let rendered = renderer.render(&release.context(target, &variables))?;
        let plan = crate::plan::target_plan(&release.input(target, &container), rendered);
        tracing::trace!(target = %plan.target, config_hash = %plan.config_hash, "target planned");
        plans.push(plan);
    }
    Ok(release.plan(plans))
}

/// The app's image repository as targets pull it: `registry/repo` (with a feed), else `repo`.
pub fn repository(inventory: &Inventory, app: &App) -> String {
    match app.feed.as_ref().and_then(|f| inventory.feeds.get(f)) {
        Some(feed) => format!("{}/{}", feed.registry, app.image),
        None => app.image.clone(),
    }
}

/// `registry/repo@digest` when the digest is known, else `registry/repo:tag`.
pub fn image_reference(inventory: &Inventory, app: &App, version: &str, digest: Option<&str>) -> String {
    let repository = repository(inventory, app);
    match digest {
        Some(d) => format!("{repository}@{d}"),
        None => format!("{repository}:{version}"),
    }
}

/// Renders `post_deploy` for `target` in `release`, with `container` in its context; `None`
/// when the app has none.
fn post_deploy(
    release: &Release<'_>,
    renderer: &Renderer,
    target: &str,
    container: &ContainerDetails,
) -> Result<Option<String>, String> {
    let Some(target) = release.inventory.target(target) else { return Ok(None) };
    if release.app.post_deploy.is_none() {
        return Ok(None);
    }
    let variables = release.variables(target);
    renderer.render_post_deploy(&release.context(target, &variables), container).map_err(|e| e.to_string())
}

/// Plans from the inventory: the first plan, the pinned one, and `post_deploy` scripts.
pub struct InventoryPlanner {
    /// The inventory.
    pub inventory: Arc<Inventory>,
    /// Its compiled templates.
    pub renderer: Renderer,
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// Tag asked for.
    pub version: String,
    /// `--limit`.
    pub limits: Vec<String>,
    /// `--set`.
    pub sets: Vec<Set>,
    /// Deployment id.
    pub deployment: String,
    /// The digest once pinned (for `post_deploy`'s `image`).
    pub digest: Mutex<Option<String>>,
    /// The secret hashes' key ([`hash_key`]).
    pub hash_key: Vec<u8>,
    /// `--archive`: the image id the containers run, instead of the app's repository.
    pub image: Option<String>,
}

impl InventoryPlanner {
    fn request<'a>(&'a self, digest: Option<&'a str>) -> PlanRequest<'a> {
        PlanRequest {
            app: &self.app,
            environment: &self.environment,
            version: &self.version,
            digest,
            limits: &self.limits,
            sets: &self.sets,
            deployment: &self.deployment,
            env: &process_env,
            missing_secrets: MissingSecrets::Error,
            hash_key: &self.hash_key,
        }
    }

    /// The plan for `digest` (none: by tag).
    pub fn plan(&self, digest: Option<&str>) -> Result<Plan, Error> {
        build_plan_as(&self.inventory, &self.renderer, &self.request(digest), self.image.clone())
    }
}

impl Planner for InventoryPlanner {
    fn pinned(&self, digest: &str) -> Result<Plan, String> {
        if let Ok(mut pinned) = self.digest.lock() {
            *pinned = Some(digest.to_string());
        }
        self.plan(Some(digest)).map_err(|e| e.to_string())
    }

    fn post_deploy(&self, target: &str, container: &ContainerDetails) -> Result<Option<String>, String> {
        let digest = self.digest.lock().ok().and_then(|d| d.clone());
        let release = Release::new(&self.inventory, &self.request(digest.as_deref()), self.image.clone())
            .map_err(|e| e.to_string())?;
        post_deploy(&release, &self.renderer, target, container)
    }

    fn has_post_deploy(&self) -> bool {
        // An app that cannot be found is treated as having one: waiting is the safe side.
        !matches!(self.inventory.app(&self.app), Ok(app) if app.post_deploy.is_none())
    }
}

/// Plans from a deployment record (`rollback`): each target's recorded argv and the recorded
/// image, with today's secrets and health check.
pub struct RecordPlanner {
    /// The inventory.
    pub inventory: Arc<Inventory>,
    /// Its compiled templates (for today's health check and `post_deploy`).
    pub renderer: Renderer,
    /// The deployment returned to.
    pub record: Deployment,
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// This deployment's id.
    pub deployment: String,
    /// The secret hashes' key ([`hash_key`]).
    pub hash_key: Vec<u8>,
}

impl RecordPlanner {
    fn release<'a>(&'a self, digest: Option<&'a str>) -> Result<Release<'a>, Error> {
        let request = PlanRequest {
            app: &self.app,
            environment: &self.environment,
            version: &self.record.version,
            digest,
            limits: &[],
            sets: &[],
            deployment: &self.deployment,
            env: &process_env,
            missing_secrets: MissingSecrets::Error,
            hash_key: &self.hash_key,
        };
        // Without a new digest, the image is the one on record, whatever the feed says today.
        // An image id (`--archive`) is what the record ran, whatever the digest: no repository
        // has it.
        let recorded = &self.record.recorded.image;
        let image = (digest.is_none() || crate::docker::is_image_id(recorded)).then(|| recorded.clone());
        Release::new(&self.inventory, &request, image)
    }

    /// The recorded deployment as a plan: its targets that are still in the environment, each
    /// with its recorded argv, and the recorded image (or `digest`'s).
    pub fn plan(&self, digest: Option<&str>) -> Result<Plan, Error> {
        let release = self.release(digest)?;
        let mut targets = Vec::new();
        for target in release.env.targets.iter().map(|&i| &self.inventory.targets[i]) {
            let Some(recorded) = self.record.recorded.targets.get(&target.name) else { continue };
            let variables = release.variables(target);
            // Today's health check; the container's config is the record's.
            let health_cmd = self.renderer.render(&release.context(target, &variables))?.health_cmd;
            let input = release.input(target, &recorded.container);
            crate::plan::check_recorded(&input, &recorded.argv, &self.record.recorded.image).map_err(|why| {
                Error::Refused(
                    Diagnostic::new(format!(
                        "deployment {} on record for {}: {why}; ferry runs again only what it would have rendered",
                        self.record.id, target.name
                    ))
                    .help("the record was not written by ferry; `ferry audit verify`, and roll back to another deployment"),
                )
            })?;
            targets.push(crate::plan::finish(&input, recorded.argv.clone(), health_cmd));
        }
        if targets.is_empty() {
            return Err(Error::Failed(Diagnostic::new(format!(
                "none of the targets of deployment {} is in environment {} any more",
                self.record.id, release.env.name
            ))));
        }
        Ok(release.plan(targets))
    }
}

impl Planner for RecordPlanner {
    fn pinned(&self, digest: &str) -> Result<Plan, String> {
        self.plan(Some(digest)).map_err(|e| e.to_string())
    }

    fn post_deploy(&self, target: &str, container: &ContainerDetails) -> Result<Option<String>, String> {
        let release = self.release(self.record.digest.as_deref()).map_err(|e| e.to_string())?;
        post_deploy(&release, &self.renderer, target, container)
    }

    fn has_post_deploy(&self) -> bool {
        // An app that cannot be found is treated as having one: waiting is the safe side.
        !matches!(self.inventory.app(&self.app), Ok(app) if app.post_deploy.is_none())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A secret whose value also appears in a variable (`80`): the plan shows it masked, but
    /// the argv that is recorded (and a rollback runs) is the real one.
    #[test]
    fn the_recorded_argv_is_the_real_one_and_only_the_display_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/t.j2"), "docker run -p {{ port }}:{{ port }} {{ image }}")
            .unwrap();
        let text = r#"
[environments.prod]
targets = ["a"]

[targets.a]
host = "127.0.0.1"

[apps.web]
image = "acme/web"
template = "t.j2"
vars = { port = 80 }
secrets = { TOKEN = { env = "TOKEN" } }
"#;
        let source = crate::diagnostic::SourceFile::new(dir.path().join("ferry.toml"), text.to_string());
        let inventory = Inventory::parse(source, dir.path()).unwrap();
        let renderer = Renderer::new(&inventory).unwrap();
        let lookup = |name: &str| (name == "TOKEN").then(|| "80".to_string());
        let request = PlanRequest {
            app: "web",
            environment: "prod",
            version: "1.0",
            digest: None,
            limits: &[],
            sets: &[],
            deployment: "d",
            env: &lookup,
            missing_secrets: MissingSecrets::Error,
            hash_key: b"k",
        };
        let plan = build_plan(&inventory, &renderer, &request).unwrap();
        let target = &plan.targets[0];
        assert!(target.stable_argv.iter().any(|a| a == "80:80"), "{:?}", target.stable_argv);
        assert!(!target.argv.iter().any(|a| a.contains("80:80")), "shown masked: {:?}", target.argv);
        assert!(!target.display.contains("80:80"), "{}", target.display);
    }
}
