//! `ferry deploy`: plan → confirm → lock → pull → replace → health gate → audit → report.
//!
//! The rollout itself is [`crate::apply`]; this file wires it to the inventory (planning and
//! re-planning with the pinned digest, rendering `post_deploy`), the lock, the audit log and the
//! summary. `rollback` runs through the same [`execute`] with a plan rebuilt from the record.
//!
//! The inventory's `[hooks]` ([`crate::hooks`]) run here, inside the session (the lock held):
//! `pre_deploy` before the rollout, `post_deploy` or `failed` after it.
//! Between the rollout and those hooks, image retention ([`crate::commands::prune`]) runs on the
//! targets that succeeded: a warning when it fails, never the exit code.
//!
//! Before the hook, an app with `networks` or `volumes` has them checked on every target
//! ([`crate::netvol::preflight`]): a network that exists with other options is exit 2 there.
//!
//! Exit code: 0 when every target runs the planned container (changed or already up to date);
//! 1 when a target failed or was unreachable, or the rollout stopped; 2 a network that exists
//! with other options; 3 locked; 4 not confirmed,
//! a host key refused or a failing `pre_deploy` hook; 130 interrupted.

use std::sync::{Arc, Mutex};

use super::session::{After, Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, runtime, ssh_options, store};
use crate::apply::{self, Applied, Planner};
use crate::audit::Entry;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::plan::Plan;
use crate::planning::InventoryPlanner;
use crate::records::{RunFinished, RunStarted};
use crate::render::Renderer;
use crate::report::Status;
use crate::request::{Apply as ApplyFlags, Deploy as DeployArgs, Selection};
use crate::secret::mask;

/// Runs `ferry deploy`.
pub fn run(inventory: Inventory, args: &DeployArgs, output: OutputFormat) -> Result<i32, Error> {
    // The feed says which tag `latest` is and which bytes the tag names, once, before any
    // target is touched: every target then pulls and runs those bytes.
    let app = inventory.app(&args.selection.app)?;
    inventory.environment(&args.selection.environment)?;
    // Before the feed is asked: a deploy that cannot happen is bad input, found offline.
    app.check_deploys_to(&args.selection.environment)?;
    let freeze = freeze_gate(&inventory, "deploy", &args.selection.environment, &args.apply)?;
    // `--archive`: the image id and tag come from the file, before any SSH; no registry is asked.
    let archive = args.archive.as_deref().map(crate::archive::read).transpose()?;
    let (version, digest) = match &archive {
        Some(archive) => (archive_version(archive, args.version.as_deref())?, Some(archive.id.clone())),
        None => {
            let version = args.version.as_deref().unwrap_or("latest");
            runtime()?.block_on(super::feed::resolve(&inventory, app, version))?
        }
    };
    let skip = args.skip_lifecycle.clone();
    let mut notes =
        lifecycle_gate(&inventory, app, &args.selection.environment, &version, digest.as_deref(), skip)?;
    notes.freeze_override = freeze;
    if let Some(archive) = archive {
        notes.source = Some("archive".into());
        notes.archive_file = Some(archive.path.display().to_string());
        notes.archive = Some(Arc::new(archive));
    }
    let release = Release { version, digest, kind: Kind::Deploy, notes };
    deploy_release(inventory, &args.selection, release, &args.apply, output)
}

/// The version an archive's deployment records: `--version`, else the archive's tag.
fn archive_version(archive: &crate::archive::ImageArchive, asked: Option<&str>) -> Result<String, Error> {
    let version = match asked {
        Some("latest") => {
            return Err(Error::Input(
                Diagnostic::new("--version latest asks the feed, and --archive asks no registry")
                    .help("give the tag to record with --version TAG, or leave it out to use the archive's"),
            ));
        }
        Some(tag) => tag.to_string(),
        None => archive.tag().map(str::to_string).ok_or_else(|| {
            Error::Input(
                Diagnostic::new(format!("--archive {}: its image has no tag", archive.path.display()))
                    .help("give the version to record with --version TAG"),
            )
        })?,
    };
    crate::request::check_tag(&version)?;
    Ok(version)
}

/// A version to roll out, and why it may.
pub struct Release {
    /// The tag.
    pub version: String,
    /// Its digest, when known before the rollout.
    pub digest: Option<String>,
    /// The command.
    pub kind: Kind,
    /// What the record says about it besides the plan.
    pub notes: Notes,
}

/// Facts about a rollout that its `run_started` record keeps.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Notes {
    /// A rollback: the deployment it returns to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// A promotion: the deployment (and phase) whose release it deploys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    /// The lifecycle gate's verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<String>,
    /// `--skip-lifecycle --reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_lifecycle: Option<String>,
    /// `--override-freeze --reason` inside a freeze window: the window and the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_override: Option<crate::freeze::Override>,
    /// Where the image came from when not from a registry: `archive` (`--archive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `--archive`: the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_file: Option<String>,
    /// `--archive`: the archive itself, for the load step (not recorded).
    #[serde(skip)]
    pub archive: Option<Arc<crate::archive::ImageArchive>>,
    /// The image id a promoted archive deployment ran (not recorded: the plan's image is): no
    /// registry has `repo@<image id>`, so the targets are checked for the id instead.
    #[serde(skip)]
    pub image: Option<String>,
}

/// Refuses (exit 4) to change `environment` inside a freeze window, before anything is asked or
/// connected, unless `--override-freeze --reason` says why; returns what the record keeps of an
/// override.
pub fn freeze_gate(
    inventory: &Inventory,
    command: &str,
    environment: &str,
    flags: &ApplyFlags,
) -> Result<Option<crate::freeze::Override>, Error> {
    if let Some(reason) = &flags.override_freeze
        && reason.trim().is_empty()
    {
        return Err(Error::Input(
            Diagnostic::new("--reason: an empty reason")
                .help("say why the freeze is overridden: it is kept in the audit log"),
        ));
    }
    let Some(frozen) = crate::freeze::frozen(&inventory.freezes, environment, jiff::Timestamp::now()) else {
        return Ok(None);
    };
    match &flags.override_freeze {
        Some(reason) => {
            eprintln!("warning: freeze overridden: {}; reason: {reason}", frozen.describe(environment));
            Ok(Some(frozen.record(reason)))
        }
        None => Err(Error::Refused(freeze_refusal(inventory, command, environment, &frozen))),
    }
}

/// Why `command` may not change `environment` now: the window, its end, and the way out.
fn freeze_refusal(
    inventory: &Inventory,
    command: &str,
    environment: &str,
    frozen: &crate::freeze::Frozen<'_>,
) -> Diagnostic {
    Diagnostic::new(format!("{command} refused: {}", frozen.describe(environment)))
        .at(&inventory.source, frozen.window.span.clone())
        .help("wait until it ends, or pass --override-freeze --reason TEXT (the reason is kept in the audit log)")
}

/// The freeze check again, once the lock is held (see [`freeze_gate`] for the first one).
struct FreezeRecheck {
    inventory: Arc<Inventory>,
    command: &'static str,
    environment: String,
    /// `--override-freeze --reason`: the run proceeds in any window, for this reason.
    reason: Option<String>,
    /// The first check already found a window (and its override is in `run_started`).
    overridden_at_start: bool,
}

/// What the second freeze check says.
enum Recheck {
    /// No window, or one the first check already saw overridden.
    Free,
    /// A window that began after the first check, overridden: for `run_finished`.
    Overridden(crate::freeze::Override),
    /// A window that began after the first check, not overridden: exit 4.
    Refused(Diagnostic),
}

impl FreezeRecheck {
    fn check(&self) -> Recheck {
        if self.overridden_at_start {
            return Recheck::Free;
        }
        let Some(frozen) =
            crate::freeze::frozen(&self.inventory.freezes, &self.environment, jiff::Timestamp::now())
        else {
            return Recheck::Free;
        };
        match &self.reason {
            Some(reason) => {
                eprintln!(
                    "warning: freeze overridden: {}; reason: {reason}",
                    frozen.describe(&self.environment)
                );
                Recheck::Overridden(frozen.record(reason))
            }
            None => {
                Recheck::Refused(freeze_refusal(&self.inventory, self.command, &self.environment, &frozen))
            }
        }
    }
}

/// Plans `release` from the inventory and runs it.
pub fn deploy_release(
    inventory: Inventory,
    selection: &Selection,
    release: Release,
    flags: &ApplyFlags,
    output: OutputFormat,
) -> Result<i32, Error> {
    let renderer = Renderer::new(&inventory).map_err(Error::Render)?;
    let hash_key = crate::planning::hash_key(&*store(&inventory)?)?;
    let planner = InventoryPlanner {
        renderer,
        app: selection.app.clone(),
        environment: selection.environment.clone(),
        version: release.version,
        limits: selection.limits.clone(),
        sets: selection.sets.clone(),
        deployment: new_deployment_id(),
        digest: Mutex::new(release.digest.clone()),
        hash_key,
        image: release.notes.archive.as_ref().map(|a| a.id.clone()).or_else(|| release.notes.image.clone()),
        inventory: Arc::new(inventory),
    };
    let plan = planner.plan(release.digest.as_deref())?;
    let inventory = Arc::clone(&planner.inventory);
    execute(&inventory, plan, Arc::new(planner), release.kind, flags, output, release.notes)
}

/// Refuses (exit 4) a release that has not passed the earlier phase, unless skipped with a
/// reason; returns what the record should say.
pub fn lifecycle_gate(
    inventory: &Inventory,
    app: &crate::inventory::App,
    environment: &str,
    version: &str,
    digest: Option<&str>,
    skip: Option<String>,
) -> Result<Notes, Error> {
    // The phases the app deploys to: a prod-only worker is not held back by staging.
    let phases = app.phases(&inventory.phases);
    let by_phase = super::store(inventory)?.successes_by_phase(&app.name, &phases)?;
    let successes = |phase: &str| by_phase.get(phase).map(|d| d.iter().collect()).unwrap_or_default();
    let release = digest.unwrap_or(version);
    let gate = crate::lifecycle::check(&phases, &inventory.optional_phases, environment, release, successes);
    let mut notes = Notes::default();
    match gate {
        crate::lifecycle::Gate::Free => {}
        crate::lifecycle::Gate::Passed { phase, deployment } => {
            notes.lifecycle = Some(format!("passed {phase} in deployment {deployment}"));
        }
        crate::lifecycle::Gate::Refused { missing } => {
            let what = format!("{} {version} ({release})", app.name);
            match skip {
                Some(reason) if !reason.trim().is_empty() => {
                    eprintln!(
                        "warning: lifecycle skipped: {what} never succeeded in {missing}; reason: {reason}"
                    );
                    notes.lifecycle = Some(format!("skipped: never succeeded in {missing}"));
                    notes.skip_lifecycle = Some(reason);
                }
                _ => {
                    return Err(Error::Refused(
                        Diagnostic::new(format!(
                            "lifecycle: {what} has no successful deployment to {missing}, the phase before {environment}"
                        ))
                        .help(format!(
                            "deploy it to {missing} first (or `ferry promote {} --to {missing}`); to override, pass --skip-lifecycle --reason TEXT (audited)",
                            app.name
                        )),
                    ));
                }
            }
        }
    }
    Ok(notes)
}

/// Which command is rolling out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ferry deploy`.
    Deploy,
    /// `ferry rollback`, to the deployment with this id.
    Rollback,
    /// `ferry promote`.
    Promote,
}

impl Kind {
    fn command(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
            Kind::Promote => "promote",
        }
    }
}

/// Confirms, locks, rolls `plan` out, records and reports it; returns the exit code. `notes`
/// go into the `run_started` record (a rollback's target, the lifecycle verdict).
pub fn execute(
    inventory: &Arc<Inventory>,
    plan: Plan,
    planner: Arc<dyn Planner>,
    kind: Kind,
    flags: &ApplyFlags,
    output: OutputFormat,
    notes: Notes,
) -> Result<i32, Error> {
    let command = kind.command();
    let env = inventory.environment(&plan.environment)?.clone();
    let app = inventory.app(&plan.app)?.clone();
    let what = format!("{command} {} {} to {}", plan.app, plan.version, plan.environment);
    let prompt = format!("{what} ({})", crate::output::count(plan.targets.len(), "target"));
    Session::confirm(flags.yes, &prompt, || super::plan::human(&plan))?;
    let store = store(inventory)?;
    // `--archive` pulls nothing: the feed's credentials are neither needed nor read.
    let login = if notes.archive.is_some() { None } else { super::feed::login_for(inventory, &app)? };
    let proxy_login =
        if app.route(&env.name).is_some() { super::feed::proxy_login(inventory)? } else { None };
    let mut secrets = known_secrets(inventory, &env.name);
    // The registry passwords too: Docker or a target could echo them in an error.
    secrets.extend(login.iter().chain(&proxy_login).map(|l| l.password.clone()));
    let names: Vec<String> = plan.targets.iter().map(|t| t.target.clone()).collect();
    let settings = apply::Settings {
        parallel: flags.parallel,
        force: flags.force,
        timeout: app.health.timeout,
        interval: app.health.interval,
        grace: app.health.grace,
        mirror: format!("ferry {what} ({}) by {}", plan.deployment, store.actor().describe()),
        login,
        secrets: secrets.clone(),
        proxy: inventory.proxy.clone(),
        proxy_login,
        // Uploads share the runner's uplink: at most 4 at once (fewer with a lower --parallel).
        upload: notes.archive.as_ref().map(|archive| apply::Upload {
            archive: Arc::clone(archive),
            slots: Arc::new(tokio::sync::Semaphore::new(flags.parallel.clamp(1, 4))),
        }),
    };
    let session = Session {
        inventory: Arc::clone(inventory),
        store,
        base: Entry {
            run: plan.deployment.clone(),
            command: command.into(),
            app: Some(plan.app.clone()),
            environment: Some(env.name.clone()),
            version: Some(plan.version.clone()),
            digest: plan.digest.clone(),
            ..Entry::default()
        },
        environment: env,
        what: what.clone(),
        secrets: secrets.clone(),
        output,
        quiet: flags.quiet,
        lock: Some((flags.lock, format!("ferry {what}"))),
        ssh: ssh_options(inventory, flags.connect_timeout)?,
    };
    let hooks = inventory.hooks.clone();
    let facts = crate::hooks::Facts {
        app: plan.app.clone(),
        environment: plan.environment.clone(),
        version: plan.version.clone(),
        digest: plan.digest.clone(),
        run: plan.deployment.clone(),
        actor: session.store.actor().describe(),
        targets: names.clone(),
    };
    let refused_skips = names.len();
    let hook_secrets = secrets.clone();
    let (records, kept_inventory) = (Arc::clone(&session.store), Arc::clone(inventory));
    let started = RunStarted {
        image: Some(plan.image.clone()),
        force: Some(flags.force),
        notes: serde_json::to_value(&notes).ok(),
        ..RunStarted::default()
    };
    // The `post_deploy` or `failed` hook's end, filled in once it ran (after `run_finished`).
    let after_hook: Arc<Mutex<Option<crate::records::HookFinished>>> = Arc::default();
    let after_slot = Arc::clone(&after_hook);
    let recheck = FreezeRecheck {
        inventory: Arc::clone(inventory),
        command,
        environment: plan.environment.clone(),
        reason: flags.override_freeze.clone(),
        overridden_at_start: notes.freeze_override.is_some(),
    };
    let parallel = flags.parallel;
    let outcome = session.run(names, started, |mut context: Context| async move {
        use crate::hooks::{HookKind, RunOutcome};
        let begins = context.rollout_begins.take();
        // Again with the lock held: a wait for the lock or at the prompt may have run into a
        // window that had not begun when the command started.
        let late_override = match recheck.check() {
            Recheck::Free => None,
            Recheck::Overridden(granted) => Some(granted),
            Recheck::Refused(refusal) => return refused(refused_skips, &refusal),
        };
        // Networks that exist with other options anywhere: bad input, before any hook or target.
        if let Err(mismatch) =
            crate::netvol::preflight(&plan, &context.connections, parallel, &context.events).await
        {
            let mut finish = refused(refused_skips, &mismatch);
            finish.value = Rolled::Invalid(mismatch);
            return finish;
        }
        let pre =
            crate::hooks::run(&hooks, HookKind::PreDeploy, &facts, None, &context.events, &hook_secrets)
                .await;
        if let Some(pre) = pre.filter(|p| p.status != crate::hooks::HookStatus::Ok) {
            // Before any pull: nothing on any target has changed.
            let refusal = crate::hooks::refusal(&pre);
            return refused(refused_skips, &refusal);
        }
        // What retention keeps is read before anything changes (see `prune::Histories`).
        let histories =
            crate::commands::prune::Histories::read(&kept_inventory, &*records, &facts.app, &facts.targets)
                .map_err(|e| e.to_string());
        if let Some(begins) = begins {
            let _ = begins.send(());
        }
        let applied = apply::apply(
            plan,
            planner,
            &context.connections,
            &context.unreached,
            &settings,
            &context.events,
            context.cancel,
        )
        .await;
        // Image retention on the targets that run the new container, under the lock and
        // before `run_finished`: its outcome is part of the run, never its exit code.
        let mut retention = Vec::new();
        if !applied.interrupted {
            let succeeded =
                applied.reports.iter().filter(|r| r.status == Status::Ok).map(|r| r.target.clone()).collect();
            retention = crate::commands::prune::after_rollout(
                &kept_inventory,
                &histories,
                &applied.plan,
                succeeded,
                &context.connections,
                parallel,
                &context.events,
            )
            .await;
        }
        drop(context.connections);
        let outcome = RunOutcome::of(applied.reports.iter().map(|r| r.status));
        let facts = crate::hooks::Facts { digest: applied.plan.digest.clone(), ..facts };
        let events = context.events;
        let after: After = Box::pin(async move {
            let ended =
                crate::hooks::run(&hooks, outcome.hook(), &facts, Some(outcome), &events, &hook_secrets)
                    .await;
            *after_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = ended;
        });
        let mut finished = finish(applied, notes.rollback_to.as_deref(), after, retention);
        if let Some(record) = finished.record.as_mut() {
            record.freeze_override = late_override;
        }
        finished
    })?;
    let Outcome::Finished { value, audited } = outcome else { return Ok(EXIT_INTERRUPTED) };
    let applied = match value {
        Rolled::Refused(refusal) => return Err(Error::Refused(refusal)),
        Rolled::Invalid(mismatch) => return Err(Error::Input(mismatch)),
        Rolled::Applied(applied) => *applied,
    };
    let after = after_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let hook_report = after.as_ref().map_or_else(String::new, crate::hooks::report);
    let nothing_to_say = flags.quiet
        && hook_report.is_empty()
        && applied
            .reports
            .iter()
            .all(|r| r.status == Status::Ok && r.action == Some(crate::docker::Action::Unchanged));
    if output != OutputFormat::Json && !nothing_to_say {
        output::print(&mask(&(summary(&applied, &what) + &hook_report), &secrets))?;
    }
    let code = exit_code(&applied);
    // A deployment whose outcome is not on record did not fully succeed.
    Ok(if code == 0 && !audited { 1 } else { code })
}

/// What the work under the session ends with.
enum Rolled {
    /// The `pre_deploy` hook failed: nothing ran.
    Refused(Diagnostic),
    /// The networks preflight found a network it cannot join (exit 2): nothing ran.
    Invalid(Diagnostic),
    /// The rollout ran.
    Applied(Box<Applied>),
}

/// A run that `pre_deploy` refused, as the session records it: every target skipped, and
/// why in `run_finished` (`history` shows it as refused).
fn refused(targets: usize, refusal: &Diagnostic) -> Finish<Rolled> {
    let why = refusal.message.lines().next().unwrap_or_default().to_string();
    Finish {
        ok: 0,
        failed: 0,
        skipped: targets,
        interrupted: false,
        stopped: None,
        record: Some(RunFinished { refused: Some(why), ..RunFinished::default() }),
        digest: None,
        after: None,
        value: Rolled::Refused(refusal.clone()),
    }
}

/// The rollout's end as the session records it: counts and the deployment's record.
fn finish(
    applied: Applied,
    rollback_to: Option<&str>,
    after: After,
    retention: Vec<crate::retention::Pruned>,
) -> Finish<Rolled> {
    let deployment =
        crate::deployments::detail(&applied.plan, &applied.reports, applied.interrupted, rollback_to);
    let count = |s: Status| applied.reports.iter().filter(|r| r.status == s).count();
    Finish {
        ok: count(Status::Ok),
        failed: applied.reports.len() - count(Status::Ok) - count(Status::Skipped),
        skipped: count(Status::Skipped),
        interrupted: applied.interrupted,
        stopped: applied.stopped.clone(),
        record: Some(RunFinished {
            deployment: Some(deployment),
            retention: (!retention.is_empty())
                .then(|| retention.into_iter().map(|p| (p.target.clone(), p)).collect()),
            ..RunFinished::default()
        }),
        digest: applied.plan.digest.clone(),
        after: Some(after),
        value: Rolled::Applied(Box::new(applied)),
    }
}

/// The human summary after a rollout: a row per target, the new containers' logs of failed
/// ones, and why the rollout stopped early.
pub(crate) fn summary(applied: &Applied, what: &str) -> String {
    let rows: Vec<Vec<String>> = applied
        .reports
        .iter()
        .map(|r| {
            let c = r.container.as_ref();
            let ports = c.map_or_else(String::new, |c| {
                let shown: Vec<String> = c.ports.iter().map(published).collect();
                shown.join(",")
            });
            vec![
                r.target.clone(),
                r.status.label().to_string(),
                r.action.map_or("-", |a| a.label()).to_string(),
                c.map_or_else(|| "-".into(), |c| c.id.chars().take(12).collect()),
                c.map_or_else(|| "-".into(), |c| if c.ip.is_empty() { "-".into() } else { c.ip.clone() }),
                if ports.is_empty() { "-".into() } else { ports },
                crate::duration::format_short(r.duration),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let plan = &applied.plan;
    let image =
        plan.digest.as_ref().map_or_else(|| plan.image.clone(), |d| format!("{} ({d})", plan.version));
    let mut out = format!("\n{what}: {image}\n");
    out += &table(&["TARGET", "STATUS", "ACTION", "CONTAINER", "IP", "PORTS", "TIME", "DETAIL"], &rows);
    for r in applied.reports.iter().filter(|r| !r.logs.is_empty()) {
        out += &format!("\n{}: last log lines of the new container:\n", r.target);
        for line in &r.logs {
            out += &format!("  | {line}\n");
        }
    }
    if let Some(why) = &applied.stopped {
        // Only when some were left: a rollout stopped after its last batch touched them all.
        let untouched = applied.reports.iter().filter(|r| r.status == Status::Skipped).count();
        out += &match untouched {
            0 => format!("\n{why}\n"),
            n => format!(
                "\n{why}; {} not touched\n",
                if n == 1 {
                    "the remaining target was".to_string()
                } else {
                    format!("the remaining {n} targets were")
                }
            ),
        };
    }
    out
}

fn published(p: &crate::docker::PublishedPort) -> String {
    let host = if p.host_ip.contains(':') { format!("[{}]", p.host_ip) } else { p.host_ip.clone() };
    format!("{host}:{}->{}", p.host_port, p.container)
}

/// 130 interrupted; 4 when a host key was refused (that target was not touched, like `run`);
/// 0 when every target is ok; else 1 (an unreachable target included).
fn exit_code(applied: &Applied) -> i32 {
    if applied.interrupted {
        EXIT_INTERRUPTED
    } else if applied.reports.iter().any(|r| r.status == Status::Refused) {
        crate::error::EXIT_REFUSED
    } else if applied.reports.iter().all(|r| r.status == Status::Ok) {
        0
    } else {
        1
    }
}
