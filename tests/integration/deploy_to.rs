//! An app in some environments only (issue 16, part 7): `deploy_to = [..]` on an app. `check`
//! passes an inventory with an ops-only environment no app deploys to; deploying, planning,
//! promoting or rolling back an app to an environment it does not list is exit 2, before any
//! store, feed or target is asked; `ls` lists the app where it deploys.
//!
//! Nothing here reaches a target: the commands stop before any connection, and the targets
//! are on loopback ports where nothing listens.

use crate::test::Test;

/// The test inventory on loopback, plus an environment `ops` whose one target (a bastion) has
/// none of web's roles.
fn with_ops() -> Test {
    Test::new()
        .replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
        .replace(
            "ferry.toml",
            "[targets.stg-1]",
            "[environments.ops]\ntargets = [\"bastion\"]\n\n[targets.bastion]\nhost = \"127.0.0.3\"\nport = 1\nroles = [\"bastion\"]\n\n[targets.stg-1]",
        )
}

/// [`with_ops`] where web deploys to staging and prod only.
fn restricted() -> Test {
    with_ops().replace(
        "ferry.toml",
        "roles = [\"web\"]\nvars = { port = 8080 }",
        "roles = [\"web\"]\ndeploy_to = [\"staging\", \"prod\"]\nvars = { port = 8080 }",
    )
}

/// The test's folder, and the line of `deploy_to` in its inventory.
fn deploy_to_line(test: Test) -> (tempfile::TempDir, usize) {
    let dir = test.into_dir();
    let text = std::fs::read_to_string(dir.path().join("ferry.toml")).unwrap();
    let line = text.lines().position(|l| l.starts_with("deploy_to")).unwrap() + 1;
    (dir, line)
}

#[test]
fn check_refuses_an_ops_environment_today_and_passes_it_once_the_app_says_where_it_deploys() {
    // Today's rule, kept for an app without deploy_to: an app with roles needs one of them in
    // every environment that has targets.
    with_ops()
        .args(["check"])
        .code(2)
        .stderr_contains(
            "error: app \"web\" has no targets in environment \"ops\": no target there has role \"web\"\n",
        )
        .run();
    restricted()
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 3 environments, 4 targets, 3 renders, 0 warnings\n")
        .run();
}

#[test]
fn deploying_planning_promoting_or_rolling_back_elsewhere_is_exit_2_naming_the_key() {
    let (folder, line) = deploy_to_line(restricted());
    let expected = format!(
        "error: web deploys only to staging, prod (deploy_to, ferry.toml:{line})\n  = help: to deploy it to ops, add \"ops\" to its deploy_to\n"
    );
    for args in [
        &["deploy", "web", "--env", "ops", "--version", "1.0", "--yes"][..],
        &["plan", "web", "--env", "ops", "--version", "1.0"],
        &["plan", "web", "--env", "ops"],
        &["promote", "web", "--to", "ops", "--yes"],
        &["rollback", "web", "--env", "ops", "--yes"],
    ] {
        Test::new().args(args.iter().copied()).code(2).stderr(&expected).run_in(folder.path());
    }
    // Where it deploys, it plans as before (no feed asked for a named tag it cannot reach).
    restricted()
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .args(["plan", "web", "--env", "prod", "--version", "1.0"])
        .stdout_contains("prod-1")
        .run();
    // JSON says the same, for tools.
    let json = Test::new()
        .args(["plan", "web", "--env", "ops", "--version", "1.0", "--output", "json"])
        .code(2)
        .stdout_json()
        .stderr(&expected)
        .run_in(folder.path())
        .json();
    assert_eq!(
        json["errors"][0]["message"],
        format!("web deploys only to staging, prod (deploy_to, ferry.toml:{line})")
    );
}

#[test]
fn an_unknown_or_repeated_environment_in_deploy_to_is_exit_2_at_its_line() {
    let test = with_ops().replace(
        "ferry.toml",
        "roles = [\"web\"]\nvars = { port = 8080 }",
        "roles = [\"web\"]\ndeploy_to = [\"staging\", \"prdo\"]\nvars = { port = 8080 }",
    );
    let (folder, line) = deploy_to_line(test);
    Test::new()
        .args(["check"])
        .code(2)
        .stderr_contains("error: unknown environment \"prdo\" in deploy_to\n")
        .stderr_contains(&format!(" --> ferry.toml:{line}:25\n"))
        .stderr_contains("  = help: did you mean \"prod\"?\n")
        .run_in(folder.path());
    with_ops()
        .replace(
            "ferry.toml",
            "roles = [\"web\"]\nvars = { port = 8080 }",
            "roles = [\"web\"]\ndeploy_to = [\"prod\", \"prod\"]\nvars = { port = 8080 }",
        )
        .args(["check"])
        .code(2)
        .stderr_contains("error: \"prod\" is listed twice in deploy_to\n")
        .run();
    with_ops()
        .replace(
            "ferry.toml",
            "roles = [\"web\"]\nvars = { port = 8080 }",
            "roles = [\"web\"]\ndeploy_to = []\nvars = { port = 8080 }",
        )
        .args(["check"])
        .code(2)
        .stderr_contains("error: deploy_to = [] deploys the app nowhere\n")
        .run();
}

#[test]
fn settings_for_an_environment_the_app_does_not_deploy_to_are_an_error() {
    restricted()
        .replace("ferry.toml", "[environments.ops]", "[apps.web.environments.ops]\nvars = { port = 1 }\n\n[environments.ops]")
        .args(["check"])
        .code(2)
        .stderr_contains(
            "error: app \"web\" has settings for \"ops\", an environment it does not deploy to (staging, prod)\n",
        )
        .stderr_contains("  = help: add \"ops\" to its deploy_to, or remove [apps.web.environments.ops]\n")
        .run();
}

#[test]
fn ls_lists_the_app_where_it_deploys_only() {
    restricted()
        .args(["ls"])
        .stdout(
            "APP  ENV      TARGETS         IMAGE     FEED\n\
             web  staging  stg-1           acme/web  main\n\
             web  prod     prod-1, prod-2  acme/web  main\n",
        )
        .run();
    let json = restricted().args(["ls", "--output", "json"]).stdout_json().run().json();
    assert_eq!(json["apps"][0]["deploy_to"], serde_json::json!(["staging", "prod"]));
    assert_eq!(json["apps"][0]["environments"].as_array().map(Vec::len), Some(2));
    // Without deploy_to: every environment, the ops one with no target of the app.
    let json = with_ops()
        .replace("ferry.toml", "roles = [\"web\"]\nvars = { port = 8080 }", "vars = { port = 8080 }")
        .args(["ls", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert!(json["apps"][0].get("deploy_to").is_none(), "{json}");
    assert_eq!(json["apps"][0]["environments"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_prod_only_app_is_promoted_and_gated_by_the_phases_it_deploys_to() {
    let lifecycle = |test: Test| {
        test.replace(
            "ferry.toml",
            "[environments.staging]",
            "[lifecycle]\nphases = [\"staging\", \"prod\"]\n\n[environments.staging]",
        )
    };
    // Deploying to both phases, prod waits for staging.
    lifecycle(with_ops().replace(
        "ferry.toml",
        "roles = [\"web\"]\nvars = { port = 8080 }",
        "roles = [\"web\"]\ndeploy_to = [\"staging\", \"prod\"]\nvars = { port = 8080 }",
    ))
    .args(["promote", "web", "--to", "prod", "--yes"])
    .code(4)
    .stderr_contains("error: cannot promote web to prod: no successful deployment to staging on record\n")
    .run();
    // Deploying to prod only, prod is its first phase: nothing to promote from, deploy directly.
    lifecycle(with_ops().replace(
        "ferry.toml",
        "roles = [\"web\"]\nvars = { port = 8080 }",
        "roles = [\"web\"]\ndeploy_to = [\"prod\"]\nvars = { port = 8080 }",
    ))
    .args(["promote", "web", "--to", "prod", "--yes"])
    .code(4)
    .stderr_contains(
        "error: cannot promote web to prod: prod is the first phase: deploy to it with `ferry deploy`\n",
    )
    .run();

    // The deploy's gate too: a feedless web deploying to prod only goes past it (and then finds
    // its target's loopback port closed), where deploying to both it is held back by staging.
    let feedless = |deploy_to: &str| {
        lifecycle(with_ops().replace(
            "ferry.toml",
            "roles = [\"web\"]\nvars = { port = 8080 }",
            &format!("roles = [\"web\"]\ndeploy_to = {deploy_to}\nvars = {{ port = 8080 }}"),
        ))
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .args(["deploy", "web", "--env", "prod", "--version", "1.0", "--yes"])
    };
    feedless("[\"staging\", \"prod\"]")
        .code(4)
        .stderr_contains("error: lifecycle: web 1.0 (1.0) has no successful deployment to staging, the phase before prod\n")
        .run();
    let out = feedless("[\"prod\"]")
        .code(1)
        .stdout_contains("prod-1 ! unreachable: cannot connect to 127.0.0.1:1")
        .stdout_contains("\nprod-1  unreachable  untouched  ")
        .run();
    assert!(!out.stdout.contains("lifecycle"), "{}", out.stdout);
}
