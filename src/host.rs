//! A connection to one target, whatever carries it: SSH, a local `sh` for `transport = "local"`,
//! or (in unit tests) a scripted fake.
//!
//! Fan-out, deploy, the lock and trust only see the [`Host`] trait, so that which transport
//! carries a command is the target's business, and so that the steps built on it can be tested
//! against a fake that produces faults (a lost link after a given step, a failing docker
//! command) on demand.
//!
//! sshd hands the command line of an SSH exec request to the user's login shell, and login
//! shells disagree on quoting (fish reads `\\` and `\'` inside single quotes; csh expands `!`).
//! So the only command line ferry sends is the constant [`REMOTE_COMMAND`], which they all read
//! alike, and the real script travels on stdin ahead of the command's own stdin (see
//! [`frame`]): the login shell never parses a byte ferry rendered.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::{ExecError, ExitStatus, OutputSink, Stream, Terminal};
use crate::inventory::{Inventory, Target, Transport};
use crate::ssh::{self, Endpoint, SshError, SshSession};

#[cfg(test)]
pub mod fake;
pub mod resolve;

/// A boxed future, so that [`Host`] stays usable as `dyn Host` (async trait methods are not
/// dyn-compatible, and the `async-trait` crate is not in the tree).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An open connection to one target.
pub trait Host: Send + Sync {
    /// The target's name in the inventory.
    fn name(&self) -> &str;

    /// The target for messages, e.g. `web-1 (deploy@10.0.0.11:22)`.
    fn describe(&self) -> String;

    /// Whether commands run on the runner itself (`transport = "local"`): the runner's own
    /// audit log is then the target's record, so no mirror line is written there.
    fn is_local(&self) -> bool;

    /// Runs a shell command line (`/bin/sh -c`), with `stdin` sent first and then EOF, output
    /// streamed to `sink` as it arrives, and a deadline after which the command is killed.
    fn exec<'a>(
        &'a self,
        command: &'a str,
        stdin: Option<&'a [u8]>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>>;

    /// Runs a shell command line with `stdin` streamed into it as the command reads (an image
    /// archive into `docker load`, `--archive`), output streamed to `sink` meanwhile, and a
    /// deadline after which the command is killed. SSH and the runner stream; this default (the
    /// fake's) reads `stdin` whole and runs [`Host::exec`].
    fn exec_reader<'a>(
        &'a self,
        command: &'a str,
        stdin: ByteReader<'a>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            let mut stdin = stdin;
            let mut data = Vec::new();
            stdin.read_to_end(&mut data).await.map_err(|e| ExecError::Spawn(e.to_string()))?;
            self.exec(command, Some(&data), deadline, sink).await
        })
    }

    /// Runs a shell command line whose stdin stays open (and empty) until `stop` resolves and
    /// then gets EOF; output streamed to `sink`. For commands that run until ferry stops them
    /// (`docker logs --follow`): EOF is the stop signal the remote script waits for, and it
    /// also comes when the link drops, so nothing is left running on the target.
    fn exec_until<'a>(
        &'a self,
        command: &'a str,
        stop: BoxFuture<'a, ()>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        let _ = (command, stop, sink);
        Box::pin(async { Err(ExecError::Spawn("this transport cannot hold a command open".into())) })
    }

    /// Runs a shell command line on a terminal: the local one (see [`Terminal`]), through a PTY
    /// on the target. Ends when the command does.
    fn interactive<'a>(
        &'a self,
        command: &'a str,
        terminal: Terminal<'a>,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        let _ = (command, terminal);
        Box::pin(async { Err(ExecError::Spawn("this transport has no interactive sessions".into())) })
    }

    /// Closes the connection politely (a no-op where there is nothing to close).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A stream of bytes for a command's stdin ([`Host::exec_reader`]).
pub type ByteReader<'a> = Pin<Box<dyn tokio::io::AsyncRead + Send + 'a>>;

/// A target's name with its open connection.
pub type Connected = (String, Arc<dyn Host>);

/// A target's name with its open connection, or why it could not be opened.
pub type Opened = (String, Result<Arc<dyn Host>, SshError>);

/// A shared connection is a connection: steps take `&dyn Host`, callers hold `Arc<dyn Host>`.
impl<H: Host + ?Sized> Host for Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn is_local(&self) -> bool {
        (**self).is_local()
    }

    fn exec<'a>(
        &'a self,
        command: &'a str,
        stdin: Option<&'a [u8]>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        (**self).exec(command, stdin, deadline, sink)
    }

    fn exec_reader<'a>(
        &'a self,
        command: &'a str,
        stdin: ByteReader<'a>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        (**self).exec_reader(command, stdin, deadline, sink)
    }

    fn exec_until<'a>(
        &'a self,
        command: &'a str,
        stop: BoxFuture<'a, ()>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        (**self).exec_until(command, stop, sink)
    }

    fn interactive<'a>(
        &'a self,
        command: &'a str,
        terminal: Terminal<'a>,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        (**self).interactive(command, terminal)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        (**self).close()
    }
}

/// The one command line ferry sends over SSH. It reads a decimal length and a newline from
/// stdin, then exactly that many bytes of script (`dd bs=1` never reads past them, unlike
/// buffered readers), and replaces itself with `/bin/sh -c SCRIPT`, whose stdin is what is left:
/// the command's own payload (an env file, a password), byte for byte. The text inside the
/// single quotes has no `\\`, `'` or `!`, the characters on which shells' single quotes differ
/// (tests run it under bash, dash, sh and fish). `$(…; echo .)` keeps the script's trailing newlines, which a here-document needs.
pub const REMOTE_COMMAND: &str = "exec /bin/sh -c 'IFS= read -r n || exit 126; \
    s=$(dd bs=1 count=\"$n\" 2>/dev/null; echo .); exec /bin/sh -c \"${s%.}\"'";

/// What [`REMOTE_COMMAND`] reads on stdin: the script's length, a newline, the script, then
/// the command's own stdin (if any).
pub fn frame(script: &str, stdin: Option<&[u8]>) -> Vec<u8> {
    let header = format!("{}\n", script.len());
    let payload = stdin.unwrap_or_default();
    let mut framed = Vec::with_capacity(header.len() + script.len() + payload.len());
    framed.extend_from_slice(header.as_bytes());
    framed.extend_from_slice(script.as_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// How long past its deadline a command may take to end before ferry stops waiting for it (see
/// [`Bounded`]). The transport signals the command and closes its channel at the deadline
/// without waiting for a round trip, so on a working session this is never reached.
pub const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// How long closing a connection politely may take (see [`Bounded`]).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection whose every operation with a deadline ends by it, whatever state the transport
/// is in: a command given a deadline answers within the deadline plus [`ANSWER_GRACE`] (else it
/// is [`ExecError::Lost`], naming the target and the time waited), and closing takes at most
/// [`CLOSE_GRACE`].
///
/// Why a wrapper around the transport, and not only the transport's own deadline: over SSH,
/// the session's deadline covers waiting for the command's output, and russh's keepalive ends a
/// session whose peer went silent. But opening the channel, sending the request and stdin,
/// signalling the command after its deadline and closing are all handed to russh's session
/// task, and each completes only when that task gets to it. When that task is itself waiting
/// (on a socket write, whose only limit is the kernel's TCP retransmission timeout of about
/// 15 minutes, or on handing a message to a channel), its keepalive timer is not polled
/// either, and nothing ends the wait: a link cut that silently dropped packets once kept
/// `ferry deploy` waiting 14 minutes on such a call (issue 15). One bound here, at the only door every
/// command goes through, holds whatever the session does; a lost link then reads as any lost
/// link. Commands without a deadline (`run` without `--deadline`, `logs --follow`, an
/// interactive `exec`) are the user's to stop, as before.
pub struct Bounded<H> {
    inner: H,
}

impl<H: Host> Bounded<H> {
    /// `inner`, bounded.
    pub fn new(inner: H) -> Bounded<H> {
        Bounded { inner }
    }
}

impl<H: Host> Host for Bounded<H> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn exec<'a>(
        &'a self,
        command: &'a str,
        stdin: Option<&'a [u8]>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        let Some(limit) = deadline else { return self.inner.exec(command, stdin, None, sink) };
        Box::pin(async move {
            let bound = limit + ANSWER_GRACE;
            match tokio::time::timeout(bound, self.inner.exec(command, stdin, Some(limit), sink)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ExecError::Lost(format!(
                    "no answer from {} within {} (the command's deadline of {} and {} to stop it): \
                     the link is down or the SSH session is stuck",
                    self.inner.describe(),
                    crate::duration::format(bound),
                    crate::duration::format(limit),
                    crate::duration::format(ANSWER_GRACE),
                ))),
            }
        })
    }

    fn exec_reader<'a>(
        &'a self,
        command: &'a str,
        stdin: ByteReader<'a>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        let Some(limit) = deadline else { return self.inner.exec_reader(command, stdin, None, sink) };
        Box::pin(async move {
            let bound = limit + ANSWER_GRACE;
            match tokio::time::timeout(bound, self.inner.exec_reader(command, stdin, Some(limit), sink)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(ExecError::Lost(format!(
                    "no answer from {} within {}: the link is down or the SSH session is stuck",
                    self.inner.describe(),
                    crate::duration::format(bound),
                ))),
            }
        })
    }

    fn exec_until<'a>(
        &'a self,
        command: &'a str,
        stop: BoxFuture<'a, ()>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        self.inner.exec_until(command, stop, sink)
    }

    fn interactive<'a>(
        &'a self,
        command: &'a str,
        terminal: Terminal<'a>,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        self.inner.interactive(command, terminal)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if tokio::time::timeout(CLOSE_GRACE, self.inner.close()).await.is_err() {
                tracing::debug!(target = %self.inner.name(), "closing the connection did not end: dropped");
            }
        })
    }
}

/// A target reached over SSH.
pub struct SshHost {
    name: String,
    description: String,
    session: SshSession,
}

impl Host for SshHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        self.description.clone()
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
            if command.contains('\0') {
                return Err(ExecError::Spawn("a command cannot contain a NUL byte".into()));
            }
            let framed = frame(command, stdin);
            self.session.exec(REMOTE_COMMAND, Some(&framed), deadline, sink).await
        })
    }

    fn exec_reader<'a>(
        &'a self,
        command: &'a str,
        stdin: ByteReader<'a>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            if command.contains('\0') {
                return Err(ExecError::Spawn("a command cannot contain a NUL byte".into()));
            }
            // The framed script first, then the stream: REMOTE_COMMAND hands the rest to it.
            let framed = std::io::Cursor::new(frame(command, None)).chain(stdin);
            self.session.exec_reader(REMOTE_COMMAND, Box::pin(framed), deadline, sink).await
        })
    }

    fn exec_until<'a>(
        &'a self,
        command: &'a str,
        stop: BoxFuture<'a, ()>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            if command.contains('\0') {
                return Err(ExecError::Spawn("a command cannot contain a NUL byte".into()));
            }
            self.session.exec_until(REMOTE_COMMAND, &frame(command, None), stop, sink).await
        })
    }

    fn interactive<'a>(
        &'a self,
        command: &'a str,
        terminal: Terminal<'a>,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            if command.contains('\0') {
                return Err(ExecError::Spawn("a command cannot contain a NUL byte".into()));
            }
            self.session.interactive(REMOTE_COMMAND, &frame(command, None), terminal).await
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.session.close())
    }
}

/// The runner itself (`transport = "local"`): commands run under `/bin/sh -c`.
pub struct LocalHost {
    name: String,
}

impl LocalHost {
    /// The runner, under the target name `name`.
    pub fn new(name: impl Into<String>) -> LocalHost {
        LocalHost { name: name.into() }
    }
}

impl Host for LocalHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("{} (local)", self.name)
    }

    fn is_local(&self) -> bool {
        true
    }

    fn exec<'a>(
        &'a self,
        command: &'a str,
        stdin: Option<&'a [u8]>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(local_exec(command, stdin, deadline, sink))
    }

    fn exec_reader<'a>(
        &'a self,
        command: &'a str,
        stdin: ByteReader<'a>,
        deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(local_exec_reader(command, stdin, deadline, sink))
    }

    fn exec_until<'a>(
        &'a self,
        command: &'a str,
        stop: BoxFuture<'a, ()>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(local_exec_until(command, stop, sink))
    }

    fn interactive<'a>(
        &'a self,
        command: &'a str,
        _terminal: Terminal<'a>,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        // The runner's own terminal is the command's: `docker exec -t` reads its size and
        // follows its resizes itself.
        Box::pin(async move {
            let status = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| ExecError::Spawn(e.to_string()))?;
            local_status(status)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The SSH endpoint of `target`: the inventory's keys, then ssh_config (see [`resolve`]).
/// Commands check every target's resolution before they connect ([`resolve::check_all`], in
/// `ssh_options`), so this fails only if the ssh_config file became unusable during the run.
// The error is the connection error every caller returns anyway (`open`, `connect_all`).
#[allow(clippy::result_large_err)]
pub fn endpoint(inventory: &Inventory, target: &Target) -> Result<Endpoint, SshError> {
    // No fallback to the inventory alone: that would drop HostName, ProxyJump, the known_hosts
    // file or `IdentityAgent none` the user's ssh_config asks for, and dial something else.
    resolve::resolve(inventory, target)
        .map(|r| r.endpoint)
        .map_err(|d| SshError::Settings { target: target.name.clone(), message: d.to_string() })
}

/// `~/x` against `$HOME`, relative paths against the inventory's folder.
pub fn resolve_path(dir: &Path, path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => dir.join(path),
    }
}

/// Opens a connection to `target` (for SSH: connect, check the host key, authenticate).
pub async fn open(
    inventory: &Inventory,
    target: &Target,
    options: &ssh::Options,
) -> Result<Arc<dyn Host>, SshError> {
    open_endpoint(target.transport, &endpoint(inventory, target)?, options).await
}

/// Opens a connection from owned parts (for tasks that outlive the inventory borrow).
pub async fn open_endpoint(
    transport: Transport,
    endpoint: &Endpoint,
    options: &ssh::Options,
) -> Result<Arc<dyn Host>, SshError> {
    match transport {
        Transport::Local => Ok(Arc::new(LocalHost::new(endpoint.name.clone()))),
        Transport::Ssh => {
            let session = SshSession::connect(endpoint, options).await?;
            let port = if endpoint.port == 22 { String::new() } else { format!(":{}", endpoint.port) };
            let description = format!("{} ({}@{}{port})", endpoint.name, endpoint.user, endpoint.host);
            Ok(Arc::new(Bounded::new(SshHost { name: endpoint.name.clone(), description, session })))
        }
    }
}

/// Opens a connection to each of `targets` at once; one result per target, in the same order.
/// Locks use it: they must reach every target of an environment before any work starts.
pub async fn connect_all(inventory: &Inventory, targets: &[&Target], options: &ssh::Options) -> Vec<Opened> {
    let parts: Vec<(Transport, Result<Endpoint, SshError>)> =
        targets.iter().map(|t| (t.transport, endpoint(inventory, t))).collect();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let outcomes = crate::fanout::ordered(
        parts,
        crate::fanout::Limits::parallel(targets.len()),
        |_, (transport, endpoint)| {
            let options = options.clone();
            async move { open_endpoint(transport, &endpoint?, &options).await }
        },
        |_, _| {},
    )
    .await;
    names
        .into_iter()
        .zip(outcomes)
        .map(|(name, outcome)| match outcome {
            Ok(opened) => (name, opened),
            Err(crashed) => (name, Err(SshError::Task(crashed.to_string()))),
        })
        .collect()
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
    F: Fn(Arc<dyn Host>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let opened = connect_all(inventory, targets, options).await;
    let names: Vec<String> = opened.iter().map(|(name, _)| name.clone()).collect();
    let outcomes = crate::fanout::ordered(
        opened,
        crate::fanout::Limits::parallel(targets.len()),
        |_, (_, connection)| {
            let job = connection.map(|c| (Arc::clone(&c), work(c)));
            async move {
                match job {
                    Ok((connection, job)) => {
                        let outcome = job.await;
                        connection.close().await;
                        outcome
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        },
        |_, _| {},
    )
    .await;
    names
        .into_iter()
        .zip(outcomes)
        .map(|(name, outcome)| (name, outcome.unwrap_or_else(|e| Err(e.to_string()))))
        .collect()
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
        // A command may end without reading all of its stdin (a lock script that finds the
        // lock held exits at once): its exit status says how it ended, as over SSH, where the
        // channel just closes. Only another write error means it could not be started.
        match pipe.write_all(data).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(ExecError::Spawn(e.to_string()));
            }
            _ => {}
        }
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
            sink.ready().await;
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
    local_status(status.map_err(|e| ExecError::Lost(e.to_string()))?)
}

/// [`Host::exec_reader`] for the runner: `stdin` copied into the child while its output is read
/// (a command that stops reading early ends the copy, and its exit status says why).
async fn local_exec_reader(
    command: &str,
    mut stdin: ByteReader<'_>,
    deadline: Option<Duration>,
    sink: &mut dyn OutputSink,
) -> Result<ExitStatus, ExecError> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    let (Some(mut pipe), Some(mut out), Some(mut err)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ExecError::Spawn("no pipes".into()));
    };
    let run = async {
        let copy = async move {
            let copied = tokio::io::copy(&mut stdin, &mut pipe).await;
            drop(pipe);
            copied
        };
        tokio::pin!(copy);
        let (mut out_buf, mut err_buf) = ([0u8; 16384], [0u8; 16384]);
        let (mut out_open, mut err_open, mut copying) = (true, true, true);
        while out_open || err_open {
            tokio::select! {
                _ = &mut copy, if copying => copying = false,
                n = out.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => sink.output(Stream::Stdout, &out_buf[..n]),
                },
                n = err.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => sink.output(Stream::Stderr, &err_buf[..n]),
                },
            }
            sink.ready().await;
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
    local_status(status.map_err(|e| ExecError::Lost(e.to_string()))?)
}

/// A local process's end as a target's exit status.
fn local_status(status: std::process::ExitStatus) -> Result<ExitStatus, ExecError> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(ExitStatus::Code(u32::try_from(code).unwrap_or(255))),
        (None, Some(sig)) => Ok(ExitStatus::Signal(signal_name(sig))),
        (None, None) => Err(ExecError::Lost("no exit status".into())),
    }
}

/// [`Host::exec_until`] for the runner: the stdin pipe is closed when `stop` resolves.
async fn local_exec_until(
    command: &str,
    mut stop: BoxFuture<'_, ()>,
    sink: &mut dyn OutputSink,
) -> Result<ExitStatus, ExecError> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    let mut stdin = child.stdin.take();
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ExecError::Spawn("no output pipes".into()));
    };
    let (mut out_buf, mut err_buf) = ([0u8; 16384], [0u8; 16384]);
    let (mut out_open, mut err_open) = (true, true);
    let mut grace_end = None;
    while out_open || err_open {
        let grace = tokio::time::sleep_until(grace_end.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            n = out.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => sink.output(Stream::Stdout, &out_buf[..n]),
            },
            n = err.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => sink.output(Stream::Stderr, &err_buf[..n]),
            },
            () = &mut stop, if grace_end.is_none() => {
                stdin = None;
                grace_end = Some(tokio::time::Instant::now() + crate::ssh::STOP_GRACE);
            }
            () = grace, if grace_end.is_some() => {
                let _ = child.kill().await;
                return Err(ExecError::Deadline(crate::ssh::STOP_GRACE));
            }
        }
        sink.ready().await;
    }
    drop(stdin);
    local_status(child.wait().await.map_err(|e| ExecError::Lost(e.to_string()))?)
}

/// The name of signal number `sig` as `ExitStatus::Signal` spells it (`KILL`, `TERM`).
pub(crate) fn signal_name(sig: i32) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell;
    use std::io::Write;

    /// Runs `command` under `shell -c` (as sshd does with the login shell), `stdin` piped in.
    fn run_under(shell: &str, command: &str, stdin: &[u8]) -> (Vec<u8>, Option<i32>) {
        let mut child = std::process::Command::new(shell)
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // Written from a thread: a large payload must not deadlock against unread output.
        let writer = std::thread::spawn(move || pipe.write_all(&data));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        (output.stdout, output.status.code())
    }

    /// A script with the quoting login shells disagree on, a here-document at its very end,
    /// and a payload of every byte value (and more than a pipe buffer) after it.
    #[test]
    fn the_framed_script_runs_alike_under_every_login_shell_and_leaves_the_payload_byte_for_byte() {
        let script = "printf '%s\\n' 'it'\\''s' \"a\\\\b\" '!x' \"$0\"; od -An -tx1 | sha256sum\nexit 7\ncat <<EOF\nnot reached\nEOF\n";
        let payload: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        let (direct, code) =
            run_under("/bin/sh", &format!("exec /bin/sh -c {}", shell::quote(script).unwrap()), &payload);
        assert_eq!(code, Some(7));
        let shells: Vec<&str> = ["/bin/bash", "/bin/dash", "/bin/sh", "/usr/bin/fish"]
            .into_iter()
            .filter(|s| Path::new(s).exists())
            .collect();
        assert!(shells.len() >= 3, "bash, dash and sh are part of the base system: {shells:?}");
        for login_shell in shells {
            let (framed, code) = run_under(login_shell, REMOTE_COMMAND, &frame(script, Some(&payload)));
            assert_eq!(code, Some(7), "{login_shell}");
            assert_eq!(String::from_utf8_lossy(&framed), String::from_utf8_lossy(&direct), "{login_shell}");
        }
        let text = String::from_utf8_lossy(&direct);
        assert!(text.starts_with("it's\na\\b\n!x\n/bin/sh\n"), "{text}");
    }

    /// `docker logs --follow` under [`crate::docker::logs_script`] ends when the command's stdin
    /// closes (here a stand-in `docker` that prints its arguments and then waits forever).
    #[tokio::test]
    async fn a_follow_ends_when_exec_until_closes_its_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, "#!/bin/sh\necho \"$@\"\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let options = crate::docker::LogsOptions { tail: Some(5), since: None, follow: true };
        let script =
            format!("PATH={}:$PATH\n{}", dir.path().display(), crate::docker::logs_script("c1", &options));
        let mut out = crate::exec::Capture::default();
        let started = std::time::Instant::now();
        let stop = Box::pin(tokio::time::sleep(Duration::from_millis(300)));
        let status = LocalHost::new("t").exec_until(&script, stop, &mut out).await.unwrap();
        assert_eq!(out.text(), "logs --follow --tail 5 c1\n");
        assert_eq!(status, ExitStatus::Code(128 + 15), "the follower was stopped with TERM");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    /// A connection that stopped answering (the fake's `Stall`: packets silently dropped under a
    /// stuck SSH session, which a real peer cannot be made to do on demand) still answers every
    /// command that has a deadline by then, as a lost link, and its close ends.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_answers_by_the_deadline_as_a_lost_link_and_closes() {
        let host = Bounded::new(fake::FakeHost::new("t1").on("", fake::Reply::Stall));
        let started = tokio::time::Instant::now();
        let mut out = crate::exec::Capture::default();
        let outcome = host.exec("true", None, Some(Duration::from_secs(30)), &mut out).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30) + ANSWER_GRACE);
        let said = "no answer from t1 (fake) within 35s (the command's deadline of 30s and 5s to stop it): \
                    the link is down or the SSH session is stuck";
        assert_eq!(outcome, Err(ExecError::Lost(said.into())));
        let closing = tokio::time::Instant::now();
        host.close().await;
        assert_eq!(closing.elapsed(), CLOSE_GRACE);
        // A working connection is not held to anything more than its own answer.
        let working = Bounded::new(fake::FakeHost::new("t2").on("", fake::Reply::ok("hi\n")));
        let quick = tokio::time::Instant::now();
        let status = working.exec("echo hi", None, Some(Duration::from_secs(30)), &mut out).await;
        assert_eq!(
            (status, out.text(), quick.elapsed()),
            (Ok(ExitStatus::Code(0)), "hi\n".into(), Duration::ZERO)
        );
    }

    /// The runner streams a reader into the command while reading its output (more than a
    /// pipe buffer each way, so writing all first would deadlock), and a command that stops
    /// reading early ends the stream instead of hanging it.
    #[tokio::test]
    async fn exec_reader_streams_into_the_command_and_survives_one_that_stops_reading() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(3_000_000).collect();
        let mut out = crate::exec::Capture::default();
        let reader: ByteReader<'_> = Box::pin(std::io::Cursor::new(payload.clone()));
        let status = LocalHost::new("t")
            .exec_reader("tee /dev/stderr | wc -c", reader, Some(Duration::from_secs(30)), &mut out)
            .await
            .unwrap();
        assert_eq!((status, out.text().trim()), (ExitStatus::Code(0), "3000000"));
        let mut out = crate::exec::Capture::default();
        let reader: ByteReader<'_> = Box::pin(std::io::Cursor::new(payload));
        let status = LocalHost::new("t")
            .exec_reader("head -c 10 > /dev/null; exit 3", reader, Some(Duration::from_secs(30)), &mut out)
            .await
            .unwrap();
        assert_eq!(status, ExitStatus::Code(3));
    }

    #[test]
    fn a_script_ending_in_a_here_document_keeps_its_last_newline() {
        let script = "cat <<EOF\nline\nEOF\n";
        let (out, code) = run_under("/bin/bash", REMOTE_COMMAND, &frame(script, None));
        assert_eq!((String::from_utf8_lossy(&out).as_ref(), code), ("line\n", Some(0)));
    }
}
