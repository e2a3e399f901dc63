//! The command line: flags, subcommands, and the mapping of results to exit codes.
//!
//! Flags are converted here, once, into the validated values of [`crate::request`] (ripgrep's
//! way): every duration, `--set`, `--limit` and `--version` goes through a value parser, so a bad
//! flag is a usage error (exit 2) before any command starts, records, locks or connects. The
//! clap structs below never leave this module.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::diagnostic::Diagnostic;
use crate::error::Error;
use crate::output::OutputFormat;
use crate::request::{self, Request, Set};

/// ferry moves a Docker image through your environments over SSH, safely and on the record.
///
/// An inventory (TOML) lists targets, groups them into environments (dev, staging, prod) and
/// defines apps: an image, a `docker run` template and variables. `ferry plan` shows exactly
/// what would run on each target; nothing touches a network until a deploy.
#[derive(Debug, Parser)]
#[command(name = "ferry", version = VERSION, max_term_width = 100)]
#[command(after_help = EXIT_CODES, after_long_help = EXAMPLES)]
pub struct Cli {
    /// Inventory file [default: ./ferry.toml, or the only *.toml in ./inventories]
    #[arg(short = 'i', long, env = "FERRY_INVENTORY", global = true, value_name = "FILE")]
    pub inventory: Option<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, global = true)]
    pub output: OutputFormat,

    /// Log to stderr: -v info, -vv debug, -vvv trace (or set FERRY_LOG)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// `ferry --version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FERRY_COMMIT"), ")");

/// One line on the exit codes, under every `-h`.
const EXIT_CODES: &str =
    "Exit codes: 0 success, 1 failed on a target, 2 invalid input, 3 locked, 4 refused, 130 interrupted.";

/// Examples and exit codes, under `--help`.
const EXAMPLES: &str = "Examples:
  ferry init
  ferry check -i inventories/example.toml
  ferry plan web --env prod --version 1.4.2
  ferry plan web --env prod --version 1.4.2 --limit 'prod-*' --output json
  ferry vars web --env prod --target prod-1
  ferry trust --env prod
  ferry plan web --env prod --version 1.4.2 --diff
  ferry deploy web --env prod --version 1.4.2
  ferry deploy web --env dev --version 1.4.2 --yes --output plain   # cron, CI
  ferry versions web
  ferry deploy web --env dev --version latest --yes
  ferry status web --env prod
  ferry status --env prod
  ferry remove web --env staging
  ferry prune web --env prod --dry-run
  ferry maintenance on web --env prod --message 'Back at 10:00 UTC'
  ferry proxy status --env prod
  ferry promote web --to prod
  ferry rollback web --env prod
  ferry run --env prod --role web -- docker ps
  ferry logs web --env prod --tail 100 --follow
  ferry exec web --env prod --target prod-1 -- sh

Exit codes: 0 success, 1 failed on a target, 2 invalid input, 3 locked, 4 refused, 130 interrupted.";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the inventory and render every app in every environment
    Check(CheckArgs),
    /// Show what a deployment would run on each target (no SSH)
    Plan(PlanArgs),
    /// Show an app's resolved variables and where each value came from
    Vars(VarsArgs),
    /// Deploy a version of an app to an environment: pull, replace, health-gate, record
    Deploy(DeployArgs),
    /// Deploy what last succeeded in the previous lifecycle phase
    Promote(PromoteArgs),
    /// Redeploy the previous successful deployment's recorded version and config
    Rollback(RollbackArgs),
    /// What runs on each target, and drift against the last successful deployment
    Status(StatusArgs),
    /// Stop and remove an app's containers in an environment, and stop expecting it there
    Remove(RemoveArgs),
    /// Remove an app's images that retention no longer keeps, and its stopped containers
    Prune(PruneArgs),
    /// The proxy on the targets (apps with `proxy = {…}`): status, boot, reboot
    Proxy(ProxyArgs),
    /// Put an app behind the proxy in maintenance (503 with a message), or take it out
    Maintenance(MaintenanceArgs),
    /// The inventory's apps, their environments and targets (no SSH)
    #[command(visible_alias = "apps")]
    Ls,
    /// Write a commented starter inventory and template (never overwrites a file)
    Init(InitArgs),
    /// The app's versions in its feed, newest first, with digests
    Versions(VersionsArgs),
    /// Run a shell command on every target of an environment (ad hoc, playbook-style)
    Run(RunArgs),
    /// An app's container logs from every target, each line prefixed with its target
    Logs(LogsArgs),
    /// Run a command in an app's containers (interactive on one target from a terminal)
    Exec(ExecArgs),
    /// Fetch targets' host keys, show their fingerprints, and record them in known_hosts
    Trust(TrustArgs),
    /// The audit log, newest first: who ran what, where, when, and how it ended
    History(HistoryArgs),
    /// Check the audit log's hash chain, or benchmark appends
    Audit(AuditArgs),
    /// Show, take or release an environment's lock (e.g. to freeze prod)
    Lock(LockArgs),
    /// The shared store: create its schema, move a local log into it, show it
    State(StateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print ferry's man page (roff), e.g. `ferry man > /usr/local/share/man/man1/ferry.1`
    Man,
}

/// `ferry lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// What to do
    #[command(subcommand)]
    pub action: LockAction,
}

/// `ferry lock` subcommands.
#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Who holds the environment's lock on each target
    Status(LockTarget),
    /// Take the lock on every target of the environment
    Acquire {
        /// Which environment.
        #[command(flatten)]
        target: LockTarget,
        /// Why (shown to everyone who finds the environment locked)
        #[arg(long, value_name = "TEXT", default_value = "")]
        message: String,
        /// The lock expires after this long
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = flag(duration))]
        ttl: Duration,
        /// Take it over even if someone else holds it (audited)
        #[arg(long)]
        force: bool,
    },
    /// Release the lock (yours; someone else's only with --force, audited)
    Release {
        /// Which environment.
        #[command(flatten)]
        target: LockTarget,
        /// Break a lock held by someone else
        #[arg(long)]
        force: bool,
    },
}

/// The environment of a `ferry lock` command.
#[derive(Debug, Args)]
pub struct LockTarget {
    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,
}

/// `ferry history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this app
    pub app: Option<String>,

    /// Only this environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: Option<String>,

    /// Only runs started within this long (e.g. 24h, 7d)
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub since: Option<Duration>,

    /// At most this many runs
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,

    /// Show one run: its targets' outcomes, container ids and errors (a run id from `ferry history`, or a unique prefix of one)
    #[arg(long, value_name = "ID", conflicts_with_all = ["app", "environment", "since"])]
    pub run: Option<String>,
}

/// `ferry state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do
    #[command(subcommand)]
    pub action: StateAction,
}

/// `ferry state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Create the shared store's schema, or upgrade it to this ferry's version
    Init,
    /// Push spooled records, then import a local audit log (verified first; a second push adds nothing)
    Push {
        /// Import this log instead of the state folder's audit.jsonl
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Which store is in use, its schema version, record count and chain head
    Status,
}

/// `ferry audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// What to do
    #[command(subcommand)]
    pub action: AuditAction,
}

/// `ferry audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Walk the hash chain; name the first record that was edited, deleted or moved
    Verify {
        /// Verify this file instead of the inventory's log
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Append synthetic `bench` records and report the time per append (fsync included)
    Bench {
        /// How many records
        #[arg(long, default_value_t = 1000, value_name = "N")]
        records: usize,
        /// Append to this file instead of the inventory's log
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
}

/// `ferry check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Treat warnings (unused variables, `|safe`) as errors
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Selects an app in an environment, with the common narrowing flags.
#[derive(Debug, Args)]
pub struct Selection {
    /// The app to deploy
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Override a variable for this run (highest precedence; repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = flag(set))]
    pub sets: Vec<Set>,
}

/// `ferry plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    /// The app, environment and narrowing flags.
    pub selection: Selection,

    /// The image tag [default: latest: the newest version in the app's feed; without a feed, the tag `latest`]
    #[arg(long, value_name = "TAG", value_parser = flag(tag))]
    pub version: Option<String>,

    /// Connect to the targets and show per target: create, replace (and why) or no change
    #[arg(long)]
    pub diff: bool,

    /// With --diff: give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,
}

/// Flags of the commands that change containers (`deploy`, `rollback`).
#[derive(Debug, Args)]
pub struct ApplyFlags {
    /// Go ahead without the confirmation prompt (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Replace containers even when their config is unchanged
    #[arg(long)]
    pub force: bool,

    /// Print nothing on stdout unless a target changed or failed (cron: a no-op is silent)
    #[arg(short, long)]
    pub quiet: bool,

    /// Targets changed at once inside a rollout batch
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,

    /// Wait this long for a held environment lock instead of failing at once (exit 3)
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub lock_wait: Option<Duration>,

    /// The lock expires after this long if ferry dies without releasing it
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = flag(duration))]
    pub lock_ttl: Duration,
}

/// `ferry deploy`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("overrides").args(["skip_lifecycle", "override_freeze"]).multiple(true)))]
pub struct DeployArgs {
    #[command(flatten)]
    /// The app, environment and narrowing flags.
    pub selection: Selection,

    /// The image tag to deploy; `latest` means the newest version the app's rules allow
    #[arg(long, value_name = "TAG", required_unless_present = "archive", value_parser = flag(tag))]
    pub version: Option<String>,

    /// Deploy the image in this `docker save` archive, streamed over SSH into `docker load` (no registry)
    #[arg(long, value_name = "FILE")]
    pub archive: Option<std::path::PathBuf>,

    /// Deploy even though the release has not passed the previous lifecycle phase (audited)
    #[arg(long, requires = "reason")]
    pub skip_lifecycle: bool,

    /// Deploy inside a freeze window (`[[freeze]]`; needs --reason, audited)
    #[arg(long, requires = "reason")]
    pub override_freeze: bool,

    /// Why the lifecycle is skipped or the freeze overridden (kept in the audit log)
    #[arg(long, value_name = "TEXT", requires = "overrides")]
    pub reason: Option<String>,

    #[command(flatten)]
    /// Confirmation, parallelism and lock flags.
    pub apply: ApplyFlags,
}

/// `ferry promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The app
    pub app: String,

    /// The environment to promote to; the release comes from the phase before it
    #[arg(long = "to", value_name = "ENV")]
    pub to: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Override a variable for this run (highest precedence; repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = flag(set))]
    pub sets: Vec<Set>,

    /// Deploy inside a freeze window (`[[freeze]]`; needs --reason, audited)
    #[arg(long, requires = "reason")]
    pub override_freeze: bool,

    /// Why the freeze is overridden (kept in the audit log)
    #[arg(long, value_name = "TEXT", requires = "override_freeze")]
    pub reason: Option<String>,

    #[command(flatten)]
    /// Confirmation, parallelism and lock flags.
    pub apply: ApplyFlags,
}

/// `ferry rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Roll back to this deployment (an id from `ferry history`, or a unique prefix of one) instead of the previous one
    #[arg(long, value_name = "DEPLOYMENT_ID")]
    pub to: Option<String>,

    /// Deploy inside a freeze window (`[[freeze]]`; needs --reason, audited)
    #[arg(long, requires = "reason")]
    pub override_freeze: bool,

    /// Why the freeze is overridden (kept in the audit log)
    #[arg(long, value_name = "TEXT", requires = "override_freeze")]
    pub reason: Option<String>,

    #[command(flatten)]
    /// Confirmation, parallelism and lock flags.
    pub apply: ApplyFlags,
}

/// `ferry versions`.
#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The app
    pub app: String,

    /// Show the digests of this many of the newest versions
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub digests: usize,
}

/// `ferry remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The app
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Go ahead without the confirmation prompt (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Targets worked on at once
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,

    /// Wait this long for a held environment lock instead of failing at once (exit 3)
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub lock_wait: Option<Duration>,

    /// The lock expires after this long if ferry dies without releasing it
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = flag(duration))]
    pub lock_ttl: Duration,
}

/// `ferry prune`: `remove`'s flags, and `--dry-run`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    /// The app, environment, selection and lock flags.
    pub common: RemoveArgs,

    /// List what would be removed on each target; remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// `ferry proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// What to do
    #[command(subcommand)]
    pub action: ProxyAction,
}

/// `ferry proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProxyAction {
    /// The proxy, its network and its routes on each target of the environment
    Status {
        /// The environment
        #[arg(short, long = "env", value_name = "ENV")]
        environment: String,
        /// Only targets matching these globs (repeat, or separate with commas)
        #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
        limit: Vec<String>,
        /// Give up on a target whose SSH session is not up within this time
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
        connect_timeout: Duration,
    },
    /// Create the network and start the proxy where they are missing (idempotent)
    Boot(ProxyWriteArgs),
    /// Pull the image and load every route of every app and environment again: gracefully
    /// when the proxy already runs that image, else by recreating it
    Reboot {
        /// Which environment, and how.
        #[command(flatten)]
        write: ProxyWriteArgs,
        /// This image instead of the inventory's `[proxy] image`
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Recreate the container even when it runs the image (requests fail for a moment)
        #[arg(long)]
        recreate: bool,
    },
}

/// The flags of `ferry proxy boot|reboot` and `ferry maintenance on|off`.
#[derive(Debug, Args)]
pub struct ProxyWriteArgs {
    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Go ahead without the confirmation prompt (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Targets worked on at once
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,

    /// Wait this long for a held environment lock instead of failing at once (exit 3)
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub lock_wait: Option<Duration>,

    /// The lock expires after this long if ferry dies without releasing it
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = flag(duration))]
    pub lock_ttl: Duration,
}

impl From<ProxyWriteArgs> for request::ProxyWrite {
    fn from(a: ProxyWriteArgs) -> Self {
        request::ProxyWrite {
            environment: a.environment,
            limits: a.limit,
            yes: a.yes,
            parallel: a.parallel,
            connect_timeout: a.connect_timeout,
            lock: request::LockTiming { ttl: a.lock_ttl, wait: a.lock_wait },
        }
    }
}

/// `ferry maintenance`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// On or off
    #[command(subcommand)]
    pub action: MaintenanceAction,
}

/// `ferry maintenance` subcommands.
#[derive(Debug, Subcommand)]
pub enum MaintenanceAction {
    /// The proxy answers the app's requests with 503 and a message
    On {
        /// The app
        app: String,
        /// Which environment, and how.
        #[command(flatten)]
        write: ProxyWriteArgs,
        /// The answer's text [default: "APP is under maintenance"]
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
    },
    /// The proxy sends the app's requests to it again
    Off {
        /// The app
        app: String,
        /// Which environment, and how.
        #[command(flatten)]
        write: ProxyWriteArgs,
    },
}

/// `ferry init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write into this folder instead of the current one
    pub dir: Option<PathBuf>,
}

/// `ferry status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The app [default: every app of the environment]
    pub app: Option<String>,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,
}

/// `ferry vars`.
#[derive(Debug, Args)]
pub struct VarsArgs {
    /// The app
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Resolve for this target (adds the target layer)
    #[arg(short, long, value_name = "TARGET")]
    pub target: Option<String>,

    /// Override a variable (highest precedence; repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = flag(set))]
    pub sets: Vec<Set>,
}

/// Connection flags shared by the commands that reach targets.
#[derive(Debug, Args)]
pub struct Reach {
    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Targets worked on at once
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,
}

/// `ferry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which targets, and how to reach them.
    #[command(flatten)]
    pub reach: Reach,

    /// Only targets with this role (repeatable)
    #[arg(long, value_name = "ROLE")]
    pub role: Vec<String>,

    /// Kill the command on a target after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub timeout: Option<Duration>,

    /// Take the environment lock for the run (ad-hoc reads do not need it)
    #[arg(long)]
    pub lock: bool,

    /// With --lock: wait this long for a held lock instead of failing at once (exit 3)
    #[arg(long, value_name = "DURATION", requires = "lock", value_parser = flag(duration))]
    pub lock_wait: Option<Duration>,

    /// With --lock: the lock expires after this long if the run dies without releasing it
    #[arg(long, value_name = "DURATION", default_value = "1h", requires = "lock", value_parser = flag(duration))]
    pub lock_ttl: Duration,

    /// The command, run by /bin/sh on each target; its words are joined with spaces, as ssh does
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `ferry logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, visible_alias = "target", value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Only the last N lines of each target
    #[arg(long, value_name = "N", value_parser = flag(request::parse_lines))]
    pub tail: Option<usize>,

    /// Only lines since this long ago (10m, 2h) or since this time (2026-12-07T01:00:00Z)
    #[arg(long, value_name = "WHEN", value_parser = flag(since))]
    pub since: Option<request::Since>,

    /// Keep streaming new lines until Ctrl-C
    #[arg(short, long)]
    pub follow: bool,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,
}

/// `ferry exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The app
    pub app: String,

    /// The environment
    #[arg(short, long = "env", value_name = "ENV")]
    pub environment: String,

    /// Only targets matching these globs (repeat, or separate with commas)
    #[arg(long, visible_alias = "target", value_name = "GLOB", value_delimiter = ',', value_parser = flag(glob))]
    pub limit: Vec<String>,

    /// Run on several targets without the confirmation prompt (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Targets worked on at once
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,

    /// Give up on a target whose SSH session is not up within this time
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = flag(duration))]
    pub connect_timeout: Duration,

    /// Stop waiting for a target after this long (not in an interactive session); the process in the container may go on
    #[arg(long, value_name = "DURATION", value_parser = flag(duration))]
    pub timeout: Option<Duration>,

    /// The command and its arguments, passed to `docker exec` as they are (no shell)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `ferry trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Which targets, and how to reach them.
    #[command(flatten)]
    pub reach: Reach,

    /// Record new keys without asking (required when stdin is not a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Replace the recorded key of this target (name), e.g. after it was rebuilt (repeatable)
    #[arg(long, value_name = "TARGET")]
    pub replace: Vec<String>,
}

/// Parses the process arguments, runs the command, prints any error, and returns the exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    crate::logging::init(cli.verbose);
    let global = request::Global { inventory: cli.inventory, output: cli.output };
    let request = match cli.command.into_request() {
        Ok(request) => request,
        // Answered without an inventory (completions, the man page).
        Err(code) => return code,
    };
    match commands::run(&global, request) {
        Ok(code) => code,
        Err(error) => report(&error, global.output),
    }
}

/// Prints a clap error; a flag our value parsers refused is shown as ferry's own diagnostic
/// (the same words a bad value in the inventory gets). Help and version are successes; every
/// usage error is exit 2 (clap's default).
fn usage_error(e: &clap::Error) -> i32 {
    use std::error::Error as _;
    if let Some(refused) = e.source().and_then(|s| s.downcast_ref::<Refused>()) {
        // The flags were not parsed, so `--output json` is looked for in the raw arguments.
        let output = if asks_for_json(std::env::args()) { OutputFormat::Json } else { OutputFormat::Human };
        return report(&Error::Input(refused.0.clone()), output);
    }
    let _ = e.print();
    e.exit_code()
}

/// `--output json` (or `--output=json`) among the options, before any `--`.
fn asks_for_json(args: impl Iterator<Item = String>) -> bool {
    let options: Vec<String> = args.take_while(|a| a != "--").collect();
    options.iter().any(|a| a == "--output=json")
        || options.windows(2).any(|w| w[0] == "--output" && w[1] == "json")
}

/// A flag value a parser refused, carried through clap to [`usage_error`].
#[derive(Debug)]
struct Refused(Diagnostic);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refused {}

/// A value parser from a check that is told the flag's name (`--lock-ttl: invalid duration …`).
#[derive(Clone, Copy)]
struct FlagParser<T>(fn(&str, &str) -> Result<T, Diagnostic>);

/// Wraps a check as a clap value parser.
fn flag<T>(check: fn(&str, &str) -> Result<T, Diagnostic>) -> FlagParser<T> {
    FlagParser(check)
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for FlagParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.and_then(clap::Arg::get_long).unwrap_or("value").to_string();
        let check = self.0;
        // A closure parser is how clap keeps our error as the source of its own.
        let parse = move |text: &str| check(&name, text).map_err(Refused);
        parse.parse_ref(cmd, arg, value)
    }
}

fn duration(name: &str, text: &str) -> Result<Duration, Diagnostic> {
    crate::duration::parse(text).map_err(|e| Diagnostic::new(format!("--{name}: {e}")))
}

fn glob(name: &str, text: &str) -> Result<String, Diagnostic> {
    match text.trim() {
        "" => Err(Diagnostic::new(format!("--{name}: an empty pattern"))
            .help("write target names or globs, e.g. --limit 'prod-*'")),
        pattern => Ok(pattern.to_string()),
    }
}

/// `ferry logs --since`: see [`request::parse_since`].
fn since(_: &str, text: &str) -> Result<request::Since, Diagnostic> {
    request::parse_since(text)
}

fn set(_: &str, text: &str) -> Result<Set, Diagnostic> {
    request::parse_set(text)
}

fn tag(_: &str, text: &str) -> Result<String, Diagnostic> {
    request::check_tag(text).map(|()| text.to_string())
}

impl Command {
    /// The validated request this command line asks for; the commands that need no inventory
    /// (completions, the man page) are answered here, with their exit code.
    fn into_request(self) -> Result<Request, i32> {
        Ok(match self {
            Command::Check(a) => Request::Check(request::Check { deny_warnings: a.deny_warnings }),
            Command::Plan(a) => Request::Plan(request::Plan {
                selection: a.selection.into(),
                version: a.version,
                diff: a.diff,
                connect_timeout: a.connect_timeout,
            }),
            Command::Vars(a) => Request::Vars(request::Vars {
                app: a.app,
                environment: a.environment,
                target: a.target,
                sets: a.sets,
            }),
            Command::Deploy(a) => Request::Deploy(request::Deploy {
                selection: a.selection.into(),
                version: a.version,
                archive: a.archive,
                skip_lifecycle: a.skip_lifecycle.then(|| a.reason.clone().unwrap_or_default()),
                apply: with_freeze(a.apply, a.override_freeze, a.reason),
            }),
            Command::Promote(a) => Request::Promote(request::Promote {
                selection: request::Selection {
                    app: a.app,
                    environment: a.to,
                    limits: a.limit,
                    sets: a.sets,
                },
                apply: with_freeze(a.apply, a.override_freeze, a.reason),
            }),
            Command::Rollback(a) => Request::Rollback(request::Rollback {
                app: a.app,
                environment: a.environment,
                to: a.to,
                apply: with_freeze(a.apply, a.override_freeze, a.reason),
            }),
            Command::Status(a) => Request::Status(request::Status {
                app: a.app,
                environment: a.environment,
                limits: a.limit,
                connect_timeout: a.connect_timeout,
            }),
            Command::Remove(a) => Request::Remove(request::Remove {
                app: a.app,
                environment: a.environment,
                limits: a.limit,
                yes: a.yes,
                parallel: a.parallel,
                connect_timeout: a.connect_timeout,
                lock: request::LockTiming { ttl: a.lock_ttl, wait: a.lock_wait },
            }),
            Command::Prune(PruneArgs { common: a, dry_run }) => Request::Prune(request::Prune {
                app: a.app,
                environment: a.environment,
                limits: a.limit,
                yes: a.yes,
                parallel: a.parallel,
                connect_timeout: a.connect_timeout,
                lock: request::LockTiming { ttl: a.lock_ttl, wait: a.lock_wait },
                dry_run,
            }),
            Command::Proxy(a) => Request::Proxy(match a.action {
                ProxyAction::Status { environment, limit, connect_timeout } => {
                    request::Proxy::Status { environment, limits: limit, connect_timeout }
                }
                ProxyAction::Boot(write) => request::Proxy::Boot(write.into()),
                ProxyAction::Reboot { write, image, recreate } => {
                    request::Proxy::Reboot { write: write.into(), image, recreate }
                }
            }),
            Command::Maintenance(a) => Request::Maintenance(match a.action {
                MaintenanceAction::On { app, write, message } => {
                    request::Maintenance { app, on: true, message, write: write.into() }
                }
                MaintenanceAction::Off { app, write } => {
                    request::Maintenance { app, on: false, message: None, write: write.into() }
                }
            }),
            Command::Ls => Request::Ls,
            Command::Init(a) => Request::Init(request::Init { dir: a.dir }),
            Command::Versions(a) => Request::Versions(request::Versions { app: a.app, digests: a.digests }),
            Command::Run(a) => Request::Run(request::Run {
                reach: a.reach.into(),
                roles: a.role,
                timeout: a.timeout,
                lock: a.lock.then_some(request::LockTiming { ttl: a.lock_ttl, wait: a.lock_wait }),
                command: a.command,
            }),
            Command::Logs(a) => Request::Logs(request::Logs {
                app: a.app,
                environment: a.environment,
                limits: a.limit,
                tail: a.tail,
                since: a.since,
                follow: a.follow,
                connect_timeout: a.connect_timeout,
            }),
            Command::Exec(a) => Request::Exec(request::Exec {
                app: a.app,
                environment: a.environment,
                limits: a.limit,
                yes: a.yes,
                parallel: a.parallel,
                connect_timeout: a.connect_timeout,
                timeout: a.timeout,
                command: a.command,
            }),
            Command::Trust(a) => {
                Request::Trust(request::Trust { reach: a.reach.into(), yes: a.yes, replace: a.replace })
            }
            Command::History(a) => Request::History(request::History {
                app: a.app,
                environment: a.environment,
                since: a.since,
                limit: a.limit,
                run: a.run,
            }),
            Command::Audit(a) => Request::Audit(match a.action {
                AuditAction::Verify { log } => request::Audit::Verify { log },
                AuditAction::Bench { records, log } => request::Audit::Bench { records, log },
            }),
            Command::Lock(a) => Request::Lock(a.action.into()),
            Command::State(a) => Request::State(match a.action {
                StateAction::Init => request::State::Init,
                StateAction::Push { log } => request::State::Push { log },
                StateAction::Status => request::State::Status,
            }),
            Command::Completions { shell } => return Err(print_completions(shell)),
            Command::Man => return Err(print_man()),
        })
    }
}

impl From<Selection> for request::Selection {
    fn from(a: Selection) -> Self {
        request::Selection { app: a.app, environment: a.environment, limits: a.limit, sets: a.sets }
    }
}

/// The apply flags, with `--override-freeze --reason TEXT` (clap makes them come together).
fn with_freeze(flags: ApplyFlags, override_freeze: bool, reason: Option<String>) -> request::Apply {
    request::Apply { override_freeze: override_freeze.then(|| reason.unwrap_or_default()), ..flags.into() }
}

impl From<ApplyFlags> for request::Apply {
    fn from(a: ApplyFlags) -> Self {
        request::Apply {
            override_freeze: None,
            yes: a.yes,
            force: a.force,
            quiet: a.quiet,
            parallel: a.parallel,
            connect_timeout: a.connect_timeout,
            lock: request::LockTiming { ttl: a.lock_ttl, wait: a.lock_wait },
        }
    }
}

impl From<Reach> for request::Reach {
    fn from(a: Reach) -> Self {
        request::Reach {
            environment: a.environment,
            limits: a.limit,
            parallel: a.parallel,
            connect_timeout: a.connect_timeout,
        }
    }
}

impl From<LockAction> for request::Lock {
    fn from(action: LockAction) -> Self {
        let (target, action) = match action {
            LockAction::Status(target) => (target, request::LockAction::Status),
            LockAction::Acquire { target, message, ttl, force } => {
                (target, request::LockAction::Acquire { message, ttl, force })
            }
            LockAction::Release { target, force } => (target, request::LockAction::Release { force }),
        };
        request::Lock { environment: target.environment, connect_timeout: target.connect_timeout, action }
    }
}

fn print_completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
    0
}

fn print_man() -> i32 {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) if crate::output::print(&String::from_utf8_lossy(&out)).is_ok() => 0,
        _ => 1,
    }
}

fn report(error: &Error, output: OutputFormat) -> i32 {
    eprintln!("{}", error.to_string().trim_end());
    if output == OutputFormat::Json {
        let _ = crate::output::print_json(&error.to_json());
    }
    error.exit_code()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
