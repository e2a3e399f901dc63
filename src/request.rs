//! What the user asked for, as validated values.
//!
//! The command line's flags are converted once, at the door, by clap's value parsers (see
//! [`crate::cli`]): a duration is a [`Duration`], a `--set` is a checked `(name, value)` pair, a
//! `--limit` is a list of non-empty globs. A bad flag is therefore exit 2 before anything is
//! recorded, locked or connected, and commands receive these plain structs, never clap types
//! (so nothing outside `cli` depends on how flags are spelled).

use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::output::OutputFormat;

/// Flags every command takes.
#[derive(Debug, Clone)]
pub struct Global {
    /// `-i FILE`, or `FERRY_INVENTORY`.
    pub inventory: Option<PathBuf>,
    /// `--output`.
    pub output: OutputFormat,
}

/// One command, with its validated arguments.
#[derive(Debug, Clone)]
pub enum Request {
    /// `ferry check`.
    Check(Check),
    /// `ferry plan`.
    Plan(Plan),
    /// `ferry vars`.
    Vars(Vars),
    /// `ferry deploy`.
    Deploy(Deploy),
    /// `ferry promote`.
    Promote(Promote),
    /// `ferry rollback`.
    Rollback(Rollback),
    /// `ferry status`.
    Status(Status),
    /// `ferry remove`.
    Remove(Remove),
    /// `ferry prune`.
    Prune(Prune),
    /// `ferry proxy status|boot|reboot`.
    Proxy(Proxy),
    /// `ferry maintenance on|off`.
    Maintenance(Maintenance),
    /// `ferry ls`.
    Ls,
    /// `ferry init`.
    Init(Init),
    /// `ferry versions`.
    Versions(Versions),
    /// `ferry run`.
    Run(Run),
    /// `ferry logs`.
    Logs(Logs),
    /// `ferry exec`.
    Exec(Exec),
    /// `ferry trust`.
    Trust(Trust),
    /// `ferry history`.
    History(History),
    /// `ferry audit …`.
    Audit(Audit),
    /// `ferry lock …`.
    Lock(Lock),
    /// `ferry state …`.
    State(State),
}

/// `ferry state …`.
#[derive(Debug, Clone)]
pub enum State {
    /// Create or upgrade the shared store's schema.
    Init,
    /// Push the spool and import a local log.
    Push {
        /// Another log file.
        log: Option<PathBuf>,
    },
    /// Show the store in use.
    Status,
}

/// `--set NAME=VALUE`, checked: a variable name, not one ferry sets itself.
pub type Set = (String, String);

/// An app in an environment, narrowed by `--limit` and overridden by `--set`.
#[derive(Debug, Clone)]
pub struct Selection {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--limit` globs (comma lists already split).
    pub limits: Vec<String>,
    /// `--set` pairs, in command-line order.
    pub sets: Vec<Set>,
}

/// How long an environment lock lasts and how long to wait for a held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// The lock expires after this long if the run dies without releasing it (`--lock-ttl`).
    pub ttl: Duration,
    /// How long to wait for a held lock (`--lock-wait`); none: fail at once.
    pub wait: Option<Duration>,
}

/// Flags of the commands that change containers (`deploy`, `promote`, `rollback`).
#[derive(Debug, Clone)]
pub struct Apply {
    /// `--yes`: no confirmation prompt.
    pub yes: bool,
    /// `--force`: replace containers even when their config is unchanged.
    pub force: bool,
    /// `--quiet`: nothing on stdout unless a target changed or failed.
    pub quiet: bool,
    /// Targets changed at once inside a batch.
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// The environment lock.
    pub lock: LockTiming,
    /// `--override-freeze --reason TEXT`: the reason.
    pub override_freeze: Option<String>,
}

/// `ferry check`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Warnings fail the check.
    pub deny_warnings: bool,
}

/// `ferry plan`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to plan.
    pub selection: Selection,
    /// `--version`; none: the tag `latest`.
    pub version: Option<String>,
    /// `--diff`: compare with what runs on the targets.
    pub diff: bool,
    /// With `--diff`.
    pub connect_timeout: Duration,
}

/// `ferry vars`.
#[derive(Debug, Clone)]
pub struct Vars {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// Resolve for this target.
    pub target: Option<String>,
    /// `--set` pairs.
    pub sets: Vec<Set>,
}

/// `ferry deploy`.
#[derive(Debug, Clone)]
pub struct Deploy {
    /// What to deploy where.
    pub selection: Selection,
    /// The tag, or `latest`; with `--archive`, the tag to record (default: the archive's).
    pub version: Option<String>,
    /// `--archive FILE`: an image archive streamed to the targets instead of a registry pull.
    pub archive: Option<std::path::PathBuf>,
    /// `--skip-lifecycle --reason TEXT`: the reason.
    pub skip_lifecycle: Option<String>,
    /// Confirmation, parallelism, lock.
    pub apply: Apply,
}

/// `ferry promote`.
#[derive(Debug, Clone)]
pub struct Promote {
    /// The app, the phase promoted to, and narrowing.
    pub selection: Selection,
    /// Confirmation, parallelism, lock.
    pub apply: Apply,
}

/// `ferry rollback`.
#[derive(Debug, Clone)]
pub struct Rollback {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--to ID`: this deployment instead of the previous one.
    pub to: Option<String>,
    /// Confirmation, parallelism, lock.
    pub apply: Apply,
}

/// `ferry remove`.
#[derive(Debug, Clone)]
pub struct Remove {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--limit` globs.
    pub limits: Vec<String>,
    /// `--yes`: no confirmation prompt.
    pub yes: bool,
    /// Targets worked on at once.
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// The environment lock.
    pub lock: LockTiming,
}

/// `ferry prune`: `remove`'s selection and lock, and `--dry-run`.
#[derive(Debug, Clone)]
pub struct Prune {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--limit` globs.
    pub limits: Vec<String>,
    /// `--yes`: no confirmation prompt.
    pub yes: bool,
    /// Targets worked on at once.
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// The environment lock.
    pub lock: LockTiming,
    /// `--dry-run`: list what would be removed, remove nothing.
    pub dry_run: bool,
}

/// `ferry proxy`.
#[derive(Debug, Clone)]
pub enum Proxy {
    /// `ferry proxy status`: read only.
    Status {
        /// Environment name.
        environment: String,
        /// `--limit` globs.
        limits: Vec<String>,
        /// Give up on a target whose SSH session is not up within this time.
        connect_timeout: Duration,
    },
    /// `ferry proxy boot`.
    Boot(ProxyWrite),
    /// `ferry proxy reboot`.
    Reboot {
        /// The environment and how.
        write: ProxyWrite,
        /// `--image`: instead of the inventory's.
        image: Option<String>,
        /// `--recreate`: a new container even when the running one has the image.
        recreate: bool,
    },
}

/// What `ferry proxy boot|reboot` and `ferry maintenance` share: a locked, audited run over the
/// environment's targets.
#[derive(Debug, Clone)]
pub struct ProxyWrite {
    /// Environment name.
    pub environment: String,
    /// `--limit` globs.
    pub limits: Vec<String>,
    /// `--yes`: no confirmation prompt.
    pub yes: bool,
    /// Targets worked on at once.
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// The environment lock.
    pub lock: LockTiming,
}

/// `ferry maintenance on|off`.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// App name.
    pub app: String,
    /// On (503 with the message) or off (the app again).
    pub on: bool,
    /// `--message` (on only).
    pub message: Option<String>,
    /// The environment and how.
    pub write: ProxyWrite,
}

/// `ferry init`.
#[derive(Debug, Clone)]
pub struct Init {
    /// The folder to write into (the current one when not given).
    pub dir: Option<PathBuf>,
}

/// `ferry status`.
#[derive(Debug, Clone)]
pub struct Status {
    /// App name; none: every app of the environment.
    pub app: Option<String>,
    /// Environment name.
    pub environment: String,
    /// `--limit` globs.
    pub limits: Vec<String>,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
}

/// `ferry versions`.
#[derive(Debug, Clone)]
pub struct Versions {
    /// App name.
    pub app: String,
    /// Digests of this many of the newest versions.
    pub digests: usize,
}

/// Which targets of an environment, and how to reach them (`run`, `trust`).
#[derive(Debug, Clone)]
pub struct Reach {
    /// Environment name.
    pub environment: String,
    /// `--limit` globs.
    pub limits: Vec<String>,
    /// Targets at once.
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
}

/// `ferry run`.
#[derive(Debug, Clone)]
pub struct Run {
    /// Which targets.
    pub reach: Reach,
    /// `--role`: only targets with one of these roles.
    pub roles: Vec<String>,
    /// Kill the command on a target after this long.
    pub timeout: Option<Duration>,
    /// `--lock`: take the environment lock for the run.
    pub lock: Option<LockTiming>,
    /// The command's words (joined with spaces, as ssh does).
    pub command: Vec<String>,
}

/// `ferry logs`.
#[derive(Debug, Clone)]
pub struct Logs {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--target` globs.
    pub limits: Vec<String>,
    /// `--tail N`: the last N lines of each target (none: all).
    pub tail: Option<usize>,
    /// `--since`.
    pub since: Option<Since>,
    /// `--follow`: stream until Ctrl-C.
    pub follow: bool,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
}

/// `ferry logs --since`: a duration back from now, or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long ago (on the target's clock: Docker counts it).
    Ago(Duration),
    /// This time, in milliseconds since the Unix epoch.
    At(i64),
}

impl Since {
    /// The value `docker logs --since` reads: seconds ago (`600s`) or Unix seconds (0 for a
    /// time before 1970: every line, where a negative value would be no time Docker reads).
    pub fn docker(self) -> String {
        match self {
            Since::Ago(d) => format!("{}s", d.as_secs().max(1)),
            Since::At(ms) => {
                let ms = ms.max(0);
                format!("{}.{:03}", ms / 1000, ms % 1000)
            }
        }
    }
}

/// `ferry exec`.
#[derive(Debug, Clone)]
pub struct Exec {
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// `--target` globs.
    pub limits: Vec<String>,
    /// `--yes`: no confirmation prompt before a fan-out to several targets.
    pub yes: bool,
    /// Targets at once (fan-out).
    pub parallel: usize,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// Kill the command on a target after this long (fan-out).
    pub timeout: Option<Duration>,
    /// The command and its arguments, passed to `docker exec` as they are (no shell).
    pub command: Vec<String>,
}

/// `ferry trust`.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Which targets.
    pub reach: Reach,
    /// Record new keys without asking.
    pub yes: bool,
    /// Replace the recorded key of these targets.
    pub replace: Vec<String>,
}

/// `ferry history`.
#[derive(Debug, Clone)]
pub struct History {
    /// Only this app.
    pub app: Option<String>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only runs started within this long.
    pub since: Option<Duration>,
    /// At most this many runs.
    pub limit: usize,
    /// Show this one run (an id or a unique prefix of one) in detail.
    pub run: Option<String>,
}

/// `ferry audit …`.
#[derive(Debug, Clone)]
pub enum Audit {
    /// Walk the hash chain (of this file, or the inventory's log).
    Verify {
        /// Another log file.
        log: Option<PathBuf>,
    },
    /// Append synthetic records and time them.
    Bench {
        /// How many.
        records: usize,
        /// Another log file.
        log: Option<PathBuf>,
    },
}

/// `ferry lock …`.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Environment name.
    pub environment: String,
    /// Give up on a target whose SSH session is not up within this time.
    pub connect_timeout: Duration,
    /// What to do.
    pub action: LockAction,
}

/// What `ferry lock` does.
#[derive(Debug, Clone)]
pub enum LockAction {
    /// Show who holds it.
    Status,
    /// Take it.
    Acquire {
        /// Why (shown to whoever finds it held).
        message: String,
        /// It expires after this long.
        ttl: Duration,
        /// Take it over from someone else.
        force: bool,
    },
    /// Release it.
    Release {
        /// Break someone else's.
        force: bool,
    },
}

/// Parses a `--set NAME=VALUE` argument (values are strings, as Ansible's `-e k=v`).
pub fn parse_set(arg: &str) -> Result<Set, Diagnostic> {
    match arg.split_once('=') {
        Some((k, _)) if crate::inventory::RESERVED_NAMES.contains(&k) => {
            Err(Diagnostic::new(format!("--set {k}: `{k}` is set by ferry in every template"))
                .help(format!("reserved names: {}", crate::inventory::RESERVED_NAMES.join(", "))))
        }
        Some((k, v)) if is_name(k) => Ok((k.to_string(), v.to_string())),
        _ => Err(Diagnostic::new(format!("invalid --set \"{arg}\""))
            .help("write --set name=value, with a variable name of letters, digits and `_`")),
    }
}

fn is_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), Diagnostic> {
    let mut chars = tag.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && tag.len() <= 128;
    if valid {
        return Ok(());
    }
    Err(Diagnostic::new(format!("invalid version \"{tag}\": not a Docker image tag"))
        .help("a tag is up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"))
}

/// Parses `ferry logs --since`: a duration (`10m`, `2h`, `7d`) or an RFC 3339 time
/// (`2026-12-07T01:00:00Z`, `2026-12-07T02:00:00.5+01:00`).
pub fn parse_since(text: &str) -> Result<Since, Diagnostic> {
    if let Ok(d) = crate::duration::parse(text) {
        return Ok(Since::Ago(d));
    }
    rfc3339_ms(text.trim()).map(Since::At).ok_or_else(|| {
        Diagnostic::new(format!("--since: \"{text}\" is neither a duration nor an RFC 3339 time"))
            .help("write a duration back from now (30s, 10m, 2h, 7d) or a time (2026-12-07T01:00:00Z)")
    })
}

/// Milliseconds since the epoch of an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS`, an optional
/// fraction, then `Z` or `±HH:MM`.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let (stamp, rest) = (text.get(..19)?, text.get(19..)?);
    // Digits where digits go: Rust's integer parsing also takes a sign (`T-1:00:00`).
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !stamp.bytes().enumerate().all(|(i, b)| [4, 7, 10, 13, 16].contains(&i) || b.is_ascii_digit()) {
        return None;
    }
    let base = crate::time::parse_ms(&format!("{}Z", stamp.replacen(['t', ' '], "T", 1)))?;
    let zone_at = rest.find(['Z', 'z', '+', '-'])?;
    let (fraction, zone) = rest.split_at(zone_at);
    let ms = match fraction.strip_prefix('.') {
        None if fraction.is_empty() => 0,
        Some(fraction) if digits(fraction) => format!("{fraction:0<3}")[..3].parse::<i64>().ok()?,
        _ => return None,
    };
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let (sign, hm) = zone.split_at(1);
            let (h, m) = hm.split_once(':')?;
            if h.len() != 2 || m.len() != 2 || !digits(h) || !digits(m) {
                return None;
            }
            let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if sign == "-" { -minutes } else { minutes }
        }
    };
    Some(base + ms - offset * 60_000)
}

/// Parses `--tail N`: a number of lines.
pub fn parse_lines(flag: &str, text: &str) -> Result<usize, Diagnostic> {
    text.trim().parse().map_err(|_| {
        Diagnostic::new(format!("--{flag}: \"{text}\" is not a number of lines"))
            .help(format!("write --{flag} 100 (leave it out for every line)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_names_with_values() {
        assert_eq!(parse_set("port=80").unwrap(), ("port".into(), "80".into()));
        assert_eq!(parse_set("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_set("no-equals").unwrap_err().message.contains("invalid --set"));
        assert!(parse_set("1x=2").is_err());
        assert!(parse_set("image=x").unwrap_err().message.contains("set by ferry"));
    }

    #[test]
    fn since_is_a_duration_or_an_rfc3339_time() {
        assert_eq!(parse_since("10m").unwrap(), Since::Ago(Duration::from_secs(600)));
        assert_eq!(parse_since("10m").unwrap().docker(), "600s");
        let at = parse_since("2026-12-07T01:00:00Z").unwrap();
        assert_eq!(at, Since::At(crate::time::parse_ms("2026-12-07T01:00:00Z").unwrap()));
        assert_eq!(
            parse_since("2026-12-07T02:00:00.5+01:00").unwrap(),
            Since::At(match at {
                Since::At(ms) => ms + 500,
                Since::Ago(_) => unreachable!(),
            })
        );
        assert_eq!(Since::At(1_700_000_000_250).docker(), "1700000000.250");
        for bad in ["", "10", "yesterday", "2026-12-07", "2026-12-07T01:00:00", "2026-12-07T01:00:00+1"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        // Signs and out-of-range offsets are not times (they read as some other time before).
        for bad in [
            "2026-12-07T-1:00:00Z",
            "2026-12-07T01:00:00+-1:00",
            "2026-12-07T01:00:00+01:-5",
            "2026-12-07T01:00:00+24:00",
            "2026-12-07T01:00:00+01:60",
            "+026-12-07T01:00:00Z",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_since("2026-12-07T01:00:00-23:59").unwrap(),
            Since::At(crate::time::parse_ms("2026-12-08T00:59:00Z").unwrap())
        );
        // Before 1970: every line, as Docker reads 0 (a negative value is no time it knows).
        assert_eq!(parse_since("1969-12-31T23:59:59.5Z").unwrap().docker(), "0.000");
    }

    #[test]
    fn tags_follow_docker() {
        assert!(check_tag("1.4.2").is_ok());
        assert!(check_tag("v1_x-rc.1").is_ok());
        assert!(check_tag("-x").is_err());
        assert!(check_tag("").is_err());
        assert!(check_tag(&"a".repeat(129)).is_err());
    }
}
