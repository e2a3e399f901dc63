//! Deploys behind the proxy (issue 15, acceptance items 1-3, plus rollback and promote): the
//! new container starts beside the old one, is gated through the `ferry` network, and only then
//! does the route switch; a probe from the lab's host side (20 requests a second to the target's
//! :80 with the app's `Host`) sees no failed request and the answers switch exactly once.
//!
//! Everything here runs on h5 (10.200.0.15), environments `pxd-*`, each with its own host name
//! `ENV.pxd.test`: the tests run concurrently on one proxy, and none of them reboots or stops it.
//! A child of `deploy`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::finished;
use crate::lab::{Lab, json_lines, lab};
use crate::probe::Probe;
use crate::test::Test;

/// Held by each test here for its whole run: the link-cut test drops h5's SSH traffic, which
/// would fail any other test's deploy to h5 meanwhile.
pub(super) static H5: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lab host of these tests.
const HOST: usize = 5;
const IP: &str = "10.200.0.15";

/// A template that publishes nothing: the proxy reaches the container.
const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1\n  {{ image }}\n";

/// One test's inventory (environments on h5, the app `web` behind the proxy) and state folder.
pub(super) struct Px {
    lab: Lab,
    dir: tempfile::TempDir,
    envs: Vec<String>,
    /// [`H5`], held while the test runs.
    _h5: std::sync::MutexGuard<'static, ()>,
}

impl Px {
    /// `envs` on h5 (a lifecycle over them when there are two), each routing `ENV.pxd.test`;
    /// `extra` goes into `[apps.web]`.
    pub(super) fn new(envs: &[&str], extra: &str) -> Px {
        let guard = H5.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lab = lab();
        let dir = tempfile::tempdir().unwrap();
        let ssh = lab.dir.join("ssh/client_key").display().to_string();
        let known = lab.dir.join("known_hosts").display().to_string();
        let mut text = format!(
            "[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n\n\
             [targets.h{HOST}]\nhost = \"{IP}\"\n\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n\n\
             [proxy]\nimage = \"10.200.0.1:5000/ferry/caddy:2.6.2\"\ndrain = \"5s\"\n"
        );
        if envs.len() > 1 {
            let phases: Vec<String> = envs.iter().map(|e| format!("\"{e}\"")).collect();
            text += &format!("\n[lifecycle]\nphases = [{}]\n", phases.join(", "));
        }
        for env in envs {
            text += &format!("\n[environments.{env}]\ntargets = [\"h{HOST}\"]\n");
        }
        text += &format!(
            "\n[apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
             health = {{ timeout = \"8s\", interval = \"500ms\" }}\n\
             proxy = {{ host = \"{}.pxd.test\", port = 80, health = \"/up\" }}\n{extra}\n",
            envs[0]
        );
        for env in &envs[1..] {
            text += &format!("\n[apps.web.environments.{env}]\nproxy = {{ host = \"{env}.pxd.test\" }}\n");
        }
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/web.j2"), TEMPLATE).unwrap();
        let px = Px { lab, dir, envs: envs.iter().map(|e| e.to_string()).collect(), _h5: guard };
        // A lab kept up between runs may hold this test's containers, routes and locks.
        for env in &px.envs {
            px.on_host(&format!(
                "docker ps -aq --filter label=ferry.environment={env} | xargs -r docker rm -f; \
                 rm -rf /root/.ferry/locks/{env} /root/.ferry/replace/web-{env} /root/.ferry/proxy/routes/web@{env}.*"
            ));
        }
        px
    }

    fn inventory(&self) -> String {
        self.dir.path().join("ferry.toml").display().to_string()
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// `ferry -i INVENTORY ARGS` with this test's state folder.
    fn ferry(&self, args: &[&str]) -> Test {
        Test::bare()
            .args(["-i", &self.inventory()])
            .args(args.iter().copied())
            .env("FERRY_STATE_DIR", &self.state().display().to_string())
    }

    /// `ferry deploy web --env ENV --version V --yes --output json`.
    pub(super) fn deploy(&self, env: &str, version: &str) -> Test {
        self.ferry(&["deploy", "web", "--env", env, "--version", version, "--yes", "--output", "json"])
            .stdout_json_lines()
    }

    /// The same, started in the background.
    fn spawn(&self, env: &str, version: &str) -> std::process::Child {
        Command::new(crate::test::binary())
            .args(["-i", &self.inventory()])
            .args(["deploy", "web", "--env", env, "--version", version, "--yes", "--output", "json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FERRY_STATE_DIR", self.state())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs a command inside h5's namespaces (its dockerd, its /root); its stdout.
    pub(super) fn on_host(&self, script: &str) -> String {
        let holder = std::fs::read_to_string(self.lab.dir.join(format!("net/h{HOST}/holder.pid"))).unwrap();
        let out = Command::new("nsenter")
            .args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of the environment's containers on h5, sorted.
    pub(super) fn containers(&self, env: &str) -> Vec<String> {
        let text = self.on_host(&format!(
            "docker ps -a --filter label=ferry.environment={env} --format '{{{{.Names}}}}' | sort"
        ));
        text.lines().map(str::to_string).collect()
    }

    /// The `ferry.version` label of `web-ENV` on h5.
    pub(super) fn version(&self, env: &str) -> String {
        self.on_host(&format!("docker inspect -f '{{{{index .Config.Labels \"ferry.version\"}}}}' web-{env}"))
            .trim()
            .to_string()
    }

    /// A probe of `ENV.pxd.test` on h5's :80.
    fn probe(&self, env: &str) -> Probe {
        Probe::lab(IP, &format!("{env}.pxd.test"))
    }

    /// Waits until `GET /` through the proxy answers `body` (the first deploy booted it).
    pub(super) fn wait_for(&self, env: &str, body: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "3",
                    "-H",
                    &format!("Host: {env}.pxd.test"),
                    &format!("http://{IP}/"),
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == body {
                return;
            }
            assert!(Instant::now() < deadline, "{env}: the proxy never answered {body:?}: {out:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The step messages of `target` in a JSON run.
fn steps(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "target_step")
        .filter_map(|e| e["step"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_deploy_behind_the_proxy_switches_once_without_a_failed_request_and_so_do_rollback_and_promote() {
    let px = Px::new(&["pxd-a", "pxd-b"], "");
    px.deploy("pxd-a", "1.0").run();
    px.wait_for("pxd-a", "ferry web 1.0\n");
    assert_eq!(px.containers("pxd-a"), ["web-pxd-a"]);

    // (a) 1.0 → 1.1 under the probe.
    let probe = px.probe("pxd-a");
    std::thread::sleep(Duration::from_secs(1));
    let out = px.deploy("pxd-a", "1.1").run();
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["ferry web 1.0", "ferry web 1.1"], "{}", report.summary());
    assert_eq!(px.containers("pxd-a"), ["web-pxd-a"], "the old container is gone, NAME-next renamed");
    assert_eq!(px.version("pxd-a"), "1.1");
    let events = json_lines(&out.stdout);
    let h5 = finished(&events, "h5");
    assert_eq!((&h5["status"], &h5["action"]), (&"ok".into(), &"replaced".into()), "{h5}");
    let said = steps(&events);
    assert!(said.iter().any(|s| s.starts_with("switched the route to web-pxd-a-")), "{said:?}");
    // The route table on the target names the new container's alias.
    let meta = px.on_host("cat /root/.ferry/proxy/routes/web@pxd-a.meta");
    assert!(meta.contains("host=pxd-a.pxd.test\n") && meta.contains("container=web-pxd-a\n"), "{meta}");

    // Rollback goes the same way: back to 1.0, switched once.
    let probe = px.probe("pxd-a");
    std::thread::sleep(Duration::from_secs(1));
    px.ferry(&["rollback", "web", "--env", "pxd-a", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("rollback: web in pxd-a returns to deployment ")
        .run();
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["ferry web 1.1", "ferry web 1.0"], "{}", report.summary());
    assert_eq!(px.containers("pxd-a"), ["web-pxd-a"]);

    // Promote: pxd-b gets what runs in pxd-a (1.0), then 1.1 is promoted over it.
    px.ferry(&["promote", "web", "--to", "pxd-b", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("promote: web 1.0 (sha256:")
        .run();
    px.wait_for("pxd-b", "ferry web 1.0\n");
    px.deploy("pxd-a", "1.1").run();
    let probe = px.probe("pxd-b");
    std::thread::sleep(Duration::from_secs(1));
    px.ferry(&["promote", "web", "--to", "pxd-b", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("promote: web 1.1 (sha256:")
        .run();
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["ferry web 1.0", "ferry web 1.1"], "{}", report.summary());
    assert_eq!(px.containers("pxd-b"), ["web-pxd-b"]);
    // pxd-a's route was never touched by pxd-b's deploys.
    px.wait_for("pxd-a", "ferry web 1.1\n");
}

#[test]
fn a_version_that_never_gets_healthy_is_removed_and_the_old_one_answers_throughout() {
    let px = Px::new(&["pxd-sick"], "");
    px.deploy("pxd-sick", "1.0").run();
    px.wait_for("pxd-sick", "ferry web 1.0\n");
    let before = px.on_host("docker inspect -f '{{.Id}}' web-pxd-sick");
    // noup: httpd answers, its /up is a 404 (the gate through the network fails); sick: /up
    // answers, its HEALTHCHECK never passes.
    for (version, why) in [
        ("noup", "/up did not answer 2xx through the proxy network within 8s: "),
        ("sick", "unhealthy (image HEALTHCHECK)"),
    ] {
        let probe = px.probe("pxd-sick");
        std::thread::sleep(Duration::from_secs(1));
        let out = px.deploy("pxd-sick", version).code(1).run();
        std::thread::sleep(Duration::from_secs(1));
        let report = probe.stop();
        assert!(report.failures().is_empty(), "{version}: {}", report.summary());
        assert_eq!(report.sequence(), ["ferry web 1.0"], "{version}: {}", report.summary());
        let h5 = finished(&json_lines(&out.stdout), "h5");
        assert_eq!((&h5["status"], &h5["action"]), (&"failed".into(), &"restored".into()), "{h5}");
        assert!(h5["error"].as_str().unwrap().contains(why), "{version}: {h5}");
        assert_eq!(px.containers("pxd-sick"), ["web-pxd-sick"], "{version}: the new container is removed");
        assert_eq!(
            px.on_host("docker inspect -f '{{.Id}}' web-pxd-sick"),
            before,
            "the old one never changed"
        );
    }
}

#[test]
fn a_link_cut_before_the_switch_leaves_the_old_container_serving_and_status_and_deploy_clean_up() {
    // post_deploy sleeps: the link is cut while ferry runs it, after the gate, before the switch.
    let px = Px::new(&["pxd-cut"], "post_deploy = \"sleep 8\"");
    px.deploy("pxd-cut", "1.0").run();
    px.wait_for("pxd-cut", "ferry web 1.0\n");
    let probe = px.probe("pxd-cut");
    let child = px.spawn("pxd-cut", "1.1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while px.on_host("docker inspect -f '{{.State.Running}}' web-pxd-cut-next 2>/dev/null").trim() != "true" {
        assert!(Instant::now() < deadline, "web-pxd-cut-next never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3)); // gated; in post_deploy
    px.lab.ctl(&["drop", "5"]);
    let undrop = crate::lab::Restore(&px.lab, &["undrop", "5"]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(finished(&json_lines(&stdout), "h5")["status"], "error", "{stdout}");
    // Without a heartbeat, the step on the target removes the new container by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    while px.containers("pxd-cut") != ["web-pxd-cut"] {
        assert!(Instant::now() < deadline, "still: {:?}", px.containers("pxd-cut"));
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["ferry web 1.0"], "{}", report.summary());
    drop(undrop);
    // The lost run's lock stays on the target until it expires: clear it, as an operator would.
    px.on_host("rm -rf /root/.ferry/locks/pxd-cut");

    // status says what happened (and leaves it for the next deploy).
    px.ferry(&["status", "web", "--env", "pxd-cut"])
        .stdout_contains(
            "ended with nobody to read it: nobody collected the result: the script removed the new \
             container before the switch; the old one kept serving\n",
        )
        .run();

    // A NAME-next left behind by a step that was killed: status removes it and says so.
    px.on_host(
        "docker run -d --name web-pxd-cut-next --label ferry.app=web --label ferry.environment=pxd-cut \
         --label ferry.deployment=d-stray --label ferry.version=1.1 10.200.0.1:5000/ferry/web:1.1 > /dev/null",
    );
    px.ferry(&["status", "web", "--env", "pxd-cut"])
        .stdout_contains(
            "the replace step of deployment d-stray (1.1) ended with nobody to read it: its new container \
             web-pxd-cut-next was left behind before the switch (the step was stopped); removed it now\n",
        )
        .run();
    assert_eq!(px.containers("pxd-cut"), ["web-pxd-cut"]);

    // The next deploy reports the step's outcome, clears it, and removes a stray NAME-next too.
    px.on_host(
        "docker run -d --name web-pxd-cut-next --label ferry.app=web --label ferry.environment=pxd-cut \
         --label ferry.deployment=d-stray2 10.200.0.1:5000/ferry/web:1.1 > /dev/null",
    );
    let out = px.deploy("pxd-cut", "1.1").run();
    let said = steps(&json_lines(&out.stdout));
    assert!(
        said.iter().any(|s| s.contains("ended with nobody to read it: nobody collected the result")),
        "{said:?}"
    );
    assert!(said.iter().any(|s| s.starts_with("removed a stray web-pxd-cut-next")), "{said:?}");
    assert_eq!(px.containers("pxd-cut"), ["web-pxd-cut"]);
    assert_eq!(px.version("pxd-cut"), "1.1");
    px.wait_for("pxd-cut", "ferry web 1.1\n");
}

#[test]
fn slow_requests_in_flight_across_the_switch_complete_on_the_old_version() {
    // Item 3's drain: "or until in-flight requests end". A 3 s request started through the
    // proxy every ~300 ms for the whole deploy; the ones the old container holds at the switch
    // must end with its answer (not be cut by `docker stop`).
    let px = Px::new(&["pxd-drain"], "");
    px.deploy("pxd-drain", "1.0").run();
    px.wait_for("pxd-drain", "ferry web 1.0\n");
    let probe = Probe::start(
        format!("{IP}:80").parse().unwrap(),
        "pxd-drain.pxd.test",
        "/cgi-bin/slow",
        3,
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(4));
    let began = Instant::now();
    let out = px.deploy("pxd-drain", "1.1").run();
    let took = began.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["ferry web 1.0", "ferry web 1.1"], "{}", report.summary());
    let said = steps(&json_lines(&out.stdout));
    assert!(said.iter().any(|s| s.starts_with("drained after ")), "{said:?}");
    assert_eq!(px.containers("pxd-drain"), ["web-pxd-drain"]);
    eprintln!("deploy with slow requests in flight took {took:?}; steps {said:?}; {}", report.summary());
}

#[test]
fn a_no_op_deploy_repairs_a_route_that_is_missing_or_points_elsewhere() {
    // A deploy converges: the container is unchanged, but the proxy must route to it again.
    let px = Px::new(&["pxd-conv"], "");
    px.deploy("pxd-conv", "1.0").run();
    px.wait_for("pxd-conv", "ferry web 1.0\n");
    let reboot = || {
        px.ferry(&["proxy", "reboot", "--env", "pxd-conv", "--yes"])
            .stdout_contains("")
            .stderr_contains("")
            .run();
    };
    // Right after a reboot the new proxy may not listen yet (no answer: ` 000`); what the checks
    // below are about is the answer once it does.
    let answer = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let out = Command::new("curl")
                .args(["-sS", "-w", " %{http_code}", "--max-time", "3"])
                .args(["-H", "Host: pxd-conv.pxd.test", &format!("http://{IP}/")])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            if !said.ends_with(" 000") || std::time::Instant::now() > deadline {
                return said;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let no_op = |why: &str| {
        let out = px.deploy("pxd-conv", "1.0").run();
        let events = json_lines(&out.stdout);
        assert_eq!(finished(&events, "h5")["action"], "unchanged", "{events:?}");
        let said = steps(&events);
        assert!(said.iter().any(|s| s == &format!("repaired the proxy route ({why})")), "{said:?}");
        px.wait_for("pxd-conv", "ferry web 1.0\n");
    };

    // The route file removed and the proxy rebuilt from the table: no route for the host.
    px.on_host("rm -f /root/.ferry/proxy/routes/web@pxd-conv.*");
    reboot();
    // Caddy answers a host it has no route for with an empty 200.
    assert_eq!(answer(), " 200", "the route is gone");
    no_op("the route file was missing");

    // The route left pointing elsewhere (the proxy's own admin port, which only listens on its
    // loopback: refused at once, no name to look up).
    px.on_host(
        "cd /root/.ferry/proxy/routes && sed -i 's/^upstream=.*/upstream=ferry-proxy/' web@pxd-conv.meta \
         && sed -i 's/web-pxd-conv-[0-9a-f]*:80/ferry-proxy:2019/' web@pxd-conv.route.json",
    );
    reboot();
    let said = answer();
    assert!(said == " 502" || said == " 503", "the route points elsewhere: {said}");
    no_op("it pointed at ferry-proxy (web-pxd-conv)");

    // Right already: a no-op deploy says nothing about the route.
    let out = px.deploy("pxd-conv", "1.0").run();
    let said = steps(&json_lines(&out.stdout));
    assert!(!said.iter().any(|s| s.starts_with("repaired the proxy route")), "{said:?}");

    // Only the route changes: `plan --diff` says which part of it (the argv cannot show it).
    let inventory = std::fs::read_to_string(px.inventory()).unwrap();
    std::fs::write(px.inventory(), inventory.replace("health = \"/up\" }", "health = \"/\" }")).unwrap();
    px.ferry(&["plan", "web", "--env", "pxd-conv", "--version", "1.0", "--diff", "--output", "plain"])
        .stdout("h5\treplace\tproxy route health: /up → /\n")
        .stderr_contains("note: feed lab has 1.0 (sha256:")
        .run();
}

#[test]
fn the_drain_does_not_wait_on_idle_keep_alive_connections_to_the_old_container() {
    // ferry/web's busybox httpd closes every connection after its answer; most apps keep them
    // alive. The app here is Caddy's file server (the lab's proxy image): after a probe the proxy
    // holds idle keep-alive connections to it. The drain counts the proxy's connections to the
    // old container, so it must not take those for requests in flight and wait out `drain`.
    let px = Px::new(&["pxd-ka"], "");
    let inventory = std::fs::read_to_string(px.inventory()).unwrap()
        + "\n[apps.kc]\nfeed = \"lab\"\nimage = \"ferry/caddy\"\ntemplate = \"kc.j2\"\n\
           health = { timeout = \"8s\", interval = \"500ms\" }\n\
           proxy = { host = \"kc.pxd-ka.pxd.test\", port = 80, health = \"/up\" }\n";
    std::fs::write(px.inventory(), inventory).unwrap();
    std::fs::write(
        px.dir.path().join("templates/kc.j2"),
        "docker run --restart unless-stopped --stop-timeout 1\n  {{ image }}\n  \
         sh -c \"echo kc > /srv/up && echo kc > /srv/index.html && exec caddy file-server --listen :80 --root /srv\"\n",
    )
    .unwrap();
    let deploy = |force: bool| {
        let mut args =
            vec!["deploy", "kc", "--env", "pxd-ka", "--version", "2.6.2", "--yes", "--output", "json"];
        if force {
            args.push("--force");
        }
        px.ferry(&args).stdout_json_lines().run()
    };
    deploy(false);
    let probe = Probe::lab(IP, "kc.pxd-ka.pxd.test");
    std::thread::sleep(Duration::from_secs(2));
    let began = Instant::now();
    let out = deploy(true);
    let took = began.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(report.sequence(), ["kc"], "{}", report.summary());
    let said = steps(&json_lines(&out.stdout));
    eprintln!("keep-alive app: deploy --force took {took:?}; steps {said:?}");
    let drained = said.iter().find(|s| s.starts_with("drain")).cloned().unwrap_or_default();
    // Waiting on an idle connection would run the drain to its limit and say what stayed open;
    // how many whole seconds a drain that ended by itself took depends on the machine's load.
    assert!(
        drained.starts_with("drained after ") && !drained.contains("still open"),
        "the drain waited on idle connections: {drained:?} ({said:?})"
    );
}
