//! `ferry lock status|acquire|release`: operators' control of environment locks, e.g. to freeze
//! prod during an incident. Taking, releasing and breaking locks is audited.

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
                print_status(&rows, &env.name, output)?
            }
            LockAction::Acquire { message, ttl, force } => {
                let connections = lock::all_connected(&env.name, connections)?;
                operator.acquire(connections, message, *ttl, *force).await?;
            }
            LockAction::Release { force } => {
                let connections = lock::all_connected(&env.name, connections)?;
                operator.release(&connections, *force).await?;
            }
        }
        Ok(0)
    })
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

    /// Takes the lock on every target until `ttl` (`--force`: also from someone else).
    async fn acquire(
        &self,
        connections: Vec<crate::host::Connected>,
        message: &str,
        ttl: std::time::Duration,
        force: bool,
    ) -> Result<(), Error> {
        let info = LockInfo {
            holder: self.me.clone(),
            run: new_deployment_id(),
            message: message.to_string(),
            by_hand: true,
            ..LockInfo::default()
        };
        let names: Vec<String> = connections.iter().map(|(n, _)| n.clone()).collect();
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
        Ok(())
    }

    /// Releases the lock where it is held: ours, or anyone's with `--force`.
    async fn release(&self, connections: &[crate::host::Connected], force: bool) -> Result<(), Error> {
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
            let unreachable = |e| lock_unreachable(environment, name, e);
            let Some(found) = lock::read_remote(connection, environment).await.map_err(unreachable)? else {
                continue;
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
            lock::unlock_remote(connection, environment, None).await.map_err(unreachable)?;
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
        Ok(())
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
            Err(e) => vec![name.clone(), "UNREACHABLE".into(), String::new(), String::new(), e.to_string()],
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

/// Each target's fencing number, for the `lock_acquired` record.
fn lock_unreachable(environment: &str, target: &str, e: crate::exec::ExecError) -> lock::LockError {
    lock::LockError::Unreachable {
        environment: environment.to_string(),
        target: target.to_string(),
        message: e.to_string(),
    }
}
