//! Lab tests of SSH certificates and the agent (issue 17, items 2 and 3), against real sshd and
//! a real `ssh-agent`: lab.sh runs three more sshd in h3's namespace whose host keys a lab CA
//! certified (2201 valid, and trusting the lab's user CA with no authorized keys; 2202 expired;
//! 2203 for another name). Environments here are named `p2-*`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab::{Lab, lab};
use crate::test::Test;

/// The `ALGORITHM BASE64` of a public key file in the lab.
fn public_key(lab: &Lab, file: &str) -> String {
    let text = std::fs::read_to_string(lab.dir.join(file)).unwrap();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn fingerprint(lab: &Lab, file: &str) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(lab.dir.join(file)).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string()
}

/// The lab's own known_hosts line for host `n` (with its newline).
fn lab_key_line(lab: &Lab, n: usize) -> String {
    let text = std::fs::read_to_string(lab.dir.join("known_hosts")).unwrap();
    format!("{}\n", text.lines().nth(n - 1).unwrap())
}

/// The known_hosts line that trusts the lab's host CA for the three certified sshd, and nothing
/// else.
fn ca_line(lab: &Lab) -> String {
    format!(
        "@cert-authority [10.200.0.13]:2201,[10.200.0.13]:2202,[10.200.0.13]:2203 {}\n",
        public_key(lab, "ssh/host_ca.pub")
    )
}

/// Writes, in `dir`, an inventory whose targets c2201..c2203 are h3's certified sshd and `h1` the
/// plain lab host (environments `p2-c2201` .. and `p2-h1`), with `identity` (or none), and
/// `known_hosts`; returns the inventory's path.
fn inventory(dir: &Path, identity: Option<&Path>, known_hosts: &str) -> String {
    let mut text = String::from("[defaults]\nuser = \"root\"\nknown_hosts = \"known_hosts\"\n");
    if let Some(identity) = identity {
        text += &format!("identity = \"{}\"\n", identity.display());
    }
    for port in [2201, 2202, 2203] {
        text += &format!(
            "\n[targets.c{port}]\nhost = \"10.200.0.13\"\nport = {port}\n\n[environments.p2-c{port}]\ntargets = [\"c{port}\"]\n"
        );
    }
    text += "\n[targets.h1]\nhost = \"10.200.0.11\"\n\n[environments.p2-h1]\ntargets = [\"h1\"]\n";
    std::fs::write(dir.join("known_hosts"), known_hosts).unwrap();
    let path = dir.join("p2.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `ferry -i INVENTORY run --env ENV --output plain -- hostname`, with a state folder of its own.
fn run(dir: &Path, inventory: &str, env: &str) -> Test {
    Test::bare()
        .env("FERRY_STATE_DIR", &dir.join("state").display().to_string())
        .args(["-i", inventory, "run", "--env", env, "--output", "plain", "--", "hostname"])
}

#[test]
fn a_certified_host_is_accepted_through_its_ca_and_expired_or_misnamed_certificates_are_refused() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let identity = lab.dir.join("ssh/cert/client_key");
    let inv = inventory(dir.path(), Some(&identity), &ca_line(&lab));
    // 2201's sshd has no authorized keys: this also takes the user certificate beside the key.
    run(dir.path(), &inv, "p2-c2201")
        .stdout_contains("c2201 | ferry-h3\n")
        .stdout_contains("\nc2201   ok      exit 0  ")
        .run();
    run(dir.path(), &inv, "p2-c2202")
        .code(4)
        .stdout_contains(
            "c2202 ! host certificate of c2202 (10.200.0.13:2202) is refused: it has expired (valid from \
             2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z, now ",
        )
        .stdout_contains("\nc2202   refused  -     ")
        .run();
    run(dir.path(), &inv, "p2-c2203")
        .code(4)
        .stdout_contains(&format!(
            "c2203 ! host certificate of c2203 (10.200.0.13:2203) is refused: its principals (other.lab) do \
             not include 10.200.0.13 (known_hosts: {})\n",
            dir.path().join("known_hosts").display()
        ))
        .run();
    // A CA that is @revoked for the host refuses what it signed.
    let revoked =
        format!("{}@revoked [10.200.0.13]:2201 {}\n", ca_line(&lab), public_key(&lab, "ssh/host_ca.pub"));
    let inv = inventory(dir.path(), Some(&identity), &revoked);
    run(dir.path(), &inv, "p2-c2201")
        .code(4)
        .stdout_contains(&format!(
            "c2201 ! host certificate of c2201 (10.200.0.13:2201) is refused: its CA ssh-ed25519 {} is @revoked",
            fingerprint(&lab, "ssh/host_ca.pub")
        ))
        .run();
    // The host's certified key itself, recorded as a plain key and no CA line: the cert is not
    // asked for, the plain key is what is checked (as before certificates).
    let plain = format!("[10.200.0.13]:2201 {}\n", public_key(&lab, "net/h3/cert2201/hostkey.pub"));
    let inv = inventory(dir.path(), Some(&identity), &plain);
    run(dir.path(), &inv, "p2-c2201").stdout_contains("c2201 | ferry-h3\n").run();
}

#[test]
fn a_user_certificate_is_what_gets_in_where_no_key_is_authorized() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    // The same key without its certificate beside it: 2201 authorizes no key.
    let bare = dir.path().join("client_key");
    std::fs::copy(lab.dir.join("ssh/client_key"), &bare).unwrap();
    let inv = inventory(dir.path(), Some(&bare), &ca_line(&lab));
    run(dir.path(), &inv, "p2-c2201")
        .code(1)
        .stdout_contains(&format!(
            "c2201 ! authentication as root@10.200.0.13:2201 failed; tried: {}\n",
            bare.display()
        ))
        .run();
    // With the certificate copied beside it, the certificate is tried first and accepted.
    std::fs::copy(lab.dir.join("ssh/cert/client_key-cert.pub"), dir.path().join("client_key-cert.pub"))
        .unwrap();
    run(dir.path(), &inv, "p2-c2201").stdout_contains("c2201 | ferry-h3\n").run();
    // An RSA key with a certificate from the same user CA: offered under its SHA-2 name
    // (rsa-sha2-512-cert-v01@openssh.com), which OpenSSH 9 accepts; the SHA-1 one it refuses.
    let rsa = dir.path().join("id_rsa_p2");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "p2-rsa", "-f"])
        .arg(&rsa)
        .status()
        .unwrap();
    assert!(keygen.success());
    let sign = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(lab.dir.join("ssh/user_ca"))
        .args(["-I", "p2-rsa-user", "-n", "root", "-V", "-5m:+1h"])
        .arg(dir.path().join("id_rsa_p2.pub"))
        .status()
        .unwrap();
    assert!(sign.success());
    let inv = inventory(dir.path(), Some(&rsa), &ca_line(&lab));
    run(dir.path(), &inv, "p2-c2201").stdout_contains("c2201 | ferry-h3\n").run();
    // A certificate for the other key is not this key's: tried by name, refused.
    let other = dir.path().join("other_key");
    std::fs::copy(lab.dir.join("ssh/other_key"), &other).unwrap();
    let inv = inventory(dir.path(), Some(&other), &ca_line(&lab));
    run(dir.path(), &inv, "p2-c2201")
        .code(1)
        .stdout_contains(&format!(
            "c2201 ! authentication as root@10.200.0.13:2201 failed; tried: {}\n",
            other.display()
        ))
        .run();
}

/// A real `ssh-agent` on a socket in a folder of its own, killed (by its PID) when dropped.
struct Agent {
    pid: u32,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let out = Command::new("ssh-agent").arg("-a").arg(&socket).arg("-s").output().unwrap();
        assert!(out.status.success(), "ssh-agent: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split(';')
            .find_map(|part| part.trim().strip_prefix("SSH_AGENT_PID="))
            .unwrap_or_else(|| panic!("no SSH_AGENT_PID in {text}"))
            .parse()
            .unwrap();
        Agent { pid, socket }
    }

    /// `ssh-add` of a copy of the lab's `file` (and of its certificate, when `with_cert`), the
    /// copy deleted afterwards: ferry can only get the key from the agent.
    fn add(&self, lab: &Lab, dir: &Path, file: &str, with_cert: bool) {
        let copy = dir.join("k");
        std::fs::copy(lab.dir.join(file), &copy).unwrap();
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        if with_cert {
            std::fs::copy(lab.dir.join(format!("{file}-cert.pub")), dir.join("k-cert.pub")).unwrap();
        }
        self.ssh_add(&[copy.to_str().unwrap()]);
        let _ = std::fs::remove_file(&copy);
        let _ = std::fs::remove_file(dir.join("k-cert.pub"));
    }

    fn ssh_add(&self, args: &[&str]) {
        let out = Command::new("ssh-add").args(args).env("SSH_AUTH_SOCK", &self.socket).output().unwrap();
        assert!(out.status.success(), "ssh-add {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

#[test]
fn the_agent_holding_the_only_key_and_its_certificate_gets_in() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let agent = Agent::start(&agent_dir);
    let sock = agent.socket.display().to_string();
    let known = format!("{}{}", lab_key_line(&lab, 1), ca_line(&lab));
    let inv = inventory(dir.path(), None, &known);
    let ferry = |env: &str| {
        run(dir.path(), &inv, env).env("HOME", home.to_str().unwrap()).env("SSH_AUTH_SOCK", &sock)
    };

    agent.add(&lab, &agent_dir, "ssh/client_key", false);
    ferry("p2-h1").stdout_contains("h1 | ferry-h1\n").run();
    // 2201 authorizes no key: the plain key from the agent is not enough.
    ferry("p2-c2201")
        .code(1)
        .stdout_contains(
            "c2201 ! authentication as root@10.200.0.13:2201 failed; tried: agent key ferry-lab\n",
        )
        .run();
    // The agent with the certificate too (`ssh-add` loads `k-cert.pub` beside `k`).
    agent.add(&lab, &agent_dir, "ssh/cert/client_key", true);
    ferry("p2-c2201").stdout_contains("c2201 | ferry-h3\n").run();

    // An empty agent: nothing gets in, and the error says what was tried.
    agent.ssh_add(&["-D"]);
    ferry("p2-h1")
        .code(1)
        .stdout_contains(&format!(
            "h1 ! authentication as root@10.200.0.11:22 failed; tried: agent at {sock} (no keys in it)\n"
        ))
        .run();
    agent.add(&lab, &agent_dir, "ssh/other_key", false);
    ferry("p2-h1")
        .code(1)
        .stdout_contains(
            "h1 ! authentication as root@10.200.0.11:22 failed; tried: agent key not-authorized\n",
        )
        .run();
}

#[test]
fn an_encrypted_identity_is_used_through_the_agent_that_holds_it() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let agent = Agent::start(&agent_dir);
    let sock = agent.socket.display().to_string();
    // The identity file: the client key under a passphrase ferry is not given, its .pub beside.
    let identity = dir.path().join("id_enc");
    std::fs::copy(lab.dir.join("ssh/client_key"), &identity).unwrap();
    std::fs::copy(lab.dir.join("ssh/client_key.pub"), dir.path().join("id_enc.pub")).unwrap();
    std::fs::set_permissions(&identity, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "p2-passphrase", "-f"])
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inv = inventory(dir.path(), Some(&identity), &lab_key_line(&lab, 1));
    let ferry = |env: &str| {
        run(dir.path(), &inv, env).env("HOME", home.to_str().unwrap()).env("SSH_AUTH_SOCK", &sock)
    };
    // The agent is empty: the identity's own error is what ferry reports.
    ferry("p2-h1")
        .code(1)
        .stdout_contains(&format!("h1 ! cannot use key {}: ", identity.display()))
        .stdout_contains("(if it is encrypted, set FERRY_SSH_PASSPHRASE)\n")
        .run();
    agent.add(&lab, &agent_dir, "ssh/client_key", false);
    ferry("p2-h1").stdout_contains("h1 | ferry-h1\n").run();
}

#[test]
fn trust_records_nothing_for_a_host_under_a_cert_authority_line() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path(), Some(&lab.dir.join("ssh/cert/client_key")), &ca_line(&lab));
    let trust = |env: &str| {
        Test::bare()
            .env("FERRY_STATE_DIR", &dir.path().join("state").display().to_string())
            .args(["-i", &inv, "trust", "--env", env, "--yes"])
    };
    trust("p2-c2201").stdout_contains("TRUSTED").run();
    trust("p2-c2203")
        .code(4)
        .stdout_contains(
            "REFUSED  ssh-ed25519",
        )
        .stdout_contains("certificate refused: its principals (other.lab) do not include 10.200.0.13; trust records no key for a host under an @cert-authority line (fix the certificate or the CA line)")
        .run();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("known_hosts")).unwrap(),
        ca_line(&lab),
        "nothing recorded"
    );
}

/// An endpoint for lab host h1 as root with these identities, `IdentitiesOnly` on (so the
/// default `~/.ssh/id_*` keys of the machine running the tests are never read), and `agent`.
fn h1_endpoint(identities: Vec<PathBuf>, agent: ferry::ssh::IdentityAgent) -> ferry::ssh::Endpoint {
    ferry::ssh::Endpoint {
        name: "h1".into(),
        host: "10.200.0.11".into(),
        port: 22,
        user: "root".into(),
        identities,
        identities_only: true,
        certificate_files: Vec::new(),
        identity_agent: Some(agent),
        host_key_alias: None,
        known_hosts: None,
        connect_timeout: None,
        jump: None,
    }
}

/// Connects to `endpoint` with the lab's known_hosts; the error's text, or "ok".
fn connect(lab: &Lab, endpoint: &ferry::ssh::Endpoint) -> String {
    let known_hosts = ferry::known_hosts::KnownHosts::load(&lab.dir.join("known_hosts")).unwrap();
    let options = ferry::ssh::Options {
        connect_timeout: std::time::Duration::from_secs(20),
        known_hosts: std::sync::Arc::new(known_hosts),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        match ferry::ssh::SshSession::connect(endpoint, &options).await {
            Ok(session) => {
                session.close().await;
                "ok".to_string()
            }
            Err(e) => e.to_string(),
        }
    })
}

#[test]
fn identities_only_limits_the_agent_to_the_identities_keys_and_identity_agent_picks_the_socket() {
    use ferry::ssh::IdentityAgent;
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let agent = Agent::start(&agent_dir);
    agent.add(&lab, &agent_dir, "ssh/client_key", false);
    // Identities known only by their public halves: the private keys are in the agent, or nowhere.
    let client = dir.path().join("client");
    std::fs::copy(lab.dir.join("ssh/client_key.pub"), dir.path().join("client.pub")).unwrap();
    let other = dir.path().join("other");
    std::fs::copy(lab.dir.join("ssh/other_key.pub"), dir.path().join("other.pub")).unwrap();
    let socket = IdentityAgent::Socket(agent.socket.clone());

    assert_eq!(connect(&lab, &h1_endpoint(vec![client.clone()], socket.clone())), "ok");
    // The agent's (authorized) key is not one of the identities: not offered, so nothing gets
    // in, and the identity's own error is the one reported.
    let refused = connect(&lab, &h1_endpoint(vec![other.clone()], socket.clone()));
    assert!(refused.starts_with(&format!("cannot use key {}: ", other.display())), "{refused}");
    // `IdentityAgent none`: the agent is not asked at all.
    let off = connect(&lab, &h1_endpoint(vec![client.clone()], IdentityAgent::Disabled));
    assert!(off.starts_with(&format!("cannot use key {}: ", client.display())), "{off}");
    // A socket with no agent behind it is named in the list of what was tried.
    let gone = dir.path().join("no-agent.sock");
    let missing = connect(&lab, &h1_endpoint(Vec::new(), IdentityAgent::Socket(gone.clone())));
    assert_eq!(
        missing,
        format!(
            "authentication as root@10.200.0.11:22 failed; tried: agent at {} (cannot connect)",
            gone.display()
        )
    );
}
