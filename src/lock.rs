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
    _file: File,
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
            Ok(LocalLock { _file: file })
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

/// An environment lock held by this process: the local lock and the targets' locks.
pub struct EnvironmentLock {
    /// Run id written into the targets' lock info.
    pub run: String,
    environment: String,
    _local: Option<LocalLock>,
    connections: Vec<Connected>,
    /// Targets where an expired (`Expired`) or live (`Forced`) lock was taken over.
    pub taken_over: Vec<(String, Taken)>,
}

/// Takes `environment`'s lock: the local one (when `state_dir` is given) and one on each of
/// `connections` in order; all or nothing. With `wait`, retries until it is free or `wait` ends.
pub async fn lock_environment(
    state_dir: Option<&Path>,
    environment: &str,
    info: &LockInfo,
    connections: Vec<Connected>,
    force: bool,
    wait: Option<std::time::Duration>,
) -> Result<EnvironmentLock, LockError> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        match try_lock_environment(state_dir, environment, info, &connections, force).await {
            Ok((local, taken_over)) => {
                return Ok(EnvironmentLock {
                    run: info.run.clone(),
                    environment: environment.to_string(),
                    _local: local,
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
    state_dir: Option<&Path>,
    environment: &str,
    info: &LockInfo,
    connections: &[Connected],
    force: bool,
) -> Result<(Option<LocalLock>, Vec<(String, Taken)>), LockError> {
    let local = match state_dir {
        Some(dir) => Some(lock_local(dir, environment, info)?),
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
}
