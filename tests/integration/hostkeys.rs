//! Lab tests of SSH trust details (issue 12, item 13) against real sshd: `ferry trust` reaches
//! a target through its jump host, and a host recorded only by its RSA key (the lab's sshd has
//! an Ed25519 and an RSA host key) is trusted, not refused as "changed".

use std::process::Command;

use crate::lab::{Lab, lab};
use crate::test::Test;

/// A copy of the lab inventory in a folder of its own with `known_hosts` as its known_hosts
/// file; returns (folder, inventory path).
fn with_known_hosts(lab: &Lab, known_hosts: &str) -> (tempfile::TempDir, String) {
    let folder = tempfile::tempdir().unwrap();
    let key = lab.dir.join("ssh/client_key").display().to_string();
    let text = std::fs::read_to_string(lab.dir.join("lab.toml"))
        .unwrap()
        .replace("identity = \"ssh/client_key\"", &format!("identity = \"{key}\""));
    std::fs::write(folder.path().join("known_hosts"), known_hosts).unwrap();
    let path = folder.path().join("lab.toml");
    std::fs::write(&path, text).unwrap();
    (folder, path.display().to_string())
}

/// The `ALGORITHM BASE64` of a public key file in the lab.
fn public_key(lab: &Lab, file: &str) -> String {
    let text = std::fs::read_to_string(lab.dir.join(file)).unwrap();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn fingerprint(lab: &Lab, file: &str) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(lab.dir.join(file)).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn trust_fetches_the_key_of_a_target_behind_a_jump_host_through_that_jump_host() {
    let lab = lab();
    // Only the jump host h1 is trusted; `inner` is 127.0.0.1 as seen from h1 (nothing listens
    // on the runner's own 127.0.0.1:22): a direct connection cannot reach it.
    let h1 = format!("10.200.0.11 {}\n", public_key(&lab, "net/h1/hostkey.pub"));
    let (folder, inventory) = with_known_hosts(&lab, &h1);
    let known_hosts = folder.path().join("known_hosts");
    let h1_fingerprint = fingerprint(&lab, "net/h1/hostkey.pub");
    let out = Test::bare()
        .env("FERRY_STATE_DIR", &folder.path().join("state").display().to_string())
        .args(["-i", &inventory, "trust", "--env", "inner", "--yes"])
        .stdout(&format!(
            "TARGET  ADDRESS    STATE  KEY          FINGERPRINT{pad}  DETAIL\n\
             inner   127.0.0.1  NEW    ssh-ed25519  {h1_fingerprint}\n",
            pad = " ".repeat(h1_fingerprint.len() - "FINGERPRINT".len())
        ))
        .stderr(&format!("recorded 1 host key in {}\n", known_hosts.display()))
        .run();
    assert!(out.stdout.contains(&h1_fingerprint), "inner is h1 itself: {}", out.stdout);
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(recorded, format!("{h1}127.0.0.1 {}\n", public_key(&lab, "net/h1/hostkey.pub")));
    Test::bare()
        .env("FERRY_STATE_DIR", &folder.path().join("state").display().to_string())
        .args(["-i", &inventory, "run", "--env", "inner", "--output", "plain", "--", "hostname"])
        .stdout_contains("inner | ferry-h1\n")
        .stdout_contains("\ninner   ok      exit 0  ")
        .run();
}

#[test]
fn a_host_recorded_only_by_its_rsa_key_is_trusted_not_changed() {
    let lab = lab();
    let rsa = public_key(&lab, "net/h2/hostkey_rsa.pub");
    assert!(rsa.starts_with("ssh-rsa "), "{rsa}");
    let (folder, inventory) = with_known_hosts(&lab, &format!("10.200.0.12 {rsa}\n"));
    let state = folder.path().join("state").display().to_string();
    Test::bare()
        .env("FERRY_STATE_DIR", &state)
        .args([
            "-i", &inventory, "run", "--env", "lab", "--limit", "h2", "--output", "plain", "--", "hostname",
        ])
        .stdout_contains("h2 | ferry-h2\n")
        .stdout_contains("\nh2      ok      exit 0  ")
        .run();
    let rsa_fingerprint = fingerprint(&lab, "net/h2/hostkey_rsa.pub");
    let out = Test::bare()
        .env("FERRY_STATE_DIR", &state)
        .args(["-i", &inventory, "trust", "--env", "lab", "--limit", "h2"])
        .stdout_contains(&format!("\nh2      10.200.0.12  TRUSTED  ssh-rsa  {rsa_fingerprint}"))
        .run();
    assert!(!out.stdout.contains("CHANGED"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(folder.path().join("known_hosts")).unwrap(),
        format!("10.200.0.12 {rsa}\n")
    );
}
