//! A known secret value never appears in any output: plans (human, plain, JSON), vars, check,
//! error messages and trace-level debug logs.

use crate::test::{SECRET, Test};

/// The test inventory without its feed: `plan` without `--version` then plans the tag
/// `latest` offline (with a feed it would ask the feed for the newest version).
fn feedless() -> Test {
    Test::new().replace("ferry.toml", "feed = \"main\"\n", "")
}

fn assert_clean(what: &str, out: &crate::test::Output) {
    assert!(!out.stdout.contains(SECRET), "{what}: secret on stdout:\n{}", out.stdout);
    assert!(!out.stderr.contains(SECRET), "{what}: secret on stderr:\n{}", out.stderr);
}

#[test]
fn secret_never_printed_by_any_command_or_format() {
    let note = "note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n";
    let human_plan = "plan: web latest → prod: 2 targets, batches of 1, max_failures 0\n";
    let check = "ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n";
    let runs = |args: &[&str]| feedless().args(args.iter().copied());
    let tests = [
        runs(&["plan", "web", "--env", "prod"]).stdout_contains(human_plan).stderr(note),
        runs(&["plan", "web", "--env", "prod", "--output", "plain"])
            .stdout_contains("prod-1\t10.0.1.11\t")
            .stderr(note),
        runs(&["plan", "web", "--env", "prod", "--output", "json"]).stdout_json(),
        runs(&["vars", "web", "--env", "prod", "--target", "prod-1"])
            .stdout_contains("web in prod on prod-1\n"),
        runs(&["vars", "web", "--env", "prod", "--output", "json"]).stdout_json(),
        runs(&["check"]).stdout(check),
        runs(&["check", "--output", "json"]).stdout_json(),
        runs(&["-vvv", "plan", "web", "--env", "prod"])
            .stdout_contains(human_plan)
            .stderr_contains(" DEBUG secret resolved secret=\"DATABASE_URL\" ")
            .stderr_contains(note),
        runs(&["-vvv", "check"])
            .stdout(check)
            .stderr_contains(" TRACE target planned target=prod-2 config_hash="),
    ];
    for test in tests {
        let what = test.command_line();
        let out = test.run();
        assert_clean(&what, &out);
    }
}

#[test]
fn debug_logs_exist_and_mask_the_secret() {
    let out = feedless()
        .env("FERRY_LOG", "debug")
        .args(["plan", "web", "--env", "prod"])
        .stdout_contains("plan: web latest → prod: 2 targets, batches of 1, max_failures 0\n")
        .stderr_contains("secret resolved")
        .stderr_contains(" DEBUG plan built app=web environment=prod targets=2\n")
        .stderr_contains(
            "note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n",
        )
        .run();
    assert!(out.stderr.contains("secret resolved"), "debug logging must be on:\n{}", out.stderr);
    assert!(out.stderr.contains("value=***"), "{}", out.stderr);
    assert_clean("FERRY_LOG=debug", &out);
}

#[test]
fn secret_not_in_error_messages() {
    let broken = Test::new().replace("templates/web.j2", "-p {{ port }}", "-p {{ prot }}");
    let out = broken
        .args(["-vv", "plan", "web", "--env", "prod", "--output", "json"])
        .code(2)
        .stdout_json()
        .stderr_contains("error: undefined variable")
        .run();
    assert_clean("template error", &out);
    let newline = Test::new().env("WEB_DATABASE_URL", &format!("{SECRET}\nsecond"));
    let out = newline.args(["plan", "web", "--env", "prod"]).code(2).stderr_contains("newline").run();
    assert!(out.stderr.contains("newline"), "{}", out.stderr);
    assert_clean("secret with newline", &out);
}

#[test]
fn a_variable_equal_to_a_secret_is_masked_in_display() {
    let out = Test::new()
        .args([
            "plan",
            "web",
            "--env",
            "prod",
            "--version",
            "1.0",
            "--output",
            "json",
            "--set",
            &format!("port={SECRET}"),
        ])
        .stdout_json()
        .run();
    assert!(out.stdout.contains("***:8080"), "{}", out.stdout);
    assert_clean("var equal to secret", &out);
    let out = Test::new()
        .args(["vars", "web", "--env", "prod", "--set", &format!("port={SECRET}")])
        .stdout_contains("port       \"***\"    --set, overrides app web (ferry.toml:34)\n")
        .run();
    assert!(out.stdout.contains("\"***\""), "{}", out.stdout);
    assert_clean("vars with a var equal to secret", &out);
}
