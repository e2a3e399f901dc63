//! Deploy hooks (`[hooks]`, issue 16 part 1) without the lab: a `transport = "local"` target
//! whose `docker` is a stand-in that logs its calls and fails, so a test can tell whether a
//! deployment touched Docker at all. A failing `pre_deploy` refuses before any pull; a failed
//! rollout runs the `failed` hook with exactly the documented environment, and that hook's
//! failure does not change the exit code. The lab test (tests/integration/deploy/hooks.rs)
//! covers a real rollout and `post_deploy`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::test::{SECRET, Test};

/// The CLI test inventory with its staging target on this machine, no feed (no registry to
/// ask), `hooks` as the `[hooks]` table, and a `docker` on PATH that logs and fails.
fn with_hooks(hooks: &str) -> Test {
    let test = Test::new()
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets.stg-1]\ntransport = \"local\"",
        )
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .replace("ferry.toml", "[feeds.main]", &format!("[hooks]\n{hooks}\n\n[feeds.main]"));
    let test = executable(test, "bin/docker", "echo \"$*\" >> \"$(dirname \"$0\")/../docker-calls\"; exit 1");
    let path = format!("{}/bin:{}", test.path().display(), std::env::var("PATH").unwrap_or_default());
    test.env("PATH", &path)
}

/// Writes an executable `#!/bin/sh` script at `path` in the test folder.
fn executable(test: Test, path: &str, body: &str) -> Test {
    let test = test.write(path, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(test.path().join(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    test
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(".ferry/audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `NAME=value` lines of a file a hook wrote with `env`, sorted.
fn env_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

const DEPLOY: [&str; 9] =
    ["deploy", "web", "--env", "staging", "--version", "1.0", "--yes", "--output", "plain"];

#[test]
fn a_missing_or_unexecutable_hook_is_exit_2_at_its_line() {
    with_hooks("pre_deploy = \"hooks/pre\"")
        .args(["check"])
        .code(2)
        .stderr(
            "error: hook \"hooks/pre\" not found
  --> ferry.toml:27:14
   |
27 | pre_deploy = \"hooks/pre\"
   |              ^^^^^^^^^^^
  = help: name an executable file, relative to the inventory's folder (or remove the key)
",
        )
        .run();
    with_hooks("failed = \"hooks/failed\"\ntimeout = \"0s\"")
        .write("hooks/failed", "#!/bin/sh\n")
        .args(["check"])
        .code(2)
        .stderr(
            "error: a hook timeout must be longer than 0
  --> ferry.toml:28:11
   |
28 | timeout = \"0s\"
   |           ^^^^

error: hook \"hooks/failed\" is not executable
  --> ferry.toml:27:10
   |
27 | failed = \"hooks/failed\"
   |          ^^^^^^^^^^^^^^
  = help: make it executable: chmod +x hooks/failed
",
        )
        .run();
}

#[test]
fn a_failing_pre_deploy_hook_refuses_before_any_pull_and_is_recorded_masked() {
    let test =
        with_hooks("pre_deploy = \"hooks/pre\"\npost_deploy = \"hooks/post\"\nfailed = \"hooks/failed\"");
    let test = executable(test, "hooks/pre", &format!("echo window closed; echo 'token {SECRET}'; exit 1"));
    let test = executable(test, "hooks/post", "touch post-ran");
    let test = executable(test, "hooks/failed", "touch failed-ran");
    let folder = test.into_dir();
    let dir = folder.path();
    let inventory = dir.join("ferry.toml").display().to_string();
    let path = format!("{}/bin:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    Test::bare()
        .env("WEB_DATABASE_URL", SECRET)
        .env("PATH", &path)
        .args(["-i", &inventory])
        .args(DEPLOY)
        .code(4)
        .stdout(
            "hook pre_deploy - running hooks/pre
hook pre_deploy | window closed
hook pre_deploy | token ***
hook pre_deploy ! exited 1
",
        )
        .stderr(
            "error: pre_deploy hook hooks/pre exited 1: the deployment is refused, no target was changed
  | window closed
  | token ***
  = help: fix what the hook reports (or the hook) and deploy again; its output is in the audit log (`hook_finished`)
",
        )
        .run_in(dir);
    assert!(
        !dir.join("docker-calls").exists(),
        "Docker was called: {:?}",
        std::fs::read_to_string(dir.join("docker-calls"))
    );
    assert!(!dir.join("post-ran").exists() && !dir.join("failed-ran").exists(), "no other hook runs");
    let records = records(dir);
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run_started", "lock_acquired", "hook_finished", "run_finished", "lock_released"]);
    let hook = &records[2]["detail"];
    assert_eq!(hook["hook"], "pre_deploy");
    assert_eq!(hook["status"], "failed");
    assert_eq!(hook["exit_code"], 1);
    assert_eq!(hook["tail"], serde_json::json!(["window closed", "token ***"]));
    assert_eq!(
        records[3]["detail"]["refused"],
        "pre_deploy hook hooks/pre exited 1: the deployment is refused, no target was changed"
    );
    let log = std::fs::read_to_string(dir.join(".ferry/audit.jsonl")).unwrap();
    assert!(!log.contains(SECRET), "the secret is in the audit log");
    assert!(!dir.join(".ferry/locks/staging").exists(), "the lock is released");
}

#[test]
fn a_failed_rollout_runs_the_failed_hook_with_only_the_documented_environment() {
    let test =
        with_hooks("pre_deploy = \"hooks/pre\"\npost_deploy = \"hooks/post\"\nfailed = \"hooks/failed\"");
    let test = executable(test, "hooks/pre", "env > pre-env");
    let test = executable(test, "hooks/post", "touch post-ran");
    // It runs once the run's end is on record: `ferry history` would show it.
    let test = executable(
        test,
        "hooks/failed",
        "env > failed-env; grep -c '\"run_finished\"' .ferry/audit.jsonl > ended; echo paging on-call; exit 7",
    );
    let folder = test.into_dir();
    let dir = folder.path();
    let inventory = dir.join("ferry.toml").display().to_string();
    let path = format!("{}/bin:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Test::bare()
        .env("WEB_DATABASE_URL", SECRET)
        .env("PATH", &path)
        .env("HOME", &dir.display().to_string())
        .env("REGISTRY_PASSWORD", "not-for-hooks")
        .args(["-i", &inventory])
        .args(DEPLOY)
        .code(1)
        .stdout_contains("hook pre_deploy - running hooks/pre\nhook pre_deploy - ok\n")
        .stdout_contains("hook failed - running hooks/failed\nhook failed | paging on-call\nhook failed ! exited 7\n")
        .stdout_contains(
            "\nfailed hook hooks/failed exited 7 (recorded; the deployment and its exit code stand)\n  | paging on-call\n",
        )
        .run_in(dir);
    assert!(dir.join("docker-calls").exists(), "the rollout ran: {}", out.stdout);
    assert!(!dir.join("post-ran").exists(), "post_deploy runs only after a success");
    let run = records(dir)[0]["run"].as_str().unwrap().to_string();
    let expected = |outcome: Option<&str>| {
        let mut lines: Vec<String> = [
            "FERRY_ACTOR=",
            "FERRY_APP=web",
            "FERRY_DIGEST=",
            "FERRY_ENVIRONMENT=staging",
            &format!("FERRY_RUN={run}"),
            "FERRY_TARGETS=stg-1",
            "FERRY_VERSION=1.0",
            &format!("HOME={}", dir.display()),
            &format!("PATH={path}"),
        ]
        .into_iter()
        .map(String::from)
        .chain(outcome.map(|o| format!("FERRY_OUTCOME={o}")))
        .collect();
        lines.sort();
        lines
    };
    let mut pre = env_file(&dir.join("pre-env"));
    let mut failed = env_file(&dir.join("failed-env"));
    // The actor names the machine's user and host: the same in both, checked for shape only.
    for env in [&mut pre, &mut failed] {
        let actor = env.iter_mut().find(|l| l.starts_with("FERRY_ACTOR=")).unwrap();
        assert!(actor.contains('@') && actor.ends_with(')'), "{actor}");
        *actor = "FERRY_ACTOR=".into();
    }
    assert_eq!(pre, expected(None), "pre_deploy's whole environment");
    assert_eq!(failed, expected(Some("failed")), "failed's whole environment");
    let hooks: Vec<serde_json::Value> = records(dir)
        .into_iter()
        .filter(|r| r["kind"] == "hook_finished")
        .map(|r| r["detail"].clone())
        .collect();
    assert_eq!(hooks.len(), 2);
    assert_eq!((&hooks[0]["hook"], &hooks[0]["status"]), (&"pre_deploy".into(), &"ok".into()));
    assert_eq!(hooks[1]["hook"], "failed");
    assert_eq!(hooks[1]["outcome"], "failed");
    assert_eq!(hooks[1]["exit_code"], 7);
    assert_eq!(hooks[1]["tail"], serde_json::json!(["paging on-call"]));
    assert_eq!(std::fs::read_to_string(dir.join("ended")).unwrap(), "1\n", "run_finished came first");
    let kinds: Vec<String> = records(dir).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    let at = |kind: &str| kinds.iter().rposition(|k| k == kind).unwrap();
    assert!(at("run_finished") < at("hook_finished"), "{kinds:?}");
    assert!(at("hook_finished") < at("lock_released"), "the lock is held while it runs: {kinds:?}");
}

/// The freeze is checked again once the lock is held (here after a `--lock-wait`): a window
/// that began while the deploy waited refuses it (exit 4) before any hook or target runs; with
/// `--override-freeze --reason`, it proceeds and `run_finished` keeps the window and the reason.
#[test]
fn a_freeze_that_begins_while_a_deploy_waits_for_the_lock_refuses_it_once_the_lock_is_held() {
    let (code, stderr, dir) = deploy_into_a_late_freeze(&[]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("deploy refused: staging is frozen by \"late\" until"), "{stderr}");
    assert!(!dir.path().join("pre-ran").exists() && !dir.path().join("docker-calls").exists(), "nothing ran");
    let finished = records(dir.path()).into_iter().rfind(|r| r["kind"] == "run_finished").unwrap();
    assert!(finished["detail"]["refused"].as_str().unwrap().contains("frozen"), "{finished}");

    let (code, stderr, dir) = deploy_into_a_late_freeze(&["--override-freeze", "--reason", "hotfix 7"]);
    assert_eq!(code, Some(1), "the stand-in docker fails the rollout: {stderr}");
    assert!(stderr.contains("warning: freeze overridden: staging is frozen by \"late\""), "{stderr}");
    assert!(dir.path().join("pre-ran").exists() && dir.path().join("docker-calls").exists(), "it ran");
    let finished = records(dir.path()).into_iter().rfind(|r| r["kind"] == "run_finished").unwrap();
    let granted = &finished["detail"]["freeze_override"];
    assert_eq!(
        (granted["window"].as_str(), granted["reason"].as_str()),
        (Some("late"), Some("hotfix 7")),
        "{finished}"
    );
}

/// Deploys (with `extra` flags) while another run holds the lock, into a freeze window that
/// begins 3 s later, during the deploy's `--lock-wait`; the lock is released once it began.
/// Returns the exit code, stderr and the folder.
fn deploy_into_a_late_freeze(extra: &[&str]) -> (Option<i32>, String, tempfile::TempDir) {
    let begins = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    let until = begins + jiff::SignedDuration::from_secs(3600);
    let freeze = format!(
        "\n[[freeze]]\nname = \"late\"\nenvironments = [\"staging\"]\nreason = \"began during the wait\"\nfrom = \"{begins}\"\nuntil = \"{until}\"\n"
    );
    let test = with_hooks("pre_deploy = \"hooks/pre\"");
    let test = executable(test, "hooks/pre", "touch pre-ran").replace(
        "ferry.toml",
        "\n[feeds.main]",
        &format!("{freeze}\n[feeds.main]"),
    );
    let folder = test.into_dir();
    let dir = folder.path();
    let inventory = dir.join("ferry.toml").display().to_string();
    let path = format!("{}/bin:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let ferry = |args: &[&str]| {
        let mut command = std::process::Command::new(crate::test::binary());
        command.args(["-i", &inventory]).args(args).env("PATH", &path).env("HOME", dir).current_dir(dir);
        command.env("WEB_DATABASE_URL", SECRET).env_remove("FERRY_STATE_URL");
        command
    };
    let held = ferry(&["lock", "acquire", "--env", "staging", "--ttl", "2m"]).output().unwrap();
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stderr));
    let deploy = ferry(&DEPLOY)
        .args(["--lock-wait", "60s"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Released once the window has begun: the deploy passed the first check before it.
    let wait = (begins + jiff::SignedDuration::from_millis(500)).duration_since(jiff::Timestamp::now());
    std::thread::sleep(wait.try_into().unwrap_or_default());
    let released = ferry(&["lock", "release", "--env", "staging"]).output().unwrap();
    assert!(released.status.success(), "{}", String::from_utf8_lossy(&released.stderr));
    let out = deploy.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), folder)
}

/// A second Ctrl-C while the `failed` hook runs kills its process group at once (the first
/// lets it finish): ferry does not wait out the hook's timeout with the lock held.
#[test]
fn a_second_signal_during_the_end_hook_kills_it() {
    let test = with_hooks("failed = \"hooks/failed\"\ntimeout = \"120s\"");
    let test = executable(test, "hooks/failed", "touch failed-began; exec sleep 120");
    let folder = test.into_dir();
    let dir = folder.path();
    let path = format!("{}/bin:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let began = std::time::Instant::now();
    let child = std::process::Command::new(crate::test::binary())
        .args(["-i", &dir.join("ferry.toml").display().to_string()])
        .args(DEPLOY)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", dir)
        .env("WEB_DATABASE_URL", SECRET)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !dir.join("failed-began").exists() {
        assert!(began.elapsed() < std::time::Duration::from_secs(30), "the failed hook never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    for _ in 0..2 {
        assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    // Far below the hook's 120 s: the hook's group was killed, not waited for.
    assert!(began.elapsed() < std::time::Duration::from_secs(60), "{:?}", began.elapsed());
    assert_ne!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let sleeping =
        std::process::Command::new("pgrep").args(["-f", "exec sleep 120|^sleep 120$"]).output().unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "the hook's process is gone: {}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
    let kinds: Vec<String> = records(dir).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert!(
        kinds.contains(&"run_finished".to_string()) && kinds.contains(&"lock_released".to_string()),
        "{kinds:?}"
    );
}
