//! Networks and volumes against the lab (issue 16 part 5, its acceptance): after a deploy both
//! exist on the target with ferry's labels and the container is in the networks (two of them:
//! the lab's Docker 20.10 takes one `--network` per `docker run`, so the second is connected
//! before the start); a file written to the volume survives a redeploy of another version; a
//! network that exists on the target with other options (`--internal`) is exit 2 before anything
//! changes: no container and no volume created, the old container untouched. Behind the proxy,
//! the container joins `ferry` (with its per-deployment alias, which the proxy's gate and route
//! use) and the app's network, and the replacement beside the old container works the same way.
//! A child of `deploy`, for its `Fleet` and the proxy tests' `Px`. Environments `nv-*`, port
//! 18480, h5.

use super::proxied::{H5, Px};
use super::{Fleet, Spec};
use crate::lab::json_lines;

/// The app's keys at first: two networks and a volume.
const KEYS: &str = "networks = [\"nv-backend\", \"nv-second\"]\nvolumes = { nv-data = \"/data\" }\n";

/// `docker network|volume inspect` of `name` on h5 (`None` when it is not there).
fn inspect(fleet: &Fleet, kind: &str, name: &str) -> Option<serde_json::Value> {
    let text = fleet.on_host(5, &format!("docker {kind} inspect {name} 2>/dev/null"));
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    parsed.into_iter().next()
}

#[test]
fn networks_and_volumes_are_created_kept_across_deploys_and_a_foreign_network_stops_the_run() {
    // The proxy tests' link cut drops h5's SSH traffic: not while this test deploys there.
    let _h5 = H5.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet =
        Fleet::new(Spec { env: "nv-accept", port: 18480, hosts: &[5], extra: KEYS, ..Spec::default() });
    // What an earlier run of this test left behind (networks and volumes outlive containers).
    fleet.on_host(
        5,
        "docker network rm nv-backend nv-second nv-internal > /dev/null 2>&1; \
         docker volume rm nv-data nv-fresh > /dev/null 2>&1; true",
    );

    // The reason for `docker network connect`: one `--network` per `docker run` before API 1.44.
    let api = fleet.on_host(5, "docker version -f '{{.Server.APIVersion}}'");
    eprintln!("h5's Docker engine API: {}", api.trim());
    let out = fleet.deploy("1.0", &[]).run();
    let events = json_lines(&out.stdout);
    let steps: Vec<&str> =
        events.iter().filter(|e| e["type"] == "target_step").filter_map(|e| e["step"].as_str()).collect();
    assert!(steps.contains(&"network nv-backend is missing: created before the container"), "{steps:?}");
    assert!(steps.contains(&"volume nv-data is missing: created before the container"), "{steps:?}");
    for network in ["nv-backend", "nv-second"] {
        let n = inspect(&fleet, "network", network).unwrap_or_else(|| panic!("no network {network}"));
        assert_eq!(n["Driver"], "bridge", "{n}");
        assert_eq!(n["Internal"], false, "{n}");
        assert_eq!(n["Labels"]["ferry.managed"], "true", "{n}");
        assert_eq!(n["Labels"]["ferry.app"], "web", "{n}");
    }
    let volume = inspect(&fleet, "volume", "nv-data").unwrap();
    assert_eq!(volume["Labels"]["ferry.managed"], "true", "{volume}");
    assert_eq!(volume["Labels"]["ferry.app"], "web", "{volume}");
    let container = fleet.inspect(5).unwrap();
    let networks = container["NetworkSettings"]["Networks"].as_object().unwrap();
    let mut joined: Vec<&str> = networks.keys().map(String::as_str).collect();
    joined.sort_unstable();
    assert_eq!(joined, ["nv-backend", "nv-second"], "in both networks, and only those");
    let mounts = container["Mounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["Type"] == "volume" && m["Name"] == "nv-data" && m["Destination"] == "/data"),
        "{mounts:?}"
    );
    assert_eq!(container["Config"]["Labels"]["ferry.networks"], "nv-backend,nv-second");
    assert_eq!(fleet.http(5), "ferry web 1.0\n", "started, and published as the template says");

    // Data in the volume survives a redeploy of another version.
    fleet.on_host(5, "docker exec web-nv-accept sh -c 'echo kept > /data/marker'");
    let first = fleet.id(5);
    fleet.deploy("1.1", &[]).run();
    assert_ne!(fleet.id(5), first, "a new container");
    assert_eq!(fleet.http(5), "ferry web 1.1\n");
    assert_eq!(fleet.on_host(5, "docker exec web-nv-accept cat /data/marker"), "kept\n");
    let running = fleet.id(5);
    let started_at = fleet.inspect(5).unwrap()["State"]["StartedAt"].clone();

    // A network that exists with other options: exit 2, and nothing anywhere changes (the new
    // volume in the same change is not created either).
    fleet.on_host(5, "docker network create --internal nv-internal > /dev/null");
    let inventory = fleet.dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&inventory).unwrap();
    let changed = text.replace(KEYS, "networks = [\"nv-backend\", \"nv-internal\"]\nvolumes = { nv-data = \"/data\", nv-fresh = \"/fresh\" }\n");
    assert_ne!(changed, text);
    std::fs::write(&inventory, changed).unwrap();
    // `plan --diff` says what of them changes (and nothing else: the version is the same).
    let out = fleet
        .ferry(&["plan", "web", "--env", "nv-accept", "--version", "1.1", "--diff", "--output", "json"])
        .stdout_json()
        .run();
    assert_eq!(
        out.json()["targets"][0]["reasons"],
        serde_json::json!([
            "networks: nv-backend, nv-second → nv-backend, nv-internal",
            "volumes: nv-data:/data → nv-data:/data, nv-fresh:/fresh"
        ]),
        "{}",
        out.stdout
    );
    let out = fleet
        .ferry(&["deploy", "web", "--env", "nv-accept", "--version", "2.0", "--yes", "--quiet"])
        .code(2)
        .stderr_snapshot()
        .run();
    insta::assert_snapshot!(out.stderr);
    assert_eq!(fleet.id(5), running, "the old container is untouched");
    let container = fleet.inspect(5).unwrap();
    assert_eq!(container["State"]["Running"], true);
    assert_eq!(container["State"]["StartedAt"], started_at, "not even restarted");
    assert_eq!(container["Config"]["Labels"]["ferry.version"], "1.1");
    let all = fleet.on_host(5, "docker ps -aq --filter label=ferry.environment=nv-accept");
    assert_eq!(all.lines().count(), 1, "no container created: {all}");
    assert!(inspect(&fleet, "volume", "nv-fresh").is_none(), "no volume created");
    assert_eq!(inspect(&fleet, "network", "nv-internal").unwrap()["Internal"], true, "left as it was");
    assert_eq!(fleet.lock_on(5), "", "the lock is released");
    let audit = fleet.audit();
    let finished = audit.iter().rfind(|r| r["kind"] == "run_finished").unwrap();
    assert!(
        finished["detail"]["refused"]
            .as_str()
            .unwrap()
            .starts_with("network nv-internal on target h5 exists with internal true"),
        "{finished}"
    );

    // Volumes are never removed by ferry, not by `remove` either.
    fleet
        .ferry(&["remove", "web", "--env", "nv-accept", "--yes", "--output", "json"])
        .stdout_json_lines()
        .run();
    assert!(fleet.inspect(5).is_none(), "the container is removed");
    assert!(inspect(&fleet, "volume", "nv-data").is_some(), "the volume stays");
}

/// Behind the proxy: `ferry` first (the alias the route points at is on it), then the app's
/// network, connected before the start; a redeploy starts `NAME-next` the same way beside the
/// old container and switches to it.
#[test]
fn behind_the_proxy_the_container_joins_ferry_and_its_networks() {
    let px = Px::new(&["nv-px"], "networks = [\"nv-px-back\"]");
    px.on_host("docker network rm nv-px-back > /dev/null 2>&1; true");
    px.deploy("nv-px", "1.0").run();
    px.wait_for("nv-px", "ferry web 1.0\n");
    let joined = |px: &Px| {
        let text = px.on_host(
            "docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' web-nv-px",
        );
        let mut names: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        names.sort();
        names
    };
    assert_eq!(joined(&px), ["ferry", "nv-px-back"]);
    let labels = px.on_host("docker network inspect -f '{{index .Labels \"ferry.managed\"}} {{index .Labels \"ferry.app\"}}' nv-px-back");
    assert_eq!(labels, "true web\n");
    px.deploy("nv-px", "1.1").run();
    px.wait_for("nv-px", "ferry web 1.1\n");
    assert_eq!(px.containers("nv-px"), ["web-nv-px"], "NAME-next renamed, the old one removed");
    assert_eq!(px.version("nv-px"), "1.1");
    assert_eq!(joined(&px), ["ferry", "nv-px-back"]);
}
