//! Flags are values at the door: a bad flag is exit 2 before anything is recorded, locked or
//! connected (issue: a bad `--lock-ttl` used to leave a `run_started` record with no end).

use crate::test::Test;

/// Every mutating command with each of its duration flags set to nonsense: exit 2, the message
/// names the flag, and the audit log is byte-for-byte what it was.
#[test]
fn a_bad_flag_changes_no_record() {
    let dir_keeper = Test::new().into_dir();
    let dir = dir_keeper.path().to_path_buf();
    let ferry = |args: &[&str]| {
        Test::bare()
            .args(["-i", &dir.join("ferry.toml").display().to_string()])
            .args(args.iter().copied())
            .env("FERRY_STATE_DIR", &dir.join(".ferry").display().to_string())
            .env("WEB_DATABASE_URL", crate::test::SECRET)
    };
    ferry(&["audit", "bench", "--records", "3"]).stdout_contains("3 appends to ").run();
    let log = dir.join(".ferry/audit.jsonl");
    let before = std::fs::read(&log).unwrap();
    let bad: [(&str, &[&str]); 7] = [
        ("--lock-ttl", &["run", "--env", "prod", "--lock", "--lock-ttl", "bogus", "--", "true"]),
        ("--lock-wait", &["run", "--env", "prod", "--lock", "--lock-wait", "bogus", "--", "true"]),
        ("--timeout", &["run", "--env", "prod", "--timeout", "bogus", "--", "true"]),
        (
            "--lock-ttl",
            &["deploy", "web", "--env", "prod", "--version", "1.0", "--yes", "--lock-ttl", "bogus"],
        ),
        (
            "--connect-timeout",
            &["deploy", "web", "--env", "prod", "--version", "1.0", "--yes", "--connect-timeout", "5"],
        ),
        ("--lock-wait", &["rollback", "web", "--env", "prod", "--yes", "--lock-wait", "1y"]),
        ("invalid --set", &["promote", "web", "--to", "prod", "--yes", "--set", "no-equals"]),
    ];
    for (flag, args) in bad {
        let out = ferry(args).code(2).stderr_contains(&format!("error: {flag}")).run();
        assert!(out.stderr.starts_with("error: "), "{args:?}: {}", out.stderr);
        assert_eq!(std::fs::read(&log).unwrap(), before, "{args:?} changed the audit log");
    }
    drop(dir_keeper);
}

/// Machines asked for JSON get the refusal as JSON too, even though the flags did not parse.
#[test]
fn a_bad_flag_with_output_json_is_a_json_error() {
    let out = Test::new()
        .args(["run", "--env", "prod", "--output", "json", "--timeout", "bogus", "--", "true"])
        .code(2)
        .stdout_json()
        .stderr_contains("error: --timeout: invalid duration \"bogus\"")
        .run();
    let json = out.json();
    assert_eq!((json["type"].as_str(), json["exit_code"].as_i64()), (Some("error"), Some(2)), "{json}");
    assert!(
        json["errors"][0]["message"].as_str().unwrap().starts_with("--timeout: invalid duration"),
        "{json}"
    );
}
