//! Environment locks: two runs never change one environment at once.
//!
//! A run takes two kinds of lock. The *local* one is an exclusive `flock` on
//! `STATE_DIR/locks/ENV.lock`: it stops two processes sharing a state folder, and the kernel
//! drops it when the process dies, even by `kill -9`. The *remote* one is an atomic
//! `mkdir ~/.ferry/locks/ENV` on every target of the environment, holding an `info` file with the
//! holder, the run id, since when, until when and why: it stops a cron job and a CI job on two
//! different machines. Targets are locked one at a time in inventory order, so two contenders
//! meet on the same first target and one of them loses cleanly (releasing what it took).
//!
//! A remote lock past its expiry may be taken over, and `--force` breaks any lock; both are
//! reported to the caller, which records them in the audit log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::exec::{Capture, ExecError};
use crate::host::{Connected, Host, Opened};

/// Who holds a lock and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// `user@host (via job)`.
    pub holder: String,
    /// The run or deployment id.
    pub run: String,
    /// Since, ms since the epoch.
    pub since_ms: i64,
    /// Expiry, ms since the epoch.
    pub expires_ms: i64,
    /// Why (the operator's `--message`, or the command).
    pub message: String,
}

impl LockInfo {
    /// `key=value` lines, as stored on targets.
    pub fn to_text(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        format!(
            "holder={}\nrun={}\nsince={}\nexpires={}\nmessage={}\n",
            one_line(&self.holder),
            one_line(&self.run),
            crate::time::format_ms(self.since_ms),
            crate::time::format_ms(self.expires_ms),
            one_line(&self.message)
        )
    }

    /// Reads [`LockInfo::to_text`]'s format; `None` when it is not one.
    pub fn parse(text: &str) -> Option<LockInfo> {
        let get =
            |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string);
        Some(LockInfo {
            holder: get("holder")?,
            run: get("run")?,
            since_ms: crate::time::parse_ms(&get("since")?)?,
            expires_ms: crate::time::parse_ms(&get("expires")?)?,
            message: get("message").unwrap_or_default(),
        })
    }

    /// Whether the expiry has passed.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }

    /// `root@ci (github-actions) since … until …: message (run …)`, for messages.
    pub fn describe(&self) -> String {
        let message = if self.message.is_empty() { String::new() } else { format!(": {}", self.message) };
        format!(
            "{} since {} until {}{message} (run {})",
            self.holder,
            crate::time::format_ms(self.since_ms),
            crate::time::format_ms(self.expires_ms),
            self.run
        )
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it (and it has not expired, or `--force` was not given).
    #[error(
        "environment {environment} is locked on {target} by {}; wait for it with --lock-wait DURATION, \
         or, if that run is dead, break it with `ferry lock release --env {environment} --force`",
        info.as_ref().map_or_else(|| "another run (no holder recorded yet)".to_string(), |i| i.describe())
    )]
    Held {
        /// The environment.
        environment: String,
        /// Where it was found held (`local` for the state folder's lock).
        target: String,
        /// The holder, when readable (boxed: errors stay small).
        info: Option<Box<LockInfo>>,
    },
    /// A target could not be asked.
    #[error("cannot lock environment {environment} on {target}: {message}")]
    Unreachable {
        /// The environment.
        environment: String,
        /// The target.
        target: String,
        /// Why.
        message: String,
    },
    /// The local lock file could not be used.
    #[error("local lock {}: {source}", path.display())]
    Local {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The local lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LocalLock {
    file: File,
}

impl LocalLock {
    /// Rewrites the holder's record in the file (a renewal); the lock itself stays held.
    pub fn rewrite(&self, info: &LockInfo) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.set_len(0)?;
        self.file.write_all_at(info.to_text().as_bytes(), 0)
    }
}

/// Takes the state folder's lock for `environment`, recording `info` in it.
pub fn lock_local(state_dir: &Path, environment: &str, info: &LockInfo) -> Result<LocalLock, LockError> {
    let path = state_dir.join("locks").join(format!("{environment}.lock"));
    let local = |source| LockError::Local { path: path.clone(), source };
    std::fs::create_dir_all(path.parent().unwrap_or(state_dir)).map_err(local)?;
    let mut file =
        OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(local)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(local)?;
            file.write_all(info.to_text().as_bytes()).map_err(local)?;
            Ok(LocalLock { file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(LockError::Held {
                environment: environment.to_string(),
                target: "local".into(),
                info: LockInfo::parse(&text).map(Box::new),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(local(e)),
    }
}

/// What happened on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The lock was free.
    Fresh,
    /// An expired lock was taken over.
    Expired(Option<LockInfo>),
    /// A live lock was broken with `--force`.
    Forced(Option<LockInfo>),
}

fn dir(environment: &str) -> String {
    // Environment names are [A-Za-z0-9_.-] (the inventory checks it): safe in a path.
    format!(".ferry/locks/{environment}")
}

async fn sh(host: &dyn Host, script: &str, stdin: Option<&[u8]>) -> Result<String, ExecError> {
    let mut out = Capture::default();
    let status = host.exec(script, stdin, Some(std::time::Duration::from_secs(30)), &mut out).await?;
    if !status.success() {
        return Err(ExecError::Lost(format!("lock command ended with {status}")));
    }
    Ok(out.text())
}

/// All connections, or the first target that could not be reached: a lock must cover every
/// target of the environment.
pub fn all_connected(environment: &str, connections: Vec<Opened>) -> Result<Vec<Connected>, LockError> {
    connections
        .into_iter()
        .map(|(name, c)| {
            c.map(|c| (name.clone(), c)).map_err(|e| LockError::Unreachable {
                environment: environment.to_string(),
                target: name,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Reads the lock of `environment` on a target (`None`: free).
pub async fn read_remote(host: &dyn Host, environment: &str) -> Result<Option<Option<LockInfo>>, ExecError> {
    let d = dir(environment);
    let out = sh(host, &format!("if [ -d {d} ]; then echo held; cat {d}/info 2>/dev/null; fi"), None).await?;
    Ok(out.strip_prefix("held\n").map(LockInfo::parse))
}

/// Takes the lock on one target: free → taken; held and expired (or `force`) → taken over.
pub async fn lock_remote(
    host: &dyn Host,
    target: &str,
    environment: &str,
    info: &LockInfo,
    force: bool,
) -> Result<Taken, LockError> {
    let d = dir(environment);
    let unreachable = |e: ExecError| LockError::Unreachable {
        environment: environment.to_string(),
        target: target.to_string(),
        message: e.to_string(),
    };
    let acquire = format!(
        "mkdir -p .ferry/locks && if mkdir {d} 2>/dev/null; then cat > {d}/info && echo acquired; else echo held; cat {d}/info 2>/dev/null; fi"
    );
    let text = info.to_text();
    let out = sh(host, &acquire, Some(text.as_bytes())).await.map_err(unreachable)?;
    if out.starts_with("acquired") {
        return Ok(Taken::Fresh);
    }
    let holder = LockInfo::parse(out.strip_prefix("held\n").unwrap_or_default());
    let expired = holder.as_ref().is_some_and(|h| h.expired(crate::time::now_ms()));
    if !expired && !force {
        return Err(LockError::Held {
            environment: environment.to_string(),
            target: target.to_string(),
            info: holder.map(Box::new),
        });
    }
    // Take over: remove the stale lock only if it is still the one we read, then take it anew.
    let previous_run = holder.as_ref().map_or(String::new(), |h| h.run.clone());
    let takeover = format!(
        "if [ \"$(sed -n 's/^run=//p' {d}/info 2>/dev/null)\" = {} ]; then rm -rf {d}; fi; \
         if mkdir {d} 2>/dev/null; then cat > {d}/info && echo acquired; else echo held; cat {d}/info 2>/dev/null; fi",
        crate::shell::quote(&previous_run).unwrap_or_default()
    );
    let out = sh(host, &takeover, Some(text.as_bytes())).await.map_err(unreachable)?;
    if out.starts_with("acquired") {
        Ok(if expired { Taken::Expired(holder) } else { Taken::Forced(holder) })
    } else {
        let info = LockInfo::parse(out.strip_prefix("held\n").unwrap_or_default()).map(Box::new);
        Err(LockError::Held { environment: environment.to_string(), target: target.to_string(), info })
    }
}

/// Releases the lock on one target if `run` holds it (or any lock, with `force`).
pub async fn unlock_remote(host: &dyn Host, environment: &str, run: Option<&str>) -> Result<bool, ExecError> {
    let d = dir(environment);
    let script = match run {
        Some(run) => format!(
            "if [ -d {d} ] && [ \"$(sed -n 's/^run=//p' {d}/info 2>/dev/null)\" = {} ]; then rm -rf {d}; echo released; fi",
            crate::shell::quote(run).unwrap_or_default()
        ),
        None => format!("if [ -d {d} ]; then rm -rf {d}; echo released; fi"),
    };
    Ok(sh(host, &script, None).await?.starts_with("released"))
}

/// How renewing the lock on one target went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The lock names this run and now has the later expiry.
    Renewed,
    /// The lock no longer names this run (it was broken or taken over): not touched.
    Lost,
    /// The target could not be asked.
    Unreachable(String),
}

/// Rewrites the lock info of `environment` on a target with `info`, only if the lock there
/// still names `info.run`. The new info is written aside and moved in, so a reader never sees
/// half of it.
pub async fn renew_remote(host: &dyn Host, environment: &str, info: &LockInfo) -> Result<bool, ExecError> {
    let d = dir(environment);
    let script = format!(
        "if [ -d {d} ] && [ \"$(sed -n 's/^run=//p' {d}/info 2>/dev/null)\" = {run} ]; then \
         cat > {d}/info.new && mv -f {d}/info.new {d}/info && echo renewed; fi",
        run = crate::shell::quote(&info.run).unwrap_or_default()
    );
    Ok(sh(host, &script, Some(info.to_text().as_bytes())).await?.starts_with("renewed"))
}

/// An environment lock held by this process: the local lock and the targets' locks.
pub struct EnvironmentLock {
    /// Run id written into the targets' lock info.
    pub run: String,
    environment: String,
    /// What the lock says about its holder (renewals rewrite it with a later expiry).
    info: LockInfo,
    local: Option<Box<dyn crate::store::Lease>>,
    connections: Vec<Connected>,
    /// Targets where an expired (`Expired`) or live (`Forced`) lock was taken over.
    pub taken_over: Vec<(String, Taken)>,
}

/// Takes `environment`'s lock: the runner-side lease (when a `store` is given) and one on each
/// of `connections` in order; all or nothing. With `wait`, retries until it is free or `wait`
/// ends.
pub async fn lock_environment(
    store: Option<&dyn crate::store::Store>,
    environment: &str,
    info: &LockInfo,
    connections: Vec<Connected>,
    force: bool,
    wait: Option<std::time::Duration>,
) -> Result<EnvironmentLock, LockError> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        match try_lock_environment(store, environment, info, &connections, force).await {
            Ok((local, taken_over)) => {
                return Ok(EnvironmentLock {
                    run: info.run.clone(),
                    environment: environment.to_string(),
                    info: info.clone(),
                    local,
                    connections,
                    taken_over,
                });
            }
            Err(e @ LockError::Held { .. }) if deadline.is_some_and(|d| tokio::time::Instant::now() < d) => {
                tracing::debug!(error = %e, "lock busy, waiting");
                // A little jitter, so two waiters do not retry in lockstep forever.
                let jitter = u64::from(uuid::Uuid::now_v7().as_bytes()[15]) * 4;
                tokio::time::sleep(std::time::Duration::from_millis(750 + jitter)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn try_lock_environment(
    store: Option<&dyn crate::store::Store>,
    environment: &str,
    info: &LockInfo,
    connections: &[Connected],
    force: bool,
) -> Result<(Option<Box<dyn crate::store::Lease>>, Vec<(String, Taken)>), LockError> {
    let local = match store {
        Some(store) => Some(store.lease(environment, info)?),
        None => None,
    };
    let mut taken: Vec<(String, Taken)> = Vec::new();
    for (target, host) in connections {
        match lock_remote(&**host, target, environment, info, force).await {
            Ok(t) => taken.push((target.clone(), t)),
            Err(e) => {
                for (name, _) in &taken {
                    if let Some((_, c)) = connections.iter().find(|(n, _)| n == name) {
                        let _ = unlock_remote(&**c, environment, Some(&info.run)).await;
                    }
                }
                return Err(e);
            }
        }
    }
    let taken_over = taken.into_iter().filter(|(_, t)| *t != Taken::Fresh).collect();
    Ok((local, taken_over))
}

impl EnvironmentLock {
    /// The lock's open connection to `target`, for the work done under the lock: a deployment
    /// uses one connection per target for locking and deploying.
    pub fn connection(&self, target: &str) -> Option<Arc<dyn Host>> {
        self.connections.iter().find(|(n, _)| n == target).map(|(_, c)| Arc::clone(c))
    }

    /// Moves the lock's expiry to `expires_ms` (ms since the epoch) on every target where the
    /// lock still names this run, and in the local lock; one answer per target, in order (the
    /// local lock, when there is one, answers as `local`, first). A long run renews its lock
    /// before it expires, so that no one takes it over as stale while the run still works.
    pub async fn renew(&self, expires_ms: i64) -> Vec<(String, Renewal)> {
        let info = LockInfo { expires_ms, ..self.info.clone() };
        let mut out = Vec::new();
        if let Some(local) = &self.local {
            let renewal = match local.rewrite(&info) {
                Ok(()) => Renewal::Renewed,
                Err(e) => Renewal::Unreachable(e.to_string()),
            };
            out.push(("local".to_string(), renewal));
        }
        let names: Vec<String> = self.connections.iter().map(|(n, _)| n.clone()).collect();
        let targets = self.connections.iter().map(|(_, c)| Arc::clone(c)).collect();
        let (environment, info) = (Arc::new(self.environment.clone()), Arc::new(info));
        let answers = crate::fanout::ordered(
            targets,
            crate::fanout::Limits::parallel(names.len()),
            |_, host| {
                let (environment, info) = (Arc::clone(&environment), Arc::clone(&info));
                async move { renew_remote(&*host, &environment, &info).await }
            },
            |_, _| {},
        )
        .await;
        for (name, answer) in names.into_iter().zip(answers) {
            let renewal = match answer {
                Ok(Ok(true)) => Renewal::Renewed,
                Ok(Ok(false)) => Renewal::Lost,
                Ok(Err(e)) => Renewal::Unreachable(e.to_string()),
                Err(e) => Renewal::Unreachable(e.to_string()),
            };
            out.push((name, renewal));
        }
        out
    }

    /// Releases the targets' locks (those this run holds) and the local lock; closes the
    /// connections. Returns the targets whose lock could not be removed.
    pub async fn release(self) -> Vec<String> {
        let mut failed = Vec::new();
        for (target, host) in self.connections {
            if !matches!(unlock_remote(&*host, &self.environment, Some(&self.run)).await, Ok(true)) {
                failed.push(target);
            }
            // Closed politely when the work has let go of it; else dropping it closes it.
            if Arc::strong_count(&host) == 1 {
                host.close().await;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file store in a test folder (the runner-side lease lives there).
    fn files(dir: &tempfile::TempDir) -> crate::store::FileStore {
        let actor = crate::audit::Actor { user: "t".into(), host: "h".into(), via: "test".into(), job: None };
        crate::store::FileStore::new(dir.path(), actor)
    }

    #[test]
    fn info_round_trips_and_expires() {
        let info = LockInfo {
            holder: "root@ci (cron)".into(),
            run: "r1".into(),
            since_ms: 1_796_118_600_000,
            expires_ms: 1_796_118_660_000,
            message: "deploy\nweb".into(),
        };
        let back = LockInfo::parse(&info.to_text()).unwrap();
        assert_eq!(back.message, "deploy web", "one line");
        assert_eq!(
            (back.holder.as_str(), back.run.as_str(), back.expires_ms),
            ("root@ci (cron)", "r1", info.expires_ms)
        );
        assert!(!back.expired(info.expires_ms - 1));
        assert!(back.expired(info.expires_ms));
        assert_eq!(LockInfo::parse("garbage"), None);
    }

    #[test]
    fn local_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let info =
            LockInfo { holder: "a".into(), run: "r".into(), since_ms: 0, expires_ms: 1, message: "m".into() };
        let first = lock_local(dir.path(), "prod", &info).unwrap();
        let second = lock_local(dir.path(), "prod", &info);
        assert!(matches!(second, Err(LockError::Held { ref target, .. }) if target == "local"), "{second:?}");
        drop(first);
        assert!(lock_local(dir.path(), "prod", &info).is_ok());
    }

    use crate::host::fake::{FakeHost, Reply};

    const ACQUIRE: &str = "mkdir -p .ferry/locks && if mkdir";
    const TAKEOVER: &str = "then rm -rf .ferry/locks/dev; fi; if mkdir";
    const RELEASE: &str = "echo released";
    const RENEW: &str = "echo renewed";

    fn info(run: &str, expires_ms: i64) -> LockInfo {
        LockInfo {
            holder: "ci@runner".into(),
            run: run.into(),
            since_ms: 1_796_118_600_000,
            expires_ms,
            message: "deploy web".into(),
        }
    }

    fn in_an_hour() -> i64 {
        crate::time::now_ms() + 3_600_000
    }

    fn held_by(other: &LockInfo) -> Reply {
        Reply::ok(&format!("held\n{}", other.to_text()))
    }

    fn connected(hosts: &[Arc<FakeHost>]) -> Vec<Connected> {
        hosts.iter().map(|h| (h.name().to_string(), Arc::clone(h) as Arc<dyn Host>)).collect()
    }

    #[tokio::test]
    async fn a_free_lock_is_taken_with_the_holders_info_on_stdin() {
        let host = FakeHost::new("t1").on(ACQUIRE, Reply::ok("acquired\n"));
        let mine = info("r1", in_an_hour());
        assert_eq!(lock_remote(&host, "t1", "dev", &mine, false).await.unwrap(), Taken::Fresh);
        let calls = host.calls();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].command.contains("mkdir .ferry/locks/dev 2>/dev/null"), "{}", calls[0].command);
        assert_eq!(calls[0].stdin.as_deref(), Some(mine.to_text().as_bytes()));
    }

    #[tokio::test]
    async fn an_expired_lock_is_taken_over_only_if_it_is_still_the_one_read() {
        let stale = info("old-run", crate::time::now_ms() - 1_000);
        let host = FakeHost::new("t1").on(ACQUIRE, held_by(&stale)).on(TAKEOVER, Reply::ok("acquired\n"));
        let taken = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), false).await.unwrap();
        assert_eq!(taken, Taken::Expired(Some(stale)));
        let takeover = &host.ran(TAKEOVER)[0];
        assert!(takeover.contains("= old-run ]; then rm -rf .ferry/locks/dev"), "{takeover}");
    }

    #[tokio::test]
    async fn a_live_lock_is_refused_unless_forced() {
        let live = info("other-run", in_an_hour());
        let host = FakeHost::new("t1").on(ACQUIRE, held_by(&live)).on(TAKEOVER, Reply::ok("acquired\n"));
        let refused = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), false).await;
        assert!(
            matches!(&refused, Err(LockError::Held { target, info: Some(i), .. }) if target == "t1" && i.run == "other-run"),
            "{refused:?}"
        );
        assert!(host.ran(TAKEOVER).is_empty(), "a live lock is not touched");
        let forced = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), true).await.unwrap();
        assert_eq!(forced, Taken::Forced(Some(live)));
    }

    #[tokio::test]
    async fn a_lock_refused_on_the_third_of_five_targets_is_released_on_the_first_two_only() {
        let live = info("other-run", in_an_hour());
        let hosts: Vec<Arc<FakeHost>> = (1..=5)
            .map(|n| {
                let acquire = if n == 3 { held_by(&live) } else { Reply::ok("acquired\n") };
                Arc::new(
                    FakeHost::new(&format!("t{n}")).on(ACQUIRE, acquire).on(RELEASE, Reply::ok("released\n")),
                )
            })
            .collect();
        let mine = info("r1", in_an_hour());
        let result = lock_environment(None, "dev", &mine, connected(&hosts), false, None).await;
        assert!(
            matches!(&result, Err(LockError::Held { target, .. }) if target == "t3"),
            "{:?}",
            result.err()
        );
        let released: Vec<usize> = hosts.iter().map(|h| h.ran(RELEASE).len()).collect();
        assert_eq!(released, [1, 1, 0, 0, 0], "released on exactly t1 and t2");
        for host in &hosts[..2] {
            assert!(
                host.ran(RELEASE)[0].contains("= r1 ]; then rm -rf .ferry/locks/dev"),
                "only this run's lock"
            );
        }
        assert!(hosts[3].calls().is_empty() && hosts[4].calls().is_empty(), "t4 and t5 were never asked");
    }

    #[tokio::test]
    async fn release_removes_this_runs_locks_and_names_the_targets_where_it_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = [
            Arc::new(
                FakeHost::new("t1").on(ACQUIRE, Reply::ok("acquired\n")).on(RELEASE, Reply::ok("released\n")),
            ),
            Arc::new(FakeHost::new("t2").on(ACQUIRE, Reply::ok("acquired\n")).on(RELEASE, Reply::Lost)),
        ];
        let mine = info("r1", in_an_hour());
        // The lock closes a connection only once no one else holds it: give it connections of
        // its own (an `Arc` around each shared fake), as a deployment that has let go of them.
        let own: Vec<Connected> =
            hosts.iter().map(|h| (h.name().to_string(), Arc::new(Arc::clone(h)) as Arc<dyn Host>)).collect();
        let held = lock_environment(Some(&files(&dir)), "dev", &mine, own, false, None).await.unwrap();
        assert!(held.taken_over.is_empty());
        assert!(lock_local(dir.path(), "dev", &mine).is_err(), "the local lock is held meanwhile");
        assert_eq!(held.release().await, ["t2"]);
        assert!(hosts[0].closed(), "connections are closed once released");
        assert!(lock_local(dir.path(), "dev", &mine).is_ok(), "the local lock is free again");
    }

    #[tokio::test]
    async fn renew_rewrites_the_expiry_where_the_lock_is_still_this_runs() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec![
            Arc::new(
                FakeHost::new("t1").on(ACQUIRE, Reply::ok("acquired\n")).on(RENEW, Reply::ok("renewed\n")),
            ),
            // Someone broke the lock and took it: the script finds another run and says nothing.
            Arc::new(FakeHost::new("t2").on(ACQUIRE, Reply::ok("acquired\n")).on(RENEW, Reply::ok(""))),
            Arc::new(FakeHost::new("t3").on(ACQUIRE, Reply::ok("acquired\n")).on(RENEW, Reply::Lost)),
        ];
        let mine = info("r1", in_an_hour());
        let held =
            lock_environment(Some(&files(&dir)), "dev", &mine, connected(&hosts), false, None).await.unwrap();
        let later = mine.expires_ms + 600_000;
        let renewed = held.renew(later).await;
        assert_eq!(renewed[0], ("local".to_string(), Renewal::Renewed));
        assert_eq!(renewed[1], ("t1".to_string(), Renewal::Renewed));
        assert_eq!(renewed[2], ("t2".to_string(), Renewal::Lost));
        assert!(matches!(&renewed[3], (t, Renewal::Unreachable(_)) if t == "t3"), "{renewed:?}");
        let call = hosts[0].calls().into_iter().find(|c| c.command.contains(RENEW)).unwrap();
        assert!(call.command.contains("= r1 ]; then cat > .ferry/locks/dev/info.new"), "{}", call.command);
        let sent = LockInfo::parse(&String::from_utf8(call.stdin.unwrap()).unwrap()).unwrap();
        assert_eq!(sent, LockInfo { expires_ms: later, ..mine.clone() });
        let local = std::fs::read_to_string(dir.path().join("locks/dev.lock")).unwrap();
        assert_eq!(LockInfo::parse(&local).map(|i| i.expires_ms), Some(later));
    }
}
