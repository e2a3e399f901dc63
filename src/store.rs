//! Everything ferry remembers, behind one trait: the audit chain, the runner-side environment
//! lease, and the questions commands ask about past deployments.
//!
//! Commands never open `audit.jsonl` or a lock file themselves; they ask a [`Store`]. Today's
//! implementation is [`FileStore`], the files beside the inventory (nothing to install). The
//! trait is shaped for a database shared by every runner (CI jobs, cron hosts, laptops): each
//! method is a question an indexed query can answer ("the successful deployments of APP in ENV",
//! "one deployment by id", "the last N runs matching a filter"), never "read everything and
//! filter", and [`Store::append`] takes the entry by reference, so when a store cannot be
//! reached the caller still holds the record and can keep it for later instead of losing it.

pub mod postgres;
pub mod state_url;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::audit::{Actor, AuditError, Entry, Log, Record, Verification};
use crate::deployments::{Change, Deployment};
use crate::lock::{LockError, LockInfo};

/// Why a store could not answer or record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The files could not be read or written.
    #[error(transparent)]
    Files(#[from] AuditError),
    /// The hash key file is not what ferry wrote.
    #[error(
        "{}: not a ferry hash key (64 hex digits)\n  = help: restore it from a backup; a new key changes every config hash, so the next deploy replaces every container once",
        crate::diagnostic::display_path(path).display()
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The shared store could not be reached (exit 1, before any target is touched).
    #[error(
        "cannot reach the state store {endpoint}: {message}\n  = help: check that the database is up and reachable from this machine, and the state URL ([state] url, or FERRY_STATE_URL); nothing was changed on any target"
    )]
    Unreachable {
        /// `user@host:port/db` (never the password).
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The shared store answered with an error, or went away mid-command.
    #[error("the state store {endpoint} failed: {message}")]
    Database {
        /// `user@host:port/db`.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The database has no ferry schema, an older or a newer one (exit 2).
    #[error(
        "the state store {endpoint} {}",
        match found {
            None => "has no ferry schema\n  = help: create it with `ferry state init` (once, by a role that may create tables)".to_string(),
            Some(v) if v < wanted => format!("has schema version {v}, this ferry needs {wanted}\n  = help: upgrade it with `ferry state init`"),
            Some(v) => format!("has schema version {v}, newer than this ferry's {wanted}\n  = help: upgrade ferry on this runner; an older ferry never writes a newer schema"),
        }
    )]
    Schema {
        /// `user@host:port/db`.
        endpoint: String,
        /// The version on record.
        found: Option<i32>,
        /// The version this build needs.
        wanted: i32,
    },
    /// A row of the shared store's chain is not what ferry wrote: nothing acts on it (exit 4).
    #[error(
        "the audit chain in the state store {endpoint} is broken at seq {seq}: {problem}; ferry acts on no record of a broken chain\n  = help: `ferry audit verify` walks the whole chain; restore the table from a backup"
    )]
    Broken {
        /// `user@host:port/db`.
        endpoint: String,
        /// The row.
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
    /// The local spool could not be written or read.
    #[error("the spool {}: {source}", crate::diagnostic::display_path(path).display())]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command needs the shared store and this inventory uses the local files.
    #[error("{0}")]
    NotShared(String),
}

impl StoreError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            StoreError::Files(AuditError::Broken { .. }) | StoreError::Broken { .. } => {
                crate::error::EXIT_REFUSED
            }
            StoreError::Schema { .. } | StoreError::NotShared(_) => crate::error::EXIT_INVALID,
            _ => 1,
        }
    }
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Chained, with this seq.
    Chained(u64),
    /// Kept in the local spool (the shared store was unreachable); pushed later.
    Spooled,
}

/// What `ferry state status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreStatus {
    /// `files` or `postgresql`.
    pub kind: &'static str,
    /// The log file, or `user@host:port/db`.
    pub location: String,
    /// The TLS mode (`sslmode`), or `-` for files.
    pub tls: String,
    /// The schema version (files: none).
    pub schema: Option<i32>,
    /// Records in the chain.
    pub records: u64,
    /// The chain head: seq and hash.
    pub head: Option<(u64, String)>,
    /// Records that reached the chain late, from a runner's spool.
    pub delayed: u64,
    /// Records imported from a local log.
    pub imported: u64,
}

/// The file of [`FileStore`]'s hash key, in the state folder.
const HASH_KEY_FILE: &str = "hash.key";

/// 64 hex digits as 32 bytes.
pub(crate) fn decode_key(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

/// How a shared store's lease is named where targets' locks are listed and recorded.
pub const LEASE_TARGET: &str = "(state store)";

/// Which runs `ferry history` shows.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only runs started at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many runs (the newest).
    pub limit: usize,
    /// Only runs whose id starts with this (`history --run`: an id or a prefix of one).
    pub run: Option<String>,
}

/// The runner-side hold on an environment: released when dropped (or when the process dies).
pub trait Lease: Send + Sync + std::fmt::Debug {
    /// Records `info` (a later expiry) in the held lease.
    fn rewrite(&self, info: &LockInfo) -> std::io::Result<()>;

    /// Keeps the lease after this process ends, until its expiry (`ferry lock acquire`). A
    /// lease that lives only as long as its process (a file lock) cannot be kept.
    fn keep(&self) {}

    /// This acquisition's fencing number, where the lease has one (a shared store's).
    fn fence(&self) -> Option<u64> {
        None
    }

    /// The expired lease of another run this acquisition replaced, to be recorded.
    fn taken_over(&self) -> Option<LockInfo> {
        None
    }
}

impl Lease for crate::lock::LocalLock {
    fn rewrite(&self, info: &LockInfo) -> std::io::Result<()> {
        crate::lock::LocalLock::rewrite(self, info)
    }
}

/// What ferry remembers; see the module docs.
pub trait Store: Send + Sync {
    /// Where the records live, for messages (`.ferry/audit.jsonl`).
    fn describe(&self) -> String;

    /// Who this store writes as.
    fn actor(&self) -> &Actor;

    /// Appends one record to the chain; returns only once it is durable (chained, or kept in a
    /// local spool when a shared store went away mid-run). On an error nothing was recorded and
    /// the caller still holds `entry`.
    fn append(&self, entry: &Entry) -> Result<Appended, StoreError>;

    /// True for a store shared by runners (a database), false for the local files.
    fn is_shared(&self) -> bool {
        false
    }

    /// Records this process had to spool instead of chaining (they reach the chain later).
    fn spooled(&self) -> usize {
        0
    }

    /// The deployments (deploy, rollback, promote) of `app` in `environment`, oldest first.
    fn deployments(&self, app: &str, environment: &str) -> Result<Vec<Deployment>, StoreError>;

    /// The deployments and removals of `app` in `environment`, oldest first: what `status`,
    /// `rollback` and `promote` weigh against each other (a removal after the last success means
    /// the app is not expected there).
    /// A store that keeps no removals answers with its deployments alone.
    fn changes(&self, app: &str, environment: &str) -> Result<Vec<Change>, StoreError> {
        Ok(self.deployments(app, environment)?.into_iter().map(Change::Deployed).collect())
    }

    /// The successful deployments of `app` in each of `phases`, oldest first.
    fn successes_by_phase(
        &self,
        app: &str,
        phases: &[String],
    ) -> Result<HashMap<String, Vec<Deployment>>, StoreError>;

    /// The last successful deployment of `app` in `environment`.
    fn last_success(&self, app: &str, environment: &str) -> Result<Option<Deployment>, StoreError>;

    /// The records of the newest runs matching `filter`, in the order they were written.
    fn history(&self, filter: &HistoryFilter) -> Result<Vec<Record>, StoreError>;

    /// Walks the chain.
    fn verify(&self) -> Result<Verification, StoreError>;

    /// The store's key for the secret hashes in config hashes: random, made once, the same for
    /// every runner of this store.
    fn hash_key(&self) -> Result<Vec<u8>, StoreError>;

    /// Takes the runner-side lease of `environment`, recording `info` in it; a held lease is
    /// [`LockError::Held`] naming its holder.
    fn lease(&self, environment: &str, info: &LockInfo) -> Result<Box<dyn Lease>, LockError>;

    /// The live lease of `environment` that outlives processes (a shared store's), if any.
    fn lease_holder(&self, _environment: &str) -> Result<Option<LockInfo>, StoreError> {
        Ok(None)
    }

    /// Removes `environment`'s lasting lease (only `run`'s, when given); returns what it held.
    fn break_lease(&self, _environment: &str, _run: Option<&str>) -> Result<Option<LockInfo>, StoreError> {
        Ok(None)
    }

    /// Which store this is, its schema, size and chain head.
    fn status(&self) -> Result<StoreStatus, StoreError>;

    /// Chains `records` from a local log (time and actor kept, marked imported); records
    /// already imported are skipped. Returns how many were added.
    fn import(&self, _records: &[Record]) -> Result<usize, StoreError> {
        Err(StoreError::NotShared(
            "this inventory keeps its records in local files; `ferry state push` moves them into a shared store: set [state] url in the inventory, or FERRY_STATE_URL".into(),
        ))
    }
}

/// The records as files in a state folder: `audit.jsonl` and `locks/ENV.lock`.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    log: Log,
}

impl FileStore {
    /// The store in `dir`, writing as `actor`.
    pub fn new(dir: &Path, actor: Actor) -> FileStore {
        FileStore { dir: dir.to_path_buf(), log: Log::new(dir, actor) }
    }

    /// The audit log file.
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn records(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self.log.read()?)
    }
}

impl Store for FileStore {
    fn describe(&self) -> String {
        crate::diagnostic::display_path(self.log.path()).display().to_string()
    }

    fn actor(&self) -> &Actor {
        self.log.actor()
    }

    fn append(&self, entry: &Entry) -> Result<Appended, StoreError> {
        Ok(Appended::Chained(self.log.append(entry.clone())?.seq))
    }

    fn deployments(&self, app: &str, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        // A file has no index: this store reads the log once per question.
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|r| crate::deployments::from_record(r, app, environment))
            .collect())
    }

    fn changes(&self, app: &str, environment: &str) -> Result<Vec<Change>, StoreError> {
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|r| crate::deployments::change_from_record(r, app, environment))
            .collect())
    }

    fn successes_by_phase(
        &self,
        app: &str,
        phases: &[String],
    ) -> Result<HashMap<String, Vec<Deployment>>, StoreError> {
        let records = self.records()?;
        let mut by_phase = HashMap::new();
        for phase in phases {
            let successes = records
                .iter()
                .filter_map(|r| crate::deployments::from_record(r.clone(), app, phase))
                .filter(|d| d.recorded.succeeded)
                .collect();
            by_phase.insert(phase.clone(), successes);
        }
        Ok(by_phase)
    }

    fn last_success(&self, app: &str, environment: &str) -> Result<Option<Deployment>, StoreError> {
        Ok(self.deployments(app, environment)?.into_iter().rev().find(|d| d.recorded.succeeded))
    }

    fn history(&self, filter: &HistoryFilter) -> Result<Vec<Record>, StoreError> {
        let records = self.records()?;
        // A run is described by its first record (start time, app, environment).
        let mut first: HashMap<&str, &Record> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for record in &records {
            if !first.contains_key(record.entry.run.as_str()) {
                first.insert(&record.entry.run, record);
                order.push(&record.entry.run);
            }
        }
        let wanted: std::collections::HashSet<&str> = order
            .iter()
            .rev()
            .filter(|run| {
                let head = first[*run];
                let (app, env) = (head.entry.app.as_deref(), head.entry.environment.as_deref());
                filter.run.as_deref().is_none_or(|prefix| run.starts_with(prefix))
                    && filter.app.as_deref().is_none_or(|a| app == Some(a))
                    && filter.environment.as_deref().is_none_or(|e| env == Some(e))
                    && filter
                        .since_ms
                        .is_none_or(|s| crate::time::parse_ms(&head.time).is_some_and(|t| t >= s))
            })
            .take(filter.limit)
            .copied()
            .collect();
        Ok(records.iter().filter(|r| wanted.contains(r.entry.run.as_str())).cloned().collect())
    }

    fn verify(&self) -> Result<Verification, StoreError> {
        Ok(crate::audit::verify(self.log.path())?)
    }

    fn hash_key(&self) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(HASH_KEY_FILE);
        let io = |source| StoreError::Files(AuditError::Io { path: path.clone(), source });
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return decode_key(text.trim()).ok_or_else(|| StoreError::BadKey { path: path.clone() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            std::fs::create_dir_all(&self.dir).map_err(io)?;
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
            // create_new: of two runners making the key at once, one writes it and both read it.
            let mut options = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), 0o600);
            match options.open(&path) {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    return Ok(key.to_vec());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
    }

    fn lease(&self, environment: &str, info: &LockInfo) -> Result<Box<dyn Lease>, LockError> {
        Ok(Box::new(crate::lock::lock_local(&self.dir, environment, info)?))
    }

    fn status(&self) -> Result<StoreStatus, StoreError> {
        let records = self.records()?;
        let count =
            |via: &str| records.iter().filter(|r| r.origin.as_ref().is_some_and(|o| o.via == via)).count();
        Ok(StoreStatus {
            kind: "files",
            location: self.describe(),
            tls: "-".into(),
            schema: None,
            records: records.len() as u64,
            head: records.last().map(|r| (r.seq, r.hash.clone())),
            delayed: count("spooled") as u64,
            imported: count("imported") as u64,
        })
    }
}
