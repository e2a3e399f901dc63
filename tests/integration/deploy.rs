//! Deployments against the lab: real sshd, a real dockerd per host, the real registry, and the
//! `ferry/web` image in five versions (see tests/lab/lab.sh).
//!
//! Each test brings its own inventory (its own environment name, host port and state folder),
//! so tests run in parallel without meeting each other's locks or containers. Containers run on
//! h1–h3; only the link-cut test uses h4, under [`FAULTS`]. What a target runs is read back
//! with `docker inspect` inside the host's own namespaces, not through ferry.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{FAULTS, Lab, Restore, json_lines, lab};
use crate::receiver::Receiver;
use crate::test::Test;

/// The deploy tests' template: `--stop-timeout 1` because busybox httpd as PID 1 ignores TERM.
const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }}
";

/// The secret every fleet deploys with unless a test says otherwise.
const TOKEN: &str = "tok-3f9a1c77e2";

/// How a test's fleet is set up.
struct Spec<'a> {
    env: &'a str,
    port: u16,
    hosts: &'a [usize],
    rollout: &'a str,
    health: &'a str,
    extra: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec { env: "", port: 0, hosts: &[1, 2, 3], rollout: "", health: "{ grace = \"1s\" }", extra: "" }
    }
}

/// One test's inventory, state folder and helpers to look at its hosts.
struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
    env: String,
    port: u16,
    hosts: Vec<usize>,
}

impl Fleet {
    fn new(spec: Spec<'_>) -> Fleet {
        let lab = lab();
        let dir = tempfile::tempdir().unwrap();
        let ssh = lab.dir.join("ssh/client_key").display().to_string();
        let known = lab.dir.join("known_hosts").display().to_string();
        let mut text =
            format!("[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n");
        for n in spec.hosts {
            text += &format!("\n[targets.h{n}]\nhost = \"10.200.0.{}\"\n", 10 + n);
        }
        let names: Vec<String> = spec.hosts.iter().map(|n| format!("\"h{n}\"")).collect();
        text += &format!(
            "\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n[environments.{}]\ntargets = [{}]\n{}\n",
            spec.env,
            names.join(", "),
            spec.rollout
        );
        text += &format!(
            "\n[apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
             vars = {{ port = {}, greeting = \"hello\" }}\nenv = {{ GREETING = \"{{{{ greeting }}}}\" }}\n\
             secrets = {{ TOKEN = {{ env = \"WEB_TOKEN\" }} }}\nhealth = {}\n{}\n",
            spec.port, spec.health, spec.extra
        );
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/web.j2"), TEMPLATE).unwrap();
        let fleet =
            Fleet { lab, dir, env: spec.env.to_string(), port: spec.port, hosts: spec.hosts.to_vec() };
        // A lab kept up between runs (by hand) may hold this test's containers and locks from
        // the last run: start clean.
        for &n in &fleet.hosts {
            fleet.on_host(
                n,
                &format!(
                    "docker ps -aq --filter label=ferry.environment={env} | xargs -r docker rm -f; rm -rf /root/.ferry/locks/{env}",
                    env = fleet.env
                ),
            );
        }
        fleet
    }

    fn inventory(&self) -> String {
        self.dir.path().join("ferry.toml").display().to_string()
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn container(&self) -> String {
        format!("web-{}", self.env)
    }

    /// `ferry -i INVENTORY ARGS` with this fleet's state folder and secret.
    fn ferry(&self, args: &[&str]) -> Test {
        Test::bare()
            .args(["-i", &self.inventory()])
            .args(args.iter().copied())
            .env("FERRY_STATE_DIR", &self.state().display().to_string())
            .env("WEB_TOKEN", TOKEN)
            .never_prints(TOKEN)
    }

    /// `ferry deploy web --env ENV --version V --yes --output json EXTRA`.
    fn deploy(&self, version: &str, extra: &[&str]) -> Test {
        let mut args =
            vec!["deploy", "web", "--env", &self.env, "--version", version, "--yes", "--output", "json"];
        args.extend_from_slice(extra);
        self.ferry(&args).stdout_json_lines()
    }

    /// The same as a process to start in the background.
    fn spawn(&self, args: &[&str], token: &str) -> std::process::Child {
        Command::new(crate::test::binary())
            .args(["-i", &self.inventory()])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FERRY_STATE_DIR", self.state())
            .env("WEB_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs a command inside host `n`'s network and mount namespaces (its dockerd, its /root).
    fn on_host(&self, n: usize, script: &str) -> String {
        let holder = std::fs::read_to_string(self.lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
        let out = Command::new("nsenter")
            .args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The environment's lock folder on host `n` (empty when it is free).
    fn lock_on(&self, n: usize) -> String {
        self.on_host(n, &format!("[ ! -e /root/.ferry/locks/{} ] || echo held", self.env))
    }

    /// `docker inspect` of the fleet's container on host `n`, if there is one.
    fn inspect(&self, n: usize) -> Option<Value> {
        let text = self.on_host(n, &format!("docker inspect {} 2>/dev/null", self.container()));
        let parsed: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        parsed.into_iter().next()
    }

    fn id(&self, n: usize) -> String {
        self.inspect(n).unwrap_or_else(|| panic!("no container on h{n}"))["Id"].as_str().unwrap().to_string()
    }

    fn ids(&self) -> Vec<String> {
        self.hosts.iter().map(|&n| self.id(n)).collect()
    }

    /// The environment of the container on host `n`, as Docker holds it.
    fn env_of(&self, n: usize) -> Vec<String> {
        let c = self.inspect(n).unwrap();
        c["Config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    /// The body of `GET /` on host `n`'s published port.
    fn http(&self, n: usize) -> String {
        let addr = format!("10.200.0.{}:{}", 10 + n, self.port).parse().unwrap();
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// Every record of the fleet's audit log.
    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default();
        json_lines(&text)
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default()
    }
}

/// The `target_finished` event of `target`.
fn finished(events: &[Value], target: &str) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "target_finished" && e["target"] == target)
        .unwrap_or_else(|| panic!("no target_finished for {target}: {events:?}"))
        .clone()
}

/// Each target's action, in target name order (events come in the order targets finish).
fn actions(events: &[Value]) -> Vec<String> {
    let mut done: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "target_finished")
        .map(|e| (e["target"].as_str().unwrap().to_string(), e["action"].as_str().unwrap_or("-").to_string()))
        .collect();
    done.sort();
    done.into_iter().map(|(_, a)| a).collect()
}

#[test]
fn deploy_runs_labelled_containers_that_answer_and_only_changes_replace_them() {
    let fleet = Fleet::new(Spec { env: "d-basic", port: 18101, ..Spec::default() });
    let out = fleet.deploy("1.0", &[]).run();
    let events = json_lines(&out.stdout);
    assert_eq!(actions(&events), ["created", "created", "created"], "{}", out.stdout);
    for n in 1..=3 {
        let c = fleet.inspect(n).unwrap();
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["ferry.app"], "web");
        assert_eq!(labels["ferry.environment"], "d-basic");
        assert_eq!(labels["ferry.version"], "1.0");
        assert!(labels["ferry.digest"].as_str().unwrap().starts_with("sha256:"), "{labels}");
        assert!(labels["ferry.config-hash"].as_str().unwrap().len() == 64);
        let image = c["Config"]["Image"].as_str().unwrap();
        assert_eq!(image, format!("10.200.0.1:5000/ferry/web@{}", labels["ferry.digest"].as_str().unwrap()));
        let env = fleet.env_of(n);
        assert!(
            env.contains(&"GREETING=hello".to_string()) && env.contains(&format!("TOKEN={TOKEN}")),
            "{env:?}"
        );
        assert_eq!(c["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"], "18101");
        assert_eq!(fleet.http(n), "ferry web 1.0\n");
        // The container details in the event are the container's.
        let details = &finished(&events, &format!("h{n}"))["container"];
        assert_eq!(details["id"], c["Id"]);
        assert_eq!(details["name"], "web-d-basic");
        assert!(details["ip"].as_str().unwrap().starts_with("172.31."), "{details}");
        assert!(details["ports"].as_array().unwrap().iter().any(|p| p["host_port"] == "18101"), "{details}");
    }
    let first = fleet.ids();

    let again = json_lines(&fleet.deploy("1.0", &[]).run().stdout);
    assert_eq!(actions(&again), ["unchanged", "unchanged", "unchanged"]);
    assert_eq!(fleet.ids(), first, "a no-op restarts nothing");

    let changed = json_lines(&fleet.deploy("1.0", &["--set", "greeting=changed"]).run().stdout);
    assert_eq!(actions(&changed), ["replaced", "replaced", "replaced"]);
    let second = fleet.ids();
    assert!(second.iter().zip(&first).all(|(a, b)| a != b), "every container was replaced");
    assert!(fleet.env_of(1).contains(&"GREETING=changed".to_string()));

    let rotated = fleet.deploy("1.0", &["--set", "greeting=changed"]).env("WEB_TOKEN", "tok-rotated").run();
    assert_eq!(actions(&json_lines(&rotated.stdout)), ["replaced", "replaced", "replaced"]);
    assert!(fleet.ids().iter().zip(&second).all(|(a, b)| a != b));
    assert!(fleet.env_of(2).contains(&"TOKEN=tok-rotated".to_string()));
    // Exited on each old container? No: removed. Only one container of the app per host.
    for n in 1..=3 {
        let names =
            fleet.on_host(n, "docker ps -a --filter label=ferry.environment=d-basic --format '{{.Names}}'");
        assert_eq!(names.trim(), "web-d-basic", "h{n}: {names}");
    }

    let records = fleet.audit();
    let finishes: Vec<&Value> = records.iter().filter(|r| r["kind"] == "run_finished").collect();
    assert_eq!(finishes.len(), 4);
    assert!(finishes.iter().all(|r| r["detail"]["deployment"]["succeeded"] == true && r["app"] == "web"));
    let outcome = records.iter().find(|r| r["kind"] == "target_outcome").unwrap();
    assert_eq!(outcome["detail"]["action"], "created");
    assert!(outcome["detail"]["container"]["id"].as_str().unwrap().len() == 64);
}

#[test]
fn adversarial_values_arrive_byte_for_byte_and_secrets_stay_out_of_sight() {
    let fleet = Fleet::new(Spec { env: "d-quote", port: 18102, hosts: &[1], ..Spec::default() });
    let pwned = format!("/tmp/ferry-pwned-{}", std::process::id());
    let value = format!(
        "it's \"quoted\" $(touch {pwned}) `touch {pwned}` ; echo x && y | z\nline two ünïcødé → \\ $HOME"
    );
    let secret = format!("s3cret-'\"$(touch {pwned}-s)`touch {pwned}-s`;&|<>ü→");
    // Sample every process's command line on the machine (the lab's hosts share its kernel)
    // while the deployment runs.
    let set = format!("greeting={value}");
    let mut child = fleet.spawn(
        &[
            "deploy",
            "web",
            "--env",
            "d-quote",
            "--version",
            "1.0",
            "--yes",
            "--output",
            "json",
            "--set",
            &set,
        ],
        &secret,
    );
    let mut samples = 0;
    while child.try_wait().unwrap().is_none() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(!text.contains(&secret), "the secret is on a command line: {text}");
            }
        }
        samples += 1;
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(samples > 3, "the process list was sampled {samples} times");
    let env = fleet.env_of(1);
    assert!(env.contains(&format!("GREETING={value}")), "{env:?}");
    assert!(env.contains(&format!("TOKEN={secret}")), "{env:?}");
    for suffix in ["", "-s"] {
        assert!(!std::path::Path::new(&format!("{pwned}{suffix}")).exists(), "a value ran as a command");
    }
    let env_file = fleet.on_host(1, "[ ! -e /root/.ferry/env/web-d-quote.env ] || echo present");
    assert_eq!(env_file, "", "the env file is removed after docker run");
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
    assert!(!fleet.audit_text().contains(&secret));
    let mirror = fleet.on_host(1, "cat /root/.ferry/audit.log");
    assert!(mirror.contains("ferry deploy web 1.0 to d-quote") && !mirror.contains(&secret), "{mirror}");
}

#[test]
fn a_failed_version_restores_the_old_container_and_stops_the_rollout() {
    let fleet = Fleet::new(Spec {
        env: "d-fail",
        port: 18103,
        rollout: "rollout = { batch = 1, max_failures = 0 }",
        ..Spec::default()
    });
    fleet.deploy("1.0", &[]).run();
    let before = fleet.ids();
    let out = fleet.deploy("bad", &[]).code(1).run();
    let events = json_lines(&out.stdout);
    let h1 = finished(&events, "h1");
    assert_eq!((h1["status"].as_str(), h1["action"].as_str()), (Some("failed"), Some("restored")), "{h1}");
    let logs = h1["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l.as_str().unwrap().contains("broken build")), "{h1}");
    for target in ["h2", "h3"] {
        assert_eq!(finished(&events, target)["status"], "skipped", "targets after the failure are untouched");
    }
    assert_eq!(fleet.ids(), before, "the old containers run again, with their old ids");
    assert_eq!(fleet.inspect(1).unwrap()["State"]["Running"], true);
    assert_eq!(fleet.http(1), "ferry web 1.0\n");
    let records = fleet.audit();
    let outcome =
        records.iter().rev().find(|r| r["kind"] == "target_outcome" && r["targets"][0] == "h1").unwrap();
    assert!(outcome["detail"]["error"].as_str().unwrap().contains("gate"), "{outcome}");
    assert!(outcome["detail"]["logs"].to_string().contains("broken build"));
    let last = records.iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(last["detail"]["deployment"]["succeeded"], false);
    assert!(last["detail"]["stopped"].as_str().unwrap().contains("rollout stopped"), "{last}");
    // People see the logs too.
    let plain = fleet
        .ferry(&["deploy", "web", "--env", "d-fail", "--version", "bad", "--yes"])
        .code(1)
        .stdout_contains("batch 1: h1\n")
        .stdout_contains("h1 - failed: restoring the old container\n")
        .stdout_contains("h2 ! rollout stopped after batch 1: 1 failed (max_failures 0)\n")
        .stdout_contains("\nh1: last log lines of the new container:\n")
        .stdout_contains("  | httpd: cannot load /etc/web.conf: no such file (broken build)\n")
        .stdout_contains(
            "\nrollout stopped after batch 1: 1 failed (max_failures 0); the remaining 2 targets were not touched\n",
        )
        .run();
    assert!(plain.stdout.contains("h1: last log lines of the new container:"), "{}", plain.stdout);
    assert!(plain.stdout.contains("broken build") && plain.stdout.contains("rollout stopped"));
}

#[test]
fn health_gates_use_the_images_healthcheck_and_an_unhealthy_one_is_restored() {
    let fleet =
        Fleet::new(Spec { env: "d-check", port: 18104, health: "{ timeout = \"20s\" }", ..Spec::default() });
    let out = fleet.deploy("health", &[]).run();
    let events = json_lines(&out.stdout);
    let steps: Vec<&Value> = events.iter().filter(|e| e["type"] == "target_step").collect();
    assert!(steps.iter().any(|e| e["step"] == "healthy (image HEALTHCHECK)"), "{}", out.stdout);
    let healthy = fleet.ids();
    assert_eq!(fleet.inspect(1).unwrap()["State"]["Health"]["Status"], "healthy");
    let sick = fleet.deploy("sick", &[]).code(1).run();
    let h2 = finished(&json_lines(&sick.stdout), "h2");
    assert_eq!(h2["action"], "restored");
    assert!(h2["error"].as_str().unwrap().contains("unhealthy (image HEALTHCHECK)"), "{h2}");
    assert_eq!(fleet.ids(), healthy);
    assert_eq!(fleet.http(2), "ferry web health\n");
}

#[test]
fn health_cmd_and_post_deploy_see_the_new_container() {
    let fleet = Fleet::new(Spec {
        env: "d-post",
        port: 18105,
        hosts: &[1, 2],
        health: "{ cmd = \"busybox wget -q -O /dev/null http://127.0.0.1:{{ port }}/\", timeout = \"20s\", interval = \"500ms\" }",
        extra: "post_deploy = \"echo smoke {{ container.name }} {{ container.ip }} {{ container.ports[0].host_port }}; \
                busybox wget -q -O - http://{{ container.ip }}:80/ && [ {{ greeting }} != fail ]\"",
        ..Spec::default()
    });
    let out = fleet.deploy("1.0", &[]).run();
    let events = json_lines(&out.stdout);
    assert!(events.iter().any(|e| e["step"] == "health.cmd passed"), "{}", out.stdout);
    let ip = fleet.inspect(1).unwrap()["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "output" && e["target"] == "h1")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(lines.contains(&format!("smoke web-d-post {ip} 18105").as_str()), "{lines:?}");
    assert!(lines.contains(&"ferry web 1.0"), "{lines:?}");
    let before = fleet.ids();
    let failed = fleet.deploy("2.0", &["--set", "greeting=fail"]).code(1).run();
    let h1 = finished(&json_lines(&failed.stdout), "h1");
    assert_eq!(h1["action"], "restored", "a failed post_deploy fails the target: {h1}");
    assert!(h1["error"].as_str().unwrap().contains("post_deploy"), "{h1}");
    assert_eq!(fleet.ids(), before);
    assert_eq!(fleet.http(1), "ferry web 1.0\n");
}

#[test]
fn a_target_cut_off_mid_deploy_fails_alone_and_the_lock_is_released() {
    let _faults = FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fleet = Fleet::new(Spec {
        env: "d-cut",
        port: 18106,
        hosts: &[1, 2, 4],
        health: "{ grace = \"8s\", timeout = \"20s\" }",
        ..Spec::default()
    });
    let started = Instant::now();
    let child = fleet
        .spawn(&["deploy", "web", "--env", "d-cut", "--version", "1.0", "--yes", "--output", "json"], TOKEN);
    std::thread::sleep(Duration::from_secs(4)); // pulled and started; in the health gate
    let _restore = Restore(&fleet.lab, &["restore", "4"]);
    fleet.lab.ctl(&["cut", "4"]);
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(60), "the cut target failed after {took:?}");
    let events = json_lines(&stdout);
    assert_eq!(finished(&events, "h4")["status"], "error", "{stdout}");
    for target in ["h1", "h2"] {
        assert_eq!(finished(&events, target)["status"], "ok", "{stdout}");
    }
    for n in [1, 2] {
        assert_eq!(fleet.lock_on(n), "", "h{n}'s lock is released");
    }
    let records = fleet.audit();
    let h4 = records.iter().find(|r| r["kind"] == "target_outcome" && r["targets"][0] == "h4").unwrap();
    assert_eq!(h4["detail"]["status"], "error");
    let released = records.iter().find(|r| r["kind"] == "lock_released").unwrap();
    assert_eq!(released["detail"]["not_released"], serde_json::json!(["h4"]));
}

#[test]
fn rollback_restores_the_previous_version_by_digest() {
    let fleet = Fleet::new(Spec { env: "d-back", port: 18107, ..Spec::default() });
    fleet.deploy("1.0", &[]).run();
    let good = fleet.audit().into_iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    let good_digest = good["digest"].as_str().unwrap().to_string();
    fleet.deploy("2.0", &[]).run();
    assert_eq!(fleet.http(1), "ferry web 2.0\n");
    let good_run = good["run"].as_str().unwrap();
    let out = fleet
        .ferry(&["rollback", "web", "--env", "d-back", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains(&format!(
            "rollback: web in d-back returns to deployment {good_run} (1.0 {good_digest}, finished "
        ))
        .run();
    assert_eq!(actions(&json_lines(&out.stdout)), ["replaced", "replaced", "replaced"]);
    for n in 1..=3 {
        let c = fleet.inspect(n).unwrap();
        assert_eq!(c["Config"]["Image"], format!("10.200.0.1:5000/ferry/web@{good_digest}"));
        assert_eq!(c["Config"]["Labels"]["ferry.version"], "1.0");
        assert_eq!(fleet.http(n), "ferry web 1.0\n");
    }
    let last = fleet.audit().into_iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(last["command"], "rollback");
    assert_eq!(last["detail"]["deployment"]["rollback_to"], good["run"]);
    assert_eq!(last["detail"]["deployment"]["succeeded"], true);
    // The rollback is the config on record again: status sees no drift.
    let status = fleet
        .ferry(&["status", "web", "--env", "d-back"])
        .stdout_contains("web in d-back: last successful deployment ")
        .stdout_contains(
            "\n\nTARGET  CONTAINER     VERSION  DIGEST        CONFIG        HEALTH   UPTIME  DRIFT\n",
        )
        .run();
    let rows: Vec<&str> = status.stdout.lines().skip(3).collect();
    assert_eq!(rows.len(), 3, "{}", status.stdout);
    assert!(rows.iter().all(|r| r.contains("  running  ") && r.ends_with("  ok")), "{}", status.stdout);
}

#[test]
fn ctrl_c_finishes_the_running_target_skips_the_rest_and_releases_the_lock() {
    first_signal_is_graceful("-INT", "d-int", 18108);
}

/// A service manager (systemd, a CI runner cancelling a job) sends SIGTERM: the same as the
/// first Ctrl-C.
#[test]
fn sigterm_is_a_graceful_stop_like_the_first_ctrl_c() {
    first_signal_is_graceful("-TERM", "d-term", 18112);
}

fn first_signal_is_graceful(signal: &str, env: &'static str, port: u16) {
    let fleet = Fleet::new(Spec {
        env,
        port,
        rollout: "rollout = { batch = 1, max_failures = 0 }",
        health: "{ grace = \"3s\" }",
        ..Spec::default()
    });
    let child =
        fleet.spawn(&["deploy", "web", "--env", env, "--version", "1.0", "--yes", "--output", "json"], TOKEN);
    std::thread::sleep(Duration::from_millis(2500)); // h1 is in its health gate
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let events = json_lines(&stdout);
    assert_eq!(finished(&events, "h1")["status"], "ok", "the running target finished: {stdout}");
    for target in ["h2", "h3"] {
        assert_eq!(finished(&events, target)["status"], "skipped");
    }
    assert!(fleet.inspect(2).is_none() && fleet.inspect(3).is_none());
    for n in 1..=3 {
        assert_eq!(fleet.lock_on(n), "", "h{n}'s lock is released");
    }
    let last = fleet.audit().into_iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(last["detail"]["interrupted"], true);
    assert_eq!(last["detail"]["deployment"]["succeeded"], false);
}

/// The second signal quits without waiting for the gate, yet the run is still on record as
/// interrupted (not a crash) and the lock is released (no process::exit from a task).
#[test]
fn a_second_signal_quits_now_and_still_records_and_releases() {
    let fleet = Fleet::new(Spec {
        env: "d-quit",
        port: 18113,
        rollout: "rollout = { batch = 1, max_failures = 0 }",
        health: "{ grace = \"20s\" }",
        ..Spec::default()
    });
    let child = fleet
        .spawn(&["deploy", "web", "--env", "d-quit", "--version", "1.0", "--yes", "--output", "json"], TOKEN);
    std::thread::sleep(Duration::from_millis(2500)); // h1 is in its 20 s health gate
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let asked = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(asked.elapsed() < Duration::from_secs(12), "quit now did not wait for the 20 s gate");
    for n in 1..=3 {
        assert_eq!(fleet.lock_on(n), "", "h{n}'s lock is released");
    }
    let audit = fleet.audit();
    let last = audit.iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!(last["detail"]["interrupted"], true, "{last}");
    assert!(audit.iter().any(|r| r["kind"] == "lock_released"), "the release is on record");
}

#[test]
fn status_reports_drift_and_plan_diff_explains_what_would_change() {
    let fleet = Fleet::new(Spec { env: "d-drift", port: 18109, ..Spec::default() });
    fleet.deploy("1.0", &[]).run();
    let report =
        fleet.ferry(&["status", "web", "--env", "d-drift", "--output", "json"]).stdout_json().run().json();
    assert_eq!(report["drift"], false, "{report}");
    assert_eq!(report["targets"][0]["version"], "1.0");
    assert_eq!(report["targets"][0]["health"], "running");
    fleet.on_host(2, "docker stop web-d-drift");
    fleet.on_host(
        3,
        "docker run -d --name web-d-drift-extra --label ferry.app=web --label ferry.environment=d-drift \
         10.200.0.1:5000/ferry/web:1.0 httpd -f -p 81 -h /www",
    );
    let report = fleet
        .ferry(&["status", "web", "--env", "d-drift", "--output", "json"])
        .code(1)
        .stdout_json()
        .run()
        .json();
    let drift_of = |i: usize| report["targets"][i]["drift"].to_string();
    assert_eq!(report["targets"][0]["drift"], serde_json::json!([]));
    assert!(drift_of(1).contains("is exited"), "{report}");
    assert!(drift_of(2).contains("extra containers of the app: web-d-drift-extra"), "{report}");
    let human = fleet
        .ferry(&["status", "web", "--env", "d-drift"])
        .code(1)
        .stdout_contains("web in d-drift: last successful deployment ")
        .stdout_contains(
            "\n\nTARGET  CONTAINER     VERSION  DIGEST        CONFIG        HEALTH   UPTIME  DRIFT\n",
        )
        .stdout_contains("  exited   -       container web-d-drift is exited\n")
        .stdout_contains("  extra containers of the app: web-d-drift-extra\n")
        .run();
    assert!(human.stdout.contains("DRIFT") && human.stdout.contains("is exited"), "{}", human.stdout);

    let diff = fleet
        .ferry(&[
            "plan",
            "web",
            "--env",
            "d-drift",
            "--version",
            "1.0",
            "--diff",
            "--set",
            "greeting=hi",
            "--output",
            "json",
        ])
        .stdout_json()
        .run()
        .json();
    let change = |i: usize| diff["targets"][i]["change"].as_str().unwrap().to_string();
    assert_eq!((change(0), change(1), change(2)), ("replace".into(), "replace".into(), "replace".into()));
    let why = diff["targets"][0]["reasons"].to_string();
    assert!(why.contains("removed: -e GREETING=hello") && why.contains("added: -e GREETING=hi"), "{why}");
    let same = fleet
        .ferry(&["plan", "web", "--env", "d-drift", "--version", "1.0", "--diff", "--output", "plain"])
        .stdout("h1\tunchanged\t\nh2\tstart\tthe container is exited\nh3\tunchanged\t\n")
        // plan asks the feed about a named tag, and says what it has (the digest it plans).
        .stderr_contains("note: feed lab has 1.0 (sha256:")
        .run();
    assert!(same.stdout.contains("h1\tunchanged") && same.stdout.contains("h2\tstart"), "{}", same.stdout);
    // A deploy starts the stopped container with the planned config rather than recreating it.
    let stopped_id = fleet.id(2);
    let events = json_lines(&fleet.deploy("1.0", &[]).run().stdout);
    assert_eq!(actions(&events), ["unchanged", "started", "unchanged"]);
    assert_eq!(fleet.id(2), stopped_id);
}

#[test]
fn deploy_without_a_terminal_needs_yes_and_changes_nothing() {
    let fleet = Fleet::new(Spec { env: "d-ask", port: 18110, hosts: &[1], ..Spec::default() });
    let out = fleet
        .ferry(&["deploy", "web", "--env", "d-ask", "--version", "1.0"])
        .code(4)
        .stderr(
            "error: refusing to deploy web 1.0 to d-ask (1 target) without a confirmation: stdin is not a \
             terminal\n  = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run();
    assert!(out.stderr.contains("pass --yes"), "{}", out.stderr);
    assert!(fleet.inspect(1).is_none());
    assert!(fleet.audit().is_empty(), "nothing happened, so nothing is on record");
}

#[test]
fn the_crontab_recipe_is_silent_when_nothing_changed() {
    let fleet = Fleet::new(Spec { env: "d-cron", port: 18111, ..Spec::default() });
    // The README's crontab line: ferry deploy web --env dev --version latest --yes --quiet
    let recipe = ["deploy", "web", "--env", "d-cron", "--version", "latest", "--yes", "--quiet"];
    let first = fleet
        .ferry(&recipe)
        .stdout_contains("\ndeploy web 2.0 to d-cron: 2.0 (sha256:")
        .stdout_contains("\nTARGET  STATUS  ACTION   CONTAINER     IP ")
        .stdout_contains("\nh1      ok      created  ")
        .stdout_contains("\nh2      ok      created  ")
        .stdout_contains("\nh3      ok      created  ")
        .run();
    assert!(first.stdout.contains("created"), "a change is reported: {}", first.stdout);
    let ids = fleet.ids();
    assert_eq!(fleet.http(1), "ferry web 2.0\n", "latest is the newest version, 2.0");
    let second = fleet.ferry(&recipe).run();
    assert_eq!(second.stdout, "", "a no-op prints nothing on stdout");
    assert_eq!(fleet.ids(), ids, "and restarts nothing");
    let records = fleet.audit();
    assert_eq!(records.iter().filter(|r| r["kind"] == "run_finished").count(), 2, "both runs are on record");
}

/// An app without a feed pins its digest at the first pull: the deployment's record names the
/// bytes that ran (promote and rollback read it), not just the tag.
#[test]
fn without_a_feed_the_record_keeps_the_digest_pinned_at_the_first_pull() {
    let fleet = Fleet::new(Spec { env: "d-nofeed", port: 18114, hosts: &[1, 2], ..Spec::default() });
    let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    let feedless =
        inventory.replace("feed = \"lab\"\nimage = \"ferry/web\"", "image = \"10.200.0.1:5000/ferry/web\"");
    assert_ne!(feedless, inventory, "the test changed nothing");
    std::fs::write(fleet.inventory(), feedless).unwrap();
    fleet.deploy("1.0", &[]).run();
    let last = fleet.audit().into_iter().rev().find(|r| r["kind"] == "run_finished").unwrap();
    let digest = last["digest"].as_str().unwrap_or_default();
    assert!(digest.starts_with("sha256:"), "{last}");
    assert_eq!(
        last["detail"]["deployment"]["image"],
        format!("10.200.0.1:5000/ferry/web@{digest}"),
        "{last}"
    );
}

/// Login shells parse an SSH command line each their own way (fish reads `\\` and `\'` inside
/// single quotes); ferry sends only a constant command line and the script on stdin, so a run
/// and a deploy (whose env file follows the script on stdin) come out alike for each of them.
#[test]
fn run_and_deploy_behave_the_same_for_a_fish_login_shell_as_for_bash_and_dash() {
    let command = r#"printf '%s|' "$((1+2))" 'a\\b' "it's" "$(id -un)"; echo"#;
    let greeting = r#"it's a \\ "test""#;
    let mut seen = Vec::new();
    for (user, env, port) in
        [("ferry-bash", "e-bash", 18171), ("ferry-dash", "e-dash", 18172), ("ferry-fish", "e-fish", 18170)]
    {
        let fleet = Fleet::new(Spec { env, port, hosts: &[1], ..Spec::default() });
        let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
        std::fs::write(
            fleet.inventory(),
            inventory.replace("user = \"root\"", &format!("user = \"{user}\"")),
        )
        .unwrap();
        let run = fleet
            .ferry(&["run", "--env", env, "--output", "plain", "--", command])
            .stdout_contains(&format!("h1 | 3|a\\\\b|it's|{user}|\n"))
            .run();
        let line =
            run.stdout.lines().find(|l| l.starts_with("h1 | ")).unwrap_or_default().replace(user, "USER");
        let out = fleet.deploy("1.0", &["--set", &format!("greeting={greeting}")]).run();
        let events = json_lines(&out.stdout);
        let env_of = fleet.env_of(1);
        assert!(env_of.contains(&format!("TOKEN={TOKEN}")), "{user}: {env_of:?}");
        let greeting_env = env_of.iter().find(|e| e.starts_with("GREETING=")).cloned().unwrap_or_default();
        seen.push((line, actions(&events), greeting_env, fleet.http(1)));
        fleet.on_host(1, &format!("docker rm -f {}", fleet.container()));
    }
    let bash = seen[0].clone();
    assert_eq!(
        bash,
        (
            "h1 | 3|a\\\\b|it's|USER|".to_string(),
            vec!["created".to_string()],
            format!("GREETING={greeting}"),
            "ferry web 1.0\n".to_string()
        )
    );
    assert_eq!(seen[1], bash, "dash");
    assert_eq!(seen[2], bash, "fish");
}

mod day_two;
mod hooks;
mod networks;
mod proxied;
mod retention;
mod target;
mod unreachable;

/// Issue 16: `[notify.NAME]` announces a deployment: Slack gets `started` (after one retry of a
/// 500) and `succeeded`, CloudEvents gets only `succeeded` (also after a 500: the retry carries
/// the same event id) with every target's outcome and the digest, and a dead receiver is tried
/// three times and recorded without failing the deploy. A deploy that fails says so to both,
/// with the failed target's error. No payload and no output holds the app's secret or a
/// webhook URL's secret path.
#[test]
fn notifications_announce_a_deployment_and_a_dead_receiver_never_fails_it() {
    let chat = Receiver::start(500);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fleet = Fleet::new(Spec {
        env: "d-notify",
        port: 18190,
        hosts: &[1, 2],
        extra: "\n[notify.chat]\nurl = { env = \"CHAT_URL\" }\nformat = \"slack\"\n\n\
                [notify.bus]\nurl = { env = \"BUS_URL\" }\nformat = \"cloudevents\"\non = [\"succeeded\", \"failed\"]\n\n\
                [notify.dead]\nurl = { env = \"DEAD_URL\" }\nformat = \"teams\"\non = [\"succeeded\"]\n",
        ..Spec::default()
    });
    let events = fleet
        .deploy("1.0", &[])
        .env("CHAT_URL", &format!("{}/chat/s3cretChat", chat.base))
        .env("BUS_URL", &format!("{}/bus/s3cretBus", chat.base))
        .env("DEAD_URL", &format!("http://127.0.0.1:{dead_port}/teams/s3cretDead"))
        .never_prints("s3cretChat")
        .never_prints("s3cretBus")
        .never_prints("s3cretDead")
        .run()
        .json_lines();
    let notified: Vec<(String, String, bool, u64)> = events
        .iter()
        .filter(|e| e["type"] == "notified")
        .map(|e| {
            (
                e["notifier"].as_str().unwrap().to_string(),
                e["moment"].as_str().unwrap().to_string(),
                e["delivered"].as_bool().unwrap(),
                e["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(notified.contains(&("chat".into(), "started".into(), true, 2)), "{notified:?}");
    assert!(notified.contains(&("chat".into(), "succeeded".into(), true, 1)), "{notified:?}");
    assert!(notified.contains(&("bus".into(), "succeeded".into(), true, 2)), "{notified:?}");
    assert!(notified.contains(&("dead".into(), "succeeded".into(), false, 3)), "{notified:?}");
    assert_eq!(notified.len(), 4, "{notified:?}");

    let slack = chat.bodies("/chat/s3cretChat");
    assert_eq!(slack.len(), 3, "started twice (a 500, then 200), succeeded once: {slack:?}");
    assert_eq!(slack[1]["text"], "Deploying web 1.0 to d-notify");
    assert_eq!(slack[2]["text"], "Deployed web 1.0 to d-notify");
    assert_eq!(slack[2]["blocks"][0]["type"], "section");
    let bus = chat.bodies("/bus/s3cretBus");
    assert_eq!(bus.len(), 2, "a 500, then 200: {bus:?}");
    assert_eq!(bus[0], bus[1], "the retry sends the same event (same id)");
    let event = &bus[1];
    assert_eq!(
        (event["specversion"].as_str(), event["type"].as_str()),
        (Some("1.0"), Some("dev.ferry.deploy.succeeded"))
    );
    assert_eq!(event["subject"], "web/d-notify");
    assert!(event["data"]["digest"].as_str().unwrap().starts_with("sha256:"), "{event}");
    let targets: Vec<(&str, &str)> = event["data"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(targets.len(), 2, "{event}");
    assert!(targets.contains(&("h1", "ok")) && targets.contains(&("h2", "ok")), "{event}");
    for (_, body) in chat.seen.lock().unwrap().iter() {
        assert!(!body.contains(TOKEN) && !body.contains("s3cret"), "{body}");
    }
    // On record: every delivery, the failed one with why, and no URL.
    let audit = std::fs::read_to_string(fleet.state().join("audit.jsonl")).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "notified")
        .collect();
    assert_eq!(records.len(), 4, "{audit}");
    let dead = records.iter().find(|r| r["detail"]["notifier"] == "dead").unwrap();
    assert_eq!(dead["detail"]["delivered"], false, "{dead}");
    assert!(dead["detail"]["error"].as_str().unwrap().to_lowercase().contains("connect"), "{dead}");
    assert!(!audit.contains("s3cret"), "{audit}");

    // A version that fails its gate: `failed`, with the target's error, to chat and bus.
    let out = fleet
        .deploy("bad", &[])
        .code(1)
        .env("CHAT_URL", &format!("{}/chat/s3cretChat", chat.base))
        .env("BUS_URL", &format!("{}/bus/s3cretBus", chat.base))
        .env("DEAD_URL", &format!("http://127.0.0.1:{dead_port}/teams/s3cretDead"))
        .never_prints("s3cretChat")
        .run();
    let events = json_lines(&out.stdout);
    assert!(
        events.iter().all(|e| e["type"] != "notified" || e["notifier"] != "dead"),
        "dead: succeeded only"
    );
    let slack = chat.bodies("/chat/s3cretChat");
    let failed = slack.last().unwrap();
    assert!(
        failed["text"].as_str().unwrap().starts_with("Deploy of web bad to d-notify failed on "),
        "{failed}"
    );
    assert!(failed["blocks"][0]["text"]["text"].as_str().unwrap().contains("• h"), "{failed}");
    let event = chat.bodies("/bus/s3cretBus").pop().unwrap();
    assert_eq!(event["type"], "dev.ferry.deploy.failed");
    let bad: Vec<&Value> =
        event["data"]["targets"].as_array().unwrap().iter().filter(|t| t["status"] != "ok").collect();
    assert!(
        !bad.is_empty() && bad.iter().all(|t| t["error"].is_string() || t["status"] == "skipped"),
        "{event}"
    );
}
