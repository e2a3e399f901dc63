//! Stage 8: the audit log, an append-only, hash-chained JSON Lines file.
//!
//! Every mutating action appends records to `STATE_DIR/audit.jsonl`: who (user, host, CI job or
//! cron), what, where, when, and the outcome. Three properties matter more than anything else:
//!
//! * **Whole lines.** Each record is one `write` of one line, under an exclusive lock of the
//!   file, so concurrent ferry processes (a cron job and a CI job on one machine) interleave
//!   records, never bytes.
//! * **Durable before reported.** `append` returns only after `fsync`: a step shown as done is on
//!   disk, even if the machine dies right after.
//! * **Tamper evidence.** Each record carries the hash of the previous record, and its own hash
//!   over a canonical encoding; `verify` walks the chain and names the first record that was
//!   edited, deleted or reordered. A line torn by a crash mid-write is recognised as such: it is
//!   reported, the chain continues across it, and later appends are not affected.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the audit stage.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be opened, locked, written or synced.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hash chain is broken: no record of the log is acted upon.
    #[error(
        "the audit log {path}:{line} is broken: {problem}; ferry acts on no record of a broken chain\n  = help: `ferry audit verify` shows the break; restore the log from a backup, or move it aside (the next run starts a new chain, without the history that rollback, promote and the lifecycle read)",
        path = crate::diagnostic::display_path(path).display()
    )]
    Broken {
        /// The log file.
        path: PathBuf,
        /// The first bad line.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Local user name.
    pub user: String,
    /// Host name of the machine running ferry.
    pub host: String,
    /// `github-actions`, `gitlab-ci`, `jenkins`, `buildkite`, `ci`, `terminal`, `cron`,
    /// `systemd`, or `script` (see [`Actor::detect`]).
    pub via: String,
    /// The CI job, when one is detected (e.g. `owner/repo run 1234`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl Actor {
    /// Detects the actor from the environment (`lookup`), whether stdin or stderr is a
    /// terminal, and (asked only when neither CI nor a terminal says) whether cron started
    /// this process (`under_cron`, see [`cron_ancestor`]).
    pub fn detect(
        lookup: &dyn Fn(&str) -> Option<String>,
        terminal: bool,
        under_cron: &dyn Fn() -> bool,
    ) -> Actor {
        let user = lookup("USER")
            .or_else(|| lookup("LOGNAME"))
            .or_else(user_of_process)
            .unwrap_or_else(|| "unknown".into());
        let host = lookup("HOSTNAME")
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let (via, job) = if get("GITHUB_ACTIONS").is_some() {
            let job = [
                get("GITHUB_REPOSITORY"),
                get("GITHUB_WORKFLOW"),
                get("GITHUB_RUN_ID").map(|r| format!("run {r}")),
            ];
            ("github-actions", join_some(&job))
        } else if get("GITLAB_CI").is_some() {
            let job = [get("CI_PROJECT_PATH"), get("CI_JOB_ID").map(|j| format!("job {j}"))];
            ("gitlab-ci", join_some(&job))
        } else if get("JENKINS_URL").is_some() {
            ("jenkins", get("BUILD_TAG").or_else(|| get("BUILD_URL")))
        } else if get("BUILDKITE").is_some() {
            ("buildkite", get("BUILDKITE_BUILD_URL"))
        } else if get("CI").is_some_and(|v| v != "false" && v != "0") {
            ("ci", None)
        } else if terminal {
            ("terminal", None)
        } else if under_cron() {
            ("cron", None)
        } else if get("INVOCATION_ID").is_some() {
            // systemd sets it for every unit it starts (services, and the services timers run).
            ("systemd", None)
        } else {
            // No terminal and nothing that says who: a script, an ssh command, a pipe.
            ("script", None)
        };
        Actor { user, host, via: via.to_string(), job }
    }

    /// `user@host (via job)`, for messages and the target mirror.
    pub fn describe(&self) -> String {
        let job = self.job.as_ref().map_or(String::new(), |j| format!(" {j}"));
        format!("{}@{} ({}{job})", self.user, self.host, self.via)
    }
}

/// The name of this process's real uid, from /proc and /etc/passwd (cron jobs often have no
/// `$USER`).
fn user_of_process() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&uid.as_str()))
        .map(|f| f[0].to_string())
}

fn join_some(parts: &[Option<String>]) -> Option<String> {
    let present: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    (!present.is_empty()).then(|| present.join(" "))
}

/// Process names of cron daemons (and of the children they fork to run a job, which keep the
/// daemon's name until they exec the job's shell): Debian's and cronie's (`cron`, `crond`, also
/// dcron's), anacron, fcron, mcron, bcron (the scheduler and the job runner it forks), and
/// supercronic (containers). Names are as the kernel keeps them (at most 15 bytes).
const CRON_NAMES: [&str; 8] =
    ["cron", "crond", "anacron", "fcron", "mcron", "bcron-sched", "bcron-exec", "supercronic"];

/// How many ancestors are walked at most: a real chain is a handful deep; the bound only keeps
/// a pid loop in a strange /proc (a bind-mounted fake, a race with pid reuse) from hanging.
const MAX_ANCESTORS: usize = 256;

/// The name of the first ancestor of process `start` (`"self"` for this one) that is a cron
/// daemon, walking `PROC/PID/stat`'s parent pid up to pid 1 (included: a container may run cron
/// as its pid 1). `proc_root` is `/proc`, or a fake tree in tests.
///
/// Why ancestors and not "no terminal": a script, an `ssh host ferry …` and a systemd timer have
/// no terminal either, and were all recorded as `cron` before, so the record could not tell a
/// scheduled job from a person's script. The cron daemon's process is the one fact only cron
/// runs have. A busybox crond runs as `busybox` when started as `busybox crond`: its argv
/// (`PROC/PID/cmdline`) says which applet it is.
///
/// An ancestor that cannot be read ends the walk with `None` (`script`): with /proc mounted
/// `hidepid=2`, a job that cron runs as another user cannot see the root-owned daemon. The
/// record then says `script`, never a `cron` it could not see.
pub fn cron_ancestor(proc_root: &Path, start: &str) -> Option<String> {
    let stat = |pid: &str| std::fs::read(proc_root.join(pid).join("stat")).ok().and_then(|b| parse_stat(&b));
    let (_, mut pid) = stat(start)?;
    for _ in 0..MAX_ANCESTORS {
        if pid == 0 {
            return None;
        }
        let (name, parent) = stat(&pid.to_string())?;
        let cron = CRON_NAMES.contains(&name.as_str())
            || (name == "busybox"
                && std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
                    .is_ok_and(|argv| is_busybox_crond(&argv)));
        if cron {
            return Some(name);
        }
        if pid == 1 {
            return None;
        }
        pid = parent;
    }
    None
}

/// The process name and parent pid of a `/proc/PID/stat` line: `PID (NAME) STATE PPID …`. The
/// name may hold spaces and parentheses itself, so it ends at the *last* `)`.
pub fn parse_stat(stat: &[u8]) -> Option<(String, u32)> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let name = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((name, ppid))
}

/// Whether a `/proc/PID/cmdline` (NUL-separated argv) is busybox running its crond applet:
/// `busybox crond …`, or a link named `crond` to busybox.
pub fn is_busybox_crond(cmdline: &[u8]) -> bool {
    let mut argv = cmdline.split(|&b| b == 0);
    let base = |arg: &[u8]| arg.rsplit(|&b| b == b'/').next().map(<[u8]>::to_vec).unwrap_or_default();
    let first = argv.next().map(base).unwrap_or_default();
    let second = argv.next().map(base).unwrap_or_default();
    first == b"crond" || (first == b"busybox" && second == b"crond")
}

/// What a caller records; the log adds sequence, time, id and the chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// `run_started`, `target_outcome`, `run_finished`, `lock_acquired`, `lock_released`,
    /// `lock_broken`, `trust_recorded`, ...
    pub kind: String,
    /// The run or deployment this belongs to.
    pub run: String,
    /// The command (`run`, `deploy`, `lock`, `trust`).
    pub command: String,
    /// App, when the action concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Version (tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Image digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Targets concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Kind-specific facts (exit status, duration, masked output tail, counts, plan hashes).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    /// Time-ordered unique id (UUID v7).
    pub id: String,
    /// Who.
    pub actor: Actor,
    /// What.
    #[serde(flatten)]
    pub entry: Entry,
    /// Set when the record reached the chain later than it happened (absent otherwise, so
    /// records written before the field existed keep their bytes and hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// `hash` of the previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 of this record's canonical encoding (the line without this field).
    pub hash: String,
}

/// How a record that was not chained as it happened came to the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// `spooled`: kept in the runner's local spool while the shared store was unreachable, and
    /// pushed later (its `time` is when it happened); `imported`: moved in from a local audit
    /// log by `ferry state push` (time and actor as they were).
    pub via: String,
    /// Imported: the record's seq in the log it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Imported: the record's hash in the log it came from (a second push skips it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Chains `entry` after `prev` (seq and hash of the record before it; `None` for the first):
/// the one place a record's seq, prev and hash are made, for every store.
pub fn seal(
    prev: Option<(u64, &str)>,
    time: String,
    id: String,
    actor: Actor,
    entry: Entry,
    origin: Option<Origin>,
) -> Record {
    let mut record = Record {
        seq: prev.map_or(1, |(seq, _)| seq + 1),
        time,
        id,
        actor,
        entry,
        origin,
        prev: prev.map_or_else(|| GENESIS.to_string(), |(_, hash)| hash.to_string()),
        hash: String::new(),
    };
    record.hash = canonical_hash(&record);
    record
}

/// The canonical encoding a record's hash covers: the record as JSON with `hash` empty. Field
/// order is the struct's and `detail` is written by serde_json in key order, so it is stable.
fn canonical_hash(record: &Record) -> String {
    let mut unhashed = record.clone();
    unhashed.hash = String::new();
    let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}

/// Lower-case hex, without a formatter per byte (verify does this a million times).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    text
}

/// The audit log of one state folder.
#[derive(Debug, Clone)]
pub struct Log {
    path: PathBuf,
    actor: Actor,
}

impl Log {
    /// The log at `STATE_DIR/audit.jsonl`, written as `actor`.
    pub fn new(state_dir: &Path, actor: Actor) -> Log {
        Log { path: state_dir.join("audit.jsonl"), actor }
    }

    /// The same writer, appending to another file (benchmarks, tests).
    pub fn with_file(mut self, path: &Path) -> Log {
        self.path = path.to_path_buf();
        self
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who this log writes as.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Appends one record, durably (fsync) and atomically with respect to other writers.
    pub fn append(&self, entry: Entry) -> Result<Record, AuditError> {
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(&self.path).map_err(io)?;
        file.lock().map_err(io)?;
        let (last, torn) = last_record(&mut file).map_err(io)?;
        let record = seal(
            last.as_ref().map(|r| (r.seq, r.hash.as_str())),
            crate::time::now_rfc3339(),
            uuid::Uuid::now_v7().to_string(),
            self.actor.clone(),
            entry,
            None,
        );
        let mut line = if torn { b"\n".to_vec() } else { Vec::new() };
        line.extend(serde_json::to_vec(&record).unwrap_or_default());
        line.push(b'\n');
        file.write_all(&line).map_err(io)?;
        file.sync_data().map_err(io)?;
        // Dropping the file releases the lock.
        Ok(record)
    }

    /// Reads every record, in file order (torn lines skipped), once the chain is verified: a
    /// broken chain is [`AuditError::Broken`], so nothing acts on a record that was forged,
    /// edited or moved.
    pub fn read(&self) -> Result<Vec<Record>, AuditError> {
        let (verification, records) = walk(&self.path)?;
        match verification.broken {
            None => Ok(records),
            Some((line, problem)) => Err(AuditError::Broken { path: self.path.clone(), line, problem }),
        }
    }
}

/// The last well-formed record, and whether the file ends in a torn (unterminated) line.
fn last_record(file: &mut File) -> std::io::Result<(Option<Record>, bool)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((None, false));
    }
    // Records are small; read a growing tail until it holds a whole, parseable line.
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.take(len - start).read_to_end(&mut tail)?;
        let torn = tail.last() != Some(&b'\n');
        let lines: Vec<&[u8]> = tail.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        // The first line of a partial window may be cut; skip it unless the window is the file.
        let usable = if start == 0 { &lines[..] } else { lines.get(1..).unwrap_or(&[]) };
        if let Some(record) = usable.iter().rev().find_map(|l| serde_json::from_slice::<Record>(l).ok()) {
            return Ok((Some(record), torn));
        }
        if start == 0 {
            return Ok((None, torn));
        }
        window *= 4;
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Well-formed records checked.
    pub records: usize,
    /// Lines that are not records (torn by a crash): line numbers.
    pub torn_lines: Vec<usize>,
    /// The first integrity failure: (line number, what is wrong).
    pub broken: Option<(usize, String)>,
}

/// Walks the chain of the log at `path`.
pub fn verify(path: &Path) -> Result<Verification, AuditError> {
    Ok(walk(path)?.0)
}

/// Walks the chain and keeps the records it vouches for: the whole log when it is intact,
/// those before the first bad record otherwise.
fn walk(path: &Path) -> Result<(Verification, Vec<Record>), AuditError> {
    let io = |source| AuditError::Io { path: path.to_path_buf(), source };
    let mut records = Vec::new();
    let mut chain = ChainCheck::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((chain.verification, records)),
        Err(e) => return Err(io(e)),
    };
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io)?;
        if line.is_empty() {
            continue;
        }
        match chain.check(index + 1, &line) {
            Checked::Record(record) => records.push(*record),
            Checked::Torn => {}
            Checked::Broken => break,
        }
    }
    Ok((chain.verification, records))
}

/// What [`ChainCheck::check`] made of one line.
#[derive(Debug)]
pub enum Checked {
    /// A record of the chain.
    Record(Box<Record>),
    /// A line torn by a crash: skipped, the chain goes on.
    Torn,
    /// The chain breaks here (see the verification); nothing from here on is vouched for.
    Broken,
}

/// Walks a chain one line at a time, wherever the lines come from (a file, a database).
#[derive(Debug)]
pub struct ChainCheck {
    prev_hash: String,
    prev_seq: u64,
    /// What was found so far.
    pub verification: Verification,
}

impl Default for ChainCheck {
    fn default() -> Self {
        ChainCheck::new()
    }
}

impl ChainCheck {
    /// A walk from the first record.
    pub fn new() -> ChainCheck {
        ChainCheck {
            prev_hash: GENESIS.to_string(),
            prev_seq: 0,
            verification: Verification { records: 0, torn_lines: Vec::new(), broken: None },
        }
    }

    /// The last record accepted so far: seq and hash.
    pub fn head(&self) -> Option<(u64, &str)> {
        (self.prev_seq > 0).then_some((self.prev_seq, self.prev_hash.as_str()))
    }

    /// Checks the line numbered `line_no`; after a break, every line is [`Checked::Broken`].
    pub fn check(&mut self, line_no: usize, line: &[u8]) -> Checked {
        if self.verification.broken.is_some() {
            return Checked::Broken;
        }
        match check_line(line) {
            Ok(record) => self.link(line_no, record),
            Err(Line::Torn) => {
                self.verification.torn_lines.push(line_no);
                Checked::Torn
            }
            Err(Line::Bad(problem)) => self.bad(line_no, problem),
        }
    }

    /// The chain breaks at `line_no`, for `problem` (e.g. from [`check_record`] run elsewhere).
    pub fn bad(&mut self, line_no: usize, problem: String) -> Checked {
        if self.verification.broken.is_none() {
            self.verification.broken = Some((line_no, problem));
        }
        Checked::Broken
    }

    /// Links a record whose own bytes were checked (by [`check_record`], possibly on another
    /// thread) after the records before it.
    pub fn link(&mut self, line_no: usize, record: Record) -> Checked {
        if self.verification.broken.is_some() {
            return Checked::Broken;
        }
        let problem = if record.prev != self.prev_hash {
            Some(format!(
                "record seq {} does not follow the record before it (a record was deleted, inserted or moved)",
                record.seq
            ))
        } else if record.seq != self.prev_seq + 1 {
            Some(format!("record seq {} follows seq {}", record.seq, self.prev_seq))
        } else {
            None
        };
        if let Some(problem) = problem {
            self.verification.broken = Some((line_no, problem));
            return Checked::Broken;
        }
        self.verification.records += 1;
        self.prev_hash.clone_from(&record.hash);
        self.prev_seq = record.seq;
        Checked::Record(Box::new(record))
    }
}

/// One record's own bytes checked, outside a walk (a row a database hands back): the bytes are
/// exactly what ferry writes for it and its hash covers them. Its place in the chain is the
/// caller's to check.
pub fn check_record(line: &[u8]) -> Result<Record, String> {
    match check_line(line) {
        Ok(record) => Ok(record),
        Err(Line::Torn) => Err("a record cut short".to_string()),
        Err(Line::Bad(problem)) => Err(problem),
    }
}

/// Why a line is not a record of the chain.
enum Line {
    /// Cut short by a crash mid-write (JSON that ends early): the chain continues past it.
    Torn,
    /// Anything else: the chain is broken here.
    Bad(String),
}

/// A line is a record only if it is exactly the bytes ferry writes for the record it parses to
/// (so an added field, a field nested elsewhere or a re-encoded value breaks it, even where
/// serde would read past them) and its hash covers those bytes.
fn check_line(line: &[u8]) -> Result<Record, Line> {
    let record = match serde_json::from_slice::<Record>(line) {
        Ok(record) => record,
        Err(e) if e.is_eof() => return Err(Line::Torn),
        Err(e) => return Err(Line::Bad(format!("not a record ({e})"))),
    };
    if serde_json::to_vec(&record).ok().as_deref() != Some(line) {
        return Err(Line::Bad(format!(
            "record seq {} was modified (its bytes are not the ones ferry wrote)",
            record.seq
        )));
    }
    // The line is the record's own serialization and `hash` is its last field, so the bytes the
    // hash covers are the line with the hash's digits taken out: no second serialization.
    let digits = record.hash.len();
    let canonical = if record.hash.bytes().all(|b| b.is_ascii_alphanumeric()) && line.len() >= digits + 2 {
        let mut hasher = Sha256::new();
        hasher.update(&line[..line.len() - digits - 2]);
        hasher.update(b"\"}");
        hex(&hasher.finalize())
    } else {
        canonical_hash(&record)
    };
    if canonical != record.hash {
        return Err(Line::Bad(format!(
            "record seq {} was modified (its hash does not match its content)",
            record.seq
        )));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path) -> Log {
        let actor = Actor { user: "u".into(), host: "h".into(), via: "terminal".into(), job: None };
        Log::new(dir, actor)
    }

    fn entry(kind: &str) -> Entry {
        Entry { kind: kind.into(), run: "r".into(), command: "run".into(), ..Entry::default() }
    }

    #[test]
    fn appends_chain_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let a = log.append(entry("run_started")).unwrap();
        let b = log.append(entry("run_finished")).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev, GENESIS);
        assert_eq!(b.prev, a.hash);
        let v = verify(log.path()).unwrap();
        assert_eq!((v.records, v.broken, v.torn_lines.len()), (2, None, 0));
    }

    #[test]
    fn detects_edits_deletions_and_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        for k in ["a", "b", "c", "d"] {
            log.append(entry(k)).unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let check = |lines: Vec<String>| {
            let path = dir.path().join("copy.jsonl");
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            verify(&path).unwrap().broken
        };
        let edited: Vec<String> =
            lines.iter().map(|l| l.replace("\"kind\":\"b\"", "\"kind\":\"x\"")).collect();
        assert_eq!(check(edited).map(|b| b.0), Some(2));
        let deleted: Vec<String> =
            lines.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l.to_string()).collect();
        assert_eq!(check(deleted).map(|b| b.0), Some(2));
        let mut reordered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        reordered.swap(1, 2);
        assert_eq!(check(reordered).map(|b| b.0), Some(2));
    }

    #[test]
    fn a_torn_last_line_is_reported_and_later_appends_continue_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        log.append(entry("a")).unwrap();
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"2026-").unwrap();
        drop(f);
        let v = verify(log.path()).unwrap();
        assert_eq!((v.records, v.torn_lines.clone(), v.broken), (1, vec![2], None));
        let c = log.append(entry("c")).unwrap();
        assert_eq!(c.seq, 2);
        let v = verify(log.path()).unwrap();
        assert_eq!((v.records, v.torn_lines, v.broken), (2, vec![2], None));
    }

    #[test]
    fn detects_ci_terminal_cron_systemd_and_scripts() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let (cron, not_cron) = (|| true, || false);
        let gh = Actor::detect(
            &env(&[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "acme/web"), ("GITHUB_RUN_ID", "42")]),
            false,
            &cron,
        );
        assert_eq!((gh.via.as_str(), gh.job.as_deref()), ("github-actions", Some("acme/web run 42")));
        assert_eq!(Actor::detect(&env(&[("CI", "true")]), false, &cron).via, "ci");
        assert_eq!(Actor::detect(&env(&[]), true, &cron).via, "terminal");
        assert_eq!(Actor::detect(&env(&[]), false, &cron).via, "cron");
        // No terminal is not cron: a script, an ssh command, a pipe.
        assert_eq!(Actor::detect(&env(&[]), false, &not_cron).via, "script");
        let unit = env(&[("INVOCATION_ID", "0f2c")]);
        assert_eq!(Actor::detect(&unit, false, &not_cron).via, "systemd");
        assert_eq!(Actor::detect(&unit, true, &not_cron).via, "terminal");
        assert_eq!(Actor::detect(&unit, false, &cron).via, "cron", "a cron job started from a unit's daemon");
    }

    /// A fake /proc: `(pid, stat name, ppid, cmdline)` per process, `self` being `me`.
    fn fake_proc(me: u32, processes: &[(u32, &str, u32, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for &(pid, name, ppid, cmdline) in processes {
            let folder = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(
                folder.join("stat"),
                format!("{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 1 0"),
            )
            .unwrap();
            std::fs::write(folder.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
            if pid == me {
                std::os::unix::fs::symlink(&folder, dir.path().join("self")).unwrap();
            }
        }
        dir
    }

    #[test]
    fn a_cron_daemon_among_the_ancestors_is_found_and_nothing_else_counts() {
        // Debian's cron: daemon → forked child (still `cron`) → sh -c 'job' → ferry.
        let debian = fake_proc(
            40,
            &[
                (1, "systemd", 0, "/sbin/init"),
                (7, "cron", 1, "/usr/sbin/cron -f"),
                (30, "cron", 7, "/usr/sbin/cron -f"),
                (31, "sh", 30, "/bin/sh -c ferry"),
                (40, "ferry", 31, "ferry deploy"),
            ],
        );
        assert_eq!(cron_ancestor(debian.path(), "self").as_deref(), Some("cron"));
        let cronie =
            fake_proc(9, &[(1, "init", 0, ""), (5, "crond", 1, "crond -n"), (9, "ferry", 5, "ferry")]);
        assert_eq!(cron_ancestor(cronie.path(), "self").as_deref(), Some("crond"));
        let anacron = fake_proc(
            9,
            &[(1, "init", 0, ""), (5, "anacron", 1, ""), (6, "run-parts", 5, ""), (9, "ferry", 6, "")],
        );
        assert_eq!(cron_ancestor(anacron.path(), "self").as_deref(), Some("anacron"));
        let supercronic = fake_proc(
            9,
            &[(1, "supercronic", 0, "supercronic /etc/crontab"), (8, "sh", 1, ""), (9, "ferry", 8, "")],
        );
        assert_eq!(cron_ancestor(supercronic.path(), "self").as_deref(), Some("supercronic"));
        let bcron = fake_proc(
            9,
            &[(1, "init", 0, ""), (4, "bcron-sched", 1, ""), (5, "bcron-exec", 4, ""), (9, "ferry", 5, "")],
        );
        assert_eq!(cron_ancestor(bcron.path(), "self").as_deref(), Some("bcron-exec"));
        // A container whose pid 1 is cron.
        let pid1 = fake_proc(9, &[(1, "cron", 0, "cron -f"), (8, "sh", 1, ""), (9, "ferry", 8, "")]);
        assert_eq!(cron_ancestor(pid1.path(), "self").as_deref(), Some("cron"));
        // An ssh command, a script from a terminal, a systemd timer: no cron.
        for chain in [
            [(1, "systemd", 0, ""), (5, "sshd", 1, ""), (8, "bash", 5, ""), (9, "ferry", 8, "")],
            [
                (1, "systemd", 0, ""),
                (5, "tmux: server", 1, ""),
                (8, "make (cron)", 5, ""),
                (9, "ferry", 8, ""),
            ],
            [(1, "systemd", 0, ""), (5, "systemd", 1, ""), (8, "deploy.sh", 5, ""), (9, "ferry", 8, "")],
        ] {
            let tree = fake_proc(9, &chain);
            assert_eq!(cron_ancestor(tree.path(), "self"), None, "{chain:?}");
        }
        // ferry itself named cron is not its own ancestor.
        let itself = fake_proc(9, &[(1, "init", 0, ""), (8, "sh", 1, ""), (9, "cron", 8, "")]);
        assert_eq!(cron_ancestor(itself.path(), "self"), None);
    }

    #[test]
    fn busybox_counts_only_as_its_crond_applet() {
        let applet =
            fake_proc(9, &[(1, "init", 0, ""), (4, "busybox", 1, "busybox crond -f"), (9, "ferry", 4, "")]);
        assert_eq!(cron_ancestor(applet.path(), "self").as_deref(), Some("busybox"));
        let shell =
            fake_proc(9, &[(1, "init", 0, ""), (4, "busybox", 1, "/bin/busybox sh"), (9, "ferry", 4, "")]);
        assert_eq!(cron_ancestor(shell.path(), "self"), None);
        assert!(is_busybox_crond(b"/usr/sbin/crond\0-f"));
        assert!(is_busybox_crond(b"/bin/busybox\0crond\0-f"));
        assert!(!is_busybox_crond(b"/bin/busybox\0ash"));
        assert!(!is_busybox_crond(b""));
    }

    #[test]
    fn a_broken_or_looping_proc_tree_ends_the_walk() {
        // A missing parent, a loop, an unreadable stat: no answer, no hang.
        let orphan = fake_proc(9, &[(9, "ferry", 8, "")]);
        assert_eq!(cron_ancestor(orphan.path(), "self"), None);
        let looped = fake_proc(9, &[(7, "sh", 8, ""), (8, "sh", 7, ""), (9, "ferry", 8, "")]);
        assert_eq!(cron_ancestor(looped.path(), "self"), None);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(cron_ancestor(empty.path(), "self"), None);
    }

    #[test]
    fn stat_lines_are_read_with_odd_names() {
        assert_eq!(parse_stat(b"12 (cron) S 1 12 12 0"), Some(("cron".into(), 1)));
        assert_eq!(parse_stat(b"12 (a) b (c)) R 77 1"), Some(("a) b (c)".into(), 77)));
        assert_eq!(parse_stat(b"12 (cron S 1"), None);
        assert_eq!(parse_stat(b"12 (cron) S x"), None);
        assert_eq!(parse_stat(b")("), None);
    }

    proptest::proptest! {
        #[test]
        fn any_stat_or_cmdline_is_read_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_stat(&bytes);
            let _ = is_busybox_crond(&bytes);
        }
    }
}
