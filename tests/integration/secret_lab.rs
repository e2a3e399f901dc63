//! Secrets from a real secret manager, in the lab: `pass` (with a throwaway gpg key made here)
//! behind a `command` secret source, and behind Debian's `docker-credential-pass` for a feed.
//! The value reaches the container byte for byte and appears nowhere else: not in ferry's
//! output or JSON events, the audit log and records (runner and target), the container's
//! command line, or any process's argv while ferry runs.
//!
//! Names: apps and environments `p3-*`, container ports 18520–18529.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::lab::{Lab, json_lines, lab};
use crate::proxy_lab::on_host;

/// A value with spaces and punctuation a shell or an env file could mangle.
const VALUE: &str = r#"p3 s3cr3t: "quoted" $HOME ; & | * \ end"#;

/// The lab registry's password, stored only in `docker-credential-pass`.
const REGISTRY_PASSWORD: &str = "s3cret-lab";

/// A password store of its own: a gpg home with a passphrase-less ed25519 key, a store
/// initialised for it, and a HOME with nothing in it (no ~/.docker, no ~/.ssh of root's).
struct PassStore {
    dir: tempfile::TempDir,
}

impl PassStore {
    fn new() -> PassStore {
        let store = PassStore { dir: tempfile::tempdir().unwrap() };
        let gnupg = store.dir.path().join("gnupg");
        std::fs::create_dir(&gnupg).unwrap();
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::create_dir(store.dir.path().join("home")).unwrap();
        store.run(
            "gpg",
            &["--batch", "--gen-key"],
            "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nSubkey-Type: ecdh\nSubkey-Curve: cv25519\n\
             Name-Email: ferry-test@example.invalid\nExpire-Date: 0\n%commit\n",
        );
        store.run("pass", &["init", "ferry-test@example.invalid"], "");
        store
    }

    /// GNUPGHOME, PASSWORD_STORE_DIR and HOME for programs using this store.
    fn env(&self) -> Vec<(String, String)> {
        let at = |p: &str| self.dir.path().join(p).display().to_string();
        vec![
            ("GNUPGHOME".into(), at("gnupg")),
            ("PASSWORD_STORE_DIR".into(), at("pass")),
            ("HOME".into(), at("home")),
        ]
    }

    /// Runs `program args` with this store, `input` on stdin; fails the test when it fails.
    fn run(&self, program: &str, args: &[&str], input: &str) -> String {
        let mut child = Command::new(program)
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        // This store's own agent only (its GNUPGHOME names its socket).
        let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).envs(self.env()).status();
    }
}

/// An inventory in `dir`: app `app` (image ferry/web) on the lab's `host` in environment `app`,
/// port `port`; `feed` is the `[feeds.lab]` body, `secrets` the app's secrets table.
fn inventory(lab: &Lab, dir: &Path, feed: &str, app: &str, host: &str, port: u16, secrets: &str) -> String {
    let text = format!(
        "[defaults]\nuser = \"root\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n\n\
         [targets.t]\nhost = \"{host}\"\n\n[feeds.lab]\n{feed}\n\n[environments.{app}]\ntargets = [\"t\"]\n\n\
         [apps.{app}]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\nhealth = {{ grace = \"1s\" }}\n\
         secrets = {secrets}\n",
        key = lab.dir.join("ssh/client_key").display(),
        known = lab.dir.join("known_hosts").display(),
    );
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/web.j2"),
        format!("docker run --stop-timeout 1 -p {port}:80 {{{{ image }}}}\n"),
    )
    .unwrap();
    dir.join("ferry.toml").display().to_string()
}

/// Runs ferry with `env` until it ends, reading every process's argv meanwhile: `hidden` must
/// never be in one. Returns (exit code, stdout, stderr).
fn ferry_watching_argv(args: &[&str], env: &[(String, String)], hidden: &str) -> (i32, String, String) {
    let mut child = Command::new(crate::test::binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut samples = 0;
    while child.try_wait().unwrap().is_none() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline);
                assert!(!cmdline.contains(hidden), "a secret is on a command line: {cmdline}");
            }
        }
        samples += 1;
    }
    assert!(samples > 0);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout.into_owned(), stderr.into_owned())
}

/// A CLI test with `env` set.
fn ferry(env: &[(String, String)]) -> crate::test::Test {
    env.iter().fold(crate::test::Test::bare(), |test, (k, v)| test.env(k, v))
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path: PathBuf = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out += &String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn a_secret_from_pass_reaches_the_container_byte_exact_and_appears_nowhere_else() {
    let lab = lab();
    let store = PassStore::new();
    store.run("pass", &["insert", "-m", "p3/db"], VALUE);
    assert_eq!(store.run("pass", &["show", "p3/db"], ""), VALUE, "pass -m keeps the bytes");
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(
        &lab,
        dir.path(),
        "url = \"http://10.200.0.1:5000\"",
        "p3-sec",
        "10.200.0.11",
        18520,
        "{ DB_PASSWORD = { command = [\"pass\", \"show\", \"p3/db\"], timeout = \"20s\" } }",
    );
    let state = dir.path().join("state");
    let mut env = store.env();
    env.push(("FERRY_STATE_DIR".into(), state.display().to_string()));
    let args =
        ["-i", &inv, "deploy", "p3-sec", "--env", "p3-sec", "--version", "1.0", "--yes", "--output", "json"];
    let (code, stdout, stderr) = ferry_watching_argv(&args, &env, VALUE);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!stdout.contains(VALUE) && !stderr.contains(VALUE), "{stdout}\n{stderr}");
    // JSON escapes the quotes and the backslash of a leaked value: a plain piece of it, too.
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"), "{stdout}\n{stderr}");
    let events = json_lines(&stdout);
    let finished: Vec<&Value> = events.iter().filter(|e| e["type"] == "target_finished").collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["status"], "ok", "{}", finished[0]);
    // In the container, byte for byte; not in its command line.
    let container_env =
        on_host(&lab, 1, "docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' p3-sec-p3-sec");
    assert!(container_env.lines().any(|l| l == format!("DB_PASSWORD={VALUE}")), "{container_env}");
    let command_line = on_host(
        &lab,
        1,
        "docker inspect --format '{{json .Path}} {{json .Args}} {{json .Config.Cmd}} {{json .Config.Entrypoint}}' p3-sec-p3-sec",
    );
    assert!(!command_line.contains("s3cr3t"), "{command_line}");
    // Not in the runner's audit log and records, nor in ferry's files on the target.
    let runner = all_text(&state);
    assert!(runner.contains("p3-sec"), "the run is on record");
    assert!(!runner.contains(VALUE) && !runner.contains("s3cr3t"), "the value is in the runner's state");
    let target = on_host(&lab, 1, "cat $(find /root/.ferry -type f) 2>/dev/null; true");
    assert!(target.contains("p3-sec"), "the target keeps its records");
    assert!(!target.contains("s3cr3t"), "the value is in the target's records");
    // The source is named, the value is not, by `vars`.
    let vars = ferry(&env)
        .args(["-i", &inv, "vars", "p3-sec", "--env", "p3-sec"])
        .never_prints(VALUE)
        .stdout_contains("command pass show p3/db")
        .run();
    assert!(vars.stdout.contains("DB_PASSWORD"));
    on_host(&lab, 1, "docker rm -f p3-sec-p3-sec >/dev/null 2>&1; true");
}

#[test]
fn a_feed_whose_credentials_live_only_in_docker_credential_pass_lists_and_deploys() {
    let lab = lab();
    let env_file = std::fs::read_to_string(lab.dir.join("lab.env")).unwrap();
    let secure =
        env_file.lines().find_map(|l| l.strip_prefix("FERRY_LAB_SECURE_REGISTRY=")).unwrap().to_string();
    let store = PassStore::new();
    let entry = format!(r#"{{"ServerURL":"{secure}","Username":"tester","Secret":"{REGISTRY_PASSWORD}"}}"#);
    store.run("docker-credential-pass", &["store"], &entry);
    let dir = tempfile::tempdir().unwrap();
    let feed =
        format!("url = \"https://{secure}\"\nca_file = \"{}\"", lab.dir.join("registry2/ca.crt").display());
    let inv = inventory(&lab, dir.path(), &feed, "p3-feed", "10.200.0.12", 18521, "{}");
    let configs = [
        ("store", r#"{"credsStore":"pass"}"#.to_string()),
        ("helpers", format!(r#"{{"credHelpers":{{"{secure}":"pass"}}}}"#)),
        ("none", "{}".to_string()),
        ("broken", r#"{"credsStore":"pass",}"#.to_string()),
    ];
    for (name, config) in &configs {
        std::fs::create_dir_all(store.path().join(name)).unwrap();
        std::fs::write(store.path().join(name).join("config.json"), config).unwrap();
    }
    let state = dir.path().join("state");
    let env_with = |config: &str| {
        let mut env = store.env();
        env.push(("DOCKER_CONFIG".into(), store.path().join(config).display().to_string()));
        env.push(("FERRY_STATE_DIR".into(), state.display().to_string()));
        env
    };
    // Without the helper the registry refuses: the helper is what lets ferry in.
    let refused = ferry(&env_with("none"))
        .args(["-i", &inv, "versions", "p3-feed"])
        .code(1)
        .stderr(&format!(
            "error: registry {secure} refused the credentials: it asks for a user name and password; the feed has none\n  \
             = help: check the feed's username and password sources (or `docker login`)\n"
        ))
        .run();
    assert!(refused.stderr.contains("the feed has none"));
    // A config that is not JSON is a mistake to fix, not "no credentials" (anonymous, refused).
    ferry(&env_with("broken"))
        .args(["-i", &inv, "versions", "p3-feed"])
        .code(2)
        .stderr_contains("/broken/config.json is not valid JSON: trailing comma at line 1 column 22\n")
        .run();
    for config in ["store", "helpers"] {
        let doc = ferry(&env_with(config))
            .args(["-i", &inv, "versions", "p3-feed", "--output", "json"])
            .never_prints(REGISTRY_PASSWORD)
            .stdout_json()
            .run()
            .json();
        let tags: Vec<&str> =
            doc["versions"].as_array().unwrap().iter().map(|v| v["tag"].as_str().unwrap()).collect();
        assert_eq!(tags.first(), Some(&"2.0"), "{config}: {doc}");
    }
    let args = [
        "-i",
        &inv,
        "deploy",
        "p3-feed",
        "--env",
        "p3-feed",
        "--version",
        "latest",
        "--yes",
        "--output",
        "json",
    ];
    let (code, stdout, stderr) = ferry_watching_argv(&args, &env_with("store"), REGISTRY_PASSWORD);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!stdout.contains(REGISTRY_PASSWORD) && !stderr.contains(REGISTRY_PASSWORD));
    let events = json_lines(&stdout);
    let finished: Vec<&Value> = events.iter().filter(|e| e["type"] == "target_finished").collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["status"], "ok", "{}", finished[0]);
    let image = finished[0]["container"]["image"].as_str().unwrap();
    assert!(image.starts_with(&format!("{secure}/ferry/web@sha256:")), "{image}");
    assert!(!all_text(&state).contains(REGISTRY_PASSWORD), "the password is in the runner's state");
    let target = on_host(&lab, 2, "cat $(find /root/.ferry -type f) 2>/dev/null; true");
    assert!(!target.contains(REGISTRY_PASSWORD), "the password is in the target's records");
    on_host(&lab, 2, "docker rm -f p3-feed-p3-feed >/dev/null 2>&1; true");
}
