//! Writes a valid, chained audit log of N records for benchmarks (`scripts/bench-state`), fast.
//!
//! A real log of a million records takes hours to build with `ferry audit bench` (one fsync per
//! line) and is all `bench` records, which `history --app --env` never selects. This writes what
//! deploys write instead: `run_started`, one `target_outcome` per target and `run_finished` with
//! the deployment's record, for several apps across several environments, each run three to
//! five hosts, sealed with the same [`ferry::audit::seal`] as every store, so `ferry audit verify`
//! and `ferry state push` accept it. The file is written once through a buffer and synced at the
//! end (no fsync per line: the log is rebuilt if the machine crashes mid-seed).
//!
//!   cargo run --release --example seed_audit -- N OUT [--copy AUDIT.tsv RUNS.tsv]
//!
//! With `--copy`, it also writes the same records as the rows of the shared store's tables
//! (`ferry_audit`'s seq, time_ms and line, from which the rest is generated, and `ferry_runs`)
//! in PostgreSQL's COPY text format, for seeding a database when
//! `ferry state push` is too slow for the size: those rows are native records (no `origin`),
//! sealed exactly as the store seals them, so the database's `audit verify` accepts them too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ferry::audit::{Actor, Entry, Record, seal};
use ferry::deployments::{Recorded, TargetRecord};
use ferry::docker::Action;
use ferry::records::{self, Kind, RunFinished, RunStarted, TargetOutcome};
use ferry::report::Status;

/// Apps deployed in the seeded log.
const APPS: [&str; 8] = ["web", "api", "worker", "billing", "search", "auth", "cron", "gateway"];
/// Environments each app is deployed to.
const ENVIRONMENTS: [&str; 4] = ["dev", "staging", "prod", "prod-eu"];
/// The first record's time: 2025-01-01T00:00:00Z; runs are a minute apart.
const START_MS: i64 = 1_735_689_600_000;

/// Where the seeded records go.
struct Sinks {
    log: BufWriter<File>,
    copy: Option<(BufWriter<File>, BufWriter<File>)>,
}

fn main() -> ExitCode {
    match seed() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("seed_audit: {message}");
            ExitCode::from(2)
        }
    }
}

fn seed() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: seed_audit N OUT [--copy AUDIT.tsv RUNS.tsv]";
    let (Some(n), Some(out)) = (args.first(), args.get(1)) else { return Err(usage.into()) };
    let n: u64 = n.parse().map_err(|_| format!("N is a count of records (got {n:?})\n{usage}"))?;
    let create = |path: &str| {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        File::create(&path)
            .map(|f| BufWriter::with_capacity(1 << 20, f))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let copy = match args.get(2).map(String::as_str) {
        None => None,
        Some("--copy") => match (args.get(3), args.get(4)) {
            (Some(audit), Some(runs)) => Some((create(audit)?, create(runs)?)),
            _ => return Err(usage.into()),
        },
        Some(other) => return Err(format!("unknown argument {other:?}\n{usage}")),
    };
    let mut sinks = Sinks { log: create(out)?, copy };
    let mut head: Option<(u64, String)> = None;
    let mut written = 0u64;
    let mut run_no = 0u64;
    // Whole runs while they fit; the last one is cut short (a run killed mid-way reads as
    // interrupted, as a real log can hold).
    while written < n {
        for entry in run(run_no) {
            if written == n {
                break;
            }
            let time = ferry::time::format_ms(
                START_MS + i64::try_from(run_no * 60_000 + written % 7 * 900).unwrap_or(0),
            );
            let record = seal(
                head.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                time,
                uuid::Uuid::now_v7().to_string(),
                actor(run_no),
                entry,
                None,
            );
            write(&mut sinks, &record)?;
            head = Some((record.seq, record.hash));
            written += 1;
        }
        run_no += 1;
    }
    let io = |e: std::io::Error| format!("{out}: {e}");
    let file = sinks.log.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    if let Some((mut audit, mut runs)) = sinks.copy {
        audit.flush().map_err(|e| format!("COPY rows: {e}"))?;
        runs.flush().map_err(|e| format!("COPY rows: {e}"))?;
    }
    println!("{out}: {written} records, {run_no} runs");
    Ok(())
}

/// The runner that did run `run_no`: a few CI jobs and two operators.
fn actor(run_no: u64) -> Actor {
    match run_no % 5 {
        0 => Actor { user: "alice".into(), host: "laptop-alice".into(), via: "terminal".into(), job: None },
        1 => Actor { user: "bob".into(), host: "laptop-bob".into(), via: "terminal".into(), job: None },
        _ => Actor {
            user: "runner".into(),
            host: format!("ci-runner-{}", run_no % 17),
            via: "github-actions".into(),
            job: Some(format!("acme/platform run {}", 100_000 + run_no)),
        },
    }
}

/// The records of deploy run `run_no`: started, one outcome per target, finished.
fn run(run_no: u64) -> Vec<Entry> {
    let app = APPS[(run_no % APPS.len() as u64) as usize];
    let environment = ENVIRONMENTS[(run_no / APPS.len() as u64 % ENVIRONMENTS.len() as u64) as usize];
    let hosts = 3 + (run_no % 3) as usize;
    let version = format!("1.{}.{}", run_no / 1000, run_no % 1000);
    let digest =
        format!("sha256:{:064x}", u128::from(run_no).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    let image = format!("registry.example.com/acme/{app}@{digest}");
    let failed_target = run_no.is_multiple_of(23).then_some(hosts - 1);
    let base = Entry {
        run: uuid::Uuid::now_v7().to_string(),
        command: if run_no / 32 % 4 == 3 { "promote" } else { "deploy" }.into(),
        app: Some(app.into()),
        environment: Some(environment.into()),
        version: Some(version.clone()),
        digest: Some(digest.clone()),
        ..Entry::default()
    };
    let targets: Vec<String> = (0..hosts).map(|h| format!("{environment}-{app}-{h}")).collect();
    let container = format!("{app}-{environment}");
    let argv = |target: &str| {
        vec![
            "docker".into(),
            "run".into(),
            "-d".into(),
            "--name".into(),
            container.clone(),
            "--restart".into(),
            "unless-stopped".into(),
            "-p".into(),
            "8080:80".into(),
            "-e".into(),
            format!("TARGET={target}"),
            image.clone(),
        ]
    };
    let mut entries = vec![Entry {
        targets: targets.clone(),
        ..with(
            &base,
            Kind::RunStarted,
            &RunStarted {
                image: Some(image.clone()),
                force: Some(false),
                notes: Some(serde_json::json!({ "lifecycle": "allowed" })),
                ..RunStarted::default()
            },
        )
    }];
    let mut recorded = BTreeMap::new();
    for (h, target) in targets.iter().enumerate() {
        let failed = failed_target == Some(h);
        let status = if failed { Status::Failed } else { Status::Ok };
        let action = if failed { Action::Restored } else { Action::Replaced };
        entries.push(Entry {
            targets: vec![target.clone()],
            ..with(
                &base,
                Kind::TargetOutcome,
                &TargetOutcome {
                    status,
                    exit_code: Some(u32::from(failed)),
                    signal: None,
                    error: failed.then(|| "health check failed: container exited (1)".into()),
                    ms: 2_000 + run_no % 900,
                    tail: vec![format!("{version}: Pulling from acme/{app}"), format!("Digest: {digest}")],
                    action: Some(action),
                    container: None,
                    logs: failed.then(|| vec!["panic: cannot reach the database".into()]),
                },
            )
        });
        recorded.insert(
            target.clone(),
            TargetRecord {
                container: container.clone(),
                config_hash: format!("{:016x}", run_no.wrapping_mul(31).wrapping_add(h as u64)),
                argv: argv(target),
                secrets: vec!["DATABASE_URL".into()],
                status,
                action: Some(action),
            },
        );
    }
    let finished = RunFinished {
        ok: hosts - usize::from(failed_target.is_some()),
        failed: usize::from(failed_target.is_some()),
        ms: Some(5_000 + run_no % 4_000),
        stopped: failed_target.map(|_| "max_failures reached".into()),
        deployment: Some(Recorded {
            image,
            succeeded: failed_target.is_none(),
            rollback_to: None,
            targets: recorded,
        }),
        ..RunFinished::default()
    };
    entries.push(Entry { targets, ..with(&base, Kind::RunFinished, &finished) });
    entries
}

/// `base` as a record of `kind` with `detail`.
fn with(base: &Entry, kind: Kind, detail: &impl serde::Serialize) -> Entry {
    let typed = records::entry(kind, detail);
    Entry { kind: typed.kind, detail: typed.detail, ..base.clone() }
}

/// Writes `record` to the log and, with `--copy`, as table rows.
fn write(sinks: &mut Sinks, record: &Record) -> Result<(), String> {
    let line = serde_json::to_string(record).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    sinks.log.write_all(line.as_bytes()).map_err(io)?;
    sinks.log.write_all(b"\n").map_err(io)?;
    if let Some((audit, runs)) = &mut sinks.copy {
        let e = &record.entry;
        let time_ms = ferry::time::parse_ms(&record.time).unwrap_or(0);
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "\\N".to_string(), copy_text);
        // seq, time_ms, line (the other columns are generated from the line)
        writeln!(audit, "{}\t{}\t{}", record.seq, time_ms, copy_text(&line)).map_err(io)?;
        if e.kind == Kind::RunStarted.as_str() {
            // run, first_seq, time_ms, app, environment
            writeln!(
                runs,
                "{}\t{}\t{}\t{}\t{}",
                copy_text(&e.run),
                record.seq,
                time_ms,
                opt(&e.app),
                opt(&e.environment)
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// `text` escaped for COPY's text format (backslash, tab, newline, carriage return).
fn copy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}
