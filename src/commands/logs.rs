//! `ferry logs`: an app's container logs from every selected target, each line prefixed with
//! its target (names padded to one width, so the lines line up), secrets masked.
//!
//! The container is found as `status` finds it: the app's `ferry.*` labels in the environment,
//! the environment's container name first (see [`docker::pick`]). `docker logs` keeps the
//! container's stdout and stderr apart; both are printed on ferry's stdout, and `--output json`
//! tells them apart (`{"target","stream","line"}` per line).
//!
//! `--follow` streams until Ctrl-C or SIGTERM (or until its stdout is closed, as after
//! `| grep -m1 ERROR`), then closes each target's command stdin, on
//! which the remote script stops its `docker logs` (see [`docker::logs_script`]): nothing keeps
//! running on a target after ferry. A follow ended that way exits 0: stopping is how a follow
//! ends, not an interruption of unfinished work (unlike `run` or `deploy`, whose 130 says some
//! targets may not have run).
//!
//! It only reads: no lock (reading logs must work while a deploy holds the environment, which
//! is often when they are needed) and no audit record (it changes nothing, like `status`).
//! Exit 1 when a target could not be read (unreachable, no container of the app, `docker logs`
//! failed), 4 when a host key was refused (as `run`); the other targets are still read.

use std::io::Write;

use tokio::sync::{mpsc, watch};

use super::run::EXIT_REFUSED;
use super::session::known_secrets;
use super::{runtime, ssh_options};
use crate::docker::{self, LogsOptions};
use crate::error::Error;
use crate::exec::Stream;
use crate::fanout;
use crate::host::Host;
use crate::inventory::{self, Inventory, Transport};
use crate::output::OutputFormat;
use crate::report::{Event, Events, LineSplitter};
use crate::request::Logs;
use crate::secret::{Secret, mask};
use crate::select;
use crate::ssh::Endpoint;

/// Runs `ferry logs`.
pub fn run(inventory: &Inventory, args: &Logs, output: OutputFormat) -> Result<i32, Error> {
    let app = inventory.app(&args.app)?;
    let env = inventory.environment(&args.environment)?;
    let targets = select::select(inventory, app, env, &args.limits)?;
    let secrets = known_secrets(inventory, &env.name);
    let ssh = ssh_options(inventory, args.connect_timeout)?;
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let ask = Ask {
        app: app.name.clone(),
        environment: env.name.clone(),
        container: inventory::container_name(app, &env.name),
        options: LogsOptions {
            tail: args.tail,
            since: args.since.map(crate::request::Since::docker),
            follow: args.follow,
        },
    };
    let parts: Vec<(String, Transport, Result<Endpoint, crate::ssh::SshError>)> =
        targets.iter().map(|t| (t.name.clone(), t.transport, crate::host::endpoint(inventory, t))).collect();
    let code = runtime()?.block_on(async {
        let (stop_tx, stop) = watch::channel(false);
        if args.follow {
            stop_on_signal(stop_tx.clone());
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let printer = tokio::spawn(print(receiver, secrets.clone(), output, width, stop_tx));
        let outcomes = fanout::ordered(
            parts,
            fanout::Limits::parallel(targets.len()),
            |_, (name, transport, endpoint)| {
                let (ask, events, stop, ssh, secrets) =
                    (ask.clone(), events.clone(), stop.clone(), ssh.clone(), secrets.clone());
                async move {
                    let (read, code) =
                        match async { crate::host::open_endpoint(transport, &endpoint?, &ssh).await }.await {
                            Ok(connection) => {
                                let read = read(&*connection, &ask, events, stop).await;
                                connection.close().await;
                                (read, 1)
                            }
                            Err(e) => (Err(e.to_string()), if e.is_host_key() { EXIT_REFUSED } else { 1 }),
                        };
                    // Said when it happens: a follow may run for hours after.
                    match read {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("{name}: {}", mask(&e, &secrets));
                            code
                        }
                    }
                }
            },
            |_, _| {},
        )
        .await;
        drop(events);
        let _ = printer.await;
        let codes: Vec<i32> = outcomes.into_iter().map(|code| code.unwrap_or(1)).collect();
        // A refused host key outranks a failure, as in `run`.
        if codes.contains(&EXIT_REFUSED) { EXIT_REFUSED } else { codes.into_iter().max().unwrap_or(0) }
    });
    Ok(code)
}

/// What every target is asked.
#[derive(Debug, Clone)]
struct Ask {
    /// The app, as its containers' `ferry.app` label names it.
    app: String,
    /// The environment, as the `ferry.environment` label names it.
    environment: String,
    /// The environment's container name for the app, preferred over the app's other containers.
    container: String,
    /// What `docker logs` is asked for.
    options: LogsOptions,
}

/// Sets `stop_tx` at the first SIGINT or SIGTERM. Installed only when following: a plain read
/// ends by itself, and Ctrl-C then ends ferry as usual.
fn stop_on_signal(stop_tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            tracing::warn!("cannot install the signal handlers");
            // Kept, so the receivers never see a stop that did not come.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        let _ = stop_tx.send(true);
        // Held: later signals do nothing more (the remote commands are already stopping).
        std::future::pending::<()>().await;
    });
}

/// Reads one target's logs into `events`; the error says why the target could not be read.
async fn read(
    connection: &dyn Host,
    ask: &Ask,
    events: Events,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let containers = docker::list(connection, &ask.app, &ask.environment).await.map_err(|e| e.to_string())?;
    let Some(container) = docker::pick(&containers, &ask.container) else {
        return Err(format!(
            "no container of app {} in environment {} on this target",
            ask.app, ask.environment
        ));
    };
    let script = docker::logs_script(&container.details.id, &ask.options);
    let mut sink = LineSplitter::new(connection.name(), events);
    let ended = if ask.options.follow {
        let mut stopped = stop.clone();
        let stop_future = Box::pin(async move {
            if stopped.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        connection.exec_until(&script, stop_future, &mut sink).await
    } else {
        connection.exec(&script, None, None, &mut sink).await
    };
    sink.flush();
    match ended {
        Ok(status) if status.success() || *stop.borrow() => Ok(()),
        Ok(status) => Err(format!("docker logs {}: {status}", container.details.name)),
        Err(e) => Err(e.to_string()),
    }
}

/// One printed line of `--output json`.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    /// The target's name.
    target: &'a str,
    /// The container's stream the line came on.
    stream: Stream,
    /// The line, masked.
    line: &'a str,
}

/// Prints every line as it comes, masked: `TARGET | line` (names padded to `width`), or one
/// JSON object a line. Flushes whenever it has caught up, so a follow shows lines at once.
///
/// A stdout that can no longer be written (`ferry logs --follow | grep -m1 ERROR` after grep
/// found its line) sets `stop`, as Ctrl-C would: a follow then ends on every target instead of
/// running on with no reader. The events that still come are drained unprinted, so no target
/// waits on its backlog.
async fn print(
    mut receiver: mpsc::UnboundedReceiver<Event>,
    secrets: Vec<Secret>,
    output: OutputFormat,
    width: usize,
    stop: watch::Sender<bool>,
) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut closed = false;
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(event) = next {
            if let (Event::Output { target, stream, line, .. }, false) = (&event, closed) {
                let line = mask(line, &secrets);
                // A closed stdout does not fail the read (the exit code says how the targets
                // were read), it ends it.
                let written = match output {
                    OutputFormat::Json => {
                        match serde_json::to_string(&JsonLine { target, stream: *stream, line: &line }) {
                            Ok(json) => writeln!(out, "{json}"),
                            Err(_) => Ok(()),
                        }
                    }
                    OutputFormat::Human | OutputFormat::Plain => writeln!(out, "{target:<width$} | {line}"),
                };
                closed = written.is_err();
            }
            // Dropping the event gives its bytes back to the target's backlog.
            drop(event);
            next = receiver.try_recv().ok();
        }
        closed = closed || out.flush().is_err();
        if closed {
            let _ = stop.send(true);
        }
    }
    let _ = out.flush();
}
