//! What every command that changes targets shares: the Ctrl-C handler, the environment lock
//! taken and released on the record, and the secret values that output must mask.

use crate::audit::{Entry, Log};
use crate::error::Error;
use crate::fanout;
use crate::host::connect_all;
use crate::inventory::{Environment, Inventory};
use crate::lock::{self, LockInfo, Taken};
use crate::secret::Secret;
use crate::vars;

use super::{environment_targets, process_env};

/// Exit code when Ctrl-C interrupted the run.
pub const EXIT_INTERRUPTED: i32 = 130;

/// The first Ctrl-C stops starting targets (running ones finish, locks are released); a second
/// one exits at once, leaving any lock to expire.
pub fn interrupt_handler() -> fanout::Cancel {
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing running targets, starting no more (Ctrl-C again to quit now)");
            let _ = cancel_tx.send(true);
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted again: quitting now; a held lock expires after its --lock-ttl");
            std::process::exit(EXIT_INTERRUPTED);
        }
    });
    cancel
}

/// What a command asks of the environment lock.
pub struct LockRequest {
    /// Holder, run, expiry and message written into the lock.
    pub info: LockInfo,
    /// How long to wait for a held lock.
    pub wait: Option<std::time::Duration>,
    /// Where the local lock lives.
    pub state_dir: std::path::PathBuf,
    /// The environment (every one of its targets is locked).
    pub environment: Environment,
    /// The command taking it (`run`, `deploy`, `rollback`), for the audit records.
    pub command: &'static str,
}

pub use crate::request::LockTiming;

impl LockRequest {
    /// A lock for run `run` of `command`, saying `message` to anyone who finds it held.
    pub fn new(
        inventory: &Inventory,
        environment: &Environment,
        log: &Log,
        (run, command): (&str, &'static str),
        message: String,
        timing: LockTiming,
    ) -> LockRequest {
        let now = crate::time::now_ms();
        LockRequest {
            info: LockInfo {
                holder: log.actor().describe(),
                run: run.to_string(),
                since_ms: now,
                expires_ms: now.saturating_add(i64::try_from(timing.ttl.as_millis()).unwrap_or(i64::MAX / 2)),
                message,
            },
            wait: timing.wait,
            state_dir: super::state_dir(inventory),
            environment: environment.clone(),
            command,
        }
    }
}

/// Takes the environment lock on every target of the environment, and audits it. The lock
/// keeps the connections open; the work under it uses them.
pub async fn take_lock(
    inventory: &Inventory,
    request: &LockRequest,
    ssh: &crate::ssh::Options,
    log: &Log,
) -> Result<lock::EnvironmentLock, Error> {
    let name = request.environment.name.clone();
    let connections = lock::all_connected(
        &name,
        connect_all(inventory, &environment_targets(inventory, &request.environment), ssh).await,
    )?;
    let names: Vec<String> = connections.iter().map(|(n, _)| n.clone()).collect();
    let held = lock::lock_environment(
        Some(&request.state_dir),
        &name,
        &request.info,
        connections,
        false,
        request.wait,
    )
    .await?;
    for (target, taken) in &held.taken_over {
        let previous = match taken {
            Taken::Expired(p) | Taken::Forced(p) => p.as_ref().map(LockInfo::describe),
            Taken::Fresh => None,
        };
        let detail = serde_json::json!({ "reason": "expired", "previous": previous });
        log.append(lock_entry(request, "lock_broken", vec![target.clone()], detail))?;
    }
    let detail = serde_json::json!({ "expires": crate::time::format_ms(request.info.expires_ms) });
    log.append(lock_entry(request, "lock_acquired", names, detail))?;
    Ok(held)
}

/// Releases the lock and audits it (naming the targets where it could not be removed).
pub async fn release_lock(
    held: lock::EnvironmentLock,
    request: &LockRequest,
    log: &Log,
) -> Result<(), Error> {
    let stuck = held.release().await;
    let detail = serde_json::json!({ "not_released": stuck });
    log.append(lock_entry(request, "lock_released", Vec::new(), detail))?;
    Ok(())
}

fn lock_entry(request: &LockRequest, kind: &str, targets: Vec<String>, detail: serde_json::Value) -> Entry {
    Entry {
        kind: kind.into(),
        run: request.info.run.clone(),
        command: request.command.into(),
        environment: Some(request.environment.name.clone()),
        targets,
        detail,
        ..Entry::default()
    }
}

/// Secret values this machine can read for the environment's apps: masked in any output.
pub fn known_secrets(inventory: &Inventory, environment: &str) -> Vec<Secret> {
    let Ok(env) = inventory.environment(environment) else { return Vec::new() };
    let mut out = Vec::new();
    for app in &inventory.apps {
        for (name, def) in vars::secret_defs(app, env) {
            if let Ok(secret) = vars::read_source(inventory, name, def, &process_env) {
                out.push(secret);
            }
        }
    }
    out
}
