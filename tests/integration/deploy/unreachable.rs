//! One dead host never blocks the rest (issue 14, item 1), and a refused host key is a refusal,
//! not an unreachable target (item 7): against real sshd and dockerd, with a host's link cut.
//! A child of `deploy`, for its `Fleet`.
//!
//! Environments `u-*`, ports 18210–18219 (this area's share of the lab).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Fleet, Spec, finished};
use crate::lab::{FAULTS, Restore, json_lines};

/// The connect timeout the cut host is given: short, so the tests stay fast.
const CONNECT: &str = "3s";

/// `deploy web --env ENV --version V --yes --output json --connect-timeout 3s EXTRA`.
fn deploy(fleet: &Fleet, version: &str, extra: &[&str]) -> crate::test::Test {
    let mut args = vec![
        "deploy",
        "web",
        "--env",
        &fleet.env,
        "--version",
        version,
        "--yes",
        "--output",
        "json",
        "--connect-timeout",
        CONNECT,
    ];
    args.extend_from_slice(extra);
    fleet.ferry(&args).stdout_json_lines()
}

/// The target outcome records of `target`, oldest first.
fn outcomes(fleet: &Fleet, target: &str) -> Vec<Value> {
    fleet.audit().into_iter().filter(|r| r["kind"] == "target_outcome" && r["targets"][0] == target).collect()
}

#[test]
fn a_cut_host_is_unreachable_and_never_blocks_the_deploy_on_the_others() {
    let _faults = FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet = Fleet::new(Spec { env: "u-cut", port: 18210, hosts: &[1, 4], ..Spec::default() });
    deploy(&fleet, "1.0", &[]).run();
    assert_eq!(fleet.http(1), "ferry web 1.0\n");
    let _restore = Restore(&fleet.lab, &["restore", "4"]);
    fleet.lab.ctl(&["cut", "4"]);

    // The default budget (max_failures = 0): the unreachable target alone exhausts it, so the
    // rollout stops before any target changes.
    let started = Instant::now();
    let out = deploy(&fleet, "2.0", &[]).code(1).run();
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let events = json_lines(&out.stdout);
    let h4 = finished(&events, "h4");
    assert_eq!((&h4["status"], &h4["action"]), (&"unreachable".into(), &"untouched".into()), "{h4}");
    assert_eq!(finished(&events, "h1")["status"], "skipped", "{}", out.stdout);
    let end = events.iter().find(|e| e["type"] == "run_finished").unwrap();
    assert_eq!(
        end["stopped"], "rollout stopped before it began: 1 target was not reached (max_failures 0)",
        "{end}"
    );
    assert_eq!(fleet.http(1), "ferry web 1.0\n", "nothing changed on h1");
    assert_eq!(fleet.lock_on(1), "", "h1's lock is released");

    // `--limit` the healthy host: only its lock is needed, and it gets the fix.
    deploy(&fleet, "2.0", &["--limit", "h1"]).code(0).run();
    assert_eq!(fleet.http(1), "ferry web 2.0\n");

    // A budget that allows one failure: the healthy host is deployed (back to 1.0: the lab has
    // two healthy versions), the cut one reported.
    let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    let targets = "targets = [\"h1\", \"h4\"]\n";
    assert!(inventory.contains(targets), "{inventory}");
    let with_budget = inventory.replace(targets, &format!("{targets}rollout = {{ max_failures = 1 }}\n"));
    std::fs::write(fleet.inventory(), with_budget).unwrap();
    let started = Instant::now();
    let out = fleet
        .ferry(&[
            "deploy",
            "web",
            "--env",
            "u-cut",
            "--version",
            "1.0",
            "--yes",
            "--connect-timeout",
            CONNECT,
        ])
        .code(1)
        .stdout_contains("h4 ! unreachable: ")
        .run();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(out.stdout.contains("\nh1      ok  "), "{}", out.stdout);
    assert!(out.stdout.contains("\nh4      unreachable  untouched  "), "{}", out.stdout);
    assert_eq!(fleet.http(1), "ferry web 1.0\n", "the healthy host runs the new version");
    assert_eq!(
        fleet.inspect(1).unwrap()["Config"]["Labels"]["ferry.version"],
        "1.0",
        "the container itself says so"
    );

    // On record: the target's outcome and the deployment's per-target status.
    let recorded: Vec<Value> =
        outcomes(&fleet, "h4").into_iter().map(|r| r["detail"]["status"].clone()).collect();
    assert_eq!(recorded, ["ok", "unreachable", "unreachable"]);
    let last = fleet.audit().into_iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(last["detail"]["deployment"]["targets"]["h4"]["status"], "unreachable", "{last}");
    assert_eq!(last["detail"]["deployment"]["succeeded"], false, "{last}");
    let acquired = fleet.audit().into_iter().rev().find(|r| r["kind"] == "lock_acquired").unwrap();
    assert_eq!(acquired["targets"], serde_json::json!(["h1"]), "the lock covers the reachable target");
    fleet
        .ferry(&["history", "web", "--env", "u-cut", "--output", "json"])
        .stdout_contains("\"summary\":\"1 ok, 1 failed (1 unreachable), 0 skipped\"")
        .stdout_contains("\"summary\":\"0 ok, 1 failed (1 unreachable), 1 skipped\"")
        .run();

    // `status` says so, and exits 1.
    let out = fleet
        .ferry(&["status", "web", "--env", "u-cut", "--output", "json", "--connect-timeout", CONNECT])
        .code(1)
        .stdout_json()
        .run();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let h4 = report["targets"].as_array().unwrap().iter().find(|t| t["target"] == "h4").unwrap().clone();
    assert_eq!(h4["state"], "unreachable", "{h4}");
    assert!(h4["drift"][0].as_str().unwrap().starts_with("unreachable: "), "{h4}");

    // The lock commands act on the reachable targets, name the other one, and exit 1.
    fleet
        .ferry(&["lock", "status", "--env", "u-cut", "--connect-timeout", CONNECT])
        .code(1)
        .stdout_contains("\nh4      UNREACHABLE  ")
        .run();
    fleet
        .ferry(&["lock", "acquire", "--env", "u-cut", "--message", "freeze", "--connect-timeout", CONNECT])
        .code(1)
        .stdout_contains("locked u-cut until ")
        .stderr_contains("warning: h4 was not reached, its lock is unchanged: unreachable: ")
        .run();
    assert_eq!(fleet.lock_on(1), "held\n");
    fleet
        .ferry(&["lock", "release", "--env", "u-cut", "--connect-timeout", CONNECT])
        .code(1)
        .stdout_contains("released u-cut on ")
        .stderr_contains("warning: h4 was not reached, its lock is unchanged: unreachable: ")
        .run();
    assert_eq!(fleet.lock_on(1), "");

    // Back on line: `status` says which deployment missed h4.
    fleet.lab.ctl(&["restore", "4"]);
    let out =
        fleet.ferry(&["status", "web", "--env", "u-cut", "--output", "json"]).code(1).stdout_json().run();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let h4 = report["targets"].as_array().unwrap().iter().find(|t| t["target"] == "h4").unwrap().clone();
    let drift = h4["drift"].to_string();
    assert!(drift.contains("not reached by deployment ") && drift.contains("(1.0): unreachable"), "{h4}");
}

/// The lab's known_hosts line of host `n`, alone.
fn known_host(fleet: &Fleet, n: usize) -> String {
    let all = std::fs::read_to_string(fleet.lab.dir.join("known_hosts")).unwrap();
    let prefix = format!("10.200.0.{} ", 10 + n);
    all.lines().find(|l| l.starts_with(&prefix)).map(|l| format!("{l}\n")).unwrap()
}

#[test]
fn an_unknown_host_key_is_a_refusal_exit_4_in_deploy_and_run_alike() {
    let fleet = Fleet::new(Spec {
        env: "u-keys",
        port: 18211,
        hosts: &[1, 2],
        rollout: "rollout = { max_failures = 1 }",
        ..Spec::default()
    });
    // h2's key is not in this fleet's known_hosts.
    let known = fleet.dir.path().join("known_hosts");
    std::fs::write(&known, known_host(&fleet, 1)).unwrap();
    let lab_known = fleet.lab.dir.join("known_hosts").display().to_string();
    let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    assert!(inventory.contains(&lab_known), "{inventory}");
    std::fs::write(fleet.inventory(), inventory.replace(&lab_known, &known.display().to_string())).unwrap();
    let key = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(fleet.lab.dir.join("net/h2/hostkey.pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&key.stdout).split_whitespace().nth(1).unwrap().to_string();
    let refusal = format!(
        "h2 ! host key of h2 (10.200.0.12:22) is not known: ssh-ed25519 {fingerprint} not in {}; check the \
         fingerprint and run `ferry trust`\n",
        known.display()
    );
    fleet.ferry(&["run", "--env", "u-keys", "--", "true"]).code(4).stdout_contains(&refusal).run();
    fleet.ferry(&["run", "--env", "u-keys", "--lock", "--", "true"]).code(4).stdout_contains(&refusal).run();
    let out = fleet
        .ferry(&["deploy", "web", "--env", "u-keys", "--version", "1.0", "--yes"])
        .code(4)
        .stdout_contains(&refusal)
        .run();
    assert!(out.stdout.contains("\nh2      refused  untouched  "), "{}", out.stdout);
    assert_eq!(fleet.http(1), "ferry web 1.0\n", "within the budget, the trusted host is deployed");
    assert_eq!(fleet.inspect(2), None, "nothing was sent to h2");
}
