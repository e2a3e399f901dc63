//! `ferry history`: the audit log as runs, newest first.
//!
//! Records are grouped by run id. A run with a `run_started` but no `run_finished` record was
//! killed (a crash, `kill -9`, a lost machine) and is shown as `interrupted`.

use std::collections::HashMap;

use serde::Serialize;

use super::store;
use crate::audit::Record;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::records::{Kind, RunFinished};
use crate::request::History;
use crate::store::HistoryFilter;

/// One run as history shows it.
#[derive(Debug, Serialize)]
struct Run<'a> {
    run: &'a str,
    started: &'a str,
    actor: String,
    command: &'a str,
    app: Option<&'a str>,
    environment: Option<&'a str>,
    version: Option<&'a str>,
    targets: usize,
    /// `ok`, `failed`, `interrupted`, or the record kind for single-record actions.
    outcome: String,
    /// Short facts: the command line, counts.
    summary: String,
    /// Records of the run that reached a shared store late, from a runner's local spool.
    #[serde(skip_serializing_if = "is_zero")]
    delayed: usize,
    /// The run was moved in from a local log (`ferry state push`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    imported: bool,
}

/// Serde's test for an omitted count.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Runs `ferry history`.
pub fn run(inventory: &Inventory, args: &History, output: OutputFormat) -> Result<i32, Error> {
    let filter = HistoryFilter {
        app: args.app.clone(),
        environment: args.environment.clone(),
        since_ms: args
            .since
            .map(|d| crate::time::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        limit: args.limit,
    };
    let records = store(inventory)?.history(&filter)?;
    let selected: Vec<Run<'_>> = group(&records).into_iter().rev().collect();
    if output == OutputFormat::Json {
        output::print_json(&serde_json::json!({ "schema": 1, "type": "history", "runs": selected }))?;
        return Ok(0);
    }
    if output == OutputFormat::Plain {
        // Whole ids and times, one run per line, no header: for scripts and `grep`.
        let lines: String = selected
            .iter()
            .map(|r| {
                let cells = [
                    r.started.to_string(),
                    r.run.to_string(),
                    r.actor.clone(),
                    r.command.to_string(),
                    r.app.unwrap_or("-").to_string(),
                    r.environment.unwrap_or("-").to_string(),
                    r.version.unwrap_or("-").to_string(),
                    r.targets.to_string(),
                    r.outcome.clone(),
                    r.summary.clone(),
                ];
                cells.map(|c| c.replace(['\t', '\n'], " ")).join("\t") + "\n"
            })
            .collect();
        output::print(&lines)?;
        return Ok(0);
    }
    // Ids as short as they can be while still telling the shown runs apart; any command that
    // takes an id takes these prefixes.
    let id_length = crate::ids::shown_length(selected.iter().map(|r| r.run));
    let rows: Vec<Vec<String>> = selected
        .iter()
        .map(|r| {
            vec![
                r.started.get(..19).unwrap_or(r.started).replace('T', " "),
                r.run.get(..id_length).unwrap_or(r.run).to_string(),
                r.actor.clone(),
                r.command.to_string(),
                r.app.unwrap_or("-").to_string(),
                r.environment.unwrap_or("-").to_string(),
                r.version.unwrap_or("-").to_string(),
                r.targets.to_string(),
                r.outcome.clone(),
                r.summary.clone(),
            ]
        })
        .collect();
    let headers = [
        "STARTED (UTC)",
        "RUN",
        "ACTOR",
        "COMMAND",
        "APP",
        "ENV",
        "VERSION",
        "TARGETS",
        "OUTCOME",
        "SUMMARY",
    ];
    output::print(&table(&headers, &rows))?;
    Ok(0)
}

/// Runs in order of their first record.
fn group(records: &[Record]) -> Vec<Run<'_>> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_run: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in records {
        let list = by_run.entry(r.entry.run.as_str()).or_default();
        if list.is_empty() {
            order.push(&r.entry.run);
        }
        list.push(r);
    }
    order.into_iter().filter_map(|id| by_run.get(id).map(|list| summarize(id, list))).collect()
}

fn summarize<'a>(id: &'a str, list: &[&'a Record]) -> Run<'a> {
    let first = list[0];
    let finished = list.iter().find_map(|r| r.run_finished());
    let started = list.iter().find(|r| r.kind() == Some(Kind::RunStarted));
    let outcome = match (started, &finished) {
        (Some(_), None) => "interrupted".to_string(),
        (_, Some(f)) if f.refused.is_some() => "refused".to_string(),
        (_, Some(f)) if f.interrupted => "interrupted".to_string(),
        (_, Some(f)) if f.failed > 0 => "failed".to_string(),
        (_, Some(_)) => "ok".to_string(),
        (None, None) => first.entry.kind.clone(),
    };
    let mut summary = match finished {
        Some(RunFinished { refused: Some(why), .. }) => why,
        Some(f) => {
            // Which of the failed targets were never reached: read from their outcome records.
            let unreachable = list
                .iter()
                .filter(|r| {
                    r.kind() == Some(Kind::TargetOutcome) && r.entry.detail["status"] == "unreachable"
                })
                .count();
            let unreachable =
                if unreachable > 0 { format!(" ({unreachable} unreachable)") } else { String::new() };
            format!("{} ok, {} failed{unreachable}, {} skipped", f.ok, f.failed, f.skipped)
        }
        None => first.run_started().and_then(|s| s.command_line).unwrap_or_default(),
    };
    let via = |how: &str| list.iter().filter(|r| r.origin.as_ref().is_some_and(|o| o.via == how)).count();
    let (delayed, imported) = (via("spooled"), via("imported") > 0);
    if delayed > 0 {
        summary.push_str(&format!(
            " ({} delayed: spooled while the store was unreachable)",
            output::count(delayed, "record")
        ));
    }
    if imported {
        summary.push_str(" (imported)");
    }
    Run {
        run: id,
        started: &first.time,
        actor: first.actor.describe(),
        command: &first.entry.command,
        app: first.entry.app.as_deref(),
        environment: first.entry.environment.as_deref(),
        version: first.entry.version.as_deref(),
        targets: first.entry.targets.len(),
        outcome,
        summary,
        delayed,
        imported,
    }
}
