//! Image retention's inventory key and `ferry prune` without the lab (issue 16, part 4): the
//! key's default, its per-environment override and its errors at their line; `prune` asks for a
//! confirmation before anything is connected. The lab test (tests/integration/deploy/
//! retention.rs) covers what a target keeps and removes.

use crate::test::Test;

/// The CLI test inventory with `retention` written on the app (`app`) and in
/// `[apps.web.environments.prod]` (`prod`).
fn with_retention(app: &str, prod: &str) -> Test {
    let mut test = Test::new();
    if !app.is_empty() {
        test = test.replace(
            "ferry.toml",
            "vars = { port = 8080 }\n",
            &format!("vars = {{ port = 8080 }}\n{app}\n"),
        );
    }
    if !prod.is_empty() {
        let text = std::fs::read_to_string(test.path().join("ferry.toml")).unwrap();
        test = test.write("ferry.toml", &format!("{text}\n[apps.web.environments.prod]\n{prod}\n"));
    }
    test
}

fn load(test: &Test) -> ferry::inventory::Inventory {
    ferry::inventory::Inventory::load(&test.path().join("ferry.toml")).unwrap()
}

#[test]
fn five_images_by_default_and_an_environment_overrides_the_app() {
    let plain = with_retention("", "");
    let web = load(&plain).app("web").unwrap().clone();
    assert_eq!((web.retained_images("staging"), web.retained_images("prod")), (5, 5));
    let set = with_retention("retention = { images = 3 }", "retention = { images = 8 }");
    let web = load(&set).app("web").unwrap().clone();
    assert_eq!((web.retained_images("staging"), web.retained_images("prod")), (3, 8));
    set.args(["check"]).stdout_contains("").run();
}

#[test]
fn fewer_than_one_image_or_an_unknown_key_is_exit_2_at_its_line() {
    let test = with_retention("retention = { images = 0 }", "");
    let text = std::fs::read_to_string(test.path().join("ferry.toml")).unwrap();
    let line = text.lines().position(|l| l.starts_with("retention")).unwrap() + 1;
    test.args(["check"])
        .code(2)
        .stderr_contains("error: retention.images = 0: keep at least 1\n")
        .stderr_contains(&format!(" --> ferry.toml:{line}:24\n"))
        .stderr_contains(
            "  = help: the number of deployments whose images each target keeps, e.g. { images = 5 }\n",
        )
        .run();
    with_retention("", "retention = { images = -2 }")
        .args(["check"])
        .code(2)
        .stderr_contains("error: retention.images = -2: keep at least 1\n")
        .run();
    with_retention("retention = { image = 3 }", "")
        .args(["check"])
        .code(2)
        .stderr_contains("error: unknown key `image`\n")
        .stderr_contains("  = help: did you mean \"images\"? (valid keys here: images)\n")
        .run();
}

#[test]
fn prune_without_yes_and_without_a_terminal_changes_nothing() {
    // Refused before the records are opened or any target is connected.
    let folder = Test::new().into_dir();
    Test::new()
        .args(["prune", "web", "--env", "prod"])
        .code(4)
        .stderr(
            "error: refusing to prune web in prod (2 targets) without a confirmation: stdin is not a terminal\n  \
             = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run_in(folder.path());
    assert!(!folder.path().join(".ferry").exists(), "nothing recorded");
}
