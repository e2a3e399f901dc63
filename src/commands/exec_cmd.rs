//! `ferry exec`: a command in the app's running container (`docker exec`) on the selected
//! targets.
//!
//! The command's words go to `docker exec` as they are, each shell-quoted once: no shell runs
//! them (write `-- sh -c '…'` for one). The container is found on the target when the command
//! runs, by the app's labels, the environment's container name first (as `status` judges it);
//! a target without one fails with exit 125, Docker's own code for a refused `docker exec`.
//!
//! Two ways to run:
//!
//! * **Interactive**: exactly one target selected, stdin and stdout a terminal and human
//!   output. The local terminal goes into raw mode (restored on every way out, see
//!   [`crate::terminal`]); the target gets a PTY of the same size (resizes follow) and runs
//!   `docker exec -it`. ferry's one remote command, [`crate::host::REMOTE_COMMAND`], still reads
//!   its script from stdin ahead of what the user types: the PTY is asked for with a line
//!   discipline that passes bytes through untouched (no echo, no line editing, no signal keys;
//!   see `RAW_MODES` in [`crate::ssh`]), so the script is read byte for byte and never echoed,
//!   and `docker exec -t` then gives the container its own terminal, the one the user talks to.
//!   Ctrl-C goes to the container's command. ferry exits with the command's exit code, as
//!   `ssh` and `docker exec` do (or 1 when it could not run, 4 for a refused host key, 130 when
//!   a signal ended the session).
//! * **Fan-out**, otherwise: exactly like `ferry run` (the same streams, summary table, masking
//!   and exit codes: 0 only if every target exited 0), on several targets after a confirmation
//!   (`--yes`, or `y` at the prompt), as this runs a command in the app's live containers.
//!
//! Both are audited like `run`: `run_started` (with the masked command line), one outcome per
//! target, `run_finished`, and the audit mirror line on each SSH target. An interactive
//! session's own bytes are not recorded (what is typed there may be a password). Like `run`, exec takes
//! no environment lock: the lock keeps two rollouts from replacing the same containers at once,
//! and a `docker exec` replaces nothing; a debugging session must also stay possible while a
//! deploy holds the lock. A container that a deploy replaces under a running exec ends it,
//! which the exec reports.

use std::sync::Arc;
use std::time::Instant;

use super::run::{EXIT_REFUSED, exit_code, summary};
use super::session::{Context, EXIT_INTERRUPTED, Finish, Outcome, Session, known_secrets};
use super::{new_deployment_id, ssh_options, store};
use crate::audit::Entry;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::exec::{ExitStatus, Terminal};
use crate::fanout::{self, Settings, Work};
use crate::inventory::{self, Inventory, Target};
use crate::output::{self, OutputFormat};
use crate::records::RunStarted;
use crate::report::{Event, Status};
use crate::request::Exec;
use crate::secret::mask;
use crate::{docker, select, shell, terminal};

/// Runs `ferry exec`.
pub fn run(inventory: Inventory, args: &Exec, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?.clone();
    let env = inventory.environment(&args.environment)?.clone();
    let targets: Vec<Target> =
        select::select(&inventory, &app, &env, &args.limits)?.into_iter().cloned().collect();
    let secrets = known_secrets(&inventory, &env.name);
    let nul = |_| Error::Input(Diagnostic::new("a command word contains a NUL byte"));
    // Each word masked before it is quoted: quoting changes a secret with a quote in it
    // (`it's` is `'it'\''s'`), which masking the joined line would then no longer find.
    let words: Vec<String> = args.command.iter().map(|w| mask(w, &secrets)).collect();
    let shown = mask(&shell::join(&words).map_err(nul)?, &secrets);
    let interactive = targets.len() == 1 && output == OutputFormat::Human && terminal::is_interactive();
    let container = inventory::container_name(&app, &env.name);
    let script =
        docker::exec_script(&app.name, &env.name, &container, &args.command, interactive).map_err(nul)?;
    if targets.len() > 1 {
        let what = format!(
            "run `{shown}` in the {} containers of {}",
            app.name,
            crate::output::count(targets.len(), "target")
        );
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        Session::confirm(args.yes, &what, || format!("targets: {}", names.join(", ")))?;
    }
    let store = store(&inventory)?;
    let run_id = new_deployment_id();
    let ssh = ssh_options(&inventory, args.connect_timeout)?;
    let mirror = format!("ferry exec {run_id} by {}: {}: {shown}", store.actor().describe(), app.name);
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let session = Session {
        inventory: Arc::new(inventory),
        store,
        base: Entry {
            run: run_id,
            command: "exec".into(),
            app: Some(app.name.clone()),
            environment: Some(env.name.clone()),
            ..Entry::default()
        },
        environment: env,
        // Masked word by word (the event stream masks the line once more, which finds nothing).
        what: shown.clone(),
        secrets: secrets.clone(),
        output,
        // An interactive session owns the terminal: nothing else may draw on it.
        quiet: interactive,
        lock: None,
        ssh: ssh.clone(),
    };
    let started = RunStarted { command_line: Some(shown), ..RunStarted::default() };
    let inventory = Arc::clone(&session.inventory);
    if interactive {
        let target = targets.into_iter().next();
        let outcome = session.run(names, started, |context| async move {
            match target {
                Some(target) => one_interactive(&inventory, &target, &script, &ssh, &mirror, context).await,
                None => Finish {
                    ok: 0,
                    failed: 0,
                    skipped: 0,
                    interrupted: false,
                    stopped: None,
                    record: None,
                    digest: None,
                    after: None,
                    value: 1,
                },
            }
        })?;
        return Ok(match outcome {
            Outcome::Finished { value, audited } => {
                if value == 0 && !audited {
                    1
                } else {
                    value
                }
            }
            Outcome::Abandoned => EXIT_INTERRUPTED,
        });
    }
    let work = Work {
        command: script,
        stdin: None,
        deadline: args.timeout,
        mirror: Some(mirror),
        secrets: secrets.clone(),
    };
    let settings = Settings { parallel: args.parallel, ssh };
    let outcome = session.run(names, started, |context: Context| async move {
        let results = fanout::run(
            inventory,
            targets,
            Arc::new(work),
            &settings,
            context.events,
            context.cancel.clone(),
        )
        .await;
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
    let code = exit_code(&results, interrupted);
    Ok(if code == 0 && !audited { 1 } else { code })
}

/// The interactive session on `target`; its value is ferry's exit code.
async fn one_interactive(
    inventory: &Inventory,
    target: &Target,
    script: &str,
    ssh: &crate::ssh::Options,
    mirror: &str,
    context: Context,
) -> Finish<i32> {
    let started = Instant::now();
    let mut cancel = context.cancel.clone();
    let finish = |status: Status, exit: Option<ExitStatus>, error: Option<String>| {
        let (exit_code, signal) = match &exit {
            Some(ExitStatus::Code(c)) => (Some(*c), None),
            Some(ExitStatus::Signal(s)) => (None, Some(s.clone())),
            None => (None, None),
        };
        let _ = context.events.send(Event::TargetFinished {
            target: target.name.clone(),
            status,
            exit_code,
            signal,
            error,
            ms: fanout::millis(started.elapsed()),
            action: None,
            container: None,
            logs: Vec::new(),
        });
    };
    let connection = match crate::host::open(inventory, target, ssh).await {
        Ok(c) => c,
        Err(e) => {
            // Before raw mode: the message shows as any error does.
            eprintln!("{}: {e}", target.name);
            let (status, code) =
                if e.is_host_key() { (Status::Refused, EXIT_REFUSED) } else { (e.status(), 1) };
            finish(status, None, Some(e.to_string()));
            return done(code, status == Status::Ok, false);
        }
    };
    let _ = context
        .events
        .send(Event::TargetConnected { target: target.name.clone(), ms: fanout::millis(started.elapsed()) });
    let (mut input, mut output) = (tokio::io::stdin(), tokio::io::stdout());
    let (cols, rows) = terminal::size();
    let session = Terminal {
        term: terminal::term(),
        cols,
        rows,
        resized: terminal::resizes(),
        input: &mut input,
        output: &mut output,
    };
    let ended = match terminal::RawMode::enter() {
        Ok(raw) => {
            let ended = tokio::select! {
                ended = connection.interactive(script, session) => Some(ended),
                () = fanout::cancelled(&mut cancel) => None,
            };
            drop(raw);
            ended
        }
        Err(e) => {
            Some(Err(crate::exec::ExecError::Spawn(format!("cannot put the terminal in raw mode: {e}"))))
        }
    };
    let (code, status, outcome) = match ended {
        None => {
            finish(Status::Error, None, Some("interrupted".into()));
            (EXIT_INTERRUPTED, Status::Error, "interrupted".to_string())
        }
        Some(Ok(exit)) => {
            let code = match &exit {
                ExitStatus::Code(c) => i32::try_from(*c).unwrap_or(255).min(255),
                ExitStatus::Signal(_) => 1,
            };
            let status = if exit.success() { Status::Ok } else { Status::Failed };
            finish(status, Some(exit.clone()), None);
            (code, status, exit.to_string())
        }
        Some(Err(e)) => {
            eprintln!("{}: {e}", target.name);
            finish(Status::Error, None, Some(e.to_string()));
            (1, Status::Error, format!("error: {e}"))
        }
    };
    if !connection.is_local() {
        fanout::write_mirror(&*connection, &target.name, &format!("{mirror} -> {outcome}"), &[]).await;
    }
    connection.close().await;
    done(code, status == Status::Ok, code == EXIT_INTERRUPTED)
}

/// The session's end for `run_finished`: one target, ok or not.
fn done(code: i32, ok: bool, interrupted: bool) -> Finish<i32> {
    Finish {
        ok: usize::from(ok),
        failed: usize::from(!ok),
        skipped: 0,
        interrupted,
        stopped: None,
        record: None,
        digest: None,
        after: None,
        value: code,
    }
}
