//! `ferry logs` and `ferry exec` at the door (issue #14, items 2 and 3): every bad flag is exit
//! 2 with ferry's own message before any target is reached, and an exec over several targets
//! without a terminal needs `--yes`. What they do on targets is tested in the lab
//! (`deploy::day_two`).

use crate::test::Test;

#[test]
fn logs_since_is_a_duration_or_an_rfc3339_time() {
    Test::new()
        .args(["logs", "web", "--env", "staging", "--since", "yesterday"])
        .code(2)
        .stderr(
            "error: --since: \"yesterday\" is neither a duration nor an RFC 3339 time\n  \
             = help: write a duration back from now (30s, 10m, 2h, 7d) or a time (2026-12-07T01:00:00Z)\n",
        )
        .run();
    Test::new()
        .args(["logs", "web", "--env", "staging", "--since", "2026-12-07T01:00:00"])
        .code(2)
        .stderr(
            "error: --since: \"2026-12-07T01:00:00\" is neither a duration nor an RFC 3339 time\n  \
             = help: write a duration back from now (30s, 10m, 2h, 7d) or a time (2026-12-07T01:00:00Z)\n",
        )
        .run();
}

#[test]
fn logs_tail_is_a_number_of_lines() {
    Test::new()
        .args(["logs", "web", "--env", "staging", "--tail", "ten"])
        .code(2)
        .stderr(
            "error: --tail: \"ten\" is not a number of lines\n  \
             = help: write --tail 100 (leave it out for every line)\n",
        )
        .run();
}

#[test]
fn logs_and_exec_targets_must_match() {
    for command in [&["logs", "web"][..], &["exec", "web", "--yes"][..]] {
        Test::new()
            .args(command.iter().copied())
            .args(["--env", "staging", "--target", "nope"])
            .args(if command[0] == "exec" { &["--", "true"][..] } else { &[][..] }.iter().copied())
            .code(2)
            .stderr(
                "error: --limit \"nope\" does not match the only target of app \"web\" in environment \"staging\"\n  \
                 = help: targets of app \"web\" in environment \"staging\": stg-1\n",
            )
            .run();
    }
}

#[test]
fn exec_needs_a_command_and_valid_durations() {
    Test::new()
        .args(["exec", "web", "--env", "staging"])
        .code(2)
        .stderr(
            "error: the following required arguments were not provided:\n  <COMMAND>...\n\n\
             Usage: ferry exec --env <ENV> <APP> -- <COMMAND>...\n\nFor more information, try '--help'.\n",
        )
        .run();
    Test::new()
        .args(["exec", "web", "--env", "staging", "--timeout", "5", "--", "true"])
        .code(2)
        .stderr(
            "error: --timeout: invalid duration \"5\": write a number with a unit, like 500ms, 30s, 5m or 1h30m\n",
        )
        .run();
}

/// A command into the live containers of several targets is confirmed, like a deploy: without
/// a terminal that is `--yes`, else exit 4 before anything is recorded or reached.
#[test]
fn exec_on_several_targets_without_a_terminal_needs_yes() {
    let out = Test::new()
        .args(["exec", "web", "--env", "prod", "--", "rm", "-rf", "/tmp/cache"])
        .code(4)
        .stderr(
            "error: refusing to run `rm -rf /tmp/cache` in the web containers of 2 targets without a \
             confirmation: stdin is not a terminal\n  \
             = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run();
    assert_eq!(out.stdout, "");
}

/// A secret with a quote in it is still masked in exec's command line: the words are quoted for
/// the shell (`it's` becomes `'it'\''s'`), so masking the joined line alone found no secret and
/// the confirmation (like the audit record and the mirror line) showed it.
#[test]
fn exec_masks_a_secret_word_that_quoting_changes() {
    let secret = "it's-a-Secret-9";
    Test::new()
        .env("WEB_DATABASE_URL", secret)
        .never_prints(secret)
        .never_prints("'it'\\''s-a-Secret-9'")
        .args(["exec", "web", "--env", "prod", "--", "psql", secret])
        .code(4)
        .stderr(
            "error: refusing to run `psql '***'` in the web containers of 2 targets without a \
             confirmation: stdin is not a terminal\n  \
             = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run();
}
