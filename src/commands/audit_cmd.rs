//! `ferry audit verify` and `ferry audit bench`.

use std::time::Instant;

use super::{audit_log, open_store, store};
use crate::audit::{self, Entry};
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat};
use crate::records;
use crate::request::Audit;

/// Runs `ferry audit …`. `verify` exits 0 for an intact chain (torn lines from crashes are
/// reported but do not break it) and 1 when a record was edited, deleted or moved.
pub fn run(inventory: &Inventory, args: &Audit, output: OutputFormat) -> Result<i32, Error> {
    let log = audit_log(inventory);
    match args {
        Audit::Verify { log: path } => {
            // Without --log: the inventory's store (the shared one's table, or the local file).
            // A file's break is named by line, a table's by seq.
            let (label, at, result) = match path {
                Some(path) => (path.display().to_string(), ":", audit::verify(path)?),
                None => {
                    let store = open_store(inventory, crate::store::postgres::Schema::Inspect)?;
                    let at = if store.is_shared() { ": seq " } else { ":" };
                    let label =
                        if store.is_shared() { store.describe() } else { log.path().display().to_string() };
                    (label, at, store.verify()?)
                }
            };
            if output == OutputFormat::Json {
                output::print_json(
                    &serde_json::json!({ "schema": 1, "type": "verify", "log": label, "result": &result }),
                )?;
            } else {
                for line in &result.torn_lines {
                    eprintln!(
                        "warning: {label}:{line}: torn record (a crash during a write); the chain continues past it"
                    );
                }
                match &result.broken {
                    None => output::print(&format!(
                        "{label}: ok, {}, chain intact\n",
                        output::count(result.records, "record")
                    ))?,
                    Some((line, problem)) => {
                        output::print(&format!("{label}{at}{line}: BROKEN: {problem}\n"))?
                    }
                }
            }
            Ok(if result.broken.is_some() { 1 } else { 0 })
        }
        Audit::Bench { records, log: path } => {
            // Without --log, a shared store is benchmarked through the store (one transaction
            // per append, as a run writes them); otherwise the file.
            let shared = match path {
                Some(_) => None,
                None => Some(store(inventory)?).filter(|s| s.is_shared()),
            };
            let log = match path {
                Some(p) => log.with_file(p),
                None => log,
            };
            let target = shared.as_ref().map_or_else(|| log.path().display().to_string(), |s| s.describe());
            let mut times = Vec::with_capacity(*records);
            for i in 0..*records {
                let entry = Entry {
                    run: "bench".into(),
                    command: "audit bench".into(),
                    ..records::entry(records::Kind::Bench, &serde_json::json!({ "n": i }))
                };
                let started = Instant::now();
                match &shared {
                    Some(store) => {
                        store.append(&entry)?;
                    }
                    None => {
                        log.append(entry)?;
                    }
                }
                times.push(started.elapsed());
            }
            times.sort();
            let pick = |q: f64| {
                times.get(((times.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            };
            output::print(&format!(
                "{records} appends to {target}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms (commit or fsync included)\n",
                pick(0.5),
                pick(0.9),
                pick(1.0)
            ))?;
            Ok(0)
        }
    }
}
