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
    /// SSH target touched, so someone logged into the host can see what ferry did there. The
    /// command's own session writes it once the command ends (see [`mirrored_command`]), so the
    /// target's sshd starts one session per run, not two; TIME is when ferry started the
    /// command, on ferry's clock like the local audit log (no `date` process on the target).
    pub mirror: Option<String>,
    /// Masked in the output lines a result keeps, before a long line is cut (see
    /// [`LineSplitter::masking`]).
    pub secrets: Vec<crate::secret::Secret>,
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

/// A target the session could not open a session with (or lock): never touched by the run, and
/// reported with its own outcome by the command's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    /// Target name.
    pub target: String,
    /// `unreachable`, `refused` (host key) or `error` (a rejected key).
    pub status: Status,
    /// Why.
    pub error: String,
    /// Time spent trying.
    pub duration: Duration,
}

impl Unreached {
    /// The target's result, reported on `events` now.
    pub fn report(&self, events: &Events) -> TargetResult {
        let result = TargetResult {
            target: self.target.clone(),
            status: self.status,
            exit: None,
            error: Some(self.error.clone()),
            duration: self.duration,
            tail: Vec::new(),
        };
        finished(events, &result);
        result
    }
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
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let limits = Limits { parallel: settings.parallel, cancel: Some(cancel) };
    let outcomes = ordered(
        targets,
        limits,
        |_, target| {
            let (inventory, work, events, options) =
                (Arc::clone(&inventory), Arc::clone(&work), events.clone(), settings.ssh.clone());
            async move { one_target(&inventory, &target, &work, &options, &events).await }
        },
        |_, target| skipped(&target.name, &events),
    )
    .await;
    outcomes
        .into_iter()
        .zip(names)
        .map(|(outcome, name)| match outcome {
            Ok(result) => result,
            // Already reported when it was skipped.
            Err(Unfinished::Skipped) => not_run(&name, Status::Skipped, Unfinished::Skipped.to_string()),
            Err(crashed) => {
                let result = not_run(&name, Status::Error, crashed.to_string());
                finished(&events, &result);
                result
            }
        })
        .collect()
}

/// Resolves when the run is cancelled (never, if the sender is gone without cancelling).
pub async fn cancelled(cancel: &mut Cancel) {
    while !*cancel.borrow() {
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why an item of [`ordered`] has no result of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfinished {
    /// The run was cancelled before the item started.
    #[error("not started: interrupted")]
    Skipped,
    /// Its task panicked or was aborted: a bug, reported as this item's error.
    #[error("internal error: {0}")]
    Crashed(String),
}

/// How [`ordered`] runs its items.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Items at once (at least one).
    pub parallel: usize,
    /// Stops starting items when it becomes true; `None`: never cancelled.
    pub cancel: Option<Cancel>,
}

impl Limits {
    /// `parallel` at once, never cancelled.
    pub fn parallel(parallel: usize) -> Limits {
        Limits { parallel, cancel: None }
    }
}

/// Runs `start(index, item)` for every item as its own task, at most `limits.parallel` at once,
/// and returns one outcome per item, in the items' order. Permits are taken in order, so items
/// start in that order (with one at a time, one after another). Once `limits.cancel` is set,
/// no further item starts: each of those is [`Unfinished::Skipped`], and `on_skip` hears of it
/// at once (so a skip is reported when it happens, not when the running items end). A task that
/// panics or is aborted becomes [`Unfinished::Crashed`] for its own item: never a missing item.
pub async fn ordered<I, T, Fut>(
    items: Vec<I>,
    limits: Limits,
    mut start: impl FnMut(usize, I) -> Fut,
    mut on_skip: impl FnMut(usize, I),
) -> Vec<Result<T, Unfinished>>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.parallel.max(1)));
    let mut outcomes: Vec<Option<Result<T, Unfinished>>> = items.iter().map(|_| None).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut index_of = std::collections::HashMap::new();
    let mut cancel = limits.cancel;
    for (index, item) in items.into_iter().enumerate() {
        let permit = match cancel.as_mut() {
            Some(cancel) => tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.ok().filter(|_| !*cancel.borrow()),
                () = cancelled(cancel) => None,
            },
            None => Arc::clone(&permits).acquire_owned().await.ok(),
        };
        let Some(permit) = permit else {
            outcomes[index] = Some(Err(Unfinished::Skipped));
            on_skip(index, item);
            continue;
        };
        let work = start(index, item);
        let handle = tasks.spawn(async move {
            let outcome = work.await;
            drop(permit);
            outcome
        });
        index_of.insert(handle.id(), index);
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        let (id, outcome) = match joined {
            Ok((id, value)) => (id, Ok(value)),
            Err(e) => (e.id(), Err(Unfinished::Crashed(crash_message(e)))),
        };
        if let Some(&index) = index_of.get(&id) {
            outcomes[index] = Some(outcome);
        }
    }
    // Every index got an outcome above: skipped, or its task joined (a JoinSet yields each
    // spawned task exactly once). The fallback only keeps the length right if that ever broke.
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Unfinished::Crashed("the task vanished".into()))))
        .collect()
}

/// What a panicked or aborted task said.
fn crash_message(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "the task was aborted".into();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("the task panicked: {text}")
}

fn skipped(target: &str, events: &Events) {
    finished(events, &not_run(target, Status::Skipped, Unfinished::Skipped.to_string()));
}

fn not_run(target: &str, status: Status, error: String) -> TargetResult {
    TargetResult {
        target: target.to_string(),
        status,
        exit: None,
        error: Some(error),
        duration: Duration::ZERO,
        tail: Vec::new(),
    }
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
            result.status = e.status();
            result.error = Some(e.to_string());
            result.duration = started.elapsed();
            finished(events, &result);
            return result;
        }
    };
    let _ =
        events.send(Event::TargetConnected { target: target.name.clone(), ms: millis(started.elapsed()) });
    // A local target is the machine that holds the audit log itself: no mirror.
    let mirror = work.mirror.as_deref().filter(|_| !connection.is_local());
    let mirrored = mirror.and_then(|prefix| {
        let line = format!("{} {prefix} -> ", crate::time::now_rfc3339());
        mirrored_command(&work.command, &line)
    });
    let command = mirrored.as_deref().unwrap_or(&work.command);
    let mut sink = LineSplitter::new(&target.name, events.clone()).masking(&work.secrets);
    let outcome = connection.exec(command, work.stdin.as_deref(), work.deadline, &mut sink).await;
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
    // The script writes the line only when the command ends by itself; a command past its
    // deadline (killed with its script) or one that could not be started gets it on a channel of
    // its own, as the line says what happened there too.
    if let Some(prefix) = mirror
        && (mirrored.is_none() || result.exit.is_none())
    {
        self::mirror(&*connection, prefix, &result).await;
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
    // The prefix is the run's masked display; the outcome is ferry's own text. No secret to mask.
    write_mirror(connection, &result.target, &format!("{prefix} -> {outcome}"), &[]).await;
}

/// Appends `TIME text` to the target's `~/.ferry/audit.log` on a channel of its own (deploy
/// writes its line this way; run does when the command's own session could not), with every
/// value of `secrets` masked: the text can hold a docker error or a health check's output,
/// which may echo a secret back. The folder and the log are created private to the target's
/// user (umask 077): they say what ran there and by whom.
/// Best effort, bounded by [`MIRROR_DEADLINE`]: the local log is the record.
pub async fn write_mirror(
    connection: &dyn Host,
    target: &str,
    text: &str,
    secrets: &[crate::secret::Secret],
) {
    let text = crate::secret::mask(text, secrets);
    // One line per outcome, whatever a docker error or a health check printed.
    let text = text.replace(['\n', '\r'], " ");
    let line = format!("{} {text}\n", crate::time::now_rfc3339());
    let mut sink = crate::exec::Discard;
    let command = "umask 077; mkdir -p ~/.ferry && cat >> ~/.ferry/audit.log";
    if let Err(e) = connection.exec(command, Some(line.as_bytes()), Some(MIRROR_DEADLINE), &mut sink).await {
        tracing::debug!(target = %target, error = %e, "audit mirror not written");
    }
}

/// `command` followed, in the same remote shell, by appending `line` and the command's outcome
/// (`exit N`, or `killed by SIGX`) to `~/.ferry/audit.log`; `None` when a NUL byte keeps
/// either from a command line.
///
/// The command still runs through `/bin/sh -c` of its own, so it means what it means without
/// the mirror (its `exit`, `$$`, `cd` and traps stay inside it); its stdin is the session's,
/// and the line's output goes nowhere, so the command's output is all that comes back. The
/// script then ends as the command did: with its exit code, or killed by the same signal. A
/// shell sees a child killed by signal N as status 128 + N, which is all it can tell; so a
/// command that *exits* 128 + N by itself is reported as killed by N.
pub fn mirrored_command(command: &str, line: &str) -> Option<String> {
    let command = crate::shell::quote(command).ok()?;
    let line = crate::shell::quote(line).ok()?;
    Some(format!(
        "/bin/sh -c {command}\n\
         s=$?\n\
         o=\"exit $s\"\n\
         n=\n\
         if [ \"$s\" -gt 128 ]; then n=$(kill -l \"$s\" 2>/dev/null) && o=\"killed by SIG$n\" || n=; fi\n\
         {{ umask 077; [ -d ~/.ferry ] || mkdir -p ~/.ferry; printf '%s%s\\n' {line} \"$o\" >> ~/.ferry/audit.log; }} </dev/null >/dev/null 2>&1\n\
         if [ -n \"$n\" ]; then ulimit -c 0 2>/dev/null; kill -s \"$n\" $$; fi\n\
         exit \"$s\"\n"
    ))
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn outcomes_come_back_in_item_order_whatever_finishes_first() {
        let limits = Limits::parallel(4);
        // The first item finishes last.
        let outcomes = ordered(
            vec![30u64, 20, 10, 0],
            limits,
            |i, ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                i
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcomes, vec![Ok(0), Ok(1), Ok(2), Ok(3)]);
    }

    #[tokio::test]
    async fn one_at_a_time_runs_one_after_another_in_order() {
        let trace = Arc::new(Mutex::new(Vec::new()));
        let outcomes = ordered(
            vec!["a", "b", "c"],
            Limits::parallel(1),
            |_, name| {
                let trace = Arc::clone(&trace);
                async move {
                    trace.lock().unwrap().push(format!("start {name}"));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    trace.lock().unwrap().push(format!("end {name}"));
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcomes.len(), 3);
        assert_eq!(
            *trace.lock().unwrap(),
            ["start a", "end a", "start b", "end b", "start c", "end c"].map(String::from)
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_its_items_error_not_a_missing_item() {
        let outcomes = ordered(
            vec![1, 2, 3],
            Limits::parallel(3),
            |_, n| async move {
                if n == 2 {
                    panic!("boom on {n}");
                }
                n * 10
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0], Ok(10));
        assert_eq!(outcomes[1], Err(Unfinished::Crashed("the task panicked: boom on 2".into())));
        assert_eq!(outcomes[2], Ok(30));
    }

    #[tokio::test]
    async fn a_cancel_skips_the_items_not_started_and_lets_the_running_one_finish() {
        let (cancel_tx, cancel) = watch::channel(false);
        let cancel_tx = Arc::new(cancel_tx);
        let skipped = Mutex::new(Vec::new());
        let limits = Limits { parallel: 1, cancel: Some(cancel) };
        let outcomes = ordered(
            vec!["first", "second", "third"],
            limits,
            |_, name| {
                let cancel_tx = Arc::clone(&cancel_tx);
                async move {
                    // Ctrl-C arrives while the first item runs.
                    let _ = cancel_tx.send(true);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    name
                }
            },
            |i, name| skipped.lock().unwrap().push((i, name)),
        )
        .await;
        assert_eq!(outcomes, vec![Ok("first"), Err(Unfinished::Skipped), Err(Unfinished::Skipped)]);
        assert_eq!(*skipped.lock().unwrap(), [(1, "second"), (2, "third")]);
    }

    fn local_inventory(names: &[&str]) -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        // The runner is one host: each local target lives in an environment of its own.
        let mut text = "[defaults]\nknown_hosts = \"known_hosts\"\n".to_string();
        for (n, name) in names.iter().enumerate() {
            text += &format!("\n[environments.e{n}]\ntargets = [\"{name}\"]\n");
            text += &format!("\n[targets.{name}]\nhost = \"127.0.0.1\"\ntransport = \"local\"\n");
        }
        let source = crate::diagnostic::SourceFile::new("fanout.toml", text);
        let inventory = Inventory::parse(source, dir.path()).unwrap();
        (dir, inventory)
    }

    #[tokio::test]
    async fn run_reports_every_target_in_inventory_order_through_local_hosts() {
        let (dir, inventory) = local_inventory(&["c", "a", "b"]);
        let targets: Vec<Target> = inventory.targets.clone();
        let work = Work {
            command: "sleep 0.05; echo hello; echo oops >&2; exit 3".into(),
            stdin: None,
            deadline: Some(Duration::from_secs(10)),
            mirror: None,
            secrets: Vec::new(),
        };
        let settings = Settings {
            parallel: 3,
            ssh: ssh::Options {
                connect_timeout: Duration::from_secs(1),
                known_hosts: Arc::new(crate::known_hosts::KnownHosts::parse(&dir.path().join("kh"), "")),
            },
        };
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = watch::channel(false);
        let results = run(Arc::new(inventory), targets, Arc::new(work), &settings, events, cancel).await;
        let names: Vec<&str> = results.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"], "inventory order");
        for r in &results {
            assert_eq!((r.status, r.exit.clone()), (Status::Failed, Some(ExitStatus::Code(3))), "{r:?}");
            assert!(r.tail.iter().any(|l| l.contains("hello")), "{r:?}");
        }
        let mut finished = 0;
        while let Ok(event) = received.try_recv() {
            finished += usize::from(matches!(event, Event::TargetFinished { .. }));
        }
        assert_eq!(finished, 3, "one target_finished event per target");
    }

    #[tokio::test]
    async fn run_after_a_cancel_skips_every_target_and_reports_each_one() {
        let (dir, inventory) = local_inventory(&["a", "b"]);
        let targets: Vec<Target> = inventory.targets.clone();
        let work =
            Work { command: "exit 0".into(), stdin: None, deadline: None, mirror: None, secrets: Vec::new() };
        let settings = Settings {
            parallel: 1,
            ssh: ssh::Options {
                connect_timeout: Duration::from_secs(1),
                known_hosts: Arc::new(crate::known_hosts::KnownHosts::parse(&dir.path().join("kh"), "")),
            },
        };
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = watch::channel(true);
        let results = run(Arc::new(inventory), targets, Arc::new(work), &settings, events, cancel).await;
        let got: Vec<(&str, Status)> = results.iter().map(|r| (r.target.as_str(), r.status)).collect();
        assert_eq!(got, [("a", Status::Skipped), ("b", Status::Skipped)]);
        assert!(results.iter().all(|r| r.error.as_deref() == Some("not started: interrupted")));
        let mut skipped = Vec::new();
        while let Ok(event) = received.try_recv() {
            if let Event::TargetFinished { target, status: Status::Skipped, .. } = event {
                skipped.push(target);
            }
        }
        assert_eq!(skipped, ["a", "b"], "each skip is reported once");
    }
}

#[cfg(test)]
mod mirror_tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Output, Stdio};

    use super::mirrored_command;

    const LINE: &str = "2026-12-04T17:00:00.000Z ferry run R by u@h: ";

    /// Runs the script as the target's `/bin/sh -c` would, with `home` as `$HOME`.
    fn run(command: &str, line: &str, home: &std::path::Path, stdin: &[u8]) -> Output {
        use std::io::Write;
        let script = mirrored_command(command, line).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn mirror_log(home: &std::path::Path) -> String {
        std::fs::read_to_string(home.join(".ferry/audit.log")).unwrap()
    }

    #[test]
    fn output_stdin_and_exit_code_are_the_commands_and_the_line_follows() {
        let home = tempfile::tempdir().unwrap();
        let out = run("read x; echo \"got $x\"; echo oops >&2; exit 3", LINE, home.path(), b"hello\n");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(mirror_log(home.path()), format!("{LINE}exit 3\n"));
        // A second run appends (the folder exists now).
        let out = run("true", LINE, home.path(), b"");
        assert_eq!((out.status.code(), out.stdout.len(), out.stderr.len()), (Some(0), 0, 0));
        assert_eq!(mirror_log(home.path()), format!("{LINE}exit 3\n{LINE}exit 0\n"));
    }

    #[test]
    fn a_command_killed_by_a_signal_ends_the_script_the_same_way() {
        let home = tempfile::tempdir().unwrap();
        let out = run("kill -9 $$", LINE, home.path(), b"");
        assert_eq!(out.status.signal(), Some(9), "{:?}", out.status);
        assert_eq!(mirror_log(home.path()), format!("{LINE}killed by SIGKILL\n"));
        let out = run("kill -TERM $$", LINE, home.path(), b"");
        assert_eq!(out.status.signal(), Some(15), "{:?}", out.status);
        assert!(mirror_log(home.path()).ends_with(&format!("{LINE}killed by SIGTERM\n")));
        // Above any signal number: an exit code.
        let out = run("exit 255", LINE, home.path(), b"");
        assert_eq!(out.status.code(), Some(255));
        assert!(mirror_log(home.path()).ends_with(&format!("{LINE}exit 255\n")));
    }

    #[test]
    fn the_command_means_what_it_means_alone_and_the_line_is_written_literally() {
        let home = tempfile::tempdir().unwrap();
        // `$0`, `$$`-style expansions, quotes and `exit` belong to the command's own shell.
        let command = "s=7; o=x; echo \"it's $s$o\" '$HOME' `echo b`; exit $s";
        let line = "T ferry run R by u: echo 'a' \"$(rm -rf ~)\" `x` \\n\nsecond line -> ";
        let out = run(command, line, home.path(), b"");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's 7x $HOME b\n");
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(mirror_log(home.path()), format!("{line}exit 7\n"));
    }

    #[test]
    fn an_unwritable_mirror_changes_nothing_the_command_shows() {
        let home = tempfile::tempdir().unwrap();
        // `.ferry` is a file, so the line cannot be written: no message, the same status.
        std::fs::write(home.path().join(".ferry"), "").unwrap();
        let out = run("echo hi; exit 4", LINE, home.path(), b"");
        assert_eq!((String::from_utf8_lossy(&out.stdout).as_ref(), out.stderr.len()), ("hi\n", 0));
        assert_eq!(out.status.code(), Some(4));
    }

    #[test]
    fn the_mirror_folder_and_log_are_created_private_to_the_user() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let out = run("true", LINE, home.path(), b"");
        assert_eq!(out.status.code(), Some(0));
        let mode = |p: &str| std::fs::metadata(home.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(".ferry"), mode(".ferry/audit.log")), (0o700, 0o600));
    }

    #[test]
    fn nul_bytes_cannot_be_mirrored() {
        assert_eq!(mirrored_command("echo \0", LINE), None);
        assert_eq!(mirrored_command("true", "a\0b"), None);
    }
}
