//! `ferry check` on good inventories, including the shipped example.

use crate::test::{SECRET, Test, repo};

#[test]
fn example_inventory_checks_clean() {
    let example = repo().join("inventories/example.toml");
    let out = Test::new()
        .env("WORKER_QUEUE_PASSWORD", "q")
        .args(["check", "-i", example.to_str().unwrap_or_default(), "--deny-warnings"])
        .run();
    assert!(out.stdout.contains(": ok: 2 apps × 3 environments"), "{}", out.stdout);
    assert!(out.stdout.contains("0 warnings"), "{}", out.stdout);
}

#[test]
fn example_inventory_checks_without_any_secret_set() {
    let example = repo().join("inventories/example.toml");
    let out = Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["check", "-i", example.to_str().unwrap_or_default()])
        .run();
    assert!(out.stdout.contains(": ok: 2 apps × 3 environments"), "{}", out.stdout);
    assert!(out.stderr.contains("WORKER_QUEUE_PASSWORD is not set"), "{}", out.stderr);
}

#[test]
fn fixture_checks_and_counts_renders() {
    let out = Test::new().args(["check"]).run();
    assert_eq!(out.stdout, "ferry.toml: ok: 1 apps × 2 environments, 3 targets, 3 renders, 0 warnings\n");
    assert_eq!(out.stderr, "");
}

#[test]
fn inventory_from_env_var_and_flag() {
    let test = Test::new().write("other/inv.toml", "");
    let test = test.replace("other/inv.toml", "", "[environments]\n");
    let out = test.env("FERRY_INVENTORY", "other/inv.toml").args(["check"]).run();
    assert!(out.stdout.starts_with("other/inv.toml: ok: 0 apps"), "{}", out.stdout);
}

#[test]
fn unused_variables_and_safe_are_warnings_not_errors() {
    let test = Test::new()
        .replace("ferry.toml", "vars = { port = 8080 }", "vars = { port = 8080, colour = \"blue\" }")
        .replace("templates/web.j2", "{{ image }}", "{{ image|safe }}");
    let out = test.args(["check"]).run();
    assert!(out.stdout.contains("2 warnings"), "{}", out.stdout);
    insta::assert_snapshot!("check_warnings", out.stderr);
}

#[test]
fn deny_warnings_fails_with_exit_2() {
    let test = Test::new().replace(
        "ferry.toml",
        "vars = { port = 8080 }",
        "vars = { port = 8080, colour = \"blue\" }",
    );
    let out = test.args(["check", "--deny-warnings"]).code(2).run();
    assert!(out.stdout.contains("failed (warnings denied)"), "{}", out.stdout);
}

#[test]
fn json_report_has_schema_and_counts() {
    let out = Test::new().args(["check", "--output", "json"]).run();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["ok"], true);
    assert_eq!(json["renders"], 3);
    assert!(!out.stdout.contains(SECRET));
}
