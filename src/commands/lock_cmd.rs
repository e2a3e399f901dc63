//! `ferry lock status|acquire|release`: operators' control of environment locks, e.g. to freeze
//! prod during an incident. Taking, releasing and breaking locks is audited.
//!
//! A target that cannot be reached never stops the others: `acquire` and `release` act on the
//! reachable targets, name the others on stderr and exit 1 (4 when a host key was refused);
//! `status` shows it `UNREACHABLE` (or `REFUSED`, for a host key) and exits 1 (or 4).

use super::{environment_targets, new_deployment_id, runtime, ssh_options, store};
use crate::audit::Entry;
use crate::error::Error;
use crate::host::connect_all;
use crate::inventory::Inventory;
use crate::lock::{self, LockInfo, Taken};
use crate::output::{self, OutputFormat, table};
use crate::records::{self, Kind, LockChange};
use crate::request::{Lock, LockAction};

/// Runs `ferry lock …`.
pub fn run(inventory: &Inventory, args: &Lock, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.environment)?;
    let options = ssh_options(inventory, args.connect_timeout)?;
    let store = store(inventory)?;
    let operator = Operator { me: store.actor().describe(), store, environment: &env.name };
    runtime()?.block_on(async {
        let connections = connect_all(inventory, &environment_targets(inventory, env), &options).await;
        let mut missed: Vec<(String, String)> = Vec::new();
        let mut refused = false;
        match &args.action {
            LockAction::Status => {
                let mut rows = status_rows(&connections, &env.name).await;
                if let Some(info) = operator.store.lease_holder(&env.name)? {
                    let row = vec![
                        STORE_TARGET.to_string(),
                        "LOCKED".into(),
                        info.holder.clone(),
                        crate::time::format_ms(info.expires_ms),
                        info.message.clone(),
                    ];
                    rows.insert(0, row);
                }
                print_status(&rows, &env.name, output)?;
                if rows.iter().any(|r| r[1] == "REFUSED") {
                    return Ok(crate::error::EXIT_REFUSED);
                }
                if rows.iter().any(|r| r[1] == "UNREACHABLE") {
                    return Ok(1);
                }
            }
            LockAction::Acquire { message, ttl, force } => {
                let connections = reachable(connections, &mut missed, &mut refused);
                missed.extend(operator.acquire(connections, message, *ttl, *force).await?);
            }
            LockAction::Release { force } => {
                let connections = reachable(connections, &mut missed, &mut refused);
                missed.extend(operator.release(&connections, *force).await?);
            }
        }
        for (target, why) in &missed {
            eprintln!("warning: {target} was not reached, its lock is unchanged: {why}");
        }
        Ok(if refused { crate::error::EXIT_REFUSED } else { i32::from(!missed.is_empty()) })
    })
}

/// The open connections; the others go to `missed` (and a refused host key sets `refused`).
fn reachable(
    connections: Vec<crate::host::Opened>,
    missed: &mut Vec<(String, String)>,
    refused: &mut bool,
) -> Vec<crate::host::Connected> {
    let mut open = Vec::new();
    for (name, connection) in connections {
        match connection {
            Ok(c) => open.push((name, c)),
            Err(e) => {
                *refused |= e.is_host_key();
                missed.push((name, format!("{}: {e}", e.status().label())));
            }
        }
    }
    open
}

/// An operator's hand on one environment's lock, with every change on record.
/// How the shared store's lease is named where targets are listed.
const STORE_TARGET: &str = crate::store::LEASE_TARGET;

struct Operator<'a> {
    store: std::sync::Arc<dyn crate::store::Store>,
    me: String,
    environment: &'a str,
}

impl Operator<'_> {
    fn record(&self, kind: Kind, run: &str, targets: Vec<String>, change: &LockChange) -> Result<(), Error> {
        self.store.append(&Entry {
            run: run.into(),
            command: "lock".into(),
            environment: Some(self.environment.to_string()),
            targets,
            ..records::entry(kind, change)
        })?;
        Ok(())
    }

    /// Takes the lock on every target of `connections` until `ttl` (`--force`: also from
    /// someone else); returns the targets where the lock command could not run, with why.
    async fn acquire(
        &self,
        connections: Vec<crate::host::Connected>,
        message: &str,
        ttl: std::time::Duration,
        force: bool,
    ) -> Result<Vec<(String, String)>, Error> {
        let info = LockInfo {
            holder: self.me.clone(),
            run: new_deployment_id(),
            message: message.to_string(),
            by_hand: true,
            ..LockInfo::default()
        };
        let mut names: Vec<String> = connections.iter().map(|(n, _)| n.clone()).collect();
        // --force takes over a shared store's live lease too (the targets' locks are taken
        // over by lock_environment itself).
        if force
            && let Some(previous) = self.store.break_lease(self.environment, None)?
            && previous.holder != self.me
        {
            let change = LockChange {
                reason: Some("forced".into()),
                previous: Some(previous.describe()),
                ..LockChange::default()
            };
            self.record(Kind::LockBroken, &info.run, vec![STORE_TARGET.into()], &change)?;
        }
        let held = lock::lock_environment(
            Some(&*self.store),
            self.environment,
            &info,
            ttl,
            connections,
            force,
            None,
        )
        .await?;
        let info = held.info().clone();
        names.retain(|n| held.connection(n).is_some());
        let missed: Vec<(String, String)> =
            held.unreachable.iter().map(|(t, why)| (t.clone(), format!("unreachable: {why}"))).collect();
        let (lease_fence, lease_previous) = held.lease_takeover();
        if let Some(previous) = lease_previous {
            let change = LockChange {
                reason: Some("expired".into()),
                previous: Some(previous.describe()),
                ..LockChange::default()
            };
            self.record(Kind::LockBroken, &info.run, vec![STORE_TARGET.into()], &change)?;
        }
        for (target, taken) in &held.taken_over {
            let previous = match taken {
                Taken::Expired(p) | Taken::Forced(p) => p.as_ref().map(LockInfo::describe),
                Taken::Fresh | Taken::Reentrant => None,
            };
            let reason = if matches!(taken, Taken::Forced(_)) { "forced" } else { "expired" };
            let change = LockChange { reason: Some(reason.into()), previous, ..LockChange::default() };
            self.record(Kind::LockBroken, &info.run, vec![target.clone()], &change)?;
        }
        let expires = crate::time::format_ms(info.expires_ms);
        let change = LockChange {
            expires: Some(expires.clone()),
            message: Some(message.into()),
            fences: Some(
                held.fences
                    .iter()
                    .cloned()
                    .chain(lease_fence.map(|f| (STORE_TARGET.to_string(), f)))
                    .collect(),
            ),
            ..LockChange::default()
        };
        self.record(Kind::LockAcquired, &info.run, names, &change)?;
        output::print(&format!("locked {} until {expires} ({})\n", self.environment, info.run))?;
        // The targets' locks, and a shared store's lease, outlive this process: close without
        // releasing them.
        held.keep_lease();
        drop(held);
        Ok(missed)
    }

    /// Releases the lock where it is held: ours, or anyone's with `--force`; returns the
    /// targets that could not be asked, with why.
    async fn release(
        &self,
        connections: &[crate::host::Connected],
        force: bool,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut missed = Vec::new();
        let environment = self.environment;
        let mut released = 0;
        if let Some(holder) = self.store.lease_holder(environment)? {
            let mine = holder.holder == self.me;
            if !mine && !force {
                return Err(lock::LockError::Held {
                    environment: environment.into(),
                    target: STORE_TARGET.into(),
                    info: Some(Box::new(holder)),
                }
                .into());
            }
            if let Some(holder) = self.store.break_lease(environment, Some(&holder.run))? {
                let change = LockChange {
                    previous: Some(holder.describe()),
                    reason: Some(if mine { "released" } else { "forced" }.into()),
                    ..LockChange::default()
                };
                let kind = if mine { Kind::LockReleased } else { Kind::LockBroken };
                self.record(kind, &holder.run, vec![STORE_TARGET.into()], &change)?;
                released += 1;
            }
        }
        for (name, connection) in connections {
            let found = match lock::read_remote(connection, environment).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    missed.push((name.clone(), format!("unreachable: {e}")));
                    continue;
                }
            };
            let holder = found.info;
            let mine = holder.as_ref().is_some_and(|h| h.holder == self.me);
            if !mine && !force {
                let info = holder.map(Box::new);
                return Err(lock::LockError::Held {
                    environment: environment.into(),
                    target: name.clone(),
                    info,
                }
                .into());
            }
            if let Err(e) = lock::unlock_remote(connection, environment, None).await {
                missed.push((name.clone(), format!("unreachable: {e}")));
                continue;
            }
            let kind = if mine { Kind::LockReleased } else { Kind::LockBroken };
            let run = holder.as_ref().map_or("unknown", |h| h.run.as_str()).to_string();
            let change = LockChange {
                previous: holder.as_ref().map(LockInfo::describe),
                reason: Some(if mine { "released" } else { "forced" }.into()),
                ..LockChange::default()
            };
            self.record(kind, &run, vec![name.clone()], &change)?;
            released += 1;
        }
        output::print(&format!("released {environment} on {}\n", output::count(released, "target")))?;
        Ok(missed)
    }
}

/// The status rows as a table, or as JSON.
fn print_status(rows: &[Vec<String>], environment: &str, output: OutputFormat) -> Result<(), Error> {
    if output == OutputFormat::Json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"target": r[0], "state": r[1].to_lowercase(), "holder": r[2], "expires": r[3], "detail": r[4]}))
            .collect();
        output::print_json(
            &serde_json::json!({ "schema": 1, "type": "lock_status", "environment": environment, "targets": json }),
        )?;
    } else {
        output::print(&table(&["TARGET", "STATE", "HOLDER", "EXPIRES", "MESSAGE"], rows))?;
    }
    Ok(())
}

/// One table row per target: its lock's state, holder, expiry and message.
async fn status_rows(connections: &[crate::host::Opened], environment: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (name, connection) in connections {
        let row = match connection {
            Err(e) => {
                let state = if e.is_host_key() { "REFUSED" } else { "UNREACHABLE" };
                vec![name.clone(), state.into(), String::new(), String::new(), e.to_string()]
            }
            Ok(c) => match lock::read_remote(&**c, environment).await {
                Ok(None) => vec![name.clone(), "free".into(), String::new(), String::new(), String::new()],
                Ok(Some(found @ lock::Found { info: Some(_), .. })) => {
                    let expired = found.expired();
                    let Some(info) = found.info else { continue };
                    vec![
                        name.clone(),
                        if expired { "EXPIRED".into() } else { "LOCKED".into() },
                        info.holder.clone(),
                        crate::time::format_ms(info.expires_ms),
                        info.message.clone(),
                    ]
                }
                Ok(Some(lock::Found { info: None, .. })) => vec![
                    name.clone(),
                    "LOCKED".into(),
                    "?".into(),
                    String::new(),
                    "no holder recorded".into(),
                ],
                Err(e) => vec![name.clone(), "UNKNOWN".into(), String::new(), String::new(), e.to_string()],
            },
        };
        rows.push(row);
    }
    rows
}
