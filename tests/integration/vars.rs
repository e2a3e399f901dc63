//! `ferry vars`: every value with the layer it came from.

use crate::test::{SECRET, Test};

#[test]
fn shows_provenance_per_layer() {
    let out = Test::new()
        .args(["vars", "web", "--env", "prod", "--target", "prod-2", "--set", "extra=1"])
        .stdout_snapshot()
        .run();
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn without_target_notes_target_overrides() {
    let out = Test::new()
        .args(["vars", "web", "--env", "prod"])
        .stdout(
            "web in prod\n\nVARIABLE   VALUE    FROM\nlog_level  \"debug\"  defaults (ferry.toml:3)\n\
             port       8080     app web (ferry.toml:34)\n\nCONTAINER ENV  TEMPLATE\nLOG_LEVEL      {{ log_level }}\n\n\
             SECRET        VALUE  STATUS     SOURCE\nDATABASE_URL  ***    available  environment variable WEB_DATABASE_URL\n\n\
             note: some targets set their own variables; add --target NAME to see them\n",
        )
        .run();
    assert!(out.stdout.contains("port       8080"), "{}", out.stdout);
    assert!(out.stdout.contains("add --target NAME"), "{}", out.stdout);
}

#[test]
fn json_has_layers_and_masked_secrets() {
    let out = Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["vars", "web", "--env", "staging", "--output", "json"])
        .stdout_json()
        .run();
    let json = out.json();
    assert_eq!(json["vars"]["log_level"]["value"], "info");
    assert_eq!(json["vars"]["log_level"]["origin"]["layer"], "environment");
    assert_eq!(json["vars"]["log_level"]["overrides"][0]["layer"], "defaults");
    assert_eq!(json["secrets"]["DATABASE_URL"]["value"], "***");
    assert_eq!(json["secrets"]["DATABASE_URL"]["available"], false);
    assert!(!out.stdout.contains(SECRET));
}

#[test]
fn unknown_target_is_exit_2() {
    let out = Test::new()
        .args(["vars", "web", "--env", "prod", "--target", "prod-3"])
        .code(2)
        .stderr("error: unknown target \"prod-3\"\n  = help: did you mean \"prod-1\"?\n")
        .run();
    assert!(out.stderr.contains("unknown target \"prod-3\""), "{}", out.stderr);
}
