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
use crate::deployments::{Change, Deployment};
use crate::lock::{LockError, LockInfo};

/// The schema this build of ferry makes (`ferry state init`).
pub const SCHEMA_VERSION: i32 = 2;

/// The oldest schema this build still reads and writes: version 2 only adds an index, so a
/// store made by an older ferry works as it is (`history --run PREFIX` reads the runs table
/// whole there) until `ferry state init` upgrades it.
const OLDEST_USABLE_SCHEMA: i32 = 1;

/// The migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE ferry_audit (
    seq bigint PRIMARY KEY,
    time_ms bigint NOT NULL,
    written timestamptz NOT NULL DEFAULT now(),
    line text NOT NULL,
    id text NOT NULL UNIQUE GENERATED ALWAYS AS ((line::jsonb)->>'id') STORED,
    run text NOT NULL GENERATED ALWAYS AS ((line::jsonb)->>'run') STORED,
    kind text NOT NULL GENERATED ALWAYS AS ((line::jsonb)->>'kind') STORED,
    command text NOT NULL GENERATED ALWAYS AS ((line::jsonb)->>'command') STORED,
    app text GENERATED ALWAYS AS ((line::jsonb)->>'app') STORED,
    environment text GENERATED ALWAYS AS ((line::jsonb)->>'environment') STORED,
    origin text GENERATED ALWAYS AS ((line::jsonb)->'origin'->>'via') STORED,
    imported_hash text UNIQUE GENERATED ALWAYS AS (
        CASE WHEN (line::jsonb)->'origin'->>'via' = 'imported' THEN (line::jsonb)->'origin'->>'hash' END
    ) STORED,
    prev text NOT NULL GENERATED ALWAYS AS ((line::jsonb)->>'prev') STORED,
    hash text NOT NULL GENERATED ALWAYS AS ((line::jsonb)->>'hash') STORED
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
",
    r"
CREATE INDEX ferry_runs_run_prefix ON ferry_runs (run text_pattern_ops);
",
];

/// The byte-wise range `[low, high)` of the run ids that start with `prefix`, for a prefix of
/// the characters run ids are made of (lowercase hex and `-`, ASCII): `high` is `prefix` with
/// its last byte one higher. `None` for anything else (then no index helps, and none is needed:
/// no run id matches it).
fn run_range(prefix: &str) -> Option<(String, String)> {
    let last = *prefix.as_bytes().last()?;
    if !prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-') {
        return None;
    }
    let high = format!("{}{}", &prefix[..prefix.len() - 1], char::from(last + 1));
    Some((prefix.to_string(), high))
}

/// The advisory lock that serializes appends (and migrations): "ferry" in ASCII.
const CHAIN_LOCK: i64 = 0x0066_6572_7279;

/// How long one database call may take before the store counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The spool of records written while the database was unreachable.
const SPOOL_FILE: &str = "spool.jsonl";

/// A chain's last record: seq and hash.
type Head = (u64, String);

/// What the runtime thread answers for one call.
type Answer<T> = Result<T, Failure>;

/// Why a database call failed.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error (permissions, a constraint, missing schema).
    Database(String),
    /// The connection is gone or never came (refused, reset, TLS, timeout, the server shutting
    /// down).
    Lost(String),
    /// The chain's last row is not a record ferry wrote: nothing is chained after it.
    Broken(i64),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Database(message) | Failure::Lost(message) => message.clone(),
            Failure::Broken(seq) => format!("the chain's last row (seq {seq}) is not a record ferry wrote"),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            // Class 08 (connection exception) and 57P01-03 (the server shutting down or
            // restarting) end the session: the store is lost, the run's records spool.
            Some(db) if connection_ended(db.code().code()) => {
                Failure::Lost(format!("{}: {} ({})", db.severity(), db.message(), db.code().code()))
            }
            Some(db) => {
                Failure::Database(format!("{}: {} ({})", db.severity(), db.message(), db.code().code()))
            }
            None => Failure::Lost(error_chain(&e)),
        }
    }
}

/// A transaction at READ COMMITTED whatever the database's default: each statement after the
/// advisory lock must see the head as it is once the lock is ours, not a snapshot from before.
async fn read_committed(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::ReadCommitted).start().await
}

/// SQLSTATEs after which the session is gone.
fn connection_ended(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
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

/// A call on its way: [`Call::wait`] for the answer.
struct Call<T> {
    rx: std::sync::mpsc::Receiver<Answer<T>>,
    lost: Arc<AtomicBool>,
}

impl<T> Call<T> {
    /// The answer (a call that gives none within [`CALL_TIMEOUT`] counts as lost).
    fn wait(self) -> Answer<T> {
        let answer = self
            .rx
            .recv_timeout(CALL_TIMEOUT)
            .unwrap_or_else(|_| Err(Failure::Lost(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))));
        if matches!(answer, Err(Failure::Lost(_))) {
            self.lost.store(true, Ordering::SeqCst);
        }
        answer
    }
}

impl Db {
    /// Starts `work` with the client; the caller goes on until it waits for the answer.
    fn start<T, F, Fut>(&self, work: F) -> Call<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<tokio::sync::Mutex<Client>>) -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.lost.load(Ordering::SeqCst) {
            let _ = tx.send(Err(Failure::Lost(
                "the connection to the state store was lost earlier in this run".into(),
            )));
        } else {
            let future = work(Arc::clone(&self.client));
            self.handle.spawn(async move {
                let _ = tx.send(future.await);
            });
        }
        Call { rx, lost: Arc::clone(&self.lost) }
    }

    /// Runs `work` with the client and waits for its answer.
    fn call<T, F, Fut>(&self, work: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<tokio::sync::Mutex<Client>>) -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        self.start(work).wait()
    }
}

/// Rows a verify page holds.
const PAGE: i64 = 20_000;

/// The query for the page of rows after `after`.
fn page(after: i64) -> impl FnOnce(Arc<tokio::sync::Mutex<Client>>) -> PageFuture {
    move |client| {
        Box::pin(async move {
            let client = client.lock().await;
            let rows = client
                .query(
                    "SELECT seq, line FROM ferry_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &PAGE],
                )
                .await?;
            Ok(rows.into_iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect())
        })
    }
}

/// A page of rows being fetched.
type PageFuture = std::pin::Pin<Box<dyn Future<Output = Result<Vec<(i64, String)>, Failure>> + Send>>;

/// Checks each row's own bytes ([`audit::check_record`]) on every core, keeping the order.
fn check_in_parallel(rows: Vec<(i64, String)>) -> Vec<(i64, Result<Record, String>)> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).clamp(1, 8);
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(seq, line)| (*seq, audit::check_record(line.as_bytes())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|_| vec![(0, Err("a verify worker failed".to_string()))]))
            .collect()
    })
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
    /// The last record this runner saw chained.
    witness: Witness,
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
    /// The current schema, for commands that report on the chain rather than act on it
    /// (`audit verify`, `state status`): a record this runner saw that is gone is theirs to
    /// report, not a reason to refuse.
    Inspect,
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
            witness: Witness::new(state_dir),
        };
        match schema {
            Schema::Migrate => store.migrate()?,
            Schema::Current | Schema::Inspect => store.check_schema()?,
        }
        let mut store = store;
        store.witness.store = store.store_id()?;
        if schema != Schema::Inspect {
            store.check_witness()?;
        }
        store.pushed = store.push_spool()?;
        Ok(store)
    }

    /// The database's own random id (made once): tells a recreated database at the same
    /// address from the one a runner saw before.
    fn store_id(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| self.failed(Failure::Database(e.to_string())))?;
        let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            client
                .execute(
                    "INSERT INTO ferry_settings (name, value) VALUES ('store_id', $1) ON CONFLICT (name) DO NOTHING",
                    &[&fresh],
                )
                .await?;
            Ok(client.query_one("SELECT value FROM ferry_settings WHERE name = 'store_id'", &[]).await?.get(0))
        });
        answer.map_err(|f| self.failed(f))
    }

    /// The record this runner saw last must still be in the chain, unchanged: a chain whose
    /// end a superuser cut off (or rewrote, hashes and all) still walks, but not past this.
    fn check_witness(&self) -> Result<(), StoreError> {
        let Some((seq, hash)) = self.witness.last_seen() else { return Ok(()) };
        let at = i64::try_from(seq).unwrap_or(i64::MAX);
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let row = client.query_opt("SELECT hash FROM ferry_audit WHERE seq = $1", &[&at]).await?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        });
        let found = answer.map_err(|f| self.failed(f))?;
        if found.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        Err(StoreError::Broken {
            endpoint: self.endpoint(),
            seq: at,
            problem: self.witness.problem(seq, found.is_some()),
        })
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
            Some(v) if (OLDEST_USABLE_SCHEMA..=SCHEMA_VERSION).contains(&v) => Ok(()),
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
            let tx = read_committed(&mut client).await?;
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

    /// Appends `items` in one transaction, in order; returns the seqs given. Items already on
    /// record (a spooled record by id, an imported one by its original hash) are skipped, so a
    /// push cut short and repeated adds each record once.
    fn chain(&self, items: Vec<Pending>) -> Answer<Vec<u64>> {
        let (seqs, head) = self.chain_rows(items)?;
        if let Some((seq, hash)) = head {
            self.witness.saw(seq, hash);
        }
        Ok(seqs)
    }

    /// [`PgStore::chain`]'s transaction; also returns the new head.
    fn chain_rows(&self, items: Vec<Pending>) -> Answer<(Vec<u64>, Option<Head>)> {
        self.db.call(|client| async move {
            let mut client = client.lock().await;
            let tx = read_committed(&mut client).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK]).await?;
            // The head as its own bytes say (checked), never a column: a record chained after a
            // forged hash would make the next honest record look like the break.
            let head = tx.query_opt("SELECT seq, line FROM ferry_audit ORDER BY seq DESC LIMIT 1", &[]).await?;
            let mut head: Option<(u64, String)> = match head {
                None => None,
                Some(row) => {
                    let seq: i64 = row.get(0);
                    let line: String = row.get(1);
                    match audit::check_record(line.as_bytes()) {
                        Ok(record) if i64::try_from(record.seq).ok() == Some(seq) => Some((record.seq, record.hash)),
                        Ok(_) | Err(_) => return Err(Failure::Broken(seq)),
                    }
                }
            };
            let ids: Vec<String> = items.iter().filter_map(|i| i.skip_if_id.clone()).collect();
            let imported: Vec<String> = items.iter().filter_map(Pending::imported_hash).collect();
            let mut known = std::collections::HashSet::new();
            for (column, keys) in [("id", &ids), ("imported_hash", &imported)] {
                for chunk in keys.chunks(BATCH) {
                    let sql = format!("SELECT {column} FROM ferry_audit WHERE {column} = ANY($1)");
                    for row in tx.query(&sql, &[&chunk]).await? {
                        known.insert(row.get::<_, String>(0));
                    }
                }
            }
            let mut rows = Rows::default();
            for item in items {
                let seen = item.skip_if_id.as_ref().is_some_and(|id| known.contains(id))
                    || item.imported_hash().is_some_and(|hash| known.contains(&hash));
                if seen {
                    continue;
                }
                let record = audit::seal(
                    head.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                    item.time,
                    item.id,
                    item.actor,
                    item.entry,
                    item.origin,
                );
                rows.push(&record);
                head = Some((record.seq, record.hash));
            }
            // The other columns are generated from the line: no column can say other than its
            // record does, even when edited by hand.
            let insert = "INSERT INTO ferry_audit (seq, time_ms, line) \
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])";
            // A run is listed under its first record (the history's index).
            let run_heads = "INSERT INTO ferry_runs (run, first_seq, time_ms, app, environment) \
                SELECT DISTINCT ON (run) run, seq, time_ms, app, environment \
                FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) AS u(run, seq, time_ms, app, environment) \
                ORDER BY run, seq ON CONFLICT (run) DO NOTHING";
            let mut at = 0;
            while at < rows.seq.len() {
                let to = (at + BATCH).min(rows.seq.len());
                let r = at..to;
                tx.execute(insert, &[&&rows.seq[r.clone()], &&rows.time_ms[r.clone()], &&rows.line[r.clone()]])
                    .await?;
                tx.execute(
                    run_heads,
                    &[
                        &&rows.run[r.clone()],
                        &&rows.seq[r.clone()],
                        &&rows.time_ms[r.clone()],
                        &&rows.app[r.clone()],
                        &&rows.environment[r.clone()],
                    ],
                )
                .await?;
                at = to;
            }
            tx.commit().await?;
            let seqs = rows.seq.iter().map(|&s| u64::try_from(s).unwrap_or(0)).collect();
            Ok((seqs, head.filter(|_| !rows.seq.is_empty())))
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
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).open(&self.spool) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        // Two commands starting at once on one runner: one pushes, the other waits for it. The
        // file is read through this handle and emptied, never removed: a writer that opened it
        // meanwhile appends to the same file, after this push.
        file.lock().map_err(io)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
        if text.is_empty() {
            return Ok(0);
        }
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
                Err(e) => eprintln!(
                    "warning: {}: skipping a line cut short by a crash ({e}); it never reached the store",
                    crate::diagnostic::display_path(&self.spool).display()
                ),
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
        if pushed > 0 {
            tracing::info!(records = pushed, "pushed delayed records from the local spool");
        }
        Ok(pushed)
    }

    /// Runs a query for whole records and checks each row before anything uses it.
    fn records(&self, sql: String, params: Params) -> Result<Vec<Record>, StoreError> {
        let sql = format!(
            "SELECT a.seq, a.line, a.run, a.kind, a.command, a.app, a.environment, \
               (SELECT b.line FROM ferry_audit b WHERE b.seq = a.seq - 1), \
               (SELECT n.line FROM ferry_audit n WHERE n.seq = a.seq + 1), \
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
        let changes = self.changes_where(app, environment, &["deploy", "rollback", "promote"])?;
        Ok(crate::deployments::deployed(&changes))
    }

    /// The deployments and removals of `app` in `environment` whose command is one of
    /// `commands`, oldest first (served by the `(app, environment, kind, seq)` index).
    fn changes_where(
        &self,
        app: &str,
        environment: &str,
        commands: &[&'static str],
    ) -> Result<Vec<Change>, StoreError> {
        // What rollback, promote and the lifecycle act on must not be missing a newer record:
        // a chain of N records holds seqs 1..N exactly (one indexed count, not a walk).
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            let row =
                client.query_one("SELECT count(*), coalesce(max(seq), 0) FROM ferry_audit", &[]).await?;
            Ok((row.get::<_, i64>(0), row.get::<_, i64>(1)))
        });
        let (count, max) = answer.map_err(|f| self.failed(f))?;
        if count != max {
            return Err(StoreError::Broken {
                endpoint: self.endpoint(),
                seq: max,
                problem: format!(
                    "the chain holds {count} records but its last seq is {max}: records were deleted"
                ),
            });
        }
        // The commands are ferry's own constant words, never user input.
        let listed: Vec<String> = commands.iter().map(|c| format!("'{c}'")).collect();
        let records = self.records(
            format!(
                "WHERE a.app = $1 AND a.environment = $2 AND a.kind = 'run_finished' \
                 AND a.command IN ({})",
                listed.join(", ")
            ),
            Params(vec![Param::Text(app.into()), Param::Text(environment.into())]),
        )?;
        Ok(records
            .into_iter()
            .filter_map(|r| crate::deployments::change_from_record(r, app, environment))
            .collect())
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

/// Rows per INSERT when many records are chained at once (`ferry state push`).
const BATCH: usize = 5000;

/// Records as columns, for one `unnest` insert (the table generates the rest from the line).
#[derive(Default)]
struct Rows {
    seq: Vec<i64>,
    time_ms: Vec<i64>,
    run: Vec<String>,
    app: Vec<Option<String>>,
    environment: Vec<Option<String>>,
    line: Vec<String>,
}

impl Rows {
    fn push(&mut self, record: &Record) {
        let e = &record.entry;
        self.seq.push(i64::try_from(record.seq).unwrap_or(i64::MAX));
        self.time_ms.push(crate::time::parse_ms(&record.time).unwrap_or(0));
        self.run.push(e.run.clone());
        self.app.push(e.app.clone());
        self.environment.push(e.environment.clone());
        self.line.push(String::from_utf8(serde_json::to_vec(record).unwrap_or_default()).unwrap_or_default());
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

impl Pending {
    /// The original hash of an imported record.
    fn imported_hash(&self) -> Option<String> {
        self.origin.as_ref().filter(|o| o.via == "imported").and_then(|o| o.hash.clone())
    }
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
    /// The line of the row before it.
    before: Option<String>,
    /// The line of the row after it.
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
        // The neighbours are checked by their own bytes too: a forged record whose next row's
        // columns were edited to match still fails here.
        let neighbour = |line: &str| audit::check_record(line.as_bytes()).ok();
        let linked_before = if record.seq == 1 {
            record.prev == audit::GENESIS
        } else {
            self.before
                .as_deref()
                .and_then(neighbour)
                .is_some_and(|b| b.seq + 1 == record.seq && b.hash == record.prev)
        };
        let linked_after = match self.after.as_deref() {
            Some(line) => neighbour(line).is_some_and(|n| n.seq == record.seq + 1 && n.prev == record.hash),
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
    let (message, by_hand) = from_lease_message(row.get(2));
    LockInfo {
        holder: row.get(0),
        run: row.get(1),
        message,
        since_ms: row.get(3),
        expires_ms: row.get(4),
        deadline_s: None,
        fence: u64::try_from(row.get::<_, i64>(5)).ok(),
        by_hand,
    }
}

/// Marks a lease taken by hand (`ferry lock acquire`) in its message column: the lease table
/// has no column of its own for it, and older runners read the mark as part of the message.
const BY_HAND: &str = "[by hand] ";

/// The message column for `info`'s lease.
fn lease_message(info: &LockInfo) -> String {
    if info.by_hand { format!("{BY_HAND}{}", info.message) } else { info.message.clone() }
}

/// The message and whether the lease was taken by hand, from its message column.
fn from_lease_message(column: String) -> (String, bool) {
    match column.strip_prefix(BY_HAND) {
        Some(message) => (message.to_string(), true),
        None => (column, false),
    }
}

/// Appends one line to the spool and syncs it.
fn write_spool(path: &Path, item: &Spooled) -> Result<(), StoreError> {
    let io = |source| StoreError::Spool { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(options.create(true).append(true).read(true), 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.lock().map_err(io)?;
    // A line cut by a crash must not swallow this one: start on a line of its own.
    let torn = {
        use std::io::{Read, Seek, SeekFrom};
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut last = [0u8; 1];
        len > 0 && {
            file.seek(SeekFrom::Start(len - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            last[0] != b'\n'
        }
    };
    let mut line = if torn { b"\n".to_vec() } else { Vec::new() };
    line.extend(serde_json::to_vec(item).unwrap_or_default());
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
                    eprintln!(
                        "warning: the state store {} is unreachable ({why}): this command's records go to the local spool {}",
                        self.endpoint(),
                        crate::diagnostic::display_path(&self.spool).display()
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

    fn changes(&self, app: &str, environment: &str) -> Result<Vec<Change>, StoreError> {
        self.changes_where(app, environment, &["deploy", "rollback", "promote", "remove"])
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
        if let Some(prefix) = &filter.run {
            // Not LIKE (whose `%` and `_` a prefix could hold), and not a range in the
            // database's collation (which may order `-` otherwise than bytes do).
            conditions.push(match run_range(prefix) {
                // Byte-wise bounds with the pattern operators, which `ferry_runs_run_prefix`
                // (text_pattern_ops) answers whatever the database's collation.
                Some((low, high)) => format!(
                    "run ~>=~ {} AND run ~<~ {}",
                    params.push(Param::Text(low)),
                    params.push(Param::Text(high))
                ),
                None => {
                    let prefix = params.push(Param::Text(prefix.clone()));
                    format!("left(run, char_length({prefix})) = {prefix}")
                }
            });
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
        let witness = self.witness.last_seen();
        let mut witnessed = false;
        // The next page is fetched while this one is checked, and a page's records are checked
        // on every core: verify is bound by JSON and SHA-256, not by the database.
        let mut next = self.db.start(page(0));
        loop {
            let rows = next.wait().map_err(|f| self.failed(f))?;
            let Some(last) = rows.last().map(|(seq, _)| *seq) else { break };
            next = self.db.start(page(last));
            for (seq, checked) in check_in_parallel(rows) {
                let line_no = usize::try_from(seq).unwrap_or(usize::MAX);
                let outcome = match checked {
                    Ok(record) if i64::try_from(record.seq).ok() != Some(seq) => {
                        chain.bad(line_no, format!("row seq {seq} holds record seq {}", record.seq))
                    }
                    Ok(record) => {
                        if let Some((seen, hash)) = &witness
                            && record.seq == *seen
                        {
                            if record.hash != *hash {
                                chain.bad(line_no, self.witness.problem(*seen, true));
                                return Ok(chain.verification);
                            }
                            witnessed = true;
                        }
                        chain.link(line_no, record)
                    }
                    Err(problem) => chain.bad(line_no, problem),
                };
                if matches!(outcome, audit::Checked::Broken) {
                    return Ok(chain.verification);
                }
            }
        }
        if let Some((seen, _)) = witness
            && !witnessed
        {
            let line_no = usize::try_from(seen).unwrap_or(usize::MAX);
            chain.bad(line_no, self.witness.problem(seen, false));
        } else if let Some((seq, hash)) = chain.head() {
            self.witness.saw(seq, hash.to_string());
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
            (environment.to_string(), info.holder.clone(), info.run.clone(), lease_message(info));
        let answer = self.db.call(|client| async move {
            let client = client.lock().await;
            // One statement: a free, expired or own lease is taken; a live one of another run
            // is left alone and the statement returns nothing. It also returns the row it
            // replaced, so taking over an expired lease is recorded with its holder.
            let taken = client
                .query_opt(
                    "WITH old AS (SELECT holder, run, message, (extract(epoch FROM since) * 1000)::bigint AS since_ms, \
                       (extract(epoch FROM expires) * 1000)::bigint AS expires_ms, fence \
                       FROM ferry_leases WHERE environment = $1) \
                     INSERT INTO ferry_leases AS l (environment, holder, run, message, since, expires, fence) \
                     VALUES ($1, $2, $3, $4, now(), now() + $5::float8 * interval '1 millisecond', nextval('ferry_fence')) \
                     ON CONFLICT (environment) DO UPDATE SET holder = EXCLUDED.holder, run = EXCLUDED.run, \
                       message = EXCLUDED.message, since = EXCLUDED.since, expires = EXCLUDED.expires, fence = EXCLUDED.fence \
                     WHERE l.expires < now() OR l.run = EXCLUDED.run \
                     RETURNING l.fence, (SELECT holder FROM old), (SELECT run FROM old), (SELECT message FROM old), \
                       (SELECT since_ms FROM old), (SELECT expires_ms FROM old), (SELECT fence FROM old)",
                    &[&env, &holder, &run, &message, &(ttl_ms as f64)],
                )
                .await?;
            if let Some(row) = taken {
                let fence = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                let previous = match (row.get::<_, Option<String>>(1), row.get::<_, Option<String>>(2)) {
                    (Some(holder), Some(old_run)) if old_run != run => {
                        let (message, by_hand) =
                            from_lease_message(row.get::<_, Option<String>>(3).unwrap_or_default());
                        Some(LockInfo {
                            holder,
                            run: old_run,
                            message,
                            since_ms: row.get::<_, Option<i64>>(4).unwrap_or(0),
                            expires_ms: row.get::<_, Option<i64>>(5).unwrap_or(0),
                            deadline_s: None,
                            fence: row.get::<_, Option<i64>>(6).and_then(|f| u64::try_from(f).ok()),
                            by_hand,
                        })
                    }
                    _ => None,
                };
                return Ok(Ok((fence, previous)));
            }
            let row = client
                .query_opt(
                    "SELECT holder, run, message, (extract(epoch FROM since) * 1000)::bigint, \
                       (extract(epoch FROM expires) * 1000)::bigint, fence FROM ferry_leases WHERE environment = $1",
                    &[&env],
                )
                .await?;
            Ok(Err(row.map(|r| lease_info(&r))))
        });
        match answer {
            Ok(Ok((fence, previous))) => Ok(Box::new(PgLease {
                db: self.db.clone(),
                environment: environment.to_string(),
                run: info.run.clone(),
                kept: AtomicBool::new(false),
                spool: self.spool.clone(),
                fence,
                previous,
            })),
            Ok(Err(holder)) => Err(LockError::Held {
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
        let pending = records
            .iter()
            .map(|r| Pending {
                id: uuid::Uuid::now_v7().to_string(),
                time: r.time.clone(),
                actor: r.actor.clone(),
                entry: r.entry.clone(),
                origin: Some(Origin { via: "imported".into(), seq: Some(r.seq), hash: Some(r.hash.clone()) }),
                skip_if_id: None,
            })
            .collect();
        // One transaction per batch: the chain's lock is never held long, and a push cut short
        // is finished by the next one (imported records are skipped by their original hash).
        let mut pending: Vec<Pending> = pending;
        let mut added = 0;
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(BATCH));
            added += self.chain(pending).map_err(|f| self.failed(f))?.len();
            pending = rest;
        }
        Ok(added)
    }
}

/// The last record this runner saw in the chain (`state-head.json` in the state folder), kept
/// per database: a runner that comes back finds out whether records it saw were deleted or
/// rewritten since. Written without fsync: losing it only weakens the check, never breaks one.
#[derive(Debug)]
struct Witness {
    path: PathBuf,
    /// The database's id (see [`PgStore::store_id`]).
    store: String,
}

/// What `state-head.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    store: String,
    seq: u64,
    hash: String,
}

impl Witness {
    fn new(state_dir: &Path) -> Witness {
        Witness { path: state_dir.join("state-head.json"), store: String::new() }
    }

    /// The last record seen in this database.
    fn last_seen(&self) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let seen: Seen = serde_json::from_str(&text).ok()?;
        (seen.store == self.store).then_some((seen.seq, seen.hash))
    }

    /// Remembers `seq` as seen (when it is later than what was seen).
    fn saw(&self, seq: u64, hash: String) {
        if self.last_seen().is_some_and(|(seen, _)| seen >= seq) {
            return;
        }
        let seen = Seen { store: self.store.clone(), seq, hash };
        let temporary = self.path.with_extension(format!("json.{}", std::process::id()));
        let written = std::fs::write(&temporary, serde_json::to_vec(&seen).unwrap_or_default())
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            tracing::debug!(error = %e, "cannot remember the chain head");
        }
    }

    /// Why a record this runner saw is not in the chain as it was.
    fn problem(&self, seq: u64, present: bool) -> String {
        let what = if present { "changed" } else { "gone" };
        format!(
            "this runner saw record seq {seq} in this database and it is {what}: records were deleted or rewritten since (if the database was restored from a backup on purpose, remove {})",
            crate::diagnostic::display_path(&self.path).display()
        )
    }
}

/// The environment's lease in the database; deleted when dropped (unless kept).
struct PgLease {
    db: Db,
    environment: String,
    run: String,
    kept: AtomicBool,
    spool: PathBuf,
    /// This acquisition's fencing number.
    fence: u64,
    /// The expired lease of another run this one replaced.
    previous: Option<LockInfo>,
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

    fn fence(&self) -> Option<u64> {
        Some(self.fence)
    }

    fn taken_over(&self) -> Option<LockInfo> {
        self.previous.clone()
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
            eprintln!(
                "warning: the lease of {} in the state store could not be released ({}); the next command that reaches the store releases it",
                self.environment,
                failure.message()
            );
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
            Some(path) => crate::tls::add_pem_file(&mut roots, path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_prefix_is_a_byte_range_and_anything_else_is_not() {
        assert_eq!(run_range("0193bbbb-0"), Some(("0193bbbb-0".into(), "0193bbbb-1".into())));
        assert_eq!(run_range("0193f"), Some(("0193f".into(), "0193g".into())));
        assert_eq!(run_range("0193-"), Some(("0193-".into(), "0193.".into())));
        for other in ["", "0193%", "0193_", "0193G", "é", "01 93"] {
            assert_eq!(run_range(other), None, "{other:?}");
        }
    }

    fn actor() -> Actor {
        Actor { user: "u".into(), host: "h".into(), via: "terminal".into(), job: None }
    }

    /// Three chained records as the database would hold them, and rows for the middle one.
    fn middle_row() -> (Vec<Record>, Row) {
        let mut records: Vec<Record> = Vec::new();
        for n in 0..3 {
            let entry = Entry {
                kind: "run_finished".into(),
                run: format!("r{n}"),
                command: "deploy".into(),
                app: Some("web".into()),
                environment: Some("prod".into()),
                ..Entry::default()
            };
            let prev = records.last().map(|r| (r.seq, r.hash.as_str()));
            records.push(audit::seal(
                prev,
                crate::time::now_rfc3339(),
                format!("id{n}"),
                actor(),
                entry,
                None,
            ));
        }
        let middle = &records[1];
        let row = Row {
            seq: 2,
            line: String::from_utf8(serde_json::to_vec(middle).unwrap()).unwrap(),
            run: "r1".into(),
            kind: "run_finished".into(),
            command: "deploy".into(),
            app: Some("web".into()),
            environment: Some("prod".into()),
            before: Some(String::from_utf8(serde_json::to_vec(&records[0]).unwrap()).unwrap()),
            after: Some(String::from_utf8(serde_json::to_vec(&records[2]).unwrap()).unwrap()),
            head: Some(3),
        };
        (records, row)
    }

    #[test]
    fn a_row_is_trusted_only_with_its_bytes_columns_and_links_intact() {
        let (records, row) = middle_row();
        assert_eq!(row.check().unwrap(), records[1]);

        let (_, mut edited) = middle_row();
        edited.line = edited.line.replace("\"prod\"", "\"staging\"");
        assert!(edited.check().unwrap_err().contains("modified"));

        let (_, mut moved) = middle_row();
        moved.environment = Some("staging".into());
        assert!(moved.check().unwrap_err().contains("columns"), "a row filed under another environment");

        let (_, mut orphan) = middle_row();
        orphan.before = None;
        assert!(orphan.check().unwrap_err().contains("neighbours"), "the row before it was deleted");

        let (_, mut rehashed_next) = middle_row();
        rehashed_next.after = rehashed_next.after.map(|l| l.replace("\"prev\":\"", "\"prev\":\"0"));
        assert!(
            rehashed_next.check().unwrap_err().contains("neighbours"),
            "the row after it no longer links"
        );

        // A forged record, re-hashed, with the next row's bytes unchanged: refused.
        let (records, mut forged) = middle_row();
        let mut fake = records[1].entry.clone();
        fake.version = Some("evil".into());
        let fake = audit::seal(
            Some((records[0].seq, &records[0].hash)),
            records[1].time.clone(),
            records[1].id.clone(),
            actor(),
            fake,
            None,
        );
        forged.line = String::from_utf8(serde_json::to_vec(&fake).unwrap()).unwrap();
        assert!(
            forged.check().unwrap_err().contains("neighbours"),
            "a re-hashed forgery breaks the next link"
        );

        let (_, mut cut_tail) = middle_row();
        cut_tail.after = None;
        assert!(cut_tail.check().is_err(), "rows after it were deleted but it is not the head");
    }

    proptest::proptest! {
        /// Whatever a database hands back, checking it never panics.
        #[test]
        fn checking_any_row_never_panics(
            line in proptest::prelude::any::<String>(),
            seq in proptest::prelude::any::<i64>(),
            before in proptest::option::of("[0-9a-f]{0,64}"),
            head in proptest::option::of(proptest::prelude::any::<i64>()),
        ) {
            let row = Row {
                seq,
                line,
                run: String::new(),
                kind: String::new(),
                command: String::new(),
                app: None,
                environment: None,
                before,
                after: None,
                head,
            };
            let _ = row.check();
        }

        /// Any spool line parses or is skipped, never panics.
        #[test]
        fn any_spool_line_is_read_or_skipped(line in proptest::prelude::any::<String>()) {
            let _ = serde_json::from_str::<Spooled>(&line);
        }
    }
}
