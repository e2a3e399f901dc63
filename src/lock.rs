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
//! Four properties hold on each target, because the target's own shell decides them:
//!
//! - *One winner per takeover.* A lock past its expiry may be taken over, and `--force` breaks
//!   any lock. Removing the stale folder and making a new one would let two runners that both
//!   read the stale lock both win (one removes the other's fresh lock). Instead the lock folder
//!   stays, and whoever changes a lock that exists (a takeover, a renewal) first takes its
//!   `guard`, an atomic `mkdir` inside that very folder: one `mkdir` wins, and the winner
//!   rewrites the holder only if it still names the run it read as stale. A guard left by a
//!   runner that died mid-takeover is cleared after a minute.
//! - *The target's clock decides expiry.* The script writes `deadline=` (seconds since the
//!   epoch, the target's `date +%s` plus the TTL) when the lock is actually taken and at every
//!   renewal, and compares it with the target's `date +%s`: a runner whose clock is off cannot
//!   break a live lock or keep a dead one.
//! - *Fencing.* Each acquisition increments `~/.ferry/locks/ENV.fence` on the target (written
//!   only by whoever holds the lock, so it only grows) and records the number in the lock; the
//!   run records it in the audit log, so any later write can be told apart by acquisition.
//! - *Re-entrant for its own run.* Two target names can reach one machine and user (two
//!   addresses for one host, a shared home): the second finds the lock held by this very run
//!   and shares it instead of refusing itself. It is released once, through the first name.
//!
//! Taken-over locks are reported to the caller, which records them in the audit log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::exec::{Capture, ExecError};
use crate::host::{Connected, Host};

/// Who holds a lock and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockInfo {
    /// `user@host (via job)`.
    pub holder: String,
    /// The run or deployment id.
    pub run: String,
    /// Since, ms since the epoch (the runner's clock).
    pub since_ms: i64,
    /// Expiry, ms since the epoch (the runner's clock; for people to read).
    pub expires_ms: i64,
    /// Why (the operator's `--message`, or the command).
    pub message: String,
    /// The expiry on the target's clock, seconds since the epoch: what decides expiry there.
    /// Written by the target's lock script, never by the runner.
    pub deadline_s: Option<i64>,
    /// The acquisition's fencing number on that target (written by the target's lock script).
    pub fence: Option<u64>,
    /// Taken by hand (`ferry lock acquire`), not by a run that holds it while it works: nobody
    /// is coming to release it when their work is done, and it is not a sign of a dead run.
    pub by_hand: bool,
}

impl LockInfo {
    /// `key=value` lines, as stored on targets (the target's script adds `deadline` and
    /// `fence`).
    pub fn to_text(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        format!(
            "holder={}\nrun={}\nsince={}\nexpires={}\nmessage={}\n{}",
            one_line(&self.holder),
            one_line(&self.run),
            crate::time::format_ms(self.since_ms),
            crate::time::format_ms(self.expires_ms),
            one_line(&self.message),
            if self.by_hand { "by=hand\n" } else { "" }
        )
    }

    /// Reads [`LockInfo::to_text`]'s format (with the target's lines); `None` when it is not
    /// one.
    pub fn parse(text: &str) -> Option<LockInfo> {
        let get =
            |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string);
        Some(LockInfo {
            holder: get("holder")?,
            run: get("run")?,
            since_ms: crate::time::parse_ms(&get("since")?)?,
            expires_ms: crate::time::parse_ms(&get("expires")?)?,
            message: get("message").unwrap_or_default(),
            deadline_s: get("deadline").and_then(|d| d.parse().ok()),
            fence: get("fence").and_then(|f| f.parse().ok()),
            by_hand: get("by").is_some_and(|b| b == "hand"),
        })
    }

    /// Whether the expiry has passed by the runner's clock (`now_ms`).
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

/// A lock as found on a target: its holder, and the target's clock when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The holder, when its record is readable.
    pub info: Option<LockInfo>,
    /// The target's `date +%s` when the lock was read.
    pub target_now_s: Option<i64>,
}

impl Found {
    /// Whether the lock has expired, by the target's clock where the lock records a deadline
    /// (else by the runner's, for a lock written by an older ferry). An unreadable holder is
    /// never expired: only `--force` breaks it.
    pub fn expired(&self) -> bool {
        match (&self.info, self.target_now_s) {
            (None, _) => false,
            (Some(LockInfo { deadline_s: Some(deadline), .. }), Some(now)) => *deadline <= now,
            (Some(info), _) => info.expired(crate::time::now_ms()),
        }
    }

    /// Reads a script's `held NOW` line and the lock's info after it.
    fn parse(out: &str) -> Found {
        let (first, rest) = out.split_once('\n').unwrap_or((out, ""));
        let target_now_s = first.strip_prefix("held").and_then(|n| n.trim().parse().ok());
        Found { info: LockInfo::parse(rest), target_now_s }
    }
}

/// The message for a held lock: a run's lock may be a dead run's; a lock taken by hand is
/// neither, it stays until its holder releases it or it expires.
fn held(environment: &str, target: &str, info: Option<&LockInfo>) -> String {
    match info {
        Some(info) if info.by_hand => {
            let message =
                if info.message.is_empty() { "no message".to_string() } else { info.message.clone() };
            format!(
                "environment {environment} is locked on {target}, by hand: {} took it with `ferry lock acquire` \
                 on {} (\"{message}\"); it expires {}. Ask them, or release it with \
                 `ferry lock release --env {environment} --force` (audited)",
                info.holder,
                crate::time::format_ms(info.since_ms),
                crate::time::format_ms(info.expires_ms)
            )
        }
        _ => format!(
            "environment {environment} is locked on {target} by {}; wait for it with --lock-wait DURATION, \
             or, if that run is dead, break it with `ferry lock release --env {environment} --force`",
            info.map_or_else(|| "another run (no holder recorded yet)".to_string(), LockInfo::describe)
        ),
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it (and it has not expired, or `--force` was not given).
    #[error("{}", held(environment, target, info.as_deref()))]
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
    /// This run already held it through another target name that reaches the same machine and
    /// user: shared, and released through that other name.
    Reentrant,
}

/// A lock taken on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// How it was taken.
    pub taken: Taken,
    /// The acquisition's fencing number on that target.
    pub fence: u64,
}

fn dir(environment: &str) -> String {
    // Environment names are [A-Za-z0-9_.-] (the inventory checks it): safe in a path.
    format!(".ferry/locks/{environment}")
}

/// Shell that increments the environment's fencing counter into `$f` (run only by the lock's
/// holder, so the counter only grows; a missing or garbled counter starts again at 1).
fn next_fence(environment: &str) -> String {
    let counter = format!(".ferry/locks/{environment}.fence");
    format!(
        "f=$(cat {counter} 2>/dev/null); case $f in ''|*[!0-9]*) f=0;; esac; f=$((f + 1)); \
         echo $f > {counter}.new && mv -f {counter}.new {counter}"
    )
}

/// Shell that writes the lock's info from stdin plus the target-side deadline (`$now` + `ttl_s`)
/// and fence (`$f`), aside and then moved in, so a reader never sees half of it.
fn write_info(environment: &str, ttl_s: u64) -> String {
    let d = dir(environment);
    format!(
        "{{ cat; echo deadline=$((now + {ttl_s})); echo fence=$f; }} > {d}/info.new && mv -f {d}/info.new {d}/info"
    )
}

/// A TTL as whole seconds on the target's clock (at least one).
fn ttl_seconds(ttl: Duration) -> u64 {
    ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1)
}

async fn sh(host: &dyn Host, script: &str, stdin: Option<&[u8]>) -> Result<String, ExecError> {
    let mut out = Capture::default();
    let status = host.exec(script, stdin, Some(std::time::Duration::from_secs(30)), &mut out).await?;
    if !status.success() {
        return Err(ExecError::Lost(format!("lock command ended with {status}")));
    }
    Ok(out.text())
}

/// Reads the lock of `environment` on a target (`None`: free).
pub async fn read_remote(host: &dyn Host, environment: &str) -> Result<Option<Found>, ExecError> {
    let d = dir(environment);
    let out = sh(
        host,
        &format!("if [ -d {d} ]; then echo \"held $(date +%s)\"; cat {d}/info 2>/dev/null; fi"),
        None,
    )
    .await?;
    Ok(out.starts_with("held").then(|| Found::parse(&out)))
}

/// `acquired FENCE` → the fence.
fn acquired(out: &str) -> Option<u64> {
    out.lines().next()?.strip_prefix("acquired ")?.split(' ').next()?.parse().ok()
}

/// Takes the lock on one target, expiring `ttl` after now on the target's clock: free → taken;
/// held by this run → shared; held and expired (or `force`) → taken over. See the module docs.
pub async fn lock_remote(
    host: &dyn Host,
    target: &str,
    environment: &str,
    info: &LockInfo,
    ttl: Duration,
    force: bool,
) -> Result<Acquired, LockError> {
    let d = dir(environment);
    let unreachable = |e: ExecError| LockError::Unreachable {
        environment: environment.to_string(),
        target: target.to_string(),
        message: e.to_string(),
    };
    let held = |found: Found| LockError::Held {
        environment: environment.to_string(),
        target: target.to_string(),
        info: found.info.map(Box::new),
    };
    let (fence, write) = (next_fence(environment), write_info(environment, ttl_seconds(ttl)));
    let report_held = format!("echo \"held $now\"; cat {d}/info 2>/dev/null");
    let acquire = format!(
        "umask 077; mkdir -p .ferry/locks && now=$(date +%s) && if mkdir {d} 2>/dev/null; then \
         {fence} && {write} && echo \"acquired $f\"; else {report_held}; fi"
    );
    let text = info.to_text();
    let out = sh(host, &acquire, Some(text.as_bytes())).await.map_err(unreachable)?;
    if let Some(fence) = acquired(&out) {
        return Ok(Acquired { taken: Taken::Fresh, fence });
    }
    let found = Found::parse(&out);
    if let Some(mine) = found.info.as_ref().filter(|h| h.run == info.run) {
        return Ok(Acquired { taken: Taken::Reentrant, fence: mine.fence.unwrap_or_default() });
    }
    let expired = found.expired();
    if !expired && !force {
        return Err(held(found));
    }
    // Under the lock's guard (one mkdir wins), and only if it still names the run read above
    // and (unless forced) is still expired by the target's clock: see the module docs.
    let previous_run = found.info.as_ref().map_or(String::new(), |h| h.run.clone());
    let takeover = format!(
        "now=$(date +%s); {clear_stale_guard}; \
         if mkdir {d}/guard 2>/dev/null; then \
         run=$(sed -n 's/^run=//p' {d}/info 2>/dev/null); dl=$(sed -n 's/^deadline=//p' {d}/info 2>/dev/null); \
         case $dl in ''|*[!0-9]*) dl=0;; esac; \
         if [ \"$run\" = {previous} ] && {{ [ {force} = 1 ] || [ \"$dl\" -le \"$now\" ]; }}; then \
         {fence} && {write} && rmdir {d}/guard && echo \"acquired $f\"; \
         else rmdir {d}/guard; {report_held}; fi; \
         elif mkdir {d} 2>/dev/null; then {fence} && {write} && echo \"acquired $f free\"; \
         else {report_held}; fi",
        clear_stale_guard = clear_stale_guard(environment),
        previous = crate::shell::quote(&previous_run).unwrap_or_default(),
        force = u8::from(force),
    );
    let out = sh(host, &takeover, Some(text.as_bytes())).await.map_err(unreachable)?;
    match acquired(&out) {
        // Released meanwhile, and taken afresh by the same script.
        Some(fence) if out.lines().next().is_some_and(|l| l.ends_with(" free")) => {
            Ok(Acquired { taken: Taken::Fresh, fence })
        }
        Some(fence) => {
            let taken = if expired { Taken::Expired(found.info) } else { Taken::Forced(found.info) };
            Ok(Acquired { taken, fence })
        }
        None => Err(held(Found::parse(&out))),
    }
}

/// Shell that removes a guard older than a minute: its runner died mid-takeover or
/// mid-renewal (the script itself takes milliseconds).
fn clear_stale_guard(environment: &str) -> String {
    let d = dir(environment);
    format!("find {d} -maxdepth 1 -name guard -type d -mmin +1 -exec rmdir {{}} \\; 2>/dev/null")
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

/// Rewrites the lock info of `environment` on a target with `info` and a deadline `ttl` after
/// now on the target's clock, only if the lock there still names `info.run`; the fence stays.
/// It holds the lock's guard meanwhile, so a takeover cannot slip in between the check and the
/// write; a busy guard answers "not renewed" (the next renewal comes a third of a TTL later).
pub async fn renew_remote(
    host: &dyn Host,
    environment: &str,
    info: &LockInfo,
    ttl: Duration,
) -> Result<bool, ExecError> {
    let d = dir(environment);
    let script = format!(
        "now=$(date +%s); {clear_stale_guard}; \
         if [ -d {d} ] && mkdir {d}/guard 2>/dev/null; then \
         if [ \"$(sed -n 's/^run=//p' {d}/info 2>/dev/null)\" = {run} ]; then \
         f=$(sed -n 's/^fence=//p' {d}/info) && {write} && echo renewed; fi; rmdir {d}/guard; fi",
        clear_stale_guard = clear_stale_guard(environment),
        run = crate::shell::quote(&info.run).unwrap_or_default(),
        write = write_info(environment, ttl_seconds(ttl)),
    );
    Ok(sh(host, &script, Some(info.to_text().as_bytes())).await?.starts_with("renewed"))
}

/// How long releasing waits on a target whose lock command was lost.
const LOST_RELEASE: Duration = Duration::from_secs(2);

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
    /// Each target's fencing number for this acquisition, in target order.
    pub fences: Vec<(String, u64)>,
    /// Targets that share the lock of another name for the same machine: released there.
    shared: Vec<String>,
    /// Targets whose connection opened but whose lock command could not run (the link broke,
    /// the command timed out), with why: not locked, and not among the lock's connections.
    pub unreachable: Vec<(String, String)>,
    /// Those targets' connections, kept only to release: a lost answer may have come after the
    /// lock was made there, and such a stray lock would refuse the next run until its TTL.
    lost: Vec<Connected>,
}

/// Takes `environment`'s lock: the runner-side lease (when a `store` is given) and one on each
/// of `connections` in order. A target held by someone else refuses the whole lock (the ones
/// taken are released again); a target that cannot be asked is left out and named in
/// [`EnvironmentLock::unreachable`], so one dead host never blocks the others. The lock expires
/// `ttl` after it is actually taken (each attempt stamps `info` anew). With `wait`, retries
/// until it is free or `wait` ends.
pub async fn lock_environment(
    store: Option<&dyn crate::store::Store>,
    environment: &str,
    info: &LockInfo,
    ttl: Duration,
    connections: Vec<Connected>,
    force: bool,
    wait: Option<std::time::Duration>,
) -> Result<EnvironmentLock, LockError> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        let now = crate::time::now_ms();
        let info = LockInfo { since_ms: now, expires_ms: now.saturating_add(millis(ttl)), ..info.clone() };
        match try_lock_environment(store, environment, &info, ttl, &connections, force).await {
            Ok((local, taken, unreachable)) => {
                let (lost, connections) =
                    connections.into_iter().partition(|(n, _)| unreachable.iter().any(|(u, _)| u == n));
                let shared =
                    taken.iter().filter(|(_, a)| a.taken == Taken::Reentrant).map(|(n, _)| n.clone());
                return Ok(EnvironmentLock {
                    run: info.run.clone(),
                    environment: environment.to_string(),
                    shared: shared.collect(),
                    fences: taken.iter().map(|(n, a)| (n.clone(), a.fence)).collect(),
                    taken_over: taken
                        .into_iter()
                        .filter(|(_, a)| !matches!(a.taken, Taken::Fresh | Taken::Reentrant))
                        .map(|(n, a)| (n, a.taken))
                        .collect(),
                    info,
                    local,
                    connections,
                    unreachable,
                    lost,
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

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

type Attempt = (Option<Box<dyn crate::store::Lease>>, Vec<(String, Acquired)>, Vec<(String, String)>);

async fn try_lock_environment(
    store: Option<&dyn crate::store::Store>,
    environment: &str,
    info: &LockInfo,
    ttl: Duration,
    connections: &[Connected],
    force: bool,
) -> Result<Attempt, LockError> {
    let local = match store {
        Some(store) => Some(store.lease(environment, info)?),
        None => None,
    };
    let mut taken: Vec<(String, Acquired)> = Vec::new();
    let mut unreachable = Vec::new();
    for (target, host) in connections {
        match lock_remote(&**host, target, environment, info, ttl, force).await {
            Ok(t) => taken.push((target.clone(), t)),
            Err(LockError::Unreachable { message, .. }) => unreachable.push((target.clone(), message)),
            Err(e) => {
                // Lost answers too: the lock may have been made there (only this run's goes).
                let lost = unreachable.iter().map(|(n, _)| n);
                for name in taken.iter().map(|(n, _)| n).chain(lost) {
                    if let Some((_, c)) = connections.iter().find(|(n, _)| n == name) {
                        let _ = unlock_remote(&**c, environment, Some(&info.run)).await;
                    }
                }
                return Err(e);
            }
        }
    }
    Ok((local, taken, unreachable))
}

impl EnvironmentLock {
    /// The runner-side lease's fencing number, and the expired lease of another run it
    /// replaced, where the store keeps such things (a shared store).
    pub fn lease_takeover(&self) -> (Option<u64>, Option<LockInfo>) {
        self.local.as_ref().map_or((None, None), |l| (l.fence(), l.taken_over()))
    }

    /// Keeps the runner-side lease after this process ends, where the store can (a shared
    /// store's lease lasts until its expiry; a file lock ends with the process).
    pub fn keep_lease(&self) {
        if let Some(local) = &self.local {
            local.keep();
        }
    }

    /// The lock's open connection to `target`, for the work done under the lock: a deployment
    /// uses one connection per target for locking and deploying.
    pub fn connection(&self, target: &str) -> Option<Arc<dyn Host>> {
        self.connections.iter().find(|(n, _)| n == target).map(|(_, c)| Arc::clone(c))
    }

    /// What the lock says about its holder, as taken (since and expiry of the acquisition).
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Moves the lock's expiry to `ttl` after now (on each target's own clock) on every target
    /// where the lock still names this run, and in the local lock; one answer per target, in
    /// order (the local lock, when there is one, answers as `local`, first). A long run renews
    /// its lock before it expires, so that no one takes it over as stale while the run still
    /// works.
    pub async fn renew(&self, ttl: Duration) -> Vec<(String, Renewal)> {
        let now = crate::time::now_ms();
        let info = LockInfo { expires_ms: now.saturating_add(millis(ttl)), ..self.info.clone() };
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
                async move { renew_remote(&*host, &environment, &info, ttl).await }
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
            let shared = self.shared.contains(&target);
            if !shared && !matches!(unlock_remote(&*host, &self.environment, Some(&self.run)).await, Ok(true))
            {
                failed.push(target);
            }
            // Closed politely when the work has let go of it; else dropping it closes it.
            if Arc::strong_count(&host) == 1 {
                host.close().await;
            }
        }
        // Best effort, after the others (a lock shared by one machine is gone by then) and
        // briefly (its link already failed once; a run's quick exit has 5 s for everything):
        // the target was reported unreachable, and its lock, if any, would expire anyway.
        for (_, host) in self.lost {
            let unlock = unlock_remote(&*host, &self.environment, Some(&self.run));
            let _ = tokio::time::timeout(LOST_RELEASE, unlock).await;
            host.close().await;
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
            ..LockInfo::default()
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
        let info = LockInfo {
            holder: "a".into(),
            run: "r".into(),
            expires_ms: 1,
            message: "m".into(),
            ..LockInfo::default()
        };
        let first = lock_local(dir.path(), "prod", &info).unwrap();
        let second = lock_local(dir.path(), "prod", &info);
        assert!(matches!(second, Err(LockError::Held { ref target, .. }) if target == "local"), "{second:?}");
        drop(first);
        assert!(free_soon(dir.path(), "prod", &info), "the local lock is free once dropped");
    }

    /// Whether the local lock can be taken within half a second. Not at once: another test
    /// spawning a process holds a copy of the lock's file descriptor between its fork and its
    /// exec (the flock goes with it), so a dropped lock can stay held for that moment.
    fn free_soon(dir: &Path, environment: &str, info: &LockInfo) -> bool {
        (0..50).any(|_| {
            let free = lock_local(dir, environment, info).is_ok();
            if !free {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            free
        })
    }

    use crate::host::fake::{FakeHost, Reply};

    const ACQUIRE: &str = "mkdir -p .ferry/locks && now=$(date +%s) && if mkdir";
    const TAKEOVER: &str = "if [ \"$run\" = ";
    const RELEASE: &str = "echo released";
    const RENEW: &str = "echo renewed";

    fn info(run: &str, expires_ms: i64) -> LockInfo {
        LockInfo {
            holder: "ci@runner".into(),
            run: run.into(),
            since_ms: 1_796_118_600_000,
            expires_ms,
            message: "deploy web".into(),
            ..LockInfo::default()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn in_an_hour() -> i64 {
        crate::time::now_ms() + 3_600_000
    }

    fn held_by(other: &LockInfo) -> Reply {
        Reply::ok(&format!(
            "held 100\n{}deadline={}\n",
            other.to_text(),
            if other.expires_ms < crate::time::now_ms() { 99 } else { 101 }
        ))
    }

    fn connected(hosts: &[Arc<FakeHost>]) -> Vec<Connected> {
        hosts.iter().map(|h| (h.name().to_string(), Arc::clone(h) as Arc<dyn Host>)).collect()
    }

    #[tokio::test]
    async fn a_free_lock_is_taken_with_the_holders_info_on_stdin() {
        let host = FakeHost::new("t1").on(ACQUIRE, Reply::ok("acquired 1\n"));
        let mine = info("r1", in_an_hour());
        let taken = lock_remote(&host, "t1", "dev", &mine, HOUR, false).await.unwrap();
        assert_eq!(taken, Acquired { taken: Taken::Fresh, fence: 1 });
        let calls = host.calls();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].command.contains("mkdir .ferry/locks/dev 2>/dev/null"), "{}", calls[0].command);
        assert_eq!(calls[0].stdin.as_deref(), Some(mine.to_text().as_bytes()));
    }

    #[tokio::test]
    async fn an_expired_lock_is_taken_over_only_if_it_is_still_the_one_read() {
        let stale = info("old-run", crate::time::now_ms() - 1_000);
        let host = FakeHost::new("t1").on(ACQUIRE, held_by(&stale)).on(TAKEOVER, Reply::ok("acquired 1\n"));
        let taken = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), HOUR, false).await.unwrap();
        assert_eq!(taken.taken, Taken::Expired(Some(LockInfo { deadline_s: Some(99), ..stale })));
        let takeover = &host.ran(TAKEOVER)[0];
        assert!(takeover.contains("if mkdir .ferry/locks/dev/guard 2>/dev/null"), "{takeover}");
        assert!(takeover.contains("if [ \"$run\" = old-run ] && "), "{takeover}");
    }

    #[tokio::test]
    async fn a_live_lock_is_refused_unless_forced() {
        let live = info("other-run", in_an_hour());
        let host = FakeHost::new("t1").on(ACQUIRE, held_by(&live)).on(TAKEOVER, Reply::ok("acquired 1\n"));
        let refused = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), HOUR, false).await;
        assert!(
            matches!(&refused, Err(LockError::Held { target, info: Some(i), .. }) if target == "t1" && i.run == "other-run"),
            "{refused:?}"
        );
        assert!(host.ran(TAKEOVER).is_empty(), "a live lock is not touched");
        let forced = lock_remote(&host, "t1", "dev", &info("r1", in_an_hour()), HOUR, true).await.unwrap();
        assert_eq!(forced.taken, Taken::Forced(Some(LockInfo { deadline_s: Some(101), ..live })));
    }

    #[tokio::test]
    async fn a_lock_refused_on_the_third_of_five_targets_is_released_on_the_first_two_only() {
        let live = info("other-run", in_an_hour());
        let hosts: Vec<Arc<FakeHost>> = (1..=5)
            .map(|n| {
                let acquire = if n == 3 { held_by(&live) } else { Reply::ok("acquired 1\n") };
                Arc::new(
                    FakeHost::new(&format!("t{n}")).on(ACQUIRE, acquire).on(RELEASE, Reply::ok("released\n")),
                )
            })
            .collect();
        let mine = info("r1", in_an_hour());
        let result = lock_environment(None, "dev", &mine, HOUR, connected(&hosts), false, None).await;
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
    async fn a_target_whose_lock_command_is_lost_is_left_out_and_the_others_are_locked() {
        let hosts: Vec<Arc<FakeHost>> = (1..=3)
            .map(|n| {
                let acquire = if n == 2 { Reply::Lost } else { Reply::ok("acquired 1\n") };
                Arc::new(
                    FakeHost::new(&format!("t{n}")).on(ACQUIRE, acquire).on(RELEASE, Reply::ok("released\n")),
                )
            })
            .collect();
        let mine = info("r1", in_an_hour());
        let held = lock_environment(None, "dev", &mine, HOUR, connected(&hosts), false, None).await.unwrap();
        assert_eq!(held.unreachable, [("t2".to_string(), "fake host t2: connection lost".to_string())]);
        assert_eq!(held.fences, [("t1".to_string(), 1), ("t3".to_string(), 1)]);
        assert!(held.connection("t2").is_none(), "the work never gets the unlocked target");
        assert_eq!(held.release().await, Vec::<String>::new());
        // The lost answer may have come after t2's lock was made: released there too (only
        // a lock naming this run is removed), so no stray lock blocks the next run until TTL.
        let released: Vec<usize> = hosts.iter().map(|h| h.ran(RELEASE).len()).collect();
        assert_eq!(released, [1, 1, 1]);
    }

    #[tokio::test]
    async fn a_refused_lock_also_releases_a_target_whose_lock_command_was_lost() {
        let hosts = [
            Arc::new(FakeHost::new("t1").on(ACQUIRE, Reply::Lost).on(RELEASE, Reply::ok("released\n"))),
            Arc::new(
                FakeHost::new("t2")
                    .on(ACQUIRE, held_by(&info("other-run", in_an_hour())))
                    .on(RELEASE, Reply::ok("")),
            ),
        ];
        let mine = info("r1", in_an_hour());
        let refused = lock_environment(None, "dev", &mine, HOUR, connected(&hosts), false, None).await;
        assert!(
            matches!(&refused, Err(LockError::Held { target, .. }) if target == "t2"),
            "{:?}",
            refused.err()
        );
        assert_eq!(hosts[0].ran(RELEASE).len(), 1, "t1 may hold this run's lock: released");
        assert!(
            hosts[0].ran(RELEASE)[0].contains("= r1 ]; then rm -rf .ferry/locks/dev"),
            "only this run's lock"
        );
    }

    #[tokio::test]
    async fn release_removes_this_runs_locks_and_names_the_targets_where_it_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = [
            Arc::new(
                FakeHost::new("t1")
                    .on(ACQUIRE, Reply::ok("acquired 1\n"))
                    .on(RELEASE, Reply::ok("released\n")),
            ),
            Arc::new(FakeHost::new("t2").on(ACQUIRE, Reply::ok("acquired 1\n")).on(RELEASE, Reply::Lost)),
        ];
        let mine = info("r1", in_an_hour());
        // The lock closes a connection only once no one else holds it: give it connections of
        // its own (an `Arc` around each shared fake), as a deployment that has let go of them.
        let own: Vec<Connected> =
            hosts.iter().map(|h| (h.name().to_string(), Arc::new(Arc::clone(h)) as Arc<dyn Host>)).collect();
        let held = lock_environment(Some(&files(&dir)), "dev", &mine, HOUR, own, false, None).await.unwrap();
        assert!(held.taken_over.is_empty());
        assert!(lock_local(dir.path(), "dev", &mine).is_err(), "the local lock is held meanwhile");
        assert_eq!(held.release().await, ["t2"]);
        assert!(hosts[0].closed(), "connections are closed once released");
        assert!(free_soon(dir.path(), "dev", &mine), "the local lock is free again");
    }

    #[tokio::test]
    async fn renew_rewrites_the_expiry_where_the_lock_is_still_this_runs() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec![
            Arc::new(
                FakeHost::new("t1").on(ACQUIRE, Reply::ok("acquired 1\n")).on(RENEW, Reply::ok("renewed\n")),
            ),
            // Someone broke the lock and took it: the script finds another run and says nothing.
            Arc::new(FakeHost::new("t2").on(ACQUIRE, Reply::ok("acquired 1\n")).on(RENEW, Reply::ok(""))),
            Arc::new(FakeHost::new("t3").on(ACQUIRE, Reply::ok("acquired 1\n")).on(RENEW, Reply::Lost)),
        ];
        let mine = info("r1", in_an_hour());
        let held = lock_environment(Some(&files(&dir)), "dev", &mine, HOUR, connected(&hosts), false, None)
            .await
            .unwrap();
        let renewed = held.renew(2 * HOUR).await;
        assert_eq!(renewed[0], ("local".to_string(), Renewal::Renewed));
        assert_eq!(renewed[1], ("t1".to_string(), Renewal::Renewed));
        assert_eq!(renewed[2], ("t2".to_string(), Renewal::Lost));
        assert!(matches!(&renewed[3], (t, Renewal::Unreachable(_)) if t == "t3"), "{renewed:?}");
        let call = hosts[0].calls().into_iter().find(|c| c.command.contains(RENEW)).unwrap();
        assert!(call.command.contains("= r1 ]; then f=$(sed"), "{}", call.command);
        assert!(
            call.command.contains("echo deadline=$((now + 7200))"),
            "on the target's clock: {}",
            call.command
        );
        let sent = LockInfo::parse(&String::from_utf8(call.stdin.unwrap()).unwrap()).unwrap();
        assert!(sent.expires_ms >= held.info().expires_ms + 3_000_000, "{sent:?}");
        assert_eq!(sent, LockInfo { expires_ms: sent.expires_ms, ..held.info().clone() });
        let local = std::fs::read_to_string(dir.path().join("locks/dev.lock")).unwrap();
        assert_eq!(LockInfo::parse(&local).map(|i| i.expires_ms), Some(sent.expires_ms));
    }
}

/// The lock scripts run by a real `/bin/sh` in a folder of their own (a stand-in home), so
/// that the races they must win are run, not asserted from their text. Many runners on one
/// machine race the same way as many machines on one target: the target's shell decides.
#[cfg(test)]
mod real_shell {
    use super::*;
    use crate::exec::{ExitStatus, OutputSink};
    use crate::host::{BoxFuture, LocalHost};

    /// `/bin/sh` on this machine with the test's folder as its home.
    struct Home {
        dir: std::path::PathBuf,
        sh: LocalHost,
    }

    impl Host for Home {
        fn name(&self) -> &str {
            self.sh.name()
        }
        fn describe(&self) -> String {
            self.sh.describe()
        }
        fn is_local(&self) -> bool {
            false
        }
        fn exec<'a>(
            &'a self,
            command: &'a str,
            stdin: Option<&'a [u8]>,
            deadline: Option<Duration>,
            sink: &'a mut dyn OutputSink,
        ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
            Box::pin(async move {
                let command = format!("cd {} && {{ {command}\n}}", self.dir.display());
                self.sh.exec(&command, stdin, deadline, sink).await
            })
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn home(dir: &tempfile::TempDir, name: &str) -> Arc<dyn Host> {
        Arc::new(Home { dir: dir.path().to_path_buf(), sh: LocalHost::new(name) })
    }

    fn info(run: &str) -> LockInfo {
        LockInfo {
            holder: "ci@runner".into(),
            run: run.into(),
            message: "deploy".into(),
            ..LockInfo::default()
        }
    }

    fn on_disk(dir: &tempfile::TempDir) -> LockInfo {
        LockInfo::parse(&std::fs::read_to_string(dir.path().join(".ferry/locks/dev/info")).unwrap()).unwrap()
    }

    /// A lock left by a dead run whose deadline (the target's clock) has passed.
    fn stale(dir: &tempfile::TempDir, run: &str) {
        let lock = dir.path().join(".ferry/locks/dev");
        std::fs::create_dir_all(&lock).unwrap();
        let text = format!("{}deadline=1\nfence=7\n", LockInfo { expires_ms: 1_000, ..info(run) }.to_text());
        std::fs::write(lock.join("info"), text).unwrap();
    }

    #[tokio::test]
    async fn two_runners_racing_for_one_expired_lock_exactly_one_wins_each_of_20_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (home(&dir, "t"), home(&dir, "t"));
        for round in 0..20 {
            stale(&dir, &format!("dead-{round}"));
            let (ra, rb) = (format!("a-{round}"), format!("b-{round}"));
            let (ia, ib) = (info(&ra), info(&rb));
            let (wa, wb) = tokio::join!(
                lock_remote(&*a, "t", "dev", &ia, Duration::from_secs(60), false),
                lock_remote(&*b, "t", "dev", &ib, Duration::from_secs(60), false),
            );
            let winners: Vec<&str> = [(&wa, ra.as_str()), (&wb, rb.as_str())]
                .into_iter()
                .filter(|(w, _)| w.is_ok())
                .map(|(_, r)| r)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {wa:?} {wb:?}");
            let holder = on_disk(&dir);
            assert_eq!(holder.run, winners[0], "round {round}: the lock names the one winner");
            let loser = if wa.is_ok() { &wb } else { &wa };
            // It names the winner, or the dead run when it lost the guard mid-takeover.
            assert!(matches!(loser, Err(LockError::Held { .. })), "round {round}: {loser:?}");
            assert!(!dir.path().join(".ferry/locks/dev/guard").exists(), "round {round}: guard left");
            std::fs::remove_dir_all(dir.path().join(".ferry/locks/dev")).unwrap();
        }
    }

    #[tokio::test]
    async fn expiry_is_decided_by_the_targets_clock_not_the_runners() {
        let dir = tempfile::tempdir().unwrap();
        let host = home(&dir, "t");
        // The runner that wrote it thought it expired long ago, but the target's deadline is
        // an hour ahead of the target's clock: live.
        let lock = dir.path().join(".ferry/locks/dev");
        std::fs::create_dir_all(&lock).unwrap();
        let deadline = crate::time::now_ms() / 1000 + 3600;
        let text = format!(
            "{}deadline={deadline}\nfence=3\n",
            LockInfo { expires_ms: 1_000, ..info("other") }.to_text()
        );
        std::fs::write(lock.join("info"), &text).unwrap();
        let refused = lock_remote(&*host, "t", "dev", &info("mine"), Duration::from_secs(60), false).await;
        assert!(matches!(refused, Err(LockError::Held { .. })), "{refused:?}");
        // And the other way round: the runner's expiry is far ahead, the target's deadline past.
        let later = crate::time::now_ms() + 3_600_000;
        let text =
            format!("{}deadline=1\nfence=3\n", LockInfo { expires_ms: later, ..info("other") }.to_text());
        std::fs::write(lock.join("info"), &text).unwrap();
        let taken =
            lock_remote(&*host, "t", "dev", &info("mine"), Duration::from_secs(60), false).await.unwrap();
        assert!(matches!(taken.taken, Taken::Expired(Some(ref i)) if i.run == "other"), "{taken:?}");
        let now_s = crate::time::now_ms() / 1000;
        let written = on_disk(&dir).deadline_s.unwrap();
        assert!((now_s + 59..=now_s + 61).contains(&written), "deadline = target's now + TTL: {written}");
    }

    #[tokio::test]
    async fn each_acquisition_gets_a_larger_fence_and_renewal_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let host = home(&dir, "t");
        let ttl = Duration::from_secs(60);
        let mut fences = Vec::new();
        for run in ["r1", "r2"] {
            let held = lock_environment(
                None,
                "dev",
                &info(run),
                ttl,
                vec![("t".into(), Arc::clone(&host))],
                false,
                None,
            )
            .await
            .unwrap();
            fences.push(held.fences[0].1);
            assert_eq!(on_disk(&dir).fence, Some(held.fences[0].1), "the lock records its fence");
            assert_eq!(held.renew(Duration::from_secs(600)).await, [("t".to_string(), Renewal::Renewed)]);
            let renewed = on_disk(&dir);
            assert_eq!(renewed.fence, Some(held.fences[0].1), "renewal keeps the fence");
            assert!(renewed.deadline_s.unwrap() >= crate::time::now_ms() / 1000 + 590, "{renewed:?}");
            assert!(held.release().await.is_empty());
        }
        // A takeover of an expired lock is an acquisition too.
        stale(&dir, "dead");
        let taken = lock_remote(&*host, "t", "dev", &info("r3"), ttl, false).await.unwrap();
        fences.push(taken.fence);
        assert_eq!(fences, [1, 2, 3]);
    }

    #[tokio::test]
    async fn two_target_names_for_one_home_share_the_runs_lock_and_release_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let names =
            vec![("web".to_string(), home(&dir, "web")), ("web-alias".to_string(), home(&dir, "web-alias"))];
        let ttl = Duration::from_secs(60);
        let held = lock_environment(None, "dev", &info("r1"), ttl, names.clone(), false, None).await.unwrap();
        assert_eq!(held.fences, [("web".to_string(), 1), ("web-alias".to_string(), 1)]);
        assert!(held.taken_over.is_empty());
        // Another run is still refused, on the first name.
        let other = lock_environment(None, "dev", &info("r2"), ttl, names.clone(), false, None).await;
        assert!(
            matches!(&other, Err(LockError::Held { target, .. }) if target == "web"),
            "{:?}",
            other.err()
        );
        assert_eq!(held.release().await, Vec::<String>::new(), "released once, nothing left over");
        assert!(!dir.path().join(".ferry/locks/dev").exists());
    }
}
