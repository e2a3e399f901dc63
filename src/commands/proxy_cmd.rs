//! `ferry proxy status|boot|reboot --env ENV` and `ferry maintenance on|off APP --env ENV`.
//!
//! The proxy is per target, not per app: one `ferry-proxy` serves every proxied app and
//! environment on a host, from the route table in `~/.ferry/proxy/routes` (see
//! [`crate::proxy`]). So `status` shows every route on each target of the environment, whatever
//! app or environment it belongs to (the ENV column says), and `reboot` re-applies all of them.
//!
//! The writes (`boot`, `reboot`, `maintenance`) run as sessions like `remove`: the confirmation
//! prompt, the environment lock, a `run_started` record naming the action (and the message),
//! one outcome per target, the mirror line on each target. `status` changes nothing and takes
//! no lock.
//!
//! Exit codes: 0 when every target did what was asked (status: nothing wrong); 1 when one
//! failed or, for `status`, a route points at a container that is gone, the proxy is down while
//! routes exist, a route file is unreadable or a target is unreachable; 2 bad input; 3 locked;
//! 4 not confirmed; 130 interrupted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::session::{Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, runtime, ssh_options, store};
use crate::audit::Entry;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::fanout::{Limits, millis};
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::proxy::{self, Table};
use crate::records::{RunFinished, RunStarted};
use crate::report::{Event, Events, Status};
use crate::request::{Maintenance, Proxy, ProxyWrite};
use crate::secret::{Secret, mask};
use crate::select;

/// Runs `ferry proxy …`.
pub fn run(inventory: Inventory, request: Proxy, output: OutputFormat) -> Result<i32, Error> {
    match request {
        Proxy::Status { environment, limits, connect_timeout } => {
            status(&inventory, &environment, &limits, connect_timeout, output)
        }
        Proxy::Boot(write) => {
            let image = inventory.proxy.image.clone();
            act(inventory, write, None, Action::Boot { image }, output)
        }
        Proxy::Reboot { write, image, recreate } => {
            let image = match image {
                Some(image) => checked_image(image)?,
                None => inventory.proxy.image.clone(),
            };
            act(inventory, write, None, Action::Reboot { image, recreate }, output)
        }
    }
}

/// Runs `ferry maintenance on|off`.
pub fn maintenance(inventory: Inventory, request: Maintenance, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&request.app)?.clone();
    let env = inventory.environment(&request.write.environment)?;
    if app.route(&env.name).is_none() {
        return Err(Error::Input(
            Diagnostic::new(format!("{} is not behind the proxy in {}", app.name, env.name))
                .help("maintenance mode is the proxy's answer: give the app `proxy = { host = …, port = …, health = … }`"),
        ));
    }
    let message = if request.on {
        let message = request.message.unwrap_or_else(|| proxy::DEFAULT_MESSAGE.replace("{app}", &app.name));
        proxy::check_message(&message)
            .map_err(|e| Error::Input(Diagnostic::new(format!("--message: {e}"))))?;
        Some(message)
    } else {
        None
    };
    let image = inventory.proxy.image.clone();
    act(
        inventory,
        request.write,
        Some(app.name.clone()),
        Action::Maintenance { app: app.name, message, image },
        output,
    )
}

/// An image reference given on the command line: one word docker can read as an option-free
/// argument (the registry says the rest when it pulls).
fn checked_image(image: String) -> Result<String, Error> {
    if image.is_empty()
        || image.starts_with('-')
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::Input(Diagnostic::new(format!(
            "--image {image:?} is not an image reference (e.g. caddy:2 or registry.example.com/caddy:2.8)"
        ))));
    }
    Ok(image)
}

/// What a write does on each target.
#[derive(Debug, Clone)]
enum Action {
    /// Network and proxy where missing.
    Boot {
        /// The image to create it from.
        image: String,
    },
    /// Pull, re-apply every route: a graceful load, or a new container when needed or asked.
    Reboot {
        /// The image it must run.
        image: String,
        /// `--recreate`.
        recreate: bool,
    },
    /// The app's route answers 503 with the message (`Some`), or proxies again (`None`).
    Maintenance {
        /// The app.
        app: String,
        /// The answer's text while on.
        message: Option<String>,
        /// The proxy image, should the proxy have to be booted (it was removed by hand).
        image: String,
    },
}

impl Action {
    /// The audit record's command.
    fn command(&self) -> &'static str {
        match self {
            Action::Boot { .. } => "proxy boot",
            Action::Reboot { .. } => "proxy reboot",
            Action::Maintenance { .. } => "maintenance",
        }
    }

    /// What the run does, for prompts, the lock and the summary.
    fn what(&self, environment: &str) -> String {
        match self {
            Action::Boot { .. } => format!("boot the proxy in {environment}"),
            Action::Reboot { image, .. } => format!("reboot the proxy in {environment} with {image}"),
            Action::Maintenance { app, message: Some(_), .. } => {
                format!("put {app} in {environment} in maintenance")
            }
            Action::Maintenance { app, message: None, .. } => {
                format!("take {app} in {environment} out of maintenance")
            }
        }
    }

    /// What the prompt shows before asking.
    fn shown(&self, targets: &[String]) -> String {
        let on = targets.join(", ");
        match self {
            Action::Boot { image } => {
                format!("creates network ferry and starts ferry-proxy ({image}) where missing on: {on}")
            }
            Action::Reboot { image, recreate: true } => format!(
                "pulls {image}, recreates ferry-proxy and loads every route of every app and environment again \
                 (their requests fail for a moment) on: {on}"
            ),
            Action::Reboot { image, recreate: false } => format!(
                "pulls {image} and loads every route of every app and environment again on: {on}; a proxy \
                 that runs another image, is not running or was created by another ferry version is recreated, and \
                 requests to it fail for a moment"
            ),
            Action::Maintenance { app, message: Some(m), .. } => {
                format!("the proxy answers {app}'s requests with 503 {m:?} on: {on}")
            }
            Action::Maintenance { app, message: None, .. } => {
                format!("the proxy sends {app}'s requests to it again on: {on}")
            }
        }
    }

    /// The `run_started` record's notes.
    fn notes(&self) -> serde_json::Value {
        match self {
            Action::Boot { image } => json!({ "action": "boot", "image": image }),
            Action::Reboot { image, recreate } => {
                json!({ "action": "reboot", "image": image, "recreate": recreate })
            }
            Action::Maintenance { message: Some(m), .. } => json!({ "action": "on", "message": m }),
            Action::Maintenance { message: None, .. } => json!({ "action": "off" }),
        }
    }
}

/// How one target ended.
#[derive(Debug, Clone)]
struct Done {
    /// The target.
    target: String,
    /// How it ended.
    status: Status,
    /// What was done there.
    detail: String,
    /// Why it did not end `ok`.
    error: Option<String>,
    /// How long it took.
    duration: Duration,
}

/// Runs one write over the environment's targets (the app's, for maintenance) as a session.
fn act(
    inventory: Inventory,
    write: ProxyWrite,
    app: Option<String>,
    action: Action,
    output: OutputFormat,
) -> Result<i32, Error> {
    let env = inventory.environment(&write.environment)?.clone();
    let targets: Vec<String> = match &app {
        Some(name) => select::select(&inventory, inventory.app(name)?, &env, &write.limits)?,
        None => select::select_environment(&inventory, &env, &[], &write.limits)?,
    }
    .iter()
    .map(|t| t.name.clone())
    .collect();
    let what = action.what(&env.name);
    let prompt = format!("{what} ({})", output::count(targets.len(), "target"));
    Session::confirm(write.yes, &prompt, || action.shown(&targets))?;
    let store = store(&inventory)?;
    // `[proxy] feed`: boot, reboot and a maintenance that finds no proxy pull the image with it.
    let login = super::feed::proxy_login(&inventory)?;
    let mut secrets = known_secrets(&inventory, &env.name);
    secrets.extend(login.iter().map(|l| l.password.clone()));
    let ssh = ssh_options(&inventory, write.connect_timeout)?;
    let mirror = format!("ferry {what} by {}", store.actor().describe());
    let started = RunStarted { notes: Some(action.notes()), ..RunStarted::default() };
    let session = Session {
        inventory: Arc::new(inventory),
        store,
        base: Entry {
            run: new_deployment_id(),
            command: action.command().into(),
            app,
            environment: Some(env.name.clone()),
            ..Entry::default()
        },
        environment: env.clone(),
        what: what.clone(),
        secrets: secrets.clone(),
        output,
        quiet: false,
        lock: Some((write.lock, format!("ferry {what}"))),
        ssh,
    };
    let job =
        Arc::new(Job { action, environment: env.name.clone(), mirror, secrets: secrets.clone(), login });
    let parallel = write.parallel;
    let outcome = session.run(targets.clone(), started, |context: Context| async move {
        let done = everywhere(job, targets, parallel, &context).await;
        let interrupted = *context.cancel.borrow();
        drop(context);
        finish(done, interrupted)
    })?;
    let Outcome::Finished { value: (done, interrupted), audited } = outcome else {
        return Ok(EXIT_INTERRUPTED);
    };
    if output != OutputFormat::Json {
        output::print(&mask(&summary(&done, &what), &secrets))?;
    }
    let code = if interrupted {
        EXIT_INTERRUPTED
    } else if done.iter().all(|d| d.status == Status::Ok) {
        0
    } else {
        1
    };
    Ok(if code == 0 && !audited { 1 } else { code })
}

/// What every target's step needs.
struct Job {
    /// What to do.
    action: Action,
    /// The environment.
    environment: String,
    /// The start of each target's audit mirror line.
    mirror: String,
    /// Masked in the mirror line.
    secrets: Vec<Secret>,
    /// `[proxy] feed`'s login, for pulling the proxy image.
    login: Option<crate::docker::Login>,
}

/// Runs the job on every target over the lock's connections, at most `parallel` at once; after
/// the first signal no further target starts.
async fn everywhere(job: Arc<Job>, targets: Vec<String>, parallel: usize, context: &Context) -> Vec<Done> {
    let limits = Limits { parallel, cancel: Some(context.cancel.clone()) };
    let outcomes = crate::fanout::ordered(
        targets.clone(),
        limits,
        |_, target| {
            let host = context.connections.get(&target).cloned();
            let unreached = context.unreached.iter().find(|u| u.target == target).cloned();
            let (job, events) = (Arc::clone(&job), context.events.clone());
            async move { on_target(&job, target, host, unreached, &events).await }
        },
        |_, target| {
            let skipped = Done {
                target,
                status: Status::Skipped,
                detail: String::new(),
                error: Some("not started: interrupted".into()),
                duration: Duration::ZERO,
            };
            finished(&context.events, &skipped);
        },
    )
    .await;
    targets
        .into_iter()
        .zip(outcomes)
        .map(|(target, outcome)| {
            outcome.unwrap_or_else(|unfinished| Done {
                target,
                status: if matches!(unfinished, crate::fanout::Unfinished::Skipped) {
                    Status::Skipped
                } else {
                    Status::Error
                },
                detail: String::new(),
                error: Some(unfinished.to_string()),
                duration: Duration::ZERO,
            })
        })
        .collect()
}

/// The job on one target.
async fn on_target(
    job: &Job,
    target: String,
    host: Option<Arc<dyn crate::host::Host>>,
    unreached: Option<crate::fanout::Unreached>,
    events: &Events,
) -> Done {
    let started = Instant::now();
    let mut done =
        Done { target, status: Status::Error, detail: String::new(), error: None, duration: Duration::ZERO };
    let Some(host) = host else {
        match unreached {
            Some(u) => (done.status, done.error, done.duration) = (u.status, Some(u.error), u.duration),
            None => done.error = Some("unreachable: no connection to it".into()),
        }
        finished(events, &done);
        return done;
    };
    let step = |text: String| {
        let _ = events.send(Event::TargetStep { target: done.target.clone(), step: text });
    };
    let result = match &job.action {
        Action::Boot { image } => proxy::ensure(&*host, image, job.login.as_ref()).await.map(|e| match e {
            proxy::Ensured::Running => "proxy already running".to_string(),
            proxy::Ensured::Started => "proxy started (it was stopped)".to_string(),
            proxy::Ensured::Booted => format!("proxy booted ({image})"),
        }),
        Action::Reboot { image, recreate } => {
            step(format!("pulling {image}"));
            match proxy::reboot(&*host, image, job.login.as_ref(), *recreate).await {
                Ok(rebooted) => proxy::read(&*host).await.map(|t| {
                    let how = match &rebooted.recreated {
                        None => "reloaded, same container".to_string(),
                        Some(why) => format!("recreated: {why}"),
                    };
                    let migrate = if rebooted.migrate == Some(false) {
                        format!("; {}", proxy::NO_MIGRATE)
                    } else {
                        String::new()
                    };
                    format!(
                        "proxy {how} ({image}); {} loaded{migrate}",
                        output::count(t.routes.len(), "route")
                    )
                }),
                Err(e) => Err(e),
            }
        }
        Action::Maintenance { app, message, image } => {
            // Booted on first need, like a deploy: the route table on the target is the record.
            match proxy::ensure(&*host, image, job.login.as_ref()).await {
                Ok(proxy::Ensured::Running) => {}
                Ok(proxy::Ensured::Started) => step("proxy started (it was stopped)".into()),
                Ok(proxy::Ensured::Booted) => step(format!("proxy booted ({image})")),
                Err(e) => {
                    done.status = if e.is_connection() { Status::Error } else { Status::Failed };
                    done.error = Some(e.to_string());
                    done.duration = started.elapsed();
                    finished(events, &done);
                    return done;
                }
            }
            proxy::maintenance(&*host, app, &job.environment, message.as_deref()).await.map(|r| match message
            {
                Some(_) => format!("{}{} answers 503", r.host, r.path.as_deref().unwrap_or("")),
                None => format!("{}{} -> {}", r.host, r.path.as_deref().unwrap_or(""), r.dial()),
            })
        }
    };
    match result {
        Ok(detail) => {
            step(detail.clone());
            done.status = Status::Ok;
            done.detail = detail;
        }
        Err(e) => {
            done.status = if e.is_connection() { Status::Error } else { Status::Failed };
            done.error = Some(e.to_string());
        }
    }
    done.duration = started.elapsed();
    if !host.is_local() {
        let outcome = match &done.error {
            Some(e) => format!("{}: {e}", done.status.label()),
            None => done.detail.clone(),
        };
        crate::fanout::write_mirror(
            &*host,
            &done.target,
            &format!("{} -> {outcome}", job.mirror),
            &job.secrets,
        )
        .await;
    }
    finished(events, &done);
    done
}

/// The target's end as an event (the audit trail records it as its `target_outcome`).
fn finished(events: &Events, done: &Done) {
    let _ = events.send(Event::TargetFinished {
        target: done.target.clone(),
        status: done.status,
        exit_code: None,
        signal: None,
        error: done.error.clone(),
        ms: millis(done.duration),
        action: None,
        container: None,
        logs: Vec::new(),
    });
}

/// The run's end as the session records it.
fn finish(done: Vec<Done>, interrupted: bool) -> Finish<(Vec<Done>, bool)> {
    let count = |s: Status| done.iter().filter(|d| d.status == s).count();
    Finish {
        ok: count(Status::Ok),
        failed: done.len() - count(Status::Ok) - count(Status::Skipped),
        skipped: count(Status::Skipped),
        interrupted,
        stopped: None,
        record: Some(RunFinished::default()),
        digest: None,
        after: None,
        value: (done, interrupted),
    }
}

/// The table printed after a write (not with `--output json`, whose events say it all).
fn summary(done: &[Done], what: &str) -> String {
    let rows: Vec<Vec<String>> = done
        .iter()
        .map(|d| {
            vec![
                d.target.clone(),
                d.status.label().to_string(),
                crate::duration::format_short(d.duration),
                d.error.clone().unwrap_or_else(|| d.detail.clone()),
            ]
        })
        .collect();
    format!("\n{what}\n{}", table(&["TARGET", "STATUS", "TIME", "DETAIL"], &rows))
}

/// One route as `ferry proxy status` shows it.
#[derive(Debug, Serialize)]
struct RouteRow {
    app: String,
    environment: String,
    host: String,
    path: Option<String>,
    tls: Option<proxy::Tls>,
    upstream: String,
    container: String,
    /// `running`, `stopped` or `missing`.
    container_state: &'static str,
    maintenance: Option<String>,
    /// Caddy's view of the upstream: `healthy`, `failing`, or none when it does not list it.
    health: Option<&'static str>,
}

/// One target in `ferry proxy status`.
#[derive(Debug, Serialize)]
struct TargetRow {
    target: String,
    /// Why it could not be read.
    error: Option<String>,
    proxy: Option<proxy::ProxyContainer>,
    network: bool,
    routes: Vec<RouteRow>,
    unreadable: Vec<proxy::Unreadable>,
    /// What is wrong there (each one makes the exit code 1).
    problems: Vec<String>,
}

/// `ferry proxy status`.
fn status(
    inventory: &Inventory,
    environment: &str,
    limits: &[String],
    connect_timeout: Duration,
    output: OutputFormat,
) -> Result<i32, Error> {
    let env = inventory.environment(environment)?;
    let targets = select::select_environment(inventory, env, &[], limits)?;
    let ssh = ssh_options(inventory, connect_timeout)?;
    let read =
        runtime()?.block_on(crate::host::on_each(inventory, &targets, &ssh, |connection| async move {
            proxy::read(&*connection).await.map_err(|e| e.to_string())
        }));
    let rows: Vec<TargetRow> = read.into_iter().map(|(target, table)| judge(target, table)).collect();
    let bad = rows.iter().any(|r| r.error.is_some() || !r.problems.is_empty());
    match output {
        OutputFormat::Json => output::print_json(&json!({
            "schema": 1,
            "environment": env.name,
            "problems": bad,
            "targets": rows,
        }))?,
        OutputFormat::Plain => output::print(&plain(&rows))?,
        OutputFormat::Human => output::print(&human(&rows))?,
    }
    Ok(if bad { 1 } else { 0 })
}

/// One target's table, judged.
fn judge(target: String, table: Result<Table, String>) -> TargetRow {
    let table = match table {
        Ok(t) => t,
        Err(error) => {
            return TargetRow {
                target,
                error: Some(error),
                proxy: None,
                network: false,
                routes: Vec::new(),
                unreadable: Vec::new(),
                problems: Vec::new(),
            };
        }
    };
    let mut problems = Vec::new();
    let running = table.proxy.as_ref().is_some_and(|p| p.running);
    if !running && !table.routes.is_empty() {
        problems.push(format!(
            "the proxy is {} while {} exist: `ferry proxy boot`",
            if table.proxy.is_some() { "stopped" } else { "missing" },
            output::count(table.routes.len(), "route")
        ));
    }
    let routes = table
        .routes
        .iter()
        .map(|r| {
            let container_state = match table.containers.get(&r.container) {
                Some(true) => "running",
                Some(false) => "stopped",
                None => "missing",
            };
            if container_state == "missing" {
                problems.push(format!(
                    "route {} points at container {}, which is gone",
                    r.key(),
                    r.container
                ));
            }
            let health = table
                .upstreams
                .iter()
                .find(|u| u.address == r.dial())
                .map(|u| if u.healthy.unwrap_or(u.fails == 0) { "healthy" } else { "failing" });
            RouteRow {
                app: r.app.clone(),
                environment: r.environment.clone(),
                host: r.host.clone(),
                path: r.path.clone(),
                tls: r.tls,
                upstream: r.dial(),
                container: r.container.clone(),
                container_state,
                maintenance: r.maintenance.clone(),
                health,
            }
        })
        .collect();
    for u in &table.unreadable {
        problems.push(format!("route file {}.meta is unreadable ({}); it is left alone", u.key, u.error));
    }
    TargetRow {
        target,
        error: None,
        proxy: table.proxy,
        network: table.network,
        routes,
        unreadable: table.unreadable,
        problems,
    }
}

/// The proxy column: `running caddy:2 (v2.6.2)`, `stopped …`, `none`.
fn proxy_cell(row: &TargetRow) -> String {
    match (&row.error, &row.proxy) {
        (Some(_), _) => "unreachable".into(),
        (None, None) => "none".into(),
        (None, Some(p)) => {
            format!(
                "{} {}{}",
                if p.running { "running" } else { "stopped" },
                p.image,
                p.version.as_deref().map(|v| format!(" ({v})")).unwrap_or_default()
            ) + if p.running && p.migrate == Some(false) { "; no tcp_migrate_req" } else { "" }
        }
    }
}

/// A route's state column.
fn state_cell(r: &RouteRow) -> String {
    let mut state = match &r.maintenance {
        Some(m) => format!("maintenance: {m:?}"),
        None => r.health.unwrap_or("serving").to_string(),
    };
    if r.container_state != "running" {
        state += &format!(", container {} {}", r.container, r.container_state);
    }
    state
}

/// `host/path (tls …)`.
fn route_cell(r: &RouteRow) -> String {
    let tls = r.tls.map(|t| format!(" (tls {})", t.as_str())).unwrap_or_default();
    format!("{}{}{tls}", r.host, r.path.as_deref().unwrap_or(""))
}

/// `ferry proxy status` for people.
fn human(rows: &[TargetRow]) -> String {
    let targets: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.target.clone(),
                proxy_cell(r),
                if r.error.is_some() {
                    "-".into()
                } else if r.network {
                    "ferry".into()
                } else {
                    "missing".into()
                },
                r.routes.len().to_string(),
            ]
        })
        .collect();
    let mut out = table(&["TARGET", "PROXY", "NETWORK", "ROUTES"], &targets);
    let routes: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|t| {
            t.routes.iter().map(|r| {
                vec![
                    t.target.clone(),
                    r.app.clone(),
                    r.environment.clone(),
                    route_cell(r),
                    r.upstream.clone(),
                    state_cell(r),
                ]
            })
        })
        .collect();
    if !routes.is_empty() {
        out += "\n";
        out += &table(&["TARGET", "APP", "ENV", "ROUTE", "UPSTREAM", "STATE"], &routes);
    }
    let problems: Vec<String> = rows
        .iter()
        .flat_map(|t| {
            t.error
                .iter()
                .map(|e| format!("{}: {e}", t.target))
                .chain(t.problems.iter().map(|p| format!("{}: {p}", t.target)))
        })
        .collect();
    if !problems.is_empty() {
        out += "\n";
        for p in problems {
            out += &format!("! {p}\n");
        }
    }
    out
}

/// `ferry proxy status --output plain`: one tab-separated line per target (`proxy`), route
/// (`route`) and problem (`problem`).
fn plain(rows: &[TargetRow]) -> String {
    let mut out = String::new();
    for t in rows {
        out += &format!("proxy\t{}\t{}\n", t.target, proxy_cell(t));
        for r in &t.routes {
            out += &format!(
                "route\t{}\t{}\t{}\t{}\t{}\t{}\n",
                t.target,
                r.app,
                r.environment,
                route_cell(r),
                r.upstream,
                state_cell(r)
            );
        }
        for p in t.error.iter().chain(&t.problems) {
            out += &format!("problem\t{}\t{p}\n", t.target);
        }
    }
    out
}
