//! Freeze windows (`[[freeze]]`, issue 16 part 3) through the CLI: the refusal of `deploy`,
//! `promote` and `rollback` inside a window (exit 4, before any connection), the override with
//! a reason (recorded), `check` and `plan` naming the windows, and the inventory's errors.
//!
//! The targets are on loopback port 1 (nothing listens): a run that wrongly went past the
//! freeze fails at once there, without leaving this machine. The window "in force now" runs from
//! 2000 to 2099, so these tests do not depend on the day they run.

use crate::test::{INVENTORY, SECRET, Test};

/// A window over prod from 2000 until 2099-01-01 in Berlin.
const HOLIDAYS: &str = r#"
[[freeze]]
name = "holidays"
environments = ["prod"]
reason = "Code freeze over the holidays"
from = "2000-01-01T00:00:00Z"
until = "2099-01-01T00:00:00+01:00"
timezone = "Europe/Berlin"
"#;

/// The test inventory on loopback, with `extra` appended.
fn inventory(extra: &str) -> Test {
    Test::new()
        .write("ferry.toml", &format!("{INVENTORY}{extra}"))
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
}

/// `ferry …` with the test secret, run (`run_in`) in a folder the test keeps to read records.
fn ferry() -> Test {
    Test::bare().env("WEB_DATABASE_URL", SECRET)
}

/// [`inventory`] without the app's feed (so a deploy asks no registry).
fn feedless(extra: &str) -> Test {
    inventory(extra).replace("ferry.toml", "feed = \"main\"\n", "")
}

const REFUSED: &str = "refused: prod is frozen by \"holidays\" until Thu 2099-01-01 00:00 Europe/Berlin (2098-12-31 23:00 UTC): Code freeze over the holidays
  --> ferry.toml:42:1
   |
42 | [[freeze]]
   | ^^^^^^^^^^
  = help: wait until it ends, or pass --override-freeze --reason TEXT (the reason is kept in the audit log)
";

#[test]
fn deploy_promote_and_rollback_are_refused_inside_a_window_naming_it_and_its_end() {
    for (command, args) in [
        ("deploy", &["deploy", "web", "--env", "prod", "--version", "1.0", "--yes"][..]),
        ("promote", &["promote", "web", "--to", "prod", "--yes"]),
        ("rollback", &["rollback", "web", "--env", "prod", "--yes"]),
    ] {
        // With the feed: the refusal comes before the registry is asked, too.
        let folder = inventory(HOLIDAYS).into_dir();
        ferry()
            .args(args.iter().copied())
            .code(4)
            .stderr(&format!("error: {command} {REFUSED}"))
            .run_in(folder.path());
        let state = folder.path().join(".ferry");
        assert!(!state.join("audit.jsonl").exists(), "{command}: nothing recorded, nothing started");
    }
    // Staging is not frozen: the deploy goes on (and fails to reach the loopback target).
    feedless(HOLIDAYS)
        .args(["deploy", "web", "--env", "staging", "--version", "1.0", "--yes"])
        .code(1)
        .stdout_contains("stg-1   unreachable  untouched")
        .run();
}

#[test]
fn json_output_says_refused_with_exit_code_4() {
    let out = inventory(HOLIDAYS)
        .args(["deploy", "web", "--env", "prod", "--version", "1.0", "--yes", "--output", "json"])
        .code(4)
        .stdout_json()
        .stderr_contains("error: deploy refused: prod is frozen by \"holidays\"")
        .run();
    let json = out.json();
    assert_eq!(json["exit_code"], 4);
    assert!(
        json["errors"][0]["message"].as_str().unwrap().contains("until Thu 2099-01-01 00:00 Europe/Berlin")
    );
}

#[test]
fn an_override_with_a_reason_deploys_and_the_reason_is_recorded() {
    let folder = feedless(HOLIDAYS).into_dir();
    ferry()
        .args(["deploy", "web", "--env", "prod", "--version", "1.0", "--yes"])
        .args(["--override-freeze", "--reason", "hotfix for INC-42", "--limit", "prod-1"])
        .code(1)
        .stdout_contains("prod-1  unreachable  untouched")
        .stderr(
            "warning: freeze overridden: prod is frozen by \"holidays\" until Thu 2099-01-01 00:00 Europe/Berlin \
             (2098-12-31 23:00 UTC): Code freeze over the holidays; reason: hotfix for INC-42\n",
        )
        .run_in(folder.path());
    let text = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    let started: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "run_started")
        .unwrap();
    assert_eq!(
        started["detail"]["notes"]["freeze_override"],
        serde_json::json!({
            "window": "holidays",
            "window_reason": "Code freeze over the holidays",
            "until": "2098-12-31T23:00:00Z",
            "reason": "hotfix for INC-42",
        }),
        "{started}"
    );
}

#[test]
fn the_override_needs_a_reason_and_a_reason_needs_an_override() {
    let deploy = ["deploy", "web", "--env", "prod", "--version", "1.0", "--yes"];
    for extra in [&["--override-freeze"][..], &["--reason", "x"]] {
        inventory(HOLIDAYS)
            .args(deploy)
            .args(extra.iter().copied())
            .code(2)
            .stderr_contains("Usage: ferry deploy")
            .run();
    }
    for extra in [&["--override-freeze"][..], &["--reason", "x"]] {
        inventory(HOLIDAYS)
            .args(["rollback", "web", "--env", "prod", "--yes"])
            .args(extra.iter().copied())
            .code(2)
            .stderr_contains("Usage: ferry rollback")
            .run();
        inventory(HOLIDAYS)
            .args(["promote", "web", "--to", "prod", "--yes"])
            .args(extra.iter().copied())
            .code(2)
            .stderr_contains("Usage: ferry promote")
            .run();
    }
    inventory(HOLIDAYS)
        .args(deploy)
        .args(["--override-freeze", "--reason", " "])
        .code(2)
        .stderr("error: --reason: an empty reason\n  = help: say why the freeze is overridden: it is kept in the audit log\n")
        .run();
}

/// A daily one-minute window over staging: at least six of its minutes start within 7 days,
/// whatever the time the test runs.
const BACKUP: &str = r#"
[[freeze]]
name = "backup"
environments = ["staging"]
reason = "nightly backup"
hours = "03:00-03:01"
"#;

#[test]
fn check_lists_the_windows_in_force_and_those_starting_within_a_week() {
    let extra = format!("{HOLIDAYS}{BACKUP}");
    let out = inventory(&extra)
        .args(["check"])
        .stdout_contains("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .stdout_contains(
            "freeze: prod is frozen by \"holidays\" until Thu 2099-01-01 00:00 Europe/Berlin (2098-12-31 23:00 UTC): \
             Code freeze over the holidays\n",
        )
        .stdout_contains("freeze: staging will be frozen by \"backup\" from ")
        .run();
    let soon =
        out.stdout.lines().filter(|l| l.starts_with("freeze: staging will be frozen by \"backup\"")).count();
    assert!((6..=7).contains(&soon), "{}", out.stdout);
    let json = inventory(&extra).args(["check", "--output", "json"]).stdout_json().run().json();
    assert_eq!(json["freeze"]["active"][0]["environment"], "prod");
    assert_eq!(json["freeze"]["active"][0]["until"], "2098-12-31T23:00:00Z");
    let upcoming = json["freeze"]["upcoming"].as_array().unwrap();
    assert!(upcoming.len() >= 6, "{json}");
    assert!(
        upcoming
            .iter()
            .all(|u| u["window"] == "backup" && u["environments"] == serde_json::json!(["staging"]))
    );
    // Without windows, check says nothing about freezes.
    let json = inventory("").args(["check", "--output", "json"]).stdout_json().run().json();
    assert!(json.get("freeze").is_none(), "{json}");
}

#[test]
fn plan_says_when_a_deploy_would_be_refused() {
    let extra = format!("{HOLIDAYS}{BACKUP}");
    feedless(&extra)
        .args(["plan", "web", "--env", "prod", "--version", "1.0"])
        .stdout_contains("plan: web 1.0 → prod: 2 targets")
        .stderr(
            "freeze: prod is frozen by \"holidays\" until Thu 2099-01-01 00:00 Europe/Berlin (2098-12-31 23:00 UTC): \
             Code freeze over the holidays (a deploy now is refused without --override-freeze)\n",
        )
        .run();
    let out = feedless(&extra)
        .args(["plan", "web", "--env", "staging", "--version", "1.0"])
        .stdout_contains("plan: web 1.0 → staging: 1 target")
        .stderr_contains("freeze: staging will be frozen by \"backup\" from ")
        .run();
    assert!(!out.stderr.contains("holidays"), "prod's window is not staging's: {}", out.stderr);
    let json = feedless(&extra)
        .args(["plan", "web", "--env", "prod", "--version", "1.0", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert_eq!(json["freeze"]["active"][0]["window"], "holidays");
    assert_eq!(json["freeze"]["upcoming"], serde_json::json!([]));
    // `--diff` says it too (its targets are unreachable here: each is `unknown`).
    let json = feedless(&extra)
        .args(["plan", "web", "--env", "prod", "--version", "1.0", "--diff", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert_eq!(json["freeze"]["active"][0]["window"], "holidays", "{json}");
    assert_eq!(json["targets"][0]["change"], "unknown", "{json}");
}

#[test]
fn every_problem_of_every_window_is_named_at_its_line() {
    let bad = r#"
[[freeze]]
environments = ["prdo"]
reason = "x"
days = ["sat", "someday"]
hours = "18:00-8"
timezone = "Europe/Berln"

[[freeze]]
environments = ["prod"]
reason = ""
from = "2026-12-24T00:00:00+01:00"
until = "2026-12-20T00:00:00+01:00"

[[freeze]]
environments = ["prod"]
reason = "both"
from = 2026-12-24T00:00:00Z
until = "2026-12-25"
hours = "18:00-08:00"
"#;
    let out = inventory(bad).args(["check"]).code(2).stderr_snapshot().run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn a_rollback_inside_a_window_with_an_override_records_both_its_target_and_the_reason() {
    let window = HOLIDAYS.replace("environments = [\"prod\"]", "environments = [\"staging\"]");
    let folder = inventory(&window).into_dir();
    // A successful deployment on record to return to (written as ferry's own log writes it).
    let log = ferry::audit::Log::new(
        &folder.path().join(".ferry"),
        ferry::audit::Actor { user: "alice".into(), host: "h".into(), via: "terminal".into(), job: None },
    );
    let image = "127.0.0.1:5000/acme/web:1.0";
    let argv = [
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
        "-p",
        "8080:8080",
        image,
    ];
    let run = "01900000-0000-7000-8000-0000000000aa";
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
    let rollback = ["rollback", "web", "--env", "staging", "--to", run, "--yes"];
    ferry()
        .args(rollback)
        .code(4)
        .stderr_contains("error: rollback refused: staging is frozen")
        .run_in(folder.path());
    ferry()
        .args(rollback)
        .args(["--override-freeze", "--reason", "revert the bad config"])
        .code(1)
        .stdout_contains("stg-1   unreachable  untouched")
        .stderr_contains("warning: freeze overridden: staging is frozen by \"holidays\"")
        .stderr_contains("; reason: revert the bad config\n")
        .stderr_contains(&format!("returns to deployment {run}"))
        .run_in(folder.path());
    let text = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    let started = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "run_started")
        .unwrap();
    assert_eq!(started["command"], "rollback");
    assert_eq!(started["detail"]["notes"]["rollback_to"], run);
    assert_eq!(started["detail"]["notes"]["freeze_override"]["reason"], "revert the bad config", "{started}");
}
