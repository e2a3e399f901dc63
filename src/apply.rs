//! Stage 6 for deployments: roll a plan out over the targets' open connections.
//!
//! The rollout goes batch by batch (see [`crate::rollout`]). In each batch, every target first
//! pulls the image; only when the pulls are done does any running container change, so a
//! registry problem never leaves a batch half replaced. A plan usually arrives pinned (the feed
//! resolved the tag to a digest); for an app without a feed, the first batch pulls by tag and
//! pins the digest the first target got. Either way every target runs `image@digest`, so all
//! of them run the same bytes even if the tag moves during the rollout.
//!
//! One target's deployment (the docker run step):
//!
//! 1. list the app's containers in this environment (with the pull, in one round trip; this
//!    also proves `docker` answers);
//! 2. the running container's `ferry.config-hash` equals the plan's → nothing to change, but
//!    it is gated first (a container that never passed its gate is no success); equal but
//!    stopped → start it and gate it;
//! 3. else write the env file through stdin (0600), stop the old container and rename it aside,
//!    `docker run` the new one, remove the env file;
//! 4. health gate, then `post_deploy`; success → remove the old container; failure → remove the
//!    new one, give the old one its name back and start it, report the new one's last logs.
//!
//! Targets fail alone. After a batch, failures beyond `max_failures` stop the rollout, and
//! Ctrl-C stops it too: targets already started finish (or are restored), no new one starts.
//!
//! Targets the session could not reach (or whose host key it refused) are reported first, as
//! they are, and count against `max_failures` before any batch starts: when they alone exceed
//! it, the rollout stops before any target changes (with the default budget of 0, one
//! unreachable target stops a rollout of the others; `--limit` the healthy targets, or allow
//! failures, to get a fix out anyway). A budget that allows them lets the reachable targets be
//! deployed as usual.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::docker::{self, Action, Brief, ContainerDetails, DockerError, GateResult};
use crate::fanout::{Cancel, millis};
use crate::host::Host;
use crate::plan::{Plan, TargetPlan};
use crate::replace::{self, Line, Outcome};
use crate::report::{Event, Events, LineSplitter, Status};

/// What the rollout needs from the planning stages, which it cannot compute itself.
pub trait Planner: Send + Sync {
    /// The same plan, pinned to `digest` (image `repo@digest`, labels and config hashes).
    fn pinned(&self, digest: &str) -> Result<Plan, String>;
    /// The target's `post_deploy` script, rendered with the new container's details.
    fn post_deploy(&self, target: &str, container: &ContainerDetails) -> Result<Option<String>, String>;
    /// Whether the app has a `post_deploy` step at all: without one, a proxied replace step may
    /// switch as soon as its gate passes instead of waiting a round trip for ferry's decision.
    fn has_post_deploy(&self) -> bool;
}

/// Deployment settings besides the plan.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Targets at once inside a batch.
    pub parallel: usize,
    /// Replace containers even when their config hash matches.
    pub force: bool,
    /// The health gate (the plan carries each target's rendered `health.cmd`).
    pub timeout: Duration,
    /// Between health attempts.
    pub interval: Duration,
    /// Without a health check: how long a new container must keep running.
    pub grace: Duration,
    /// Written to each target's `~/.ferry/audit.log`, with the outcome.
    pub mirror: String,
    /// When the feed needs credentials: targets log in before they pull.
    pub login: Option<docker::Login>,
    /// The run's secret values, masked in the line each target's audit mirror gets (a docker
    /// error or a health check's output can echo one).
    pub secrets: Vec<crate::secret::Secret>,
    /// `[proxy]`: the image booted where a proxied app finds no proxy, and the drain limit.
    pub proxy: crate::inventory::Proxy,
    /// When `[proxy] feed` has credentials: targets log in before they pull the proxy image.
    pub proxy_login: Option<docker::Login>,
    /// `--archive`: what a target that lacks the image id is sent instead of a pull.
    pub upload: Option<Upload>,
}

/// An image archive to stream into `docker load` where the image id is missing, and the slots
/// that bound how many targets receive it at once (the runner's uplink is shared by them all).
#[derive(Debug, Clone)]
pub struct Upload {
    /// The archive, read before the rollout.
    pub archive: Arc<crate::archive::ImageArchive>,
    /// Targets sent to at once.
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// How one target ended.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// Target name.
    pub target: String,
    /// `ok`, `failed` (restored or untouched), `error` (connection lost), `unreachable`,
    /// `refused` (host key), `skipped`.
    pub status: Status,
    /// What happened to its container.
    pub action: Option<Action>,
    /// Why it failed.
    pub error: Option<String>,
    /// Time on the target.
    pub duration: Duration,
    /// The container that runs there now, after a success.
    pub container: Option<ContainerDetails>,
    /// The failed container's last log lines.
    pub logs: Vec<String>,
}

/// What the rollout did.
#[derive(Debug)]
pub struct Applied {
    /// The plan as finally run (pinned to a digest once one was pulled).
    pub plan: Plan,
    /// One report per target of the plan, in its order.
    pub reports: Vec<TargetReport>,
    /// Why the rollout stopped early, if it did (failures beyond the policy).
    pub stopped: Option<String>,
    /// Whether Ctrl-C stopped it.
    pub interrupted: bool,
}

/// What a deployment does to a target, given the container that runs there now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No container by the plan's name: run one.
    Create,
    /// The running container has the planned config: nothing to do.
    Unchanged,
    /// The container has the planned config but is stopped: start it (and gate it).
    Start,
    /// The container differs from the plan (or `--force`): replace it.
    Replace,
}

impl Decision {
    /// The word `plan --diff` shows.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Create => "create",
            Decision::Unchanged => "unchanged",
            Decision::Start => "start",
            Decision::Replace => "replace",
        }
    }
}

/// What [`decide`] needs to know about the container that has the plan's name on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live<'a> {
    /// Whether it is running.
    pub running: bool,
    /// Its `ferry.config-hash` label.
    pub config_hash: Option<&'a str>,
}

impl<'a> From<&'a Brief> for Live<'a> {
    fn from(brief: &'a Brief) -> Live<'a> {
        Live { running: brief.running, config_hash: brief.config_hash.as_deref() }
    }
}

impl<'a> From<&'a docker::Container> for Live<'a> {
    fn from(container: &'a docker::Container) -> Live<'a> {
        Live { running: container.running(), config_hash: container.label("ferry.config-hash") }
    }
}

/// The one rule for what happens to a target, shared by the rollout and `plan --diff`: same
/// config hash and running → unchanged, same hash but stopped → start, any other container →
/// replace, none → create. `force` replaces even a container with the planned config.
pub fn decide(live: Option<Live<'_>>, plan: &TargetPlan, force: bool) -> Decision {
    match live {
        None => Decision::Create,
        Some(live) if force || live.config_hash != Some(plan.config_hash.as_str()) => Decision::Replace,
        Some(Live { running: true, .. }) => Decision::Unchanged,
        Some(Live { running: false, .. }) => Decision::Start,
    }
}

/// What differs between the container that runs and the planned one, in the words of the
/// `replacing: …` step: the version, else the digest (the tag moved), else the config; the same
/// config hash is replaced only because `--force` said so.
fn why_replaced(current: &Brief, planned: &TargetPlan, version: &str, digest: Option<&str>) -> String {
    let short = |d: &str| d.get(..19).unwrap_or(d).to_string();
    if current.config_hash.as_deref() == Some(planned.config_hash.as_str()) {
        return "--force (the config is unchanged)".into();
    }
    match (current.version.as_deref(), current.digest.as_deref(), digest) {
        (Some(old), _, _) if old != version => format!("version {old} → {version}"),
        (_, Some(old), Some(new)) if old != new => {
            format!("digest {} → {} (tag {version} moved)", short(old), short(new))
        }
        _ => "the config changed".into(),
    }
}

/// The targets' connections, by target name.
pub type Connections = HashMap<String, Arc<dyn Host>>;

/// Rolls `plan` out, with the targets in `unreached` reported and left alone; see the module
/// docs.
pub async fn apply(
    mut plan: Plan,
    planner: Arc<dyn Planner>,
    connections: &Connections,
    unreached: &[crate::fanout::Unreached],
    settings: &Settings,
    events: &Events,
    cancel: Cancel,
) -> Applied {
    let count = plan.targets.len();
    let mut reports: Vec<Option<TargetReport>> = vec![None; count];
    for u in unreached {
        if let Some(i) = plan.targets.iter().position(|t| t.target == u.target) {
            let mut r = report(&u.target, u.status, Some(Action::Untouched), Some(u.error.clone()));
            r.duration = u.duration;
            finished(events, Some(&r));
            reports[i] = Some(r);
        }
    }
    let mut failures = reports.iter().flatten().count();
    let mut stopped: Option<String> = None;
    if crate::rollout::exceeded(failures, &plan.rollout) {
        let targets = if failures == 1 { "target was" } else { "targets were" };
        stopped = Some(format!(
            "rollout stopped before it began: {failures} {targets} not reached (max_failures {})",
            plan.rollout.max_failures
        ));
    }
    for (index, batch) in crate::rollout::batches(count, &plan.rollout).into_iter().enumerate() {
        // Unreached targets are reported already: a batch is the rest of its targets.
        let batch: Vec<usize> = batch.filter(|&i| reports[i].is_none()).collect();
        if batch.is_empty() {
            continue;
        }
        if *cancel.borrow() || stopped.is_some() {
            let why = stopped.clone().unwrap_or_else(|| "not started: interrupted".into());
            skip(&plan, batch, &why, &mut reports, events);
            continue;
        }
        let names = batch.iter().map(|&i| plan.targets[i].target.clone()).collect();
        let _ = events.send(Event::BatchStarted { batch: index + 1, targets: names });
        let ready =
            pull_batch(&mut plan, &planner, batch.clone(), connections, settings, events, &mut reports).await;
        let pull_failures = batch.len() - ready.len();
        if crate::rollout::exceeded(failures + pull_failures, &plan.rollout) {
            failures += pull_failures;
            let why = format!("not started: {failures} failed, more than max_failures allows");
            for (i, _) in ready {
                reports[i] = Some(report(&plan.targets[i].target, Status::Skipped, None, Some(why.clone())));
                finished(events, reports[i].as_ref());
            }
            stopped = Some(format!(
                "rollout stopped: {failures} failed (max_failures {})",
                plan.rollout.max_failures
            ));
            continue;
        }
        let done = deploy_batch(&plan, &planner, ready, connections, settings, events, cancel.clone()).await;
        for (i, r) in done {
            reports[i] = Some(r);
        }
        failures = reports.iter().flatten().filter(|r| r.status.is_failure()).count();
        if crate::rollout::exceeded(failures, &plan.rollout) {
            stopped = Some(format!(
                "rollout stopped after batch {}: {failures} failed (max_failures {})",
                index + 1,
                plan.rollout.max_failures
            ));
        }
    }
    let interrupted = *cancel.borrow();
    let reports = reports
        .into_iter()
        .zip(&plan.targets)
        .map(|(r, t)| {
            r.unwrap_or_else(|| report(&t.target, Status::Skipped, None, Some("not started".into())))
        })
        .collect();
    Applied { plan, reports, stopped, interrupted }
}

fn report(target: &str, status: Status, action: Option<Action>, error: Option<String>) -> TargetReport {
    TargetReport {
        target: target.to_string(),
        status,
        action,
        error,
        duration: Duration::ZERO,
        container: None,
        logs: Vec::new(),
    }
}

fn skip(plan: &Plan, batch: Vec<usize>, why: &str, reports: &mut [Option<TargetReport>], events: &Events) {
    for i in batch {
        reports[i] = Some(report(&plan.targets[i].target, Status::Skipped, None, Some(why.to_string())));
        finished(events, reports[i].as_ref());
    }
}

/// Pulls the image on every target of the batch (listing the app's containers in the same round
/// trip); pins the digest after the first pull. Returns the targets that are ready, with their
/// containers; the others get a failed report.
async fn pull_batch(
    plan: &mut Plan,
    planner: &Arc<dyn Planner>,
    batch: Vec<usize>,
    connections: &Connections,
    settings: &Settings,
    events: &Events,
    reports: &mut [Option<TargetReport>],
) -> Vec<(usize, Listed)> {
    let image = plan.image.clone();
    let pulls = pull_all(plan, &batch, &image, connections, settings, events).await;
    let mut digests: Vec<(usize, Option<String>)> = Vec::new();
    let mut containers: HashMap<usize, Listed> = HashMap::new();
    for (i, outcome) in pulls {
        match outcome {
            Ok((digest, _, briefs, leftovers)) => {
                digests.push((i, digest));
                containers.insert(i, (briefs, leftovers));
            }
            Err((e, ms)) => {
                let mut r = report(&plan.targets[i].target, failed_status(&e), Some(Action::Untouched), None);
                let verb = if docker::is_image_id(&image) { "load" } else { "pull" };
                r.error = Some(format!("{verb} {image}: {e}"));
                r.duration = ms;
                finished(events, Some(&r));
                reports[i] = Some(r);
            }
        }
    }
    if plan.digest.is_none() {
        let first = digests.iter().find_map(|(_, d)| d.clone());
        if let Some(digest) = first {
            match planner.pinned(&digest) {
                Ok(pinned) => *plan = pinned,
                Err(e) => {
                    for (i, _) in digests.drain(..) {
                        let r = report(
                            &plan.targets[i].target,
                            Status::Failed,
                            Some(Action::Untouched),
                            Some(e.clone()),
                        );
                        finished(events, Some(&r));
                        reports[i] = Some(r);
                    }
                    return Vec::new();
                }
            }
            // A target that got other bytes (the tag moved between pulls) pulls the pinned ones.
            let moved: Vec<usize> = digests
                .iter()
                .filter(|(_, d)| d.as_deref() != Some(digest.as_str()))
                .map(|(i, _)| *i)
                .collect();
            if !moved.is_empty() {
                let pinned_image = plan.image.clone();
                for (i, outcome) in pull_all(plan, &moved, &pinned_image, connections, settings, events).await
                {
                    if let Err((e, _)) = outcome {
                        let r = report(
                            &plan.targets[i].target,
                            failed_status(&e),
                            Some(Action::Untouched),
                            Some(format!("pull {pinned_image}: {e}")),
                        );
                        finished(events, Some(&r));
                        reports[i] = Some(r);
                        digests.retain(|(j, _)| *j != i);
                    }
                }
            }
        }
    }
    digests.into_iter().map(|(i, _)| (i, containers.remove(&i).unwrap_or_default())).collect()
}

/// A target's containers of the app, and its replace steps that ended with nobody to read them.
type Listed = (Vec<Brief>, Vec<replace::Leftover>);

type PullOutcome =
    Result<(Option<String>, bool, Vec<Brief>, Vec<replace::Leftover>), (DockerError, Duration)>;

/// Pulls `image` on the targets at `indexes`, at most `parallel` at once.
async fn pull_all(
    plan: &Plan,
    indexes: &(impl IntoIterator<Item = usize> + Clone),
    image: &str,
    connections: &Connections,
    settings: &Settings,
    events: &Events,
) -> Vec<(usize, PullOutcome)> {
    let reachable: Vec<(usize, Arc<dyn Host>)> = indexes
        .clone()
        .into_iter()
        .filter_map(|i| connections.get(&plan.targets[i].target).map(|c| (i, Arc::clone(c))))
        .collect();
    let order: Vec<usize> = reachable.iter().map(|(i, _)| *i).collect();
    let outcomes = crate::fanout::ordered(
        reachable,
        crate::fanout::Limits::parallel(settings.parallel),
        |_, (i, host)| {
            let (name, image, events) = (plan.targets[i].target.clone(), image.to_string(), events.clone());
            let (app, environment, login) =
                (plan.app.clone(), plan.environment.clone(), settings.login.clone());
            let upload = settings.upload.clone();
            async move {
                let started = Instant::now();
                if docker::is_image_id(&image) {
                    let outcome =
                        find_or_load(&*host, &name, &image, &app, &environment, upload, &events).await;
                    return outcome.map_err(|e| (e, started.elapsed()));
                }
                let _ =
                    events.send(Event::TargetStep { target: name.clone(), step: format!("pulling {image}") });
                let outcome = docker::pull_and_list(&*host, &image, &app, &environment, login.as_ref()).await;
                if let Ok((Some(digest), present, _, _)) = &outcome {
                    let step = if *present {
                        format!("{digest} is here already: not pulled")
                    } else {
                        format!("pulled {digest}")
                    };
                    let _ = events.send(Event::TargetStep { target: name, step });
                }
                outcome.map_err(|e| (e, started.elapsed()))
            }
        },
        |_, _| {},
    )
    .await;
    order
        .into_iter()
        .zip(outcomes)
        .map(|(i, outcome)| {
            // A crashed pull task fails its target like a failed pull: nothing was touched.
            let crashed = |e: crate::fanout::Unfinished| {
                Err((DockerError::Failed { step: "docker pull", message: e.to_string() }, Duration::ZERO))
            };
            (i, outcome.unwrap_or_else(crashed))
        })
        .collect()
}

/// For an image id (`--archive`, or a rollback to such a deployment): looks for it (listing
/// the containers in the same round trip); where it is missing, streams the archive into
/// `docker load`, counting the bytes sent. Without an archive a missing image is an error that
/// says how to bring it back.
async fn find_or_load(
    host: &dyn Host,
    name: &str,
    id: &str,
    app: &str,
    environment: &str,
    upload: Option<Upload>,
    events: &Events,
) -> Found {
    let step = |step: String| {
        let _ = events.send(Event::TargetStep { target: name.to_string(), step });
    };
    let (_, present, briefs, leftovers) = docker::pull_and_list(host, id, app, environment, None).await?;
    if present {
        step(format!("{id} is here already: nothing sent (0 bytes)"));
        return Ok((Some(id.to_string()), true, briefs, leftovers));
    }
    let Some(upload) = upload else {
        return Err(DockerError::Failed {
            step: "docker image inspect",
            message: format!(
                "image {id} is not on this target any more, and no registry has it (it came from an archive): re-deploy it with --archive"
            ),
        });
    };
    let archive = &upload.archive;
    // A closed semaphore is never closed here; treat it as no bound rather than fail.
    let _slot = upload.slots.acquire().await.ok();
    step(format!("sending {} ({} bytes) to docker load", archive.path.display(), archive.size));
    let file = tokio::fs::File::open(&archive.path).await.map_err(|e| DockerError::Failed {
        step: "docker load",
        message: format!("cannot read {}: {e}", archive.path.display()),
    })?;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = crate::archive::Counted::new(file, Arc::clone(&sent)).named(&archive.path);
    let load = docker::load(host, Box::pin(reader), id);
    tokio::pin!(load);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let loaded = loop {
        tokio::select! {
            loaded = &mut load => break loaded,
            _ = tick.tick() => step(format!(
                "sending: {} of {} bytes", sent.load(std::sync::atomic::Ordering::Relaxed), archive.size
            )),
        }
    };
    let bytes = sent.load(std::sync::atomic::Ordering::Relaxed);
    match loaded {
        Ok(()) => {
            step(format!("loaded {id}: {bytes} bytes sent"));
            Ok((Some(id.to_string()), false, briefs, leftovers))
        }
        Err(DockerError::Failed { step, message }) if archive.layout == crate::archive::Layout::Oci => {
            Err(DockerError::Failed {
                step,
                message: format!(
                    "{message} (an OCI archive: Docker before 25 loads only `docker save` archives; convert it with `skopeo copy oci-archive:{file} docker-archive:IMAGE.tar:NAME:TAG`)",
                    file = archive.path.display()
                ),
            })
        }
        Err(e) => Err(e),
    }
}

/// What [`find_or_load`] gives: a pull's outcome, without the elapsed time.
type Found = Result<(Option<String>, bool, Vec<Brief>, Vec<replace::Leftover>), DockerError>;

fn failed_status(e: &DockerError) -> Status {
    if e.is_connection() { Status::Error } else { Status::Failed }
}

/// Deploys to the ready targets of a batch, at most `parallel` at once, in order; a Ctrl-C
/// skips those not started yet.
async fn deploy_batch(
    plan: &Plan,
    planner: &Arc<dyn Planner>,
    ready: Vec<(usize, Listed)>,
    connections: &Connections,
    settings: &Settings,
    events: &Events,
    cancel: Cancel,
) -> Vec<(usize, TargetReport)> {
    let order: Vec<usize> = ready.iter().map(|(i, _)| *i).collect();
    let limits = crate::fanout::Limits { parallel: settings.parallel, cancel: Some(cancel) };
    let outcomes = crate::fanout::ordered(
        ready,
        limits,
        |_, (i, (containers, leftovers))| {
            let tp = plan.targets[i].clone();
            let connection = connections.get(&tp.target).cloned();
            let job = Job {
                deployment: plan.deployment.clone(),
                app: plan.app.clone(),
                environment: plan.environment.clone(),
                version: plan.version.clone(),
                digest: plan.digest.clone(),
                target: tp,
                containers,
                leftovers,
                planner: Arc::clone(planner),
                settings: settings.clone(),
                events: events.clone(),
            };
            async move {
                match connection {
                    Some(host) => job.run(&*host).await,
                    None => {
                        let why = "not started: no connection".to_string();
                        let r = report(&job.target.target, Status::Skipped, None, Some(why));
                        finished(&job.events, Some(&r));
                        r
                    }
                }
            }
        },
        |_, (i, _)| {
            let why = crate::fanout::Unfinished::Skipped.to_string();
            finished(events, Some(&report(&plan.targets[i].target, Status::Skipped, None, Some(why))));
        },
    )
    .await;
    order
        .into_iter()
        .zip(outcomes)
        .map(|(i, outcome)| {
            let r = match outcome {
                Ok(r) => r,
                Err(e @ crate::fanout::Unfinished::Skipped) => {
                    report(&plan.targets[i].target, Status::Skipped, None, Some(e.to_string()))
                }
                // Nothing is known about the target: like a lost connection, say so.
                Err(e) => {
                    let why = format!("{e}; run `ferry status` to see what runs there");
                    let r = report(&plan.targets[i].target, Status::Error, None, Some(why));
                    finished(events, Some(&r));
                    r
                }
            };
            (i, r)
        })
        .collect()
}

/// One target's deployment.
struct Job {
    deployment: String,
    app: String,
    environment: String,
    version: String,
    /// The digest the plan is pinned to, once known.
    digest: Option<String>,
    target: TargetPlan,
    /// The app's containers there, as listed when the image was pulled.
    containers: Vec<Brief>,
    /// Replace steps there that ended with nobody to read them (read and cleared by the pull).
    leftovers: Vec<replace::Leftover>,
    planner: Arc<dyn Planner>,
    settings: Settings,
    events: Events,
}

/// Where a failing step leaves the target.
struct Failure {
    status: Status,
    action: Action,
    error: String,
    logs: Vec<String>,
}

impl Failure {
    fn untouched(e: DockerError) -> Failure {
        let status = failed_status(&e);
        let error = match status {
            Status::Error => format!("connection lost: {e}"),
            _ => e.to_string(),
        };
        Failure { status, action: Action::Untouched, error, logs: Vec::new() }
    }

    /// The connection failed after containers were touched: nothing is known any more.
    fn lost(e: DockerError, state: &str) -> Failure {
        Failure {
            status: Status::Error,
            action: Action::Untouched,
            error: format!("connection lost ({e}); {state}"),
            logs: Vec::new(),
        }
    }
}

/// Why following a replace step stopped early.
enum Followed {
    /// The step ended and failed.
    Failure(Failure),
    /// The link went away: the step goes on without ferry.
    Lost(DockerError),
}

impl Job {
    fn step(&self, step: impl Into<String>) {
        let _ = self.events.send(Event::TargetStep { target: self.target.target.clone(), step: step.into() });
    }

    async fn run(self, host: &dyn Host) -> TargetReport {
        let started = Instant::now();
        let outcome = self.deploy(host).await;
        let mut r = report(&self.target.target, Status::Ok, None, None);
        match outcome {
            Ok((action, container)) => {
                r.action = Some(action);
                r.container = container;
            }
            Err(f) => {
                r.status = f.status;
                r.action = Some(f.action);
                r.error = Some(f.error);
                r.logs = f.logs;
            }
        }
        r.duration = started.elapsed();
        // A local target is the machine that holds the audit log itself: no mirror.
        if !host.is_local() {
            self.mirror(host, &r).await;
        }
        finished(&self.events, Some(&r));
        r
    }

    async fn deploy(&self, host: &dyn Host) -> Result<(Action, Option<ContainerDetails>), Failure> {
        let tp = &self.target;
        for l in &self.leftovers {
            self.leftover(l);
        }
        // A stray NAME-next is the proxied step's own business: it removes it and says so.
        let next = replace::next_name(&tp.container);
        let own = |name: &str| name == tp.container || (tp.route.is_some() && name == next);
        for extra in self.containers.iter().filter(|c| !own(&c.name)) {
            self.step(format!("found another container of this app: {} (left alone)", extra.name));
        }
        let current = self.containers.iter().find(|c| c.name == tp.container);
        match (decide(current.map(Live::from), tp, self.settings.force), current) {
            (Decision::Unchanged, Some(current)) => {
                let done = self.check_unchanged(host, &current.id).await?;
                return self.converge_route(host, done).await;
            }
            (Decision::Start, Some(current)) => {
                let done = self.start_stopped(host, &current.id).await?;
                return self.converge_route(host, done).await;
            }
            _ => {}
        }
        let old = current.map(|c| (c.id.as_str(), c.running));
        self.step(match current {
            Some(c) if c.config_hash.is_some() => {
                format!("replacing: {}", why_replaced(c, tp, &self.version, self.digest.as_deref()))
            }
            Some(_) => "replacing a container without ferry's config hash".to_string(),
            None => "creating".to_string(),
        });
        let keep_as = format!("{}-ferry-old-{}", tp.container, short_id(&self.deployment));
        let proxied = match self.proxied(host).await {
            Ok(p) => p,
            Err(e) if e.is_connection() => {
                return Err(Failure::lost(e, "no container was touched; the proxy may have been booted"));
            }
            Err(e) => return Err(Failure::untouched(e)),
        };
        let argv = match &proxied {
            // Beside the old container until the switch: the same argv under NAME-next.
            Some(_) => next_argv(&tp.exec_argv, &tp.container, &next),
            None => tp.exec_argv.clone(),
        };
        let key = crate::proxy::key(&self.app, &self.environment);
        let proxy = proxied.as_ref().map(|(alias, route, switch)| replace::ProxyStep {
            alias,
            port: route.port,
            health: &route.health,
            key: &key,
            switch,
            drain: self.settings.proxy.drain,
            auto_commit: !self.planner.has_post_deploy(),
        });
        let request = replace::Request {
            name: &tp.container,
            old,
            keep_as: &keep_as,
            env: tp.env_file.as_ref().map(|f| f.content.expose().as_bytes()),
            argv: &argv,
            gate: self.gate_settings(false),
            meta: replace::Meta {
                app: &self.app,
                environment: &self.environment,
                deployment: &self.deployment,
                version: &self.version,
            },
            proxy,
            networks: &tp.networks,
            volumes: &tp.volumes,
        };
        let unknown = if proxied.is_some() {
            "the old container still serves; the target removes the new one by itself unless this run \
             confirmed it; run `ferry status` when it is back"
        } else {
            "the old container may be stopped and renamed; the target restores it by itself \
                       unless this run confirmed the new one; run `ferry status` when it is back"
        };
        match replace::launch(host, &request).await {
            Ok(replace::Launched::Running(leftover)) => {
                if let Some(l) = leftover {
                    self.leftover(&l);
                }
            }
            Ok(replace::Launched::Busy(deployment)) => {
                return Err(Failure {
                    status: Status::Failed,
                    action: Action::Untouched,
                    error: format!(
                        "the replace step of deployment {deployment} still runs here; it ends by itself \
                         within {}s of losing its runner: deploy again then",
                        replace::ABANDON_AFTER.as_secs()
                    ),
                    logs: Vec::new(),
                });
            }
            Err(e) if e.is_connection() => return Err(Failure::lost(e, unknown)),
            Err(e) => return Err(Failure::untouched(e)),
        }
        let action = if old.is_some() { Action::Replaced } else { Action::Created };
        self.follow(host, old, action).await.map_err(|e| match e {
            Followed::Failure(f) => f,
            Followed::Lost(e) => Failure::lost(e, unknown),
        })
    }

    /// Follows the detached replace step to its end: reports its steps, runs `post_deploy` once
    /// the new container passed its gate, tells the step to keep or restore, reads the outcome
    /// and clears it.
    async fn follow(
        &self,
        host: &dyn Host,
        old: Option<(&str, bool)>,
        action: Action,
    ) -> Result<(Action, Option<ContainerDetails>), Followed> {
        let mut follower = replace::Follower::new(&self.target.container);
        let (mut errors, mut gate_lines, mut logs) = (Vec::new(), Vec::new(), Vec::new());
        let mut why: Option<String> = None;
        let mut healthy: Option<docker::Container> = None;
        loop {
            let lines = follower.next(host).await.map_err(Followed::Lost)?;
            for line in lines {
                match line {
                    Line::Stopped => {}
                    Line::Error(e) => errors.push(e),
                    Line::NotStarted(step) => why = Some(format!("{step}: {}", errors.join("; "))),
                    Line::RunFailed(status) => {
                        let said = if errors.is_empty() {
                            format!("docker run: {status}")
                        } else {
                            errors.join("; ")
                        };
                        why = Some(format!("docker run failed: {said}"));
                        self.restoring(old);
                    }
                    Line::Started(_) => {
                        errors.clear();
                        self.step("health gate");
                    }
                    Line::Gate(text) => gate_lines.push(text),
                    Line::Gated(passed) => match replace::gate_result(passed, &gate_lines) {
                        Ok(GateResult::Healthy(how, container)) => {
                            self.step(how);
                            let verdict = self.post_deploy(host, &follower, &container.details).await;
                            if let Err(e) = &verdict {
                                why = Some(e.clone());
                                self.restoring(old);
                            }
                            follower.decide(host, verdict.is_ok()).await.map_err(Followed::Lost)?;
                            healthy = Some(*container);
                        }
                        Ok(GateResult::Unhealthy(reason)) => {
                            why = Some(format!("health gate: {reason}"));
                            self.restoring(old);
                        }
                        Err(e) => {
                            why = Some(format!("health gate: {e}"));
                            self.restoring(old);
                        }
                    },
                    Line::Log(line) => logs.push(line),
                    Line::Warning(text) | Line::Step(text) => self.step(text),
                    Line::SwitchFailed => {
                        why = Some(format!("proxy switch: {}", errors.join("; ")));
                        self.restoring(old);
                    }
                    Line::Done(outcome) => {
                        // The outcome is read: the step's folder can go.
                        let _ = follower.collect(host).await;
                        return self.outcome(outcome, action, why, healthy, errors, logs);
                    }
                }
            }
        }
    }

    /// The report of a finished replace step.
    fn outcome(
        &self,
        outcome: Outcome,
        action: Action,
        why: Option<String>,
        healthy: Option<docker::Container>,
        errors: Vec<String>,
        logs: Vec<String>,
    ) -> Result<(Action, Option<ContainerDetails>), Followed> {
        let why = why.unwrap_or_else(|| outcome.describe().to_string());
        let failure = |status, action, error| Followed::Failure(Failure { status, action, error, logs });
        match outcome {
            // Gated as NAME-next behind the proxy; it runs under its own name now.
            Outcome::Committed => Ok((
                action,
                healthy.map(|c| ContainerDetails { name: self.target.container.clone(), ..c.details }),
            )),
            Outcome::Untouched => Err(failure(Status::Failed, Action::Untouched, why)),
            Outcome::Restored | Outcome::Discarded => Err(failure(Status::Failed, Action::Restored, why)),
            Outcome::RestoreFailed => Err(failure(
                Status::Error,
                Action::Untouched,
                format!(
                    "{why}; and restoring the old container failed: restore the old container: {}",
                    errors.join("; ")
                ),
            )),
            Outcome::AbandonedRestored
            | Outcome::AbandonedRestoreFailed
            | Outcome::AbandonedKept
            | Outcome::AbandonedDiscarded
            | Outcome::Vanished => {
                let action = if matches!(outcome, Outcome::AbandonedRestored | Outcome::AbandonedDiscarded) {
                    Action::Restored
                } else {
                    Action::Untouched
                };
                Err(failure(
                    Status::Error,
                    action,
                    format!("the target lost track of this run: {}", outcome.describe()),
                ))
            }
        }
    }

    fn leftover(&self, l: &replace::Leftover) {
        self.step(format!(
            "an earlier replace step here (deployment {}, {}) ended with nobody to read it: {}",
            l.deployment, l.version, l.outcome
        ));
    }

    fn restoring(&self, old: Option<(&str, bool)>) {
        self.step(match old {
            Some(_) if self.target.route.is_some() => {
                "failed: removing the new container (the old one keeps serving)"
            }
            Some(_) => "failed: restoring the old container",
            None => "failed: removing the new container",
        });
    }

    /// For an app behind the proxy: ensures the network and the proxy (booted on first need),
    /// then gives the new container's alias, its route and the line that switches the route to
    /// it. `None`: the app has no proxy route.
    async fn proxied(
        &self,
        host: &dyn Host,
    ) -> Result<Option<(String, crate::inventory::Route, String)>, DockerError> {
        let (Some(route), Some(alias)) = (&self.target.route, &self.target.alias) else { return Ok(None) };
        let table = self.table_route(route, alias);
        let switch = crate::proxy::switch_call(&table)
            .map_err(|message| DockerError::Failed { step: "proxy route", message })?;
        self.ensure_proxy(host).await?;
        Ok(Some((alias.clone(), route.clone(), switch)))
    }

    /// The route table's entry for this deployment's container under `alias`.
    fn table_route(&self, route: &crate::inventory::Route, alias: &str) -> crate::proxy::Route {
        crate::proxy::Route {
            app: self.app.clone(),
            environment: self.environment.clone(),
            host: route.host.clone(),
            path: route.path.clone(),
            port: route.port,
            health: route.health.clone(),
            tls: route.tls.map(|t| match t {
                crate::inventory::Tls::Internal => crate::proxy::Tls::Internal,
                crate::inventory::Tls::Acme => crate::proxy::Tls::Acme,
            }),
            upstream: alias.to_string(),
            container: self.target.container.clone(),
            deployment: self.deployment.clone(),
            maintenance: None,
        }
    }

    /// Network and proxy, booted on first need; says when it had to start or boot it.
    async fn ensure_proxy(&self, host: &dyn Host) -> Result<(), DockerError> {
        match crate::proxy::ensure(host, &self.settings.proxy.image, self.settings.proxy_login.as_ref())
            .await?
        {
            crate::proxy::Ensured::Running => {}
            crate::proxy::Ensured::Started => self.step("proxy: started (it was stopped)"),
            crate::proxy::Ensured::Booted => {
                self.step(format!("proxy: booted {}", self.settings.proxy.image))
            }
        }
        Ok(())
    }

    /// After a no-op deploy (unchanged, or started) of an app behind the proxy: a deploy
    /// converges, so the route must send the app's traffic to the container that runs. A route
    /// file removed, a proxy rebuilt without it, or a route left pointing elsewhere is written
    /// again (one config load) and the step says so. A failure here fails the target; the
    /// container is left as it is.
    async fn converge_route(
        &self,
        host: &dyn Host,
        done: (Action, Option<ContainerDetails>),
    ) -> Result<(Action, Option<ContainerDetails>), Failure> {
        let Some(route) = &self.target.route else { return Ok(done) };
        let failed = |e: DockerError| Failure {
            status: failed_status(&e),
            action: done.0,
            error: format!("the container is right but its proxy route could not be set: {e}"),
            logs: Vec::new(),
        };
        self.ensure_proxy(host).await.map_err(failed)?;
        let table = self.table_route(route, "");
        match crate::proxy::converge(host, &table, &self.target.container).await {
            Ok(None) => {}
            Ok(Some(why)) => self.step(format!("repaired the proxy route ({why})")),
            Err(e) => return Err(failed(e)),
        }
        Ok(done)
    }

    /// Runs `post_deploy` while telling the replace step ferry is still there; the error text
    /// when it fails.
    async fn post_deploy(
        &self,
        host: &dyn Host,
        follower: &replace::Follower,
        container: &ContainerDetails,
    ) -> Result<(), String> {
        let script = match self.planner.post_deploy(&self.target.target, container) {
            Ok(None) => return Ok(()),
            Ok(Some(script)) => script,
            Err(e) => return Err(format!("post_deploy: {e}")),
        };
        self.step("post_deploy");
        let mut sink =
            LineSplitter::new(&self.target.target, self.events.clone()).masking(&self.settings.secrets);
        let heartbeat = async {
            loop {
                tokio::time::sleep(replace::HEARTBEAT).await;
                let _ = follower.heartbeat(host).await;
            }
        };
        let outcome = tokio::select! {
            outcome = docker::post_deploy(host, &script, &mut sink) => outcome,
            () = heartbeat => Ok(()),
        };
        sink.flush();
        outcome.map_err(|e| e.to_string())
    }

    /// The running container has the planned config: it is left alone, but "unchanged" is a
    /// success only once it passes the gate (its HEALTHCHECK, else `health.cmd`, else running
    /// for the grace period since it started), so a container that never passed its gate (the
    /// runner died or the link dropped mid-gate) is not recorded as a success now.
    async fn check_unchanged(
        &self,
        host: &dyn Host,
        id: &str,
    ) -> Result<(Action, Option<ContainerDetails>), Failure> {
        self.step("unchanged: the running container has the planned config");
        match self.gate_since_start(host, id, true).await {
            Ok(container) => Ok((Action::Unchanged, Some(container.details))),
            Err(why) => Err(Failure {
                status: Status::Failed,
                action: Action::Unchanged,
                error: format!(
                    "the running container has the planned config but is not healthy: {why} \
                     (left as it is; `--force` replaces it)"
                ),
                logs: docker::logs(host, id, &self.settings.secrets).await,
            }),
        }
    }

    /// The planned container exists but is stopped: start it and gate it (not recreated).
    async fn start_stopped(
        &self,
        host: &dyn Host,
        id: &str,
    ) -> Result<(Action, Option<ContainerDetails>), Failure> {
        self.step("starting: the container has the planned config but was stopped");
        docker::start(host, id).await.map_err(Failure::untouched)?;
        match self.gate(host, id).await {
            Ok(container) => Ok((Action::Started, Some(container.details))),
            Err(why) => {
                let logs = docker::logs(host, id, &self.settings.secrets).await;
                let _ = docker::stop(host, id).await;
                Err(Failure { status: Status::Failed, action: Action::Restored, error: why, logs })
            }
        }
    }

    /// The gate's verdict: the healthy container, or why not.
    async fn gate(&self, host: &dyn Host, id: &str) -> Result<docker::Container, String> {
        self.gate_since_start(host, id, false).await
    }

    /// [`Job::gate`]; `since_start` counts the grace period from the container's start (a
    /// container that has run for longer needs no wait) instead of from now.
    async fn gate_since_start(
        &self,
        host: &dyn Host,
        id: &str,
        since_start: bool,
    ) -> Result<docker::Container, String> {
        self.step("health gate");
        let gate = self.gate_settings(since_start);
        match docker::gate(host, id, &gate).await {
            Ok(GateResult::Healthy(how, container)) => {
                self.step(how);
                Ok(*container)
            }
            Ok(GateResult::Unhealthy(why)) => Err(format!("health gate: {why}")),
            Err(e) => Err(format!("health gate: {e}")),
        }
    }

    fn gate_settings(&self, since_start: bool) -> docker::Gate<'_> {
        docker::Gate {
            cmd: self.target.health_cmd.as_deref(),
            timeout: self.settings.timeout,
            interval: self.settings.interval,
            grace: self.settings.grace,
            since_start,
        }
    }

    /// Appends the target's audit mirror line.
    async fn mirror(&self, host: &dyn Host, r: &TargetReport) {
        let outcome = match (&r.action, &r.error) {
            (_, Some(e)) => format!("{}: {e}", r.status.label()),
            (Some(a), None) => a.label().to_string(),
            (None, None) => r.status.label().to_string(),
        };
        let line = format!("{} -> {outcome}", self.settings.mirror);
        crate::fanout::write_mirror(host, &r.target, &line, &self.settings.secrets).await;
    }
}

/// `argv` with the container's name replaced by `next` (only ferry's own `--name`, the first).
fn next_argv(argv: &[String], name: &str, next: &str) -> Vec<String> {
    let mut out = argv.to_vec();
    if let Some(i) = out.windows(2).position(|w| w[0] == "--name" && w[1] == name) {
        out[i + 1] = next.to_string();
    }
    out
}

/// The last 12 hex digits of a deployment id (the random part of a UUID v7).
fn short_id(deployment: &str) -> String {
    let hex: String = deployment.chars().filter(char::is_ascii_hexdigit).collect();
    hex[hex.len().saturating_sub(12)..].to_string()
}

fn finished(events: &Events, report: Option<&TargetReport>) {
    let Some(r) = report else { return };
    let _ = events.send(Event::TargetFinished {
        target: r.target.clone(),
        status: r.status,
        exit_code: None,
        signal: None,
        error: r.error.clone(),
        ms: millis(r.duration),
        action: r.action,
        container: r.container.clone().map(Box::new),
        logs: r.logs.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, Reply};
    use crate::inventory::{Batch, Rollout, Transport};

    #[test]
    fn short_ids_are_the_random_tail() {
        assert_eq!(short_id("019ad0c1-0000-7000-8000-0123456789ab"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    const PLANNED: &str = "hash-new";
    const DIGEST: &str = "sha256:0123";

    fn target_plan(name: &str) -> TargetPlan {
        TargetPlan {
            target: name.to_string(),
            host: "10.0.0.1".into(),
            port: 22,
            user: None,
            transport: Transport::Ssh,
            container: "web-dev".into(),
            argv: vec!["docker".into(), "run".into(), "--name".into(), "web-dev".into(), "img".into()],
            display: "docker run --name web-dev img".into(),
            config_hash: PLANNED.into(),
            secrets: Vec::new(),
            health_cmd: None,
            stable_argv: Vec::new(),
            env_file: None,
            exec_argv: vec![
                "docker".into(),
                "run".into(),
                "--detach".into(),
                "--name".into(),
                "web-dev".into(),
                "img".into(),
            ],
            route: None,
            alias: None,
            networks: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn plan(targets: &[&str]) -> Plan {
        Plan {
            schema: crate::plan::SCHEMA_VERSION,
            app: "web".into(),
            environment: "dev".into(),
            version: "1.0".into(),
            image: format!("registry/web@{DIGEST}"),
            digest: Some(DIGEST.into()),
            deployment: "019ad0c1-0000-7000-8000-0123456789ab".into(),
            rollout: Rollout { batch: Batch::Count(10), max_failures: 10 },
            targets: targets.iter().map(|t| target_plan(t)).collect(),
            problems: Vec::new(),
        }
    }

    /// The plan is already pinned; `post_deploy` is the script given, if any.
    struct TestPlanner(Option<String>);

    impl Planner for TestPlanner {
        fn pinned(&self, _digest: &str) -> Result<Plan, String> {
            Err("the test plan is pinned already".into())
        }
        fn post_deploy(
            &self,
            _target: &str,
            _container: &ContainerDetails,
        ) -> Result<Option<String>, String> {
            Ok(self.0.clone())
        }
        fn has_post_deploy(&self) -> bool {
            self.0.is_some()
        }
    }

    fn settings() -> Settings {
        Settings {
            parallel: 2,
            force: false,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            mirror: "ferry deploy web 1.0 to dev".into(),
            login: None,
            secrets: vec![crate::secret::Secret::new(SECRET_VALUE)],
            proxy: crate::inventory::Proxy::default(),
            proxy_login: None,
            upload: None,
        }
    }

    /// A secret value of the run, which a health check or docker could echo back.
    const SECRET_VALUE: &str = "s3cr3t-Vx9";

    /// What `docker ps` lists: the old container `old1` with another config hash.
    fn listed(hash: &str, state: &str) -> String {
        format!("Digest: {DIGEST}\n--- containers\nold1\tweb-dev\t{state}\t{hash}\n")
    }

    const INSPECT: &str = r#"[{"Id":"new1","Name":"/web-dev","State":{"Status":"running"},"Config":{"Image":"registry/web@sha256:0123","Labels":{}},"NetworkSettings":{}}]"#;

    fn healthy() -> Reply {
        Reply::ok(&format!("gate: health.cmd passed\n--- inspect\n{INSPECT}\n"))
    }

    // Patterns that pick out each step's script (see `crate::docker`, `crate::replace`). The
    // launch embeds the whole detached script, so it is matched first.
    const PULL: &str = "docker pull";
    const LAUNCH: &str = "ferry-replace";
    const FOLLOW: &str = "wc -c";
    const DECIDE: &str = "decision.new";
    const COLLECT: &str = "rm -rf \"$HOME/.ferry/replace/\"";
    const HEARTBEAT: &str = "touch \"$HOME/.ferry/replace/\"";
    const GATE: &str = "grace_ms=";
    const LOGS: &str = "docker logs --tail";
    const MIRROR: &str = "audit.log";
    const POST_DEPLOY: &str = "notify-deployed";

    /// The replace step's status lines up to a passed gate.
    fn gated_healthy() -> String {
        format!("stopped\nstarted new1\ng gate: health.cmd passed\ng --- inspect\ng {INSPECT}\ngated 0\n")
    }

    /// A target where every step succeeds unless `overrides` (checked first) say otherwise: the
    /// replace step's status file reads up to a passed gate on the first poll, and ends with the
    /// new container kept on the next.
    fn target(name: &str, overrides: Vec<(&str, Reply)>) -> FakeHost {
        let mut host = FakeHost::new(name);
        for (pattern, reply) in overrides {
            host = host.on(pattern, reply);
        }
        with_defaults(host)
    }

    /// `host`'s own rules, then every step succeeding (see [`target`]).
    fn with_defaults(host: FakeHost) -> FakeHost {
        host.on(LAUNCH, Reply::ok("--- launched\n"))
            .on(PULL, Reply::ok(&listed("hash-old", "running")))
            .on_times(FOLLOW, 1, Reply::ok(&gated_healthy()))
            .on(FOLLOW, Reply::ok(&format!("{}done committed\n", gated_healthy())))
            .on(DECIDE, Reply::ok(""))
            .on(COLLECT, Reply::ok(""))
            .on(HEARTBEAT, Reply::ok(""))
            .on(GATE, healthy())
            .on(LOGS, Reply::ok("log line 1\nlog line 2\n"))
            .on(POST_DEPLOY, Reply::ok("notified\n"))
            .on(MIRROR, Reply::ok(""))
    }

    /// Which steps ran, in order, named by their pattern.
    fn steps(host: &FakeHost) -> Vec<&'static str> {
        let names = [
            LAUNCH,
            PULL,
            FOLLOW,
            DECIDE,
            COLLECT,
            HEARTBEAT,
            GATE,
            LOGS,
            POST_DEPLOY,
            MIRROR,
            "docker inspect",
            "docker start",
        ];
        host.calls()
            .iter()
            .map(|c| names.iter().find(|p| c.command.contains(**p)).copied().unwrap_or("?"))
            .collect()
    }

    async fn deploy(hosts: Vec<Arc<FakeHost>>, post_deploy: Option<&str>, force: bool) -> Applied {
        deploy_with_events(hosts, post_deploy, force).await.0
    }

    /// The rollout, and the step messages it sent.
    async fn deploy_with_events(
        hosts: Vec<Arc<FakeHost>>,
        post_deploy: Option<&str>,
        force: bool,
    ) -> (Applied, Vec<String>) {
        let hosts = hosts.into_iter().map(|h| h as Arc<dyn Host>).collect();
        deploy_over(hosts, post_deploy, force).await
    }

    /// [`deploy_with_events`] over any connections (a fake behind a wrapper, say).
    async fn deploy_over(
        hosts: Vec<Arc<dyn Host>>,
        post_deploy: Option<&str>,
        force: bool,
    ) -> (Applied, Vec<String>) {
        let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
        let plan = plan(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let connections: Connections =
            hosts.iter().map(|h| (h.name().to_string(), Arc::clone(h) as Arc<dyn Host>)).collect();
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let planner: Arc<dyn Planner> = Arc::new(TestPlanner(post_deploy.map(str::to_string)));
        let settings = Settings { force, ..settings() };
        let applied = apply(plan, planner, &connections, &[], &settings, &events, cancel).await;
        let mut steps = Vec::new();
        while let Ok(event) = received.try_recv() {
            if let Event::TargetStep { step, .. } = event {
                steps.push(step);
            }
        }
        (applied, steps)
    }

    /// A rollout of `targets` (in that order) under `max_failures` and batches of `batch`, where
    /// `hosts` are the connected ones and `unreached` the others; with every event it sent.
    async fn deploy_past(
        targets: &[&str],
        hosts: &[Arc<FakeHost>],
        unreached: &[&str],
        batch: u32,
        max_failures: u32,
    ) -> (Applied, Vec<Event>) {
        let mut plan = plan(targets);
        plan.rollout = Rollout { batch: Batch::Count(batch), max_failures };
        let connections: Connections =
            hosts.iter().map(|h| (h.name().to_string(), Arc::clone(h) as Arc<dyn Host>)).collect();
        let unreached: Vec<crate::fanout::Unreached> = unreached
            .iter()
            .map(|t| crate::fanout::Unreached {
                target: (*t).to_string(),
                status: Status::Unreachable,
                error: format!("no SSH session with {t}:22 within 3 s"),
                duration: Duration::from_secs(3),
            })
            .collect();
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let planner: Arc<dyn Planner> = Arc::new(TestPlanner(None));
        let applied = apply(plan, planner, &connections, &unreached, &settings(), &events, cancel).await;
        drop(events);
        let mut sent = Vec::new();
        while let Some(event) = received.recv().await {
            sent.push(event);
        }
        (applied, sent)
    }

    fn outcomes(applied: &Applied) -> Vec<(&str, Status)> {
        applied.reports.iter().map(|r| (r.target.as_str(), r.status)).collect()
    }

    #[tokio::test]
    async fn an_unreachable_target_within_the_budget_lets_the_others_deploy() {
        let hosts = [Arc::new(target("a", vec![])), Arc::new(target("c", vec![]))];
        let (applied, events) = deploy_past(&["a", "b", "c"], &hosts, &["b"], 1, 1).await;
        assert_eq!(outcomes(&applied), [("a", Status::Ok), ("b", Status::Unreachable), ("c", Status::Ok)]);
        let b = &applied.reports[1];
        assert_eq!(b.action, Some(Action::Untouched));
        assert_eq!(b.error.as_deref(), Some("no SSH session with b:22 within 3 s"));
        assert_eq!(applied.stopped, None);
        assert!(hosts.iter().all(|h| !h.ran(LAUNCH).is_empty()), "both reachable targets were deployed");
        // Reported first, once, and never in a batch.
        let finished: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::TargetFinished { target, .. } => Some(target.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(finished, ["b", "a", "c"]);
        let batches: Vec<Vec<String>> = events
            .iter()
            .filter_map(|e| match e {
                Event::BatchStarted { targets, .. } => Some(targets.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(batches, [vec!["a".to_string()], vec!["c".to_string()]]);
    }

    #[tokio::test]
    async fn with_a_budget_of_zero_an_unreachable_target_stops_the_rollout_before_any_target_changes() {
        let hosts = [Arc::new(target("a", vec![])), Arc::new(target("c", vec![]))];
        let (applied, _) = deploy_past(&["a", "b", "c"], &hosts, &["b"], 10, 0).await;
        assert_eq!(
            outcomes(&applied),
            [("a", Status::Skipped), ("b", Status::Unreachable), ("c", Status::Skipped)]
        );
        assert_eq!(
            applied.stopped.as_deref(),
            Some("rollout stopped before it began: 1 target was not reached (max_failures 0)")
        );
        assert!(hosts.iter().all(|h| h.calls().is_empty()), "nothing was sent to a reachable target");
    }

    #[tokio::test]
    async fn an_unreachable_target_counts_with_the_failures_of_a_batch() {
        // Budget 1: b unreachable is within it, a failed pull in the first batch is one too many.
        let hosts = [
            Arc::new(target("a", vec![(PULL, Reply::fail(1, "manifest unknown"))])),
            Arc::new(target("c", vec![])),
        ];
        let (applied, _) = deploy_past(&["a", "b", "c"], &hosts, &["b"], 1, 1).await;
        assert_eq!(
            outcomes(&applied),
            [("a", Status::Failed), ("b", Status::Unreachable), ("c", Status::Skipped)]
        );
        assert!(
            applied.stopped.as_deref().unwrap().contains("2 failed (max_failures 1)"),
            "{:?}",
            applied.stopped
        );
        assert!(hosts[1].calls().is_empty(), "c was never started");
    }

    async fn deploy_one(host: FakeHost, post_deploy: Option<&str>) -> (Arc<FakeHost>, TargetReport) {
        let host = Arc::new(host);
        let applied = deploy(vec![Arc::clone(&host)], post_deploy, false).await;
        let report = applied.reports.into_iter().next().unwrap();
        (host, report)
    }

    /// The replace step was told which container to keep aside, and that it was running (so a
    /// restore starts it again).
    fn keeps_the_running_old_container(host: &FakeHost) -> bool {
        host.ran(LAUNCH).iter().any(|c| c.contains("old=old1;") && c.contains("old_running=1;"))
    }

    /// The status file of a replace step that failed after `lines` and restored the old one.
    fn failed_then_restored(lines: &str) -> Reply {
        Reply::ok(&format!("{lines}log log line 1\nlog log line 2\ndone restored\n"))
    }

    #[tokio::test]
    async fn a_changed_config_replaces_the_container_and_removes_the_old_one() {
        let (host, r) = deploy_one(target("t1", vec![]), Some("notify-deployed")).await;
        assert_eq!((r.status, r.action, r.error.as_deref()), (Status::Ok, Some(Action::Replaced), None));
        assert_eq!(r.container.as_ref().map(|c| c.id.as_str()), Some("new1"));
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, POST_DEPLOY, DECIDE, FOLLOW, COLLECT, MIRROR]);
        let launch = &host.ran(LAUNCH)[0];
        assert!(
            launch.contains("old=old1;") && launch.contains("keep=web-dev-ferry-old-0123456789ab;"),
            "{launch}"
        );
        assert!(launch.contains("setsid"), "detached from the session: {launch}");
        assert!(host.ran(DECIDE)[0].contains(" commit "), "{:?}", host.ran(DECIDE));
        let mirror = host.calls().into_iter().find(|c| c.command.contains(MIRROR)).unwrap();
        let line = String::from_utf8(mirror.stdin.unwrap()).unwrap();
        assert!(line.ends_with("ferry deploy web 1.0 to dev -> replaced\n"), "{line}");
    }

    #[tokio::test]
    async fn a_failed_gate_restores_and_restarts_the_old_container() {
        let status = failed_then_restored(
            "stopped\nstarted new1\ng gate: not healthy after 5s\ng connection refused\ngated 1\n",
        );
        let (host, r) = deploy_one(target("t1", vec![(FOLLOW, status)]), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Restored)));
        assert_eq!(r.error.as_deref(), Some("health gate: not healthy after 5s: connection refused"));
        assert_eq!(r.logs, ["log line 1", "log line 2"]);
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, COLLECT, MIRROR], "the target restored it by itself");
        assert!(keeps_the_running_old_container(&host), "{:?}", host.calls());
    }

    #[tokio::test]
    async fn the_targets_mirror_line_masks_a_secret_the_health_check_printed() {
        // The detached step reports the gate's output, which echoes the secret.
        let status = failed_then_restored(&format!(
            "stopped\nstarted new1\ng gate: not healthy after 5s\ng TOKEN={SECRET_VALUE} rejected\ngated 1\n"
        ));
        let (host, r) = deploy_one(target("t1", vec![(FOLLOW, status)]), None).await;
        assert_eq!(r.status, Status::Failed);
        let mirror = host.calls().into_iter().find(|c| c.command.contains(MIRROR)).unwrap();
        assert!(mirror.command.starts_with("umask 077;"), "created private: {}", mirror.command);
        let line = String::from_utf8(mirror.stdin.unwrap()).unwrap();
        assert!(
            line.ends_with("ferry deploy web 1.0 to dev -> failed: health gate: not healthy after 5s: TOKEN=*** rejected\n"),
            "{line}"
        );
        assert!(!line.contains(SECRET_VALUE));
    }

    /// `--archive`: a target that has the image id is sent nothing; one that lacks it gets the
    /// file's bytes on the `docker load` command's stdin; without an archive (a rollback), a
    /// missing id is an error that says how to bring it back.
    #[tokio::test]
    async fn an_image_id_is_looked_for_and_loaded_only_where_missing() {
        let id = format!("sha256:{}", "ab".repeat(32));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img.tar");
        std::fs::write(&file, b"archive bytes").unwrap();
        let archive = crate::archive::ImageArchive {
            path: file,
            size: 13,
            id: id.clone(),
            tags: vec!["acme/web:1.0".into()],
            layout: crate::archive::Layout::Docker,
        };
        let upload = Upload { archive: Arc::new(archive), slots: Arc::new(tokio::sync::Semaphore::new(1)) };
        let listed = "--- containers\n--- leftovers\n";
        let present = format!("ferry: image present, not pulled\nDigest: {id}\n{listed}");
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();

        let has = FakeHost::new("has").on("docker ps", Reply::ok(&present));
        let got = find_or_load(&has, "has", &id, "web", "dev", Some(upload.clone()), &events).await.unwrap();
        assert_eq!((got.0, got.1), (Some(id.clone()), true));
        assert_eq!(has.calls().len(), 1, "only looked");

        let lacks = FakeHost::new("lacks")
            .on("docker load", Reply::ok("Loaded image: acme/web:1.0\n"))
            .on("docker ps", Reply::ok(listed));
        let got = find_or_load(&lacks, "lacks", &id, "web", "dev", Some(upload), &events).await.unwrap();
        assert_eq!((got.0, got.1), (Some(id.clone()), false));
        let calls = lacks.calls();
        assert!(
            calls[1].command.contains(&format!("docker load || exit 1\ndocker image inspect {id} ")),
            "{calls:?}"
        );
        assert_eq!(calls[1].stdin.as_deref(), Some(&b"archive bytes"[..]));

        let gone = FakeHost::new("gone").on("docker ps", Reply::ok(listed));
        let err = find_or_load(&gone, "gone", &id, "web", "dev", None, &events).await.unwrap_err();
        assert!(err.to_string().ends_with("(it came from an archive): re-deploy it with --archive"), "{err}");

        let mut steps = Vec::new();
        while let Ok(Event::TargetStep { target, step }) = received.try_recv() {
            steps.push(format!("{target}: {step}"));
        }
        let sending = steps.iter().filter(|s| s.starts_with("lacks: sending ")).count();
        assert_eq!(sending, 1, "{steps:?}");
        assert_eq!(
            steps.iter().filter(|s| !s.starts_with("lacks: sending ")).collect::<Vec<_>>(),
            [
                &format!("has: {id} is here already: nothing sent (0 bytes)"),
                &format!("lacks: loaded {id}: 13 bytes sent")
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_pull_touches_nothing() {
        let (host, r) =
            deploy_one(target("t1", vec![(PULL, Reply::fail(1, "manifest unknown"))]), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Untouched)));
        assert_eq!(
            r.error.as_deref(),
            Some(format!("pull registry/web@{DIGEST}: docker pull: manifest unknown").as_str())
        );
        assert_eq!(
            steps(&host),
            [PULL],
            "no container was touched, no mirror line: the target was never started"
        );
    }

    #[tokio::test]
    async fn a_replace_script_that_cannot_stop_the_old_container_changes_nothing() {
        let status = Reply::ok(
            "err Error response from daemon: cannot stop\nnotstarted cannot stop the old container\ndone untouched\n",
        );
        let (host, r) = deploy_one(target("t1", vec![(FOLLOW, status)]), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Untouched)));
        assert_eq!(
            r.error.as_deref(),
            Some("cannot stop the old container: Error response from daemon: cannot stop")
        );
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, COLLECT, MIRROR], "nothing to restore");
    }

    #[tokio::test]
    async fn a_failed_docker_run_restores_the_old_container() {
        let status =
            failed_then_restored("stopped\nerr docker: invalid reference format\nrunfailed exit 125\n");
        let (host, r) = deploy_one(target("t1", vec![(FOLLOW, status)]), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Restored)));
        assert_eq!(r.error.as_deref(), Some("docker run failed: docker: invalid reference format"));
        assert_eq!(r.logs, ["log line 1", "log line 2"]);
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, COLLECT, MIRROR]);
        assert!(keeps_the_running_old_container(&host));
    }

    #[tokio::test]
    async fn a_failed_post_deploy_restores_the_old_container() {
        // The first poll reads up to the passed gate; the second, after the decision, the restore.
        let host = FakeHost::new("t1")
            .on(POST_DEPLOY, Reply::fail(2, ""))
            .on_times(FOLLOW, 1, Reply::ok(&gated_healthy()))
            .on(FOLLOW, failed_then_restored(&gated_healthy()));
        let host = with_defaults(host);
        let (host, r) = deploy_one(host, Some("notify-deployed")).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Restored)));
        assert_eq!(r.error.as_deref(), Some("post_deploy: exit 2"));
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, POST_DEPLOY, DECIDE, FOLLOW, COLLECT, MIRROR]);
        assert!(host.ran(DECIDE)[0].contains(" restore "), "{:?}", host.ran(DECIDE));
    }

    #[tokio::test]
    async fn a_failed_restore_is_an_error_that_says_so() {
        let status = Reply::ok(
            "stopped\nstarted new1\ng gate: the container is exited (it exited)\ngated 1\n\
             err No such container: old1\ndone restore-failed\n",
        );
        let (host, r) = deploy_one(target("t1", vec![(FOLLOW, status)]), None).await;
        assert_eq!((r.status, r.action), (Status::Error, Some(Action::Untouched)));
        assert_eq!(
            r.error.as_deref(),
            Some(
                "health gate: the container is exited (it exited); and restoring the old container failed: restore the old container: No such container: old1"
            )
        );
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, COLLECT, MIRROR]);
    }

    #[tokio::test]
    async fn a_link_lost_after_the_old_container_stopped_is_an_error_pointing_at_status() {
        let (host, r) = deploy_one(target("t1", vec![(LAUNCH, Reply::Lost)]), None).await;
        assert_eq!((r.status, r.action), (Status::Error, Some(Action::Untouched)));
        let error = r.error.unwrap_or_default();
        assert!(error.starts_with("connection lost (fake host t1: connection lost)"), "{error}");
        assert!(error.contains("run `ferry status` when it is back"), "{error}");
        // The mirror line was attempted on the dead link, and nothing else ran after the loss.
        assert_eq!(steps(&host), [PULL, LAUNCH, MIRROR]);
    }

    /// The link drops while the step runs: ferry neither decides nor clears anything, so the
    /// step on the target (which restores the old container when nobody collects its result)
    /// is left to finish alone, and the report says so.
    #[tokio::test]
    async fn a_link_lost_mid_step_leaves_the_target_to_restore_by_itself() {
        let host = FakeHost::new("t1").on_times(FOLLOW, 1, Reply::ok("stopped\n")).on(FOLLOW, Reply::Lost);
        let (host, r) = deploy_one(with_defaults(host), None).await;
        assert_eq!((r.status, r.action), (Status::Error, Some(Action::Untouched)));
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("the target restores it by itself unless this run confirmed the new one"),
            "{error}"
        );
        assert_eq!(steps(&host), [PULL, LAUNCH, FOLLOW, FOLLOW, MIRROR], "no decision, nothing cleared");
    }

    /// Issue 15: the link goes silent right after the old container stopped. Packets are
    /// dropped and the SSH session is stuck, so neither an answer nor an error ever comes (the
    /// fake's `Stall`, which a real peer cannot be made to do on demand). Through the wrapper
    /// every SSH connection gets, the poll gives up by its deadline, the mirror line by its own,
    /// and the target ends as on any lost link: an error saying it restores the old container
    /// by itself. Before, only the SSH session itself could end these waits, and once in CI it
    /// did not for 14 minutes.
    #[tokio::test(start_paused = true)]
    async fn a_link_gone_silent_mid_step_ends_by_the_deadlines_and_leaves_the_target_to_restore() {
        let fake = FakeHost::new("t1").on_times(FOLLOW, 1, Reply::ok("stopped\n")).on(FOLLOW, Reply::Stall);
        let fake = Arc::new(with_defaults(fake));
        let host: Arc<dyn Host> = Arc::new(crate::host::Bounded::new(Arc::clone(&fake)));
        let started = tokio::time::Instant::now();
        let rollout = deploy_over(vec![host], None, false);
        // Paused time: an hour passes at once if the rollout hangs, and fails the test.
        let Ok((applied, _)) = tokio::time::timeout(Duration::from_secs(3600), rollout).await else {
            panic!("the rollout did not end: the silent link held it");
        };
        // The poll's 30 s and the mirror's 10 s, each with 5 s to give up.
        assert_eq!(started.elapsed(), Duration::from_secs(50));
        let r = &applied.reports[0];
        assert_eq!((r.status, r.action), (Status::Error, Some(Action::Untouched)));
        let error = r.error.clone().unwrap_or_default();
        assert!(error.starts_with("connection lost (no answer from t1 (fake) within 35s"), "{error}");
        assert!(
            error.contains("the target restores it by itself unless this run confirmed the new one"),
            "{error}"
        );
        assert_eq!(steps(&fake), [PULL, LAUNCH, FOLLOW, FOLLOW, MIRROR], "no decision, nothing cleared");
    }

    #[tokio::test]
    async fn an_earlier_step_nobody_collected_is_reported_by_the_next_deploy() {
        let launch = Reply::ok(
            "--- leftover\napp=web\nenvironment=dev\ndeployment=d0\nversion=0.9\n\ndone abandoned-restored\n--- launched\n",
        );
        let host = Arc::new(target("t1", vec![(LAUNCH, launch)]));
        let (applied, steps) = deploy_with_events(vec![Arc::clone(&host)], None, false).await;
        assert_eq!(applied.reports[0].status, Status::Ok);
        let said = "an earlier replace step here (deployment d0, 0.9) ended with nobody to read it: \
                    nobody collected the result: the script restored the old container by itself";
        assert!(steps.iter().any(|s| s == said), "{steps:?}");

        // Usually the deployment's first round trip finds it (and clears it), also for a no-op.
        let pulled = format!(
            "{}--- leftovers\n--- step\napp=web\nenvironment=dev\ndeployment=d0\nversion=0.9\n\ndone abandoned-restored\n",
            listed(PLANNED, "running")
        );
        let host = Arc::new(target("t2", vec![(PULL, Reply::ok(&pulled))]));
        let (applied, steps) = deploy_with_events(vec![Arc::clone(&host)], None, false).await;
        assert_eq!(applied.reports[0].action, Some(Action::Unchanged));
        assert!(steps.iter().any(|s| s == said), "{steps:?}");
        assert!(host.ran(PULL)[0].contains("rm -rf \"$d\""), "the pull clears what it read");
    }

    /// The steps a deployment of 1.0 (pinned to [`DIGEST`]) reports where `docker ps` lists
    /// `container` (id, name, state, config hash, version label, digest label).
    async fn steps_over(container: &str, force: bool) -> Vec<String> {
        let listed = format!("Digest: {DIGEST}\n--- containers\n{container}\n");
        let host = Arc::new(target("t1", vec![(PULL, Reply::ok(&listed))]));
        deploy_with_events(vec![host], None, force).await.1
    }

    #[tokio::test]
    async fn the_replacing_step_says_what_changed() {
        let pulling = ["pulling registry/web@sha256:0123", "pulled sha256:0123"];
        for (container, force, said) in [
            ("old1\tweb-dev\trunning\thash-old\t0.9\tsha256:0999", false, "replacing: version 0.9 → 1.0"),
            (
                "old1\tweb-dev\trunning\thash-old\t1.0\tsha256:0999",
                false,
                "replacing: digest sha256:0999 → sha256:0123 (tag 1.0 moved)",
            ),
            ("old1\tweb-dev\trunning\thash-old\t1.0\tsha256:0123", false, "replacing: the config changed"),
            // An older ferry's container, without the version and digest labels.
            ("old1\tweb-dev\trunning\thash-old", false, "replacing: the config changed"),
            (
                "old1\tweb-dev\trunning\thash-new\t1.0\tsha256:0123",
                true,
                "replacing: --force (the config is unchanged)",
            ),
        ] {
            let steps = steps_over(container, force).await;
            // The whole list of steps: the replacing step says why, once.
            let expected = [pulling[0], pulling[1], said, "health gate", "health.cmd passed"];
            assert_eq!(steps, expected, "{container}");
        }
    }

    #[tokio::test]
    async fn a_stopped_rollout_says_not_touched_only_when_targets_were_left() {
        let failing = || target("t1", vec![(PULL, Reply::fail(1, "pull access denied\n"))]);
        let rollout = |hosts: Vec<FakeHost>| async move {
            let hosts: Vec<Arc<FakeHost>> = hosts.into_iter().map(Arc::new).collect();
            let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
            let mut plan = plan(&names.iter().map(String::as_str).collect::<Vec<_>>());
            plan.rollout = Rollout { batch: Batch::Count(1), max_failures: 0 };
            let connections: Connections =
                hosts.iter().map(|h| (h.name().to_string(), Arc::clone(h) as Arc<dyn Host>)).collect();
            let (events, _received) = tokio::sync::mpsc::unbounded_channel();
            let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
            let planner: Arc<dyn Planner> = Arc::new(TestPlanner(None));
            let applied = apply(plan, planner, &connections, &[], &settings(), &events, cancel).await;
            let summary = crate::commands::deploy::summary(&applied, "deploy web 1.0 to dev");
            summary.lines().last().unwrap_or_default().to_string()
        };
        assert_eq!(
            rollout(vec![failing(), target("t2", vec![])]).await,
            "rollout stopped: 1 failed (max_failures 0); the remaining target was not touched"
        );
        assert_eq!(rollout(vec![failing()]).await, "rollout stopped: 1 failed (max_failures 0)");
    }

    #[tokio::test]
    async fn a_step_still_running_from_another_run_is_not_disturbed() {
        let launch = Reply::ok("--- busy\napp=web\nenvironment=dev\ndeployment=d0\nversion=0.9\n");
        let (host, r) = deploy_one(target("t1", vec![(LAUNCH, launch)]), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Untouched)));
        assert!(r.error.unwrap_or_default().starts_with("the replace step of deployment d0 still runs here"));
        assert_eq!(steps(&host), [PULL, LAUNCH, MIRROR]);
    }

    #[tokio::test]
    async fn an_unchanged_running_container_is_left_alone_and_a_stopped_one_is_started() {
        let running = target("t1", vec![(PULL, Reply::ok(&listed(PLANNED, "running")))]);
        let (host, r) = deploy_one(running, None).await;
        assert_eq!((r.status, r.action), (Status::Ok, Some(Action::Unchanged)));
        assert_eq!(steps(&host), [PULL, GATE, MIRROR], "checked, then left alone");
        assert!(host.ran(GATE)[0].contains("c=old1;"), "the running container is the one gated");

        let stopped = target(
            "t2",
            vec![(PULL, Reply::ok(&listed(PLANNED, "exited"))), ("docker start", Reply::ok(""))],
        );
        let (host, r) = deploy_one(stopped, None).await;
        assert_eq!((r.status, r.action), (Status::Ok, Some(Action::Started)));
        assert_eq!(steps(&host), [PULL, "docker start", GATE, MIRROR]);
    }

    /// A container with the planned config whose gate never passed (the runner died mid-gate)
    /// is not a success on the next run: the no-op checks health first.
    #[tokio::test]
    async fn unchanged_means_checked_an_unhealthy_container_with_the_planned_config_fails() {
        let unhealthy = Reply::Exit {
            code: 1,
            stdout: "gate: unhealthy (image HEALTHCHECK)\nwget: connection refused\n".into(),
            stderr: String::new(),
        };
        let overrides = vec![(PULL, Reply::ok(&listed(PLANNED, "running"))), (GATE, unhealthy)];
        let (host, r) = deploy_one(target("t1", overrides), None).await;
        assert_eq!((r.status, r.action), (Status::Failed, Some(Action::Unchanged)));
        assert_eq!(
            r.error.as_deref(),
            Some(
                "the running container has the planned config but is not healthy: health gate: unhealthy \
                 (image HEALTHCHECK): wget: connection refused (left as it is; `--force` replaces it)"
            )
        );
        assert_eq!(r.logs, ["log line 1", "log line 2"]);
        assert_eq!(steps(&host), [PULL, GATE, LOGS, MIRROR], "nothing replaced, stopped or removed");
        assert!(host.ran(GATE)[0].contains("if [ 1 = 1 ]"), "the grace counts from the container's start");
    }

    #[tokio::test]
    async fn targets_fail_alone_and_reports_keep_the_plans_order() {
        let hosts = vec![
            Arc::new(target("a", vec![])),
            Arc::new(target("b", vec![(PULL, Reply::Lost)])),
            Arc::new(target("c", vec![])),
        ];
        let applied = deploy(hosts.clone(), None, false).await;
        let got: Vec<(&str, Status)> =
            applied.reports.iter().map(|r| (r.target.as_str(), r.status)).collect();
        assert_eq!(got, [("a", Status::Ok), ("b", Status::Error), ("c", Status::Ok)]);
        assert!(hosts[1].ran(LAUNCH).is_empty());
    }

    #[test]
    fn decide_is_one_rule_for_the_rollout_and_the_diff() {
        let tp = target_plan("t");
        let live = |running, hash| Some(Live { running, config_hash: hash });
        assert_eq!(decide(None, &tp, false), Decision::Create);
        assert_eq!(decide(None, &tp, true), Decision::Create);
        assert_eq!(decide(live(true, Some(PLANNED)), &tp, false), Decision::Unchanged);
        assert_eq!(decide(live(false, Some(PLANNED)), &tp, false), Decision::Start);
        assert_eq!(decide(live(true, Some(PLANNED)), &tp, true), Decision::Replace, "--force");
        assert_eq!(decide(live(false, Some(PLANNED)), &tp, true), Decision::Replace, "--force");
        assert_eq!(decide(live(true, Some("other")), &tp, false), Decision::Replace);
        assert_eq!(decide(live(false, None), &tp, false), Decision::Replace, "not ferry's container");
        let brief = Brief {
            id: "x".into(),
            name: "web-dev".into(),
            running: false,
            config_hash: Some(PLANNED.into()),
            version: None,
            digest: None,
        };
        assert_eq!(decide(Some(Live::from(&brief)), &tp, false), Decision::Start);
        assert_eq!(Decision::Unchanged.label(), "unchanged");
    }

    // ---- behind the proxy (issue 15) ----

    const ENSURE: &str = "\nferry_proxy_ensure ";
    const ALIAS: &str = "web-dev-0123456789ab";

    /// The status lines of a proxied step up to a passed gate (nothing is stopped first).
    fn proxied_gated() -> String {
        format!("started new1\ng gate: health.cmd passed\ng --- inspect\ng {INSPECT}\ngated 0\n")
    }

    /// A proxied target: the proxy runs, the step gates, switches, drains and commits, unless
    /// `overrides` (checked first) say otherwise.
    fn proxied_target(overrides: Vec<(&str, Reply)>) -> FakeHost {
        let mut host = FakeHost::new("a");
        for (pattern, reply) in overrides {
            host = host.on(pattern, reply);
        }
        host.on(LAUNCH, Reply::ok("--- launched\n"))
            .on(ENSURE, Reply::ok("proxy: running\n"))
            .on(PULL, Reply::ok(&listed("hash-old", "running")))
            .on_times(FOLLOW, 1, Reply::ok(&proxied_gated()))
            .on(
                FOLLOW,
                Reply::ok(&format!(
                    "{}step switched the route to {ALIAS}:8080\nstep drained\ndone committed\n",
                    proxied_gated()
                )),
            )
            .on(DECIDE, Reply::ok(""))
            .on(COLLECT, Reply::ok(""))
            .on(HEARTBEAT, Reply::ok(""))
            .on(LOGS, Reply::ok("log line 1\n"))
            .on(POST_DEPLOY, Reply::ok("notified\n"))
            .on(MIRROR, Reply::ok(""))
    }

    /// Deploys the one proxied target `host`; the report and the step messages.
    async fn deploy_proxied(host: &Arc<FakeHost>, post_deploy: Option<&str>) -> (TargetReport, Vec<String>) {
        let mut plan = plan(&["a"]);
        for t in &mut plan.targets {
            t.route = Some(crate::inventory::Route {
                host: "web.example.com".into(),
                port: 8080,
                health: "/up".into(),
                path: None,
                tls: None,
            });
            t.alias = Some(crate::plan::alias(&t.container, &plan.deployment));
        }
        let connections: Connections = [("a".to_string(), Arc::clone(host) as Arc<dyn Host>)].into();
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let planner: Arc<dyn Planner> = Arc::new(TestPlanner(post_deploy.map(str::to_string)));
        let applied = apply(plan, planner, &connections, &[], &settings(), &events, cancel).await;
        let mut steps = Vec::new();
        while let Ok(event) = received.try_recv() {
            if let Event::TargetStep { step, .. } = event {
                steps.push(step);
            }
        }
        (applied.reports[0].clone(), steps)
    }

    /// Which of the proxied flow's steps ran, in order.
    fn proxied_steps(host: &FakeHost) -> Vec<&'static str> {
        let names = [LAUNCH, ENSURE, PULL, FOLLOW, DECIDE, COLLECT, HEARTBEAT, LOGS, POST_DEPLOY, MIRROR];
        host.calls()
            .iter()
            .map(|c| names.iter().find(|p| c.command.contains(**p)).copied().unwrap_or("?"))
            .filter(|s| *s != MIRROR && *s != HEARTBEAT)
            .collect()
    }

    #[tokio::test]
    async fn behind_the_proxy_the_new_container_starts_beside_the_old_and_the_step_switches_after_commit() {
        let host = Arc::new(proxied_target(vec![]));
        let (report, steps) = deploy_proxied(&host, Some("notify-deployed")).await;
        assert_eq!(report.status, Status::Ok, "{report:?}");
        assert_eq!(report.action, Some(Action::Replaced));
        assert_eq!(
            report.container.as_ref().map(|c| c.name.as_str()),
            Some("web-dev"),
            "renamed from NAME-next"
        );
        assert_eq!(
            proxied_steps(&host),
            [PULL, ENSURE, LAUNCH, FOLLOW, POST_DEPLOY, DECIDE, FOLLOW, COLLECT],
            "pull, ensure the proxy, start beside, gate, post_deploy, commit, then the outcome"
        );
        assert!(host.ran(DECIDE)[0].contains("commit"));
        // The detached script: run as NAME-next, gate, wait for commit, switch, drain, stop the
        // old one, rename; nothing stops the old container before the switch.
        let launch = &host.ran(LAUNCH)[0];
        assert!(launch.contains("--name web-dev-next"), "{launch}");
        assert!(launch.contains(&format!("--network-alias {ALIAS}")) || !launch.contains("--network-alias"));
        let at = |needle: &str| launch.find(needle).unwrap_or_else(|| panic!("{needle} not in the script"));
        let order = [
            "id=$(",
            "timeout 3 wget -q -O /dev/null http://web-dev-0123456789ab:8080/up",
            "gated $rc",
            "case $decision in",
            "ferry_proxy_set ",
            "step switched the route",
            "reverse_proxy/upstreams",
            "docker stop ",
            "docker rename \"$next\" \"$c\"",
            "done committed",
        ];
        let positions: Vec<usize> = order.iter().map(|n| at(n)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{order:?} at {positions:?}");
        assert_eq!(
            launch.matches("docker stop").count(),
            1,
            "the old container is stopped once, after the switch"
        );
        assert!(steps.iter().any(|s| s == &format!("switched the route to {ALIAS}:8080")), "{steps:?}");
        assert!(steps.iter().any(|s| s == "drained"), "{steps:?}");
        assert!(launch.contains("if [ 0 = 1 ] && alive"), "with a post_deploy, the script waits for commit");
    }

    #[tokio::test]
    async fn without_post_deploy_the_script_switches_as_soon_as_its_gate_passes() {
        let host = Arc::new(proxied_target(vec![]));
        let (report, _) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Ok, "{report:?}");
        let launch = &host.ran(LAUNCH)[0];
        assert!(launch.contains("if [ 1 = 1 ] && alive; then decision=commit"), "{launch}");
    }

    #[tokio::test]
    async fn a_proxy_that_cannot_be_booted_touches_nothing() {
        let host = Arc::new(proxied_target(vec![(ENSURE, Reply::fail(1, "port 80 is already allocated"))]));
        let (report, _) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Failed);
        assert_eq!(report.action, Some(Action::Untouched));
        assert!(
            report.error.as_deref().unwrap_or_default().contains("port 80 is already allocated"),
            "{report:?}"
        );
        assert!(host.ran(LAUNCH).is_empty(), "no container started");
    }

    #[tokio::test]
    async fn a_new_container_that_fails_its_gate_is_removed_and_the_old_one_serves_on() {
        let failed = "started new1\ng gate: '/up' did not answer 2xx through the proxy network within 5s\ngated 1\nlog boom\ndone discarded\n";
        let host = Arc::new(proxied_target(vec![(FOLLOW, Reply::ok(failed))]));
        let (report, steps) = deploy_proxied(&host, Some("notify-deployed")).await;
        assert_eq!(report.status, Status::Failed);
        assert_eq!(report.action, Some(Action::Restored));
        assert_eq!(
            report.error.as_deref(),
            Some("health gate: '/up' did not answer 2xx through the proxy network within 5s")
        );
        assert_eq!(report.logs, ["boom"]);
        assert!(host.ran(DECIDE).is_empty() && host.ran(POST_DEPLOY).is_empty());
        assert!(
            steps.iter().any(|s| s == "failed: removing the new container (the old one keeps serving)"),
            "{steps:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_post_deploy_discards_the_new_container_before_any_switch() {
        let host = Arc::new(proxied_target(vec![
            (POST_DEPLOY, Reply::fail(1, "smoke test failed")),
            (FOLLOW, Reply::ok(&format!("{}log x\ndone discarded\n", proxied_gated()))),
        ]));
        let (report, _) = deploy_proxied(&host, Some("notify-deployed")).await;
        assert_eq!(report.status, Status::Failed);
        assert_eq!(report.action, Some(Action::Restored));
        assert!(host.ran(DECIDE)[0].contains("restore"), "the step is told to discard");
    }

    #[tokio::test]
    async fn a_route_the_proxy_refuses_fails_the_target_with_caddys_words() {
        let failing = FakeHost::new("a")
            .on(LAUNCH, Reply::ok("--- launched\n"))
            .on_times(FOLLOW, 1, Reply::ok(&proxied_gated()))
            .on(
                FOLLOW,
                Reply::ok(&format!(
                    "{}err caddy: loading config: bad host\nswitchfailed\ndone discarded\n",
                    proxied_gated()
                )),
            );
        let host = Arc::new(with_proxy_defaults(failing));
        let (report, _) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Failed);
        assert_eq!(report.action, Some(Action::Restored));
        assert_eq!(report.error.as_deref(), Some("proxy switch: caddy: loading config: bad host"));
    }

    /// The proxied defaults after `host`'s own rules.
    fn with_proxy_defaults(host: FakeHost) -> FakeHost {
        host.on(ENSURE, Reply::ok("proxy: booted\n"))
            .on(PULL, Reply::ok(&listed("hash-old", "running")))
            .on(DECIDE, Reply::ok(""))
            .on(COLLECT, Reply::ok(""))
            .on(HEARTBEAT, Reply::ok(""))
            .on(LOGS, Reply::ok(""))
            .on(MIRROR, Reply::ok(""))
    }

    #[tokio::test]
    async fn a_step_that_lost_its_runner_removes_the_new_container_itself_and_says_so() {
        let abandoned = FakeHost::new("a")
            .on(LAUNCH, Reply::ok("--- launched\n"))
            .on_times(FOLLOW, 1, Reply::ok(&proxied_gated()))
            .on(FOLLOW, Reply::ok(&format!("{}done abandoned-discarded\n", proxied_gated())));
        let host = Arc::new(with_proxy_defaults(abandoned));
        let (report, steps) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Error);
        assert_eq!(report.action, Some(Action::Restored));
        assert_eq!(
            report.error.as_deref(),
            Some(
                "the target lost track of this run: nobody collected the result: the script removed the new \
                 container before the switch; the old one kept serving"
            )
        );
        assert!(steps.iter().any(|s| s == "proxy: booted caddy:2"), "{steps:?}");
    }

    #[tokio::test]
    async fn a_link_lost_while_following_says_the_old_container_still_serves() {
        let lost = FakeHost::new("a").on(LAUNCH, Reply::ok("--- launched\n")).on(FOLLOW, Reply::Lost);
        let host = Arc::new(with_proxy_defaults(lost));
        let (report, _) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Error);
        let error = report.error.unwrap_or_default();
        assert!(
            error.contains("the old container still serves; the target removes the new one by itself"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_stray_next_container_is_left_to_the_step_which_removes_it() {
        let listed = format!(
            "{}stray1\tweb-dev-next\trunning\thash-x\nother\tweb-dev-2\trunning\thash-y\n",
            listed("hash-old", "running")
        );
        let host = Arc::new(proxied_target(vec![(PULL, Reply::ok(&listed))]));
        let (report, steps) = deploy_proxied(&host, None).await;
        assert_eq!(report.status, Status::Ok);
        assert!(!steps.iter().any(|s| s.contains("web-dev-next")), "{steps:?}");
        assert!(
            steps.iter().any(|s| s == "found another container of this app: web-dev-2 (left alone)"),
            "{steps:?}"
        );
        let launch = &host.ran(LAUNCH)[0];
        assert!(launch.contains("removed a stray $next"), "the step removes it and says so");
    }

    #[test]
    fn next_argv_renames_only_ferrys_own_name() {
        let argv: Vec<String> =
            ["docker", "run", "--name", "web-dev", "img", "--name", "web-dev"].map(String::from).to_vec();
        assert_eq!(next_argv(&argv, "web-dev", "web-dev-next")[3], "web-dev-next");
        assert_eq!(
            next_argv(&argv, "web-dev", "web-dev-next")[6],
            "web-dev",
            "the command's words are its own"
        );
    }
}
