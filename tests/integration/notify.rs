//! Notifications (`[notify.NAME]`, issue 16 part 2) without the lab: a `transport = "local"`
//! target whose `docker` is a stand-in, and a real HTTP receiver on loopback. What the lab test
//! (`deploy::notifications_announce_…`) cannot force on demand is here: a target whose error
//! carries a secret, and a run abandoned by a second Ctrl-C.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::receiver::Receiver;
use crate::test::{SECRET, Test};

/// The CLI test inventory with its staging target on this machine, no feed, a Slack notifier
/// whose URL comes from `CHAT_URL`, and a `docker` on PATH running `body`.
fn folder(body: &str) -> tempfile::TempDir {
    let test = Test::new()
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets.stg-1]\ntransport = \"local\"",
        )
        .replace("ferry.toml", "feed = \"main\"\n", "")
        .replace(
            "ferry.toml",
            "[feeds.main]",
            "[notify.chat]\nurl = { env = \"CHAT_URL\" }\nformat = \"slack\"\n\n[feeds.main]",
        )
        .write("bin/docker", &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(test.path().join("bin/docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
    test.into_dir()
}

/// `ferry -i DIR/ferry.toml deploy web --env staging --version 1.0 --yes`, with the app's
/// secret and the receiver's URL (its secret path) in the environment.
fn deploy(dir: &Path, chat: &Receiver) -> Command {
    let path = format!("{}/bin:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new(crate::test::binary());
    command
        .args(["-i", &dir.join("ferry.toml").display().to_string()])
        .args(["deploy", "web", "--env", "staging", "--version", "1.0", "--yes", "--output", "plain"])
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("WEB_DATABASE_URL", SECRET)
        .env("CHAT_URL", format!("{}/chat/s3cretChat", chat.base))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A target that echoes a secret in its error: the `failed` notice carries that error, masked.
#[test]
fn a_target_error_that_echoes_a_secret_reaches_the_notice_masked() {
    let chat = Receiver::start(200);
    // The stand-in prints the app's secret (it inherits ferry's environment on a local target).
    let dir = folder("echo \"login as $WEB_DATABASE_URL denied\" >&2; exit 1");
    let out = deploy(dir.path(), &chat).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains(SECRET), "{stdout}");
    let bodies = chat.bodies("/chat/s3cretChat");
    assert_eq!(bodies.len(), 2, "started, failed: {bodies:?}");
    let failed = bodies[1].to_string();
    assert!(failed.contains("login as *** denied"), "the target's error, masked: {failed}");
    for (_, body) in chat.seen.lock().unwrap().iter() {
        assert!(!body.contains(SECRET) && !body.contains("s3cret"), "{body}");
    }
}

/// A second Ctrl-C abandons the run; the receivers still hear that it failed.
#[test]
fn a_run_abandoned_by_a_second_signal_is_still_announced_as_failed() {
    let chat = Receiver::start(200);
    let dir = folder("exec sleep 20");
    let child = deploy(dir.path(), &chat).spawn().unwrap();
    let started = Instant::now();
    while chat.bodies("/chat/s3cretChat").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no started notice");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    for _ in 0..2 {
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let bodies = chat.bodies("/chat/s3cretChat");
    assert_eq!(bodies.len(), 2, "started, then failed: {bodies:?}");
    let text = bodies[1]["text"].as_str().unwrap();
    assert!(text.starts_with("Deploy of web 1.0 to staging failed"), "{text}");
}

/// `--quiet` shows nothing of a run, except what someone must act on: a notifier that failed
/// is said on stderr (under cron, the mail cron sends is how anyone learns of it).
#[test]
fn a_notifier_that_failed_is_still_said_under_quiet() {
    let chat = Receiver::start(200);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = folder("exit 1");
    let out = deploy(dir.path(), &chat)
        .arg("--quiet")
        .env("CHAT_URL", format!("http://127.0.0.1:{dead}/chat/s3cretChat"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: notify chat")).collect();
    assert_eq!(warnings.len(), 2, "started and failed: {stderr}");
    assert!(
        warnings[0].starts_with("warning: notify chat (started): not delivered after 3 attempts: "),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn a_notifier_with_no_moment_or_no_environment_is_refused_at_its_line() {
    let dir = folder("exit 1");
    let inventory = dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace("format = \"slack\"\n", "format = \"slack\"\non = []\nenvironments = []\n");
    std::fs::write(&inventory, text).unwrap();
    let out = Command::new(crate::test::binary())
        .args(["-i", &inventory.display().to_string(), "check"])
        .env_clear()
        .env("CHAT_URL", "http://127.0.0.1:9/x")
        .env("WEB_DATABASE_URL", SECRET)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: notifier \"chat\" has no moment in `on`: it would never send\n  --> "),
        "{stderr}"
    );
    assert!(stderr.contains("on = []"), "{stderr}");
    assert!(
        stderr
            .contains("error: notifier \"chat\" has no environment in `environments`: it would never send\n"),
        "{stderr}"
    );
}

/// A run refused before its rollout (here by a failing `pre_deploy` hook) never says it
/// started; the one notice says it was refused, and why.
#[test]
fn a_refused_run_is_announced_once_as_refused() {
    let chat = Receiver::start(200);
    let dir = folder("echo docker-ran >> \"$(dirname \"$0\")/../docker-calls\"; exit 1");
    let inventory = dir.path().join("ferry.toml");
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace("[notify.chat]", "[hooks]\npre_deploy = \"pre\"\n\n[notify.chat]");
    std::fs::write(&inventory, text).unwrap();
    std::fs::write(dir.path().join("pre"), "#!/bin/sh\necho window closed\nexit 1\n").unwrap();
    std::fs::set_permissions(dir.path().join("pre"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = deploy(dir.path(), &chat).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("docker-calls").exists(), "nothing ran");
    let bodies = chat.bodies("/chat/s3cretChat");
    assert_eq!(bodies.len(), 1, "no started: {bodies:?}");
    let text = bodies[0]["text"].as_str().unwrap();
    assert!(text.starts_with("Deploy of web 1.0 to staging refused: pre_deploy hook pre exited 1"), "{text}");
}
