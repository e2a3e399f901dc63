//! A connection to one target: SSH, or a local `sh` for `transport = "local"`.
//!
//! Fan-out, deploy and trust only see [`Connection`]; which transport carries a command is the
//! target's business. Remote commands are wrapped as `exec /bin/sh -c '…'` so that they mean the
//! same thing whether the remote login shell is bash, dash or sh.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::{ExecError, ExitStatus, OutputSink, Stream};
use crate::inventory::{Inventory, Target, Transport};
use crate::shell;
use crate::ssh::{self, Endpoint, SshError, SshSession};

/// An open connection to a target.
pub enum Connection {
    /// Over SSH.
    Ssh(SshSession),
    /// This machine, through `sh -c`.
    Local,
}

/// The SSH endpoint of `target` (user and identity resolved against the inventory).
pub fn endpoint(inventory: &Inventory, target: &Target) -> Endpoint {
    let user = target.user.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "root".into());
    // One hop: the inventory refuses a jump host that has a jump host itself.
    let jump = target.jump.as_deref().and_then(|name| inventory.target(name)).filter(|j| j.jump.is_none());
    Endpoint {
        name: target.name.clone(),
        host: target.host.clone(),
        port: target.port,
        user,
        identity: target.identity.as_deref().map(|p| resolve_path(&inventory.dir, p)),
        jump: jump.map(|j| Box::new(endpoint(inventory, j))),
    }
}

/// `~/x` against `$HOME`, relative paths against the inventory's folder.
pub fn resolve_path(dir: &Path, path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => dir.join(path),
    }
}

impl Connection {
    /// Opens the connection (for SSH: connect, check the host key, authenticate).
    pub async fn open(
        inventory: &Inventory,
        target: &Target,
        options: &ssh::Options,
    ) -> Result<Connection, SshError> {
        Self::open_endpoint(target.transport, &endpoint(inventory, target), options).await
    }

    /// Opens a connection from owned parts (for tasks that outlive the inventory borrow).
    pub async fn open_endpoint(
        transport: Transport,
        endpoint: &Endpoint,
        options: &ssh::Options,
    ) -> Result<Connection, SshError> {
        match transport {
            Transport::Local => Ok(Connection::Local),
            Transport::Ssh => Ok(Connection::Ssh(SshSession::connect(endpoint, options).await?)),
        }
    }

    /// Runs a shell command line; see [`SshSession::exec`] for the contract.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        deadline: Option<Duration>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        match self {
            Connection::Ssh(session) => {
                let wrapped = format!(
                    "exec /bin/sh -c {}",
                    shell::quote(command).map_err(|e| ExecError::Spawn(e.to_string()))?
                );
                session.exec(&wrapped, stdin, deadline, sink).await
            }
            Connection::Local => local_exec(command, stdin, deadline, sink).await,
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        if let Connection::Ssh(session) = self {
            session.close().await;
        }
    }
}

/// Opens a connection to each of `targets` at once; results in the same order. Locks use it:
/// they must reach every target of an environment before any work starts.
pub async fn connect_all(
    inventory: &Inventory,
    targets: &[&Target],
    options: &ssh::Options,
) -> Vec<(String, Result<Connection, SshError>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let (name, transport) = (target.name.clone(), target.transport);
        let (endpoint, options) = (endpoint(inventory, target), options.clone());
        tasks.spawn(
            async move { (index, name, Connection::open_endpoint(transport, &endpoint, &options).await) },
        );
    }
    let mut out = Vec::new();
    while let Some(Ok(item)) = tasks.join_next().await {
        out.push(item);
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, name, c)| (name, c)).collect()
}

/// Connects to each of `targets` at once and runs `work` on each connection (then closes it);
/// results in target order. A target that cannot be reached gets its connection error. For
/// read-only commands (`status`, `plan --diff`) that ask every target one thing.
pub async fn on_each<T, F, Fut>(
    inventory: &Inventory,
    targets: &[&Target],
    options: &ssh::Options,
    work: F,
) -> Vec<(String, Result<T, String>)>
where
    T: Send + 'static,
    F: Fn(std::sync::Arc<Connection>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (name, connection)) in connect_all(inventory, targets, options).await.into_iter().enumerate()
    {
        let job = connection.map(std::sync::Arc::new).map(|c| (std::sync::Arc::clone(&c), work(c)));
        tasks.spawn(async move {
            let outcome = match job {
                Ok((connection, job)) => {
                    let outcome = job.await;
                    if let Ok(connection) = std::sync::Arc::try_unwrap(connection) {
                        connection.close().await;
                    }
                    outcome
                }
                Err(e) => Err(e.to_string()),
            };
            (index, name, outcome)
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(item)) = tasks.join_next().await {
        out.push(item);
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, name, outcome)| (name, outcome)).collect()
}

async fn local_exec(
    command: &str,
    stdin: Option<&[u8]>,
    deadline: Option<Duration>,
    sink: &mut dyn OutputSink,
) -> Result<ExitStatus, ExecError> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).await.map_err(|e| ExecError::Spawn(e.to_string()))?;
    }
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ExecError::Spawn("no output pipes".into()));
    };
    let run = async {
        let (mut out_buf, mut err_buf) = ([0u8; 16384], [0u8; 16384]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = out.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => sink.output(Stream::Stdout, &out_buf[..n]),
                },
                n = err.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => sink.output(Stream::Stderr, &err_buf[..n]),
                },
            }
        }
        child.wait().await
    };
    let status = match deadline {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(status) => status,
            Err(_) => return Err(ExecError::Deadline(limit)),
        },
        None => run.await,
    };
    let status = status.map_err(|e| ExecError::Lost(e.to_string()))?;
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(ExitStatus::Code(u32::try_from(code).unwrap_or(255))),
        (None, Some(sig)) => Ok(ExitStatus::Signal(signal_name(sig))),
        (None, None) => Err(ExecError::Lost("no exit status".into())),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        1 => "HUP".into(),
        2 => "INT".into(),
        3 => "QUIT".into(),
        6 => "ABRT".into(),
        9 => "KILL".into(),
        11 => "SEGV".into(),
        13 => "PIPE".into(),
        15 => "TERM".into(),
        other => other.to_string(),
    }
}
