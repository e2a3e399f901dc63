//! `ferry vars`: every value with the layer it came from.

use crate::test::{SECRET, Test};

#[test]
fn shows_provenance_per_layer() {
    let out =
        Test::new().args(["vars", "web", "--env", "prod", "--target", "prod-2", "--set", "extra=1"]).run();
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn without_target_notes_target_overrides() {
    let out = Test::new().args(["vars", "web", "--env", "prod"]).run();
    assert!(out.stdout.contains("port       8080"), "{}", out.stdout);
    assert!(out.stdout.contains("add --target NAME"), "{}", out.stdout);
}

#[test]
fn json_has_layers_and_masked_secrets() {
    let out = Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["vars", "web", "--env", "staging", "--output", "json"])
        .run();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    assert_eq!(json["vars"]["log_level"]["value"], "info");
    assert_eq!(json["vars"]["log_level"]["origin"]["layer"], "environment");
    assert_eq!(json["vars"]["log_level"]["overrides"][0]["layer"], "defaults");
    assert_eq!(json["secrets"]["DATABASE_URL"]["value"], "***");
    assert_eq!(json["secrets"]["DATABASE_URL"]["available"], false);
    assert!(!out.stdout.contains(SECRET));
}

#[test]
fn unknown_target_is_exit_2() {
    let out = Test::new().args(["vars", "web", "--env", "prod", "--target", "prod-3"]).code(2).run();
    assert!(out.stderr.contains("unknown target \"prod-3\""), "{}", out.stderr);
}
