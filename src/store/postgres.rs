//! The shared store: ferry's records in a PostgreSQL database that every runner reaches (CI jobs
//! on ephemeral runners, cron hosts, laptops), so that one runner's deploy is the next one's
//! promote, rollback and history.
//!
//! Why it is built this way:
//!
//! * **One chain, serialized by the database.** An append takes a transaction-scoped advisory
//!   lock, reads the chain head, seals the record after it (the same [`audit::seal`] the files
//!   use, so a record has the same bytes and hash wherever it lives) and commits. The commit
//!   returns before the action is reported: what a runner shows as done is on record.
//! * **Rows are records.** Each row keeps the record's exact bytes (`line`) next to the columns
//!   queries filter on (app, environment, kind, run). Whatever a query hands back is checked
//!   before anything acts on it: the bytes hash to the record's hash, the columns say what the
//!   bytes say, and the neighbours link to it. A row a superuser edited is refused (exit 4)
//!   even when only `ferry audit verify` walks the whole chain.
//! * **A synchronous seam over an async client.** [`Store`] is synchronous (it is called from
//!   tasks and from plain code alike), `tokio-postgres` is async: the client lives on a small
//!   runtime on its own thread, and each call hands it a future and waits for the answer. A
//!   caller inside the main runtime blocks its worker for one round trip, as a file append's
//!   fsync does.
//! * **Nothing is lost when the database goes away mid-run.** Targets in flight finish on their
//!   own; the run's remaining records go to a local, fsynced spool (`spool.jsonl` in the state
//!   folder), and the next command that reaches the database pushes them, marked as delayed.
//! * **The environment lease lives in the database** (holder, run, since, expiry on the
//!   database's clock, fencing number from a sequence), taken with one atomic upsert, so two
//!   runners on different machines cannot both hold it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::state_url::{SslMode, StateUrl};
use super::{Appended, HistoryFilter, Lease, StoreError, StoreStatus};
use crate::audit::{self, Actor, Entry, Origin, Record, Verification};
use crate::deployments::Deployment;
use crate::lock::{LockError, LockInfo};

/// The schema this build of ferry reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE ferry_audit (
    seq bigint PRIMARY KEY,
    id text NOT NULL UNIQUE,
    time_ms bigint NOT NULL,
    written timestamptz NOT NULL DEFAULT now(),
    run text NOT NULL,
    kind text NOT NULL,
    command text NOT NULL,
    app text,
    environment text,
    origin text,
    imported_hash text UNIQUE,
    prev text NOT NULL,
    hash text NOT NULL,
    line text NOT NULL
);
CREATE INDEX ferry_audit_deployments ON ferry_audit (app, environment, kind, seq);
CREATE INDEX ferry_audit_run ON ferry_audit (run, seq);
CREATE TABLE ferry_runs (
    run text PRIMARY KEY,
    first_seq bigint NOT NULL,
    time_ms bigint NOT NULL,
    app text,
    environment text
);
CREATE INDEX ferry_runs_recent ON ferry_runs (first_seq DESC);
CREATE INDEX ferry_runs_app_env ON ferry_runs (app, environment, first_seq DESC);
CREATE INDEX ferry_runs_env ON ferry_runs (environment, first_seq DESC);
CREATE TABLE ferry_settings (name text PRIMARY KEY, value text NOT NULL);
CREATE SEQUENCE ferry_fence;
CREATE TABLE ferry_leases (
    environment text PRIMARY KEY,
    holder text NOT NULL,
    run text NOT NULL,
    message text NOT NULL,
    since timestamptz NOT NULL,
    expires timestamptz NOT NULL,
    fence bigint NOT NULL
);
"];

/// The advisory lock that serializes appends (and migrations): "ferry" in ASCII.
const CHAIN_LOCK: i64 = 0x0066_6572_7279;

/// How long one database call may take before the store counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Records `ferry state push` chains in one transaction (a few seconds' work, well inside
/// [`CALL_TIMEOUT`]).
const IMPORT_BATCH: usize = 1000;

/// The spool of records written while the database was unreachable.
const SPOOL_FILE: &str = "spool.jsonl";

/// What the runtime thread answers for one call.
type Answer<T> = Result<T, Failure>;

/// Why a database call failed.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error (permissions, a constraint, missing schema).
    Database(String),
    /// The connection is gone or never came (refused, reset, TLS, timeout).
    Lost(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Database(message) | Failure::Lost(message) => message.clone(),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                Failure::Database(format!("{}: {} ({})", db.severity(), db.message(), db.code().code()))
            }
            None => Failure::Lost(error_chain(&e)),
        }
    }
}

/// An error and its causes on one line (`tokio_postgres::Error` hides the I/O cause in its
/// source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The client, on its own runtime thread.
#[derive(Clone)]
struct Db {
    handle: tokio::runtime::Handle,
    client: Arc<tokio::sync::Mutex<Client>>,
    /// Set once a call found the connection gone: later calls fail at once.
    lost: Arc<AtomicBool>,
}

impl Db {
    /// Runs `work` with the client and waits for its answer.
    fn call<T, F, Fut>(&self, work: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<tokio::sync::Mutex<Client>>) -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Failure::Lost(
                "the connection to the state store was lost earlier in this run".into(),
            ));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(Arc::clone(&self.client));
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        let answer = rx
            .recv_timeout(CALL_TIMEOUT)
            .unwrap_or_else(|_| Err(Failure::Lost(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))));
        if matches!(answer, Err(Failure::Lost(_))) {
            self.lost.store(true, Ordering::SeqCst);
        }
        answer
    }
}

/// One line of the spool.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "spooled", rename_all = "snake_case")]
enum Spooled {
    /// A record, as it would have been chained then.
    Record {
        /// Its id (a second push of the same line adds nothing).
        id: String,
        /// When it happened.
        time: String,
        /// Who.
        actor: Actor,
        /// What.
        entry: Box<Entry>,
    },
    /// A lease the run could not release: released when the spool is pushed.
    Release {
        /// The environment.
        environment: String,
        /// The run that held it.
        run: String,
    },
}

/// The store in a PostgreSQL database; see the module docs.
pub struct PgStore {
    url: StateUrl,
    actor: Actor,
    db: Db,
    spool: PathBuf,
    /// Records this process spooled.
    spooled: Arc<AtomicUsize>,
    /// Records pushed from the spool when the store was opened.
    pushed: usize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.url.endpoint())
    }
}

/// What [`PgStore::open`] should find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// The current schema (every command but `state init`).
    Current,
    /// Create or upgrade it (`ferry state init`).
    Migrate,
}

impl PgStore {
    /// Connects, checks (or, with [`Schema::Migrate`], makes) the schema, and pushes records a
    /// past run spooled in `state_dir`. Refuses before anything else happens when the database
    /// cannot be reached.
    pub fn open(
        url: &StateUrl,
        actor: Actor,
        state_dir: &Path,
        schema: Schema,
    ) -> Result<PgStore, StoreError> {
        let db = connect(url)?;
        let store = PgStore {
            url: url.clone(),
            actor,
            db,
            spool: state_dir.join(SPOOL_FILE),
            spooled: Arc::new(AtomicUsize::new(0)),
            pushed: 0,
        };
        match schema {
            Schema::Migrate => store.migrate()?,
            Schema::Current => store.check_schema()?,
        }
        let mut store = store;
        store.pushed = store.push_spool()?;
        Ok(store)
    }

    /// Records pushed from the local spool when this store was opened.
    pub fn pushed_from_spool(&self) -> usize {
        self.pushed
    }

    fn endpoint(&self) -> String {
        self.url.endpoint()
    }

    fn failed(&self, failure: Failure) -> StoreError {
        StoreError::Database { endpoint: self.endpoint(), message: failure.message() }
    }

    /// The schema version on record (`None`: no ferry schema yet).
    fn schema_version(&self) -> Result<Option<i32>, StoreError> {
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let exists = client.query_one("SELECT to_regclass('ferry_schema') IS NOT NULL", &[]).await?;
            if !exists.get::<_, bool>(0) {
                return Ok(None);
            }
            let row = client.query_one("SELECT max(version) FROM ferry_schema", &[]).await?;
            Ok(row.get::<_, Option<i32>>(0))
        });
        answer.map_err(|f| self.failed(f))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        match self.schema_version()? {
            Some(SCHEMA_VERSION) => Ok(()),
            found => Err(StoreError::Schema { endpoint: self.endpoint(), found, wanted: SCHEMA_VERSION }),
        }
    }

    /// Applies the migrations the database lacks, in one transaction, under the chain's lock.
    fn migrate(&self) -> Result<(), StoreError> {
        if let Some(found) = self.schema_version()?
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::Schema {
                endpoint: self.endpoint(),
                found: Some(found),
                wanted: SCHEMA_VERSION,
            });
        }
        let answer = self.db.call(|client| async move {
            let mut client = client.lock().await;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS ferry_schema (version integer NOT NULL, applied timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
            let found: Option<i32> = tx.query_one("SELECT max(version) FROM ferry_schema", &[]).await?.get(0);
            let found = found.unwrap_or(0);
            for (from, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
                tx.batch_execute(sql).await?;
                let to = i32::try_from(from + 1).unwrap_or(i32::MAX);
                tx.execute("INSERT INTO ferry_schema (version) VALUES ($1)", &[&to]).await?;
            }
            tx.commit().await?;
            Ok(())
        });
        answer.map_err(|f| self.failed(f))
    }

    /// Appends `items` in one transaction; `Ok` counts the records chained (those already on
    /// record, by id or imported hash, are skipped).
    fn chain(&self, items: Vec<Pending>) -> Answer<Vec<u64>> {
        self.db.call(|client| async move {
            let mut client = client.lock().await;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK]).await?;
            let head = tx.query_opt("SELECT seq, hash FROM ferry_audit ORDER BY seq DESC LIMIT 1", &[]).await?;
            let mut head: Option<(u64, String)> =
                head.map(|row| (u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)));
            let insert = tx
                .prepare(
                    "INSERT INTO ferry_audit (seq, id, time_ms, run, kind, command, app, environment, origin, imported_hash, prev, hash, line) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .await?;
            let run_head = tx
                .prepare(
                    "INSERT INTO ferry_runs (run, first_seq, time_ms, app, environment) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (run) DO NOTHING",
                )
                .await?;
            let mut chained = Vec::new();
            for item in items {
                if let Some(id) = &item.skip_if_id
                    && tx.query_opt("SELECT 1 FROM ferry_audit WHERE id = $1", &[id]).await?.is_some()
                {
                    continue;
                }
                if let Some(Origin { hash: Some(hash), .. }) = &item.origin
                    && tx.query_opt("SELECT 1 FROM ferry_audit WHERE imported_hash = $1", &[hash]).await?.is_some()
                {
                    continue;
                }
                let imported = item.origin.as_ref().filter(|o| o.via == "imported").and_then(|o| o.hash.clone());
                let origin = item.origin.as_ref().map(|o| o.via.clone());
                let record = audit::seal(
                    head.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                    item.time,
                    item.id,
                    item.actor,
                    item.entry,
                    item.origin,
                );
                let line = String::from_utf8(serde_json::to_vec(&record).unwrap_or_default()).unwrap_or_default();
                let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
                let time_ms = crate::time::parse_ms(&record.time).unwrap_or(0);
                let e = &record.entry;
                tx.execute(
                    &insert,
                    &[
                        &seq,
                        &record.id,
                        &time_ms,
                        &e.run,
                        &e.kind,
                        &e.command,
                        &e.app,
                        &e.environment,
                        &origin,
                        &imported,
                        &record.prev,
                        &record.hash,
                        &line,
                    ],
                )
                .await?;
                tx.execute(&run_head, &[&e.run, &seq, &time_ms, &e.app, &e.environment]).await?;
                chained.push(record.seq);
                head = Some((record.seq, record.hash));
            }
            tx.commit().await?;
            Ok(chained)
        })
    }

    /// Writes `item` to the local spool, durably.
    fn spool(&self, item: &Spooled) -> Result<(), StoreError> {
        write_spool(&self.spool, item)?;
        if matches!(item, Spooled::Record { .. }) {
            self.spooled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Pushes what a past run spooled, in order, then empties the spool. Records already on
    /// record (a push cut short before the spool was emptied) are skipped by id.
    fn push_spool(&self) -> Result<usize, StoreError> {
        let io = |source| StoreError::Spool { path: self.spool.clone(), source };
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&self.spool) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        // Two commands starting at once on one runner: one pushes, the other waits for it.
        file.lock().map_err(io)?;
        let text = std::fs::read_to_string(&self.spool).map_err(io)?;
        let mut records = Vec::new();
        let mut releases = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // A line cut by a crash mid-write is the only kind a spool can hold besides whole
            // ones (each is one write, then fsync); it never reached the chain.
            match serde_json::from_str::<Spooled>(line) {
                Ok(Spooled::Record { id, time, actor, entry }) => records.push(Pending {
                    skip_if_id: Some(id.clone()),
                    id,
                    time,
                    actor,
                    entry: *entry,
                    origin: Some(Origin { via: "spooled".into(), seq: None, hash: None }),
                }),
                Ok(Spooled::Release { environment, run }) => releases.push((environment, run)),
                Err(e) => {
                    tracing::warn!(spool = %self.spool.display(), error = %e, "skipping a torn spool line")
                }
            }
        }
        let pushed = self.chain(records).map_err(|f| self.failed(f))?.len();
        for (environment, run) in releases {
            let answer = self.db.call(|client| async move {
                let client = client.lock().await;
                client
                    .execute(
                        "DELETE FROM ferry_leases WHERE environment = $1 AND run = $2",
                        &[&environment, &run],
                    )
                    .await?;
                Ok(())
            });
            answer.map_err(|f| self.failed(f))?;
        }
        file.set_len(0).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        let _ = std::fs::remove_file(&self.spool);
        if pushed > 0 {
            tracing::info!(records = pushed, "pushed delayed records from the local spool");
        }
        Ok(pushed)
    }

    /// Runs a query for whole records and checks each row before anything uses it.
    fn records(&self, sql: String, params: Params) -> Result<Vec<Record>, StoreError> {
        let sql = format!(
            "SELECT a.seq, a.line, a.run, a.kind, a.command, a.app, a.environment, \
               (SELECT b.hash FROM ferry_audit b WHERE b.seq = a.seq - 1), \
               (SELECT n.prev FROM ferry_audit n WHERE n.seq = a.seq + 1), \
               (SELECT max(seq) FROM ferry_audit) \
             FROM ferry_audit a {sql} ORDER BY a.seq"
        );
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.refs();
            let rows = client.query(&sql, &refs).await?;
            Ok(rows
                .into_iter()
                .map(|row| Row {
                    seq: row.get(0),
                    line: row.get(1),
                    run: row.get(2),
                    kind: row.get(3),
                    command: row.get(4),
                    app: row.get(5),
                    environment: row.get(6),
                    before: row.get(7),
                    after: row.get(8),
                    head: row.get(9),
                })
                .collect::<Vec<_>>())
        });
        let rows = answer.map_err(|f| self.failed(f))?;
        rows.into_iter()
            .map(|row| {
                let seq = row.seq;
                row.check().map_err(|problem| StoreError::Broken { endpoint: self.endpoint(), seq, problem })
            })
            .collect()
    }

    fn deployments_where(&self, app: &str, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        let records = self.records(
            "WHERE a.app = $1 AND a.environment = $2 AND a.kind = 'run_finished' \
             AND a.command IN ('deploy', 'rollback', 'promote')"
                .into(),
            Params(vec![Param::Text(app.into()), Param::Text(environment.into())]),
        )?;
        Ok(records.into_iter().filter_map(|r| crate::deployments::from_record(r, app, environment)).collect())
    }

    /// Reads the lease row of `environment`.
    fn lease_row(&self, environment: &str) -> Result<Option<(LockInfo, bool)>, StoreError> {
        let environment = environment.to_string();
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let row = client
                .query_opt(
                    "SELECT holder, run, message, (extract(epoch FROM since) * 1000)::bigint, \
                       (extract(epoch FROM expires) * 1000)::bigint, fence, expires < now() \
                     FROM ferry_leases WHERE environment = $1",
                    &[&environment],
                )
                .await?;
            Ok(row.map(|row| (lease_info(&row), row.get::<_, bool>(6))))
        });
        answer.map_err(|f| self.failed(f))
    }
}

/// A record waiting to be chained.
struct Pending {
    id: String,
    time: String,
    actor: Actor,
    entry: Entry,
    origin: Option<Origin>,
    /// Skip it when a record with this id is already chained (a spool pushed twice).
    skip_if_id: Option<String>,
}

/// One query parameter (owned, so the query can move to the runtime thread).
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
}

/// A query's parameters.
#[derive(Debug, Clone, Default)]
struct Params(Vec<Param>);

impl Params {
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| match p {
                Param::Text(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                Param::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
            })
            .collect()
    }

    /// Adds a parameter and returns its placeholder (`$3`).
    fn push(&mut self, param: Param) -> String {
        self.0.push(param);
        format!("${}", self.0.len())
    }
}

/// A row as the database hands it back, before it is trusted.
struct Row {
    seq: i64,
    line: String,
    run: String,
    kind: String,
    command: String,
    app: Option<String>,
    environment: Option<String>,
    /// The hash of the row before it.
    before: Option<String>,
    /// The `prev` of the row after it.
    after: Option<String>,
    /// The chain's last seq.
    head: Option<i64>,
}

impl Row {
    /// The record, once its bytes, columns and links hold; otherwise what is wrong.
    fn check(self) -> Result<Record, String> {
        let record = audit::check_record(self.line.as_bytes())?;
        let e = &record.entry;
        if i64::try_from(record.seq).ok() != Some(self.seq)
            || e.run != self.run
            || e.kind != self.kind
            || e.command != self.command
            || e.app != self.app
            || e.environment != self.environment
        {
            return Err(format!("row seq {} was modified (its columns do not match its record)", self.seq));
        }
        let linked_before = if record.seq == 1 {
            record.prev == audit::GENESIS
        } else {
            self.before.as_deref() == Some(record.prev.as_str())
        };
        let linked_after = match &self.after {
            Some(prev) => prev == &record.hash,
            None => self.head == Some(self.seq),
        };
        if !linked_before || !linked_after {
            return Err(format!(
                "record seq {} is not linked to its neighbours (a record was edited, deleted or inserted)",
                self.seq
            ));
        }
        Ok(record)
    }
}

/// The lease columns as a [`LockInfo`] (times on the database's clock).
fn lease_info(row: &tokio_postgres::Row) -> LockInfo {
    LockInfo {
        holder: row.get(0),
        run: row.get(1),
        message: row.get(2),
        since_ms: row.get(3),
        expires_ms: row.get(4),
        deadline_s: None,
        fence: u64::try_from(row.get::<_, i64>(5)).ok(),
    }
}

/// Appends one line to the spool and syncs it.
fn write_spool(path: &Path, item: &Spooled) -> Result<(), StoreError> {
    let io = |source| StoreError::Spool { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(options.create(true).append(true), 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.lock().map_err(io)?;
    let mut line = serde_json::to_vec(item).unwrap_or_default();
    line.push(b'\n');
    file.write_all(&line).map_err(io)?;
    file.sync_data().map_err(io)
}

impl super::Store for PgStore {
    fn describe(&self) -> String {
        format!("the state store {}", self.endpoint())
    }

    fn actor(&self) -> &Actor {
        &self.actor
    }

    fn append(&self, entry: &Entry) -> Result<Appended, StoreError> {
        let pending = Pending {
            id: uuid::Uuid::now_v7().to_string(),
            time: crate::time::now_rfc3339(),
            actor: self.actor.clone(),
            entry: entry.clone(),
            origin: None,
            skip_if_id: None,
        };
        let (id, time) = (pending.id.clone(), pending.time.clone());
        match self.chain(vec![pending]) {
            Ok(seqs) => Ok(Appended::Chained(seqs.first().copied().unwrap_or(0))),
            Err(Failure::Lost(why)) => {
                if self.spooled.load(Ordering::SeqCst) == 0 {
                    tracing::warn!(
                        store = %self.endpoint(),
                        error = %why,
                        spool = %self.spool.display(),
                        "the state store is unreachable: this run's records go to the local spool; the next command that reaches the store pushes them"
                    );
                }
                self.spool(&Spooled::Record {
                    id,
                    time,
                    actor: self.actor.clone(),
                    entry: Box::new(entry.clone()),
                })?;
                Ok(Appended::Spooled)
            }
            Err(failure) => Err(self.failed(failure)),
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn spooled(&self) -> usize {
        self.spooled.load(Ordering::SeqCst)
    }

    fn deployments(&self, app: &str, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        self.deployments_where(app, environment)
    }

    fn successes_by_phase(
        &self,
        app: &str,
        phases: &[String],
    ) -> Result<HashMap<String, Vec<Deployment>>, StoreError> {
        let mut by_phase = HashMap::new();
        for phase in phases {
            let successes =
                self.deployments_where(app, phase)?.into_iter().filter(|d| d.recorded.succeeded).collect();
            by_phase.insert(phase.clone(), successes);
        }
        Ok(by_phase)
    }

    fn last_success(&self, app: &str, environment: &str) -> Result<Option<Deployment>, StoreError> {
        Ok(self.deployments_where(app, environment)?.into_iter().rev().find(|d| d.recorded.succeeded))
    }

    fn history(&self, filter: &HistoryFilter) -> Result<Vec<Record>, StoreError> {
        let mut params = Params::default();
        let mut conditions = Vec::new();
        if let Some(app) = &filter.app {
            conditions.push(format!("app = {}", params.push(Param::Text(app.clone()))));
        }
        if let Some(environment) = &filter.environment {
            conditions.push(format!("environment = {}", params.push(Param::Text(environment.clone()))));
        }
        if let Some(since) = filter.since_ms {
            conditions.push(format!("time_ms >= {}", params.push(Param::Int(since))));
        }
        let condition =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let limit = params.push(Param::Int(i64::try_from(filter.limit).unwrap_or(i64::MAX)));
        self.records(
            format!(
                "JOIN (SELECT run FROM ferry_runs {condition} ORDER BY first_seq DESC LIMIT {limit}) w ON a.run = w.run"
            ),
            params,
        )
    }

    fn verify(&self) -> Result<Verification, StoreError> {
        let mut chain = audit::ChainCheck::new();
        let mut after: i64 = 0;
        loop {
            let answer = self.db.call(|client| async move {
                let client = client.lock().await;
                let rows = client
                    .query(
                        "SELECT seq, line FROM ferry_audit WHERE seq > $1 ORDER BY seq LIMIT 20000",
                        &[&after],
                    )
                    .await?;
                Ok(rows.into_iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect::<Vec<_>>())
            });
            let rows = answer.map_err(|f| self.failed(f))?;
            let Some(last) = rows.last().map(|(seq, _)| *seq) else { break };
            for (seq, line) in rows {
                let line_no = usize::try_from(seq).unwrap_or(usize::MAX);
                match chain.check(line_no, line.as_bytes()) {
                    audit::Checked::Record(record) if i64::try_from(record.seq).ok() != Some(seq) => {
                        chain.verification.broken =
                            Some((line_no, format!("row seq {seq} holds record seq {}", record.seq)));
                        return Ok(chain.verification);
                    }
                    audit::Checked::Record(_) => {}
                    audit::Checked::Torn | audit::Checked::Broken => {
                        if chain.verification.broken.is_none() {
                            chain.verification.broken =
                                Some((line_no, format!("row seq {seq} is not a whole record")));
                        }
                        return Ok(chain.verification);
                    }
                }
            }
            after = last;
        }
        Ok(chain.verification)
    }

    fn hash_key(&self) -> Result<Vec<u8>, StoreError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| StoreError::Database {
            endpoint: self.endpoint(),
            message: format!("no random bytes for a new hash key: {e}"),
        })?;
        let fresh: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // The first runner's key wins; every runner reads the one on record.
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            client
                .execute(
                    "INSERT INTO ferry_settings (name, value) VALUES ('hash_key', $1) ON CONFLICT (name) DO NOTHING",
                    &[&fresh],
                )
                .await?;
            let row = client.query_one("SELECT value FROM ferry_settings WHERE name = 'hash_key'", &[]).await?;
            Ok(row.get::<_, String>(0))
        });
        let text = answer.map_err(|f| self.failed(f))?;
        super::decode_key(text.trim()).ok_or_else(|| StoreError::Database {
            endpoint: self.endpoint(),
            message: "the hash key on record is not 64 hex digits (ferry_settings was edited)".into(),
        })
    }

    fn lease(&self, environment: &str, info: &LockInfo) -> Result<Box<dyn Lease>, LockError> {
        let ttl_ms = (info.expires_ms - info.since_ms).max(1000);
        let (env, holder, run, message) =
            (environment.to_string(), info.holder.clone(), info.run.clone(), info.message.clone());
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            // One statement: a free, expired or own lease is taken; a live one of another run
            // is left alone and the statement returns nothing.
            let taken = client
                .query_opt(
                    "INSERT INTO ferry_leases AS l (environment, holder, run, message, since, expires, fence) \
                     VALUES ($1, $2, $3, $4, now(), now() + $5::float8 * interval '1 millisecond', nextval('ferry_fence')) \
                     ON CONFLICT (environment) DO UPDATE SET holder = EXCLUDED.holder, run = EXCLUDED.run, \
                       message = EXCLUDED.message, since = EXCLUDED.since, expires = EXCLUDED.expires, fence = EXCLUDED.fence \
                     WHERE l.expires < now() OR l.run = EXCLUDED.run \
                     RETURNING fence",
                    &[&env, &holder, &run, &message, &(ttl_ms as f64)],
                )
                .await?;
            if taken.is_some() {
                return Ok(None);
            }
            let row = client
                .query_opt(
                    "SELECT holder, run, message, (extract(epoch FROM since) * 1000)::bigint, \
                       (extract(epoch FROM expires) * 1000)::bigint, fence FROM ferry_leases WHERE environment = $1",
                    &[&env],
                )
                .await?;
            Ok(Some(row.map(|r| lease_info(&r))))
        });
        match answer {
            Ok(None) => Ok(Box::new(PgLease {
                db: self.db.clone(),
                environment: environment.to_string(),
                run: info.run.clone(),
                kept: AtomicBool::new(false),
                spool: self.spool.clone(),
            })),
            Ok(Some(holder)) => Err(LockError::Held {
                environment: environment.to_string(),
                target: "the state store".into(),
                info: holder.map(Box::new),
            }),
            Err(failure) => Err(LockError::Unreachable {
                environment: environment.to_string(),
                target: "the state store".into(),
                message: failure.message(),
            }),
        }
    }

    fn lease_holder(&self, environment: &str) -> Result<Option<LockInfo>, StoreError> {
        Ok(self.lease_row(environment)?.filter(|(_, expired)| !expired).map(|(info, _)| info))
    }

    fn break_lease(&self, environment: &str, run: Option<&str>) -> Result<Option<LockInfo>, StoreError> {
        let Some((info, _)) = self.lease_row(environment)? else { return Ok(None) };
        if run.is_some_and(|r| r != info.run) {
            return Ok(None);
        }
        let (env, held_by) = (environment.to_string(), info.run.clone());
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            Ok(client
                .execute("DELETE FROM ferry_leases WHERE environment = $1 AND run = $2", &[&env, &held_by])
                .await?)
        });
        let deleted = answer.map_err(|f| self.failed(f))?;
        Ok((deleted > 0).then_some(info))
    }

    fn status(&self) -> Result<StoreStatus, StoreError> {
        let version = self.schema_version()?;
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let count: i64 = client.query_one("SELECT count(*) FROM ferry_audit", &[]).await?.get(0);
            let head =
                client.query_opt("SELECT seq, hash FROM ferry_audit ORDER BY seq DESC LIMIT 1", &[]).await?;
            let delayed: i64 = client
                .query_one("SELECT count(*) FROM ferry_audit WHERE origin = 'spooled'", &[])
                .await?
                .get(0);
            let imported: i64 = client
                .query_one("SELECT count(*) FROM ferry_audit WHERE origin = 'imported'", &[])
                .await?
                .get(0);
            Ok((count, head.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))), delayed, imported))
        });
        let (count, head, delayed, imported) = answer.map_err(|f| self.failed(f))?;
        Ok(StoreStatus {
            kind: "postgresql",
            location: self.endpoint(),
            tls: self.url.sslmode.as_str().to_string(),
            schema: version,
            records: u64::try_from(count).unwrap_or(0),
            head: head.map(|(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash)),
            delayed: u64::try_from(delayed).unwrap_or(0),
            imported: u64::try_from(imported).unwrap_or(0),
        })
    }

    fn import(&self, records: &[Record]) -> Result<usize, StoreError> {
        // In batches, each its own transaction and call. One transaction for the whole log
        // costs 1.5 to 3 ms a record on the lab (15,000 records: 24 s; 10,000 beside other
        // tests: 30 s), so from some 10,000 to 20,000 records it outlives CALL_TIMEOUT and a
        // big log could never be pushed. A push cut short between batches is finished by the
        // next one (imported records are skipped by their hash); another runner's appends may
        // land between two batches.
        let mut added = 0;
        for batch in records.chunks(IMPORT_BATCH) {
            let pending = batch
                .iter()
                .map(|r| Pending {
                    id: uuid::Uuid::now_v7().to_string(),
                    time: r.time.clone(),
                    actor: r.actor.clone(),
                    entry: r.entry.clone(),
                    origin: Some(Origin {
                        via: "imported".into(),
                        seq: Some(r.seq),
                        hash: Some(r.hash.clone()),
                    }),
                    skip_if_id: None,
                })
                .collect();
            added += self.chain(pending).map_err(|f| self.failed(f))?.len();
        }
        Ok(added)
    }
}

/// The environment's lease in the database; deleted when dropped (unless kept).
struct PgLease {
    db: Db,
    environment: String,
    run: String,
    kept: AtomicBool,
    spool: PathBuf,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgLease({}, {})", self.environment, self.run)
    }
}

impl Lease for PgLease {
    fn rewrite(&self, info: &LockInfo) -> std::io::Result<()> {
        let ttl_ms = (info.expires_ms - crate::time::now_ms()).max(1000);
        let (env, run) = (self.environment.clone(), self.run.clone());
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            Ok(client
                .execute(
                    "UPDATE ferry_leases SET expires = now() + $3::float8 * interval '1 millisecond' \
                     WHERE environment = $1 AND run = $2",
                    &[&env, &run, &(ttl_ms as f64)],
                )
                .await?)
        });
        match answer {
            Ok(1) => Ok(()),
            Ok(_) => {
                Err(std::io::Error::other("the lease is no longer this run's (it expired and was taken)"))
            }
            Err(failure) => Err(std::io::Error::other(failure.message())),
        }
    }

    fn keep(&self) {
        self.kept.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if self.kept.load(Ordering::SeqCst) {
            return;
        }
        let (env, run) = (self.environment.clone(), self.run.clone());
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            client
                .execute("DELETE FROM ferry_leases WHERE environment = $1 AND run = $2", &[&env, &run])
                .await?;
            Ok(())
        });
        if let Err(failure) = answer {
            // Released by the next command that reaches the store (or by its TTL).
            tracing::warn!(environment = %self.environment, error = %failure.message(), "lease not released; spooled");
            let release = Spooled::Release { environment: self.environment.clone(), run: self.run.clone() };
            if let Err(e) = write_spool(&self.spool, &release) {
                tracing::warn!(error = %e, "cannot spool the lease release; it expires after its TTL");
            }
        }
    }
}

/// Opens the connection on a runtime thread of its own.
fn connect(url: &StateUrl) -> Result<Db, StoreError> {
    let unreachable = |message: String| StoreError::Unreachable { endpoint: url.endpoint(), message };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("cannot start its runtime: {e}")))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("ferry-state".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| unreachable(format!("cannot start its thread: {e}")))?;
    let config = client_config(url);
    let tls = tls_connector(url).map_err(unreachable)?;
    let lost = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let connection_lost = Arc::clone(&lost);
    handle.spawn(async move {
        let connected = match tls {
            None => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(watch(connection, connection_lost));
                    Ok(client)
                }
                Err(e) => Err(e),
            },
            Some(tls) => match config.connect(tls).await {
                Ok((client, connection)) => {
                    tokio::spawn(watch(connection, connection_lost));
                    Ok(client)
                }
                Err(e) => Err(e),
            },
        };
        let _ = tx.send(connected);
    });
    let wait = Duration::from_secs(url.connect_timeout.unwrap_or(10) + 5);
    let client = match rx.recv_timeout(wait) {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(unreachable(describe_connect_error(&e))),
        Err(_) => return Err(unreachable(format!("no answer within {} s", wait.as_secs()))),
    };
    Ok(Db { handle, client: Arc::new(tokio::sync::Mutex::new(client)), lost })
}

/// Drives the connection until it ends; marks the store lost when it ends with an error.
async fn watch<F>(connection: F, lost: Arc<AtomicBool>)
where
    F: Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "state store connection ended");
        lost.store(true, Ordering::SeqCst);
    }
}

/// The connection error as a user reads it, with what to check.
fn describe_connect_error(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => error_chain(e),
    };
    if let Some(db) = e.as_db_error() {
        if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD {
            return format!("{text} (check the password in the state URL)");
        }
        if db.code() == &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME {
            return format!("{text} (create the database, then run `ferry state init`)");
        }
    }
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("NotValidForName") {
        return format!(
            "{text} (the server's certificate is not trusted: check sslrootcert, and that the certificate names the host)"
        );
    }
    text
}

/// The connection settings (libpq's names, see [`StateUrl`]).
fn client_config(url: &StateUrl) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    if url.host.starts_with('/') {
        config.host_path(&url.host);
    } else {
        config.host(&url.host);
    }
    config
        .port(url.port)
        .user(&url.user)
        .dbname(&url.dbname)
        .application_name(url.application_name.as_deref().unwrap_or("ferry"))
        .connect_timeout(Duration::from_secs(url.connect_timeout.unwrap_or(10)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .ssl_mode(match url.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(password) = &url.password {
        config.password(password.expose());
    }
    config
}

/// The TLS connector for the URL's `sslmode` (`None`: plain TCP).
fn tls_connector(url: &StateUrl) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = || -> Result<rustls::RootCertStore, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &url.sslrootcert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let bad = |e: String| format!("sslrootcert {}: {e}", path.display());
                let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate in it".into()));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        Ok(roots)
    };
    let config = match url.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::VerifyFull => builder.with_root_certificates(roots()?).with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots()?), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(tls::ChainOnly(inner)))
                .with_no_client_auth()
        }
        // libpq's `prefer` and `require` encrypt without checking who answers.
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::Unchecked(provider)))
            .with_no_client_auth(),
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// Certificate checks for libpq's weaker `sslmode`s; `verify-full` uses rustls's own.
mod tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// `verify-ca`: the chain must reach the root certificate; any host name is accepted.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<rustls::client::WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                | Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// `require` / `prefer`: encryption only, as libpq does; the signatures are still checked
    /// against the presented certificate.
    #[derive(Debug)]
    pub struct Unchecked(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for Unchecked {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
