//! Stage 7: one event stream, three renderers.
//!
//! Everything that acts on targets reports through [`Event`]s sent to one [`dispatch`] task,
//! which masks each event once and hands it to its [`Subscriber`]s in order: the [`AuditTrail`]
//! first (an outcome is on record before it is shown), then the [`Reporter`] that renders it. A
//! terminal, a cron mail and a CI job's JSON parser see the same facts in the same order:
//!
//! * interactive: a spinner line per target (indicatif), only when stderr is a terminal;
//! * plain: `target | text` lines, for cron and CI logs;
//! * JSON Lines (`--output json`): one event per line, `{"schema":1,"type":…}`, documented in
//!   the README.
//!
//! Secret values are masked (`***`) in every renderer, in output lines and error messages alike.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::exec::{OutputSink, Stream};
use crate::output::OutputFormat;
use crate::records::{self, Kind};
use crate::secret::{Secret, mask};

/// Version of the JSON Lines event schema.
pub const EVENT_SCHEMA: u32 = 1;

/// Something that happened during a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run begins.
    RunStarted {
        /// Run id (time-ordered UUID).
        run: String,
        /// What runs (the command line).
        command: String,
        /// The environment.
        environment: String,
        /// Targets in order.
        targets: Vec<String>,
    },
    /// A target's connection is open (host key checked, authenticated).
    TargetConnected {
        /// Target name.
        target: String,
        /// Time to connect, in milliseconds.
        ms: u64,
    },
    /// One line of a command's output (without its newline).
    Output {
        /// Target name.
        target: String,
        /// `stdout` or `stderr`.
        stream: Stream,
        /// The line, lossily decoded as UTF-8.
        line: String,
        /// The line's share of its target's backlog, given back when the event is dropped.
        #[serde(skip)]
        in_flight: InFlight,
    },
    /// A target is done.
    TargetFinished {
        /// Target name.
        target: String,
        /// `ok`, `failed` (ran, non-zero or signal), `error` (no exit status), `refused` (host
        /// key), `unreachable` (no session within the connect timeout), or `skipped` (not
        /// started: interrupted).
        status: Status,
        /// Exit code, when it exited.
        exit_code: Option<u32>,
        /// Signal name, when it was killed.
        signal: Option<String>,
        /// What went wrong, when it did.
        error: Option<String>,
        /// Time on this target, in milliseconds.
        ms: u64,
        /// Deployments: what happened to the target's container.
        #[serde(skip_serializing_if = "Option::is_none")]
        action: Option<crate::docker::Action>,
        /// Deployments: the running container's details, after a success.
        #[serde(skip_serializing_if = "Option::is_none")]
        container: Option<Box<crate::docker::ContainerDetails>>,
        /// Deployments: the new container's last log lines, after a failure.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logs: Vec<String>,
    },
    /// A step of a deployment on one target (`pulling`, `replacing`, `health gate`, ...).
    TargetStep {
        /// Target name.
        target: String,
        /// What it is doing now, or what it just found.
        step: String,
    },
    /// A rollout batch begins.
    BatchStarted {
        /// 1, 2, ...
        batch: usize,
        /// Its targets.
        targets: Vec<String>,
    },
    /// A notification of the run went to a receiver (`[notify.NAME]`), or could not.
    Notified {
        /// The notifier's name.
        notifier: String,
        /// `started`, `succeeded` or `failed`.
        moment: crate::notify::Moment,
        /// Whether the receiver took it.
        delivered: bool,
        /// Attempts made.
        attempts: u32,
        /// Why not (never the URL).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A deploy hook (`[hooks]`) starts on the runner.
    HookStarted {
        /// `pre_deploy`, `post_deploy` or `failed`.
        hook: crate::hooks::HookKind,
        /// Its path as the inventory writes it.
        path: String,
    },
    /// One line of a hook's output (without its newline).
    HookOutput {
        /// Which hook.
        hook: crate::hooks::HookKind,
        /// `stdout` or `stderr`.
        stream: Stream,
        /// The line, lossily decoded as UTF-8.
        line: String,
        /// The line's share of the hook's backlog, given back when the event is dropped.
        #[serde(skip)]
        in_flight: InFlight,
    },
    /// A hook ended: how, and its last lines (also its `hook_finished` record).
    HookFinished(crate::records::HookFinished),
    /// Image retention on a target: what it removed (or would, `--dry-run`), bytes freed, and
    /// what went wrong (also in the run's `run_finished` record, `retention`).
    Pruned(crate::retention::Pruned),
    /// The run is over.
    RunFinished {
        /// Targets that succeeded.
        ok: usize,
        /// Targets that failed in any way.
        failed: usize,
        /// Targets never started.
        skipped: usize,
        /// Whether Ctrl-C stopped it.
        interrupted: bool,
        /// Wall time, in milliseconds.
        ms: u64,
        /// Deployments: why the rollout stopped before the end (failures beyond the policy).
        #[serde(skip_serializing_if = "Option::is_none")]
        stopped: Option<String>,
        /// The audit record of the run's end, when the command has more to say than the counts
        /// (a deployment's version, digest and per-target plan); the counts are added to it.
        #[serde(skip)]
        record: Option<Box<crate::audit::Entry>>,
    },
}

/// A target's final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Exit code 0.
    Ok,
    /// Ran, and exited non-zero or was killed.
    Failed,
    /// No exit status: could not connect, lost the connection, deadline.
    Error,
    /// Host key unknown, changed or revoked: nothing was sent.
    Refused,
    /// No session within the connect timeout (refused, timed out, no route, lost before the
    /// lock): not touched, and counted as a failure.
    Unreachable,
    /// Not started.
    Skipped,
}

impl Status {
    /// The word in tables.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::Refused => "refused",
            Status::Unreachable => "unreachable",
            Status::Skipped => "skipped",
        }
    }

    /// Whether it counts against a rollout's `max_failures` (and fails the run).
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::Error | Status::Refused | Status::Unreachable)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    schema: u32,
    #[serde(flatten)]
    event: &'a Event,
}

/// Sends events to the reporter task.
pub type Events = mpsc::UnboundedSender<Event>;

/// One consumer of the event stream (a renderer, the audit trail, later a notifier).
pub trait Subscriber: Send {
    /// Takes one event (already masked); an error is shown and makes the run's outcome
    /// "not fully on record", but does not stop the stream.
    fn event(&mut self, event: &Event) -> Result<(), String>;

    /// Every event sent so far was taken (a good moment to flush).
    fn idle(&mut self) {}

    /// The stream has ended (e.g. clear the spinners).
    fn finish(&mut self) {}
}

/// Masks every event once and hands it to each subscriber in order, until every sender is
/// dropped; returns the first subscriber failure, if any.
pub async fn dispatch(
    mut events: mpsc::UnboundedReceiver<Event>,
    secrets: Vec<Secret>,
    mut subscribers: Vec<Box<dyn Subscriber>>,
) -> Result<(), String> {
    let mut failure = None;
    while let Some(event) = events.recv().await {
        let event = masked(&secrets, event);
        for subscriber in &mut subscribers {
            if let Err(e) = subscriber.event(&event) {
                eprintln!("error: {e}");
                failure.get_or_insert(e);
            }
        }
        if events.is_empty() {
            subscribers.iter_mut().for_each(|s| s.idle());
        }
    }
    for subscriber in &mut subscribers {
        subscriber.finish();
    }
    failure.map_or(Ok(()), Err)
}

/// Prints events in one of three styles; see the module docs.
pub struct Reporter {
    style: Style,
    stdout: std::io::BufWriter<std::io::Stdout>,
}

/// Records each target's outcome and the run's end through the store, before they are shown.
pub struct AuditTrail {
    /// Where the records go.
    pub store: std::sync::Arc<dyn crate::store::Store>,
    /// The run id.
    pub run: String,
    /// The command name (`run`).
    pub command: String,
    /// The environment.
    pub environment: String,
    /// The app, for deployments.
    pub app: Option<String>,
    /// Last output lines per target (masked), for the outcome record.
    tails: HashMap<String, std::collections::VecDeque<String>>,
    /// Records the store refused, kept to try once more at the end (never dropped silently).
    unrecorded: Vec<crate::audit::Entry>,
}

/// Output lines an outcome record keeps.
const AUDIT_TAIL_LINES: usize = 10;

impl AuditTrail {
    /// A trail for one run.
    pub fn new(
        store: std::sync::Arc<dyn crate::store::Store>,
        run: &str,
        command: &str,
        environment: &str,
    ) -> AuditTrail {
        AuditTrail {
            store,
            run: run.to_string(),
            command: command.to_string(),
            environment: environment.to_string(),
            app: None,
            tails: HashMap::new(),
            unrecorded: Vec::new(),
        }
    }

    /// Records concern this app.
    pub fn with_app(mut self, app: &str) -> AuditTrail {
        self.app = Some(app.to_string());
        self
    }

    fn record(&mut self, event: &Event) -> Result<(), crate::store::StoreError> {
        let entry = |kind: Kind, targets: Vec<String>, detail: serde_json::Value| crate::audit::Entry {
            run: self.run.clone(),
            command: self.command.clone(),
            app: self.app.clone(),
            environment: Some(self.environment.clone()),
            targets,
            ..records::entry(kind, &detail)
        };
        let record = match event {
            Event::Output { target, line, .. } => {
                let tail = self.tails.entry(target.clone()).or_default();
                if tail.len() == AUDIT_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(truncate_line(line, TAIL_LINE_BYTES));
                return Ok(());
            }
            Event::TargetFinished {
                target,
                status,
                exit_code,
                signal,
                error,
                ms,
                action,
                container,
                logs,
            } => {
                let outcome = records::TargetOutcome {
                    status: *status,
                    exit_code: *exit_code,
                    signal: signal.clone(),
                    error: error.clone(),
                    ms: *ms,
                    tail: self.tails.remove(target).map(Vec::from).unwrap_or_default(),
                    action: *action,
                    container: action.and(container.clone()),
                    logs: action.map(|_| logs.clone()),
                };
                entry(
                    Kind::TargetOutcome,
                    vec![target.clone()],
                    serde_json::to_value(&outcome).unwrap_or_default(),
                )
            }
            Event::RunFinished { ok, failed, skipped, interrupted, ms, stopped, record } => {
                let mut finished = record.as_ref().and_then(|r| r.run_finished()).unwrap_or_default();
                finished.ok = *ok;
                finished.failed = *failed;
                finished.skipped = *skipped;
                finished.interrupted = *interrupted;
                finished.ms = Some(*ms);
                finished.stopped = stopped.clone();
                match record {
                    Some(record) => crate::audit::Entry {
                        detail: serde_json::to_value(&finished).unwrap_or_default(),
                        ..(**record).clone()
                    },
                    None => entry(
                        Kind::RunFinished,
                        Vec::new(),
                        serde_json::to_value(&finished).unwrap_or_default(),
                    ),
                }
            }
            Event::Notified { notifier, moment, delivered, attempts, error } => entry(
                Kind::Notified,
                Vec::new(),
                serde_json::json!({
                    "notifier": notifier,
                    "moment": moment,
                    "delivered": delivered,
                    "attempts": attempts,
                    "error": error,
                }),
            ),
            Event::HookFinished(finished) => {
                entry(Kind::HookFinished, Vec::new(), serde_json::to_value(finished).unwrap_or_default())
            }
            Event::RunStarted { .. }
            | Event::TargetConnected { .. }
            | Event::TargetStep { .. }
            | Event::BatchStarted { .. }
            | Event::HookStarted { .. }
            | Event::HookOutput { .. }
            // In the run's `run_finished` (`retention`), one record for the run.
            | Event::Pruned(_) => return Ok(()),
        };
        self.store.append(&record).map(|_| ()).inspect_err(|_| self.unrecorded.push(record))
    }
}

impl Subscriber for AuditTrail {
    fn event(&mut self, event: &Event) -> Result<(), String> {
        self.record(event).map_err(|e| e.to_string())
    }

    /// Tries the refused records once more (in order, so the chain stays in order); what still
    /// cannot be written is printed (masked, as JSON lines) for the operator to keep, rather than
    /// lost. The run then does not count as fully on record.
    fn finish(&mut self) {
        let mut left = std::mem::take(&mut self.unrecorded).into_iter();
        for entry in left.by_ref() {
            if self.store.append(&entry).is_err() {
                self.unrecorded.push(entry);
                break;
            }
        }
        self.unrecorded.extend(left);
        if !self.unrecorded.is_empty() {
            eprintln!(
                "error: {} of run {} {} not in {}; here they are, keep them:",
                crate::output::count(self.unrecorded.len(), "record"),
                self.run,
                crate::output::are(self.unrecorded.len()),
                self.store.describe()
            );
            for entry in &self.unrecorded {
                eprintln!("{}", serde_json::to_string(entry).unwrap_or_default());
            }
        }
    }
}

enum Style {
    Json,
    Plain,
    /// Nothing (`--quiet`): the audit trail still records everything.
    Quiet,
    Interactive {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

impl Reporter {
    /// Chooses the renderer: JSON for `--output json`, spinners for `human` on a terminal
    /// (stdout and stderr), plain lines otherwise.
    pub fn new(output: OutputFormat) -> Reporter {
        let style = match output {
            OutputFormat::Json => Style::Json,
            // Spinners draw on stderr and print output lines above them: only when both
            // streams are a terminal, so `ferry run … | grep` still gets every line on stdout.
            OutputFormat::Human if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() => {
                Style::Interactive { multi: MultiProgress::new(), bars: HashMap::new() }
            }
            _ => Style::Plain,
        };
        Reporter { style, stdout: std::io::BufWriter::new(std::io::stdout()) }
    }

    /// Shows nothing, except with `--output json` (machines always get every event).
    pub fn quiet(mut self) -> Reporter {
        if !matches!(self.style, Style::Json) {
            self.style = Style::Quiet;
        }
        self
    }
}

fn render(style: &mut Style, out: &mut impl Write, event: &Event) {
    // A closed stdout (`ferry run … | head`) must not stop the run: writes are best-effort.
    match style {
        Style::Json => {
            if let Ok(line) = serde_json::to_string(&Envelope { schema: EVENT_SCHEMA, event }) {
                let _ = writeln!(out, "{line}");
            }
        }
        Style::Plain => match event {
            Event::Output { target, line, .. } => {
                let _ = writeln!(out, "{target} | {line}");
            }
            Event::TargetFinished { target, status: Status::Unreachable, error: Some(error), .. } => {
                let _ = writeln!(out, "{target} ! unreachable: {error}");
            }
            Event::TargetFinished { target, error: Some(error), .. } => {
                let _ = writeln!(out, "{target} ! {error}");
            }
            Event::TargetStep { target, step } => {
                let _ = writeln!(out, "{target} - {step}");
            }
            Event::BatchStarted { batch, targets } => {
                let _ = writeln!(out, "batch {batch}: {}", targets.join(", "));
            }
            Event::Notified { .. } => {
                let _ = writeln!(out, "{}", notified_line(event));
            }
            Event::Pruned(pruned) => {
                let _ = writeln!(out, "{}", pruned_line(pruned));
            }
            Event::HookStarted { .. } | Event::HookOutput { .. } | Event::HookFinished(_) => {
                if let Some(line) = hook_line(event) {
                    let _ = writeln!(out, "{line}");
                }
            }
            _ => {}
        },
        Style::Interactive { multi, bars } => render_interactive(multi, bars, event),
        // A notifier or a retention step that failed is still said, on stderr: under cron with
        // `--quiet`, the mail cron sends is the only way anyone learns of it.
        Style::Quiet => match event {
            Event::Notified { delivered: false, .. } => eprintln!("warning: {}", notified_line(event)),
            // Retention that failed leaves images on the target's disk: said like a notifier.
            Event::Pruned(pruned) if pruned.error.is_some() => eprintln!("warning: {}", pruned_line(pruned)),
            _ => {}
        },
    }
}

/// A hook's event as one line: `hook NAME - running PATH`, `hook NAME | output`, `hook NAME -
/// ok` or `hook NAME ! what went wrong`.
fn hook_line(event: &Event) -> Option<String> {
    match event {
        Event::HookStarted { hook, path } => Some(format!("hook {hook} - running {path}")),
        Event::HookOutput { hook, line, .. } => Some(format!("hook {hook} | {line}")),
        Event::HookFinished(finished) => Some(match &finished.error {
            None => format!("hook {} - ok", finished.hook),
            Some(error) => format!("hook {} ! {error}", finished.hook),
        }),
        _ => None,
    }
}

/// The event with every secret value masked.
fn masked(secrets: &[Secret], event: Event) -> Event {
    if secrets.is_empty() {
        return event;
    }
    match event {
        // The operator's own command line may contain a secret (`run -- echo $TOKEN` expanded
        // by their shell): it is output like any other.
        Event::RunStarted { run, command, environment, targets } => {
            Event::RunStarted { run, command: mask(&command, secrets), environment, targets }
        }
        Event::Output { target, stream, line, in_flight } => {
            Event::Output { target, stream, line: mask(&line, secrets), in_flight }
        }
        Event::TargetFinished { target, status, exit_code, signal, error, ms, action, container, logs } => {
            let error = error.map(|e| mask(&e, secrets));
            let logs = logs.iter().map(|l| mask(l, secrets)).collect();
            Event::TargetFinished { target, status, exit_code, signal, error, ms, action, container, logs }
        }
        Event::TargetStep { target, step } => Event::TargetStep { target, step: mask(&step, secrets) },
        Event::Notified { notifier, moment, delivered, attempts, error } => {
            Event::Notified { notifier, moment, delivered, attempts, error: error.map(|e| mask(&e, secrets)) }
        }
        Event::HookOutput { hook, stream, line, in_flight } => {
            Event::HookOutput { hook, stream, line: mask(&line, secrets), in_flight }
        }
        Event::Pruned(mut pruned) => {
            pruned.error = pruned.error.map(|e| mask(&e, secrets));
            Event::Pruned(pruned)
        }
        Event::HookFinished(mut finished) => {
            finished.error = finished.error.map(|e| mask(&e, secrets));
            finished.tail = finished.tail.iter().map(|l| mask(l, secrets)).collect();
            Event::HookFinished(finished)
        }
        other => other,
    }
}

impl Subscriber for Reporter {
    fn event(&mut self, event: &Event) -> Result<(), String> {
        render(&mut self.style, &mut self.stdout, event);
        Ok(())
    }

    fn idle(&mut self) {
        // Lines appear as they happen, without a write per line.
        let _ = self.stdout.flush();
    }

    fn finish(&mut self) {
        if let Style::Interactive { multi, .. } = &self.style {
            let _ = multi.clear();
        }
        let _ = self.stdout.flush();
    }
}

fn render_interactive(multi: &MultiProgress, bars: &mut HashMap<String, ProgressBar>, event: &Event) {
    match event {
        Event::RunStarted { targets, .. } => {
            let width = targets.iter().map(String::len).max().unwrap_or(0);
            let style =
                ProgressStyle::with_template(&format!("{{spinner}} {{prefix:{width}}}  {{wide_msg}}"))
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            for name in targets {
                let bar =
                    multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(name.clone()));
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(name.clone(), bar);
            }
        }
        Event::TargetConnected { target, .. } => {
            if let Some(bar) = bars.get(target) {
                bar.set_message("running");
            }
        }
        Event::Output { target, line, .. } => {
            let _ = multi.println(format!("{target} | {line}"));
            if let Some(bar) = bars.get(target) {
                bar.set_message(line.clone());
            }
        }
        Event::TargetFinished { target, status, exit_code, error, ms, action, .. } => {
            if let Some(bar) = bars.get(target) {
                let detail = error
                    .clone()
                    .or_else(|| action.map(|a| a.label().to_string()))
                    .or_else(|| exit_code.map(|c| format!("exit {c}")))
                    .unwrap_or_default();
                bar.finish_with_message(format!("{} {detail} ({ms} ms)", status.label()));
            }
        }
        Event::TargetStep { target, step } => {
            if let Some(bar) = bars.get(target) {
                bar.set_message(step.clone());
            }
        }
        Event::BatchStarted { batch, targets } => {
            let _ = multi.println(format!("batch {batch}: {}", targets.join(", ")));
        }
        Event::Notified { .. } => {
            let _ = multi.println(notified_line(event));
        }
        Event::Pruned(pruned) => {
            let _ = multi.println(pruned_line(pruned));
        }
        Event::HookStarted { .. } | Event::HookOutput { .. } | Event::HookFinished(_) => {
            if let Some(line) = hook_line(event) {
                let _ = multi.println(line);
            }
        }
        Event::RunFinished { .. } => {}
    }
}

/// `web-1 - retention: removed 2 images (…), 0 containers; 12.3 MB freed`; `!` when something
/// could not be removed.
fn pruned_line(pruned: &crate::retention::Pruned) -> String {
    let mark = if pruned.error.is_some() { '!' } else { '-' };
    format!("{} {mark} retention: {}", pruned.target, pruned.describe())
}

/// `notified chat (started)`, or why it was not delivered.
fn notified_line(event: &Event) -> String {
    let Event::Notified { notifier, moment, delivered, attempts, error } = event else {
        return String::new();
    };
    if *delivered {
        format!("notified {notifier} ({})", moment.as_str())
    } else {
        format!(
            "notify {notifier} ({}): not delivered after {}: {}",
            moment.as_str(),
            crate::output::count(*attempts as usize, "attempt"),
            error.as_deref().unwrap_or("no answer")
        )
    }
}

/// Splits a target's output into lines and sends each as an [`Event::Output`]; keeps the last
/// [`TAIL_LINES`] lines for the target's result, each cut to [`TAIL_LINE_BYTES`].
///
/// Memory stays bounded whatever a target prints: a line without a newline is sent on in
/// pieces of [`MAX_LINE_BYTES`] (everything still passes through), and what is kept for records
/// and summaries is a fixed number of cut lines.
pub struct LineSplitter {
    target: String,
    /// A hook's output instead of a target's: sent as [`Event::HookOutput`].
    hook: Option<crate::hooks::HookKind>,
    events: Events,
    partial: [Vec<u8>; 2],
    /// The last lines seen (both streams), oldest first.
    pub tail: std::collections::VecDeque<String>,
    backlog: Arc<Backlog>,
    /// Masked in a tail line before it is cut: a secret cut in half would no longer match.
    secrets: Vec<crate::secret::Secret>,
}

/// Output bytes of one target sent on as events that no subscriber has handled yet, past which
/// reading the target's output waits (see [`OutputSink::ready`]).
pub const OUTPUT_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// A target's output in flight between its [`LineSplitter`] and the subscribers.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicUsize,
    room: tokio::sync::Notify,
}

/// An [`Event::Output`]'s share of its target's backlog, given back when the event is dropped
/// (handled by [`dispatch`], or read and dropped by whoever holds the receiver).
#[derive(Default)]
pub struct InFlight(Option<(Arc<Backlog>, usize)>);

impl InFlight {
    fn new(backlog: &Arc<Backlog>, bytes: usize) -> InFlight {
        backlog.bytes.fetch_add(bytes, Ordering::SeqCst);
        InFlight(Some((Arc::clone(backlog), bytes)))
    }
}

/// A copy of an event carries no share: only the original gives it back.
impl Clone for InFlight {
    fn clone(&self) -> InFlight {
        InFlight(None)
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InFlight({})", self.0.as_ref().map_or(0, |(_, n)| *n))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((backlog, bytes)) = self.0.take() {
            let before = backlog.bytes.fetch_sub(bytes, Ordering::SeqCst);
            if before >= OUTPUT_BACKLOG_BYTES && before - bytes < OUTPUT_BACKLOG_BYTES {
                backlog.room.notify_waiters();
            }
        }
    }
}

/// How many output lines a target's result keeps.
pub const TAIL_LINES: usize = 20;

/// The longest line kept for a record or a summary (a tail line, a container log line); the
/// rest is cut and marked with `…`.
pub const TAIL_LINE_BYTES: usize = 1024;

/// The longest line sent as one [`Event::Output`]: longer runs without a newline are sent in
/// pieces this long, so one endless line does not grow ferry.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// `line` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
pub fn truncate_line(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

impl LineSplitter {
    /// A splitter for `target`.
    pub fn new(target: &str, events: Events) -> LineSplitter {
        LineSplitter {
            target: target.to_string(),
            hook: None,
            events,
            partial: [Vec::new(), Vec::new()],
            tail: Default::default(),
            backlog: Arc::default(),
            secrets: Vec::new(),
        }
    }

    /// The same splitter, masking `secrets` in the tail it keeps (before a long line is cut, so
    /// a secret that the cut would split is still found). The events are masked on their way.
    pub fn masking(mut self, secrets: &[crate::secret::Secret]) -> LineSplitter {
        self.secrets = secrets.to_vec();
        self
    }

    /// A splitter for a deploy hook's output on the runner.
    pub fn for_hook(hook: crate::hooks::HookKind, events: Events) -> LineSplitter {
        LineSplitter { hook: Some(hook), ..LineSplitter::new(hook.as_str(), events) }
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes).into_owned();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(truncate_line(&crate::secret::mask(&line, &self.secrets), TAIL_LINE_BYTES));
        // The weight counts the event's own allocations too, so that short lines add up.
        let in_flight = InFlight::new(&self.backlog, line.len() + self.target.len() + 64);
        let event = match self.hook {
            Some(hook) => Event::HookOutput { hook, stream, line, in_flight },
            None => Event::Output { target: self.target.clone(), stream, line, in_flight },
        };
        let _ = self.events.send(event);
    }

    /// Sends what is left of unterminated last lines.
    pub fn flush(&mut self) {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }
}

/// `buffer` with every occurrence of each secret's bytes replaced by `***`, as
/// [`crate::secret::mask`] does for text (the buffer may end inside a character).
fn mask_bytes(buffer: &mut Vec<u8>, secrets: &[crate::secret::Secret]) {
    for secret in secrets {
        let needle = secret.expose().as_bytes();
        if needle.is_empty() || buffer.len() < needle.len() {
            continue;
        }
        let mut out = Vec::with_capacity(buffer.len());
        let mut i = 0;
        while i < buffer.len() {
            if buffer[i..].starts_with(needle) {
                out.extend_from_slice(b"***");
                i += needle.len();
            } else {
                out.push(buffer[i]);
                i += 1;
            }
        }
        *buffer = out;
    }
}

impl OutputSink for LineSplitter {
    fn output(&mut self, stream: Stream, data: &[u8]) {
        let i = usize::from(stream == Stream::Stderr);
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[i]);
            line.extend_from_slice(&rest[..newline]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.emit(stream, &line);
            rest = &rest[newline + 1..];
        }
        self.partial[i].extend_from_slice(rest);
        // A piece is cut only once the longest secret fits after the cut, and the buffer is
        // masked first: a secret that would straddle the cut is masked whole, not sent in halves.
        let margin = self.secrets.iter().map(|s| s.expose().len()).max().unwrap_or(0);
        while self.partial[i].len() > MAX_LINE_BYTES + margin {
            if margin > 0 {
                mask_bytes(&mut self.partial[i], &self.secrets);
                if self.partial[i].len() <= MAX_LINE_BYTES + margin {
                    break;
                }
            }
            // Cut before a UTF-8 continuation byte, so that no character is split in two.
            let mut cut = MAX_LINE_BYTES;
            while cut > MAX_LINE_BYTES - 3 && self.partial[i][cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let rest = self.partial[i].split_off(cut);
            let piece = std::mem::replace(&mut self.partial[i], rest);
            self.emit(stream, &piece);
        }
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                // Registered before the check, so a wakeup between the two is not lost.
                let room = self.backlog.room.notified();
                if self.backlog.bytes.load(Ordering::SeqCst) < OUTPUT_BACKLOG_BYTES {
                    return;
                }
                room.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A store that refuses its first `refusals` appends: a store going away mid-run is a fault
    /// the file store cannot be made to produce on demand, hence this in-process stand-in.
    struct Flaky {
        refusals: std::sync::Mutex<usize>,
        written: std::sync::Mutex<Vec<crate::audit::Entry>>,
        actor: crate::audit::Actor,
    }

    impl crate::store::Store for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn actor(&self) -> &crate::audit::Actor {
            &self.actor
        }
        fn append(
            &self,
            entry: &crate::audit::Entry,
        ) -> Result<crate::store::Appended, crate::store::StoreError> {
            let mut refusals = self.refusals.lock().unwrap();
            if *refusals > 0 {
                *refusals -= 1;
                let gone = std::io::Error::other("store unreachable");
                return Err(crate::audit::AuditError::Io { path: "flaky".into(), source: gone }.into());
            }
            self.written.lock().unwrap().push(entry.clone());
            Ok(crate::store::Appended::Chained(1))
        }
        fn deployments(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Vec<crate::deployments::Deployment>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        fn status(&self) -> Result<crate::store::StoreStatus, crate::store::StoreError> {
            unimplemented!("not asked in these tests")
        }
        fn successes_by_phase(
            &self,
            _: &str,
            _: &[String],
        ) -> Result<HashMap<String, Vec<crate::deployments::Deployment>>, crate::store::StoreError> {
            Ok(HashMap::new())
        }
        fn last_success(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<crate::deployments::Deployment>, crate::store::StoreError> {
            Ok(None)
        }
        fn history(
            &self,
            _: &crate::store::HistoryFilter,
        ) -> Result<Vec<crate::audit::Record>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        fn verify(&self) -> Result<crate::audit::Verification, crate::store::StoreError> {
            Ok(crate::audit::Verification { records: 0, torn_lines: Vec::new(), broken: None })
        }
        fn hash_key(&self) -> Result<Vec<u8>, crate::store::StoreError> {
            Ok(Vec::new())
        }
        fn lease(
            &self,
            environment: &str,
            _: &crate::lock::LockInfo,
        ) -> Result<Box<dyn crate::store::Lease>, crate::lock::LockError> {
            Err(crate::lock::LockError::Held {
                environment: environment.into(),
                target: "local".into(),
                info: None,
            })
        }
    }

    fn finished(target: &str) -> Event {
        Event::TargetFinished {
            target: target.into(),
            status: Status::Ok,
            exit_code: Some(0),
            signal: None,
            error: None,
            ms: 1,
            action: None,
            container: None,
            logs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_record_the_store_refused_is_kept_and_written_at_the_end_in_order() {
        let actor = crate::audit::Actor { user: "u".into(), host: "h".into(), via: "test".into(), job: None };
        let store =
            Arc::new(Flaky { refusals: std::sync::Mutex::new(1), written: Default::default(), actor });
        let trail = AuditTrail::new(Arc::clone(&store) as Arc<dyn crate::store::Store>, "r", "run", "dev");
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(finished("a")).unwrap();
        tx.send(finished("b")).unwrap();
        drop(tx);
        let outcome = dispatch(rx, Vec::new(), vec![Box::new(trail)]).await;
        assert!(outcome.is_err(), "a refused record means the run is not fully on record");
        let written = store.written.lock().unwrap();
        let targets: Vec<&str> = written.iter().map(|e| e.targets[0].as_str()).collect();
        assert_eq!(targets, ["b", "a"], "a is written at the end, not lost");
    }

    #[test]
    fn splits_lines_across_chunks_and_flushes_the_rest() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx);
        splitter.output(Stream::Stdout, b"one\ntw");
        splitter.output(Stream::Stderr, b"err\r\n");
        splitter.output(Stream::Stdout, b"o\nthree");
        splitter.flush();
        let mut lines = Vec::new();
        while let Ok(Event::Output { line, stream, .. }) = rx.try_recv() {
            lines.push((stream, line));
        }
        assert_eq!(
            lines,
            [
                (Stream::Stdout, "one".to_string()),
                (Stream::Stderr, "err".to_string()),
                (Stream::Stdout, "two".to_string()),
                (Stream::Stdout, "three".to_string())
            ]
        );
    }

    #[test]
    fn kept_output_is_capped_while_every_byte_still_streams() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx);
        // 300 KiB without a newline, then 50 lines of 5 KiB each ("é" is two bytes).
        let endless = "é".repeat(150 * 1024);
        for chunk in endless.as_bytes().chunks(7001) {
            splitter.output(Stream::Stdout, chunk);
        }
        assert!(splitter.partial[0].len() < MAX_LINE_BYTES, "an endless line is not kept whole");
        let long = format!("{}\n", "x".repeat(5 * 1024));
        for _ in 0..50 {
            splitter.output(Stream::Stderr, long.as_bytes());
        }
        splitter.flush();
        let (mut stdout, mut stderr) = (String::new(), 0);
        let mut longest = 0;
        while let Ok(Event::Output { line, stream, .. }) = rx.try_recv() {
            longest = longest.max(line.len());
            match stream {
                Stream::Stdout => stdout.push_str(&line),
                Stream::Stderr => stderr += line.len(),
            }
        }
        assert_eq!(stdout, endless, "everything passes through, no character split in two");
        assert_eq!(stderr, 50 * 5 * 1024, "everything passes through");
        assert!(longest <= MAX_LINE_BYTES);
        assert_eq!(splitter.tail.len(), TAIL_LINES);
        assert!(splitter.tail.iter().all(|l| l.len() <= TAIL_LINE_BYTES && l.ends_with('…')));
        assert_eq!(truncate_line("short", TAIL_LINE_BYTES), "short");
        assert_eq!(truncate_line("ééé", 5), "é…", "cut on a character boundary, marked");
    }

    #[test]
    fn output_of_exactly_the_piece_size_without_a_newline_is_no_panic() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx);
        // A hook's reads are 8 KiB: eight of them end exactly at the piece size.
        for _ in 0..MAX_LINE_BYTES / 8192 {
            splitter.output(Stream::Stdout, &[b'x'; 8192]);
        }
        splitter.output(Stream::Stdout, b"y");
        splitter.flush();
        let mut total = 0;
        while let Ok(Event::Output { line, .. }) = rx.try_recv() {
            assert!(line.len() <= MAX_LINE_BYTES);
            total += line.len();
        }
        assert_eq!(total, MAX_LINE_BYTES + 1);
    }

    #[test]
    fn a_secret_across_a_piece_cut_is_masked_whole() {
        let secret = crate::secret::Secret::new("hunter2-swordfish");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx).masking(std::slice::from_ref(&secret));
        // The secret begins 5 bytes before the piece size, and arrives in two writes.
        splitter.output(Stream::Stdout, &vec![b'x'; MAX_LINE_BYTES - 5]);
        splitter.output(Stream::Stdout, b"hunter2-");
        splitter.output(Stream::Stdout, b"swordfish and more");
        splitter.output(Stream::Stdout, &vec![b'z'; MAX_LINE_BYTES]);
        splitter.flush();
        let mut all = String::new();
        while let Ok(Event::Output { line, .. }) = rx.try_recv() {
            all.push_str(&line);
        }
        assert!(!all.contains("hunter") && !all.contains("swordfish"), "no half of it is sent");
        assert!(all.contains("xxx*** and more"), "masked whole");
    }

    #[test]
    fn a_secret_that_the_tail_cut_would_split_is_masked_before_the_cut() {
        let secret = crate::secret::Secret::new("hunter2-swordfish");
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx).masking(std::slice::from_ref(&secret));
        // The secret starts 8 bytes before the cut: cut first, masked after, "hunter2-" stays.
        let line = format!("{}hunter2-swordfish tail\n", "x".repeat(TAIL_LINE_BYTES - 3 - 8));
        splitter.output(Stream::Stdout, line.as_bytes());
        let kept = splitter.tail.back().unwrap();
        assert!(!kept.contains("hunter"), "no part of the secret is kept: {}", &kept[kept.len() - 20..]);
        assert!(kept.ends_with("*** tail"), "{}", &kept[kept.len() - 20..]);
        let mut unmasked = LineSplitter::new("t", mpsc::unbounded_channel().0);
        unmasked.output(Stream::Stdout, line.as_bytes());
        assert!(unmasked.tail.back().unwrap().contains("hunter2-"), "the case this test is about");
    }

    #[tokio::test]
    async fn a_target_waits_while_its_output_is_not_handled_and_goes_on_once_it_is() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut splitter = LineSplitter::new("t", tx);
        let line = format!("{}\n", "y".repeat(1000));
        for _ in 0..OUTPUT_BACKLOG_BYTES / 1000 {
            splitter.output(Stream::Stdout, line.as_bytes());
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), splitter.ready()).await;
        assert!(waiting.is_err(), "4 MiB unhandled: reading the target waits");
        let ready = splitter.ready();
        let handled = async {
            while let Ok(event) = rx.try_recv() {
                drop(event);
            }
        };
        let (_, outcome) = tokio::join!(handled, tokio::time::timeout(Duration::from_secs(5), ready));
        assert!(outcome.is_ok(), "handled events give their room back and wake the reader");
        assert_eq!(splitter.backlog.bytes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn json_events_carry_schema_and_type() {
        let event = Event::TargetConnected { target: "h1".into(), ms: 12 };
        let json =
            serde_json::to_string(&Envelope { schema: EVENT_SCHEMA, event: &event }).unwrap_or_default();
        assert_eq!(json, r#"{"schema":1,"type":"target_connected","target":"h1","ms":12}"#);
    }
}
