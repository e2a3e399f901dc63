//! The documented contract, kept (issue 14, items 7 to 9): exit codes and hints for unknown tags
//! and ids, id prefixes, `history --output plain`, what `latest` means to `plan`, empty secrets,
//! and the messages a user reads twice. Whole outputs are snapshotted; the parts that change from
//! run to run (ids, times, hashes, this machine's user) are replaced by `<…>` placeholders first,
//! by [`redact`], so everything else is still checked byte for byte.
//!
//! None of these runs reaches a target: the commands fail, or stop, before any connection, and
//! the inventories name loopback addresses where a bug could make them try.

use crate::test::{SECRET, Test};

/// Replaces what differs between runs by placeholders: UUIDs, times, config hashes, digests.
fn redact(text: &str) -> String {
    let rules = [
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>"),
        (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?", "<time>"),
        (r"sha256:[0-9a-f]{12,64}", "sha256:<digest>"),
        (r"\b[0-9a-f]{12}\b|\b[0-9a-f]{64}\b", "<hash>"),
    ];
    rules.iter().fold(text.to_string(), |text, (pattern, by)| {
        regex_lite::Regex::new(pattern).unwrap().replace_all(&text, *by).into_owned()
    })
}

/// The test inventory with its targets on loopback addresses (port 1: nothing listens), so a
/// command that wrongly went on to connect would fail at once without leaving this machine.
fn loopback() -> Test {
    Test::new()
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
}

/// [`loopback`] without the app's feed.
fn feedless() -> Test {
    loopback().replace("ferry.toml", "feed = \"main\"\n", "")
}

// ---- 7: what `latest` means to plan, and the feed's word on a tag ----

#[test]
fn plan_without_a_version_and_without_a_feed_plans_the_tag_latest_and_says_so() {
    for args in [
        &["plan", "web", "--env", "staging"][..],
        &["plan", "web", "--env", "staging", "--version", "latest"],
    ] {
        let out = feedless()
            .args(args.iter().copied())
            .stdout_snapshot()
            .stderr("note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n")
            .run();
        insta::assert_snapshot!("feedless_latest_plan", redact(&out.stdout));
    }
}

#[test]
fn plan_without_a_version_means_latest_and_asks_the_feed() {
    // The feed (127.0.0.1:5000) is down: `latest` cannot be known, with or without the word.
    let down = "error: registry 127.0.0.1:5000 cannot be reached: ";
    let without = loopback().args(["plan", "web", "--env", "staging"]).code(1).stderr_contains(down).run();
    let with = loopback()
        .args(["plan", "web", "--env", "staging", "--version", "latest"])
        .code(1)
        .stderr_contains(down)
        .run();
    assert_eq!(without.stderr, with.stderr, "no --version and --version latest are one thing");
    // Input problems are found first, offline: exit 2 whether or not the feed answers.
    loopback()
        .args(["plan", "web", "--env", "prdo"])
        .code(2)
        .stderr_contains("error: unknown environment \"prdo\"")
        .run();
}

#[test]
fn plan_with_a_tag_notes_a_feed_it_cannot_reach_and_plans_offline() {
    let note = "note: feed main cannot be asked (registry 127.0.0.1:5000 cannot be reached: ";
    let out = loopback()
        .args(["plan", "web", "--env", "staging", "--version", "1.0"])
        .stdout_snapshot()
        .stderr_contains(note)
        .stderr_contains("): whether it has 1.0 is not checked\n")
        .run();
    insta::assert_snapshot!(redact(&out.stdout));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let json = loopback()
        .args(["plan", "web", "--env", "staging", "--version", "1.0", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert_eq!(json["feed"]["feed"], "main");
    assert_eq!(json["feed"]["tag"], "1.0");
    assert!(json["feed"]["digest"].is_null(), "{json}");
    assert!(json["feed"]["error"].as_str().unwrap().contains("cannot be reached"), "{json}");
    assert_eq!(json["targets"][0]["target"], "stg-1", "still a whole plan");
}

// ---- 7: ids: unknown, ambiguous, too short, and unique prefixes ----

/// A folder whose audit log holds two deployments of web to staging, both failed (so a rollback
/// that resolves one refuses it, naming its whole id, and never connects anywhere).
fn two_deployments() -> tempfile::TempDir {
    let folder = feedless().into_dir();
    let log = ferry::audit::Log::new(
        &folder.path().join(".ferry"),
        ferry::audit::Actor { user: "ann".into(), host: "laptop".into(), via: "terminal".into(), job: None },
    );
    for (run, version) in
        [("0193aaaa-1111-7000-8000-000000000001", "1.0"), ("0193aaaa-2222-7000-8000-000000000002", "1.1")]
    {
        log.append(ferry::audit::Entry {
            kind: "run_finished".into(),
            run: run.into(),
            command: "deploy".into(),
            app: Some("web".into()),
            environment: Some("staging".into()),
            version: Some(version.into()),
            targets: vec!["stg-1".into()],
            detail: serde_json::json!({ "ok": 0, "failed": 1, "skipped": 0, "interrupted": false, "deployment": {
                "image": format!("acme/web:{version}"), "succeeded": false, "targets": {} } }),
            ..ferry::audit::Entry::default()
        })
        .unwrap();
    }
    folder
}

/// `ferry -i FOLDER/ferry.toml ARGS` with the test secret.
fn in_folder(folder: &tempfile::TempDir, args: &[&str]) -> Test {
    let inventory = folder.path().join("ferry.toml").display().to_string();
    Test::bare().env("WEB_DATABASE_URL", SECRET).args(["-i", &inventory]).args(args.iter().copied())
}

#[test]
fn rollback_to_an_unknown_id_is_exit_2_pointing_to_history() {
    let folder = two_deployments();
    let out = in_folder(&folder, &["rollback", "web", "--env", "staging", "--to", "0193ffff", "--yes"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn rollback_takes_a_unique_prefix_and_refuses_ambiguous_and_short_ones() {
    let folder = two_deployments();
    let rollback = |to: &str| {
        in_folder(&folder, &["rollback", "web", "--env", "staging", "--to", to, "--yes"])
            .code(2)
            .stderr_snapshot()
    };
    // The prefix history shows resolves to the whole id (this deployment failed, so it is refused
    // by its whole name, before anything connects).
    insta::assert_snapshot!("prefix_resolved", rollback("0193aaaa-2222").run().stderr);
    insta::assert_snapshot!("prefix_ambiguous", rollback("0193aaaa").run().stderr);
    insta::assert_snapshot!("prefix_too_short", rollback("019").run().stderr);
}

#[test]
fn history_plain_is_tab_separated_without_a_header_and_human_shows_the_version() {
    let folder = two_deployments();
    let plain = in_folder(&folder, &["history", "--output", "plain"]).stdout_snapshot().run();
    insta::assert_snapshot!("history_plain", redact(&plain.stdout));
    assert!(plain.stdout.lines().all(|l| l.split('\t').count() == 11), "{}", plain.stdout);
    let human = in_folder(&folder, &["history"]).stdout_snapshot().run();
    insta::assert_snapshot!("history_human", redact(&human.stdout));
}

// ---- 8: empty secrets ----

#[test]
fn an_empty_secret_is_refused_naming_it_and_the_likely_cause() {
    let out = feedless()
        .env("WEB_DATABASE_URL", "")
        .args(["plan", "web", "--env", "prod"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("empty_secret_plan", out.stderr);
    // A deploy refuses it the same way, before any connection (exit 2, not a target failure).
    let out = feedless()
        .env("WEB_DATABASE_URL", "")
        .args(["deploy", "web", "--env", "prod", "--version", "1.0", "--yes"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("empty_secret_deploy", out.stderr);
}

#[test]
fn an_empty_secret_file_is_refused_too() {
    let out = feedless()
        .replace("ferry.toml", "{ env = \"WEB_DATABASE_URL\" }", "{ file = \"db_url\" }")
        .write("db_url", "\n")
        .args(["plan", "web", "--env", "prod"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn vars_shows_an_empty_secret_as_empty() {
    let out = feedless()
        .env("WEB_DATABASE_URL", "")
        .args(["vars", "web", "--env", "staging"])
        .stdout_snapshot()
        .run();
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn allow_empty_permits_an_empty_secret() {
    feedless()
        .replace(
            "ferry.toml",
            "{ env = \"WEB_DATABASE_URL\" }",
            "{ env = \"WEB_DATABASE_URL\", allow_empty = true }",
        )
        .env("WEB_DATABASE_URL", "")
        .args(["plan", "web", "--env", "prod", "--version", "1.0", "--output", "plain"])
        .stdout_contains("prod-1\t127.0.0.1\t")
        .run();
}

// ---- 9: messages ----

#[test]
fn promote_to_the_first_phase_says_there_is_no_earlier_phase() {
    let out = feedless()
        .replace("ferry.toml", "[defaults]", "[lifecycle]\nphases = [\"staging\", \"prod\"]\n\n[defaults]")
        .args(["promote", "web", "--to", "staging", "--yes"])
        .code(4)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn an_unquoted_ip_suggests_quoting() {
    let out = Test::new()
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = 10.0.0.11")
        .args(["check"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn the_quoting_hint_quotes_the_value_alone() {
    // A comment after the value, and a value inside an inline table: the hint quotes the address
    // only, not the comment or the rest of the line.
    let commented = Test::new()
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = 10.0.0.11  # the primary")
        .args(["check"])
        .code(2)
        .stderr_contains(
            "= help: quote the value: host = \"10.0.0.11\" (unquoted, TOML reads it as a number)\n",
        )
        .run();
    assert!(!commented.stderr.contains("primary\""), "{}", commented.stderr);
    Test::new()
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets]\nstg-1 = { host = 10.0.0.11 }",
        )
        .args(["check"])
        .code(2)
        .stderr_contains(
            "= help: quote the value: host = \"10.0.0.11\" (unquoted, TOML reads it as a number)\n",
        )
        .run();
}

#[test]
fn an_unclosed_for_names_the_line_where_it_opens() {
    // The `for` opens on line 3; minijinja itself points at the end of the template (line 5).
    let template = "docker run --restart unless-stopped\n  -p {{ port }}:8080\n  {% for k, v in container_env|items %}\n  {% if k %}-e {{ k }}={{ v }}{% endif %}\n  {{ image }}\n";
    let out = Test::new().write("templates/web.j2", template).args(["check"]).code(2).stderr_snapshot().run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn an_unclosed_for_is_named_when_the_template_ends_in_a_wide_character() {
    // Tags inside a comment (one of them a `{%` never closed) and a template ending in a
    // character wider than one byte: the `for` is named (not the comment's `if`), and finding it
    // does not cut that character in half.
    let template = "docker run\n  {% for k in container_env %}{# an {% if x %} and a {% in a comment #}\n  {{ image }} 日";
    let out = Test::new().write("templates/web.j2", template).args(["check"]).code(2).stderr_snapshot().run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn a_lock_taken_by_hand_is_described_as_held_by_hand() {
    let folder = Test::new()
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets.stg-1]\ntransport = \"local\"",
        )
        .into_dir();
    // A local target's lock lives in the working folder: every command runs in the same one.
    let here = folder.path();
    let acquire = ["lock", "acquire", "--env", "staging", "--message", "release freeze", "--ttl", "2h"];
    in_folder(&folder, &acquire).stdout_contains("locked staging until ").run_in(here);
    let out = in_folder(&folder, &["run", "--env", "staging", "--lock", "--", "true"])
        .code(3)
        .stderr_snapshot()
        .run_in(here);
    let holder = regex_lite::Regex::new(r"by hand: (.*?) took it").unwrap();
    let out = holder.replace(&out.stderr, "by hand: <holder> took it").into_owned();
    insta::assert_snapshot!(redact(&out));
    in_folder(&folder, &["lock", "release", "--env", "staging"]).stdout_contains("released").run_in(here);
}

#[test]
fn one_target_is_one_target() {
    let out = feedless()
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
    assert!(out.stdout.contains("1 app ×"));
    feedless()
        .args(["plan", "web", "--env", "staging", "--version", "1.0"])
        .stdout_contains("plan: web 1.0 → staging: 1 target, all at once, max_failures 0\n")
        .run();
}

/// The parts only the lab can show: a real registry's word on a tag, a real host's key.
#[cfg(feature = "lab")]
mod lab_tests {
    use super::redact;
    use crate::lab::lab;
    use crate::test::Test;

    /// An inventory in `dir` with the lab's host h1 in environment `c-…`, the lab registry as
    /// feed `lab`, and two apps of it: `web` (ferry/web) and `many` (ferry/many, narrowed to one
    /// version). Returns the inventory's path.
    fn inventory(dir: &std::path::Path) -> String {
        let lab = lab();
        let text = format!(
            "[defaults]\nuser = \"root\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n\n\
             [targets.h1]\nhost = \"10.200.0.11\"\n\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n\
             [environments.c-feed]\ntargets = [\"h1\"]\n\n\
             [apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\n\
             [apps.many]\nfeed = \"lab\"\nimage = \"ferry/many\"\ntemplate = \"web.j2\"\n\
             versions = {{ pattern = \"21\\\\.0\\\\.0\\\\.7\" }}\n",
            key = lab.dir.join("ssh/client_key").display(),
            known = dir.join("known_hosts").display(),
        );
        std::fs::write(dir.join("ferry.toml"), text).unwrap();
        std::fs::write(dir.join("known_hosts"), "").unwrap();
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        std::fs::write(dir.join("templates/web.j2"), "docker run -p 18240:80 {{ image }}\n").unwrap();
        dir.join("ferry.toml").display().to_string()
    }

    fn ferry(dir: &std::path::Path, args: &[&str]) -> Test {
        Test::bare()
            .env("FERRY_STATE_DIR", &dir.join("state").display().to_string())
            .args(["-i", &inventory(dir)])
            .args(args.iter().copied())
    }

    #[test]
    fn a_tag_the_feed_does_not_have_is_exit_2_pointing_to_versions() {
        let dir = tempfile::tempdir().unwrap();
        let plan = ferry(dir.path(), &["plan", "web", "--env", "c-feed", "--version", "9.9.9"])
            .code(2)
            .stderr_snapshot()
            .run();
        insta::assert_snapshot!("unknown_tag_plan", plan.stderr);
        // deploy says the same, before it locks or connects anything.
        let deploy = ferry(dir.path(), &["deploy", "web", "--env", "c-feed", "--version", "9.9.9", "--yes"])
            .code(2)
            .stderr_snapshot()
            .run();
        assert_eq!(deploy.stderr, plan.stderr);
    }

    #[test]
    fn plan_says_the_feed_has_the_tag_and_plans_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let out = ferry(dir.path(), &["plan", "web", "--env", "c-feed", "--version", "1.0"])
            .stdout_contains("plan: web 1.0 → c-feed: 1 target, all at once, max_failures 0\n")
            .stdout_contains("image: 10.200.0.1:5000/ferry/web@sha256:")
            .stderr_snapshot()
            .run();
        insta::assert_snapshot!("known_tag_plan_note", redact(&out.stderr));
        // `latest` and no --version: the newest version the feed has, the same plan.
        let latest =
            ferry(dir.path(), &["plan", "many", "--env", "c-feed"]).stdout_snapshot().stderr_snapshot().run();
        let named = ferry(dir.path(), &["plan", "many", "--env", "c-feed", "--version", "latest"])
            .stdout_snapshot()
            .stderr_snapshot()
            .run();
        assert_eq!(latest.stderr, "note: latest is 21.0.0.7 (the newest version in feed lab)\n");
        assert_eq!(named.stderr, latest.stderr);
        assert_eq!(redact(&named.stdout), redact(&latest.stdout));
        assert!(latest.stdout.contains("plan: many 21.0.0.7 → c-feed"), "{}", latest.stdout);
    }

    #[test]
    fn one_version_and_one_host_key_are_singular() {
        let dir = tempfile::tempdir().unwrap();
        let versions = ferry(dir.path(), &["versions", "many"]).stdout_snapshot().run();
        insta::assert_snapshot!("one_version", redact(&versions.stdout));
        let trust = ferry(dir.path(), &["trust", "--env", "c-feed", "--yes"])
            .stdout_contains("h1      10.200.0.11  NEW")
            .stderr_snapshot()
            .run();
        let known = dir.path().join("known_hosts").display().to_string();
        insta::assert_snapshot!("one_host_key", trust.stderr.replace(&known, "<known_hosts>"));
    }
}
