//! One run session: what every command that changes targets shares, written once.
//!
//! `run`, `deploy`, `promote` and `rollback` each supply only their own work (an async closure);
//! the session owns the rest, in this order:
//!
//! 1. the confirmation (`--yes`, or a prompt on a terminal);
//! 2. `run_started` on record before anything touches a target (if it cannot be written,
//!    nothing runs);
//! 3. one tokio runtime for the whole command, with SIGINT and SIGTERM handled the same way:
//!    the first signal is graceful (in-flight targets finish or restore, no new one starts), the
//!    second is quick (the work is abandoned, but the run is still recorded as interrupted and
//!    the lock released, with a short deadline); nothing calls `process::exit` from a task;
//! 4. the environment lock: taken (locally through the [`Store`], which covers the whole
//!    environment, and on each of the run's targets), renewed while the run lives, released at
//!    the end, each step on record. A target that cannot be reached (or whose host key is
//!    refused) is left out of the lock and handed to the work as [`Unreached`]: it is reported
//!    with its own outcome and never touched, and it never stops the lock or the work on the
//!    others (whether the rest proceeds is the work's failure budget to say);
//! 5. the event stream, with the audit trail and the renderer as its subscribers;
//! 6. `run_finished`, or, when the run was refused before any work (a held lock), a
//!    `run_finished` that says why; then the work's [`After`] part (a deployment's
//!    `post_deploy` or `failed` hook), the lock still held;
//! 7. for a deployment (`deploy`, `promote`, `rollback`), the notifications of
//!    `[notify.NAME]`: `started` once the lock is held, sent beside the work (a slow receiver
//!    never delays a target), `succeeded` or `failed` after `run_finished` (so they carry
//!    every target's outcome; a run abandoned by a second signal is announced as failed, with
//!    the outcomes so far, within the quick stop's deadline). Each delivery is an event
//!    (`notified`), shown and recorded; a notifier that fails never fails the run.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::audit::Entry;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::fanout::{Cancel, Unreached};
use crate::host::connect_all;
use crate::inventory::{Environment, Inventory};
use crate::lock::{self, EnvironmentLock, LockInfo, Taken};
use crate::notify::Moment;
use crate::output::OutputFormat;
use crate::records::{self, Kind, LockChange, RunFinished, RunStarted};
use crate::report::{AuditTrail, Event, Events, Reporter, Status, Subscriber};
use crate::request::LockTiming;
use crate::secret::Secret;
use crate::store::Store;

/// The lock (when the command takes one) and the run's targets it could not reach.
type Held = (Option<Arc<EnvironmentLock>>, Vec<Unreached>);

/// Exit code when a signal interrupted the run.
pub const EXIT_INTERRUPTED: i32 = 130;

/// The longest a renewal round in flight is waited for at the end of a run.
const RENEWAL_ROUND: Duration = Duration::from_secs(60);

/// How long a quit-now (second signal) may spend on releasing the lock.
const QUICK_RELEASE: Duration = Duration::from_secs(5);

/// How much longer a `started` notice still in flight at the run's end may take before the end
/// notice goes out without it.
const START_NOTICE_GRACE: Duration = Duration::from_secs(5);

/// A mutating command's run: see the module docs.
pub struct Session {
    /// The inventory.
    pub inventory: Arc<Inventory>,
    /// Where records go.
    pub store: Arc<dyn Store>,
    /// The environment worked on.
    pub environment: Environment,
    /// What every record of this run carries: run id, command, app, version, digest.
    pub base: Entry,
    /// What the run does, for the `run_started` event: the masked command line of `ferry run`,
    /// `deploy web 1.4 to prod` for a deployment.
    pub what: String,
    /// Secret values masked in every event, record and message.
    pub secrets: Vec<Secret>,
    /// `--output`.
    pub output: OutputFormat,
    /// `--quiet`.
    pub quiet: bool,
    /// The environment lock, when the command takes one; the message its holders see.
    pub lock: Option<(LockTiming, String)>,
    /// How to reach targets.
    pub ssh: crate::ssh::Options,
}

/// What the work gets from the session.
pub struct Context {
    /// Events for the renderers and the audit trail.
    pub events: Events,
    /// Becomes true at the first signal: start no more targets.
    pub cancel: Cancel,
    /// The held lock's open connections (empty without a lock).
    pub connections: crate::apply::Connections,
    /// The run's targets the lock could not reach, in target order (empty without a lock):
    /// not locked, never to be touched; the work reports them.
    pub unreached: Vec<Unreached>,
    /// A deployment sends `()` once its gates passed and the rollout begins: the `started`
    /// notice goes out then (a run refused before that never says it started).
    pub rollout_begins: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How the work ended, for `run_finished`.
pub struct Finish<T> {
    /// What the command wants back (results, the applied plan).
    pub value: T,
    /// Targets that succeeded.
    pub ok: usize,
    /// Targets that failed in any way.
    pub failed: usize,
    /// Targets never started.
    pub skipped: usize,
    /// A signal stopped it.
    pub interrupted: bool,
    /// Why a rollout stopped early.
    pub stopped: Option<String>,
    /// The command's own `run_finished` detail (a deployment's record), if any.
    pub record: Option<RunFinished>,
    /// The digest the run pinned on the way (an app without a feed), for its record.
    pub digest: Option<String>,
    /// Work that runs once `run_finished` is on record, with the lock still held.
    pub after: Option<After>,
}

/// What a run does after its end is on record and before its lock is released: a deployment's
/// `post_deploy` or `failed` hook, which sees the run as ended (`ferry history` shows it) while
/// no other run can change the environment yet. Its events are recorded like the work's.
pub type After = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// [`Finish`] without the value: what `run_finished` says.
struct Summary {
    ok: usize,
    failed: usize,
    skipped: usize,
    interrupted: bool,
    ms: u64,
    stopped: Option<String>,
    record: Option<RunFinished>,
    digest: Option<String>,
}

impl<T> Finish<T> {
    /// Splits off what the record says, leaving the value to the command.
    fn summary(&mut self, started: Instant) -> Summary {
        Summary {
            ok: self.ok,
            failed: self.failed,
            skipped: self.skipped,
            interrupted: self.interrupted,
            ms: crate::fanout::millis(started.elapsed()),
            stopped: self.stopped.take(),
            record: self.record.take(),
            digest: self.digest.take(),
        }
    }
}

/// The task that keeps the lock from expiring while the run lives.
struct Renewal {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewal {
    /// Stops renewing once a round in flight (if any) has ended, or cuts it short after
    /// `limit` (a quick stop does not wait for a slow target).
    async fn finish(mut self, limit: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// What the session hands back.
pub enum Outcome<T> {
    /// The work ran to its end; `audited` is false when a record could not be written.
    Finished {
        /// The work's value.
        value: T,
        /// Every record of the run was written.
        audited: bool,
    },
    /// A second signal abandoned the work; the run is recorded as interrupted.
    Abandoned,
}

/// The lifecycle of one signal-driven stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    Graceful,
    Now,
}

impl Session {
    /// `--yes`, or `y` at a prompt that shows `shown()`; no terminal and no `--yes` is a refusal.
    pub fn confirm(yes: bool, what: &str, shown: impl FnOnce() -> String) -> Result<(), Error> {
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Error::Refused(
                Diagnostic::new(format!(
                    "refusing to {what} without a confirmation: stdin is not a terminal"
                ))
                .help("pass --yes (cron, CI), or run it from a terminal and answer the prompt"),
            ));
        }
        eprintln!("{}", shown());
        eprint!("{}? [y/N] ", capitalized(what));
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(Error::Refused(Diagnostic::new(format!("not confirmed: nothing was changed ({what})"))))
        }
    }

    /// Runs `work` for `targets` inside the session; see the module docs.
    pub fn run<T, W, F>(self, targets: Vec<String>, started: RunStarted, work: W) -> Result<Outcome<T>, Error>
    where
        W: FnOnce(Context) -> F,
        F: std::future::Future<Output = Finish<T>>,
    {
        // On record before anything touches a target: if it cannot be written, nothing runs.
        self.store.append(&Entry { targets: targets.clone(), ..self.entry(Kind::RunStarted, &started) })?;
        // Tasks a quick stop left behind are not awaited: the process ends right after.
        super::runtime()?.block_on(self.supervise(targets, work))
    }

    async fn supervise<T, W, F>(&self, targets: Vec<String>, work: W) -> Result<Outcome<T>, Error>
    where
        W: FnOnce(Context) -> F,
        F: std::future::Future<Output = Finish<T>>,
    {
        // First thing, so a signal while locks are being taken still ends in an orderly way.
        let (stop, cancel) = signals();
        let Some((held, unreached)) = self.lock_unless_stopped(&targets, stop.clone()).await? else {
            return Ok(Outcome::Abandoned);
        };
        let renewal = held.as_ref().map(|held| self.renew_while_running(Arc::clone(held)));
        let connections = held.as_ref().map_or_else(Default::default, |held| {
            targets.iter().filter_map(|n| held.connection(n).map(|c| (n.clone(), c))).collect()
        });
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let notifiers = self.notifiers();
        // Subscribed after the audit trail: once it has seen `run_finished`, that is on record.
        let outcomes = Outcomes::default();
        let mut subscribers = self.subscribers();
        subscribers.push(Box::new(outcomes.clone()));
        let mut dispatcher =
            tokio::spawn(crate::report::dispatch(receiver, self.secrets.clone(), subscribers));
        let _ = events.send(Event::RunStarted {
            run: self.base.run.clone(),
            command: self.what.clone(),
            environment: self.environment.name.clone(),
            targets,
        });
        let started = Instant::now();
        let (begins, begun) = tokio::sync::oneshot::channel();
        let context =
            Context { events: events.clone(), cancel, connections, unreached, rollout_begins: Some(begins) };
        // `started` goes out once the work says its rollout begins (past the freeze re-check and
        // `pre_deploy`), beside the work: a slow receiver never delays a target, nor the run's
        // end (it is awaited only before the end notice, so receivers hear them in order).
        let (start_events, wanted) = (events.clone(), &notifiers);
        let mut start_notice = Box::pin(async move {
            if let Some(notifiers) = wanted
                && begun.await.is_ok()
            {
                let digest = self.base.digest.clone();
                self.notify(notifiers, &start_events, Moment::Started, Vec::new(), digest, None).await;
            }
        });
        let mut start_noticed = false;
        // Boxed so that it is dropped (with its half of `rollout_begins`) as soon as it ended.
        let mut work = Box::pin(work(context));
        let mut quit = stop.clone();
        let finish = loop {
            tokio::select! {
                finish = &mut work => break Some(finish),
                () = &mut start_notice, if !start_noticed => start_noticed = true,
                Ok(_) = quit.wait_for(|s| *s == Stop::Now) => break None,
            }
        };
        drop(work);
        let outcome = match finish {
            Some(mut finish) => {
                let summary = finish.summary(started);
                // Succeeded means every target ended well: a run refused before any target
                // (a failing `pre_deploy` hook), skipped targets or a stopped rollout did not.
                let refused = summary.record.as_ref().and_then(|r| r.refused.clone());
                let good = summary.failed == 0
                    && summary.skipped == 0
                    && !summary.interrupted
                    && summary.stopped.is_none()
                    && refused.is_none();
                // An app without a feed learns its digest during the rollout.
                let digest = summary.digest.clone().or_else(|| self.base.digest.clone());
                let _ = events.send(self.finished(summary));
                // The end hook runs once `run_finished` is on record; it and the end notice do
                // not wait for each other.
                let after = async {
                    if let Some(after) = finish.after.take() {
                        outcomes.after_the_end().await;
                        after.await;
                    }
                };
                let announce = async {
                    // Receivers hear `started` first; one still in flight gets a little
                    // longer, then is cut short (and recorded so), so the lock is not held for
                    // a receiver that does not answer.
                    if !start_noticed {
                        let _ = tokio::time::timeout(START_NOTICE_GRACE, start_notice.as_mut()).await;
                    }
                    if let Some(notifiers) = &notifiers {
                        let targets = outcomes.after_the_end().await;
                        let moment = if good { Moment::Succeeded } else { Moment::Failed };
                        let refused = refused.map(|r| crate::secret::mask(&r, &self.secrets));
                        self.notify(notifiers, &events, moment, targets, digest, refused).await;
                    }
                };
                // A second signal cuts both short: the hook's process group is killed, and a
                // notice still in flight is recorded as not delivered.
                tokio::select! {
                    _ = async { tokio::join!(after, announce) } => {}
                    Ok(_) = quit.wait_for(|s| *s == Stop::Now) => {}
                }
                // The `started` notice, if still in flight, is recorded as cut short.
                drop(start_notice);
                drop(events);
                let audited = matches!(dispatcher.await, Ok(Ok(())));
                Outcome::Finished { value: finish.value, audited }
            }
            None => {
                // The work is gone mid-flight. The receivers still hear that it failed, with the
                // targets that ended so far, within the quick stop's deadline.
                if let Some(notifiers) = &notifiers {
                    let targets = outcomes.so_far();
                    let digest = self.base.digest.clone();
                    let told = self.notify(notifiers, &events, Moment::Failed, targets, digest, None);
                    let _ = tokio::time::timeout(QUICK_RELEASE, told).await;
                }
                // What already finished is still recorded (the trail gets a moment to catch up).
                drop(start_notice);
                drop(events);
                if tokio::time::timeout(QUICK_RELEASE, &mut dispatcher).await.is_err() {
                    dispatcher.abort();
                }
                Outcome::Abandoned
            }
        };
        let quick = matches!(outcome, Outcome::Abandoned) || *stop.borrow() == Stop::Now;
        if let Some(renewal) = renewal {
            // Awaited, so its hold on the lock is gone before the lock is released.
            renewal.finish(if quick { QUICK_RELEASE } else { RENEWAL_ROUND }).await;
        }
        // Released before anything else can fail: a record that cannot be written must not
        // leave the targets locked until the TTL.
        let released = match held {
            Some(held) => self.release_lock(held, quick).await,
            None => Ok(()),
        };
        if matches!(outcome, Outcome::Abandoned) {
            // On record, so no later reader mistakes the run for a crash.
            self.record_interrupted()?;
        }
        released?;
        Ok(outcome)
    }

    /// Takes the lock (when the command wants one); `None` when a signal came first (then the
    /// run is on record as interrupted, and nothing ran anywhere).
    async fn lock_unless_stopped(
        &self,
        targets: &[String],
        mut stop: watch::Receiver<Stop>,
    ) -> Result<Option<Held>, Error> {
        let taken = tokio::select! {
            taken = self.take_lock(targets) => taken,
            Ok(_) = stop.wait_for(|s| *s != Stop::Running) => {
                self.record_interrupted()?;
                return Ok(None);
            }
        };
        match taken {
            Ok(held) => Ok(Some(held)),
            Err(error) => {
                // Refused before anything changed (a held lock): on record.
                let refused = RunFinished { refused: Some(error.to_string()), ..RunFinished::default() };
                self.store.append(&self.entry(Kind::RunFinished, &refused))?;
                Err(error)
            }
        }
    }

    /// The run's end as an event; the audit trail records it with the command's own detail.
    fn finished(&self, summary: Summary) -> Event {
        let mut record = summary.record.map(|r| self.entry(Kind::RunFinished, &r));
        if let (Some(record), Some(digest)) = (record.as_mut(), summary.digest) {
            // Pinned during the rollout (an app without a feed): the record says which bytes ran.
            record.digest = Some(digest);
        }
        Event::RunFinished {
            ok: summary.ok,
            failed: summary.failed,
            skipped: summary.skipped,
            interrupted: summary.interrupted,
            ms: summary.ms,
            stopped: summary.stopped,
            record: record.map(Box::new),
        }
    }

    /// `run_finished` of a run that a signal stopped before its work could report.
    fn record_interrupted(&self) -> Result<(), Error> {
        let interrupted = RunFinished { interrupted: true, ..RunFinished::default() };
        self.store.append(&self.entry(Kind::RunFinished, &interrupted))?;
        Ok(())
    }

    /// The notifiers of this run, when it is a deployment and any are configured for its
    /// environment: a shared HTTP client and each notifier with its URL resolved. A URL that
    /// cannot be resolved (its variable unset) is reported as a delivery that failed.
    fn notifiers(&self) -> Option<Vec<(crate::inventory::Notifier, Result<Secret, String>)>> {
        if !matches!(self.base.command.as_str(), "deploy" | "promote" | "rollback") {
            return None;
        }
        let wanted = notifiers_of(&self.inventory, &self.environment.name);
        (!wanted.is_empty()).then_some(wanted)
    }

    /// Sends the `moment` notice to every notifier that wants it, all at once, and puts each
    /// delivery on the event stream as it ends. A send cut short (a second signal) is put there
    /// as not delivered when it is dropped, so every notice is on record either way.
    async fn notify(
        &self,
        notifiers: &[(crate::inventory::Notifier, Result<Secret, String>)],
        events: &Events,
        moment: Moment,
        targets: Vec<crate::notify::TargetOutcome>,
        digest: Option<String>,
        refused: Option<String>,
    ) {
        let actor = self.store.actor().describe();
        let notice = crate::notify::Notice {
            moment,
            app: self.base.app.clone().unwrap_or_default(),
            environment: self.environment.name.clone(),
            version: self.base.version.clone().unwrap_or_default(),
            digest,
            run: self.base.run.clone(),
            actor: crate::secret::mask(&actor, &self.secrets),
            time: crate::time::now_rfc3339(),
            targets,
            refused,
        };
        let source = format!("ferry://{}", self.store.actor().host);
        let client = crate::notify::client();
        let sends = notifiers.iter().filter(|(n, _)| n.on.contains(&moment)).map(|(n, url)| {
            let (client, notice, source) = (&client, &notice, &source);
            let mut unfinished = Unfinished { events, notifier: Some(n.name.clone()), moment };
            async move {
                let failed = |error: String| crate::notify::Delivery {
                    notifier: n.name.clone(),
                    attempts: 0,
                    delivered: false,
                    error: Some(error),
                };
                let delivery = match (client, url) {
                    (Ok(client), Ok(url)) => {
                        let id = uuid::Uuid::now_v7().to_string();
                        let body = crate::notify::payload(n.format, notice, source, &id);
                        crate::notify::send(
                            client,
                            &n.name,
                            url,
                            n.format,
                            &body,
                            crate::notify::FIRST_BACKOFF,
                        )
                        .await
                    }
                    (Err(e), _) => failed(format!("no HTTP client: {e}")),
                    (_, Err(e)) => failed(format!("its url: {e}")),
                };
                unfinished.done();
                let _ = events.send(Event::Notified {
                    notifier: delivery.notifier,
                    moment,
                    delivered: delivery.delivered,
                    attempts: delivery.attempts,
                    error: delivery.error,
                });
            }
        });
        futures_join_all(sends).await;
    }

    /// The audit trail first (an outcome is on record before it is shown), then the renderer.
    fn subscribers(&self) -> Vec<Box<dyn Subscriber>> {
        let command = self.base.command.clone();
        let mut trail =
            AuditTrail::new(Arc::clone(&self.store), &self.base.run, &command, &self.environment.name);
        if let Some(app) = &self.base.app {
            trail = trail.with_app(app);
        }
        let reporter = Reporter::new(self.output);
        let reporter = if self.quiet { reporter.quiet() } else { reporter };
        vec![Box::new(trail), Box::new(reporter)]
    }

    /// An entry of this run.
    fn entry(&self, kind: Kind, detail: &impl serde::Serialize) -> Entry {
        let typed = records::entry(kind, detail);
        Entry { kind: typed.kind, detail: typed.detail, ..self.base.clone() }
    }

    /// The holder's record; since and expiry are stamped when the lock is actually taken.
    fn lock_info(&self, message: &str) -> LockInfo {
        LockInfo {
            holder: self.store.actor().describe(),
            run: self.base.run.clone(),
            message: message.to_string(),
            ..LockInfo::default()
        }
    }

    /// Takes the environment lock on the run's `targets` (with `--limit`, only those; the
    /// store's lease covers the whole environment), and records it. Targets that cannot be
    /// reached are left out and returned; see the module docs. The lock keeps the connections
    /// open; the work under it uses them.
    async fn take_lock(&self, targets: &[String]) -> Result<Held, Error> {
        let Some((timing, message)) = &self.lock else { return Ok((None, Vec::new())) };
        let info = self.lock_info(message);
        let name = self.environment.name.clone();
        let chosen: Vec<&crate::inventory::Target> =
            targets.iter().filter_map(|t| self.inventory.target(t)).collect();
        let started = Instant::now();
        let mut unreached = Vec::new();
        let mut connections = Vec::new();
        for (target, opened) in connect_all(&self.inventory, &chosen, &self.ssh).await {
            match opened {
                Ok(c) => connections.push((target, c)),
                Err(e) => unreached.push(Unreached {
                    target,
                    status: e.status(),
                    error: e.to_string(),
                    duration: started.elapsed(),
                }),
            }
        }
        let held = lock::lock_environment(
            Some(&*self.store),
            &name,
            &info,
            timing.ttl,
            connections,
            false,
            timing.wait,
        )
        .await?;
        unreached.extend(held.unreachable.iter().map(|(target, why)| Unreached {
            target: target.clone(),
            status: Status::Unreachable,
            error: format!("cannot lock environment {name} there: {why}"),
            duration: started.elapsed(),
        }));
        // In the run's target order, whichever step found them.
        unreached.sort_by_key(|u| targets.iter().position(|t| *t == u.target));
        let names: Vec<String> = targets.iter().filter(|t| held.connection(t).is_some()).cloned().collect();
        let (lease_fence, lease_previous) = held.lease_takeover();
        if let Some(previous) = lease_previous {
            let change = LockChange {
                reason: Some("expired".into()),
                previous: Some(previous.describe()),
                ..LockChange::default()
            };
            self.store.append(&Entry {
                targets: vec![crate::store::LEASE_TARGET.into()],
                ..self.entry(Kind::LockBroken, &change)
            })?;
        }
        for (target, taken) in &held.taken_over {
            let previous = match taken {
                Taken::Expired(p) | Taken::Forced(p) => p.as_ref().map(LockInfo::describe),
                Taken::Fresh | Taken::Reentrant => None,
            };
            let change = LockChange { reason: Some("expired".into()), previous, ..LockChange::default() };
            self.store
                .append(&Entry { targets: vec![target.clone()], ..self.entry(Kind::LockBroken, &change) })?;
        }
        let change = LockChange {
            expires: Some(crate::time::format_ms(held.info().expires_ms)),
            fences: Some(
                held.fences
                    .iter()
                    .cloned()
                    .chain(lease_fence.map(|f| (crate::store::LEASE_TARGET.to_string(), f)))
                    .collect(),
            ),
            ..LockChange::default()
        };
        self.store.append(&Entry { targets: names, ..self.entry(Kind::LockAcquired, &change) })?;
        Ok((Some(Arc::new(held)), unreached))
    }

    /// Keeps the lock from expiring under a run that outlives its TTL: pushes the expiry one
    /// TTL ahead at every third of it.
    fn renew_while_running(&self, held: Arc<EnvironmentLock>) -> Renewal {
        let ttl = self.lock.as_ref().map_or(Duration::from_secs(3600), |(t, _)| t.ttl);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_secs(1));
            loop {
                // Stops only between rounds: a round cut short could rewrite the lock after
                // the release removed it.
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                for (target, renewal) in held.renew(ttl).await {
                    if renewal != lock::Renewal::Renewed {
                        tracing::warn!(target = %target, ?renewal, "lock not renewed");
                    }
                }
            }
        });
        Renewal { stop, task }
    }

    /// Releases the lock and records it (naming the targets where it could not be removed).
    async fn release_lock(&self, held: Arc<EnvironmentLock>, quick: bool) -> Result<(), Error> {
        let Ok(held) = Arc::try_unwrap(held) else {
            tracing::warn!("lock still shared at release; it expires after its TTL");
            return Ok(());
        };
        let stuck = if quick {
            tokio::time::timeout(QUICK_RELEASE, held.release())
                .await
                .unwrap_or_else(|_| vec!["(timed out)".into()])
        } else {
            held.release().await
        };
        let change = LockChange { not_released: Some(stuck), ..LockChange::default() };
        self.store.append(&self.entry(Kind::LockReleased, &change))?;
        Ok(())
    }
}

/// Installs the SIGINT and SIGTERM handler: the first signal sets `cancel` (graceful), the
/// second asks the session to quit now.
fn signals() -> (watch::Receiver<Stop>, Cancel) {
    let (stop_tx, stop) = watch::channel(Stop::Running);
    let (cancel_tx, cancel) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            tracing::warn!("cannot install the signal handlers");
            return;
        };
        let next = async |int: &mut tokio::signal::unix::Signal, term: &mut tokio::signal::unix::Signal| {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        };
        next(&mut int, &mut term).await;
        eprintln!("interrupted: finishing running targets, starting no more (Ctrl-C again to quit now)");
        let _ = cancel_tx.send(true);
        let _ = stop_tx.send(Stop::Graceful);
        next(&mut int, &mut term).await;
        eprintln!("interrupted again: quitting now; recording the run and releasing the lock");
        let _ = stop_tx.send(Stop::Now);
    });
    (stop, cancel)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().collect::<String>() + chars.as_str())
}

/// Secret values this machine can read for the environment's apps: masked in any output.
pub fn known_secrets(inventory: &Inventory, environment: &str) -> Vec<Secret> {
    let Ok(env) = inventory.environment(environment) else { return Vec::new() };
    let mut out = Vec::new();
    for app in &inventory.apps {
        for (name, def) in crate::vars::secret_defs(app, env) {
            match crate::vars::read_source(inventory, name, def, &super::process_env) {
                Ok(secret) => out.push(secret),
                // A command that fails here would otherwise leave its value unmasked without a
                // word (an unset variable or a missing file has no value on this machine to
                // leak); its stderr is already masked with the values known so far.
                Err(crate::vars::VarsError::MissingSecret(d) | crate::vars::VarsError::InvalidSecret(d))
                    if matches!(def.source, crate::inventory::SecretSource::Command { .. }) =>
                {
                    eprintln!("note: {}; its value is not masked in this output", d.message);
                }
                Err(_) => {}
            }
        }
    }
    // A webhook URL is a secret too (its path or query is the credential): masked wherever a
    // hook, a target or a receiver might print it, whole or in pieces.
    for (_, url) in notifiers_of(inventory, &env.name) {
        if let Ok(url) = url {
            out.extend(crate::notify::url_secrets(&url));
        }
    }
    out
}

/// The exit code of a command that works on each target (`remove`, `prune`): 130 interrupted,
/// 4 when a host key was refused, 0 when every target is ok and the run is on record, else 1
/// (a run whose outcome is not on record did not fully succeed).
pub fn targets_exit_code(
    statuses: impl IntoIterator<Item = Status>,
    interrupted: bool,
    audited: bool,
) -> i32 {
    let statuses: Vec<Status> = statuses.into_iter().collect();
    if interrupted {
        EXIT_INTERRUPTED
    } else if statuses.contains(&Status::Refused) {
        crate::error::EXIT_REFUSED
    } else if statuses.iter().all(|s| *s == Status::Ok) && audited {
        0
    } else {
        1
    }
}

/// The notifiers configured for `environment`, each with its URL resolved (or why it could not
/// be: its variable unset, its file missing).
fn notifiers_of(
    inventory: &Inventory,
    environment: &str,
) -> Vec<(crate::inventory::Notifier, Result<Secret, String>)> {
    inventory
        .notifiers
        .iter()
        .filter(|n| n.environments.as_ref().is_none_or(|e| e.iter().any(|name| name == environment)))
        .map(|n| {
            let name = format!("notify.{}.url", n.name);
            let url = crate::vars::read_source(inventory, &name, &n.url, &super::process_env)
                .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string());
            (n.clone(), url)
        })
        .collect()
}

/// A notice being sent; dropped before it ended (the run's end passed its grace, or a second
/// signal), it is put on the event stream as not delivered.
struct Unfinished<'a> {
    events: &'a Events,
    /// `None` once the delivery's own event went out.
    notifier: Option<String>,
    moment: Moment,
}

impl Unfinished<'_> {
    /// The delivery ended: its own event goes out instead.
    fn done(&mut self) {
        self.notifier = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(notifier) = self.notifier.take() {
            let _ = self.events.send(Event::Notified {
                notifier,
                moment: self.moment,
                delivered: false,
                attempts: 0,
                error: Some("cut short: the run ended, or a second signal stopped it, first".into()),
            });
        }
    }
}

/// Runs every future to its end, concurrently on this task, in order of the input.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *slot = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Every target's outcome as the notifications tell it, collected from the event stream (a
/// subscriber, so in the stream's order), and when the stream reached `run_finished`.
#[derive(Clone, Default)]
struct Outcomes {
    targets: Arc<std::sync::Mutex<Vec<crate::notify::TargetOutcome>>>,
    ended: Arc<tokio::sync::Notify>,
    seen_end: Arc<std::sync::atomic::AtomicBool>,
}

impl Outcomes {
    /// The outcomes once `run_finished` went through the stream (every target's end comes
    /// before it); after 5 s, what there is.
    async fn after_the_end(&self) -> Vec<crate::notify::TargetOutcome> {
        let ended = self.ended.notified();
        if !self.seen_end.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
        }
        self.so_far()
    }

    /// The outcomes the stream has carried until now (a run abandoned before its end).
    fn so_far(&self) -> Vec<crate::notify::TargetOutcome> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Subscriber for Outcomes {
    fn event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::TargetFinished { target, status, error, .. } => {
                if let Ok(mut targets) = self.targets.lock() {
                    targets.push(crate::notify::TargetOutcome {
                        target: target.clone(),
                        status: status.label().to_string(),
                        error: error.clone(),
                    });
                }
            }
            Event::RunFinished { .. } => {
                self.seen_end.store(true, std::sync::atomic::Ordering::SeqCst);
                self.ended.notify_waiters();
            }
            _ => {}
        }
        Ok(())
    }
}
