//! The audit log through the CLI: what `ferry run` records, `audit verify` on tampered copies,
//! concurrent writers, a `kill -9` in the middle of a run, and secrets kept out of every record.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::test::{SECRET, Test, binary};

fn local() -> Test {
    Test::new().replace(
        "ferry.toml",
        "[targets.stg-1]\nhost = \"10.0.0.11\"",
        "[targets.stg-1]\ntransport = \"local\"",
    )
}

/// `ferry -i FOLDER/ferry.toml …` with the test secret set.
fn ferry(folder: &tempfile::TempDir) -> Test {
    let inventory = folder.path().join("ferry.toml").display().to_string();
    Test::bare().env("WEB_DATABASE_URL", SECRET).args(["-i", &inventory])
}

fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(".ferry/audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn run_is_recorded_and_history_shows_outcomes() {
    let folder = local().into_dir();
    let dir = folder.path();
    ferry(&folder)
        .args(["run", "--env", "staging", "--", "echo hi"])
        .stdout_contains("stg-1 | hi\n")
        .stdout_contains("stg-1   ok      exit 0  ")
        .run();
    ferry(&folder)
        .args(["run", "--env", "staging", "--", "exit 4"])
        .code(1)
        .stdout_contains("stg-1   failed  exit 4  ")
        .run();
    let kinds: Vec<String> = records(dir).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        kinds,
        ["run_started", "target_outcome", "run_finished", "run_started", "target_outcome", "run_finished"]
    );
    let recs = records(dir);
    assert_eq!(recs[1]["detail"]["tail"][0], "hi", "masked output tail in the outcome");
    assert_eq!(recs[4]["detail"]["exit_code"], 4);
    assert!(recs.iter().all(|r| r["actor"]["user"].is_string() && r["actor"]["via"].is_string()));
    let out =
        ferry(&folder).args(["history"]).stdout_contains("STARTED (UTC)        RUN            ACTOR").run();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two runs: {}", out.stdout);
    assert!(lines[1].contains("failed"), "newest first: {}", out.stdout);
    assert!(lines[2].contains(" ok "), "{}", out.stdout);
    let json = ferry(&folder).args(["history", "--output", "json"]).stdout_json().run().json();
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(2));
    ferry(&folder).args(["audit", "verify"]).stdout_contains(": ok, 6 records, chain intact\n").run();
}

#[test]
fn verify_names_the_record_that_was_edited_deleted_or_moved() {
    let folder = local().into_dir();
    let dir = folder.path();
    ferry(&folder)
        .args(["run", "--env", "staging", "--", "true"])
        .stdout_contains("stg-1   ok      exit 0  ")
        .run();
    let text = std::fs::read_to_string(dir.join(".ferry/audit.jsonl")).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Each verdict names the log by its full temporary path, so the line is checked from there on.
    let verify = |name: &str, lines: &[String], code: i32, verdict: &str| {
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
        let log = dir.join(name).display().to_string();
        ferry(&folder)
            .args(["audit", "verify", "--log", &log])
            .code(code)
            .stdout_contains(&format!("{log}{verdict}"))
            .run()
            .stdout
    };
    assert!(verify("same.jsonl", &lines, 0, ": ok, 3 records, chain intact\n").contains("chain intact"));
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"ms\":", "\"ms\":1");
    let broken = ":2: BROKEN: record seq 2 was modified";
    assert!(verify("edited.jsonl", &edited, 1, broken).contains(broken));
    let deleted: Vec<String> =
        lines.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l.clone()).collect();
    let broken = ":2: BROKEN: record seq 3 does not follow";
    assert!(verify("deleted.jsonl", &deleted, 1, broken).contains(broken));
    let mut moved = lines.clone();
    moved.swap(0, 1);
    let broken = ":1: BROKEN: record seq 2 does not follow";
    assert!(verify("moved.jsonl", &moved, 1, broken).contains(broken));
}

#[test]
fn a_thousand_appends_from_four_processes_make_a_thousand_whole_lines_and_a_valid_chain() {
    let test = local();
    let log = test.path().join("shared.jsonl").display().to_string();
    let inventory = test.path().join("ferry.toml").display().to_string();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(binary())
                .args(["-i", &inventory, "audit", "bench", "--records", "250", "--log", &log])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "whole lines only");
    Test::bare()
        .args(["-i", &inventory, "audit", "verify", "--log", &log])
        .stdout(&format!("{log}: ok, 1000 records, chain intact\n"))
        .run();
}

#[test]
fn kill_9_mid_run_leaves_a_verifiable_log_and_an_interrupted_run() {
    let folder = local().into_dir();
    let inventory = folder.path().join("ferry.toml").display().to_string();
    let mut child = Command::new(binary())
        .args(["-i", &inventory, "run", "--env", "staging", "--", "sleep 5"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WEB_DATABASE_URL", SECRET)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    ferry(&folder).args(["audit", "verify"]).stdout_contains(", chain intact\n").run();
    let out =
        ferry(&folder).args(["history"]).stdout_contains("STARTED (UTC)        RUN            ACTOR").run();
    assert!(out.stdout.lines().nth(1).is_some_and(|l| l.contains("interrupted")), "{}", out.stdout);
    // And the log takes appends after the crash.
    ferry(&folder)
        .args(["run", "--env", "staging", "--", "true"])
        .stdout_contains("stg-1   ok      exit 0  ")
        .run();
    ferry(&folder).args(["audit", "verify"]).stdout_contains(", chain intact\n").run();
}

#[test]
fn secrets_never_reach_the_audit_log_or_history() {
    let folder = local().into_dir();
    ferry(&folder)
        .args(["run", "--env", "staging", "--", &format!("echo {SECRET}; echo $WEB_DATABASE_URL")])
        .stdout_contains("stg-1 | ***\nstg-1 | ***\n")
        .run();
    let log = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    assert!(!log.contains(SECRET), "{log}");
    assert!(log.contains("***"), "{log}");
    for history in [
        ferry(&folder).args(["history"]).stdout_contains("STARTED (UTC)        RUN            ACTOR"),
        ferry(&folder).args(["history", "--output", "json"]).stdout_json(),
    ] {
        let out = history.run();
        assert!(!out.stdout.contains(SECRET), "{}", out.stdout);
    }
}

/// A log of three real records (`audit bench`) in a test folder whose targets are all on
/// loopback (nothing below connects, but if a regression did, it would stay on this machine).
fn three_records() -> (tempfile::TempDir, Vec<String>) {
    let test = Test::new()
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
        .replace("ferry.toml", "[defaults]", "[lifecycle]\nphases = [\"staging\", \"prod\"]\n\n[defaults]");
    let folder = test.into_dir();
    ferry(&folder).args(["audit", "bench", "--records", "3"]).stdout_contains("3 appends to ").run();
    let text = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    (folder, text.lines().map(str::to_string).collect())
}

/// Verifies `lines` as a log of their own: the exit code and the verdict.
fn verdict(folder: &tempfile::TempDir, name: &str, lines: &[String]) -> (i32, String) {
    let path = folder.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let log = path.display().to_string();
    let out = Command::new(binary())
        .args([
            "-i",
            &folder.path().join("ferry.toml").display().to_string(),
            "audit",
            "verify",
            "--log",
            &log,
        ])
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).replace(&log, "LOG"))
}

#[test]
fn the_hash_covers_the_bytes_not_what_serde_reads_back() {
    let (folder, lines) = three_records();
    assert_eq!(verdict(&folder, "same.jsonl", &lines), (0, "LOG: ok, 3 records, chain intact\n".into()));
    let changed = |how: &dyn Fn(&str) -> String| {
        let mut copy = lines.clone();
        copy[1] = how(&copy[1]);
        assert_ne!(copy[1], lines[1], "the test changed nothing");
        copy
    };
    let bad = "LOG:2: BROKEN: record seq 2 was modified (its bytes are not the ones ferry wrote)\n";
    // A field serde ignores, one nested inside `actor`, and a value re-encoded as an escape.
    let added = changed(&|l| l.replacen("{\"seq\"", "{\"privileged\":true,\"seq\"", 1));
    assert_eq!(verdict(&folder, "added.jsonl", &added), (1, bad.into()));
    let nested = changed(&|l| l.replacen("\"actor\":{", "\"actor\":{\"role\":\"admin\",", 1));
    assert_eq!(verdict(&folder, "nested.jsonl", &nested), (1, bad.into()));
    let escaped = changed(&|l| l.replacen("\"kind\":\"bench\"", "\"kind\":\"\\u0062ench\"", 1));
    assert_eq!(verdict(&folder, "escaped.jsonl", &escaped), (1, bad.into()));
}

#[test]
fn a_whole_line_that_is_not_a_record_breaks_the_chain_and_only_a_cut_tail_is_torn() {
    let (folder, lines) = three_records();
    let mut inserted = lines.clone();
    inserted.insert(1, "{\"note\":\"not a record\"}".into());
    let (code, out) = verdict(&folder, "inserted.jsonl", &inserted);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("LOG:2: BROKEN: not a record ("), "{out}");
    // A crash mid-write cuts the last line short: reported as torn, the chain still holds.
    let mut cut = lines.clone();
    let last = cut.pop().unwrap();
    cut.push(last[..last.len() / 2].to_string());
    assert_eq!(verdict(&folder, "cut.jsonl", &cut), (0, "LOG: ok, 2 records, chain intact\n".into()));
}

/// A forged line (its hash is "bogus") claiming a successful staging deployment of an argv
/// with `--privileged -v /:/host`: no command that acts on records uses it.
#[test]
fn a_forged_record_is_never_acted_upon() {
    let (folder, lines) = three_records();
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let argv = [
        "docker",
        "run",
        "--detach",
        "--name",
        "web-staging",
        "--privileged",
        "-v",
        "/:/host",
        "acme/web:1.0",
    ];
    let forged = serde_json::json!({
        "seq": 4, "time": "2026-12-04T12:00:00.000Z", "id": "01900000-0000-7000-8000-000000000000",
        "actor": last["actor"], "kind": "run_finished", "run": "01900000-0000-7000-8000-00000000f0f0",
        "command": "deploy", "app": "web", "environment": "staging", "version": "1.0",
        "detail": { "ok": 1, "failed": 0, "skipped": 0, "interrupted": false, "deployment": {
            "image": "acme/web:1.0", "succeeded": true, "targets": { "stg-1": {
                "container": "web-staging", "config_hash": "x", "argv": argv, "secrets": [],
                "status": "ok", "action": "created" } } } },
        "prev": last["hash"], "hash": "bogus"
    });
    let log = folder.path().join(".ferry/audit.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text += &format!("{forged}\n");
    std::fs::write(&log, text).unwrap();
    let broken = ".ferry/audit.jsonl:4 is broken: record seq 4 was modified";
    for args in [
        &["rollback", "web", "--env", "staging", "--yes"][..],
        &["rollback", "web", "--env", "staging", "--to", "01900000-0000-7000-8000-00000000f0f0", "--yes"],
        &["promote", "web", "--to", "prod", "--yes"],
        &["status", "web", "--env", "staging"],
        &["history"],
    ] {
        ferry(&folder)
            .args(args.iter().copied())
            .code(4)
            .stderr_contains(broken)
            .stderr_contains("`ferry audit verify` shows the break")
            .run();
    }
    ferry(&folder)
        .args(["audit", "verify"])
        .code(1)
        .stdout_contains(":4: BROKEN: record seq 4 was modified")
        .run();
}

/// A record on an intact chain (written through ferry's own log, as anyone who can write the
/// state folder could) whose argv ferry would never have rendered: rollback refuses to run it,
/// while the same record with a rendered-looking argv passes the check.
#[test]
fn a_recorded_argv_passes_the_same_checks_as_a_rendered_one() {
    let (folder, _) = three_records();
    let log = ferry::audit::Log::new(
        &folder.path().join(".ferry"),
        ferry::audit::Actor { user: "mallory".into(), host: "h".into(), via: "terminal".into(), job: None },
    );
    let image = "127.0.0.1:5000/acme/web:1.0";
    let prefix = [
        "docker",
        "run",
        "--detach",
        "--name",
        "web-staging",
        "--label",
        "ferry.app=web",
        "--label",
        "ferry.environment=staging",
        "--env-file",
        ".ferry/env/web-staging.env",
    ];
    let record = |run: &str, tail: &[&str]| {
        let argv: Vec<&str> = prefix.iter().chain(tail).copied().collect();
        log.append(ferry::audit::Entry {
            kind: "run_finished".into(),
            run: run.into(),
            command: "deploy".into(),
            app: Some("web".into()),
            environment: Some("staging".into()),
            version: Some("1.0".into()),
            detail: serde_json::json!({ "ok": 1, "failed": 0, "skipped": 0, "interrupted": false, "deployment": {
                "image": image, "succeeded": true, "targets": { "stg-1": {
                    "container": "web-staging", "config_hash": "x", "argv": argv, "secrets": ["DATABASE_URL"],
                    "status": "ok", "action": "created" } } } }),
            ..ferry::audit::Entry::default()
        })
        .unwrap();
    };
    record("01900000-0000-7000-8000-0000000000aa", &["--name", "other", "--privileged", image]);
    record("01900000-0000-7000-8000-0000000000bb", &["-p", "8080:8080", image, "sh", "-c", "docker ps"]);
    record("01900000-0000-7000-8000-0000000000cc", &["--privileged", "-v", "/:/host", "evil/image:1"]);
    ferry(&folder).args(["audit", "verify"]).stdout_contains(": ok, 6 records, chain intact\n").run();
    let rollback =
        |run: &str| ferry(&folder).args(["rollback", "web", "--env", "staging", "--to", run, "--yes"]);
    rollback("01900000-0000-7000-8000-0000000000aa")
        .code(4)
        .stderr_contains(
            "ferry names the container itself; ferry runs again only what it would have rendered",
        )
        .run();
    rollback("01900000-0000-7000-8000-0000000000cc")
        .code(4)
        .stderr_contains("the template runs image \"evil/image:1\", not the one ferry deploys")
        .run();
    // A rendered-looking argv passes the check; the rollback then fails only to reach the
    // target (127.0.0.1, port 1: nothing listens, nothing leaves this machine).
    let out = rollback("01900000-0000-7000-8000-0000000000bb")
        .code(1)
        .stdout_contains("stg-1 ! unreachable: cannot connect to 127.0.0.1:1: ")
        .stdout_contains("\nstg-1   unreachable  untouched  ")
        .stderr_contains("returns to deployment 01900000-0000-7000-8000-0000000000bb")
        .run();
    assert!(!out.stderr.contains("would have rendered"), "{}", out.stderr);
}

/// `promote` of a deployment made with `--archive` (its record's image and digest are the
/// image id) deploys that image id: the targets are checked for it, not asked to pull
/// `repo@<image id>` from a registry that never had it.
#[test]
fn promote_of_an_archived_deployment_deploys_its_image_id() {
    let (folder, _) = three_records();
    let log = ferry::audit::Log::new(
        &folder.path().join(".ferry"),
        ferry::audit::Actor { user: "ci".into(), host: "h".into(), via: "terminal".into(), job: None },
    );
    let id = format!("sha256:{}", "ab".repeat(32));
    log.append(ferry::audit::Entry {
        kind: "run_finished".into(),
        run: "01900000-0000-7000-8000-0000000000dd".into(),
        command: "deploy".into(),
        app: Some("web".into()),
        environment: Some("staging".into()),
        version: Some("1.0".into()),
        detail: serde_json::json!({ "ok": 1, "failed": 0, "skipped": 0, "interrupted": false, "digest": id,
            "deployment": { "image": id, "succeeded": true, "targets": { "stg-1": {
                "container": "web-staging", "config_hash": "x", "argv": [], "secrets": [],
                "status": "ok", "action": "created" } } } }),
        ..ferry::audit::Entry::default()
    })
    .unwrap();
    // The targets are on loopback, port 1: unreachable, but the record says what was planned.
    ferry(&folder)
        .args(["promote", "web", "--to", "prod", "--yes"])
        .code(1)
        .stdout_contains("prod-1 ! unreachable: cannot connect to 127.0.0.1:1: ")
        .stderr_contains("from staging (deployment 01900000-0000-7000-8000-0000000000dd) to prod")
        .run();
    let text = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    let promoted = text.lines().rfind(|l| l.contains("\"run_finished\"")).unwrap();
    assert!(promoted.contains(&format!("\"image\":\"{id}\"")), "{promoted}");
    assert!(!text.contains(&format!("@{id}")), "{text}");
}
