//! Deploy hooks (`[hooks]`): executables on the runner that `deploy`, `promote` and `rollback`
//! run around a rollout.
//!
//! Teams wire a deployment into the rest of their world (a change ticket, a chat message, a CDN
//! purge) with small scripts, as Kamal's hooks do. ferry runs them itself while the environment
//! lock is held (Kamal #1930 asks for exactly that), so what a hook checks or announces is about
//! this deployment, and no other run can start between the hook and the rollout.
//!
//! A hook gets only the facts [`environment`] lists: the process environment is cleared first,
//! so the runner's secrets (registry passwords, `WEB_DATABASE_URL`, a CI token) never reach a
//! script that did not ask for them; and its output is masked with the run's secrets before it is
//! shown or recorded. It runs in its own process group, which is killed when the hook outlives
//! its timeout or ferry stops waiting for it (a second Ctrl-C), so nothing it started is left
//! behind holding its output open.
//!
//! `pre_deploy` may refuse the deployment: any failure (non-zero exit, a signal, the timeout, an
//! executable that cannot start) is exit 4 before any target changes. `post_deploy` (after a
//! rollout in which every target succeeded) and `failed` (after one in which any did not) only
//! report: their failure is shown and recorded, and the deployment and its exit code stand.
//!
//! Not to be confused with an app's `post_deploy` key: that one is a templated shell script run
//! on each *target* before the switch, and its failure fails the target.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::diagnostic::Diagnostic;
use crate::exec::{OutputSink, Stream};
use crate::records::HookFinished;
use crate::report::{Event, Events, LineSplitter, Status};
use crate::secret::{Secret, mask};

/// How long a hook may run unless `[hooks] timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// After a hook exits, how long output that something it started still holds open is read.
const DRAIN: Duration = Duration::from_secs(1);

/// `PATH` for a hook when the runner has none (cron gives a short one; none at all is rare).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// Before the rollout (before any pull); its failure refuses the deployment.
    PreDeploy,
    /// After a rollout in which every target succeeded.
    PostDeploy,
    /// After a rollout in which a target failed (or the rollout was interrupted).
    Failed,
}

impl HookKind {
    /// The key in `[hooks]`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::PreDeploy => "pre_deploy",
            HookKind::PostDeploy => "post_deploy",
            HookKind::Failed => "failed",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rollout ended, as `FERRY_OUTCOME` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Every target runs the planned container.
    Succeeded,
    /// No target does.
    Failed,
    /// Some do, some do not (or were not started).
    Partial,
}

impl RunOutcome {
    /// The word hooks see.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Partial => "partial",
        }
    }

    /// The outcome of a rollout whose targets ended with `statuses`.
    pub fn of(statuses: impl IntoIterator<Item = Status>) -> RunOutcome {
        let (mut ok, mut other) = (0, 0);
        for status in statuses {
            if status == Status::Ok { ok += 1 } else { other += 1 }
        }
        match (ok, other) {
            (_, 0) => RunOutcome::Succeeded,
            (0, _) => RunOutcome::Failed,
            _ => RunOutcome::Partial,
        }
    }

    /// The hook that runs after a rollout with this outcome.
    pub fn hook(self) -> HookKind {
        if self == RunOutcome::Succeeded { HookKind::PostDeploy } else { HookKind::Failed }
    }
}

/// How a hook process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStatus {
    /// Exit code 0.
    Ok,
    /// A non-zero exit code, or killed by a signal.
    Failed,
    /// Still running at the timeout: killed with its process group.
    TimedOut,
    /// Could not be started (or its end could not be read).
    Error,
}

/// One configured hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// The path as the inventory writes it (for messages and records).
    pub shown: String,
    /// The executable (absolute; checked at load to be a file with an execute bit).
    pub path: PathBuf,
}

/// `[hooks]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hooks {
    /// Runs before the rollout.
    pub pre_deploy: Option<Hook>,
    /// Runs after a rollout that succeeded everywhere.
    pub post_deploy: Option<Hook>,
    /// Runs after a rollout that did not.
    pub failed: Option<Hook>,
    /// How long each may run.
    pub timeout: Duration,
    /// The folder hooks run in: the inventory's.
    pub dir: PathBuf,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            pre_deploy: None,
            post_deploy: None,
            failed: None,
            timeout: DEFAULT_TIMEOUT,
            dir: PathBuf::from("."),
        }
    }
}

impl Hooks {
    /// The hook of `kind`, when configured.
    pub fn get(&self, kind: HookKind) -> Option<&Hook> {
        match kind {
            HookKind::PreDeploy => self.pre_deploy.as_ref(),
            HookKind::PostDeploy => self.post_deploy.as_ref(),
            HookKind::Failed => self.failed.as_ref(),
        }
    }
}

/// What a hook is told about the deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// The tag.
    pub version: String,
    /// The image digest, when known (an app without a feed learns it during the rollout).
    pub digest: Option<String>,
    /// The run (and deployment) id.
    pub run: String,
    /// Who runs it, as the audit log describes them.
    pub actor: String,
    /// The deployment's targets, in order.
    pub targets: Vec<String>,
}

/// The whole environment of a hook: `PATH`, `HOME` and `LANG` from the runner (`lookup`), the
/// deployment's facts, and `FERRY_OUTCOME` after a rollout; nothing else, so no secret of the
/// runner reaches it.
pub fn environment(
    facts: &Facts,
    outcome: Option<RunOutcome>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let path = lookup("PATH").filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_PATH.into());
    let mut env = vec![("PATH".to_string(), path)];
    env.extend(["HOME", "LANG"].into_iter().filter_map(|k| lookup(k).map(|v| (k.to_string(), v))));
    let facts = [
        ("FERRY_APP", facts.app.clone()),
        ("FERRY_ENVIRONMENT", facts.environment.clone()),
        ("FERRY_VERSION", facts.version.clone()),
        ("FERRY_DIGEST", facts.digest.clone().unwrap_or_default()),
        ("FERRY_RUN", facts.run.clone()),
        ("FERRY_ACTOR", facts.actor.clone()),
        ("FERRY_TARGETS", facts.targets.join(",")),
    ];
    env.extend(facts.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(outcome) = outcome {
        env.push(("FERRY_OUTCOME".into(), outcome.as_str().into()));
    }
    env
}

/// Runs the hook of `kind`, if one is configured: its output streams as events, and its end is
/// sent as a `hook_finished` event (which the audit trail records) and returned. Never fails:
/// what went wrong is in the returned record.
pub async fn run(
    hooks: &Hooks,
    kind: HookKind,
    facts: &Facts,
    outcome: Option<RunOutcome>,
    events: &Events,
    secrets: &[Secret],
) -> Option<HookFinished> {
    let hook = hooks.get(kind)?;
    let env = environment(facts, outcome, &crate::planning::process_env);
    let _ = events.send(Event::HookStarted { hook: kind, path: hook.shown.clone() });
    let started = Instant::now();
    let mut splitter = LineSplitter::for_hook(kind, events.clone()).masking(secrets);
    let spawn = Spawn {
        program: hook.path.as_os_str(),
        args: &[],
        dir: Some(&hooks.dir),
        env: Some(&env),
        stdin: None,
        detached: false,
    };
    let ended = execute(&spawn, hooks.timeout, &mut splitter).await;
    splitter.flush();
    let (status, exit_code, signal, error) = match ended {
        Ended::Exited(0) => (HookStatus::Ok, Some(0), None, None),
        Ended::Exited(code) => (HookStatus::Failed, Some(code), None, Some(format!("exited {code}"))),
        Ended::Signal(name) => {
            let error = format!("killed by SIG{name}");
            (HookStatus::Failed, None, Some(name), Some(error))
        }
        Ended::TimedOut(limit) => {
            let error = format!(
                "still running after {}: killed with its process group",
                crate::duration::format(limit)
            );
            (HookStatus::TimedOut, None, None, Some(error))
        }
        Ended::Error(why) => (HookStatus::Error, None, None, Some(why)),
    };
    let finished = HookFinished {
        hook: kind,
        path: hook.shown.clone(),
        outcome,
        status,
        exit_code,
        signal,
        error: error.map(|e| mask(&e, secrets)),
        ms: crate::fanout::millis(started.elapsed()),
        tail: splitter.tail.iter().cloned().collect(),
    };
    let _ = events.send(Event::HookFinished(finished.clone()));
    Some(finished)
}

/// The refusal of a deployment whose `pre_deploy` hook failed: what it said, its last lines.
pub fn refusal(finished: &HookFinished) -> Diagnostic {
    let why = finished.error.as_deref().unwrap_or("failed");
    let mut message = format!(
        "{} hook {} {why}: the deployment is refused, no target was changed",
        finished.hook, finished.path
    );
    message += &tail_text(finished);
    Diagnostic::new(message.trim_end()).help(
        "fix what the hook reports (or the hook) and deploy again; its output is in the audit log (`hook_finished`)",
    )
}

/// What the summary says about a `post_deploy` or `failed` hook that failed (nothing when it
/// did not): the deployment stands.
pub fn report(finished: &HookFinished) -> String {
    let Some(why) = finished.error.as_deref().filter(|_| finished.status != HookStatus::Ok) else {
        return String::new();
    };
    format!(
        "\n{} hook {} {why} (recorded; the deployment and its exit code stand){}",
        finished.hook,
        finished.path,
        tail_text(finished)
    )
}

/// A newline, then the last lines of output, one `  | line` each.
fn tail_text(finished: &HookFinished) -> String {
    let mut text = "\n".to_string();
    for line in &finished.tail {
        text += &format!("  | {line}\n");
    }
    text
}

/// How a process started by [`execute`] ended.
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal (its name, without `SIG`) killed it.
    Signal(String),
    /// It outlived the limit: its process group was killed.
    TimedOut(Duration),
    /// It could not be started, or its end could not be read.
    Error(String),
}

/// What [`execute`] starts: a hook, a secret `command` or a Docker credential helper
/// (src/secret_command.rs), so all of them share one read loop, one timeout and one kill.
pub(crate) struct Spawn<'a> {
    /// The executable: a path, or a name looked up in `PATH`.
    pub program: &'a std::ffi::OsStr,
    /// Its arguments.
    pub args: &'a [String],
    /// Its working directory (`None`: ferry's own).
    pub dir: Option<&'a Path>,
    /// Exactly these variables (`None`: ferry's environment, passed through).
    pub env: Option<&'a [(String, String)]>,
    /// Bytes written to its stdin, which is then closed (`None`: stdin is /dev/null).
    pub stdin: Option<&'a [u8]>,
    /// In a session of its own, without a controlling terminal (secret commands, credential
    /// helpers): one that would prompt fails at once instead of being stopped (SIGTTIN) in a
    /// background process group until its timeout.
    pub detached: bool,
}

/// Starts `command` in a new session (`setsid`): no controlling terminal, so a program that
/// opens `/dev/tty` to prompt gets an error; the session's process group id is the child's pid,
/// so the group kill at the timeout reaches it and what it started, as with `process_group(0)`.
#[allow(unsafe_code)]
fn detach(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes the setsid
    // system call, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

/// Runs `spawn`, output to `sink`, for at most `limit`; in its own process group, killed with
/// everything it started at the limit or when this future is dropped.
pub(crate) async fn execute(spawn: &Spawn<'_>, limit: Duration, sink: &mut dyn OutputSink) -> Ended {
    let mut command = tokio::process::Command::new(spawn.program);
    command.args(spawn.args);
    if let Some(env) = spawn.env {
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(dir) = spawn.dir {
        command.current_dir(dir);
    }
    command
        .stdin(if spawn.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if spawn.detached {
        detach(&mut command);
    } else {
        // Its own group: a terminal's Ctrl-C goes to ferry, which decides; and the whole group
        // can be killed at the timeout.
        command.process_group(0);
    }
    // "Text file busy" (ETXTBSY) is Linux's answer when a script written a moment ago is still
    // open for writing in a process that forked meanwhile and has not exec'd yet (any
    // multi-threaded writer: a CI step that generates the hook, or ferry's own tests). It is
    // transient, so a few short retries; any other error is final.
    let mut tries = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Ended::Error(format!("cannot be started: {e}")),
        }
    };
    // Killed, with all it started, if this future is dropped before the hook ends.
    let mut group = Group(child.id());
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Ended::Error("cannot be started: no output pipes".into());
    };
    let mut input = child.stdin.take().zip(spawn.stdin);
    let run = async {
        // Written while the output is read: a program that answers before it has read all of
        // its input cannot block on a full pipe.
        let feed = async {
            if let Some((mut pipe, bytes)) = input.take() {
                use tokio::io::AsyncWriteExt;
                // A program that exits without reading its input is its own business.
                let _ = pipe.write_all(bytes).await;
            }
        };
        let (status, ()) = tokio::join!(read_all(&mut child, &mut out, &mut err, sink), feed);
        status
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Some(Ok(status))) => {
            // It ended by itself: what it left running in the background is its business.
            group.disarm();
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signal(crate::host::signal_name(sig)),
                (None, None) => Ended::Error("ended without an exit status".into()),
            }
        }
        Ok(Some(Err(e))) => Ended::Error(format!("its end could not be read: {e}")),
        Ok(None) => Ended::Error("ended without an exit status".into()),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            Ended::TimedOut(limit)
        }
    }
}

/// Reads a started process's output into `sink` until it exited and its pipes closed (or
/// [`DRAIN`] after it exited, when something it started holds them open).
async fn read_all(
    child: &mut tokio::process::Child,
    out: &mut tokio::process::ChildStdout,
    err: &mut tokio::process::ChildStderr,
    sink: &mut dyn OutputSink,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    let mut status = None;
    let mut drain_until = None;
    while out_open || err_open || status.is_none() {
        let drained = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            n = out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => sink.output(Stream::Stdout, &out_buf[..n]),
            },
            n = err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => sink.output(Stream::Stderr, &err_buf[..n]),
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            // Something the hook left running still holds its output: the hook is done.
            () = drained, if drain_until.is_some() => break,
        }
        sink.ready().await;
    }
    status
}

/// A hook's process group, killed (SIGKILL) on [`Group::kill`] or on drop unless disarmed.
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        // Never 0 or 1: kill(-1) would signal every process ferry may signal.
        let pid = self.0.take().and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1);
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            app: "web".into(),
            environment: "prod".into(),
            version: "1.4.2".into(),
            digest: Some("sha256:abc".into()),
            run: "0193-run".into(),
            actor: "ana@ci (github-actions)".into(),
            targets: vec!["prod-1".into(), "prod-2".into()],
        }
    }

    #[test]
    fn a_hook_sees_the_facts_and_path_home_lang_and_nothing_else_of_the_runner() {
        let runner = |k: &str| match k {
            "PATH" => Some("/opt/bin:/usr/bin".to_string()),
            "HOME" => Some("/home/ana".to_string()),
            "LANG" => Some("C.UTF-8".to_string()),
            "WEB_DATABASE_URL" | "REGISTRY_PASSWORD" | "GITHUB_TOKEN" => Some("s3cret".to_string()),
            _ => None,
        };
        let env = environment(&facts(), Some(RunOutcome::Partial), &runner);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "LANG",
                "FERRY_APP",
                "FERRY_ENVIRONMENT",
                "FERRY_VERSION",
                "FERRY_DIGEST",
                "FERRY_RUN",
                "FERRY_ACTOR",
                "FERRY_TARGETS",
                "FERRY_OUTCOME"
            ]
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get("FERRY_TARGETS"), Some("prod-1,prod-2"));
        assert_eq!(get("FERRY_DIGEST"), Some("sha256:abc"));
        assert_eq!(get("FERRY_OUTCOME"), Some("partial"));
        assert!(env.iter().all(|(_, v)| v != "s3cret"), "no runner secret: {env:?}");
    }

    #[test]
    fn before_the_rollout_there_is_no_outcome_and_an_unknown_digest_is_empty() {
        let facts = Facts { digest: None, ..facts() };
        let env = environment(&facts, None, &|_| None);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("FERRY_OUTCOME"), None);
        assert_eq!(get("FERRY_DIGEST"), Some(""));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH), "a runner without PATH still finds sh");
        assert_eq!(get("HOME"), None);
    }

    #[test]
    fn outcomes_follow_the_targets_and_choose_the_hook() {
        use Status::*;
        assert_eq!(RunOutcome::of([Ok, Ok]), RunOutcome::Succeeded);
        assert_eq!(RunOutcome::of([Failed, Unreachable]), RunOutcome::Failed);
        assert_eq!(RunOutcome::of([Ok, Skipped]), RunOutcome::Partial);
        assert_eq!(RunOutcome::Succeeded.hook(), HookKind::PostDeploy);
        assert_eq!(RunOutcome::Partial.hook(), HookKind::Failed);
    }

    fn script(dir: &Path, name: &str, body: &str) -> Hook {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hook { shown: format!("hooks/{name}"), path }
    }

    async fn ran(hooks: &Hooks, kind: HookKind, secrets: &[Secret]) -> (HookFinished, Vec<Event>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let finished = run(hooks, kind, &facts(), None, &tx, secrets).await.unwrap();
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        (finished, events)
    }

    #[tokio::test]
    async fn output_streams_as_events_and_the_kept_tail_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let pre = script(dir.path(), "pre", "echo start; echo \"token pw-9\" >&2; seq 1 30; exit 3");
        let hooks = Hooks { pre_deploy: Some(pre), dir: dir.path().into(), ..Hooks::default() };
        let (finished, events) = ran(&hooks, HookKind::PreDeploy, &[Secret::new("pw-9")]).await;
        assert_eq!((finished.status, finished.exit_code), (HookStatus::Failed, Some(3)));
        assert_eq!(finished.error.as_deref(), Some("exited 3"));
        assert_eq!(finished.tail.len(), 20, "the last 20 lines");
        assert_eq!(finished.tail.last().map(String::as_str), Some("30"));
        let lines: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::HookOutput { hook: HookKind::PreDeploy, line, .. } => Some(line.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(lines.len(), 32, "every line streams");
        assert!(finished.tail.iter().all(|l| !l.contains("pw-9")));
        let hook = script(dir.path(), "pre", "echo \"token pw-9\"; exit 1");
        let hooks = Hooks { pre_deploy: Some(hook), ..hooks };
        let (finished, _) = ran(&hooks, HookKind::PreDeploy, &[Secret::new("pw-9")]).await;
        assert_eq!(finished.tail, ["token ***"], "masked before it is shown or recorded");
        let text = refusal(&finished).to_string();
        assert!(
            text.starts_with("error: pre_deploy hook hooks/pre exited 1: the deployment is refused"),
            "{text}"
        );
        assert!(text.contains("\n  | token ***\n") && !text.contains("pw-9"), "{text}");
    }

    #[tokio::test]
    async fn the_environment_is_cleared_before_the_facts_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "post", "env");
        let hooks = Hooks { post_deploy: Some(hook), dir: dir.path().into(), ..Hooks::default() };
        let (finished, events) = ran(&hooks, HookKind::PostDeploy, &[]).await;
        assert_eq!(finished.status, HookStatus::Ok);
        let mut names: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::HookOutput { line, .. } => line.split('=').next().map(str::to_string),
                _ => None,
            })
            .filter(|n| n != "PWD" && n != "SHLVL" && n != "_")
            .collect();
        names.sort();
        let mut expected: Vec<String> =
            environment(&facts(), None, &crate::planning::process_env).into_iter().map(|(k, _)| k).collect();
        expected.sort();
        assert_eq!(names, expected, "the hook's whole environment (sh adds PWD, SHLVL, _)");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        let body = format!("sleep 300 & echo $! > {}; echo started; wait", marker.display());
        let hook = script(dir.path(), "pre", &body);
        let hooks = Hooks {
            pre_deploy: Some(hook),
            dir: dir.path().into(),
            timeout: Duration::from_millis(500),
            ..Hooks::default()
        };
        let started = Instant::now();
        let (finished, _) = ran(&hooks, HookKind::PreDeploy, &[]).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(finished.status, HookStatus::TimedOut);
        assert_eq!(
            finished.error.as_deref(),
            Some("still running after 500ms: killed with its process group")
        );
        assert_eq!(finished.tail, ["started"]);
        let pid = std::fs::read_to_string(&marker).unwrap();
        // Reaped by init once killed; give the kernel a moment.
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
                Err(_) => true,
                Ok(stat) => stat.contains(") Z "),
            }
        });
        assert!(gone, "the hook's background child {pid} still runs");
    }

    #[tokio::test]
    async fn a_hook_that_cannot_start_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let hook = Hook { shown: "hooks/gone".into(), path: dir.path().join("gone") };
        let hooks = Hooks { failed: Some(hook), dir: dir.path().into(), ..Hooks::default() };
        let (finished, _) = ran(&hooks, HookKind::Failed, &[]).await;
        assert_eq!(finished.status, HookStatus::Error);
        assert!(finished.error.as_deref().unwrap_or_default().starts_with("cannot be started: "));
        assert!(
            report(&finished).contains("failed hook hooks/gone cannot be started"),
            "{}",
            report(&finished)
        );
        let none = Hooks::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        assert_eq!(run(&none, HookKind::PreDeploy, &facts(), None, &tx, &[]).await, None);
    }

    proptest::proptest! {
        /// Whatever a `[hooks]` key holds, loading the inventory reports it; it never panics.
        #[test]
        fn any_hook_value_loads_or_is_reported(path in "\\PC{0,24}", timeout in "\\PC{0,8}") {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "[hooks]\npre_deploy = {}\ntimeout = {}\n",
                toml::Value::String(path),
                toml::Value::String(timeout)
            );
            let source = crate::diagnostic::SourceFile::new("ferry.toml", text);
            let _ = crate::inventory::Inventory::parse(source, dir.path());
        }
    }
}
