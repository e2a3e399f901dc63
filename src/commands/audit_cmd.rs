//! `ferry audit verify` and `ferry audit bench`.

use std::time::Instant;

use super::audit_log;
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
            let path = path.clone().unwrap_or_else(|| log.path().to_path_buf());
            let result = audit::verify(&path)?;
            if output == OutputFormat::Json {
                output::print_json(
                    &serde_json::json!({ "schema": 1, "type": "verify", "log": path, "result": &result }),
                )?;
            } else {
                for line in &result.torn_lines {
                    eprintln!(
                        "warning: {}:{line}: torn record (a crash during a write); the chain continues past it",
                        path.display()
                    );
                }
                match &result.broken {
                    None => output::print(&format!(
                        "{}: ok, {} records, chain intact\n",
                        path.display(),
                        result.records
                    ))?,
                    Some((line, problem)) => {
                        output::print(&format!("{}:{line}: BROKEN: {problem}\n", path.display()))?
                    }
                }
            }
            Ok(if result.broken.is_some() { 1 } else { 0 })
        }
        Audit::Bench { records, log: path } => {
            let log = match path {
                Some(p) => log.with_file(p),
                None => log,
            };
            let mut times = Vec::with_capacity(*records);
            for i in 0..*records {
                let started = Instant::now();
                log.append(Entry {
                    run: "bench".into(),
                    command: "audit bench".into(),
                    ..records::entry(records::Kind::Bench, &serde_json::json!({ "n": i }))
                })?;
                times.push(started.elapsed());
            }
            times.sort();
            let pick = |q: f64| {
                times.get(((times.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            };
            output::print(&format!(
                "{records} appends to {}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms (fsync included)\n",
                log.path().display(),
                pick(0.5),
                pick(0.9),
                pick(1.0)
            ))?;
            Ok(0)
        }
    }
}
