//! Image retention against the lab (issue 16 part 4, its acceptance): seven deployments of
//! different images with `retention = { images = 3 }` leave the images of the last three on the
//! target, another app's image untouched; a rollback to the previous one then runs with the
//! registry out of reach (no pull); `prune --dry-run` lists without removing, `prune` after the
//! number is lowered removes and reports bytes freed. A child of `deploy`, for its `Fleet`.
//! Environments `rt-*`, ports 18470–18479, host h4 under [`FAULTS`] (no other test deploys there
//! meanwhile, so what the target holds is what this test did, plus other tests' containers).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Fleet, Spec};
use crate::lab::{FAULTS, Restore, json_lines};

const REPO: &str = "10.200.0.1:5000/ferry/web";
const OTHER_REPO: &str = "10.200.0.1:5000/ferry/many";

/// The images of `repo` on h4: id → its digests there.
fn images(fleet: &Fleet, repo: &str) -> BTreeMap<String, Vec<String>> {
    let text = fleet.on_host(
        4,
        &format!(
            "ids=$(docker image ls -q --no-trunc {repo} | sort -u); [ -z \"$ids\" ] || \
             docker image inspect --format '{{{{.Id}}}} {{{{range .RepoDigests}}}}{{{{.}}}} {{{{end}}}}' $ids"
        ),
    );
    text.lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let id = words.next()?.to_string();
            let digests =
                words.filter_map(|w| w.strip_prefix(&format!("{repo}@"))).map(String::from).collect();
            Some((id, digests))
        })
        .collect()
}

/// The image ids on h4 that environments other than `except` hold: used by their containers
/// (running or stopped), or pulled by their deployments within the hour (the pull notes other
/// lab tests' deployments leave in ~/.ferry/pulled).
fn used_by_others(fleet: &Fleet, except: &str) -> BTreeSet<String> {
    let script = "for c in $(docker ps -aq --no-trunc); do \
                  docker inspect --format '{{index .Config.Labels \"ferry.environment\"}} {{.Image}}' $c; done; \
                  [ ! -d ~/.ferry/pulled ] || find ~/.ferry/pulled -type f -mmin -60 -exec cat {} + | \
                  while IFS=$(printf '\\t') read -r app env image; do \
                    id=$(docker image inspect --format '{{.Id}}' \"$image\" 2> /dev/null) && echo \"$env $id\"; done";
    let text = fleet.on_host(4, script);
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(env, _)| *env != except)
        .map(|(_, image)| image.to_string())
        .collect()
}

fn present(fleet: &Fleet, digest: &str) -> bool {
    fleet.on_host(4, &format!("docker image inspect {REPO}@{digest} > /dev/null 2>&1 && echo yes")) == "yes\n"
}

/// The `pruned` events of a run.
fn pruned(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "pruned").collect()
}

#[test]
fn seven_deployments_keep_three_images_and_a_rollback_needs_no_registry() {
    let _faults = FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet = Fleet::new(Spec {
        env: "rt-keep",
        port: 18470,
        hosts: &[4],
        extra: "retention = { images = 3 }",
        ..Spec::default()
    });
    // Another app, from another repository, in another environment on the same target.
    let mut inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    inventory += "\n[environments.rt-other]\ntargets = [\"h4\"]\n\n[apps.other]\nfeed = \"lab\"\n\
                  image = \"ferry/many\"\ntemplate = \"other.j2\"\ndeploy_to = [\"rt-other\"]\n\
                  health = { grace = \"1s\" }\n";
    std::fs::write(fleet.inventory(), inventory).unwrap();
    std::fs::write(
        fleet.dir.path().join("templates/other.j2"),
        "docker run --restart unless-stopped --stop-timeout 1 -p 18471:80 {{ image }} httpd -f -p 80 -h /www\n",
    )
    .unwrap();
    let clean = "docker ps -aq --filter label=ferry.environment=rt-other | xargs -r docker rm -f; \
                 docker rm -f web-rt-keep-ferry-old-stale > /dev/null 2>&1; rm -rf /root/.ferry/locks/rt-other";
    fleet.on_host(4, clean);
    fleet
        .ferry(&["deploy", "other", "--env", "rt-other", "--version", "0.0.0", "--yes", "--output", "json"])
        .stdout_json_lines()
        .run();
    // Removed again: its image stays, used by no container, a candidate only if the repository
    // were not checked.
    fleet
        .ferry(&["remove", "other", "--env", "rt-other", "--yes", "--output", "json"])
        .stdout_json_lines()
        .run();
    let other = images(&fleet, OTHER_REPO);
    assert_eq!(other.len(), 1, "{other:?}");

    let mut digests = Vec::new();
    let mut last = Vec::new();
    for n in 1..=7 {
        let version = format!("r{n}");
        last = json_lines(&fleet.deploy(&version, &[]).run().stdout);
        assert_eq!(fleet.http(4), format!("ferry web {version}\n"));
        let labels = &fleet.inspect(4).unwrap()["Config"]["Labels"];
        digests.push(labels["ferry.digest"].as_str().unwrap().to_string());
    }
    assert_eq!(digests.iter().collect::<BTreeSet<_>>().len(), 7, "seven different images: {digests:?}");
    // The seventh deployment removed r4 (r5 and r6 stay: the last three deployments, r6 also
    // the one a rollback returns to), and said so.
    let events = pruned(&last);
    assert_eq!(events.len(), 1, "{last:?}");
    let removed: Vec<&str> =
        events[0]["images"].as_array().unwrap().iter().map(|i| i["version"].as_str().unwrap()).collect();
    assert_eq!(removed, ["r4"], "{}", events[0]);
    assert!(events[0]["bytes"].as_u64().unwrap() > 0, "{}", events[0]);
    assert!(events[0].get("error").is_none(), "{}", events[0]);
    let records = fleet.audit();
    // On record in the deployment's run_finished, beside the deployment.
    let record = records.iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    let h4 = &record["detail"]["retention"]["h4"];
    assert_eq!(h4["images"][0]["version"], "r4", "{record}");
    assert!(h4["bytes"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["detail"]["deployment"]["succeeded"], true);
    assert!(records.iter().all(|r| r["kind"] != "pruned"), "no record kind of its own");

    // Exactly the last three deployed are left of ferry/web, besides what other containers use.
    let left = images(&fleet, REPO);
    let others = used_by_others(&fleet, "rt-keep");
    let kept: BTreeSet<&str> = digests[4..].iter().map(String::as_str).collect();
    let ours: BTreeSet<&str> = left
        .iter()
        .filter(|(id, _)| !others.contains(*id))
        .flat_map(|(_, d)| d.iter().map(String::as_str))
        .collect();
    assert_eq!(ours, kept, "left on h4: {left:?}; used by other containers: {others:?}");
    for (n, digest) in digests.iter().enumerate() {
        assert_eq!(present(&fleet, digest), n >= 4, "r{}", n + 1);
    }
    assert_eq!(images(&fleet, OTHER_REPO), other, "another app's image is untouched");

    // A stopped leftover of a replace step of the app here goes with `prune`; one of another
    // environment stays.
    let r6 = format!("{REPO}@{}", digests[5]);
    fleet.on_host(
        4,
        &format!(
            "docker create --name web-rt-keep-ferry-old-stale --label ferry.app=web --label ferry.environment=rt-keep {r6} > /dev/null; \
             docker create --name rt-other-stale --label ferry.app=web --label ferry.environment=rt-other {OTHER_REPO}:0.0.0 > /dev/null 2>&1 || \
             docker create --name rt-other-stale --label ferry.app=web --label ferry.environment=rt-other $(docker image ls -q {OTHER_REPO} | head -n 1) > /dev/null"
        ),
    );
    let text = std::fs::read_to_string(fleet.inventory()).unwrap();
    std::fs::write(
        fleet.inventory(),
        text.replace("retention = { images = 3 }", "retention = { images = 1 }"),
    )
    .unwrap();
    // One image now: r7 runs, r6 is what a rollback returns to: r5 goes.
    let dry = fleet
        .ferry(&["prune", "web", "--env", "rt-keep", "--dry-run", "--output", "json"])
        .stdout_json_lines()
        .run();
    let dry = json_lines(&dry.stdout);
    let said = pruned(&dry);
    assert_eq!(said.len(), 1, "{dry:?}");
    assert_eq!(said[0]["dry_run"], true);
    assert_eq!(said[0]["images"][0]["version"], "r5", "{}", said[0]);
    assert_eq!(said[0]["images"].as_array().unwrap().len(), 1, "{}", said[0]);
    assert_eq!(said[0]["containers"], serde_json::json!(["web-rt-keep-ferry-old-stale"]));
    assert!(present(&fleet, &digests[4]), "a dry run removes nothing");
    assert_eq!(
        fleet.on_host(4, "docker ps -aq --filter name=web-rt-keep-ferry-old-stale").lines().count(),
        1
    );

    let out = fleet
        .ferry(&["prune", "web", "--env", "rt-keep", "--yes", "--output", "plain"])
        .stdout_contains(&format!(
            "h4 - retention: removed 1 image ({} r5), 1 container; ",
            &digests[4][7..19]
        ))
        .stdout_contains("\nprune web in rt-keep\nTARGET  STATUS  IMAGES  CONTAINERS  FREED")
        .run();
    assert!(!out.stdout.contains("; 0 B freed"), "bytes freed: {}", out.stdout);
    assert!(!present(&fleet, &digests[4]), "r5 is gone");
    assert!(present(&fleet, &digests[5]) && present(&fleet, &digests[6]), "r7 runs, r6 is the rollback's");
    assert_eq!(
        fleet.on_host(4, "docker ps -aq --filter name=web-rt-keep-ferry-old-stale"),
        "",
        "the leftover is gone"
    );
    assert_eq!(
        fleet.on_host(4, "docker ps -aq --filter name=rt-other-stale").lines().count(),
        1,
        "another environment's stays"
    );
    assert_eq!(fleet.http(4), "ferry web r7\n", "the running container is untouched");
    assert_eq!(images(&fleet, OTHER_REPO), other, "another app's image is untouched");
    let records = fleet.audit();
    let record =
        records.iter().rev().find(|r| r["kind"] == "run_finished" && r["command"] == "prune").unwrap();
    let h4 = &record["detail"]["retention"]["h4"];
    assert!(h4["bytes"].as_u64().unwrap() > 0, "{record}");
    assert_eq!((&h4["dry_run"], &h4["images"][0]["version"]), (&false.into(), &"r5".into()), "{record}");
    assert_eq!(h4["containers"], serde_json::json!(["web-rt-keep-ferry-old-stale"]), "{record}");

    // With the registry out of reach for h4, an image it lacks cannot be pulled (the block
    // works), and the rollback to r6 runs all the same: its image was kept, nothing is pulled.
    let _registry = Restore(&fleet.lab, &["registry", "4"]);
    fleet.lab.ctl(&["noregistry", "4"]);
    let refused =
        fleet.on_host(4, &format!("docker pull {REPO}@{} > /dev/null 2>&1 || echo refused", digests[0]));
    assert_eq!(refused, "refused\n", "the registry is out of reach");
    let out = fleet
        .ferry(&["rollback", "web", "--env", "rt-keep", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("rollback: web in rt-keep returns to deployment ")
        .run();
    assert_eq!(fleet.http(4), "ferry web r6\n", "{}", out.stdout);
    let steps: Vec<String> = out
        .json_lines()
        .iter()
        .filter(|e| e["type"] == "target_step")
        .filter_map(|e| e["step"].as_str().map(String::from))
        .collect();
    assert!(steps.contains(&format!("{} is here already: not pulled", digests[5])), "{steps:?}");
    // Nothing to remove (r6 runs, r7 is the rollback's): no event, and in the record.
    assert!(pruned(&out.json_lines()).is_empty(), "{}", out.stdout);
    let records = fleet.audit();
    let record = records.iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(record["detail"]["retention"]["h4"]["images"], serde_json::json!([]), "{record}");
    assert!(present(&fleet, &digests[6]), "r7 is kept for a rollback");
    drop(_registry);

    fleet.on_host(4, &format!("docker rm -f rt-other-stale > /dev/null 2>&1; {clean}"));
}
