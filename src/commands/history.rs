//! `ferry history`: the audit log as runs, newest first; `ferry history --run ID`: one run.
//!
//! Records are grouped by run id. A run with a `run_started` but no `run_finished` record was
//! killed (a crash, `kill -9`, a lost machine) and is shown as `interrupted`.
//!
//! A tag can be pushed again with other bytes, so "which version ran" is not "what ran": each
//! run shows the digest it deployed (short in the table, whole in JSON and plain output), and
//! `--run` shows one run target by target (outcome, container id, error, last lines), which is
//! what a post-mortem asks for and what the records already hold.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::store;
use crate::audit::Record;
use crate::diagnostic::Diagnostic;
use crate::docker::ContainerDetails;
use crate::error::Error;
use crate::inventory::Inventory;
use crate::output::{self, OutputFormat, table};
use crate::records::{Kind, RunFinished, TargetOutcome};
use crate::request::History;
use crate::store::HistoryFilter;

/// How many runs a `--run` prefix is matched against at most: enough to list the candidates of
/// an ambiguous prefix, without reading every run of a big store.
const CANDIDATES: usize = 5;

/// Hex digits of a digest the table shows (as `docker images` shortens image ids).
const SHORT_DIGEST: usize = 12;

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
    /// The image digest the run deployed (or started with), whole.
    digest: Option<String>,
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
    if let Some(given) = &args.run {
        return one_run(inventory, given, output);
    }
    let filter = HistoryFilter {
        app: args.app.clone(),
        environment: args.environment.clone(),
        since_ms: args
            .since
            .map(|d| crate::time::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
        limit: args.limit,
        run: None,
    };
    let records = store(inventory)?.history(&filter)?;
    let selected: Vec<Run<'_>> = group(&records).into_iter().rev().collect();
    if output == OutputFormat::Json {
        output::print_json(&serde_json::json!({ "schema": 1, "type": "history", "runs": selected }))?;
        return Ok(0);
    }
    if output == OutputFormat::Plain {
        // Whole ids and times, one run per line, no header: for scripts and `grep`. The digest
        // came last, so scripts that read the columns before it by position still work.
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
                    r.digest.clone().unwrap_or_else(|| "-".into()),
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
                r.digest.as_deref().map_or_else(|| "-".into(), short_digest),
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
        "DIGEST",
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
        digest: digest_of(list),
        targets: first.entry.targets.len(),
        outcome,
        summary,
        delayed,
        imported,
    }
}

/// `sha256:0123456789abcdef…` as its first [`SHORT_DIGEST`] hex digits, as image ids are shown.
fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.get(..SHORT_DIGEST).unwrap_or(hex).to_string()
}

/// The digest a run deployed: its end's (a digest pinned during the rollout is only there),
/// else the one it started with, else the one a target's container reported.
fn digest_of(list: &[&Record]) -> Option<String> {
    let finished = list.iter().rev().find(|r| r.kind() == Some(Kind::RunFinished));
    finished
        .and_then(|r| r.entry.digest.clone())
        .or_else(|| list.iter().find_map(|r| r.entry.digest.clone()))
        .or_else(|| list.iter().filter_map(|r| target_outcome(r)).find_map(|(_, o)| o.container?.digest))
}

/// A `target_outcome` record's target and detail.
fn target_outcome(record: &Record) -> Option<(String, TargetOutcome)> {
    if record.kind() != Some(Kind::TargetOutcome) {
        return None;
    }
    let target = record.entry.targets.first()?.clone();
    Some((target, serde_json::from_value(record.entry.detail.clone()).ok()?))
}

/// One target of one run, as `history --run` shows it.
#[derive(Debug, Default, Serialize)]
struct TargetRow {
    /// The target's name.
    target: String,
    /// `ok`, `failed`, `error`, `refused`, `unreachable`, `skipped`; none when no outcome is on
    /// record (the run was killed before the target ended).
    status: Option<&'static str>,
    /// Deployments: what happened to the container.
    action: Option<&'static str>,
    /// Deployments: the container that ran after the target ended (id, name, image, digest).
    container: Option<ContainerDetails>,
    /// Removals: the containers removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
    /// The command's exit code, when it exited.
    exit_code: Option<u32>,
    /// The signal, when it was killed.
    signal: Option<String>,
    /// Time on the target.
    ms: Option<u64>,
    /// What went wrong (masked when it was recorded).
    error: Option<String>,
    /// The last output lines (masked).
    tail: Vec<String>,
    /// A failed container's last log lines (masked).
    logs: Vec<String>,
}

/// One run in full: `history --run`'s JSON.
#[derive(Debug, Serialize)]
struct RunDetail<'a> {
    /// What the run's row in `history` shows.
    #[serde(flatten)]
    run: Run<'a>,
    /// When its last record was written.
    finished: Option<&'a str>,
    /// `ferry run`: the command line (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line: Option<String>,
    /// Deployments: the image reference planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// What the run noted when it started (a rollback's target, an action, a lifecycle verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    notes: Option<serde_json::Value>,
    /// Why the rollout stopped early, or why the run was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
    /// Per target, in the order the run named them.
    target_outcomes: Vec<TargetRow>,
}

/// Runs `ferry history --run ID`.
fn one_run(inventory: &Inventory, given: &str, output: OutputFormat) -> Result<i32, Error> {
    let filter =
        HistoryFilter { run: Some(given.to_string()), limit: CANDIDATES, ..HistoryFilter::default() };
    let records = store(inventory)?.history(&filter)?;
    let mut ids: Vec<&str> = Vec::new();
    for r in &records {
        if !ids.contains(&r.entry.run.as_str()) {
            ids.push(&r.entry.run);
        }
    }
    let id = crate::ids::resolve(given, ids.iter().copied()).map_err(|why| {
        Error::Input(
            Diagnostic::new(why.describe(given, "run")).help("`ferry history` lists the runs on record"),
        )
    })?;
    let list: Vec<&Record> = records.iter().filter(|r| r.entry.run == id).collect();
    let detail = detail(id, &list);
    match output {
        OutputFormat::Json => {
            output::print_json(&serde_json::json!({ "schema": 1, "type": "run", "run": detail }))?;
        }
        OutputFormat::Plain => output::print(&plain(&detail))?,
        OutputFormat::Human => output::print(&human(&detail))?,
    }
    Ok(0)
}

/// The run `id` from its records (in the order they were written).
fn detail<'a>(id: &'a str, list: &[&'a Record]) -> RunDetail<'a> {
    let started = list.iter().find_map(|r| r.run_started()).unwrap_or_default();
    let finished = list.iter().rev().find_map(|r| r.run_finished());
    // The run's targets in the order it named them; then any only its outcomes name.
    let mut rows: BTreeMap<String, TargetRow> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut row = |name: &str, rows: &mut BTreeMap<String, TargetRow>| {
        if !order.iter().any(|n| n == name) {
            order.push(name.to_string());
        }
        rows.entry(name.to_string())
            .or_insert_with(|| TargetRow { target: name.to_string(), ..TargetRow::default() });
    };
    if let Some(first) = list.iter().find(|r| r.kind() == Some(Kind::RunStarted)).or(list.first()) {
        for name in &first.entry.targets {
            row(name, &mut rows);
        }
    }
    for (name, outcome) in list.iter().filter_map(|r| target_outcome(r)) {
        row(&name, &mut rows);
        if let Some(r) = rows.get_mut(&name) {
            r.status = Some(outcome.status.label());
            r.action = outcome.action.map(|a| a.label());
            r.container = outcome.container.map(|c| *c);
            r.exit_code = outcome.exit_code;
            r.signal = outcome.signal;
            r.ms = Some(outcome.ms);
            r.error = outcome.error;
            r.tail = outcome.tail;
            r.logs = outcome.logs.unwrap_or_default();
        }
    }
    // A deployment's record has every planned target, also those never started; a removal's
    // names the containers it removed.
    if let Some(deployment) = finished.as_ref().and_then(|f| f.deployment.as_ref()) {
        for (name, t) in &deployment.targets {
            row(name, &mut rows);
            if let Some(r) = rows.get_mut(name) {
                r.status = r.status.or(Some(t.status.label()));
                r.action = r.action.or(t.action.map(|a| a.label()));
            }
        }
    }
    if let Some(removal) = finished.as_ref().and_then(|f| f.removal.as_ref()) {
        for (name, t) in &removal.targets {
            row(name, &mut rows);
            if let Some(r) = rows.get_mut(name) {
                r.status = r.status.or(Some(t.status.label()));
                r.removed.clone_from(&t.containers);
            }
        }
    }
    let target_outcomes = order.iter().filter_map(|name| rows.remove(name)).collect();
    let last = list.iter().rev().find(|r| r.kind() == Some(Kind::RunFinished)).map(|r| r.time.as_str());
    let stopped = finished.as_ref().and_then(|f| f.refused.clone().or_else(|| f.stopped.clone()));
    RunDetail {
        run: summarize(id, list),
        finished: last,
        command_line: started.command_line,
        image: started.image,
        notes: started.notes,
        stopped,
        target_outcomes,
    }
}

/// `history --run` for people: the run's facts, a row per target, then what failed said.
fn human(d: &RunDetail<'_>) -> String {
    let time = |t: &str| format!("{} UTC", t.get(..19).unwrap_or(t).replace('T', " "));
    let mut facts: Vec<(&str, String)> = vec![
        ("run", d.run.run.to_string()),
        ("started", time(d.run.started)),
        ("finished", d.finished.map_or_else(|| "-".into(), time)),
        ("actor", d.run.actor.clone()),
        ("command", d.run.command.to_string()),
    ];
    let mut optional = |label, value: Option<String>| {
        if let Some(value) = value {
            facts.push((label, value));
        }
    };
    optional("command line", d.command_line.clone());
    optional("app", d.run.app.map(str::to_string));
    optional("env", d.run.environment.map(str::to_string));
    optional("version", d.run.version.map(str::to_string));
    optional("digest", d.run.digest.clone());
    optional("image", d.image.clone());
    optional("notes", d.notes.as_ref().map(ToString::to_string));
    optional("outcome", Some(format!("{}: {}", d.run.outcome, d.run.summary)));
    optional("stopped", d.stopped.clone().filter(|s| !d.run.summary.contains(s.as_str())));
    let width = facts.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out: String = facts.iter().map(|(label, value)| format!("{label:<width$}  {value}\n")).collect();
    if d.target_outcomes.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .target_outcomes
        .iter()
        .map(|t| {
            let container = t.container.as_ref().map(|c| c.id.get(..12).unwrap_or(&c.id).to_string());
            let container = container
                .or_else(|| (!t.removed.is_empty()).then(|| format!("removed {}", t.removed.join(", "))));
            let exit = match (t.exit_code, &t.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => signal.clone(),
                (None, None) => "-".into(),
            };
            vec![
                t.target.clone(),
                t.status.unwrap_or("-").to_string(),
                t.action.unwrap_or("-").to_string(),
                container.unwrap_or_else(|| "-".into()),
                exit,
                t.ms.map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                t.error.as_deref().map_or_else(|| "-".into(), first_line),
            ]
        })
        .collect();
    out.push('\n');
    out += &table(&["TARGET", "STATUS", "ACTION", "CONTAINER", "EXIT", "TIME", "ERROR"], &rows);
    // What the failed targets said: their last output lines and their containers' logs.
    for t in d.target_outcomes.iter().filter(|t| t.status.is_some_and(|s| s != "ok" && s != "skipped")) {
        for (what, lines) in [("last output lines", &t.tail), ("container logs", &t.logs)] {
            if !lines.is_empty() {
                out += &format!("\n{}: {what}:\n", t.target);
                out.extend(lines.iter().map(|l| format!("  | {l}\n")));
            }
        }
        if let Some(error) = t.error.as_deref().filter(|e| e.contains('\n')) {
            out += &format!("\n{}: error:\n", t.target);
            out.extend(error.lines().map(|l| format!("  | {l}\n")));
        }
    }
    out
}

/// The first line of a message, for a table cell.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// `history --run` for scripts: tab-separated lines, no header, each led by what it describes:
/// one `run` line, then one `target` line per target; whole ids, digests and errors.
fn plain(d: &RunDetail<'_>) -> String {
    let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    let line = |cells: Vec<String>| {
        cells.into_iter().map(|c| c.replace(['\t', '\n'], " ")).collect::<Vec<_>>().join("\t") + "\n"
    };
    let mut out = line(vec![
        "run".into(),
        d.run.run.to_string(),
        d.run.started.to_string(),
        dash(d.finished),
        d.run.actor.clone(),
        d.run.command.to_string(),
        dash(d.run.app),
        dash(d.run.environment),
        dash(d.run.version),
        dash(d.run.digest.as_deref()),
        d.run.outcome.clone(),
        d.run.summary.clone(),
    ]);
    for t in &d.target_outcomes {
        out += &line(vec![
            "target".into(),
            t.target.clone(),
            dash(t.status),
            dash(t.action),
            dash(t.container.as_ref().map(|c| c.id.as_str())),
            t.exit_code.map_or_else(|| dash(t.signal.as_deref()), |c| c.to_string()),
            t.ms.map_or_else(|| "-".into(), |ms| ms.to_string()),
            dash(t.error.as_deref()),
        ]);
    }
    out
}
