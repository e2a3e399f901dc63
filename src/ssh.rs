//! SSH connections to targets, on russh. The only module that names russh types.
//!
//! One [`SshSession`] per target and run: every command of the run opens a channel on it, so the
//! target's sshd forks once per run, not once per command (its fork and re-exec dominate fan-out
//! cost at 50+ hosts). Choices that matter for operators:
//!
//! * Host keys are checked in `check_server_key`, before authentication: an unknown, changed or
//!   revoked key stops the connection before any credential or command is sent. A host is asked
//!   only for the key types known_hosts records for it (as OpenSSH does), so a host recorded by
//!   its RSA key is not refused as "changed" for showing its Ed25519 key first.
//! * A target behind a jump host is reached through it for everything, `ferry trust` included.
//! * TCP_NODELAY on (it saves three delayed-ACK waits per connection), a connect timeout, and
//!   keepalives every 15 s, a peer silent for three of them (45 s) being dead, but no inactivity
//!   timeout: a silent `docker pull` is never cut off, while a dead host is noticed in under a
//!   minute. Keepalives run in russh's session task, so they cannot end a wait while that task
//!   is itself stuck; the deadlines of ferry's own commands are therefore enforced around the
//!   whole call as well, by [`crate::host::Bounded`].
//! * Authentication tries the target's identity files (passphrase from `FERRY_SSH_PASSPHRASE`),
//!   each with its certificate first (`IDENTITY-cert.pub`, `CertificateFile`), then the agent
//!   (`IdentityAgent`, else `SSH_AUTH_SOCK`; its certificates too), then `~/.ssh/id_ed25519`,
//!   `id_ecdsa`, `id_rsa`; `IdentitiesOnly` limits the agent to the identities' keys and drops
//!   the defaults. An RSA certificate from a file is signed here ([`LocalSigner`]) so that it is
//!   named by its SHA-2 hash (russh's own path names it with SHA-1, which OpenSSH 8.8+ refuses);
//!   security keys (sk-*) are not offered: russh cannot sign with them.
//! * Host certificates are asked for only when an `@cert-authority` line of known_hosts matches
//!   the host, and then checked as OpenSSH does (see [`crate::known_hosts`]).
//! * An exit status is only ever what the server reported: a channel that closes without one
//!   (connection lost, sshd killed) is an error, never a success.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::{
    Algorithm, Certificate, HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, Disconnect, Preferred, Pty, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::{ExecError, ExitStatus, OutputSink, Stream, Terminal};
use crate::known_hosts::{HostKey, KnownHosts, Verdict};

/// Keepalive interval.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// A peer is declared dead after three silent intervals (45 s): russh, like OpenSSH's
/// `ServerAliveCountMax`, disconnects when the count of unanswered probes *exceeds* this, and
/// the third interval ends with two probes unanswered.
pub const KEEPALIVE_MAX: usize = 2;

/// How long a command whose stdin [`SshSession::exec_until`] closed may take to end before it
/// is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The remote PTY's modes for an interactive session: a line discipline that passes every byte
/// through untouched (no echo, no line editing, no signals from control characters, no CR/NL
/// translation, 8 bits). The framed script (see [`crate::host::frame`]) travels on the PTY ahead
/// of the keystrokes, so it must be read byte for byte and never echoed back; once it runs,
/// `docker exec -t` gives the container a terminal of its own, whose line discipline (echo,
/// Ctrl-C) is the one the user talks to.
const RAW_MODES: &[(Pty, u32)] = &[
    (Pty::ECHO, 0),
    (Pty::ECHONL, 0),
    (Pty::ICANON, 0),
    (Pty::ISIG, 0),
    (Pty::IEXTEN, 0),
    (Pty::ICRNL, 0),
    (Pty::INLCR, 0),
    (Pty::IGNCR, 0),
    (Pty::ISTRIP, 0),
    (Pty::IXON, 0),
    (Pty::IXOFF, 0),
    (Pty::OPOST, 0),
    (Pty::CS8, 1),
];

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Target name (for messages).
    pub name: String,
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Identity files to try first, in order, already resolved to paths (the inventory's
    /// `identity`, then ssh_config `IdentityFile`s).
    pub identities: Vec<PathBuf>,
    /// ssh_config `IdentitiesOnly`: agent keys are used only when they match one of
    /// [`Endpoint::identities`], and the default `~/.ssh/id_*` keys are not tried.
    pub identities_only: bool,
    /// ssh_config `CertificateFile`s (a certificate beside an identity, `IDENTITY-cert.pub`,
    /// is found without being listed).
    pub certificate_files: Vec<PathBuf>,
    /// ssh_config `IdentityAgent`: `None` means `SSH_AUTH_SOCK`; a path is that socket.
    pub identity_agent: Option<IdentityAgent>,
    /// The name host keys and host certificate principals are checked against, when it is not
    /// [`Endpoint::host`] (ssh_config `HostKeyAlias`).
    pub host_key_alias: Option<String>,
    /// This endpoint's known_hosts file, when it is not the run's (ssh_config
    /// `UserKnownHostsFile`).
    pub known_hosts: Option<Arc<KnownHosts>>,
    /// This endpoint's connect timeout, when it is not the run's (ssh_config `ConnectTimeout`).
    pub connect_timeout: Option<Duration>,
    /// The jump host to tunnel through (a direct-tcpip channel), if any; it may have a jump
    /// host of its own (a ProxyJump chain: the innermost is dialled first).
    pub jump: Option<Box<Endpoint>>,
}

/// Where agent keys come from (ssh_config `IdentityAgent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityAgent {
    /// No agent (`IdentityAgent none`).
    Disabled,
    /// The agent listening on this socket.
    Socket(PathBuf),
}

impl Endpoint {
    /// The known_hosts file this endpoint's key is checked against.
    pub fn known_hosts<'a>(&'a self, options: &'a Options) -> &'a Arc<KnownHosts> {
        self.known_hosts.as_ref().unwrap_or(&options.known_hosts)
    }

    /// How long connect, handshake and authentication may take.
    pub fn connect_timeout(&self, options: &Options) -> Duration {
        self.connect_timeout.unwrap_or(options.connect_timeout)
    }
}

/// Errors reaching or talking to a target over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No SSH session within the connect timeout.
    #[error("no SSH session with {addr} within {secs} s")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The timeout.
        secs: u64,
    },
    /// The host's key is not in known_hosts.
    #[error(
        "host key of {target} ({addr}) is not known: {} not in {}; check the fingerprint and run `ferry trust`",
        key.describe(), file.display()
    )]
    UnknownHostKey {
        /// Target name.
        target: String,
        /// `host:port`.
        addr: String,
        /// The key it presented.
        key: HostKey,
        /// The known_hosts file.
        file: PathBuf,
    },
    /// The host presented another key than the one recorded: possibly a man in the middle.
    #[error(
        "HOST KEY CHANGED for {target} ({addr}): it presented {} but {} records {}; someone may be \
         intercepting the connection. If the host was rebuilt, run `ferry trust --replace {target}`",
        presented.describe(), file.display(),
        known.iter().map(HostKey::describe).collect::<Vec<_>>().join(", ")
    )]
    ChangedHostKey {
        /// Target name.
        target: String,
        /// `host:port`.
        addr: String,
        /// The key it presented.
        presented: HostKey,
        /// The keys on record.
        known: Vec<HostKey>,
        /// The known_hosts file.
        file: PathBuf,
    },
    /// The host's key is marked `@revoked`.
    #[error("host key of {target} ({addr}) is REVOKED in {}: {}", file.display(), key.describe())]
    RevokedHostKey {
        /// Target name.
        target: String,
        /// `host:port`.
        addr: String,
        /// The key.
        key: HostKey,
        /// The known_hosts file.
        file: PathBuf,
    },
    /// The host presented a certificate that known_hosts' `@cert-authority` lines do not make
    /// acceptable (expired, wrong principal, revoked, unknown CA, ...). No fallback to its key.
    #[error("host certificate of {target} ({addr}) is refused: {reason} (known_hosts: {})", file.display())]
    UntrustedHostCertificate {
        /// Target name.
        target: String,
        /// `host:port`.
        addr: String,
        /// Which rule it broke, with details.
        reason: String,
        /// The known_hosts file.
        file: PathBuf,
    },
    /// No key was accepted.
    #[error("authentication as {user}@{addr} failed; tried: {}", if tried.is_empty() { "no keys (none found)".to_string() } else { tried.join(", ") })]
    Auth {
        /// Remote user.
        user: String,
        /// `host:port`.
        addr: String,
        /// The keys tried, by file or agent comment.
        tried: Vec<String>,
    },
    /// An identity file could not be used.
    #[error("cannot use key {}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The SSH protocol failed (connection lost, refused channel, ...).
    #[error("SSH with {addr}: {message}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What russh reported.
        message: String,
    },
    /// The target's SSH settings could not be worked out (its ssh_config became unusable
    /// after the run checked it): the target fails rather than being dialled without them.
    #[error("cannot work out how to reach {target}: {message}")]
    Settings {
        /// Target name.
        target: String,
        /// What the ssh_config reader said.
        message: String,
    },
    /// The connection attempt itself failed inside ferry (its task panicked): a bug, reported
    /// as this target's error so that the target is never missing from a run.
    #[error("connecting failed: {0}")]
    Task(String),
}

impl SshError {
    /// True when no session could be had in time: the TCP connect failed (refused, no route),
    /// or the handshake or authentication did not end within the connect timeout, or the link
    /// broke during it. Not a host-key refusal, not a rejected key: those are answers.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SshError::Connect { .. } | SshError::Timeout { .. } | SshError::Protocol { .. })
    }

    /// The target outcome of a connection that could not be opened: `refused` (host key),
    /// `unreachable`, or `error` (a rejected key, an unusable identity file, a bug).
    pub fn status(&self) -> crate::report::Status {
        if self.is_host_key() {
            crate::report::Status::Refused
        } else if self.is_unreachable() {
            crate::report::Status::Unreachable
        } else {
            crate::report::Status::Error
        }
    }

    /// True for host-key refusals (exit code 4: refused by a gate).
    pub fn is_host_key(&self) -> bool {
        matches!(
            self,
            SshError::UnknownHostKey { .. }
                | SshError::ChangedHostKey { .. }
                | SshError::RevokedHostKey { .. }
                | SshError::UntrustedHostCertificate { .. }
        )
    }
}

/// What happened in the host-key check, kept for the error message after russh aborts.
#[derive(Debug, Clone)]
struct Seen {
    key: HostKey,
    verdict: Verdict,
}

/// The russh handler: checks the host key or certificate; everything else is defaults.
struct Client {
    /// The name known_hosts knows the host by (`[host]:port`, or its HostKeyAlias).
    lookup: String,
    /// The name a host certificate must list as a principal (HostName, or HostKeyAlias).
    principal: String,
    known_hosts: Arc<KnownHosts>,
    seen: Arc<Mutex<Option<Seen>>>,
    /// When true, record the key and refuse the session (for `ferry trust`).
    capture_only: bool,
}

impl Client {
    /// A handler for `endpoint`, and the slot where it leaves what the host-key check saw.
    fn new(endpoint: &Endpoint, options: &Options, capture_only: bool) -> (Client, Arc<Mutex<Option<Seen>>>) {
        let seen = Arc::new(Mutex::new(None));
        let client = Client {
            lookup: lookup_name(endpoint),
            principal: endpoint.host_key_alias.clone().unwrap_or_else(|| endpoint.host.clone()),
            known_hosts: Arc::clone(endpoint.known_hosts(options)),
            seen: Arc::clone(&seen),
            capture_only,
        };
        (client, seen)
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let unreadable = || russh::Error::from(russh::keys::Error::CouldNotReadKey);
        let (host_key, verdict) = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                let host_key = crate::known_hosts::key_of(key.key_data()).ok_or_else(unreadable)?;
                let verdict = self.known_hosts.check_name(&self.lookup, &host_key);
                (host_key, verdict)
            }
            // Offered only when an @cert-authority line matches (see `config`); a certificate
            // replaces the key check, it never falls back to it.
            PublicKeyOrCertificate::Certificate(cert) => {
                let host_key = crate::known_hosts::key_of(cert.public_key()).ok_or_else(unreadable)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let verdict = self.known_hosts.check_certificate(&self.lookup, &self.principal, cert, now);
                (host_key, verdict)
            }
        };
        let trusted = verdict == Verdict::Trusted && !self.capture_only;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Seen { key: host_key, verdict });
        }
        Ok(trusted)
    }
}

/// Settings shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connect + handshake + authentication must finish within this.
    pub connect_timeout: Duration,
    /// The known_hosts file, parsed once per run.
    pub known_hosts: Arc<KnownHosts>,
}

/// An authenticated SSH connection to one target.
pub struct SshSession {
    handle: Handle<Client>,
    addr: String,
    /// The jump host's session, kept open for as long as the tunnel through it is used.
    _via: Option<Box<SshSession>>,
}

/// The client configuration for `endpoint`: russh's defaults, with the host-key algorithms
/// narrowed to the key types known_hosts records for it (see [`host_key_algorithms`]), and
/// host certificates asked for (ahead of plain keys) only when an `@cert-authority` line
/// matches the host, as OpenSSH does: a host without one is never offered the chance to
/// present a certificate that nothing could check.
fn config(endpoint: &Endpoint, known_hosts: &KnownHosts) -> Arc<client::Config> {
    let name = lookup_name(endpoint);
    let recorded = known_hosts.key_types_for_name(&name);
    let certificates = if known_hosts.has_cert_authority_for(&name) {
        Preferred::DEFAULT.key
    } else {
        Cow::Borrowed(&[][..])
    };
    Arc::new(client::Config {
        nodelay: true,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        inactivity_timeout: None,
        preferred: Preferred {
            key: host_key_algorithms(&recorded),
            host_key_certificates: certificates,
            ..Preferred::default()
        },
        ..client::Config::default()
    })
}

/// The name known_hosts knows `endpoint` by (its HostKeyAlias, else `[host]:port`).
fn lookup_name(endpoint: &Endpoint) -> String {
    crate::known_hosts::lookup_name(&endpoint.host, endpoint.port, endpoint.host_key_alias.as_deref())
}

/// The host-key algorithms to offer a host whose recorded key types are `recorded`, as
/// OpenSSH does: russh's default list, in its order, keeping only the algorithms of a
/// recorded type (an `ssh-rsa` key may sign with any RSA algorithm). A host presents the key
/// of the first algorithm both sides offer, so without this a host with an Ed25519 and an RSA
/// key, of which only the RSA one is recorded, would show its Ed25519 key and be refused as
/// "changed". No recorded type (a new host, for `ferry trust`) or none russh knows: the
/// default list.
fn host_key_algorithms(recorded: &[String]) -> Cow<'static, [Algorithm]> {
    let default = Preferred::DEFAULT.key;
    let narrowed: Vec<Algorithm> = default
        .iter()
        .filter(|algorithm| {
            recorded.iter().any(|t| match algorithm {
                Algorithm::Rsa { .. } => t == "ssh-rsa",
                other => other.as_str() == t,
            })
        })
        .cloned()
        .collect();
    if narrowed.is_empty() { default } else { Cow::Owned(narrowed) }
}

/// A stream to `endpoint` through its jump host `jump`: a direct-tcpip channel on an
/// authenticated session with the jump host (whose own key is checked like any target's),
/// returned with that session, which must stay open as long as the stream is used.
async fn through_jump(
    endpoint: &Endpoint,
    jump: &Endpoint,
    options: &Options,
    addr: &str,
) -> Result<(russh::ChannelStream<client::Msg>, SshSession), SshError> {
    // Each hop has its own connect timeout (ssh_config ConnectTimeout per host, as OpenSSH).
    let jump_addr = addr_of(jump);
    let limit = jump.connect_timeout(options);
    let bastion =
        match tokio::time::timeout(limit, Box::pin(SshSession::connect_inner(jump, options, &jump_addr)))
            .await
        {
            Ok(result) => result?,
            Err(_) => return Err(SshError::Timeout { addr: jump_addr, secs: limit.as_secs() }),
        };
    let channel = bastion
        .handle
        .channel_open_direct_tcpip(endpoint.host.clone(), u32::from(endpoint.port), "127.0.0.1", 0)
        .await
        .map_err(|e| SshError::Protocol {
            addr: addr.to_string(),
            message: format!("jump host {} cannot reach it: {e}", jump.name),
        })?;
    Ok((channel.into_stream(), bastion))
}

/// The time a whole chain may take: each hop's connect timeout (enforced in [`through_jump`])
/// plus the endpoint's own, so a slow first hop does not eat the last one's time.
fn chain_timeout(endpoint: &Endpoint, options: &Options) -> Duration {
    let mut total = endpoint.connect_timeout(options);
    let mut hop = endpoint.jump.as_deref();
    while let Some(jump) = hop {
        total += jump.connect_timeout(options);
        hop = jump.jump.as_deref();
    }
    total
}

/// `host:port`, bracketed for IPv6, for messages and TCP connects.
fn addr_of(endpoint: &Endpoint) -> String {
    if endpoint.host.contains(':') {
        format!("[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    }
}

/// Connects without authenticating and returns the key the host presents (for `ferry trust`),
/// with what the known_hosts file says about it.
pub async fn fetch_host_key(endpoint: &Endpoint, options: &Options) -> Result<(HostKey, Verdict), SshError> {
    let addr = addr_of(endpoint);
    let (client, seen) = Client::new(endpoint, options, true);
    let config = config(endpoint, endpoint.known_hosts(options));
    let attempt = async {
        // Through the jump host when the target has one, as every other connection to it goes.
        match &endpoint.jump {
            None => {
                let _ = client::connect_stream(config, tcp_connect(&addr).await?, client).await;
            }
            Some(jump) => {
                let (stream, _bastion) = through_jump(endpoint, jump, options, &addr).await?;
                let _ = client::connect_stream(config, stream, client).await;
            }
        }
        Ok::<(), SshError>(())
    };
    let limit = chain_timeout(endpoint, options);
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result?,
        Err(_) => return Err(SshError::Timeout { addr, secs: limit.as_secs() }),
    }
    let seen = seen.lock().ok().and_then(|s| s.clone());
    seen.map(|s| (s.key, s.verdict))
        .ok_or(SshError::Protocol { addr, message: "the server sent no host key".into() })
}

async fn tcp_connect(addr: &str) -> Result<tokio::net::TcpStream, SshError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| SshError::Connect { addr: addr.to_string(), source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl SshSession {
    /// Connects, checks the host key and authenticates, all within the connect timeout.
    pub async fn connect(endpoint: &Endpoint, options: &Options) -> Result<SshSession, SshError> {
        let addr = addr_of(endpoint);
        let limit = chain_timeout(endpoint, options);
        let secs = limit.as_secs();
        match tokio::time::timeout(limit, Self::connect_inner(endpoint, options, &addr)).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout { addr, secs }),
        }
    }

    async fn connect_inner(
        endpoint: &Endpoint,
        options: &Options,
        addr: &str,
    ) -> Result<SshSession, SshError> {
        let (client, seen) = Client::new(endpoint, options, false);
        let config = config(endpoint, endpoint.known_hosts(options));
        let (handshake, via) = match &endpoint.jump {
            None => (client::connect_stream(config, tcp_connect(addr).await?, client).await, None),
            Some(jump) => {
                // The target's key is still checked against the target's own name and port.
                let (stream, bastion) = through_jump(endpoint, jump, options, addr).await?;
                (client::connect_stream(config, stream, client).await, Some(Box::new(bastion)))
            }
        };
        let handle = match handshake {
            Ok(handle) => handle,
            Err(e) => {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                return Err(host_key_error(endpoint, addr, endpoint.known_hosts(options), seen)
                    .unwrap_or_else(|| protocol(addr, &e)));
            }
        };
        let mut session = SshSession { handle, addr: addr.to_string(), _via: via };
        session.authenticate(endpoint).await?;
        Ok(session)
    }

    /// Tries, in order: each identity file (its certificates first: `IDENTITY-cert.pub` and
    /// the `CertificateFile`s for its key), the agent (certificates and keys; under
    /// `IdentitiesOnly` only those of an identity's key), then the default `~/.ssh/id_*` keys
    /// (not under `IdentitiesOnly`). The error lists everything tried.
    async fn authenticate(&mut self, endpoint: &Endpoint) -> Result<(), SshError> {
        let mut tried = Vec::new();
        let user = endpoint.user.as_str();
        let rsa_hash = self.handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let certificates = load_certificate_files(&endpoint.certificate_files)?;
        // The public keys of the identities, for `IdentitiesOnly`'s filter on agent keys.
        let mut identity_keys = Vec::new();
        // An identity that cannot be used here (encrypted without FERRY_SSH_PASSPHRASE, a
        // security key) may still be in the agent: with its `.pub` beside it, its error waits
        // until the agent has been tried, and is the one reported if nothing gets in.
        let mut deferred = None;
        for path in &endpoint.identities {
            match self
                .try_key_file(user, path, rsa_hash, true, &certificates, &mut tried, &mut identity_keys)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e @ SshError::Key { .. }) => {
                    let Ok(public) = PublicKey::read_openssh_file(public_path_of(path)) else {
                        return Err(e);
                    };
                    identity_keys.push(public);
                    deferred = deferred.or(Some(e));
                }
                Err(e) => return Err(e),
            }
        }
        let only = endpoint.identities_only.then_some(identity_keys.as_slice());
        if self.try_agent(user, rsa_hash, endpoint.identity_agent.as_ref(), only, &mut tried).await {
            return Ok(());
        }
        if !endpoint.identities_only {
            for path in default_keys() {
                if endpoint.identities.contains(&path) || !path.is_file() {
                    continue;
                }
                let mut ignored = Vec::new();
                if self
                    .try_key_file(user, &path, rsa_hash, false, &certificates, &mut tried, &mut ignored)
                    .await?
                {
                    return Ok(());
                }
            }
        }
        Err(deferred.unwrap_or(SshError::Auth { user: user.to_string(), addr: self.addr.clone(), tried }))
    }

    /// Tries one key file: its certificates first (`PATH-cert.pub`, then the `CertificateFile`s
    /// that certify its key), then the key itself. An unreadable explicit identity is an error,
    /// a default one is skipped.
    #[allow(clippy::too_many_arguments)]
    async fn try_key_file(
        &mut self,
        user: &str,
        path: &Path,
        rsa_hash: Option<HashAlg>,
        explicit: bool,
        certificate_files: &[(PathBuf, Certificate)],
        tried: &mut Vec<String>,
        identity_keys: &mut Vec<PublicKey>,
    ) -> Result<bool, SshError> {
        let passphrase = std::env::var("FERRY_SSH_PASSPHRASE").ok();
        let key = match russh::keys::load_secret_key(path, passphrase.as_deref()) {
            Ok(key) => key,
            Err(e) if explicit => {
                let hint =
                    if passphrase.is_none() { " (if it is encrypted, set FERRY_SSH_PASSPHRASE)" } else { "" };
                return Err(SshError::Key { path: path.to_path_buf(), message: format!("{e}{hint}") });
            }
            Err(_) => return Ok(false),
        };
        if is_security_key(&key.algorithm()) {
            if explicit {
                return Err(SshError::Key { path: path.to_path_buf(), message: SECURITY_KEY.into() });
            }
            return Ok(false);
        }
        identity_keys.push(key.public_key().clone());
        let key = Arc::new(key);
        let mut certificates = Vec::new();
        let beside = cert_path_of(path);
        if beside.is_file() {
            match russh::keys::load_openssh_certificate(&beside) {
                Ok(cert) => certificates.push((beside, cert)),
                // A broken certificate beside a key is the operator's to fix, not to skip.
                Err(e) => return Err(SshError::Key { path: beside, message: e.to_string() }),
            }
        }
        certificates.extend(
            certificate_files
                .iter()
                .filter(|(_, cert)| cert.public_key() == key.public_key().key_data())
                .cloned(),
        );
        for (cert_path, cert) in certificates {
            tried.push(format!("cert {} of {}", cert.key_id(), cert_path.display()));
            let result = if matches!(key.algorithm(), Algorithm::Rsa { .. }) {
                // russh's own certificate path names an RSA certificate
                // `ssh-rsa-cert-v01@openssh.com` (SHA-1), which OpenSSH 8.8 and later refuse;
                // signing here names it by the SHA-2 hash the server supports.
                let hash = rsa_hash.or(Some(HashAlg::Sha512));
                let mut signer = LocalSigner(Arc::clone(&key));
                self.handle.authenticate_certificate_with(user, cert, hash, &mut signer).await.map_err(
                    |e| SshError::Key {
                        path: path.to_path_buf(),
                        message: format!("cannot sign with it: {e}"),
                    },
                )?
            } else {
                self.handle
                    .authenticate_openssh_cert(user, Arc::clone(&key), cert)
                    .await
                    .map_err(|e| protocol(&self.addr, &e))?
            };
            if matches!(result, AuthResult::Success) {
                return Ok(true);
            }
        }
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(key, rsa_hash);
        let result =
            self.handle.authenticate_publickey(user, key).await.map_err(|e| protocol(&self.addr, &e))?;
        Ok(matches!(result, AuthResult::Success))
    }

    /// Tries the agent's certificates and keys (`agent`: the endpoint's `IdentityAgent`, else
    /// `SSH_AUTH_SOCK`); with `only`, just those whose key is one of these (`IdentitiesOnly`).
    /// An agent that cannot be reached is skipped, and said so in `tried`.
    async fn try_agent(
        &mut self,
        user: &str,
        rsa_hash: Option<HashAlg>,
        agent: Option<&IdentityAgent>,
        only: Option<&[PublicKey]>,
        tried: &mut Vec<String>,
    ) -> bool {
        use russh::keys::agent::AgentIdentity;
        use russh::keys::agent::client::AgentClient;
        let socket = match agent {
            Some(IdentityAgent::Disabled) => return false,
            Some(IdentityAgent::Socket(path)) => path.clone(),
            None => match std::env::var_os("SSH_AUTH_SOCK") {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => return false,
            },
        };
        let Ok(mut client) = AgentClient::connect_uds(&socket).await else {
            tried.push(format!("agent at {} (cannot connect)", socket.display()));
            return false;
        };
        let Ok(identities) = client.request_identities().await else {
            tried.push(format!("agent at {} (it listed no keys)", socket.display()));
            return false;
        };
        if identities.is_empty() {
            tried.push(format!("agent at {} (no keys in it)", socket.display()));
        }
        for identity in identities {
            let (key_data, algorithm) = match &identity {
                AgentIdentity::PublicKey { key, .. } => (key.key_data().clone(), key.algorithm()),
                AgentIdentity::Certificate { certificate, .. } => {
                    (certificate.public_key().clone(), certificate.algorithm())
                }
            };
            if only.is_some_and(|keys| !keys.iter().any(|k| k.key_data() == &key_data)) {
                continue;
            }
            let result = match identity {
                AgentIdentity::PublicKey { key, comment } => {
                    if is_security_key(&algorithm) {
                        tried.push(format!("agent key {comment} (not offered: {SECURITY_KEY})"));
                        continue;
                    }
                    tried.push(format!("agent key {comment}"));
                    self.handle.authenticate_publickey_with(user, key, rsa_hash, &mut client).await
                }
                AgentIdentity::Certificate { certificate, comment } => {
                    if is_security_key(&algorithm) {
                        tried.push(format!("agent cert {comment} (not offered: {SECURITY_KEY})"));
                        continue;
                    }
                    tried.push(format!("agent cert {} ({comment})", certificate.key_id()));
                    // The agent signs with the certified key; RSA signs with SHA-2 here, so
                    // the certificate's name is SHA-2 too.
                    self.handle.authenticate_certificate_with(user, certificate, rsa_hash, &mut client).await
                }
            };
            if matches!(result, Ok(AuthResult::Success)) {
                return true;
            }
        }
        false
    }

    /// Runs `command` through the login shell, streaming output to `sink` as it arrives, with
    /// `stdin` sent first and a deadline after which the command is signalled and abandoned.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        deadline: Option<Duration>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        let lost = |e: russh::Error| ExecError::Lost(format!("SSH with {}: {e}", self.addr));
        let mut channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel.exec(true, command).await.map_err(lost)?;
        if let Some(data) = stdin {
            channel.data(data).await.map_err(lost)?;
        }
        channel.eof().await.map_err(lost)?;
        let mut status = None;
        let run = async {
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => sink.output(Stream::Stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => sink.output(Stream::Stderr, &data),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(ExitStatus::Code(exit_status)),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = Some(ExitStatus::Signal(signal_label(&signal_name)));
                    }
                    _ => {}
                }
                // Not reading on while ferry is behind fills russh's bounded channel buffer and
                // then the SSH window: the target waits instead of ferry's memory growing.
                sink.ready().await;
            }
        };
        match deadline {
            Some(limit) => {
                if tokio::time::timeout(limit, run).await.is_err() {
                    let _ = channel.signal(Sig::KILL).await;
                    let _ = channel.close().await;
                    return Err(ExecError::Deadline(limit));
                }
            }
            None => run.await,
        }
        status.ok_or_else(|| {
            let detail =
                if self.handle.is_closed() { "the connection was lost" } else { "the channel closed" };
            ExecError::Lost(format!("{detail} before {} reported an exit status", self.addr))
        })
    }

    /// Runs `command` with `stdin` streamed into the channel while its output is read (the
    /// channel split in two halves): russh sends only what the SSH window allows, so a target
    /// that reads slowly slows the stream instead of ferry buffering the file. A command that
    /// ends before reading everything ends the stream; its exit status says why.
    pub async fn exec_reader(
        &self,
        command: &str,
        stdin: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send + '_>>,
        deadline: Option<Duration>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        let lost = |e: russh::Error| ExecError::Lost(format!("SSH with {}: {e}", self.addr));
        let channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel.exec(true, command).await.map_err(lost)?;
        let (mut read, write) = channel.split();
        let mut status = None;
        let mut send_error = None;
        let run = async {
            let send = async {
                write.data(stdin).await?;
                write.eof().await
            };
            tokio::pin!(send);
            let mut sending = true;
            loop {
                tokio::select! {
                    sent = &mut send, if sending => {
                        sending = false;
                        // The input could not be read here (a local file's read error): the
                        // command would wait for the rest until the deadline (an hour for
                        // `docker load`). It gets EOF and the channel closes; the error is
                        // the outcome. A send refused by the far end (the command stopped
                        // reading) is not: its exit status says more.
                        if let Err(russh::Error::IO(e)) = sent {
                            let _ = write.eof().await;
                            let _ = write.close().await;
                            return Some(e);
                        }
                        send_error = sent.err();
                    }
                    msg = read.wait() => {
                        let Some(msg) = msg else { break };
                        absorb(msg, &mut status, sink);
                        sink.ready().await;
                    }
                }
            }
            None
        };
        let unread = match deadline {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(unread) => unread,
                Err(_) => {
                    let _ = write.signal(Sig::KILL).await;
                    let _ = write.close().await;
                    return Err(ExecError::Deadline(limit));
                }
            },
            None => run.await,
        };
        if let Some(e) = unread {
            return Err(ExecError::Lost(format!("sending to {}: {e}", self.addr)));
        }
        match (status, send_error) {
            (Some(status), _) => Ok(status),
            (None, Some(e)) => Err(lost(e)),
            (None, None) => Err(self.no_status()),
        }
    }

    /// Runs `command` with `stdin` sent first and the channel's stdin then left open (and
    /// empty) until `stop` resolves; then it gets EOF, and the command has [`STOP_GRACE`] to end
    /// before it is signalled and abandoned. For commands that run until told to stop: `docker
    /// logs --follow` under a script that ends it when its stdin closes (see
    /// [`crate::docker::logs_script`]). EOF, not an SSH signal, is the stop: it also comes when
    /// the connection drops, and sshd does not pass signals to every process.
    pub async fn exec_until(
        &self,
        command: &str,
        stdin: &[u8],
        mut stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        let lost = |e: russh::Error| ExecError::Lost(format!("SSH with {}: {e}", self.addr));
        let mut channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel.exec(true, command).await.map_err(lost)?;
        channel.data(stdin).await.map_err(lost)?;
        let mut status = None;
        let mut grace_end = None;
        loop {
            let grace = tokio::time::sleep_until(grace_end.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                msg = channel.wait() => {
                    let Some(msg) = msg else { break };
                    absorb(msg, &mut status, sink);
                    sink.ready().await;
                }
                () = &mut stop, if grace_end.is_none() => {
                    channel.eof().await.map_err(lost)?;
                    grace_end = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                () = grace, if grace_end.is_some() => {
                    let _ = channel.signal(Sig::KILL).await;
                    let _ = channel.close().await;
                    return Err(ExecError::Deadline(STOP_GRACE));
                }
            }
        }
        status.ok_or_else(|| self.no_status())
    }

    /// Runs `command` on a PTY of the local terminal's size, `stdin` sent first (the framed
    /// script, read under [`RAW_MODES`]), then what the user types; the command's output goes
    /// to the terminal as it comes, and window size changes follow. Ends when the command does.
    pub async fn interactive(
        &self,
        command: &str,
        stdin: &[u8],
        terminal: Terminal<'_>,
    ) -> Result<ExitStatus, ExecError> {
        let Terminal { term, cols, rows, mut resized, input, output } = terminal;
        let lost = |e: russh::Error| ExecError::Lost(format!("SSH with {}: {e}", self.addr));
        let mut channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel.request_pty(false, &term, cols, rows, 0, 0, RAW_MODES).await.map_err(lost)?;
        channel.exec(true, command).await.map_err(lost)?;
        channel.data(stdin).await.map_err(lost)?;
        let mut typed = vec![0u8; 4096];
        let (mut typing, mut status) = (true, None);
        loop {
            tokio::select! {
                msg = channel.wait() => match msg {
                    None => break,
                    Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                        // A local terminal that went away ends nothing remote: the command
                        // runs on until it ends (or the connection closes under it).
                        let _ = output.write_all(&data).await;
                        let _ = output.flush().await;
                    }
                    Some(other) => absorb(other, &mut status, &mut crate::exec::Discard),
                },
                n = input.read(&mut typed), if typing => match n {
                    Ok(0) | Err(_) => {
                        typing = false;
                        channel.eof().await.map_err(lost)?;
                    }
                    Ok(n) => channel.data(&typed[..n]).await.map_err(lost)?,
                },
                Some((cols, rows)) = resized.recv() => {
                    let _ = channel.window_change(cols, rows, 0, 0).await;
                }
            }
        }
        status.ok_or_else(|| self.no_status())
    }

    /// The error for a channel that closed without an exit status.
    fn no_status(&self) -> ExecError {
        let detail = if self.handle.is_closed() { "the connection was lost" } else { "the channel closed" };
        ExecError::Lost(format!("{detail} before {} reported an exit status", self.addr))
    }

    /// Says goodbye to the server.
    pub async fn close(&self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
}

/// Takes a channel message's output (to `sink`) or exit status (into `status`).
fn absorb(msg: ChannelMsg, status: &mut Option<ExitStatus>, sink: &mut dyn OutputSink) {
    match msg {
        ChannelMsg::Data { data } => sink.output(Stream::Stdout, &data),
        ChannelMsg::ExtendedData { data, ext: 1 } => sink.output(Stream::Stderr, &data),
        ChannelMsg::ExitStatus { exit_status } => *status = Some(ExitStatus::Code(exit_status)),
        ChannelMsg::ExitSignal { signal_name, .. } => {
            *status = Some(ExitStatus::Signal(signal_label(&signal_name)))
        }
        _ => {}
    }
}

fn signal_label(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

fn protocol(addr: &str, e: &russh::Error) -> SshError {
    SshError::Protocol { addr: addr.to_string(), message: e.to_string() }
}

/// Turns a recorded host-key verdict into the error for a refused connection.
fn host_key_error(endpoint: &Endpoint, addr: &str, kh: &KnownHosts, seen: Option<Seen>) -> Option<SshError> {
    let Seen { key, verdict } = seen?;
    let (target, addr, file) = (endpoint.name.clone(), addr.to_string(), kh.path.clone());
    match verdict {
        Verdict::Trusted => None,
        Verdict::Unknown => Some(SshError::UnknownHostKey { target, addr, key, file }),
        Verdict::Revoked => Some(SshError::RevokedHostKey { target, addr, key, file }),
        Verdict::UntrustedCertificate { reason } => {
            Some(SshError::UntrustedHostCertificate { target, addr, reason, file })
        }
        Verdict::Changed { known } => {
            Some(SshError::ChangedHostKey { target, addr, presented: key, known, file })
        }
    }
}

/// A [`russh::Signer`] over a private key held here, for certificate authentication with a
/// chosen RSA hash (see `try_key_file`): it returns what an agent's signature would give,
/// the data followed by the signature blob as an SSH string.
struct LocalSigner(Arc<russh::keys::PrivateKey>);

impl russh::Signer for LocalSigner {
    type Error = russh::AgentAuthError;

    fn auth_sign(
        &mut self,
        _identity: &russh::keys::agent::AgentIdentity,
        hash_alg: Option<HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Self::Error>> + Send {
        let signed = sign_locally(&self.0, hash_alg, &to_sign).map(|blob| {
            to_sign.extend_from_slice(&blob);
            to_sign
        });
        async move { signed.map_err(|e| russh::AgentAuthError::Key(e.into())) }
    }
}

/// `data` signed with `key` (RSA with `hash_alg`), as the SSH string of its signature blob.
fn sign_locally(
    key: &russh::keys::PrivateKey,
    hash_alg: Option<HashAlg>,
    data: &[u8],
) -> Result<Vec<u8>, russh::keys::ssh_key::Error> {
    use russh::keys::signature::Signer as _;
    use russh::keys::ssh_encoding::Encode as _;
    use russh::keys::ssh_key::private::KeypairData;
    let signature: russh::keys::ssh_key::Signature = match key.key_data() {
        KeypairData::Rsa(rsa) => (rsa, hash_alg).try_sign(data)?,
        other => other.try_sign(data)?,
    };
    let blob = signature.encode_vec()?;
    let mut out = Vec::with_capacity(blob.len() + 4);
    blob.as_slice().encode(&mut out)?;
    Ok(out)
}

/// Why security-key identities are not used.
const SECURITY_KEY: &str =
    "security-key (sk-*) keys are not supported: ferry's SSH library (russh) cannot sign with them";

/// True for FIDO security-key algorithms (`sk-ssh-ed25519@openssh.com`, `sk-ecdsa-…`).
fn is_security_key(algorithm: &Algorithm) -> bool {
    matches!(algorithm, Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256)
}

/// An identity's public key file: `IDENTITY.pub` beside it.
fn public_path_of(identity: &Path) -> PathBuf {
    let mut name = identity.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// Where OpenSSH looks for an identity's certificate: `IDENTITY-cert.pub` beside it.
fn cert_path_of(identity: &Path) -> PathBuf {
    let mut name = identity.as_os_str().to_os_string();
    name.push("-cert.pub");
    PathBuf::from(name)
}

/// The endpoint's `CertificateFile`s, read; one that cannot be read is an error (it was asked
/// for by name).
#[allow(clippy::result_large_err)] // SshError is what every connection step returns
fn load_certificate_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Certificate)>, SshError> {
    paths
        .iter()
        .map(|path| {
            russh::keys::load_openssh_certificate(path)
                .map(|cert| (path.clone(), cert))
                .map_err(|e| SshError::Key { path: path.clone(), message: e.to_string() })
        })
        .collect()
}

fn default_keys() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else { return Vec::new() };
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|k| Path::new(&home).join(".ssh").join(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(recorded: &[&str]) -> Vec<String> {
        let recorded: Vec<String> = recorded.iter().map(|t| t.to_string()).collect();
        host_key_algorithms(&recorded).iter().map(|a| a.as_str().to_string()).collect()
    }

    #[test]
    fn a_local_signature_is_the_ssh_string_of_a_signature_that_verifies() {
        use russh::keys::signature::Verifier as _;
        use russh::keys::ssh_encoding::Decode as _;
        use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
        let key = russh::keys::PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&[3; 32])), "")
            .unwrap();
        let blob = sign_locally(&key, None, b"session data").unwrap();
        let mut reader = blob.as_slice();
        let inner = Vec::<u8>::decode(&mut reader).unwrap();
        assert!(reader.is_empty(), "one SSH string");
        let signature = russh::keys::ssh_key::Signature::decode(&mut inner.as_slice()).unwrap();
        assert_eq!(signature.algorithm(), Algorithm::Ed25519);
        key.public_key().key_data().verify(b"session data", &signature).unwrap();
        assert!(key.public_key().key_data().verify(b"other data", &signature).is_err());
    }

    #[test]
    fn a_host_is_asked_only_for_the_key_types_recorded_for_it() {
        assert_eq!(names(&["ssh-rsa"]), ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"], "any RSA signature");
        assert_eq!(names(&["ssh-ed25519"]), ["ssh-ed25519"]);
        assert_eq!(
            names(&["ssh-rsa", "ecdsa-sha2-nistp256"]),
            ["ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            "russh's order"
        );
        let default: Vec<String> = Preferred::DEFAULT.key.iter().map(|a| a.as_str().to_string()).collect();
        assert_eq!(names(&[]), default, "a new host: everything");
        assert_eq!(names(&["sk-ssh-ed25519@openssh.com"]), default, "nothing russh knows: everything");
    }
}
