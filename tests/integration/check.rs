//! `ferry check` on good inventories, including the shipped example.

use crate::test::{SECRET, Test, repo};

#[test]
fn example_inventory_checks_clean() {
    let example = repo().join("inventories/example.toml").display().to_string();
    Test::new()
        .env("WORKER_QUEUE_PASSWORD", "q")
        .args(["check", "-i", &example, "--deny-warnings"])
        .stdout(&format!("{example}: ok: 2 apps × 3 environments, 6 targets, 9 renders, 0 warnings\n"))
        .run();
}

#[test]
fn example_inventory_checks_without_any_secret_set() {
    let example = repo().join("inventories/example.toml").display().to_string();
    // stderr points at lines of the example, which its edits move: checked by the messages.
    Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["check", "-i", &example])
        .stdout(&format!("{example}: ok: 2 apps × 3 environments, 6 targets, 9 renders, 2 warnings\n"))
        .stderr_contains(
            "warning: secret DATABASE_URL: environment variable WEB_DATABASE_URL is not set (deploying web \
             to dev, web to staging, web to prod from here would fail)\n",
        )
        .stderr_contains(
            "warning: secret QUEUE_PASSWORD: environment variable WORKER_QUEUE_PASSWORD is not set (deploying \
             worker to dev, worker to staging, worker to prod from here would fail)\n",
        )
        .stderr_contains(
            "  = help: export WORKER_QUEUE_PASSWORD in the environment that runs ferry (CI secret, cron \
             environment file)\n",
        )
        .run();
}

#[test]
fn fixture_checks_and_counts_renders() {
    Test::new()
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .stderr("")
        .run();
}

#[test]
fn inventory_from_env_var_and_flag() {
    let test = Test::new().write("other/inv.toml", "");
    let test = test.replace("other/inv.toml", "", "[environments]\n");
    test.env("FERRY_INVENTORY", "other/inv.toml")
        .args(["check"])
        .stdout("other/inv.toml: ok: 0 apps × 0 environments, 0 targets, 0 renders, 0 warnings\n")
        .run();
}

#[test]
fn unused_variables_and_safe_are_warnings_not_errors() {
    let test = Test::new()
        .replace("ferry.toml", "vars = { port = 8080 }", "vars = { port = 8080, colour = \"blue\" }")
        .replace("templates/web.j2", "{{ image }}", "{{ image|safe }}");
    let out = test
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 2 warnings\n")
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("check_warnings", out.stderr);
}

#[test]
fn deny_warnings_fails_with_exit_2() {
    let test = Test::new().replace(
        "ferry.toml",
        "vars = { port = 8080 }",
        "vars = { port = 8080, colour = \"blue\" }",
    );
    let out = test
        .args(["check", "--deny-warnings"])
        .code(2)
        .stdout(
            "ferry.toml: failed (warnings denied): 1 app × 2 environments, 3 targets, 3 renders, 1 warning\n",
        )
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn json_report_has_schema_and_counts() {
    let out = Test::new().args(["check", "--output", "json"]).stdout_json().run();
    let json = out.json();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["ok"], true);
    assert_eq!(json["renders"], 3);
    assert_eq!(
        json,
        serde_json::json!({"schema": 1, "type": "check", "ok": true, "inventory": "ferry.toml", "apps": 1,
            "environments": 2, "targets": 3, "renders": 3, "warnings": []})
    );
    assert!(!out.stdout.contains(SECRET));
}
