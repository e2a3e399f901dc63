//! `ferry run`: one shell command on every target of an environment, playbook-style.
//!
//! Exit code: 0 only if every target exited 0; 4 if a host key was refused (nothing ran there);
//! 130 if Ctrl-C stopped it; else 1.

use std::sync::Arc;
use std::time::Instant;

use super::guard::{LockRequest, interrupt_handler, known_secrets, release_lock, take_lock};
use super::{audit_log, new_deployment_id, runtime, ssh_options};
use crate::audit::Entry;
use crate::error::Error;
use crate::fanout::{self, Settings, TargetResult, Work};
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::report::{AuditTrail, Event, Reporter, Status};
use crate::request::Run as RunArgs;
use crate::secret::mask;
use crate::select;

pub use super::guard::EXIT_INTERRUPTED;
/// Exit code when a gate (here: a host key) refused.
pub const EXIT_REFUSED: i32 = 4;

/// Runs `ferry run`.
pub fn run(inventory: Inventory, args: &RunArgs, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.reach.environment)?;
    let targets: Vec<_> = select::select_environment(&inventory, env, &args.roles, &args.reach.limits)?
        .into_iter()
        .cloned()
        .collect();
    let secrets = known_secrets(&inventory, &env.name);
    let command = args.command.join(" ");
    let shown = mask(&command, &secrets);
    let run_id = new_deployment_id();
    let log = audit_log(&inventory);
    let work = Work {
        command: command.clone(),
        stdin: None,
        deadline: args.timeout,
        mirror: Some(format!("ferry run {run_id} by {}: {shown}", log.actor().describe())),
    };
    let settings =
        Settings { parallel: args.reach.parallel, ssh: ssh_options(&inventory, args.reach.connect_timeout)? };
    let environment = env.name.clone();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    // On record before anything touches a target: if it cannot be written, nothing runs.
    log.append(Entry {
        kind: "run_started".into(),
        run: run_id.clone(),
        command: "run".into(),
        environment: Some(environment.clone()),
        targets: names.clone(),
        detail: serde_json::json!({ "command_line": shown }),
        ..Entry::default()
    })?;
    let lock_request = args.lock.map(|timing| {
        LockRequest::new(&inventory, env, &log, (&run_id, "run"), format!("ferry run: {shown}"), timing)
    });
    let lock_log = log.clone();
    let (refused_log, refused_run) = (log.clone(), run_id.clone());
    let trail = AuditTrail::new(log, &run_id, "run", &environment);
    let reporter = Reporter::new(output, secrets.clone()).with_audit(trail);
    let inventory = Arc::new(inventory);
    let started = Instant::now();
    let outcome = runtime()?.block_on(async move {
        // First thing, so a Ctrl-C while locks are being taken still ends in an orderly release.
        let cancel = interrupt_handler();
        let held = match &lock_request {
            Some(request) => Some(take_lock(&inventory, request, &settings.ssh, &lock_log).await?),
            None => None,
        };
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let reporter = tokio::spawn(reporter.run(receiver));
        let _ = events.send(Event::RunStarted {
            run: run_id,
            command,
            environment: environment.clone(),
            targets: names,
        });
        let results =
            fanout::run(inventory, targets, Arc::new(work), &settings, events.clone(), cancel.clone()).await;
        let interrupted = *cancel.borrow();
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        let _ = events.send(Event::RunFinished {
            ok: count(Status::Ok),
            failed: results.len() - count(Status::Ok) - count(Status::Skipped),
            skipped: count(Status::Skipped),
            interrupted,
            ms: fanout::millis(started.elapsed()),
            stopped: None,
            record: None,
        });
        drop(events);
        let audited = matches!(reporter.await, Ok(Ok(())));
        if let (Some(held), Some(request)) = (held, &lock_request) {
            release_lock(held, request, &lock_log).await?;
        }
        Ok::<_, Error>((results, interrupted, audited))
    });
    let (results, interrupted, audited) = match outcome {
        Ok(values) => values,
        Err(error) => {
            // Refused before anything ran (a held lock, an unreachable target): on record too.
            let detail = serde_json::json!({ "ok": 0, "failed": 0, "skipped": 0, "interrupted": false, "refused": error.to_string() });
            refused_log.append(Entry {
                kind: "run_finished".into(),
                run: refused_run,
                command: "run".into(),
                detail,
                ..Entry::default()
            })?;
            return Err(error);
        }
    };
    if output != OutputFormat::Json {
        output::print(&mask(&summary(&results), &secrets))?;
    }
    // A run whose outcome is not on record did not fully succeed.
    let code = exit_code(&results, interrupted);
    Ok(if code == 0 && !audited { 1 } else { code })
}

fn summary(results: &[TargetResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let exit = r.exit.as_ref().map_or_else(|| "-".to_string(), ToString::to_string);
            let detail = r.error.clone().unwrap_or_default();
            vec![
                r.target.clone(),
                r.status.label().to_string(),
                exit,
                crate::duration::format_short(r.duration),
                detail,
            ]
        })
        .collect();
    format!("\n{}", table(&["TARGET", "STATUS", "EXIT", "TIME", "DETAIL"], &rows))
}

fn exit_code(results: &[TargetResult], interrupted: bool) -> i32 {
    if interrupted {
        EXIT_INTERRUPTED
    } else if results.iter().any(|r| r.status == Status::Refused) {
        EXIT_REFUSED
    } else if results.iter().all(|r| r.status == Status::Ok) {
        0
    } else {
        1
    }
}
