//! `ferry plan`: rows, argv, JSON shape, and what the config hash does and does not cover.

use crate::test::{SECRET, Test, repo};

fn plan_json(test: Test) -> serde_json::Value {
    plan_json_with(test, &[])
}

fn plan_json_with(test: Test, extra: &[&str]) -> serde_json::Value {
    let test = test.args(["plan", "web", "--env", "prod", "--version", "1.0", "--output", "json"]);
    test.args(extra.iter().copied()).stdout_json().run().json()
}

fn hashes(test: Test) -> Vec<String> {
    hashes_with(test, &[])
}

fn hashes_with(test: Test, extra: &[&str]) -> Vec<String> {
    let json = plan_json_with(test, extra);
    let targets = json["targets"].as_array().cloned().unwrap_or_default();
    targets.iter().map(|t| t["config_hash"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn example_prod_plan_has_one_row_per_target_with_the_full_argv() {
    let example = repo().join("inventories/example.toml");
    let out = Test::new()
        .args([
            "plan",
            "web",
            "--env",
            "prod",
            "--version",
            "1.4.2",
            "-i",
            example.to_str().unwrap_or_default(),
        ])
        .stdout_contains("plan: web 1.4.2 → prod: 3 targets, batches of 1, max_failures 0\n")
        .stdout_contains("image: registry.example.com/acme/web:1.4.2\n")
        .stdout_contains("\nTARGET  HOST       CONFIG        COMMAND\n")
        // The example's feed needs credentials this test does not have: the plan is made
        // without the feed's word on the tag, and says so.
        .stderr(
            "note: feed main cannot be asked (secret username: environment variable REGISTRY_USER is not set): \
             whether it has 1.4.2 is not checked\n",
        )
        .run();
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("prod-")).collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    for (row, host) in rows.iter().zip(["10.0.1.11", "10.0.1.12", "10.0.1.13"]) {
        assert!(row.contains(host), "{row}");
        assert!(row.contains("docker run --detach --name web-prod --label ferry.app=web --label ferry.environment=prod --label ferry.version=1.4.2"), "{row}");
        assert!(
            row.contains("--env-file /dev/stdin --restart unless-stopped -p 80:8080 -e LOG_LEVEL=warn"),
            "{row}"
        );
        assert!(row.ends_with("registry.example.com/acme/web:1.4.2"), "{row}");
    }
    assert!(out.stdout.contains("secrets (env file, values hidden): DATABASE_URL"), "{}", out.stdout);
}

#[test]
fn no_version_plans_latest_with_a_note() {
    // Without a feed, `latest` can only be the tag of that name (with a feed: the newest version,
    // see tests/integration/contract.rs).
    Test::new()
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .args(["plan", "web", "--env", "staging"])
        .stdout_contains("plan: web latest → staging: 1 target, all at once, max_failures 0\n")
        .stdout_contains("image: acme/web:latest\n")
        .stdout_contains(" --label ferry.version=latest ")
        .stdout_contains(" acme/web:latest\n")
        .stderr("note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n")
        .run();
}

#[test]
fn json_plan_shape() {
    let json = plan_json(Test::new());
    assert_eq!(json["schema"], 1);
    assert_eq!(json["image"], "127.0.0.1:5000/acme/web:1.0");
    assert_eq!(json["rollout"]["batch"]["count"], 1);
    let t = &json["targets"][1];
    assert_eq!(t["target"], "prod-2");
    assert_eq!(t["container"], "web-prod");
    assert_eq!(t["secrets"][0], "DATABASE_URL");
    assert_eq!(t["health_cmd"], "wget -qO- http://127.0.0.1:9090/", "target var wins");
    let argv: Vec<&str> =
        t["argv"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    assert_eq!(&argv[..5], ["docker", "run", "--detach", "--name", "web-prod"]);
    assert!(argv.contains(&"9090:8080"), "{argv:?}");
    assert!(argv.contains(&"LOG_LEVEL=debug"), "{argv:?}");
    let hash = t["config_hash"].as_str().unwrap_or_default();
    assert_eq!(hash.len(), 64);
    assert!(argv.contains(&format!("ferry.config-hash={hash}").as_str()), "{argv:?}");
    assert!(t.get("env_file").is_none(), "the env file is never serialized");
}

#[test]
fn limit_takes_globs_and_comma_lists() {
    let out = Test::new()
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .args(["plan", "web", "--env", "prod", "--limit", "*-2", "--output", "plain"])
        .stdout_contains("prod-2\t10.0.1.12\t")
        .stderr("note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n")
        .run();
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(out.stdout.starts_with("prod-2\t10.0.1.12\t"), "{}", out.stdout);
    let out = Test::new()
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .args(["plan", "web", "--env", "prod", "--limit", "prod-2,prod-1", "--output", "plain"])
        .stdout_contains("prod-1\t10.0.1.11\t")
        .stdout_contains("prod-2\t10.0.1.12\t")
        .stderr("note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n")
        .run();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stdout.starts_with("prod-1\t"), "inventory order, not the order of --limit: {}", out.stdout);
}

/// The same `FERRY_HASH_KEY` in every folder, so hashes from different folders compare.
fn keyed() -> Test {
    Test::new().env("FERRY_HASH_KEY", "one key for every runner")
}

#[test]
fn config_hash_is_stable_across_runs_and_differs_per_target_config() {
    let first = hashes(keyed());
    let second = hashes(keyed());
    assert_eq!(first, second, "same inputs, new deployment id: same hash");
    assert_ne!(first[0], first[1], "prod-2 publishes another port");
}

/// Without `FERRY_HASH_KEY`, each state folder makes a random key once (0600) and keeps using
/// it: the same folder gives the same hash, another folder another one, and no hash can be
/// recomputed from public names to test guesses of a weak secret offline.
#[test]
fn without_a_hash_key_the_store_makes_a_random_one_once() {
    let folder = Test::new().into_dir();
    let inventory = folder.path().join("ferry.toml").display().to_string();
    let run = || hashes(Test::bare().env("WEB_DATABASE_URL", SECRET).args(["-i", &inventory]));
    let first = run();
    assert_eq!(first, run(), "the key is made once and kept");
    let key = folder.path().join(".ferry/hash.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64, "32 random bytes, hex");
    assert_ne!(first, hashes(Test::new()), "another folder, another key");
    std::fs::write(&key, "not a key\n").unwrap();
    Test::bare()
        .env("WEB_DATABASE_URL", SECRET)
        .args(["-i", &inventory, "plan", "web", "--env", "prod", "--version", "1.0"])
        .code(1)
        .stderr_contains(".ferry/hash.key: not a ferry hash key (64 hex digits)")
        .run();
}

#[test]
fn config_hash_changes_with_secret_argv_and_removals() {
    let base = hashes(keyed());
    assert_ne!(base, hashes(keyed().env("WEB_DATABASE_URL", "rotated")), "rotated secret");
    assert_ne!(base, hashes_with(keyed(), &["--set", "port=81"]), "changed argv");
    let removed = keyed().replace("ferry.toml", "env = { LOG_LEVEL = \"{{ log_level }}\" }\n", "");
    assert_ne!(base, hashes(removed), "a removed env var replaces the container");
    assert_ne!(base, hashes(keyed().env("FERRY_HASH_KEY", "k")), "keyed by FERRY_HASH_KEY");
}

#[test]
fn config_hash_ignores_health_and_rollout() {
    let base = hashes(keyed());
    let changed = keyed().replace("ferry.toml", "timeout = \"30s\"", "timeout = \"90s\"").replace(
        "ferry.toml",
        "rollout = { batch = 1, max_failures = 0 }",
        "rollout = { batch = \"50%\", max_failures = 1 }",
    );
    assert_eq!(base, hashes(changed));
}

#[test]
fn config_hash_reveals_no_secret() {
    let json = plan_json(Test::new()).to_string();
    assert!(!json.contains(SECRET));
    // The keyed hash of the secret alone is not the plain SHA-256 of its value.
    let plain = sha256_hex(SECRET.as_bytes());
    assert!(!json.contains(&plain));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn custom_container_name_and_local_transport() {
    let test = Test::new()
        .replace(
            "ferry.toml",
            "template = \"web.j2\"",
            "template = \"web.j2\"\ncontainer_name = \"frontend\"",
        )
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets.stg-1]\ntransport = \"local\"",
        );
    let json = test
        .args(["plan", "web", "--env", "staging", "--version", "1.0", "--output", "json"])
        .stdout_json()
        .run()
        .json();
    assert_eq!(json["targets"][0]["container"], "frontend");
    assert_eq!(json["targets"][0]["transport"], "local");
    assert_eq!(json["targets"][0]["host"], "localhost");
}
