//! Lab test of the target's audit mirror (issue 12, item 9): what a health check or docker
//! printed reaches `~/.ferry/audit.log` on the target with the run's secrets masked, and the
//! log is private to the target's user.

use std::process::Command;

use crate::lab::lab;
use crate::test::Test;

const TOKEN: &str = "tok-mirror-5b8e21c4";

/// Runs `script` inside host `n`'s namespaces (its own /root), not through ferry.
fn on_host(lab: &crate::lab::Lab, n: usize, script: &str) -> String {
    let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
    let out =
        Command::new("nsenter").args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_secret_echoed_by_the_health_check_is_masked_in_the_targets_private_audit_mirror() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let key = lab.dir.join("ssh/client_key").display().to_string();
    let known = lab.dir.join("known_hosts").display().to_string();
    // The health check (run on the target) prints the container's secret, then fails: the
    // gate's error quotes its output.
    let inventory = format!(
        "[defaults]\nuser = \"root\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n\n\
         [targets.h3]\nhost = \"10.200.0.13\"\n\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n\
         [environments.k-mirror]\ntargets = [\"h3\"]\n\n\
         [apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\nvars = {{ port = 18160 }}\n\
         secrets = {{ TOKEN = {{ env = \"WEB_TOKEN\" }} }}\n\
         health = {{ cmd = \"echo seen=$(docker exec web-k-mirror env | grep ^TOKEN=); exit 1\", timeout = \"3s\", interval = \"500ms\" }}\n"
    );
    std::fs::write(dir.path().join("ferry.toml"), inventory).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("templates/web.j2"),
        "docker run --stop-timeout 1 -p {{ port }}:80 {{ image }}\n",
    )
    .unwrap();
    on_host(&lab, 3, "docker rm -f web-k-mirror >/dev/null 2>&1; rm -rf /root/.ferry/locks/k-mirror");
    let out = Test::bare()
        .args(["-i", &dir.path().join("ferry.toml").display().to_string()])
        .args(["deploy", "web", "--env", "k-mirror", "--version", "1.0", "--yes", "--output", "json"])
        .env("FERRY_STATE_DIR", &dir.path().join("state").display().to_string())
        .env("WEB_TOKEN", TOKEN)
        .never_prints(TOKEN)
        .code(1)
        .stdout_json_lines()
        .run();
    let deployment = out
        .json_lines()
        .into_iter()
        .find_map(|e| (e["type"] == "run_started").then(|| e["run"].as_str().unwrap().to_string()))
        .unwrap();
    let log = on_host(&lab, 3, "cat /root/.ferry/audit.log");
    let line = log
        .lines()
        .find(|l| l.contains(&deployment))
        .unwrap_or_else(|| panic!("no mirror line for {deployment}:\n{log}"));
    assert!(line.contains("seen=TOKEN=***"), "the health check's output, masked: {line}");
    assert!(!log.contains(TOKEN), "{log}");
    assert_eq!(on_host(&lab, 3, "stat -c %a /root/.ferry/audit.log").trim(), "600");
}
