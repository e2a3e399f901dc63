//! `ferry deploy --archive` against the lab: images made on the runner, streamed over each
//! target's SSH connection into its real dockerd, no registry on the way.
//!
//! Each run pushes images of its own to the lab registry as `p5/app:<unique>` (the lab's busybox
//! rootfs with a label naming the run, so their ids are on no host yet), and makes the archives
//! from them with skopeo, as a user would from any registry. Environment `p5-arc` on h1–h3;
//! these tests publish no ports (the app sleeps), so they meet no other test's containers.

use std::process::Command;

use serde_json::Value;

use crate::lab::{Lab, json_lines, lab};
use crate::test::Test;

/// The app's template: busybox's `sleep` ignores TERM as PID 1, hence the short stop timeout.
const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1 {{ image }} sleep 86400\n";

const ENV: &str = "p5-arc";

/// The OCI test's environment (its own lock: the tests run in parallel).
const OCI_ENV: &str = "p5-oci";

struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// The inventory, with environment `env`'s containers and locks cleared on h1–h3.
    fn new(env: &str) -> Fleet {
        let lab = lab();
        let dir = tempfile::tempdir().unwrap();
        let key = lab.dir.join("ssh/client_key").display().to_string();
        let known = lab.dir.join("known_hosts").display().to_string();
        let mut text =
            format!("[defaults]\nuser = \"root\"\nidentity = \"{key}\"\nknown_hosts = \"{known}\"\n");
        for n in 1..=3 {
            text += &format!("\n[targets.h{n}]\nhost = \"10.200.0.{}\"\n", 10 + n);
        }
        text += &format!("\n[environments.{ENV}]\ntargets = [\"h1\", \"h2\", \"h3\"]\n");
        text += &format!("\n[environments.{OCI_ENV}]\ntargets = [\"h1\"]\n");
        text += "\n[apps.p5-app]\nimage = \"p5/app\"\ntemplate = \"app.j2\"\nhealth = { grace = \"1s\" }\n";
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/app.j2"), TEMPLATE).unwrap();
        let fleet = Fleet { lab, dir };
        for n in 1..=3 {
            fleet.on_host(
                n,
                &format!(
                    "docker ps -aq --filter label=ferry.environment={env} | xargs -r docker rm -f; rm -rf /root/.ferry/locks/{env}"
                ),
            );
        }
        fleet
    }

    fn ferry(&self, args: &[&str]) -> Test {
        let inventory = self.dir.path().join("ferry.toml").display().to_string();
        Test::bare()
            .args(["-i", &inventory])
            .args(args.iter().copied())
            .env("FERRY_STATE_DIR", &self.dir.path().join("state").display().to_string())
    }

    /// Runs a command inside host `n`'s network and mount namespaces (its dockerd).
    fn on_host(&self, n: usize, script: &str) -> String {
        let holder = std::fs::read_to_string(self.lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
        let out = Command::new("nsenter")
            .args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The image id, `ferry.digest` and `ferry.version` of the app's running container in
    /// `p5-arc` on host `n` ("" if none).
    fn running(&self, n: usize) -> String {
        self.running_in(n, ENV)
    }

    /// [`Fleet::running`] in `env`.
    fn running_in(&self, n: usize, env: &str) -> String {
        self.on_host(
            n,
            &format!(
                "docker ps --filter label=ferry.app=p5-app --filter label=ferry.environment={env} \
                 --format '{{{{.ID}}}}' | xargs -r docker inspect -f '{{{{.Image}}}} {{{{index .Config.Labels \"ferry.digest\"}}}} {{{{index .Config.Labels \"ferry.version\"}}}}'"
            ),
        )
        .trim()
        .to_string()
    }

    /// Pushes a fresh image (a label names `name`, so its id is new) to the lab registry and
    /// makes `FILE` from it with skopeo as `transport` (`docker-archive` or `oci-archive`),
    /// named `reference`. Returns the archive's path and the image id.
    fn archive(&self, name: &str, transport: &str, reference: &str) -> (String, String) {
        let unique = format!("{name}-{}-{}", std::process::id(), nanos());
        let config = format!(r#"{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"Labels":{{"p5.run":"{unique}"}}}}"#);
        let push = crate::test::repo().join("tests/lab/push-image.sh");
        let rootfs = self.lab.dir.join("rootfs.tar");
        run_ok(
            Command::new(push)
                .env("CONFIG", &config)
                .args(["10.200.0.1:5000", "p5/app", &unique])
                .arg(&rootfs),
        );
        let file = self.dir.path().join(format!("{name}.tar"));
        let _ = std::fs::remove_file(&file);
        run_ok(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://10.200.0.1:5000/p5/app:{unique}"),
            &format!("{transport}:{}:{reference}", file.display()),
        ]));
        // The id the registry's manifest names: what docker will call the image.
        let manifest = Command::new("curl")
            .args([
                "-fsS",
                "-H",
                "Accept: application/vnd.docker.distribution.manifest.v2+json",
                &format!("http://10.200.0.1:5000/v2/p5/app/manifests/{unique}"),
            ])
            .output()
            .unwrap();
        let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
        (file.display().to_string(), manifest["config"]["digest"].as_str().unwrap().to_string())
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `target_step` text of a JSON run, by target.
fn steps(events: &[Value], target: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "target_step" && e["target"] == target)
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect()
}

fn deploy_json(fleet: &Fleet, args: &[&str], code: i32) -> Vec<Value> {
    let mut all = vec!["deploy", "p5-app", "--env", ENV, "--yes", "--output", "json"];
    all.extend_from_slice(args);
    json_lines(&fleet.ferry(&all).code(code).stdout_json_lines().run().stdout)
}

#[test]
fn an_archive_reaches_three_hosts_once_and_its_deployments_roll_back() {
    let fleet = Fleet::new(ENV);
    let (first, first_id) = fleet.archive("a", "docker-archive", "p5/app:1.0");
    let size = std::fs::metadata(&first).unwrap().len();

    // Three hosts without the image: each is sent the whole file, and runs the image id.
    let events = deploy_json(&fleet, &["--archive", &first], 0);
    for (n, target) in ["h1", "h2", "h3"].iter().enumerate() {
        let steps = steps(&events, target);
        assert!(steps.contains(&format!("loaded {first_id}: {size} bytes sent")), "{target}: {steps:?}");
        assert_eq!(fleet.running(n + 1), format!("{first_id} {first_id} 1.0"), "{target}");
    }
    let finished = events.iter().find(|e| e["type"] == "run_finished").unwrap();
    assert_eq!(finished["ok"], 3, "{finished}");

    // Again: every host has the id, nothing is sent.
    let events = deploy_json(&fleet, &["--archive", &first], 0);
    for target in ["h1", "h2", "h3"] {
        let steps = steps(&events, target);
        assert!(steps.contains(&format!("{first_id} is here already: nothing sent (0 bytes)")), "{steps:?}");
        assert!(!steps.iter().any(|s| s.starts_with("sending")), "{target}: {steps:?}");
    }

    // The record says where the image came from; status reads it like any deployment.
    let state = fleet.dir.path().join("state");
    let records = Command::new("grep").args(["-rl", "\"source\":\"archive\""]).arg(&state).output().unwrap();
    assert!(!records.stdout.is_empty(), "no record with source archive under {}", state.display());
    fleet
        .ferry(&["status", "p5-app", "--env", ENV, "--output", "plain"])
        .stdout_contains(&format!("h1\t1.0\t{first_id}\t"))
        .run();

    // A second archive (its tag gives the version), then a rollback to the first: it is still
    // on every host (retention keeps what the records keep), so nothing is sent.
    let (second, second_id) = fleet.archive("b", "docker-archive", "p5/app:2.0");
    deploy_json(&fleet, &["--archive", &second], 0);
    assert_eq!(fleet.running(2), format!("{second_id} {second_id} 2.0"));
    let out = fleet
        .ferry(&["rollback", "p5-app", "--env", ENV, "--yes", "--output", "json"])
        .stderr_contains("rollback: p5-app in p5-arc returns to deployment ")
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    assert!(steps(&events, "h1").contains(&format!("{first_id} is here already: nothing sent (0 bytes)")));
    for n in 1..=3 {
        assert_eq!(fleet.running(n), format!("{first_id} {first_id} 1.0"), "h{n}");
    }

    // The second image gone from h1: rolling back to it cannot pull it from anywhere.
    fleet.on_host(1, &format!("docker rmi -f {second_id}"));
    let out = fleet
        .ferry(&["rollback", "p5-app", "--env", ENV, "--yes", "--output", "json"])
        .stderr_contains("rollback: p5-app in p5-arc returns to deployment ")
        .code(1)
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    let h1 = events.iter().find(|e| e["type"] == "target_finished" && e["target"] == "h1").unwrap();
    assert_eq!(
        h1["error"],
        format!(
            "load {second_id}: docker image inspect: image {second_id} is not on this target any more, and no \
             registry has it (it came from an archive): re-deploy it with --archive"
        ),
        "{h1}"
    );
    assert_eq!(fleet.running(1), format!("{first_id} {first_id} 1.0"), "h1 untouched");
}

#[test]
fn an_oci_archive_on_docker_20_fails_naming_dockers_error_and_the_conversion() {
    let fleet = Fleet::new(OCI_ENV);
    let (file, _) = fleet.archive("oci", "oci-archive", "3.0");
    let out = fleet
        .ferry(&["deploy", "p5-app", "--env", OCI_ENV, "--archive", &file, "--yes", "--output", "json"])
        .code(1)
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    let h1 = events.iter().find(|e| e["type"] == "target_finished" && e["target"] == "h1").unwrap();
    let error = h1["error"].as_str().unwrap();
    assert!(error.contains("docker load: "), "{error}");
    assert!(
        error.contains(&format!("convert it with `skopeo copy oci-archive:{file} docker-archive:")),
        "{error}"
    );
    assert_eq!(fleet.running_in(1, OCI_ENV), "", "nothing runs");
}
