//! `ferry run`: one shell command on every target of an environment, playbook-style.
//!
//! Exit code: 0 only if every target exited 0; 4 if a host key was refused (nothing ran there);
//! 130 if Ctrl-C stopped it; else 1 (a target unreachable included).

use std::sync::Arc;

use super::session::{Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, ssh_options, store};
use crate::audit::Entry;
use crate::error::Error;
use crate::fanout::{self, Settings, TargetResult, Work};
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::records::RunStarted;
use crate::report::Status;
use crate::request::Run as RunArgs;
use crate::secret::mask;
use crate::select;

/// Exit code when a gate (here: a host key) refused.
pub const EXIT_REFUSED: i32 = 4;

/// Runs `ferry run`.
pub fn run(inventory: Inventory, args: &RunArgs, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.reach.environment)?.clone();
    let targets: Vec<_> = select::select_environment(&inventory, &env, &args.roles, &args.reach.limits)?
        .into_iter()
        .cloned()
        .collect();
    let secrets = known_secrets(&inventory, &env.name);
    let command = args.command.join(" ");
    let shown = mask(&command, &secrets);
    let store = store(&inventory)?;
    let run_id = new_deployment_id();
    let work = Work {
        command: command.clone(),
        stdin: None,
        deadline: args.timeout,
        mirror: Some(format!("ferry run {run_id} by {}: {shown}", store.actor().describe())),
        secrets: secrets.clone(),
    };
    let settings =
        Settings { parallel: args.reach.parallel, ssh: ssh_options(&inventory, args.reach.connect_timeout)? };
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let session = Session {
        inventory: Arc::new(inventory),
        store,
        base: Entry {
            run: run_id,
            command: "run".into(),
            environment: Some(env.name.clone()),
            ..Entry::default()
        },
        environment: env,
        // Unmasked here: the event stream masks every event once, for every subscriber.
        what: command,
        secrets: secrets.clone(),
        output,
        quiet: false,
        lock: args.lock.map(|timing| (timing, format!("ferry run: {shown}"))),
        ssh: settings.ssh.clone(),
    };
    let inventory = Arc::clone(&session.inventory);
    let started = RunStarted { command_line: Some(shown), ..RunStarted::default() };
    let outcome = session.run(names, started, |context: Context| async move {
        // Targets the lock could not reach are reported as they are, and not tried again.
        let mut unreached: Vec<TargetResult> =
            context.unreached.iter().map(|u| u.report(&context.events)).collect();
        let order: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let targets = targets.into_iter().filter(|t| !unreached.iter().any(|u| u.target == t.name)).collect();
        let mut results = fanout::run(
            inventory,
            targets,
            Arc::new(work),
            &settings,
            context.events,
            context.cancel.clone(),
        )
        .await;
        results.append(&mut unreached);
        results.sort_by_key(|r| order.iter().position(|t| *t == r.target));
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        let interrupted = *context.cancel.borrow();
        Finish {
            ok: count(Status::Ok),
            failed: results.len() - count(Status::Ok) - count(Status::Skipped),
            skipped: count(Status::Skipped),
            interrupted,
            stopped: None,
            record: None,
            digest: None,
            after: None,
            value: (results, interrupted),
        }
    })?;
    let Outcome::Finished { value: (results, interrupted), audited } = outcome else {
        return Ok(EXIT_INTERRUPTED);
    };
    if output != OutputFormat::Json {
        output::print(&mask(&summary(&results), &secrets))?;
    }
    // A run whose outcome is not on record did not fully succeed.
    let code = exit_code(&results, interrupted);
    Ok(if code == 0 && !audited { 1 } else { code })
}

/// The per-target table printed after the output (`ferry exec` prints the same).
pub fn summary(results: &[TargetResult]) -> String {
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

/// 130 if interrupted, else 4 if a host key was refused, else 0 if every target exited 0, else 1.
pub fn exit_code(results: &[TargetResult], interrupted: bool) -> i32 {
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
