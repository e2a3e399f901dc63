//! Issue 15, the inventory and plan side of the proxy: `[proxy]` and the apps' `proxy` routes
//! are checked once (file:line, exit 2), a proxied template may not publish ports or choose a
//! network, and the plan shows the route, adds ferry's network flags and hashes the route.

use crate::test::Test;

/// The test inventory's app behind the proxy, without a feed (no registry to ask in these
/// tests), with a template that publishes nothing.
fn proxied(route: &str) -> Test {
    Test::new()
        .env("FERRY_HASH_KEY", "one key for every folder")
        .replace("ferry.toml", "feed = \"main\"\nimage", "image")
        .replace("ferry.toml", "timeout = \"30s\" }\n", &format!("timeout = \"30s\" }}\nproxy = {route}\n"))
        .replace("templates/web.j2", "  -p {{ port }}:8080\n", "")
}

const ROUTE: &str = "{ host = \"web.example.com\", port = 8080, health = \"/up\" }";

fn plan_json(test: Test) -> serde_json::Value {
    test.args(["plan", "web", "--env", "prod", "--version", "1.0", "--output", "json"])
        .stdout_json()
        .run()
        .json()
}

#[test]
fn check_accepts_a_route_and_the_proxy_section() {
    proxied(ROUTE)
        .replace(
            "ferry.toml",
            "[feeds.main]",
            "[proxy]\nimage = \"caddy:2.6\"\nfeed = \"main\"\ndrain = \"3s\"\n\n[feeds.main]",
        )
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
}

#[test]
fn check_names_every_bad_proxy_key_at_its_line() {
    let out = proxied("{ host = \"http://web.example.com\", port = 0, health = \"up\", path = \"/a b\", tls = \"self\", weight = 1 }")
        .args(["check"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("proxy_unknown_key", out.stderr);
    let out = proxied("{ host = \"{{ environment }}.example.com\", port = 0, health = \"up\", path = \"/a b\", tls = \"self\" }")
        .replace("ferry.toml", "[feeds.main]", "[proxy]\ndrain = \"10\"\nfeed = \"mian\"\n\n[feeds.main]")
        .args(["check"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("proxy_bad_values", out.stderr);
}

#[test]
fn a_route_missing_a_required_key_is_refused_where_it_is_written() {
    let out = proxied("{ host = \"web.example.com\", port = 8080 }")
        .args(["check"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!("proxy_route_incomplete", out.stderr);
}

#[test]
fn an_environment_overrides_the_route_key_by_key() {
    let route = "{ host = \"web.example.com\", port = 8080, health = \"/up\", tls = \"internal\" }";
    let test = proxied(route).replace(
        "ferry.toml",
        &format!("proxy = {route}\n"),
        &format!(
            "proxy = {route}\n[apps.web.environments.staging]\n\
             proxy = {{ host = \"staging.web.example.com\", path = \"/api/\" }}\n"
        ),
    );
    let test = test.args(["plan", "web", "--env", "staging", "--version", "1.0"]);
    let out = test
        .stdout_contains("proxy: staging.web.example.com/api → :8080, health /up, tls internal\n")
        .stdout_contains(" --network-alias web-staging-")
        .stdout_contains(
            " --env-file /dev/stdin --network ferry --label ferry.proxy.host=staging.web.example.com \
             --label ferry.proxy.path=/api --restart unless-stopped -e LOG_LEVEL=info ",
        )
        .run();
    assert!(!out.stdout.contains(" -p "), "{}", out.stdout);
    // prod keeps the app's route.
    let json = plan_json(proxied(
        "{ host = \"web.example.com\", port = 8080, health = \"/up\", tls = \"internal\" }",
    ));
    assert_eq!(json["targets"][0]["route"]["host"], "web.example.com");
    assert_eq!(json["targets"][0]["route"]["tls"], "internal");
}

#[test]
fn two_apps_routing_one_host_and_path_on_a_target_are_refused_naming_both() {
    let test = proxied(ROUTE).replace(
        "ferry.toml",
        "[feeds.main]",
        "[apps.api]\nimage = \"acme/api\"\ntemplate = \"web.j2\"\nvars = { port = 1 }\n\
         proxy = { host = \"WEB.example.com\", port = 80, health = \"/up\" }\n\n[feeds.main]",
    );
    let out = test.args(["check"]).code(2).stderr_snapshot().run();
    insta::assert_snapshot!("proxy_route_twice", out.stderr);
}

#[test]
fn an_environment_can_reset_the_path_and_then_collide() {
    proxied(ROUTE)
        .replace(
            "ferry.toml",
            "[feeds.main]",
            "[apps.api]\nimage = \"acme/api\"\ntemplate = \"web.j2\"\nvars = { port = 1 }\n\
             proxy = { host = \"web.example.com\", port = 80, health = \"/up\", path = \"/api\" }\n\n\
             [apps.api.environments.prod]\nproxy = { path = \"/\" }\n\n[feeds.main]",
        )
        .args(["check"])
        .code(2)
        .stderr_contains("web.example.com is routed twice on target \"prod-1\": app \"api\" in \"prod\" and app \"web\" in \"prod\"")
        .run();
}

#[test]
fn the_same_host_on_another_path_or_target_is_fine() {
    proxied(ROUTE)
        .replace(
            "ferry.toml",
            "[feeds.main]",
            "[apps.api]\nimage = \"acme/api\"\ntemplate = \"web.j2\"\n\
             proxy = { host = \"web.example.com\", port = 80, health = \"/up\", path = \"/api\" }\n\n\
             [apps.api.environments.staging]\nproxy = { path = \"/\" }\n\n[feeds.main]",
        )
        .replace(
            "ferry.toml",
            "[apps.web]\n",
            "[apps.web.environments.staging]\nproxy = { host = \"stg.example.com\" }\n\n[apps.web]\n",
        )
        .args(["check"])
        .stdout("ferry.toml: ok: 2 apps × 2 environments, 3 targets, 6 renders, 0 warnings\n")
        .run();
}

#[test]
fn a_proxied_template_that_publishes_a_port_is_refused_at_its_line() {
    let test = proxied(ROUTE).replace(
        "templates/web.j2",
        "--restart unless-stopped\n",
        "--restart unless-stopped\n  -p {{ port }}:8080\n",
    );
    let out = test.args(["plan", "web", "--env", "prod", "--version", "1.0"]).code(2).stderr_snapshot().run();
    insta::assert_snapshot!("proxy_template_publishes", out.stderr);
    for flag in ["-P", "--publish-all", "--network host", "--net=host", "--network-alias x", "--publish=1:1"]
    {
        proxied(ROUTE)
            .replace(
                "templates/web.j2",
                "--restart unless-stopped\n",
                &format!("--restart unless-stopped {flag}\n"),
            )
            .args(["check"])
            .code(2)
            .stderr_contains("an app behind the proxy is reached through it")
            .stderr_contains("--> templates/web.j2:1:")
            .run();
    }
}

#[test]
fn the_config_hash_covers_the_route_but_not_the_alias_or_drain() {
    let hash =
        |test: Test| plan_json(test)["targets"][0]["config_hash"].as_str().unwrap_or_default().to_string();
    let base = hash(proxied(ROUTE));
    assert_eq!(base, hash(proxied(ROUTE)), "another deployment id (alias) is the same config");
    let drained =
        proxied(ROUTE).replace("ferry.toml", "[feeds.main]", "[proxy]\ndrain = \"30s\"\n\n[feeds.main]");
    assert_eq!(base, hash(drained), "drain is not part of the container");
    for other in [
        "{ host = \"web2.example.com\", port = 8080, health = \"/up\" }",
        "{ host = \"web.example.com\", port = 8081, health = \"/up\" }",
        "{ host = \"web.example.com\", port = 8080, health = \"/ready\" }",
        "{ host = \"web.example.com\", port = 8080, health = \"/up\", path = \"/x\" }",
        "{ host = \"web.example.com\", port = 8080, health = \"/up\", tls = \"acme\" }",
    ] {
        assert_ne!(base, hash(proxied(other)), "{other}");
    }
    // Without a route the app hashes as before issue 15 (no proxy flags, no route field).
    let unproxied = Test::new().replace("ferry.toml", "feed = \"main\"\nimage", "image").replace(
        "templates/web.j2",
        "  -p {{ port }}:8080\n",
        "",
    );
    let json = plan_json(unproxied);
    assert!(json["targets"][0].get("route").is_none());
    assert!(
        !json["targets"][0]["display"].as_str().unwrap_or_default().contains("--network"),
        "no network flags"
    );
}

#[test]
fn an_environment_override_of_the_route_changes_that_environment_s_hash_only() {
    let hash = |env: &str, host: &str| {
        proxied(ROUTE)
            .replace(
                "ferry.toml",
                &format!("proxy = {ROUTE}\n"),
                &format!(
                    "proxy = {ROUTE}\n[apps.web.environments.staging]\nproxy = {{ host = \"{host}\" }}\n"
                ),
            )
            .args(["plan", "web", "--env", env, "--version", "1.0", "--output", "json"])
            .stdout_json()
            .run()
            .json()["targets"][0]["config_hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (a, b) = (hash("staging", "a.example.com"), hash("staging", "b.example.com"));
    assert!(!a.is_empty() && a != b, "the override is part of staging's container: {a} {b}");
    assert_eq!(hash("prod", "a.example.com"), hash("prod", "b.example.com"), "prod keeps its route");
}
