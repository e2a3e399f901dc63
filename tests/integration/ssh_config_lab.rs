//! Lab tests of `~/.ssh/config` (issue 17, item 1): a target written as an alias whose
//! HostName, User, IdentityFile, a two-hop ProxyJump and UserKnownHostsFile live only in an
//! ssh_config file. The final host is 127.0.0.1 inside h2's namespace (h2's own sshd also
//! listens there), reachable only through h1 and then h2; its key is still checked, under the
//! name `127.0.0.1`. Environments and apps are named `p1-…`, host ports 18500–18509.

use std::path::Path;
use std::process::Command;

use crate::lab::{Lab, json_lines, lab};
use crate::test::Test;

const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {{ image }}
";

/// `ALGORITHM BASE64` of a public key file in the lab.
fn public_key(lab: &Lab, file: &str) -> String {
    let text = std::fs::read_to_string(lab.dir.join(file)).unwrap();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// A folder with `ferry.toml` (no SSH settings but `ssh_config`), `ssh_config` (`extra` first,
/// then the aliases) and `ssh_known_hosts` (its UserKnownHostsFile) holding h1, h2 and
/// `final_key` for 127.0.0.1 (none when empty).
fn setup(lab: &Lab, extra: &str, final_key: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = lab.dir.join("ssh/client_key").display().to_string();
    let config = format!(
        "{extra}Host h1-alias\n  HostName 127.0.0.1\n  User root\n  IdentityFile {key}\n  ProxyJump hop1,hop2\n\
         Host hop1\n  HostName 10.200.0.11\nHost hop2\n  HostName 10.200.0.12\n\
         Host *\n  User root\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n",
        kh = d.join("ssh_known_hosts").display()
    );
    std::fs::write(d.join("ssh_config"), config).unwrap();
    let mut known = format!(
        "10.200.0.11 {}\n10.200.0.12 {}\n",
        public_key(lab, "net/h1/hostkey.pub"),
        public_key(lab, "net/h2/hostkey.pub")
    );
    if !final_key.is_empty() {
        known += &format!("127.0.0.1 {final_key}\n");
    }
    std::fs::write(d.join("ssh_known_hosts"), known).unwrap();
    let inventory = format!(
        "[defaults]\nssh_config = \"{}\"\n\n[targets.p1]\nhost = \"h1-alias\"\n\n\
         [environments.p1-env]\ntargets = [\"p1\"]\n\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n\
         [apps.p1-web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\nvars = {{ port = 18500 }}\n\
         health = {{ grace = \"1s\" }}\n",
        d.join("ssh_config").display()
    );
    std::fs::write(d.join("ferry.toml"), inventory).unwrap();
    std::fs::create_dir_all(d.join("templates")).unwrap();
    std::fs::write(d.join("templates/web.j2"), TEMPLATE).unwrap();
    dir
}

fn ferry(dir: &Path, args: &[&str]) -> Test {
    Test::bare()
        .args(["-i", &dir.join("ferry.toml").display().to_string()])
        .args(args.iter().copied())
        .env("FERRY_STATE_DIR", &dir.join("state").display().to_string())
}

/// Runs `script` inside host `n`'s namespaces.
fn on_host(lab: &Lab, n: usize, script: &str) -> String {
    let holder = std::fs::read_to_string(lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
    let out =
        Command::new("nsenter").args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn an_alias_with_a_two_hop_proxy_jump_from_ssh_config_runs_and_deploys() {
    let lab = lab();
    on_host(
        &lab,
        2,
        "docker ps -aq --filter label=ferry.environment=p1-env | xargs -r docker rm -f; rm -rf /root/.ferry/locks/p1-env",
    );
    let dir = setup(&lab, "", &public_key(&lab, "net/h2/hostkey.pub"));
    // 127.0.0.1 inside h2 is h2 itself: only the chain h1 → h2 → 127.0.0.1 reaches it.
    ferry(dir.path(), &["run", "--env", "p1-env", "--output", "plain", "--", "hostname"])
        .stdout_contains("p1 | ferry-h2\n")
        .stdout_contains("\np1      ok      exit 0  ")
        .run();
    let out = ferry(
        dir.path(),
        &["deploy", "p1-web", "--env", "p1-env", "--version", "1.0", "--yes", "--output", "json"],
    )
    .stdout_json_lines()
    .run();
    let events = json_lines(&out.stdout);
    assert!(events.iter().any(|e| e["type"] == "target" || e["status"] == "ok"), "{}", out.stdout);
    let running = on_host(&lab, 2, "docker ps --filter label=ferry.environment=p1-env --format '{{.Image}}'");
    assert!(running.contains("ferry/web"), "the container runs on h2: {running:?}\n{}", out.stdout);
    on_host(&lab, 2, "docker ps -aq --filter label=ferry.environment=p1-env | xargs -r docker rm -f");
}

#[test]
fn the_final_hosts_key_is_still_checked_behind_the_hops() {
    let lab = lab();
    // 127.0.0.1 recorded with h1's key: h2 answers there, so the key has changed.
    let dir = setup(&lab, "", &public_key(&lab, "net/h1/hostkey.pub"));
    ferry(dir.path(), &["run", "--env", "p1-env", "--", "true"])
        .code(4)
        .stdout_contains("p1 ! HOST KEY CHANGED for p1 (127.0.0.1:22)")
        .stdout_contains("\np1      refused  -     ")
        .run();
}

#[test]
fn a_proxy_command_is_refused_by_its_line_and_strict_host_key_checking_no_is_reported() {
    let lab = lab();
    let good = public_key(&lab, "net/h2/hostkey.pub");
    let dir = setup(&lab, "Host h1-*\n  ProxyCommand nc %h %p\n", &good);
    let config = dir.path().join("ssh_config").display().to_string();
    ferry(dir.path(), &["run", "--env", "p1-env", "--", "true"])
        .code(2)
        .stderr(&format!(
            "error: {config}:2: ProxyCommand is not supported by ferry (for target \"p1\")\n  \
             = help: use ProxyJump (or the inventory's `jump`), or set ssh_config = \"none\" in [defaults]\n"
        ))
        .run();
    let dir = setup(&lab, "Host *\n  StrictHostKeyChecking no\n", &good);
    let config = dir.path().join("ssh_config").display().to_string();
    ferry(dir.path(), &["run", "--env", "p1-env", "--output", "plain", "--", "hostname"])
        .stdout_contains("p1 | ferry-h2\n")
        .stderr_contains(&format!(
            "warning: {config}:2: StrictHostKeyChecking no: ignored, ferry always checks host keys strictly\n"
        ))
        .run();
}

#[test]
fn trust_goes_through_the_hops_and_records_in_ssh_configs_known_hosts_file() {
    let lab = lab();
    let dir = setup(&lab, "", "");
    let file = dir.path().join("ssh_known_hosts");
    let before = std::fs::read_to_string(&file).unwrap();
    ferry(dir.path(), &["trust", "--env", "p1-env", "--yes"])
        .stdout_contains("p1      127.0.0.1  NEW    ssh-ed25519  ")
        .stderr(&format!("recorded 1 host key in {}\n", file.display()))
        .run();
    let h2 = public_key(&lab, "net/h2/hostkey.pub");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{before}127.0.0.1 {h2}\n"));
    assert!(!dir.path().join("known_hosts").exists(), "the inventory's own file is not written");
    ferry(dir.path(), &["run", "--env", "p1-env", "--output", "plain", "--", "hostname"])
        .stdout_contains("p1 | ferry-h2\n")
        .run();
}

#[test]
fn trust_records_and_replaces_a_host_key_alias_under_the_alias_that_connections_check() {
    let lab = lab();
    let dir = setup(&lab, "Host h1-alias\n  HostKeyAlias fx-final\n", "");
    // This helper's environment name (fx-), so it never meets another test's state.
    let toml = dir.path().join("ferry.toml");
    std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap().replace("p1-env", "fx-env")).unwrap();
    let file = dir.path().join("ssh_known_hosts");
    let before = std::fs::read_to_string(&file).unwrap();
    ferry(dir.path(), &["trust", "--env", "fx-env", "--yes"])
        .stdout_contains(" fx-final ")
        .stdout_contains(" NEW ")
        .stderr(&format!("recorded 1 host key in {}\n", file.display()))
        .run();
    let h2 = public_key(&lab, "net/h2/hostkey.pub");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{before}fx-final {h2}\n"));
    ferry(dir.path(), &["run", "--env", "fx-env", "--output", "plain", "--", "hostname"])
        .stdout_contains("p1 | ferry-h2\n")
        .run();
    // A wrong key under the alias is replaced under the alias, and 127.0.0.1's line stays.
    let h1 = public_key(&lab, "net/h1/hostkey.pub");
    std::fs::write(&file, format!("{before}127.0.0.1 {h1}\nfx-final {h1}\n")).unwrap();
    ferry(dir.path(), &["trust", "--env", "fx-env", "--yes", "--replace", "p1"])
        .stdout_contains(" fx-final ")
        .stderr_contains("recorded 1 host key")
        .run();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{before}127.0.0.1 {h1}\nfx-final {h2}\n"));
}

#[test]
fn an_inventory_jump_host_may_have_a_jump_host_of_its_own() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = lab.dir.join("ssh/client_key").display().to_string();
    let known = format!(
        "10.200.0.11 {}\n10.200.0.12 {}\n127.0.0.1 {}\n",
        public_key(&lab, "net/h1/hostkey.pub"),
        public_key(&lab, "net/h2/hostkey.pub"),
        public_key(&lab, "net/h2/hostkey.pub")
    );
    std::fs::write(d.join("known_hosts"), known).unwrap();
    std::fs::write(
        d.join("ferry.toml"),
        format!(
            "[defaults]\nssh_config = \"none\"\nuser = \"root\"\nidentity = \"{key}\"\n\n\
             [targets.p1-a]\nhost = \"10.200.0.11\"\n\n[targets.p1-b]\nhost = \"10.200.0.12\"\njump = \"p1-a\"\n\n\
             [targets.p1-c]\nhost = \"127.0.0.1\"\njump = \"p1-b\"\n\n[environments.p1-chain]\ntargets = [\"p1-c\"]\n"
        ),
    )
    .unwrap();
    ferry(d, &["run", "--env", "p1-chain", "--output", "plain", "--", "hostname"])
        .stdout_contains("p1-c | ferry-h2\n")
        .run();
}
