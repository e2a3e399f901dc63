//! What a deployment leaves on a target, and what survives a cut: secrets and registry
//! passwords never stay in a file there, and the replace step finishes on the target when the
//! runner's link is gone (issue #12, items 5–7). A child of `deploy`, for its `Fleet`.
//!
//! Scans look for a value in every regular file a deployment could have written on a lab host:
//! the login's home (`/root`, private to the host), its private `/run`, `/dev/shm`, `/var/tmp`
//! and `/tmp`, limited to files changed since the test started (the machine's `/tmp` is shared
//! and large). Docker's own state is left out on purpose (`/var/lib/docker`, `/run/docker`,
//! `/run/containerd`): Docker keeps a container's environment in its config there by design,
//! which ferry cannot change; what ferry controls is that nothing else holds the value.

use std::time::Duration;

use super::{Fleet, Spec, actions, finished};
use crate::lab::{FAULTS, json_lines};

/// The files on host `n` changed since `mark` that contain any of `needles`.
fn files_holding(fleet: &Fleet, n: usize, mark: &std::path::Path, needles: &[&str]) -> Vec<String> {
    let patterns: String = needles.iter().map(|p| format!(" -e '{p}'")).collect();
    let script = format!(
        "find /root /run /dev/shm /var/tmp /tmp -xdev \
           \\( -path /run/docker -o -path /run/containerd -o -path /var/lib/docker \\) -prune \
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
