//! `ferry run` on `transport = "local"` targets: the same fan-out, through a local `sh`.

use crate::test::Test;

fn local() -> Test {
    Test::new().replace(
        "ferry.toml",
        "[targets.stg-1]\nhost = \"10.0.0.11\"",
        "[targets.stg-1]\ntransport = \"local\"",
    )
}

#[test]
fn local_targets_run_through_sh_with_streams_and_exit_codes() {
    let out =
        local().args(["run", "--env", "staging", "--output", "plain", "--", "echo out; echo err >&2"]).run();
    assert!(out.stdout.contains("stg-1 | out\n"), "{}", out.stdout);
    assert!(out.stdout.contains("stg-1 | err\n"), "{}", out.stdout);
    let out = local().args(["run", "--env", "staging", "--output", "json", "--", "exit 5"]).code(1).run();
    let finished: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "target_finished")
        .collect();
    assert_eq!(finished[0]["exit_code"], 5);
}

#[test]
fn local_deadline_and_signal() {
    let out = local().args(["run", "--env", "staging", "--timeout", "300ms", "--", "sleep 5"]).code(1).run();
    assert!(out.stdout.contains("still running after 300ms: killed"), "{}", out.stdout);
    let out = local().args(["run", "--env", "staging", "--", "kill -TERM $$"]).code(1).run();
    assert!(out.stdout.contains("killed by SIGTERM"), "{}", out.stdout);
}

#[test]
fn unknown_role_and_limit_are_input_errors() {
    let out = local().args(["run", "--env", "staging", "--role", "wbe", "--", "true"]).code(2).run();
    assert!(out.stderr.contains("no target of environment \"staging\" has role \"wbe\""), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean \"web\"?"), "{}", out.stderr);
    local().args(["run", "--env", "staging", "--limit", "nope", "--", "true"]).code(2).run();
    local().args(["run", "--env", "staging", "--timeout", "5", "--", "true"]).code(2).run();
}

#[test]
fn run_requires_a_command() {
    local().args(["run", "--env", "staging"]).code(2).run();
}

#[test]
fn secrets_of_the_environment_are_masked_in_run_output() {
    let command = format!("echo db={}", crate::test::SECRET);
    for format in ["plain", "json", "human"] {
        let out = local().args(["run", "--env", "staging", "--output", format, "--", &command]).run();
        assert!(!out.stdout.contains(crate::test::SECRET), "{format}: {}", out.stdout);
        assert!(out.stdout.contains("db=***"), "{format}: {}", out.stdout);
    }
}
