//! Stage 6 (the part shared by every command that acts on targets): run work on many targets.
//!
//! One connection per target for the whole run, at most `parallel` targets at once, each with
//! its own result: a target that cannot be reached fails alone. Ctrl-C stops *starting* targets;
//! those already running finish (or hit their deadline), and the run reports itself interrupted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::exec::ExitStatus;
use crate::host::Connection;
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
    let connection = match Connection::open(inventory, target, options).await {
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
    // A local target is the machine that holds the audit log itself: no mirror.
    let mirror = work.mirror.as_deref().filter(|_| matches!(connection, Connection::Ssh(_)));
    let mirrored = mirror.and_then(|prefix| {
        let line = format!("{} {prefix} -> ", crate::time::now_rfc3339());
        mirrored_command(&work.command, &line)
    });
    let command = mirrored.as_deref().unwrap_or(&work.command);
    let mut sink = LineSplitter::new(&target.name, events.clone());
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
        self::mirror(&connection, prefix, &result).await;
    }
    finished(events, &result);
    connection.close().await;
    result
}

/// Appends the target's audit mirror line. Best effort: the local log is the record.
async fn mirror(connection: &Connection, prefix: &str, result: &TargetResult) {
    let outcome = match (&result.exit, &result.error) {
        (Some(exit), _) => exit.to_string(),
        (None, Some(error)) => format!("error: {error}"),
        (None, None) => "unknown".to_string(),
    };
    write_mirror(connection, &result.target, &format!("{prefix} -> {outcome}")).await;
}

/// Appends `TIME text` to the target's `~/.ferry/audit.log` on a channel of its own (deploy
/// writes its line this way; run does when the command's own session could not).
/// Best effort, bounded by [`MIRROR_DEADLINE`]: the local log is the record.
pub async fn write_mirror(connection: &Connection, target: &str, text: &str) {
    let line = format!("{} {text}\n", crate::time::now_rfc3339());
    let mut sink = crate::exec::Discard;
    let command = "mkdir -p ~/.ferry && cat >> ~/.ferry/audit.log";
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
         {{ [ -d ~/.ferry ] || mkdir -p ~/.ferry; printf '%s%s\\n' {line} \"$o\" >> ~/.ferry/audit.log; }} </dev/null >/dev/null 2>&1\n\
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
    fn nul_bytes_cannot_be_mirrored() {
        assert_eq!(mirrored_command("echo \0", LINE), None);
        assert_eq!(mirrored_command("true", "a\0b"), None);
    }
}
