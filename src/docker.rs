//! What ferry asks a target's Docker Engine, and how it reads the answers.
//!
//! Every operation is a short `/bin/sh` script run over the target's one connection, built here
//! from shell-quoted values, and answered on stdout (`docker inspect` JSON, a container id, a
//! `gate:` line). Keeping the scripts in one module keeps the contract with the target in one
//! place: the deploy stage decides *what* to do, this module knows *how* Docker is asked.
//!
//! Each step is its own script, so that a step that fails leaves ferry in charge of what comes
//! next (restore the old container, report the new one's logs), and a step never reads stdin
//! unless it is the env file being written.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::{Capture, ExecError};
use crate::host::Host;
use crate::shell;

/// How long ferry waits for a pull before calling the target failed.
pub const PULL_DEADLINE: Duration = Duration::from_secs(600);
/// How long a bookkeeping command (list, inspect, rename, remove) may take.
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// Log lines of a failed container that a report keeps.
pub const LOG_LINES: usize = 20;

/// What happened to a target's container in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// No container of the app ran there; one was started.
    Created,
    /// The old container was replaced by a healthy new one and removed.
    Replaced,
    /// The container had the planned config but was stopped; it was started and is healthy.
    Started,
    /// The running container already had the planned config: nothing was done.
    Unchanged,
    /// The new container failed; it was removed and the old one restored.
    Restored,
    /// Failed before any container was touched (pull, env file, stop).
    Untouched,
}

impl Action {
    /// The word in tables.
    pub fn label(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Replaced => "replaced",
            Action::Started => "started",
            Action::Unchanged => "unchanged",
            Action::Restored => "restored",
            Action::Untouched => "untouched",
        }
    }
}

/// A container's details as later steps and records see them (Octopus's `Output.Docker.Inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDetails {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// The image reference it was started from.
    pub image: String,
    /// The image's manifest digest, when known (`ferry.digest`, or an `@sha256:` reference).
    pub digest: Option<String>,
    /// The first IP address of its networks (empty with `--network host`).
    pub ip: String,
    /// IP address per network name.
    pub ips: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The container's side, e.g. `80/tcp`.
    pub container: String,
    /// The host address it is bound to (`0.0.0.0` for all).
    pub host_ip: String,
    /// The host port.
    pub host_port: String,
}

/// A container of an app as `docker inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Id, name, image, addresses and ports.
    pub details: ContainerDetails,
    /// `running`, `exited`, `created`, `restarting`, `paused`, `dead`.
    pub status: String,
    /// Times Docker restarted it (its restart policy).
    pub restarts: u64,
    /// The HEALTHCHECK's verdict, when the image or run has one.
    pub health: Option<String>,
    /// When it was last started (RFC 3339 with nanoseconds, as Docker writes it).
    pub started_at: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl Container {
    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Whether it is running (not restarting, not paused).
    pub fn running(&self) -> bool {
        self.status == "running"
    }
}

/// Why a Docker step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The connection failed under the step: the target's state is not known.
    #[error("{0}")]
    Exec(#[from] ExecError),
    /// The step ran and failed; `message` is what Docker said.
    #[error("{step}: {message}")]
    Failed {
        /// What ferry was doing.
        step: &'static str,
        /// Docker's error (stderr), or the exit status.
        message: String,
    },
}

impl DockerError {
    /// True when the connection, not Docker, failed.
    pub fn is_connection(&self) -> bool {
        matches!(self, DockerError::Exec(_))
    }
}

/// Runs `script`; a non-zero exit is a [`DockerError::Failed`] carrying stderr.
pub(crate) async fn sh(
    host: &dyn Host,
    step: &'static str,
    script: &str,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<Capture, DockerError> {
    let mut out = Capture::default();
    let status = host.exec(script, stdin, Some(deadline), &mut out).await?;
    if status.success() {
        return Ok(out);
    }
    let errors = out.errors();
    let message = if errors.is_empty() { status.to_string() } else { last_lines(&errors, 3) };
    Err(DockerError::Failed { step, message })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

/// Quotes a value for a script. Values here are names, ids and paths that ferry produced or
/// validated; a NUL (the only thing `quote` refuses) cannot be in them.
pub(crate) fn q(value: &str) -> String {
    shell::quote(value).unwrap_or_else(|_| "''".into())
}

/// The containers labelled as `app` in `environment` (also stopped ones); this also proves that
/// `docker` answers on the target.
pub async fn list(host: &dyn Host, app: &str, environment: &str) -> Result<Vec<Container>, DockerError> {
    let script = format!(
        "ids=$(docker ps -aq --no-trunc --filter label=ferry.app={} --filter label=ferry.environment={}) || exit 1; \
         if [ -z \"$ids\" ]; then echo '[]'; else docker inspect $ids; fi",
        q(app),
        q(environment)
    );
    let out = sh(host, "list containers", &script, None, STEP_DEADLINE).await?;
    parse_inspect(&out.text()).map_err(|message| DockerError::Failed { step: "read docker inspect", message })
}

/// What [`remove_all`] did on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedAll {
    /// The names of the containers removed.
    pub containers: Vec<String>,
    /// The unread outcomes of the app's replace steps there, now cleared (to be reported).
    pub leftovers: Vec<crate::replace::Leftover>,
}

/// Stops and removes every container labelled as `app` in `environment` (the current one, an
/// old one a deployment kept, a stopped one), and clears the unread outcomes of the app's
/// replace steps there, returning them with the names of the containers removed. Other apps and
/// other environments on the same host are never matched: both labels must be equal.
///
/// A replace step of the app that is still running there (its runner died less than
/// [`crate::replace::ABANDON_AFTER`] ago, so no lock holds it off) would start or restore a
/// container after the removal: then nothing is removed and the target fails, as a deployment
/// refuses to start a second replace step beside a running one.
pub async fn remove_all(host: &dyn Host, app: &str, environment: &str) -> Result<RemovedAll, DockerError> {
    let script = format!(
        "{busy}ids=$(docker ps -aq --no-trunc --filter label=ferry.app={app} --filter label=ferry.environment={env}) || exit 1\n\
         if [ -n \"$ids\" ]; then\n\
           docker inspect --format '{{{{.Name}}}}' $ids || exit 1\n\
           docker stop $ids > /dev/null || exit 1\n\
           docker rm $ids > /dev/null || exit 1\n\
         fi\n\
         echo '--- leftovers'\n{collect}",
        busy = replace_busy_script(app, environment),
        app = q(app),
        env = q(environment),
        collect = crate::replace::collect_leftovers_script(app, environment),
    );
    let out = sh(host, "remove containers", &script, None, PULL_DEADLINE).await?;
    let text = out.text();
    if let Some((_, busy)) = text.split_once("--- busy\n") {
        let deployment = busy.lines().find_map(|l| l.strip_prefix("deployment=")).unwrap_or("?");
        return Err(DockerError::Failed {
            step: "remove containers",
            message: format!(
                "a replace step of deployment {deployment} is still running here; nothing was removed: \
                 run the removal again once it ended"
            ),
        });
    }
    let (names, leftovers) = text.split_once("--- leftovers\n").unwrap_or((&text, ""));
    Ok(RemovedAll {
        containers: names
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        leftovers: crate::replace::parse_leftovers(leftovers),
    })
}

/// Script lines that print `--- busy` and the step's `meta` (`deployment=…`) and exit 0 when a
/// replace step of `app` in `environment` still runs on the target (its runner died moments
/// ago): its stopped containers are its own to start or restore.
pub(crate) fn replace_busy_script(app: &str, environment: &str) -> String {
    format!(
        "for d in \"$HOME\"/.ferry/replace/*/; do\n\
           [ -f \"$d/meta\" ] && grep -qxF app={app} \"$d/meta\" && grep -qxF environment={env} \"$d/meta\" || continue\n\
           if [ -s \"$d/pid\" ] && kill -0 \"$(cat \"$d/pid\")\" 2>/dev/null && ! grep -q '^done ' \"$d/status\" 2>/dev/null; then\n\
             echo '--- busy'; cat \"$d/meta\"; exit 0\n\
           fi\n\
         done\n",
        app = q(app),
        env = q(environment),
    )
}

/// One container by name or id.
pub async fn inspect(host: &dyn Host, container: &str) -> Result<Container, DockerError> {
    let out = sh(host, "inspect", &format!("docker inspect {}", q(container)), None, STEP_DEADLINE).await?;
    one_container(&out.text())
}

fn one_container(json: &str) -> Result<Container, DockerError> {
    let failed = |message: String| DockerError::Failed { step: "read docker inspect", message };
    parse_inspect(json).map_err(failed)?.into_iter().next().ok_or_else(|| failed("no container".into()))
}

/// Pulls `image`; returns the manifest digest Docker reports (`Digest: sha256:…`).
pub async fn pull(host: &dyn Host, image: &str) -> Result<Option<String>, DockerError> {
    let out = sh(host, "docker pull", &format!("docker pull {}", q(image)), None, PULL_DEADLINE).await?;
    Ok(pulled_digest(&out.text()))
}

/// Registry credentials for `docker login` on a target.
#[derive(Debug, Clone)]
pub struct Login {
    /// `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password (sent through stdin).
    pub password: crate::secret::Secret,
}

/// The name prefix of the private Docker client configs that registry logins use.
const DOCKER_CONFIG_PREFIX: &str = "docker-config-";

/// Removes private client configs that a killed pull left behind (a `KILL` runs no trap): any
/// older than the pull deadline is no other pull's.
const DOCKER_CONFIG_SWEEP: &str =
    "find \"$HOME/.ferry\" -maxdepth 1 -name 'docker-config-*' -mmin +11 -exec rm -rf {} + 2>/dev/null\n";

/// What a deployment needs to know about an existing container to decide what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brief {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// Its `ferry.config-hash` label.
    pub config_hash: Option<String>,
    /// Its `ferry.version` label (the tag it was deployed as).
    pub version: Option<String>,
    /// Its `ferry.digest` label (the bytes it was deployed as).
    pub digest: Option<String>,
}

/// Pulls `image` and lists the containers of `app` in `environment`, in one round trip and
/// one `docker ps` (a deployment's hot path: each docker CLI start costs tens of milliseconds
/// of CPU on the target); also reads (and clears) the outcomes of this app's replace steps that
/// ended with nobody to read them, so that the deployment can report them. An image pinned by
/// digest that the target already has is not pulled (then the second value is true).
pub async fn pull_and_list(
    host: &dyn Host,
    image: &str,
    app: &str,
    environment: &str,
    login: Option<&Login>,
) -> Result<(Option<String>, bool, Vec<Brief>, Vec<crate::replace::Leftover>), DockerError> {
    // The password reaches `docker login` through the channel's stdin, never a command line,
    // and is stored only in a private client config (0700, random name) that this script
    // removes when the pull is done, whatever way it ends: nothing stays logged in.
    let login_step = login.map_or_else(String::new, login_script);
    let stdin = login.map(|l| l.password.expose().as_bytes());
    let pull = format!(
        "{login_step}docker pull {image} || exit 1; [ -z \"${{cfg:-}}\" ] || {{ rm -rf \"$cfg\"; cfg=; unset DOCKER_CONFIG; }}",
        image = q(image)
    );
    // An image pinned by digest that the target already has is those bytes: no pull, so a
    // rollback to an image retention kept works with the registry out of reach.
    let pull = match image.split_once('@').filter(|(_, d)| d.starts_with("sha256:")) {
        Some((_, digest)) => format!(
            "if docker image inspect {image} > /dev/null 2>&1; then echo {present}; echo {line}; else\n{pull}\nfi",
            image = q(image),
            present = q(PRESENT),
            line = q(&format!("Digest: {digest}")),
        ),
        // An image id (`--archive`, or a rollback to such a deployment): no registry has it,
        // so it is only looked for; a missing one the caller loads (or reports).
        None if is_image_id(image) => format!(
            "if docker image inspect {image} > /dev/null 2>&1; then echo {present}; echo {line}; fi",
            image = q(image),
            present = q(PRESENT),
            line = q(&format!("Digest: {image}")),
        ),
        None => pull,
    };
    // Marked as pulled (or found) for a deployment, so that retention in another environment
    // on this host does not remove it before this deployment's container uses it.
    let note = q(&format!("{app}\t{environment}\t{image}"));
    let pull = format!(
        "{pull}; mkdir -p \"$HOME\"/{PULLED_DIR} && printf '%s\\n' {note} > \"$HOME\"/{PULLED_DIR}/\"$(printf %s {note} | cksum | cut -d' ' -f1)\""
    );
    let script = format!(
        "{pull}; echo '--- containers'; \
         docker ps -a --no-trunc --filter label=ferry.app={app} --filter label=ferry.environment={env} \
           --format '{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"ferry.config-hash\"}}}}\t{{{{.Label \"ferry.version\"}}}}\t{{{{.Label \"ferry.digest\"}}}}' || exit 1\n\
         echo '--- leftovers'\n{collect}",
        app = q(app),
        env = q(environment),
        collect = crate::replace::collect_leftovers_script(app, environment),
    );
    let out = sh(host, "docker pull", &script, stdin, PULL_DEADLINE).await?;
    let text = out.text();
    let (pulled, listed) = text.split_once("--- containers\n").unwrap_or((&text, ""));
    let (listed, leftovers) = listed.split_once("--- leftovers\n").unwrap_or((listed, ""));
    let present = pulled.lines().any(|l| l == PRESENT);
    Ok((pulled_digest(pulled), present, parse_briefs(listed), crate::replace::parse_leftovers(leftovers)))
}

/// Whether `image` is an image id (`sha256:<64 hex>`), as a deployment from `--archive` runs.
pub fn is_image_id(image: &str) -> bool {
    image.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// How long streaming an archive into `docker load` may take on one target.
pub const LOAD_DEADLINE: Duration = Duration::from_secs(3600);

/// Streams an image archive into `docker load` on `host`, then checks that image `id` is there
/// (an archive whose image docker stored under another id would otherwise run something else).
pub async fn load(
    host: &dyn Host,
    archive: crate::host::ByteReader<'_>,
    id: &str,
) -> Result<(), DockerError> {
    let script = format!(
        "docker load || exit 1\n\
         docker image inspect {id} > /dev/null 2>&1 || {{ echo 'docker load ended, but image {id} is not there' >&2; exit 1; }}",
        id = q(id)
    );
    let mut out = Capture::default();
    let status = host.exec_reader(&script, archive, Some(LOAD_DEADLINE), &mut out).await?;
    if status.success() {
        return Ok(());
    }
    let errors = out.errors();
    let message = if errors.is_empty() { status.to_string() } else { last_lines(&errors, 3) };
    Err(DockerError::Failed { step: "docker load", message })
}

/// Where, below a target's home, [`pull_and_list`] notes each image a deployment pulled or
/// found (one small file `APP\tENVIRONMENT\tIMAGE` per image, its mtime the time): retention
/// keeps an image that another app or environment noted in the last [`PULLED_FRESH_MINUTES`],
/// whatever the records say, since that deployment runs under its own lock and may not have
/// started its container yet. Its own environment's notes it ignores (its lock is held).
pub const PULLED_DIR: &str = ".ferry/pulled";

/// How long a pull note keeps its image from retention (longer than any pull-to-start).
pub const PULLED_FRESH_MINUTES: u32 = 60;

/// The line [`pull_and_list`]'s script prints when the image pinned by digest was there already.
const PRESENT: &str = "ferry: image present, not pulled";

/// The lines that log a script in to `login`'s registry before it pulls: the password is read
/// from the channel's stdin (the caller passes it), never a command line, into a private
/// client config (`$cfg`, exported as `DOCKER_CONFIG`) that the script removes when it exits,
/// whatever way. A caller that goes on after the pull removes it earlier with [`LOGOUT`].
/// The config starts with an (empty) `auths` entry: a config without one makes the Docker CLI
/// pick a default credential store (`pass` when `docker-credential-pass` and `pass` are
/// installed, docker/cli `DetectDefaultStore`), and on a target whose store is not set up
/// `docker login` then fails ("pass not initialized"), or stores the password there.
pub fn login_script(login: &Login) -> String {
    format!(
        "{DOCKER_CONFIG_SWEEP}\
         cfg=$(umask 077 && mkdir -p \"$HOME/.ferry\" && mktemp -d \"$HOME/.ferry/{DOCKER_CONFIG_PREFIX}XXXXXXXX\") || exit 1\n\
         trap 'rm -rf \"$cfg\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM\n\
         export DOCKER_CONFIG=\"$cfg\"\n\
         printf '%s' {} > \"$cfg/config.json\" || exit 1\n\
         docker login --username {} --password-stdin {} > /dev/null || exit 1\n",
        q(&serde_json::json!({ "auths": { &login.registry: {} } }).to_string()),
        q(&login.username),
        q(&login.registry)
    )
}

/// Ends what [`login_script`] began, right after the pull (nothing stays logged in).
pub const LOGOUT: &str = "[ -z \"${cfg:-}\" ] || { rm -rf \"$cfg\"; cfg=; unset DOCKER_CONFIG; }\n";

/// Reads the `docker ps` lines of [`pull_and_list`].
fn parse_briefs(text: &str) -> Vec<Brief> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (id, name, state) = (fields.next()?, fields.next()?, fields.next()?);
            let mut label = || {
                fields
                    .next()
                    .map(str::trim)
                    .filter(|h| !h.is_empty() && *h != "<no value>")
                    .map(str::to_string)
            };
            Some(Brief {
                id: id.to_string(),
                name: name.to_string(),
                running: state == "running",
                config_hash: label(),
                version: label(),
                digest: label(),
            })
        })
        .collect()
}

/// The digest line of `docker pull`'s output.
pub fn pulled_digest(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Digest: "))
        .map(str::trim)
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
}

/// The manifest digest of `image` as the target's image store knows it (from its last pull),
/// without pulling; `None` when the image is not there.
pub async fn local_digest(host: &dyn Host, image: &str) -> Result<Option<String>, DockerError> {
    let script = format!(
        "docker image inspect --format '{{{{json .RepoDigests}}}}' {} 2>/dev/null || echo '[]'",
        q(image)
    );
    let out = sh(host, "docker image inspect", &script, None, STEP_DEADLINE).await?;
    let digests: Vec<String> = serde_json::from_str(out.text().trim()).unwrap_or_default();
    let repository = repository_of(image);
    Ok(digests
        .iter()
        .filter_map(|d| d.split_once('@'))
        .find(|(repo, _)| *repo == repository)
        .map(|(_, digest)| digest.to_string()))
}

/// `registry/repo` of `registry/repo:tag` or `registry/repo@digest` (a registry port is not a tag).
pub fn repository_of(image: &str) -> &str {
    if let Some((repo, _)) = image.split_once('@') {
        return repo;
    }
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// The last lines a container wrote (stdout and stderr), oldest first, each masked with
/// `secrets` before it is cut (a secret cut in half would no longer match the mask).
pub async fn logs(host: &dyn Host, container: &str, secrets: &[crate::secret::Secret]) -> Vec<String> {
    let script = format!("docker logs --tail {LOG_LINES} {} 2>&1", q(container));
    match sh(host, "docker logs", &script, None, STEP_DEADLINE).await {
        Ok(out) => out
            .text()
            .lines()
            .map(|line| {
                crate::report::truncate_line(
                    &crate::secret::mask(line, secrets),
                    crate::report::TAIL_LINE_BYTES,
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Which of an app's containers on a target `ferry logs` reads: the one under the
/// environment's container name (the one deployments run and `status` judges), else a running
/// one, else any (a stopped container's logs are still worth reading).
pub fn pick<'a>(containers: &'a [Container], name: &str) -> Option<&'a Container> {
    containers
        .iter()
        .find(|c| c.details.name == name)
        .or_else(|| containers.iter().find(|c| c.running()))
        .or_else(|| containers.first())
}

/// What `ferry logs` asks `docker logs` for.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    /// `--tail N`: only the last N lines (none: all).
    pub tail: Option<usize>,
    /// `--since`, as `docker logs` reads it (`600s`, or Unix seconds).
    pub since: Option<String>,
    /// `--follow`: stream new lines until stopped.
    pub follow: bool,
}

/// The script that prints `container`'s logs (stdout and stderr kept apart).
///
/// Following, `docker logs --follow` runs in the background and a watcher waits for the
/// script's stdin to close, then stops it: ferry closes stdin when it stops (Ctrl-C), and sshd
/// closes it when the connection drops, so no `docker logs` outlives ferry on the target. The
/// watcher writes nowhere (its output is /dev/null), so the session ends as soon as `docker
/// logs` does by itself (the container stopped).
pub fn logs_script(container: &str, options: &LogsOptions) -> String {
    let mut flags = String::new();
    if let Some(n) = options.tail {
        flags += &format!(" --tail {n}");
    }
    if let Some(since) = &options.since {
        flags += &format!(" --since {}", q(since));
    }
    let container = q(container);
    if !options.follow {
        return format!("exec docker logs{flags} {container}");
    }
    format!(
        "exec 3<&0\n\
         docker logs --follow{flags} {container} 3<&- &\n\
         p=$!\n\
         {{ cat <&3; kill -TERM \"$p\"; }} >/dev/null 2>&1 &\n\
         w=$!\n\
         exec 3<&-\n\
         wait \"$p\"\n\
         s=$?\n\
         kill \"$w\" 2>/dev/null\n\
         exit \"$s\"\n"
    )
}

/// Exit code of [`exec_script`] when the target runs no container of the app (Docker's own
/// code for "docker itself failed", so it reads the same as a refused `docker exec`).
pub const EXEC_NO_CONTAINER: u32 = 125;

/// The script that runs `argv` in the app's running container (`docker exec`, no shell in
/// between: each word is quoted once). The container is found on the target, when the command
/// runs, by the app's labels, the environment's container name first (as `status` judges it);
/// none running is exit [`EXEC_NO_CONTAINER`] with a message on stderr. `tty` adds `-it` for
/// an interactive session.
pub fn exec_script(
    app: &str,
    environment: &str,
    name: &str,
    argv: &[String],
    tty: bool,
) -> Result<String, shell::NulError> {
    let missing = format!("no running container of app {app} in environment {environment} on this target");
    Ok(format!(
        "names=$(docker ps --filter label=ferry.app={app} --filter label=ferry.environment={environment} \
         --filter status=running --format '{{{{.Names}}}}') || exit {code}\n\
         c=\n\
         for n in $names; do\n\
         \x20 if [ \"$n\" = {name} ]; then c=$n; break; fi\n\
         \x20 [ -n \"$c\" ] || c=$n\n\
         done\n\
         if [ -z \"$c\" ]; then printf '%s{eol}' {missing} >&2; exit {code}; fi\n\
         exec docker exec{tty} \"$c\" {argv}\n",
        app = shell::quote(app)?,
        environment = shell::quote(environment)?,
        name = shell::quote(name)?,
        missing = shell::quote(&missing)?,
        code = EXEC_NO_CONTAINER,
        tty = if tty { " -it" } else { "" },
        // On a raw terminal a newline alone does not return the cursor.
        eol = if tty { "\\r\\n" } else { "\\n" },
        argv = shell::join(argv)?,
    ))
}

/// Starts a stopped container.
pub async fn start(host: &dyn Host, container: &str) -> Result<(), DockerError> {
    let script = format!("docker start {} > /dev/null", q(container));
    sh(host, "docker start", &script, None, STEP_DEADLINE).await.map(|_| ())
}

/// Stops a container (a restarted one that failed its gate goes back to how it was).
pub async fn stop(host: &dyn Host, container: &str) -> Result<(), DockerError> {
    let script = format!("docker stop {} > /dev/null", q(container));
    sh(host, "docker stop", &script, None, STEP_DEADLINE).await.map(|_| ())
}

/// The health gate's settings.
#[derive(Debug, Clone)]
pub struct Gate<'a> {
    /// The app's `health.cmd`, rendered, run on the target.
    pub cmd: Option<&'a str>,
    /// How long to wait for health.
    pub timeout: Duration,
    /// Between attempts.
    pub interval: Duration,
    /// Without a check: how long the container must keep running.
    pub grace: Duration,
    /// Count the grace period from the container's start (`StartedAt`, on the target's clock)
    /// rather than from now: for a container that was already running.
    pub since_start: bool,
}

/// How the gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateResult {
    /// Healthy: how it was judged, and the container's details.
    Healthy(String, Box<Container>),
    /// Not healthy: why, with the check's last output lines.
    Unhealthy(String),
}

/// Waits until `container` is healthy: its HEALTHCHECK says `healthy`; else `health.cmd`
/// succeeds; else it still runs, never restarted, after the grace period (counted in the time
/// slept, so it is never shorter). A container that stops or restarts fails at once. The loop
/// runs on the target: one round trip, not one per poll.
pub async fn gate(host: &dyn Host, container: &str, gate: &Gate<'_>) -> Result<GateResult, DockerError> {
    let script = gate_script(container, gate);
    let deadline = Duration::from_secs(gate_timeout(gate)) + STEP_DEADLINE;
    let mut out = Capture::default();
    let status = host.exec(&script, None, Some(deadline), &mut out).await?;
    read_gate(status.success(), &out.text(), &status.to_string())
}

fn gate_timeout(gate: &Gate<'_>) -> u64 {
    gate.timeout.max(gate.grace + Duration::from_secs(1)).as_secs().max(1)
}

/// The parts of `docker inspect` that the gate hands back, as one JSON line: never the whole
/// document, whose `Config.Env` holds the secrets (the detached replace step keeps the gate's
/// output in a file). The template runs on Docker's typed struct, whose field names are Go's
/// (`ID`, not the JSON's `Id`).
const INSPECT_DETAILS: &str = concat!(
    r#"{"Id":{{json .ID}},"Name":{{json .Name}},"RestartCount":{{json .RestartCount}},"#,
    r#""State":{"Status":{{json .State.Status}},"StartedAt":{{json .State.StartedAt}},"#,
    r#""Health":{{if .State.Health}}{"Status":{{json .State.Health.Status}}}{{else}}null{{end}}},"#,
    r#""Config":{"Image":{{json .Config.Image}},"Labels":{{json .Config.Labels}}},"#,
    r#""NetworkSettings":{"Networks":{{json .NetworkSettings.Networks}},"#,
    r#""Ports":{{json .NetworkSettings.Ports}}}}"#,
);

/// The gate loop as a script of its own (it ends with `exit`: run it in a subshell to embed it).
pub fn gate_script(container: &str, gate: &Gate<'_>) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let timeout = gate_timeout(gate);
    format!(
        "c={c}; timeout={timeout}; interval={interval:.3}; grace_ms={grace_ms}; cmd={cmd}\n\
         ok() {{ echo \"gate: $1\"; echo '--- inspect'; printf '[%s]\\n' \"$json\"; exit 0; }}\n\
         start=${{ferry_gate_start:-$(date +%s)}}; out=''; slept=0\n\
         if [ {since_start} = 1 ]; then\n\
           up=$(date -d \"$(docker inspect -f '{{{{.State.StartedAt}}}}' \"$c\" 2>/dev/null)\" +%s 2>/dev/null) && slept=$(( (start - up) * 1000 ))\n\
         fi\n\
         while :; do\n\
           all=$(docker inspect -f '{{{{.State.Status}}}} {{{{.RestartCount}}}} {{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}none{{{{end}}}}{{{{\"\\n\"}}}}{INSPECT_DETAILS}' \"$c\" 2>&1) || {{ echo \"gate: the container is gone: $all\"; exit 1; }}\n\
           json=$(printf '%s\\n' \"$all\" | sed 1d); set -- $(printf '%s\\n' \"$all\" | sed -n 1p)\n\
           elapsed=$(( $(date +%s) - start )); nap=$interval; nap_ms=0\n\
           [ \"$1\" = running ] || {{ echo \"gate: the container is $1 (it exited)\"; exit 1; }}\n\
           [ \"$2\" = 0 ] || {{ echo \"gate: the container restarted $2 times\"; exit 1; }}\n\
           case $3 in\n\
             healthy) ok 'healthy (image HEALTHCHECK)' ;;\n\
             unhealthy) echo 'gate: unhealthy (image HEALTHCHECK)'; docker inspect -f '{{{{range .State.Health.Log}}}}{{{{.Output}}}}{{{{end}}}}' \"$c\" | tail -n 5; exit 1 ;;\n\
             none)\n\
               if [ -n \"$cmd\" ]; then\n\
                 if out=$(sh -c \"$cmd\" 2>&1 < /dev/null); then ok 'health.cmd passed'; fi\n\
               else\n\
                 [ \"$slept\" -lt \"$grace_ms\" ] || ok \"still running after the grace period\"\n\
                 nap_ms=$((grace_ms - slept)); [ \"$nap_ms\" -le 1000 ] || nap_ms=1000\n\
                 nap=$(printf '%d.%03d' $((nap_ms / 1000)) $((nap_ms % 1000)))\n\
               fi ;;\n\
           esac\n\
           if [ \"$elapsed\" -ge \"$timeout\" ]; then\n\
             echo \"gate: not healthy after ${{timeout}}s\"; [ -z \"$out\" ] || printf '%s\\n' \"$out\" | tail -n 5; exit 1\n\
           fi\n\
           sleep \"$nap\"; slept=$((slept + nap_ms))\n\
         done",
        c = q(container),
        interval = secs(gate.interval).max(0.1),
        grace_ms = gate.grace.as_millis(),
        cmd = q(gate.cmd.unwrap_or_default()),
        since_start = u8::from(gate.since_start),
    )
}

/// The gate's verdict from what its script printed and how it exited.
pub fn read_gate(passed: bool, text: &str, status: &str) -> Result<GateResult, DockerError> {
    let (verdict, inspect) = text.split_once("--- inspect\n").unwrap_or((text, ""));
    let reason = verdict.lines().find_map(|l| l.strip_prefix("gate: ")).unwrap_or("").to_string();
    if !passed {
        let extra: Vec<&str> = verdict.lines().filter(|l| !l.starts_with("gate: ")).collect();
        let mut why = if reason.is_empty() { format!("health gate: {status}") } else { reason };
        if !extra.is_empty() {
            why = format!("{why}: {}", extra.join("; "));
        }
        return Ok(GateResult::Unhealthy(why));
    }
    Ok(GateResult::Healthy(reason, Box::new(one_container(inspect)?)))
}

/// Runs a rendered `post_deploy` script; its output goes to `sink`.
pub async fn post_deploy(
    host: &dyn Host,
    script: &str,
    sink: &mut dyn crate::exec::OutputSink,
) -> Result<(), DockerError> {
    let status = host.exec(script, None, Some(STEP_DEADLINE), sink).await?;
    if status.success() {
        Ok(())
    } else {
        Err(DockerError::Failed { step: "post_deploy", message: status.to_string() })
    }
}

/// The parts of `docker inspect`'s JSON that ferry reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    name: String,
    #[serde(default)]
    restart_count: u64,
    state: InspectedState,
    config: InspectedConfig,
    #[serde(default)]
    network_settings: InspectedNetwork,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    status: String,
    #[serde(default)]
    started_at: String,
    health: Option<InspectedHealth>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedHealth {
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedNetwork {
    #[serde(default)]
    networks: Option<BTreeMap<String, InspectedEndpoint>>,
    #[serde(default)]
    ports: Option<BTreeMap<String, Option<Vec<InspectedBinding>>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedEndpoint {
    #[serde(rename = "IPAddress", default)]
    ip_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedBinding {
    #[serde(default)]
    host_ip: String,
    #[serde(default)]
    host_port: String,
}

/// Reads `docker inspect` output (a JSON array of containers).
pub fn parse_inspect(json: &str) -> Result<Vec<Container>, String> {
    let inspected: Vec<Inspected> = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    Ok(inspected.into_iter().map(container).collect())
}

fn container(c: Inspected) -> Container {
    let labels = c.config.labels.unwrap_or_default();
    let ips: BTreeMap<String, String> = c
        .network_settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, e)| !e.ip_address.is_empty())
        .map(|(n, e)| (n, e.ip_address))
        .collect();
    let mut ports = Vec::new();
    for (port, bindings) in c.network_settings.ports.unwrap_or_default() {
        for b in bindings.unwrap_or_default() {
            ports.push(PublishedPort { container: port.clone(), host_ip: b.host_ip, host_port: b.host_port });
        }
    }
    let digest = labels.get("ferry.digest").cloned().or_else(|| {
        c.config.image.split_once('@').map(|(_, d)| d.to_string()).filter(|d| d.starts_with("sha256:"))
    });
    Container {
        details: ContainerDetails {
            id: c.id,
            name: c.name.trim_start_matches('/').to_string(),
            image: c.config.image,
            digest,
            ip: ips.values().next().cloned().unwrap_or_default(),
            ips,
            ports,
        },
        status: c.state.status,
        restarts: c.restart_count,
        health: c.state.health.map(|h| h.status),
        started_at: c.state.started_at,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`exec_script`] under a local `sh` with a stand-in `docker` whose `ps` prints
    /// `names` and whose `exec` prints its arguments, one per `|`.
    async fn exec_with(names: &str, argv: &[&str]) -> (Capture, crate::exec::ExitStatus) {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        let fake =
            format!("#!/bin/sh\nif [ \"$1\" = ps ]; then printf '{names}'; else printf '%s|' \"$@\"; fi\n");
        std::fs::write(&docker, fake).unwrap();
        std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let argv: Vec<String> = argv.iter().map(|w| w.to_string()).collect();
        let script = exec_script("web", "prod", "web-prod", &argv, false).unwrap();
        let script = format!("PATH={}:$PATH\n{script}", dir.path().display());
        let mut out = Capture::default();
        let status = crate::host::LocalHost::new("t").exec(&script, None, None, &mut out).await.unwrap();
        (out, status)
    }

    #[tokio::test]
    async fn exec_passes_each_word_as_it_is_to_the_environments_container() {
        let argv = ["printf", "%s\\n", "a b", "$HOME", "it's", "*", ""];
        let (out, status) = exec_with("other-1\\nweb-prod\\n", &argv).await;
        assert_eq!(out.text(), "exec|web-prod|printf|%s\\n|a b|$HOME|it's|*||");
        assert!(status.success());
        let (out, _) = exec_with("web-other\\n", &["true"]).await;
        assert_eq!(out.text(), "exec|web-other|true|", "another running container of the app");
        let (out, status) = exec_with("", &["true"]).await;
        assert_eq!(status, crate::exec::ExitStatus::Code(EXEC_NO_CONTAINER));
        assert_eq!(out.errors(), "no running container of app web in environment prod on this target");
    }

    const INSPECT: &str = r#"[{"Id":"abc123","Name":"/web-lab","RestartCount":0,
      "State":{"Status":"running","Running":true,"StartedAt":"2026-12-01T10:00:00.123456789Z","Health":{"Status":"healthy","Log":[]}},
      "Config":{"Image":"10.200.0.1:5000/ferry/web@sha256:feed","Labels":{"ferry.app":"web","ferry.config-hash":"h1"}},
      "NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.31.1.2"}},
        "Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}],"443/tcp":null}}}]"#;

    #[tokio::test]
    async fn container_log_lines_are_cut_to_the_tail_line_length() {
        let long = "x".repeat(10 * crate::report::TAIL_LINE_BYTES);
        // The secret begins 6 bytes before the cut: cut first, masked after, "dsn-pw" stays.
        let secret = crate::secret::Secret::new("dsn-pw-0123456789");
        let at_cut = format!("{}{} end", "y".repeat(crate::report::TAIL_LINE_BYTES - 3 - 6), secret.expose());
        let host = crate::host::fake::FakeHost::new("t1")
            .on("docker logs", crate::host::fake::Reply::ok(&format!("short\n{long}\n{at_cut}\n")));
        let lines = logs(&host, "web-lab", std::slice::from_ref(&secret)).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "short");
        assert_eq!(lines[1].len(), crate::report::TAIL_LINE_BYTES);
        assert!(lines[1].ends_with('…'), "a cut line is marked");
        assert!(lines[2].ends_with("*** end") && !lines[2].contains("dsn-pw"), "masked before the cut");
    }

    #[test]
    fn reads_what_inspect_says() {
        let c = &parse_inspect(INSPECT).unwrap()[0];
        assert_eq!(c.details.name, "web-lab");
        assert_eq!(c.details.digest.as_deref(), Some("sha256:feed"));
        assert_eq!(c.details.ip, "172.31.1.2");
        assert_eq!(c.details.ports.len(), 2);
        assert_eq!(c.details.ports[0].host_port, "8080");
        assert_eq!(c.health.as_deref(), Some("healthy"));
        assert_eq!(c.label("ferry.config-hash"), Some("h1"));
        assert!(c.running());
    }

    #[test]
    fn host_network_and_no_labels_are_fine() {
        let json = r#"[{"Id":"x","Name":"/n","State":{"Status":"exited"},"Config":{"Image":"img:1","Labels":null},
          "NetworkSettings":{"Networks":{"host":{"IPAddress":""}},"Ports":{}}}]"#;
        let c = &parse_inspect(json).unwrap()[0];
        assert_eq!((c.details.ip.as_str(), c.details.digest.clone(), c.running()), ("", None, false));
        assert!(parse_inspect("not json").is_err());
        assert_eq!(parse_inspect("[]").unwrap(), Vec::new());
    }

    #[test]
    fn repository_without_tag_or_digest() {
        assert_eq!(repository_of("10.200.0.1:5000/ferry/web:1.0"), "10.200.0.1:5000/ferry/web");
        assert_eq!(repository_of("10.200.0.1:5000/ferry/web"), "10.200.0.1:5000/ferry/web");
        assert_eq!(repository_of("web@sha256:ab"), "web");
        assert_eq!(repository_of("web:latest"), "web");
    }

    #[test]
    fn reads_docker_ps_lines() {
        let briefs = parse_briefs("abc\tweb-lab\trunning\th1\ndef\tweb-lab-ferry-old-1\texited\t\n");
        assert_eq!(briefs.len(), 2);
        assert_eq!((briefs[0].running, briefs[0].config_hash.as_deref()), (true, Some("h1")));
        assert_eq!((briefs[1].running, briefs[1].config_hash.as_deref()), (false, None));
    }

    #[test]
    fn finds_the_pulled_digest() {
        let out = "1.0: Pulling from ferry/web\nDigest: sha256:0123\nStatus: Image is up to date\n";
        assert_eq!(pulled_digest(out).as_deref(), Some("sha256:0123"));
        assert_eq!(pulled_digest("10.200.0.1:5000/ferry/web:1.0\n"), None);
    }
}
