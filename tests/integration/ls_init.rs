//! `ferry ls` (the inventory's apps, environments and targets), `ferry init` (a starter that
//! `ferry check` passes and that never overwrites a file), and `ferry remove`'s refusals
//! before anything is recorded, locked or connected.

use crate::test::Test;

/// A second app on every target of each environment (no roles), without a feed.
fn with_worker() -> Test {
    Test::new().replace(
        "ferry.toml",
        "[apps.web]",
        "[apps.worker]\nimage = \"acme/worker\"\ntemplate = \"web.j2\"\nvars = { port = 7070 }\n\n[apps.web]",
    )
}

#[test]
fn ls_lists_apps_environments_and_targets_from_the_inventory() {
    with_worker()
        .args(["ls"])
        .stdout(
            "APP     ENV      TARGETS         IMAGE        FEED\n\
             worker  staging  stg-1           acme/worker  -\n\
             worker  prod     prod-1, prod-2  acme/worker  -\n\
             web     staging  stg-1           acme/web     main\n\
             web     prod     prod-1, prod-2  acme/web     main\n",
        )
        .run();
}

#[test]
fn ls_plain_is_tab_separated_without_a_header_and_apps_is_its_alias() {
    with_worker()
        .args(["apps", "--output", "plain"])
        .stdout(
            "worker\tstaging\tstg-1\tacme/worker\t-\n\
             worker\tprod\tprod-1,prod-2\tacme/worker\t-\n\
             web\tstaging\tstg-1\tacme/web\tmain\n\
             web\tprod\tprod-1,prod-2\tacme/web\tmain\n",
        )
        .run();
}

#[test]
fn ls_json_names_each_apps_targets_per_environment() {
    let out = with_worker().args(["ls", "--output", "json"]).stdout_json().run().json();
    assert_eq!(
        out,
        serde_json::json!({
            "schema": 1,
            "type": "apps",
            "apps": [
                { "app": "worker", "image": "acme/worker", "feed": null, "environments": [
                    { "environment": "staging", "targets": ["stg-1"] },
                    { "environment": "prod", "targets": ["prod-1", "prod-2"] },
                ]},
                { "app": "web", "image": "acme/web", "feed": "main", "environments": [
                    { "environment": "staging", "targets": ["stg-1"] },
                    { "environment": "prod", "targets": ["prod-1", "prod-2"] },
                ]},
            ],
        })
    );
}

#[test]
fn ls_needs_no_secret_and_no_network() {
    // No secret set and hosts that do not exist: ls only reads the inventory.
    Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["ls", "--output", "plain"])
        .stdout("web\tstaging\tstg-1\tacme/web\tmain\nweb\tprod\tprod-1,prod-2\tacme/web\tmain\n")
        .run();
}

/// The starter's `check` line: one app, two environments on one local target.
const STARTER_CHECKED: &str = "ferry.toml: ok: 1 app × 2 environments, 1 target, 2 renders, 0 warnings\n";

#[test]
fn init_writes_a_starter_that_check_passes() {
    let folder = tempfile::tempdir().unwrap();
    Test::bare()
        .args(["init"])
        .stdout(
            "wrote ferry.toml and templates/web.j2\n\
             next: `ferry check`, then `ferry plan web --env dev --version 1.0`\n",
        )
        .run_in(folder.path());
    let inventory = std::fs::read_to_string(folder.path().join("ferry.toml")).unwrap();
    assert!(inventory.contains("transport = \"local\""), "the one target is this machine");
    assert!(inventory.contains("url = \"http://127.0.0.1:5000\""), "the feed is on loopback");
    let hosts: Vec<&str> = inventory.lines().filter(|l| l.trim_start().starts_with("host = ")).collect();
    assert!(hosts.is_empty(), "an active SSH host in the starter: {hosts:?}");
    assert!(std::fs::read_to_string(folder.path().join("templates/web.j2")).unwrap().contains("{{ image }}"));
    Test::bare().args(["check", "--deny-warnings"]).stdout(STARTER_CHECKED).run_in(folder.path());
    // The starter's environments and target, as `ls` reads them.
    Test::bare()
        .args(["ls", "--output", "plain"])
        .stdout("web\tdev\there\tacme/web\tlocal\nweb\tprod\there\tacme/web\tlocal\n")
        .run_in(folder.path());
}

#[test]
fn init_into_a_folder_makes_it_and_says_where() {
    let folder = tempfile::tempdir().unwrap();
    Test::bare()
        .args(["init", "deploy"])
        .stdout(
            "wrote deploy/ferry.toml and deploy/templates/web.j2\n\
             next: `cd deploy && ferry check`, then `ferry plan web --env dev --version 1.0`\n",
        )
        .run_in(folder.path());
    Test::bare().args(["check"]).stdout(STARTER_CHECKED).run_in(&folder.path().join("deploy"));
}

#[test]
fn init_never_overwrites_and_then_writes_nothing() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(folder.path().join("templates")).unwrap();
    std::fs::write(folder.path().join("templates/web.j2"), "mine\n").unwrap();
    Test::bare()
        .args(["init"])
        .code(2)
        .stderr(
            "error: templates/web.j2 already exists; ferry init never overwrites a file: nothing was written\n  \
             = help: move it away, or write the starter into another folder: `ferry init DIR`\n",
        )
        .run_in(folder.path());
    assert!(!folder.path().join("ferry.toml").exists(), "nothing was written");
    assert_eq!(std::fs::read_to_string(folder.path().join("templates/web.j2")).unwrap(), "mine\n");
    // A second init over a first one: the inventory is named, and stays as it was.
    let other = tempfile::tempdir().unwrap();
    Test::bare().args(["init"]).stdout_contains("wrote ferry.toml").run_in(other.path());
    std::fs::write(other.path().join("ferry.toml"), "# edited\n").unwrap();
    Test::bare()
        .args(["init"])
        .code(2)
        .stderr(
            "error: ferry.toml already exists; ferry init never overwrites a file: nothing was written\n  \
             = help: move it away, or write the starter into another folder: `ferry init DIR`\n",
        )
        .run_in(other.path());
    assert_eq!(std::fs::read_to_string(other.path().join("ferry.toml")).unwrap(), "# edited\n");
}

#[test]
fn init_writes_nothing_when_the_templates_folder_is_a_file() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("templates"), "not a folder\n").unwrap();
    Test::bare()
        .args(["init"])
        .code(2)
        .stderr(
            "error: templates is not a folder; ferry init writes its template into it: nothing was written\n  \
             = help: move it away, or write the starter into another folder: `ferry init DIR`\n",
        )
        .run_in(folder.path());
    assert!(!folder.path().join("ferry.toml").exists(), "all or nothing: no inventory without its template");
    assert_eq!(std::fs::read_to_string(folder.path().join("templates")).unwrap(), "not a folder\n");
}

#[test]
fn remove_without_a_terminal_needs_yes_and_records_nothing() {
    let folder = Test::new().into_dir();
    Test::bare()
        .env("WEB_DATABASE_URL", crate::test::SECRET)
        .args(["remove", "web", "--env", "prod"])
        .code(4)
        .stderr(
            "error: refusing to remove web from prod (2 targets) without a confirmation: stdin is not a terminal\n  \
             = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run_in(folder.path());
    assert!(!folder.path().join(".ferry/audit.jsonl").exists(), "nothing recorded");
}

#[test]
fn remove_refuses_bad_flags_and_names_before_anything_runs() {
    let folder = Test::new().into_dir();
    let ferry =
        |args: &[&str]| Test::bare().env("WEB_DATABASE_URL", crate::test::SECRET).args(args.iter().copied());
    ferry(&["remove", "web"])
        .code(2)
        .stderr(
            "error: the following required arguments were not provided:\n  --env <ENV>\n\n\
             Usage: ferry remove --env <ENV> <APP>\n\nFor more information, try '--help'.\n",
        )
        .run_in(folder.path());
    ferry(&["remove", "web", "--env", "prod", "--yes", "--lock-ttl", "bogus"])
        .code(2)
        .stderr_contains("error: --lock-ttl: invalid duration \"bogus\"")
        .run_in(folder.path());
    ferry(&["remove", "web", "--env", "prod", "--yes", "--limit", "zz-*"])
        .code(2)
        .stderr(
            "error: --limit \"zz-*\" matches none of the 2 targets of app \"web\" in environment \"prod\"\n  \
             = help: targets of app \"web\" in environment \"prod\": prod-1, prod-2\n",
        )
        .run_in(folder.path());
    ferry(&["remove", "wbe", "--env", "prod", "--yes"])
        .code(2)
        .stderr("error: unknown app \"wbe\" in ferry.toml\n  = help: did you mean \"web\"?\n")
        .run_in(folder.path());
    assert!(!folder.path().join(".ferry/audit.jsonl").exists(), "nothing recorded");
}
