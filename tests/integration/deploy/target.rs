//! What a deployment leaves on a target, and what survives a cut: secrets and registry
//! passwords never stay in a file there, and the replace step finishes on the target when the
//! runner's link is gone (issue #12, items 5–7). A child of `deploy`, for its `Fleet`.
//!
//! Scans look for a value in every regular file a deployment could have written on a lab host:
//! the login's home (`/root`, private to the host), its private `/run`, `/dev/shm`, `/var/tmp`
//! and `/tmp`, limited to files changed since the test started (the machine's `/tmp` is shared
//! and large). Docker's own state is left out on purpose (`/var/lib/docker`, `/run/docker`,
//! `/run/containerd`, and the lab folder `net/hN/docker-lib` that backs `/var/lib/docker`):
//! Docker keeps a container's environment in its config there by design, which ferry cannot
//! change; what ferry controls is that nothing else holds the value.

use std::time::{Duration, Instant};

use super::{Fleet, Spec, TOKEN, actions, finished};
use crate::lab::{FAULTS, Restore, json_lines};

/// The files on host `n` changed since `mark` that contain any of `needles`.
fn files_holding(fleet: &Fleet, n: usize, mark: &std::path::Path, needles: &[&str]) -> Vec<String> {
    let patterns: String = needles.iter().map(|p| format!(" -e '{p}'")).collect();
    let script = format!(
        "find /root /run /dev/shm /var/tmp /tmp -xdev \
           \\( -path /run/docker -o -path /run/containerd -o -path /var/lib/docker -o -path '*/docker-lib' \\) -prune \
           -o -type f -newer '{mark}' -print0 2>/dev/null | xargs -0 -r grep -lF{patterns} 2>/dev/null",
        mark = mark.display()
    );
    fleet.on_host(n, &script).lines().map(str::to_string).collect()
}

/// A file to compare modification times against, made before the deployment starts.
fn mark(fleet: &Fleet) -> std::path::PathBuf {
    let path = fleet.dir.path().join("scan-mark");
    std::fs::write(&path, "").unwrap();
    // mtimes have coarse granularity on some filesystems: let the clock move past the mark.
    std::thread::sleep(Duration::from_millis(20));
    path
}

#[test]
fn secrets_never_touch_the_targets_disk_during_or_after_a_deploy() {
    let fleet = Fleet::new(Spec { env: "t-disk", port: 18150, hosts: &[1], ..Spec::default() });
    let secret = format!("tok-on-no-disk-{}", std::process::id());
    let deploy = |greeting: &str| {
        let set = format!("greeting={greeting}");
        let args = [
            "deploy",
            "web",
            "--env",
            "t-disk",
            "--version",
            "1.0",
            "--yes",
            "--output",
            "json",
            "--set",
            &set,
        ];
        fleet.spawn(&args, &secret)
    };
    let mark = mark(&fleet);
    let mut scans = 0;
    // The first deploy creates the container; the second replaces it, so the old container's
    // stop (a second, `--stop-timeout 1`) holds the replace step open while the scans run.
    for greeting in ["first", "second"] {
        let mut child = deploy(greeting);
        while child.try_wait().unwrap().is_none() {
            let found = files_holding(&fleet, 1, &mark, &[&secret]);
            assert!(found.is_empty(), "during the deploy, files on h1 hold the secret: {found:?}");
            scans += 1;
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(scans >= 4, "the target was scanned {scans} times during the deploys");
    let found = files_holding(&fleet, 1, &mark, &[&secret]);
    assert!(found.is_empty(), "after the deploy, files on h1 hold the secret: {found:?}");
    // The container did get it, through the pipe.
    assert!(fleet.env_of(1).contains(&format!("TOKEN={secret}")), "{:?}", fleet.env_of(1));
    assert!(fleet.env_of(1).contains(&"GREETING=second".to_string()));
}

#[test]
fn a_registry_login_leaves_no_password_on_the_target() {
    // On h4, under FAULTS: no other test deploys there meanwhile (the feeds tests log in to the
    // same registry with the same password on h1–h3).
    let _faults = FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet = Fleet::new(Spec { env: "t-login", port: 18151, hosts: &[4], ..Spec::default() });
    let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    let feed = format!(
        "url = \"https://10.200.0.1:5001\"\nca_file = \"{}\"\nusername = {{ env = \"REG_USER\" }}\n\
         password = {{ env = \"REG_PASSWORD\" }}",
        fleet.lab.dir.join("registry2/ca.crt").display()
    );
    let authenticated = inventory.replace("url = \"http://10.200.0.1:5000\"", &feed);
    assert_ne!(authenticated, inventory, "the fleet's feed is the authenticated one now");
    std::fs::write(fleet.inventory(), authenticated).unwrap();
    let mark = mark(&fleet);
    let out = fleet
        .deploy("1.0", &[])
        .env("REG_USER", "tester")
        .env("REG_PASSWORD", "s3cret-lab")
        .never_prints("s3cret-lab")
        .run();
    let events = json_lines(&out.stdout);
    assert_eq!(actions(&events), ["created"], "{}", out.stdout);
    let image = finished(&events, "h4")["container"]["image"].as_str().unwrap().to_string();
    assert!(image.starts_with("10.200.0.1:5001/ferry/web@sha256:"), "pulled from the TLS feed: {image}");
    // `docker login` stores "user:password" in base64 (`auths.*.auth`): look for both forms.
    let found = files_holding(&fleet, 4, &mark, &["s3cret-lab", "dGVzdGVyOnMzY3JldC1sYWI="]);
    assert!(found.is_empty(), "files on h4 hold the registry password: {found:?}");
    let leftovers = fleet.on_host(4, "ls -a /root/.ferry | grep docker-config");
    assert_eq!(leftovers, "", "the private client config is removed");
}

/// The replace step runs detached on the target: a link cut right after the old container
/// stopped leaves the target to finish alone. With no runner to confirm the new container, the
/// step restores the old one by itself (within `ABANDON_AFTER`, 15 s, of the last heartbeat),
/// so the target runs a container again well within 60 s, and `ferry status` says what happened.
#[test]
fn a_link_cut_right_after_the_old_container_stopped_leaves_a_container_running_and_status_says_which() {
    let _faults = FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet = Fleet::new(Spec {
        env: "t-cut",
        port: 18152,
        hosts: &[4],
        health: "{ grace = \"2s\", timeout = \"20s\" }",
        ..Spec::default()
    });
    fleet.on_host(4, "rm -rf /root/.ferry/replace/web-t-cut");
    let first = json_lines(&fleet.deploy("1.0", &[]).run().stdout);
    assert_eq!(actions(&first), ["created"]);
    let old = fleet.id(4);
    let mut child = fleet
        .spawn(&["deploy", "web", "--env", "t-cut", "--version", "2.0", "--yes", "--output", "json"], TOKEN);
    // Watched from inside the host's namespaces, which needs no link.
    let waiting = Instant::now();
    while fleet.on_host(4, &format!("docker inspect -f '{{{{.State.Running}}}}' {old}")).trim() != "false" {
        assert!(waiting.elapsed() < Duration::from_secs(30), "the old container never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let restore = Restore(&fleet.lab, &["restore", "4"]);
    fleet.lab.ctl(&["cut", "4"]);
    let cut = Instant::now();
    let status = loop {
        let status = fleet.on_host(4, "cat /root/.ferry/replace/web-t-cut/status 2>/dev/null");
        if status.lines().any(|l| l.starts_with("done ")) {
            break status;
        }
        assert!(cut.elapsed() < Duration::from_secs(60), "no outcome 60 s after the cut: {status}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let ended = cut.elapsed();
    // A figure for the record (shown with --nocapture).
    eprintln!("t-cut: the target's replace step ended {ended:?} after the cut");
    assert!(status.ends_with("done abandoned-restored\n"), "{status}");
    assert!(status.contains("\nstarted ") && status.contains("\ngated 0\n"), "2.0 ran and passed: {status}");
    // Exactly one container of the app runs, the old one, under its own name, and it stays so.
    for _ in 0..4 {
        let running = fleet.on_host(
            4,
            "docker ps --filter label=ferry.environment=t-cut --format '{{.ID}} {{.Names}} {{.Label \"ferry.version\"}}'",
        );
        assert_eq!(running, format!("{} web-t-cut 1.0\n", &old[..12]), "{ended:?} after the cut");
        std::thread::sleep(Duration::from_millis(500));
    }
    let answer = fleet.on_host(4, "busybox wget -q -O - http://127.0.0.1:18152/");
    assert_eq!(answer, "ferry web 1.0\n", "it answers (asked from inside the cut-off host)");
    // ferry ends on its own while the link stays cut: every wait over the dead link has a
    // deadline (issue 15: once it sat here 14 minutes). Its longest way out: the poll (30 s), the
    // mirror line (10 s) and the lock's release (30 s), each with 5 s to give up, and the close.
    while child.try_wait().unwrap().is_none() {
        if cut.elapsed() > Duration::from_secs(150) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("ferry deploy still ran 150 s after the cut: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("t-cut: ferry deploy ended {:?} after the cut", cut.elapsed());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let h4 = finished(&json_lines(&stdout), "h4");
    assert_eq!(h4["status"], "error", "{h4}");
    assert!(h4["error"].as_str().unwrap().contains("the target restores it by itself"), "{h4}");
    drop(restore);
    // The next command reads the outcome nobody collected.
    let report =
        fleet.ferry(&["status", "web", "--env", "t-cut", "--output", "json"]).stdout_json().run().json();
    let target = &report["targets"][0];
    assert_eq!(target["version"], "1.0", "{report}");
    assert_eq!(target["container"]["id"], old.as_str(), "{report}");
    let unread = &target["unread_replace_steps"][0];
    assert_eq!(unread["version"], "2.0", "{report}");
    assert_eq!(
        unread["outcome"], "nobody collected the result: the script restored the old container by itself",
        "{report}"
    );
    fleet
        .ferry(&["status", "web", "--env", "t-cut"])
        .stdout_contains(&format!(
            "\nh4: the replace step of deployment {} (2.0) ended with nobody to read it: nobody collected \
             the result: the script restored the old container by itself\n",
            unread["deployment"].as_str().unwrap()
        ))
        .run();
    // The next deploy reports it too, and clears it. The cut run could not release h4's lock
    // (the link was down), and it expires only after its TTL: break it as an operator would.
    fleet.on_host(4, "rm -rf /root/.ferry/locks/t-cut");
    let again = fleet.deploy("1.0", &[]).run();
    assert!(again.stdout.contains("an earlier replace step here (deployment "), "{}", again.stdout);
    let left = fleet.on_host(4, "[ ! -e /root/.ferry/replace/web-t-cut ] || echo present");
    assert_eq!(left, "", "read, then cleared");
}
