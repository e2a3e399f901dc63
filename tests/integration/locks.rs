//! Lab tests of the environment lock's guarantees (issue 12, item 8) against real sshd: a
//! takeover of an expired lock has one winner, the expiry is stamped when the lock is taken
//! and lives on the target's clock, each acquisition's fencing number is on record, a run that
//! outlives its TTL keeps its lock, and two names for one machine do not lock each other out.
//!
//! Each test has environments of its own (names starting `k-`) in its own copy of the lab
//! inventory, so they run beside every other lab test without meeting their locks.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry::host::Host;
use ferry::lock::{self, LockError, LockInfo};

use crate::lab::{Lab, lab};

/// A copy of the lab inventory in a folder of its own, with `extra` TOML appended; returns
/// (folder, inventory path).
fn inventory_with(lab: &Lab, extra: &str) -> (tempfile::TempDir, String) {
    let folder = tempfile::tempdir().unwrap();
    let key = lab.dir.join("ssh/client_key").display().to_string();
    let text = std::fs::read_to_string(lab.dir.join("lab.toml"))
        .unwrap()
        .replace("identity = \"ssh/client_key\"", &format!("identity = \"{key}\""));
    std::fs::copy(lab.dir.join("known_hosts"), folder.path().join("known_hosts")).unwrap();
    let path = folder.path().join("lab.toml");
    std::fs::write(&path, text + "\n" + extra).unwrap();
    (folder, path.display().to_string())
}

/// `ferry -i INVENTORY` as one "machine": a state folder of its own and a cleared environment.
fn machine(inventory: &str, state: &std::path::Path) -> Command {
    let mut command = Command::new(crate::test::binary());
    command
        .args(["-i", inventory])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_STATE_DIR", state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// Two SSH sessions to host `h1`, as two runners have.
async fn two_sessions(inventory: &str) -> (Arc<dyn Host>, Arc<dyn Host>) {
    let inventory = ferry::inventory::Inventory::load(std::path::Path::new(inventory)).unwrap();
    let options = ferry::commands::ssh_options(&inventory, Duration::from_secs(10)).unwrap();
    let h1 = inventory.target("h1").unwrap();
    let a = ferry::host::open(&inventory, h1, &options).await.unwrap();
    let b = ferry::host::open(&inventory, h1, &options).await.unwrap();
    (a, b)
}

async fn sh(host: &dyn Host, script: &str) -> String {
    let mut out = ferry::exec::Capture::default();
    let status = host.exec(script, None, Some(Duration::from_secs(10)), &mut out).await.unwrap();
    assert!(status.success(), "{script}: {status}");
    out.text()
}

#[test]
fn twenty_rounds_of_two_runners_racing_for_one_expired_lock_have_exactly_one_winner() {
    let lab = lab();
    let (_folder, inventory) = inventory_with(&lab, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (a, b) = two_sessions(&inventory).await;
        let d = ".ferry/locks/k-race";
        for round in 0..20 {
            // A lock left by a run that died: its expiry (and deadline, on the target's clock)
            // long past.
            let dead = LockInfo {
                holder: "dead@runner".into(),
                run: format!("dead-{round}"),
                since_ms: 0,
                expires_ms: 1_000,
                message: "crashed".into(),
                ..LockInfo::default()
            };
            let plant = format!(
                "rm -rf {d} && mkdir -p {d} && printf '%sdeadline=1\\n' {} > {d}/info",
                ferry::shell::quote(&dead.to_text()).unwrap()
            );
            sh(&*a, &plant).await;
            let runner = |run: &str| LockInfo {
                holder: format!("{run}@runner"),
                run: format!("{run}-{round}"),
                message: "race".into(),
                ..LockInfo::default()
            };
            let (ia, ib) = (runner("a"), runner("b"));
            let ttl = Duration::from_secs(60);
            let (wa, wb) = tokio::join!(
                lock::lock_remote(&*a, "h1", "k-race", &ia, ttl, false),
                lock::lock_remote(&*b, "h1", "k-race", &ib, ttl, false),
            );
            let winners: Vec<&str> = [(wa.is_ok(), ia.run.as_str()), (wb.is_ok(), ib.run.as_str())]
                .into_iter()
                .filter_map(|(won, run)| won.then_some(run))
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: exactly one winner: {wa:?} / {wb:?}");
            let loser = if wa.is_ok() { &wb } else { &wa };
            assert!(matches!(loser, Err(LockError::Held { .. })), "round {round}: {loser:?}");
            let on_target = LockInfo::parse(&sh(&*a, &format!("cat {d}/info")).await).unwrap();
            assert_eq!(on_target.run, winners[0], "round {round}: the lock names its one winner");
        }
        sh(&*a, &format!("rm -rf {d}")).await;
    });
}

#[test]
fn a_waiting_runs_expiry_is_stamped_when_it_takes_the_lock_on_the_targets_clock_with_a_fence_on_record() {
    let lab = lab();
    let (folder, inventory) = inventory_with(&lab, "[environments.k-stamp]\ntargets = [\"h1\", \"h2\"]\n");
    let (state_a, state_b) = (folder.path().join("a"), folder.path().join("b"));
    let first = machine(&inventory, &state_a)
        .args(["run", "--env", "k-stamp", "--lock", "--", "sleep 5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // B waits about 4 s with a 3 s TTL: an expiry stamped when it began waiting would be past
    // when it gets the lock. Its command prints the lock as the target holds it, and the
    // target's clock.
    let waiter = machine(&inventory, &state_b)
        .args([
            "run",
            "--env",
            "k-stamp",
            "--lock",
            "--lock-ttl",
            "3s",
            "--lock-wait",
            "60s",
            "--limit",
            "h1",
        ])
        .args(["--output", "plain", "--", "cat ~/.ferry/locks/k-stamp/info; echo now=$(date +%s)"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&waiter.stdout);
    assert_eq!(waiter.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&waiter.stderr));
    assert!(first.wait_with_output().unwrap().status.success());
    let text: String =
        stdout.lines().filter_map(|l| l.strip_prefix("h1 | ")).map(|l| format!("{l}\n")).collect();
    let info = LockInfo::parse(&text).unwrap_or_else(|| panic!("no lock info: {stdout}"));
    let now_s: i64 = text.lines().find_map(|l| l.strip_prefix("now=")).unwrap().parse().unwrap();
    let deadline = info.deadline_s.unwrap_or_else(|| panic!("no deadline on the target's clock: {text}"));
    assert!(
        deadline > now_s,
        "the lock is live while its run works: deadline {deadline}, target now {now_s}"
    );
    assert!(deadline <= now_s + 3, "TTL from the acquisition: deadline {deadline}, target now {now_s}");
    assert!(info.expires_ms > ferry::time::now_ms() - 2_000, "expiry stamped at acquisition: {text}");
    // Both machines' acquisitions are on record with their fences, the later one larger.
    let fence = |state: &std::path::Path| {
        let log = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
        let acquired: serde_json::Value = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["kind"] == "lock_acquired")
            .unwrap_or_else(|| panic!("no lock_acquired: {log}"));
        acquired["detail"]["fences"]["h1"].as_u64().unwrap_or_else(|| panic!("no fence: {acquired}"))
    };
    assert_eq!(info.fence, Some(fence(&state_b)), "the record and the target agree");
    assert!(fence(&state_b) > fence(&state_a), "fences grow: {} then {}", fence(&state_a), fence(&state_b));
}

#[test]
fn a_run_that_outlives_its_ttl_keeps_its_lock_and_another_runner_is_refused_meanwhile() {
    let lab = lab();
    let (folder, inventory) = inventory_with(&lab, "[environments.k-ttl]\ntargets = [\"h1\", \"h2\"]\n");
    let (state_a, state_b) = (folder.path().join("a"), folder.path().join("b"));
    let long = machine(&inventory, &state_a)
        .args(["run", "--env", "k-ttl", "--lock", "--lock-ttl", "3s", "--", "sleep 8"])
        .spawn()
        .unwrap();
    for wait in [1500, 3000, 2000] {
        // At 1.5 s, 4.5 s and 6.5 s: the last two past the 3 s TTL.
        std::thread::sleep(Duration::from_millis(wait));
        let other = machine(&inventory, &state_b)
            .args(["run", "--env", "k-ttl", "--lock", "--", "true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&other.stderr);
        assert_eq!(other.status.code(), Some(3), "refused while the long run lives: {stderr}");
        assert!(stderr.contains("environment k-ttl is locked on h1 by "), "{stderr}");
    }
    let out = long.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(state_a.join("audit.jsonl")).unwrap();
    assert!(!log.contains("\"lock_broken\""), "{log}");
    let after = machine(&inventory, &state_b)
        .args(["run", "--env", "k-ttl", "--lock", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        after.status.code(),
        Some(0),
        "free once it ended: {}",
        String::from_utf8_lossy(&after.stderr)
    );
}

#[test]
fn two_target_names_for_one_host_lock_fine_and_release_cleanly() {
    let lab = lab();
    // `inner` is h1 reached through itself (its own loopback, h1 as jump host): one machine,
    // one user, one home, two names.
    let (folder, inventory) = inventory_with(&lab, "[environments.k-alias]\ntargets = [\"h1\", \"inner\"]\n");
    let state = folder.path().join("state");
    let run = machine(&inventory, &state)
        .args(["run", "--env", "k-alias", "--lock", "--output", "plain", "--", "hostname"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("h1 | ferry-h1\n") && stdout.contains("inner | ferry-h1\n"), "{stdout}");
    let log = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    let released: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "lock_released")
        .unwrap();
    assert_eq!(released["detail"]["not_released"], serde_json::json!([]), "{released}");
    let status = machine(&inventory, &state).args(["lock", "status", "--env", "k-alias"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches(" free").count(), 2, "{text}");
}
