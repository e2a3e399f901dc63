//! `ferry remove` and `ferry status --env` against the lab: real sshd, dockerd per host, the
//! registry's `ferry/web` image (see tests/lab/lab.sh).
//!
//! Two environments share hosts h1 and h2 (as staging and prod share a small host), and two
//! apps run in them, so a removal that reached another environment's or another app's
//! container would show. Environments are named `r-…` and host ports are 18230–18239, so these
//! tests never meet another test's containers or locks. What a host runs is read with `docker`
//! inside the host's own namespaces, not through ferry.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::lab::{Lab, POSTGRES, json_lines, lab};
use crate::test::Test;

/// The template (`--stop-timeout 1`: busybox httpd as PID 1 ignores TERM).
const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }}
";

/// The apps' secret.
const TOKEN: &str = "tok-remove-5c2e81";

/// One test's inventory (environments `envs` on h1 and h2, apps `web` and `api` with a port
/// each per environment, the environments as lifecycle phases in order) and state folder.
struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
    envs: Vec<String>,
    /// `FERRY_STATE_URL`, for the shared store.
    state_url: Option<String>,
}

impl Fleet {
    /// `ports[i]` = (web's, api's) host port in `envs[i]`.
    fn new(envs: &[&str], ports: &[(u16, u16)]) -> Fleet {
        let lab = lab();
        let dir = tempfile::tempdir().unwrap();
        let ssh = lab.dir.join("ssh/client_key").display().to_string();
        let known = lab.dir.join("known_hosts").display().to_string();
        let mut text =
            format!("[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n");
        let phases: Vec<String> = envs.iter().map(|e| format!("\"{e}\"")).collect();
        text += &format!("\n[lifecycle]\nphases = [{}]\n", phases.join(", "));
        for n in [1, 2] {
            text += &format!("\n[targets.h{n}]\nhost = \"10.200.0.{}\"\n", 10 + n);
        }
        text += "\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n";
        for env in envs {
            text += &format!("\n[environments.{env}]\ntargets = [\"h1\", \"h2\"]\n");
        }
        for (i, app) in ["web", "api"].into_iter().enumerate() {
            text += &format!(
                "\n[apps.{app}]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
                 env = {{ APP = \"{app}\" }}\nsecrets = {{ TOKEN = {{ env = \"WEB_TOKEN\" }} }}\n\
                 health = {{ grace = \"1s\" }}\n"
            );
            for (env, pair) in envs.iter().zip(ports) {
                let port = if i == 0 { pair.0 } else { pair.1 };
                text += &format!("\n[apps.{app}.environments.{env}]\nvars = {{ port = {port} }}\n");
            }
        }
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/web.j2"), TEMPLATE).unwrap();
        let fleet =
            Fleet { lab, dir, envs: envs.iter().map(|e| (*e).to_string()).collect(), state_url: None };
        // A lab kept up between runs may hold this test's containers and locks: start clean.
        for n in [1, 2] {
            for env in &fleet.envs {
                fleet.on_host(
                    n,
                    &format!(
                        "docker ps -aq --filter label=ferry.environment={env} | xargs -r docker rm -f; rm -rf /root/.ferry/locks/{env}"
                    ),
                );
            }
        }
        fleet
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `ferry -i INVENTORY ARGS` with this fleet's state folder (or shared store) and secret.
    fn ferry(&self, args: &[&str]) -> Test {
        let inventory = self.dir.path().join("ferry.toml").display().to_string();
        let test = Test::bare()
            .args(["-i", &inventory])
            .args(args.iter().copied())
            .env("FERRY_STATE_DIR", &self.state().display().to_string())
            .env("WEB_TOKEN", TOKEN)
            .never_prints(TOKEN);
        match &self.state_url {
            Some(url) => test.env("FERRY_STATE_URL", url).never_prints(&self.lab.pg_password()),
            None => test,
        }
    }

    /// `ferry deploy APP --env ENV --version V --yes --output json`, which must succeed.
    fn deploy(&self, app: &str, env: &str, version: &str) -> Vec<Value> {
        let out = self
            .ferry(&["deploy", app, "--env", env, "--version", version, "--yes", "--output", "json"])
            .stdout_json_lines()
            .run();
        json_lines(&out.stdout)
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

    /// The names and states of the containers labelled `app` in `env` on host `n`, sorted.
    fn containers(&self, n: usize, app: &str, env: &str) -> Vec<String> {
        let text = self.on_host(
            n,
            &format!(
                "docker ps -a --filter label=ferry.app={app} --filter label=ferry.environment={env} \
                 --format '{{{{.Names}}}} {{{{.State}}}}'"
            ),
        );
        let mut names: Vec<String> = text.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// The id of the container `name` on host `n` ("" when there is none).
    fn id(&self, n: usize, name: &str) -> String {
        self.on_host(n, &format!("docker inspect -f '{{{{.Id}}}}' {name} 2>/dev/null")).trim().to_string()
    }

    /// The records of the files store.
    fn audit(&self) -> Vec<Value> {
        json_lines(&std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default())
    }
}

/// Each `target_finished` event's target and status, in target order.
fn finished(events: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "target_finished")
        .map(|e| (e["target"].as_str().unwrap().to_string(), e["status"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

fn ok_on_both() -> Vec<(String, String)> {
    vec![("h1".into(), "ok".into()), ("h2".into(), "ok".into())]
}

#[test]
fn remove_takes_the_app_out_of_one_environment_only_and_status_stops_expecting_it() {
    let fleet = Fleet::new(&["r-a", "r-b"], &[(18230, 18231), (18232, 18233)]);
    fleet.deploy("web", "r-a", "1.0");
    fleet.deploy("web", "r-b", "1.0");
    fleet.deploy("api", "r-a", "1.0");
    let untouched = |n: usize| (fleet.id(n, "web-r-b"), fleet.id(n, "api-r-a"));
    let before = [untouched(1), untouched(2)];
    assert!(before.iter().all(|(a, b)| !a.is_empty() && !b.is_empty()), "{before:?}");
    // An old container a deployment kept (stopped, renamed), as a crashed runner leaves one.
    fleet.on_host(
        1,
        "docker run -d --name web-r-a-ferry-old-1 --label ferry.app=web --label ferry.environment=r-a \
         10.200.0.1:5000/ferry/web:1.0 httpd -f -p 81 -h /www > /dev/null && docker stop -t 1 web-r-a-ferry-old-1 > /dev/null",
    );
    assert_eq!(fleet.containers(1, "web", "r-a"), ["web-r-a running", "web-r-a-ferry-old-1 exited"]);

    let out = fleet
        .ferry(&["remove", "web", "--env", "r-a", "--yes", "--output", "json"])
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    assert_eq!(finished(&events), ok_on_both(), "{}", out.stdout);
    let steps: Vec<&str> =
        events.iter().filter(|e| e["type"] == "target_step").filter_map(|e| e["step"].as_str()).collect();
    assert!(
        steps.contains(&"removed web-r-a, web-r-a-ferry-old-1")
            || steps.contains(&"removed web-r-a-ferry-old-1, web-r-a"),
        "{steps:?}"
    );
    assert!(steps.contains(&"removed web-r-a"), "{steps:?}");
    for n in [1, 2] {
        assert_eq!(fleet.containers(n, "web", "r-a"), Vec::<String>::new(), "h{n}: web is gone from r-a");
        assert_eq!(fleet.containers(n, "web", "r-b"), ["web-r-b running"], "h{n}: r-b's web is untouched");
        assert_eq!(fleet.containers(n, "api", "r-a"), ["api-r-a running"], "h{n}: r-a's api is untouched");
        assert_eq!(untouched(n), before[n - 1], "h{n}: the same containers, never restarted");
        // Other tests write to the hosts' mirror logs at the same time: the removal's own line.
        let mirror =
            fleet.on_host(n, "grep 'ferry remove web from r-a by ' /root/.ferry/audit.log | tail -n 1");
        assert!(
            mirror.contains("ferry remove web from r-a by ") && mirror.contains("-> removed "),
            "h{n}: {mirror}"
        );
    }

    // The removal is on record: the run, each target's outcome, what was removed where.
    let records = fleet.audit();
    let run: Vec<&Value> = records.iter().filter(|r| r["command"] == "remove").collect();
    let kinds: Vec<&str> = run.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["run_started", "lock_acquired", "target_outcome", "target_outcome", "run_finished", "lock_released"],
        "{run:?}"
    );
    let finish = run.iter().find(|r| r["kind"] == "run_finished").unwrap();
    assert_eq!((finish["app"].as_str(), finish["environment"].as_str()), (Some("web"), Some("r-a")));
    let removal = &finish["detail"]["removal"];
    assert_eq!(removal["complete"], true, "{finish}");
    assert_eq!(removal["targets"]["h2"]["containers"], serde_json::json!(["web-r-a"]), "{finish}");
    let mut on_h1: Vec<&str> =
        removal["targets"]["h1"]["containers"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    on_h1.sort_unstable();
    assert_eq!(on_h1, ["web-r-a", "web-r-a-ferry-old-1"]);
    fleet.ferry(&["audit", "verify"]).stdout_contains(", chain intact\n").run();
    fleet
        .ferry(&["history", "web", "--env", "r-a"])
        .stdout_contains(
            " remove   web  r-a  -        -             2        ok       2 ok, 0 failed, 0 skipped\n",
        )
        .run();

    // status: the removed environment is clean (exit 0), and says why it is empty.
    let human = fleet
        .ferry(&["status", "web", "--env", "r-a"])
        .stdout_contains("web in r-a: not deployed (removed ")
        .stdout_contains(
            "\n\nTARGET  CONTAINER  VERSION  DIGEST  CONFIG  HEALTH  UPTIME  DRIFT\n\
             h1      -          -        -       -       -       -       ok\n\
             h2      -          -        -       -       -       -       ok\n",
        )
        .run();
    assert!(human.stdout.contains(" by root@"), "{}", human.stdout);
    let report =
        fleet.ferry(&["status", "web", "--env", "r-a", "--output", "json"]).stdout_json().run().json();
    assert_eq!(report["drift"], false, "{report}");
    assert_eq!(report["removed"]["id"], finish["run"], "{report}");
    assert_eq!(report["removed"]["targets"], serde_json::json!(["h1", "h2"]));
    // The other environment and the other app are clean too.
    fleet.ferry(&["status", "web", "--env", "r-b", "--output", "plain"]).stdout_contains("h1\t1.0\t").run();
    let all = fleet.ferry(&["status", "--env", "r-a", "--output", "json"]).stdout_json().run().json();
    assert_eq!(all["drift"], false, "{all}");
    let apps: Vec<&str> = all["apps"].as_array().unwrap().iter().filter_map(|a| a["app"].as_str()).collect();
    assert_eq!(apps, ["web", "api"]);
    assert!(all["apps"][0]["removed"].is_object() && all["apps"][1]["removed"].is_null(), "{all}");
    assert_eq!(all["apps"][1]["targets"][0]["version"], "1.0");

    // A container of the removed app that comes back is drift.
    fleet.on_host(
        2,
        "docker run -d --name web-r-a --label ferry.app=web --label ferry.environment=r-a \
         10.200.0.1:5000/ferry/web:1.0 httpd -f -p 81 -h /www > /dev/null",
    );
    fleet
        .ferry(&["status", "web", "--env", "r-a", "--output", "plain"])
        .code(1)
        .stdout_contains("h1\t-\t-\t-\tok\n")
        .stdout_contains(", yet containers of the app remain: web-r-a\n")
        .run();
    fleet.on_host(2, "docker rm -f web-r-a > /dev/null");

    // Promote takes what runs in the earlier phase: nothing does now.
    fleet
        .ferry(&["promote", "web", "--to", "r-b", "--yes"])
        .code(4)
        .stderr_contains("error: cannot promote web to r-b: web was removed from r-a ")
        .stderr_contains("  = help: deploy it to r-a again first, or deploy a version to r-b with `ferry deploy web --env r-b --version TAG`\n")
        .run();

    // Rollback after a removal redeploys the last successful deployment (1.0).
    let back = fleet
        .ferry(&["rollback", "web", "--env", "r-a", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("rollback: web was removed from r-a ")
        .run();
    assert_eq!(finished(&json_lines(&back.stdout)), ok_on_both(), "{}", back.stdout);
    for n in [1, 2] {
        assert_eq!(fleet.containers(n, "web", "r-a"), ["web-r-a running"]);
    }
    fleet.ferry(&["status", "web", "--env", "r-a", "--output", "plain"]).stdout_contains("h2\t1.0\t").run();

    // And after another removal, a deploy works as on a fresh environment.
    fleet
        .ferry(&["remove", "web", "--env", "r-a", "--yes", "--output", "plain"])
        .stdout_contains("remove web from r-a\n")
        .run();
    let events = fleet.deploy("web", "r-a", "2.0");
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "target_finished")
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["created", "created"]);
    let status = fleet
        .ferry(&["status", "web", "--env", "r-a"])
        .stdout_contains("web in r-a: last successful deployment ")
        .run();
    assert!(status.stdout.contains(" (2.0 sha256:"), "{}", status.stdout);
    assert_eq!(untouched(1), before[0], "r-b's web and r-a's api never changed");
}

#[test]
fn status_of_a_whole_environment_shows_every_app_on_every_target() {
    let fleet = Fleet::new(&["r-s"], &[(18234, 18235)]);
    // Before any deployment: every app is listed, nothing is expected, nothing drifts.
    fleet
        .ferry(&["status", "--env", "r-s", "--output", "plain"])
        .stdout("web\th1\t-\t-\t-\tok\nweb\th2\t-\t-\t-\tok\napi\th1\t-\t-\t-\tok\napi\th2\t-\t-\t-\tok\n")
        .run();
    fleet.deploy("web", "r-s", "1.0");
    fleet.deploy("api", "r-s", "2.0");
    let human = fleet
        .ferry(&["status", "--env", "r-s"])
        .stdout_contains("web in r-s: last successful deployment ")
        .stdout_contains("\napi in r-s: last successful deployment ")
        .stdout_contains(
            "\n\nAPP  TARGET  CONTAINER     VERSION  DIGEST        CONFIG        HEALTH   UPTIME  DRIFT\n",
        )
        .run();
    let rows: Vec<&str> = human.stdout.lines().skip_while(|l| !l.starts_with("APP ")).skip(1).collect();
    assert_eq!(rows.len(), 4, "one row per app and target: {}", human.stdout);
    for (row, (app, target, version)) in rows.iter().zip([
        ("web", "h1", "1.0"),
        ("web", "h2", "1.0"),
        ("api", "h1", "2.0"),
        ("api", "h2", "2.0"),
    ]) {
        assert!(row.starts_with(&format!("{app}  {target}      ")), "{row}");
        assert!(row.contains(&format!(" {version}  ")) && row.ends_with("  ok"), "{row}");
    }
    // One app drifts on one target: exit 1, and only that row says so.
    fleet.on_host(2, "docker stop -t 1 api-r-s > /dev/null");
    let plain = fleet
        .ferry(&["status", "--env", "r-s", "--output", "plain"])
        .code(1)
        .stdout_contains("web\th1\t1.0\tsha256:")
        .stdout_contains("\texited\tcontainer api-r-s is exited\n")
        .run();
    let lines: Vec<&str> = plain.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", plain.stdout);
    assert!(
        lines[0].starts_with("web\th1\t1.0\tsha256:") && lines[0].ends_with("\trunning\tok"),
        "{}",
        plain.stdout
    );
    assert!(lines[1].starts_with("web\th2\t1.0\t") && lines[1].ends_with("\tok"), "{}", plain.stdout);
    assert!(lines[2].starts_with("api\th1\t2.0\t") && lines[2].ends_with("\tok"), "{}", plain.stdout);
    assert!(
        lines[3].starts_with("api\th2\t2.0\t") && lines[3].ends_with("\texited\tcontainer api-r-s is exited"),
        "{}",
        plain.stdout
    );
    let json =
        fleet.ferry(&["status", "--env", "r-s", "--output", "json"]).code(1).stdout_json().run().json();
    assert_eq!(
        (json["schema"].as_u64(), json["environment"].as_str(), json["drift"].as_bool()),
        (Some(1), Some("r-s"), Some(true))
    );
    assert_eq!(
        (json["apps"][0]["app"].as_str(), json["apps"][0]["drift"].as_bool()),
        (Some("web"), Some(false))
    );
    assert_eq!(
        (json["apps"][1]["app"].as_str(), json["apps"][1]["drift"].as_bool()),
        (Some("api"), Some(true))
    );
    assert_eq!(json["apps"][1]["targets"][1]["drift"], serde_json::json!(["container api-r-s is exited"]));
    assert!(json["apps"][0]["deployment"]["id"].is_string(), "{json}");
    // One app's status is what it was: web has no drift.
    fleet.ferry(&["status", "web", "--env", "r-s", "--output", "plain"]).stdout_contains("h2\t1.0\t").run();
    // --limit narrows every app's rows.
    let limited = fleet
        .ferry(&["status", "--env", "r-s", "--limit", "h1", "--output", "plain"])
        .stdout_contains("web\th1\t1.0\t")
        .stdout_contains("api\th1\t2.0\t")
        .run();
    assert_eq!(limited.stdout.lines().count(), 2, "{}", limited.stdout);
}

#[test]
fn remove_with_the_shared_store_is_read_back_by_status_and_rollback() {
    let _held = POSTGRES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut fleet = Fleet::new(&["r-p"], &[(18236, 18237)]);
    let db = "r_remove_pg";
    fleet.state_url = Some(fleet.lab.postgres_db(db));
    fleet.ferry(&["state", "init"]).stdout_contains("schema").run();
    fleet.deploy("web", "r-p", "1.0");
    fleet.deploy("api", "r-p", "1.0");
    fleet.ferry(&["remove", "web", "--env", "r-p", "--yes", "--output", "json"]).stdout_json_lines().run();
    for n in [1, 2] {
        assert_eq!(fleet.containers(n, "web", "r-p"), Vec::<String>::new());
        assert_eq!(fleet.containers(n, "api", "r-p"), ["api-r-p running"]);
    }
    assert!(!fleet.state().join("audit.jsonl").exists(), "the records are in the database, not the files");
    let line =
        fleet.lab.psql(db, "select line from ferry_audit where command = 'remove' and kind = 'run_finished'");
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["detail"]["removal"]["complete"], true, "{record}");
    fleet
        .ferry(&["status", "web", "--env", "r-p"])
        .stdout_contains("web in r-p: not deployed (removed ")
        .run();
    fleet
        .ferry(&["status", "--env", "r-p", "--output", "plain"])
        .stdout_contains("web\th1\t-\t-\t-\tok\nweb\th2\t-\t-\t-\tok\napi\th1\t1.0\t")
        .run();
    fleet
        .ferry(&["rollback", "web", "--env", "r-p", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("rollback: web was removed from r-p ")
        .run();
    for n in [1, 2] {
        assert_eq!(fleet.containers(n, "web", "r-p"), ["web-r-p running"]);
    }
    fleet.ferry(&["status", "web", "--env", "r-p", "--output", "plain"]).stdout_contains("h1\t1.0\t").run();
    fleet.ferry(&["audit", "verify"]).stdout_contains(", chain intact\n").run();
}

/// A process the test started, killed and reaped when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn remove_with_limit_leaves_the_release_promotable_and_minds_replace_steps() {
    // Environments `rv-…`, host ports 18250–18253 (this review's own).
    let fleet = Fleet::new(&["rv-a", "rv-b"], &[(18250, 18251), (18252, 18253)]);
    let steps = "/root/.ferry/replace/web-rv-a-review-busy /root/.ferry/replace/web-rv-a-review-done";
    for n in [1, 2] {
        fleet.on_host(n, &format!("rm -rf {steps}"));
    }
    fleet.deploy("web", "rv-a", "1.0");
    // h2: the unread outcome of a replace step whose runner died (a deployment reports these).
    fleet.on_host(
        2,
        "d=/root/.ferry/replace/web-rv-a-review-done; mkdir -p $d && \
         printf 'app=web\\nenvironment=rv-a\\ndeployment=d-gone\\nversion=0.9\\n' > $d/meta && \
         echo 'done abandoned-restored' > $d/status",
    );
    // h1: a replace step still running (its runner died seconds ago: no lock holds it off). Its
    // process is this test's child (the hosts share the machine's PID namespace).
    let busy = Killed(Command::new("sleep").arg("120").spawn().unwrap());
    fleet.on_host(
        1,
        &format!(
            "d=/root/.ferry/replace/web-rv-a-review-busy; mkdir -p $d && \
             printf 'app=web\\nenvironment=rv-a\\ndeployment=d-busy\\nversion=0.8\\n' > $d/meta && \
             : > $d/status && echo {} > $d/pid",
            busy.0.id()
        ),
    );

    // Off h2 only: the outcome found there is told, not silently cleared.
    let out = fleet
        .ferry(&["remove", "web", "--env", "rv-a", "--limit", "h2", "--yes", "--output", "json"])
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    assert_eq!(finished(&events), [("h2".to_string(), "ok".to_string())], "{}", out.stdout);
    let told: Vec<&str> =
        events.iter().filter(|e| e["type"] == "target_step").filter_map(|e| e["step"].as_str()).collect();
    assert!(
        told.contains(
            &"an earlier replace step here (deployment d-gone, 0.9) ended with nobody to read it: \
              nobody collected the result: the script restored the old container by itself"
        ),
        "{told:?}"
    );
    assert_eq!(fleet.containers(2, "web", "rv-a"), Vec::<String>::new());
    assert_eq!(fleet.containers(1, "web", "rv-a"), ["web-rv-a running"]);
    fleet
        .ferry(&["status", "web", "--env", "rv-a", "--output", "plain"])
        .stdout_contains("h1\t1.0\t")
        .stdout_contains("h2\t-\t-\t-\tok\n")
        .run();

    // The release still runs on h1: promote takes it on.
    fleet
        .ferry(&["promote", "web", "--to", "rv-b", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("promote: web 1.0 (")
        .run();
    for n in [1, 2] {
        assert_eq!(fleet.containers(n, "web", "rv-b"), ["web-rv-b running"]);
    }

    // On h1 a replace step still runs, which would start a container after the removal:
    // nothing is removed there and the target fails (exit 1).
    let out = fleet
        .ferry(&["remove", "web", "--env", "rv-a", "--yes", "--output", "json"])
        .code(1)
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    assert_eq!(
        finished(&events),
        [("h1".to_string(), "failed".to_string()), ("h2".to_string(), "ok".to_string())],
        "{}",
        out.stdout
    );
    let h1 = events.iter().find(|e| e["type"] == "target_finished" && e["target"] == "h1").unwrap();
    assert!(
        h1["error"].as_str().unwrap().contains(
            "a replace step of deployment d-busy is still running here; nothing was removed: \
             run the removal again once it ended"
        ),
        "{h1}"
    );
    assert_eq!(fleet.containers(1, "web", "rv-a"), ["web-rv-a running"]);

    // Once it ended, the removal goes through; now nothing of the release is left in rv-a.
    drop(busy);
    fleet
        .ferry(&["remove", "web", "--env", "rv-a", "--yes", "--output", "plain"])
        .stdout_contains("remove web from rv-a\n")
        .run();
    assert_eq!(fleet.containers(1, "web", "rv-a"), Vec::<String>::new());
    fleet
        .ferry(&["promote", "web", "--to", "rv-b", "--yes"])
        .code(4)
        .stderr_contains("error: cannot promote web to rv-b: web was removed from rv-a ")
        .run();
    for n in [1, 2] {
        fleet.on_host(n, &format!("rm -rf {steps}"));
    }
}
