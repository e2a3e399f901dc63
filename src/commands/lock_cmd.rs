//! `ferry lock status|acquire|release`: operators' control of environment locks, e.g. to freeze
//! prod during an incident. Taking, releasing and breaking locks is audited.

use super::{audit_log, environment_targets, new_deployment_id, runtime, ssh_options};
use crate::audit::Entry;
use crate::error::Error;
use crate::host::connect_all;
use crate::inventory::Inventory;
use crate::lock::{self, LockInfo, Taken};
use crate::output::{self, OutputFormat, table};
use crate::request::{Lock, LockAction};

/// Runs `ferry lock …`.
pub fn run(inventory: &Inventory, args: &Lock, output: OutputFormat) -> Result<i32, Error> {
    let env = inventory.environment(&args.environment)?;
    let options = ssh_options(inventory, args.connect_timeout)?;
    let log = audit_log(inventory);
    let me = log.actor().describe();
    let record = |kind: &str, run: &str, targets: Vec<String>, detail: serde_json::Value| {
        log.append(Entry {
            kind: kind.into(),
            run: run.into(),
            command: "lock".into(),
            environment: Some(env.name.clone()),
            targets,
            detail,
            ..Entry::default()
        })
    };
    runtime()?.block_on(async {
        let connections = connect_all(inventory, &environment_targets(inventory, env), &options).await;
        match &args.action {
            LockAction::Status => {
                let rows = status_rows(&connections, &env.name).await;
                if output == OutputFormat::Json {
                    let json: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| serde_json::json!({"target": r[0], "state": r[1].to_lowercase(), "holder": r[2], "expires": r[3], "detail": r[4]}))
                        .collect();
                    output::print_json(&serde_json::json!({ "schema": 1, "type": "lock_status", "environment": env.name, "targets": json }))?;
                } else {
                    output::print(&table(&["TARGET", "STATE", "HOLDER", "EXPIRES", "MESSAGE"], &rows))?;
                }
                Ok(0)
            }
            LockAction::Acquire { message, ttl, force } => {
                let connections = lock::all_connected(&env.name, connections)?;
                let info = LockInfo { holder: me.clone(), run: new_deployment_id(), message: message.clone(), ..LockInfo::default() };
                let names: Vec<String> = connections.iter().map(|(n, _)| n.clone()).collect();
                let held = lock::lock_environment(None, &env.name, &info, *ttl, connections, *force, None).await?;
                let info = held.info().clone();
                for (target, taken) in &held.taken_over {
                    let previous = match taken {
                        Taken::Expired(p) | Taken::Forced(p) => p.as_ref().map(LockInfo::describe),
                        Taken::Fresh | Taken::Reentrant => None,
                    };
                    let reason = if matches!(taken, Taken::Forced(_)) { "forced" } else { "expired" };
                    record("lock_broken", &info.run, vec![target.clone()], serde_json::json!({ "reason": reason, "previous": previous }))?;
                }
                record("lock_acquired", &info.run, names, serde_json::json!({ "expires": crate::time::format_ms(info.expires_ms), "message": message, "fences": fences(&held.fences) }))?;
                output::print(&format!("locked {} until {} ({})\n", env.name, crate::time::format_ms(info.expires_ms), info.run))?;
                // The targets' locks outlive this process: close without releasing them.
                drop(held);
                Ok(0)
            }
            LockAction::Release { force } => {
                let connections = lock::all_connected(&env.name, connections)?;
                let mut released = Vec::new();
                for (name, connection) in &connections {
                    let Some(found) = lock::read_remote(connection, &env.name).await.map_err(|e| lock_unreachable(&env.name, name, e))? else {
                        continue;
                    };
                    let holder = found.info;
                    let mine = holder.as_ref().is_some_and(|h| h.holder == me);
                    if !mine && !force {
                        return Err(lock::LockError::Held { environment: env.name.clone(), target: name.clone(), info: holder.map(Box::new) }.into());
                    }
                    lock::unlock_remote(connection, &env.name, None).await.map_err(|e| lock_unreachable(&env.name, name, e))?;
                    let kind = if mine { "lock_released" } else { "lock_broken" };
                    let run = holder.as_ref().map_or("unknown", |h| h.run.as_str()).to_string();
                    record(kind, &run, vec![name.clone()], serde_json::json!({ "previous": holder.as_ref().map(LockInfo::describe), "reason": if mine { "released" } else { "forced" } }))?;
                    released.push(name.clone());
                }
                output::print(&format!("released {} on {} targets\n", env.name, released.len()))?;
                Ok(0)
            }
        }
    })
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
fn fences(fences: &[(String, u64)]) -> std::collections::BTreeMap<String, u64> {
    fences.iter().cloned().collect()
}

fn lock_unreachable(environment: &str, target: &str, e: crate::exec::ExecError) -> lock::LockError {
    lock::LockError::Unreachable {
        environment: environment.to_string(),
        target: target.to_string(),
        message: e.to_string(),
    }
}
