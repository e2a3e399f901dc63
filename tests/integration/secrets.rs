//! A known secret value never appears in any output: plans (human, plain, JSON), vars, check,
//! error messages and trace-level debug logs.

use crate::test::{SECRET, Test};

fn assert_clean(what: &str, out: &crate::test::Output) {
    assert!(!out.stdout.contains(SECRET), "{what}: secret on stdout:\n{}", out.stdout);
    assert!(!out.stderr.contains(SECRET), "{what}: secret on stderr:\n{}", out.stderr);
}

#[test]
fn secret_never_printed_by_any_command_or_format() {
    let runs: &[&[&str]] = &[
        &["plan", "web", "--env", "prod"],
        &["plan", "web", "--env", "prod", "--output", "plain"],
        &["plan", "web", "--env", "prod", "--output", "json"],
        &["vars", "web", "--env", "prod", "--target", "prod-1"],
        &["vars", "web", "--env", "prod", "--output", "json"],
        &["check"],
        &["check", "--output", "json"],
        &["-vvv", "plan", "web", "--env", "prod"],
        &["-vvv", "check"],
    ];
    for args in runs {
        let out = Test::new().args(args.iter().copied()).run();
        assert_clean(&args.join(" "), &out);
    }
}

#[test]
fn debug_logs_exist_and_mask_the_secret() {
    let out = Test::new().env("FERRY_LOG", "debug").args(["plan", "web", "--env", "prod"]).run();
    assert!(out.stderr.contains("secret resolved"), "debug logging must be on:\n{}", out.stderr);
    assert!(out.stderr.contains("value=***"), "{}", out.stderr);
    assert_clean("FERRY_LOG=debug", &out);
}

#[test]
fn secret_not_in_error_messages() {
    let broken = Test::new().replace("templates/web.j2", "-p {{ port }}", "-p {{ prot }}");
    let out = broken.args(["-vv", "plan", "web", "--env", "prod", "--output", "json"]).code(2).run();
    assert_clean("template error", &out);
    let newline = Test::new().env("WEB_DATABASE_URL", &format!("{SECRET}\nsecond"));
    let out = newline.args(["plan", "web", "--env", "prod"]).code(2).run();
    assert!(out.stderr.contains("newline"), "{}", out.stderr);
    assert_clean("secret with newline", &out);
}

#[test]
fn a_variable_equal_to_a_secret_is_masked_in_display() {
    let out = Test::new()
        .args(["plan", "web", "--env", "prod", "--output", "json", "--set", &format!("port={SECRET}")])
        .run();
    assert!(out.stdout.contains("***:8080"), "{}", out.stdout);
    assert_clean("var equal to secret", &out);
    let out = Test::new().args(["vars", "web", "--env", "prod", "--set", &format!("port={SECRET}")]).run();
    assert!(out.stdout.contains("\"***\""), "{}", out.stdout);
    assert_clean("vars with a var equal to secret", &out);
}
