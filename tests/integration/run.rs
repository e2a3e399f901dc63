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
    // The summary's TIME column changes from run to run.
    let out = local()
        .args(["run", "--env", "staging", "--output", "plain", "--", "echo out; echo err >&2"])
        .stdout_contains("stg-1 | out\n")
        .stdout_contains("stg-1 | err\n")
        .stdout_contains("\nTARGET  STATUS  EXIT    TIME  DETAIL\nstg-1   ok      exit 0  ")
        .run();
    assert!(out.stdout.contains("stg-1 | out\n"), "{}", out.stdout);
    assert!(out.stdout.contains("stg-1 | err\n"), "{}", out.stdout);
    let out = local()
        .args(["run", "--env", "staging", "--output", "json", "--", "exit 5"])
        .code(1)
        .stdout_json_lines()
        .run();
    let finished: Vec<serde_json::Value> =
        out.json_lines().into_iter().filter(|e| e["type"] == "target_finished").collect();
    assert_eq!(finished.len(), 1, "{}", out.stdout);
    assert_eq!(finished[0]["exit_code"], 5);
    assert_eq!(finished[0]["status"], "failed");
}

#[test]
fn local_deadline_and_signal() {
    local()
        .args(["run", "--env", "staging", "--timeout", "300ms", "--", "sleep 5"])
        .code(1)
        .stdout_contains("stg-1 ! still running after 300ms: killed\n")
        .stdout_contains("still running after 300ms: killed")
        .run();
    local()
        .args(["run", "--env", "staging", "--", "kill -TERM $$"])
        .code(1)
        .stdout_contains("stg-1   failed  killed by SIGTERM  ")
        .stdout_contains("killed by SIGTERM")
        .run();
}

#[test]
fn unknown_role_and_limit_are_input_errors() {
    let out = local()
        .args(["run", "--env", "staging", "--role", "wbe", "--", "true"])
        .code(2)
        .stderr(
            "error: no target of environment \"staging\" has role \"wbe\"\n  = help: did you mean \"web\"?\n",
        )
        .run();
    assert!(out.stderr.contains("no target of environment \"staging\" has role \"wbe\""), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean \"web\"?"), "{}", out.stderr);
    local()
        .args(["run", "--env", "staging", "--limit", "nope", "--", "true"])
        .code(2)
        .stderr(
            "error: --limit \"nope\" does not match the only target of environment \"staging\"\n  \
             = help: targets of environment \"staging\": stg-1\n",
        )
        .run();
    // Flag parsing moves into clap (issue #11), which words this message its own way.
    local()
        .args(["run", "--env", "staging", "--timeout", "5", "--", "true"])
        .code(2)
        .stderr_contains("--timeout")
        .stderr_contains("5")
        .run();
}

#[test]
fn run_requires_a_command() {
    local()
        .args(["run", "--env", "staging"])
        .code(2)
        .stderr(
            "error: the following required arguments were not provided:\n  <COMMAND>...\n\n\
             Usage: ferry run --env <ENV> -- <COMMAND>...\n\nFor more information, try '--help'.\n",
        )
        .run();
}

#[test]
fn secrets_of_the_environment_are_masked_in_run_output() {
    let command = format!("echo db={}", crate::test::SECRET);
    for format in ["plain", "json", "human"] {
        let test = local().args(["run", "--env", "staging", "--output", format, "--", &command]);
        let out =
            if format == "json" { test.stdout_json_lines() } else { test.stdout_contains("db=***") }.run();
        assert!(!out.stdout.contains(crate::test::SECRET), "{format}: {}", out.stdout);
        assert!(out.stdout.contains("db=***"), "{format}: {}", out.stdout);
    }
}
