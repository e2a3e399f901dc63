//! Networks and volumes of an app (issue 16, part 5), without a target: the inventory keys'
//! errors (exit 2 at their line), templates that would also choose a network or mount a managed
//! path, and what `plan` shows (the block in the argv, the lines above the table, the config
//! hash). The deploy itself (preflight, creation, a volume that survives a redeploy) is the lab
//! test `deploy::networks`.

use crate::test::Test;

/// The test inventory without its feed (no registry is asked), with `keys` on app web.
fn with_keys(keys: &str) -> Test {
    Test::new().replace("ferry.toml", "feed = \"main\"\n", "").replace(
        "ferry.toml",
        "vars = { port = 8080 }\nenv",
        &format!("vars = {{ port = 8080 }}\n{keys}\nenv"),
    )
}

#[test]
fn bad_names_paths_and_repeats_are_exit_2_each_at_its_line() {
    let out = with_keys(
        "networks = [\"back end\", \"host\", \"ferry\", \"nv-a\", \"nv-a\"]\nvolumes = { x = \"/x\", data = \"relative\", logs = \"/srv/\", more = \"/srv\", cache = \"/c:ro\" }",
    )
    .args(["check"])
    .code(2)
    .stderr_snapshot()
    .run();
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn an_environment_override_is_checked_too_and_replaces_the_apps_lists() {
    with_keys("networks = [\"nv-a\"]")
        .replace(
            "ferry.toml",
            "[feeds.main]",
            "[apps.web.environments.prod]\nnetworks = [\"x\"]\n\n[feeds.main]",
        )
        .args(["check"])
        .code(2)
        .stderr_contains("error: network name \"x\" is not a valid Docker name\n  --> ferry.toml:27:13\n")
        .run();
}

#[test]
fn a_template_that_also_chooses_a_network_or_mounts_a_managed_path_is_exit_2() {
    with_keys("networks = [\"nv-a\"]")
        .replace("templates/web.j2", "--restart unless-stopped", "--restart unless-stopped --network host")
        .args(["check"])
        .code(2)
        .stderr_contains(
            "error: the app has `networks`, so ferry attaches the container to them; this template also chooses a network (--network)\n",
        )
        .stderr_contains("help: remove --network from the template, or list the network in the app's `networks`")
        .run();
    with_keys("volumes = { nv-data = \"/data\" }")
        .replace(
            "templates/web.j2",
            "--restart unless-stopped",
            "--restart unless-stopped -v /srv/data:/data/",
        )
        .args(["check"])
        .code(2)
        .stderr_contains(
            "error: this template also mounts /data/, where the app's volume `nv-data` goes (-v)\n",
        )
        .run();
    // Without the keys, the same template is the user's business, as before.
    Test::new()
        .replace(
            "templates/web.j2",
            "--restart unless-stopped",
            "--restart unless-stopped --network host -v /srv/data:/data",
        )
        .args(["check"])
        .stdout_contains(": ok: ")
        .run();
}

/// `plan`: the lines above the table, and the block in each target's command, after the
/// stable labels and the env file.
#[test]
fn plan_shows_networks_and_volumes_and_they_are_in_the_config_hash() {
    let keys = "networks = [\"nv-backend\", \"nv-cache\"]\nvolumes = { nv-data = \"/data\" }";
    let out = with_keys(keys)
        .env("FERRY_HASH_KEY", "k")
        .args(["plan", "web", "--env", "staging", "--version", "1.0"])
        .stdout_contains("networks (created where missing): nv-backend, nv-cache\n")
        .stdout_contains("volumes (created where missing, never removed): nv-data:/data\n")
        .stdout_contains(
            "--env-file /dev/stdin --label ferry.networks=nv-backend,nv-cache --network nv-backend --network nv-cache \
             --label ferry.volumes=nv-data:/data --volume nv-data:/data --restart unless-stopped",
        )
        .run();
    assert!(!out.stdout.contains("--network ferry"), "no proxy, no ferry network: {}", out.stdout);
    let json = |test: Test| {
        test.env("FERRY_HASH_KEY", "k")
            .args(["plan", "web", "--env", "staging", "--version", "1.0", "--output", "json"])
            .stdout_json()
            .run()
            .json()
    };
    let with = json(with_keys(keys));
    let target = &with["targets"][0];
    assert_eq!(target["networks"], serde_json::json!(["nv-backend", "nv-cache"]));
    assert_eq!(target["volumes"], serde_json::json!([{ "name": "nv-data", "path": "/data" }]));
    let without = json(with_keys(""));
    assert!(without["targets"][0].get("networks").is_none(), "absent when the app has none");
    assert_ne!(target["config_hash"], without["targets"][0]["config_hash"], "a network is a change");
    let other_path =
        json(with_keys("networks = [\"nv-backend\", \"nv-cache\"]\nvolumes = { nv-data = \"/srv\" }"));
    assert_ne!(target["config_hash"], other_path["targets"][0]["config_hash"], "so is another path");
}

/// An environment's `networks` and `volumes` replace the app's there, and only there.
#[test]
fn an_environment_replaces_the_apps_networks_and_volumes() {
    let test = with_keys("networks = [\"nv-a\"]\nvolumes = { nv-data = \"/data\" }").replace(
        "ferry.toml",
        "[feeds.main]",
        "[apps.web.environments.prod]\nnetworks = []\nvolumes = { nv-prod = \"/data\" }\n\n[feeds.main]",
    );
    let dir = test.into_dir();
    let json = |env: &str| {
        Test::new()
            .args(["plan", "web", "--env", env, "--version", "1.0", "--output", "json"])
            .stdout_json()
            .run_in(dir.path())
            .json()
    };
    let prod = json("prod");
    assert!(prod["targets"][0].get("networks").is_none(), "{prod}");
    assert_eq!(prod["targets"][0]["volumes"], serde_json::json!([{ "name": "nv-prod", "path": "/data" }]));
    let staging = json("staging");
    assert_eq!(staging["targets"][0]["networks"], serde_json::json!(["nv-a"]));
}
