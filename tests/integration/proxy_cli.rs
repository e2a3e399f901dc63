//! `ferry proxy status|boot|reboot` and `ferry maintenance on|off`: their refusals before
//! anything is recorded, locked or connected (the lab tests in proxy_lab.rs run them for real).

use crate::test::Test;

/// The CLI inventory with `web` behind the proxy (its template publishes no port then).
fn proxied() -> Test {
    Test::new().replace("templates/web.j2", "  -p {{ port }}:8080\n", "").replace(
        "ferry.toml",
        "health = { cmd",
        "proxy = { host = \"web.example.com\", port = 8080, health = \"/up\" }\nhealth = { cmd",
    )
}

/// `ferry ARGS` in `folder`, with the app's secret set (it must never be printed).
fn ferry(args: &[&str]) -> Test {
    Test::bare().env("WEB_DATABASE_URL", crate::test::SECRET).args(args.iter().copied())
}

#[test]
fn the_writes_need_yes_without_a_terminal_and_record_nothing() {
    let folder = proxied().into_dir();
    let refused = |what: &str| {
        format!(
            "error: refusing to {what} without a confirmation: stdin is not a terminal\n  \
             = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n"
        )
    };
    ferry(&["maintenance", "on", "web", "--env", "prod", "--message", "back at 10:00 UTC"])
        .code(4)
        .stderr(&refused("put web in prod in maintenance (2 targets)"))
        .run_in(folder.path());
    ferry(&["maintenance", "off", "web", "--env", "prod"])
        .code(4)
        .stderr(&refused("take web in prod out of maintenance (2 targets)"))
        .run_in(folder.path());
    ferry(&["proxy", "boot", "--env", "staging"])
        .code(4)
        .stderr(&refused("boot the proxy in staging (1 target)"))
        .run_in(folder.path());
    ferry(&["proxy", "reboot", "--env", "prod", "--image", "registry.example.com/caddy:2.8"])
        .code(4)
        .stderr(&refused("reboot the proxy in prod with registry.example.com/caddy:2.8 (2 targets)"))
        .run_in(folder.path());
    assert!(!folder.path().join(".ferry/audit.jsonl").exists(), "nothing recorded");
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let folder = proxied().into_dir();
    ferry(&["maintenance", "on", "web", "--env", "prod", "--yes", "--message", " "])
        .code(2)
        .stderr("error: --message: the maintenance message is empty\n")
        .run_in(folder.path());
    ferry(&["maintenance", "off", "web", "--env", "prod", "--message", "x"])
        .code(2)
        .stderr(
            "error: unexpected argument '--message' found\n\n  tip: to pass '--message' as a value, use '-- --message'\n\n\
             Usage: ferry maintenance off --env <ENV> <APP>\n\nFor more information, try '--help'.\n",
        )
        .run_in(folder.path());
    ferry(&["maintenance", "on", "wbe", "--env", "prod", "--yes"])
        .code(2)
        .stderr("error: unknown app \"wbe\" in ferry.toml\n  = help: did you mean \"web\"?\n")
        .run_in(folder.path());
    ferry(&["proxy", "reboot", "--env", "prod", "--yes", "--image", "-x"])
        .code(2)
        .stderr_contains("error: ")
        .run_in(folder.path());
    ferry(&["proxy", "reboot", "--env", "prod", "--yes", "--image", "caddy 2"])
        .code(2)
        .stderr(
            "error: --image \"caddy 2\" is not an image reference (e.g. caddy:2 or registry.example.com/caddy:2.8)\n",
        )
        .run_in(folder.path());
    ferry(&["proxy", "status", "--env", "prdo"])
        .code(2)
        .stderr_contains("error: unknown environment \"prdo\"")
        .run_in(folder.path());
    ferry(&["proxy", "boot", "--env", "prod", "--yes", "--limit", "zz-*"])
        .code(2)
        .stderr_contains("error: --limit \"zz-*\" matches none of the 2 targets")
        .run_in(folder.path());
    assert!(!folder.path().join(".ferry/audit.jsonl").exists(), "nothing recorded");
}

#[test]
fn maintenance_of_an_app_not_behind_the_proxy_is_refused() {
    Test::new()
        .args(["maintenance", "on", "web", "--env", "prod", "--yes"])
        .env("WEB_DATABASE_URL", crate::test::SECRET)
        .code(2)
        .stderr(
            "error: web is not behind the proxy in prod\n  \
             = help: maintenance mode is the proxy's answer: give the app `proxy = { host = …, port = …, health = … }`\n",
        )
        .run();
}
