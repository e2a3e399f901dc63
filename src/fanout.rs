//! Stage 6 (the part shared by every command that acts on targets): run work on many targets.
//!
//! One connection per target for the whole run, at most `parallel` targets at once, each with
//! its own result: a target that cannot be reached fails alone. Ctrl-C stops *starting* targets;
//! those already running finish (or hit their deadline), and the run reports itself interrupted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::exec::ExitStatus;
use crate::host::{self, Host};
use crate::inventory::{Inventory, Target};
use crate::report::{Event, Events, LineSplitter, Status};
use crate::ssh;

/// What to run on every target.
#[derive(Debug, Clone)]
pub struct Work {
    /// A shell command line (run by `/bin/sh -c` on the target).
    pub command: String,
    /// Sent to the command's stdin, then EOF.
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long.
    pub deadline: Option<Duration>,
    /// When set, a line `TIME PREFIX -> OUTCOME` is appended to `~/.ferry/audit.log` on each
    /// target touched, so someone logged into the host can see what ferry did there.
    pub mirror: Option<String>,
}

/// How long the mirror line may take; it never holds up a run for longer.
const MIRROR_DEADLINE: Duration = Duration::from_secs(10);

/// How one target ended.
#[derive(Debug, Clone)]
pub struct TargetResult {
    /// Target name.
    pub target: String,
    /// Final state.
    pub status: Status,
    /// How the command ended, when it ran to an exit status.
    pub exit: Option<ExitStatus>,
    /// What went wrong, for `error` and `refused`.
    pub error: Option<String>,
    /// Time spent on the target.
    pub duration: Duration,
    /// The last output lines.
    pub tail: Vec<String>,
}

/// Fan-out settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Targets at once.
    pub parallel: usize,
    /// SSH options shared by all connections.
    pub ssh: ssh::Options,
}

/// Becomes true when the run should stop starting targets (Ctrl-C).
pub type Cancel = watch::Receiver<bool>;

/// Runs `work` on every target; results come back in target order.
pub async fn run(
    inventory: Arc<Inventory>,
    targets: Vec<Target>,
    work: Arc<Work>,
    settings: &Settings,
    events: Events,
    cancel: Cancel,
) -> Vec<TargetResult> {
    let permits = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut results: Vec<Option<TargetResult>> = vec![None; targets.len()];
    let mut cancel = cancel;
    // Permits are taken here, in inventory order, so targets start in that order (with
    // `--parallel 1`, one after another); a Ctrl-C while waiting skips the rest.
    for (index, target) in targets.into_iter().enumerate() {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.ok(),
            () = cancelled(&mut cancel) => None,
        };
        let Some(permit) = permit.filter(|_| !*cancel.borrow()) else {
            results[index] = Some(skipped(&target.name, &events));
            continue;
        };
        let (inventory, work, events, options) =
            (Arc::clone(&inventory), Arc::clone(&work), events.clone(), settings.ssh.clone());
        tasks.spawn(async move {
            let result = one_target(&inventory, &target, &work, &options, &events).await;
            drop(permit);
            (index, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        // A panicking task is a bug; its target is simply missing from the results below.
        if let Ok((index, result)) = joined {
            results[index] = Some(result);
        }
    }
    results.into_iter().flatten().collect()
}

/// Resolves when the run is cancelled (never, if the sender is gone without cancelling).
pub async fn cancelled(cancel: &mut Cancel) {
    while !*cancel.borrow() {
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn skipped(target: &str, events: &Events) -> TargetResult {
    let result = TargetResult {
        target: target.to_string(),
        status: Status::Skipped,
        exit: None,
        error: Some("not started: interrupted".into()),
        duration: Duration::ZERO,
        tail: Vec::new(),
    };
    finished(events, &result);
    result
}

async fn one_target(
    inventory: &Inventory,
    target: &Target,
    work: &Work,
    options: &ssh::Options,
    events: &Events,
) -> TargetResult {
    let started = Instant::now();
    let mut result = TargetResult {
        target: target.name.clone(),
        status: Status::Error,
        exit: None,
        error: None,
        duration: Duration::ZERO,
        tail: Vec::new(),
    };
    let connection = match host::open(inventory, target, options).await {
        Ok(c) => c,
        Err(e) => {
            result.status = if e.is_host_key() { Status::Refused } else { Status::Error };
            result.error = Some(e.to_string());
            result.duration = started.elapsed();
            finished(events, &result);
            return result;
        }
    };
    let _ =
        events.send(Event::TargetConnected { target: target.name.clone(), ms: millis(started.elapsed()) });
    let mut sink = LineSplitter::new(&target.name, events.clone());
    let outcome = connection.exec(&work.command, work.stdin.as_deref(), work.deadline, &mut sink).await;
    sink.flush();
    result.tail = sink.tail.into_iter().collect();
    match outcome {
        Ok(exit) => {
            result.status = if exit.success() { Status::Ok } else { Status::Failed };
            result.exit = Some(exit);
        }
        Err(e) => result.error = Some(e.to_string()),
    }
    result.duration = started.elapsed();
    // A local target is the machine that holds the audit log itself: no mirror.
    if let (Some(prefix), false) = (&work.mirror, connection.is_local()) {
        mirror(&*connection, prefix, &result).await;
    }
    finished(events, &result);
    connection.close().await;
    result
}

/// Appends the target's audit mirror line. Best effort: the local log is the record.
async fn mirror(connection: &dyn Host, prefix: &str, result: &TargetResult) {
    let outcome = match (&result.exit, &result.error) {
        (Some(exit), _) => exit.to_string(),
        (None, Some(error)) => format!("error: {error}"),
        (None, None) => "unknown".to_string(),
    };
    write_mirror(connection, &result.target, &format!("{prefix} -> {outcome}")).await;
}

/// Appends `TIME text` to the target's `~/.ferry/audit.log` (run and deploy both write it).
/// Best effort, bounded by [`MIRROR_DEADLINE`]: the local log is the record.
pub async fn write_mirror(connection: &dyn Host, target: &str, text: &str) {
    let line = format!("{} {text}\n", crate::time::now_rfc3339());
    let mut sink = crate::exec::Discard;
    let command = "mkdir -p ~/.ferry && cat >> ~/.ferry/audit.log";
    if let Err(e) = connection.exec(command, Some(line.as_bytes()), Some(MIRROR_DEADLINE), &mut sink).await {
        tracing::debug!(target = %target, error = %e, "audit mirror not written");
    }
}

fn finished(events: &Events, result: &TargetResult) {
    let (exit_code, signal) = match &result.exit {
        Some(ExitStatus::Code(c)) => (Some(*c), None),
        Some(ExitStatus::Signal(s)) => (None, Some(s.clone())),
        None => (None, None),
    };
    let _ = events.send(Event::TargetFinished {
        target: result.target.clone(),
        status: result.status,
        exit_code,
        signal,
        error: result.error.clone(),
        ms: millis(result.duration),
        action: None,
        container: None,
        logs: Vec::new(),
    });
}

/// Milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
