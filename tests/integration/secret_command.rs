//! The `command = [...]` secret source from the command line: its value is used and never
//! shown; a failing or hanging program is exit 2 naming the secret and the program, within its
//! timeout; `check` does not run programs.

use crate::test::{SECRET, Test};

/// The test inventory without its feed, `DATABASE_URL` read by `command` (`extra` appended to
/// the source table), and `WEB_TOKEN` from the environment (a known secret for masking).
fn with_command(command: &str, extra: &str) -> Test {
    Test::new()
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .replace(
            "ferry.toml",
            "secrets = { DATABASE_URL = { env = \"WEB_DATABASE_URL\" } }",
            &format!("secrets = {{ DATABASE_URL = {{ command = {command}{extra} }}, TOKEN = {{ env = \"WEB_TOKEN\" }} }}"),
        )
        .env("WEB_TOKEN", "tok-Hq2-also-never-shown")
        .unset("WEB_DATABASE_URL")
}

#[test]
fn a_command_s_value_is_used_once_and_never_shown() {
    let log = tempfile::tempdir().unwrap();
    let runs = log.path().join("runs.log");
    let out = with_command(r#"["sh", "value.sh"]"#, "")
        .write("value.sh", &format!("echo run >> '{}'\nprintf '%s\\n' '{SECRET}'\n", runs.display()))
        .args(["plan", "web", "--env", "prod", "--output", "json"])
        .stdout_json()
        .never_prints("tok-Hq2-also-never-shown")
        .run();
    // Two targets, one value, one run of the program.
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert!(out.stdout.contains("\"DATABASE_URL\""), "{}", out.stdout);
}

#[test]
fn vars_names_the_command_as_the_source() {
    with_command(r#"["sh", "value.sh"]"#, "")
        .write("value.sh", &format!("printf '%s' '{SECRET}'\n"))
        .args(["vars", "web", "--env", "prod"])
        .stdout_contains("DATABASE_URL")
        .stdout_contains("command sh value.sh")
        .run();
}

#[test]
fn a_failing_command_is_exit_2_naming_the_secret_with_its_stderr_masked() {
    with_command(r#"["sh", "fail.sh"]"#, "")
        .write(
            "fail.sh",
            "printf 'half-of-the-value'\necho \"vault: token $WEB_TOKEN expired\" >&2\nexit 3\n",
        )
        .args(["plan", "web", "--env", "prod"])
        .code(2)
        .never_prints("tok-Hq2-also-never-shown")
        .never_prints("half-of-the-value")
        .stderr(
            "error: secret DATABASE_URL: command sh exited 3: vault: token *** expired
  --> ferry.toml:35:28
   |
35 | secrets = { DATABASE_URL = { command = [\"sh\", \"fail.sh\"] }, TOKEN = { env = \"WEB_TOKEN\" } }
   |                            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = help: run it by hand in the inventory's folder, as the user that runs ferry; it may take 30s (`timeout`)
",
        )
        .run();
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout_exit_2() {
    let started = std::time::Instant::now();
    with_command(r#"["sleep", "60"]"#, r#", timeout = "1s""#)
        .args(["plan", "web", "--env", "prod"])
        .code(2)
        .stderr_contains("error: secret DATABASE_URL: command sleep was still running after 1s: killed with its process group\n")
        .stderr_contains("it may take 1s (`timeout`)")
        .run();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn a_program_that_is_not_there_and_a_bad_timeout_are_exit_2() {
    with_command(r#"["ferry-no-such-secret-tool", "read", "x"]"#, "")
        .args(["plan", "web", "--env", "prod"])
        .code(2)
        .stderr_contains("error: secret DATABASE_URL: command ferry-no-such-secret-tool cannot be started: No such file or directory (os error 2)\n")
        .run();
    with_command(r#"["op", "read", "op://v/x"]"#, r#", timeout = "soon""#)
        .args(["check"])
        .code(2)
        .stderr_contains("error: secret command timeout: invalid duration \"soon\"")
        .stderr_contains("--> ferry.toml:35:28\n")
        .run();
    with_command("[]", "")
        .args(["check"])
        .code(2)
        .stderr_contains("`command` must be a list of strings, the program first")
        .run();
}

#[test]
fn check_does_not_run_commands() {
    let log = tempfile::tempdir().unwrap();
    let runs = log.path().join("runs.log");
    let test = with_command(r#"["sh", "value.sh"]"#, "")
        .write("value.sh", &format!("echo run >> '{}'\necho x\n", runs.display()));
    test.args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .stderr("note: 1 secret comes from a command, which check does not run (plan and deploy do)\n")
        .run();
    assert!(!runs.exists(), "check ran the command");
}

#[test]
fn a_command_that_fails_for_masking_is_a_note_and_the_command_goes_on() {
    // `logs` runs the environment's secret commands only to mask their values; a failure is
    // said (masked), not silent. The targets are on loopback, port 1: nothing listens there.
    let out = with_command(r#"["sh", "fail.sh"]"#, "")
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
        .write("fail.sh", "echo \"vault: token $WEB_TOKEN expired\" >&2\nexit 3\n")
        .args(["logs", "web", "--env", "prod"])
        .code(1)
        .never_prints("tok-Hq2-also-never-shown")
        .stderr_contains(
            "note: secret DATABASE_URL: command sh exited 3: vault: token *** expired; its value is not masked in this output\n",
        )
        .run();
    assert_eq!(out.stderr.matches("note: secret DATABASE_URL").count(), 1, "{}", out.stderr);
}
