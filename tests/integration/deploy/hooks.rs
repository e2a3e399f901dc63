//! Deploy hooks against the lab (issue 16 part 1, its acceptance): a `pre_deploy` hook that
//! exits 1 refuses the deployment (exit 4) with no container changed and its output on record;
//! a `post_deploy` hook sees the documented environment (it writes it to a file this test
//! reads). A child of `deploy`, for its `Fleet`. Environments `hk-*`, ports 18460–18469, h3.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use super::{Fleet, Spec, TOKEN};
use crate::lab::json_lines;

/// Writes an executable `#!/bin/sh` script at `path` beside the fleet's inventory.
fn executable(fleet: &Fleet, path: &str, body: &str) {
    let full = fleet.dir.path().join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The value of `name` in a file written by `env`, if it is there.
fn var(env: &str, name: &str) -> Option<String> {
    env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).map(String::from)
}

#[test]
fn a_failing_pre_deploy_hook_changes_no_container_and_post_deploy_sees_the_facts() {
    let hooks =
        "\n[hooks]\npre_deploy = \"hooks/pre\"\npost_deploy = \"hooks/post\"\nfailed = \"hooks/failed\"\n";
    let fleet =
        Fleet::new(Spec { env: "hk-accept", port: 18460, hosts: &[3], extra: hooks, ..Spec::default() });
    // The hooks are checked when the inventory loads: they exist before any command runs.
    executable(
        &fleet,
        "hooks/pre",
        "echo \"checking $FERRY_VERSION\"; if [ -e refuse ]; then echo 'change window closed'; exit 1; fi",
    );
    executable(&fleet, "hooks/post", "env > post-env");
    executable(&fleet, "hooks/failed", "touch failed-ran");
    let dir = fleet.dir.path();

    let out = fleet.deploy("1.0", &[]).run();
    let events = json_lines(&out.stdout);
    let run =
        events.iter().find(|e| e["type"] == "run_started").unwrap()["run"].as_str().unwrap().to_string();
    let container = fleet.inspect(3).unwrap();
    let digest = container["Config"]["Labels"]["ferry.digest"].as_str().unwrap().to_string();
    let env = std::fs::read_to_string(dir.join("post-env")).unwrap();
    assert_eq!(var(&env, "FERRY_APP").as_deref(), Some("web"));
    assert_eq!(var(&env, "FERRY_ENVIRONMENT").as_deref(), Some("hk-accept"));
    assert_eq!(var(&env, "FERRY_VERSION").as_deref(), Some("1.0"));
    assert_eq!(var(&env, "FERRY_DIGEST"), Some(digest), "the bytes that run");
    assert_eq!(var(&env, "FERRY_RUN"), Some(run));
    assert_eq!(var(&env, "FERRY_TARGETS").as_deref(), Some("h3"));
    assert_eq!(var(&env, "FERRY_OUTCOME").as_deref(), Some("succeeded"));
    assert!(var(&env, "FERRY_ACTOR").is_some_and(|a| a.contains('@')), "{env}");
    assert!(var(&env, "PATH").is_some());
    assert!(!env.contains(TOKEN) && var(&env, "WEB_TOKEN").is_none(), "no secret reaches a hook: {env}");
    assert!(var(&env, "FERRY_STATE_DIR").is_none(), "nothing else of the runner: {env}");
    let finished: Vec<&Value> = events.iter().filter(|e| e["type"] == "hook_finished").collect();
    assert_eq!(finished.len(), 2, "{}", out.stdout);
    assert_eq!((&finished[0]["hook"], &finished[0]["status"]), (&"pre_deploy".into(), &"ok".into()));
    assert_eq!((&finished[1]["hook"], &finished[1]["outcome"]), (&"post_deploy".into(), &"succeeded".into()));
    let first = fleet.id(3);
    std::fs::remove_file(dir.join("post-env")).unwrap();

    std::fs::write(dir.join("refuse"), "").unwrap();
    let out = fleet.deploy("2.0", &[]).code(4).stderr_contains("pre_deploy hook hooks/pre exited 1").run();
    let events = json_lines(&out.stdout);
    assert!(
        events.iter().all(|e| e["type"] != "target_step" && e["type"] != "target_finished"),
        "no target was worked on: {}",
        out.stdout
    );
    let hook = events.iter().find(|e| e["type"] == "hook_finished").unwrap();
    assert_eq!((&hook["status"], &hook["exit_code"]), (&"failed".into(), &1.into()));
    assert_eq!(hook["tail"], serde_json::json!(["checking 2.0", "change window closed"]));
    let error = events.last().unwrap();
    assert_eq!((&error["type"], &error["exit_code"]), (&"error".into(), &4.into()), "{}", out.stdout);
    // Nothing changed on the target: the same container, still 1.0, and no other of the app.
    assert_eq!(fleet.id(3), first);
    assert_eq!(fleet.inspect(3).unwrap()["Config"]["Labels"]["ferry.version"], "1.0");
    let all = fleet.on_host(3, "docker ps -aq --filter label=ferry.environment=hk-accept");
    assert_eq!(all.lines().count(), 1, "{all}");
    assert_eq!(fleet.http(3), "ferry web 1.0\n");
    assert!(!dir.join("post-env").exists() && !dir.join("failed-ran").exists(), "no other hook ran");
    assert_eq!(fleet.lock_on(3), "", "the lock is released");
    // On record: the hook's outcome and lines, and the run as refused.
    let audit = fleet.audit();
    let refused_run = events.iter().find(|e| e["type"] == "run_started").unwrap()["run"].clone();
    let of_run: Vec<&Value> = audit.iter().filter(|r| r["run"] == refused_run).collect();
    let hook = of_run.iter().find(|r| r["kind"] == "hook_finished").unwrap();
    assert_eq!(hook["detail"]["tail"], serde_json::json!(["checking 2.0", "change window closed"]));
    let finished = of_run.iter().find(|r| r["kind"] == "run_finished").unwrap();
    assert!(
        finished["detail"]["refused"].as_str().unwrap().starts_with("pre_deploy hook hooks/pre exited 1")
    );
    assert!(finished["detail"]["deployment"].is_null(), "a refused run is no deployment");

    // A failing post_deploy is reported and recorded; the deployment stands, exit 0.
    std::fs::remove_file(dir.join("refuse")).unwrap();
    executable(&fleet, "hooks/post", "echo 'cache purge failed'; exit 3");
    let out = fleet.deploy("1.1", &[]).run();
    let events = json_lines(&out.stdout);
    let hook = events.iter().find(|e| e["type"] == "hook_finished" && e["hook"] == "post_deploy").unwrap();
    assert_eq!((&hook["status"], &hook["exit_code"]), (&"failed".into(), &3.into()), "{}", out.stdout);
    assert_eq!(fleet.http(3), "ferry web 1.1\n", "the deployment stands");
    assert!(!dir.join("failed-ran").exists(), "the rollout succeeded: `failed` does not run");
}
