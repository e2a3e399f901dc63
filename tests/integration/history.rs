//! `ferry history` shows the bytes (issue 16, part 6): each deployment's digest (short in the
//! table, whole in JSON and as plain output's last column), `history --run ID` with one run's
//! targets, container ids and errors, and an actor's `via` that says `cron` only for runs cron
//! started.
//!
//! The deployment records are written here, sealed into a real chain with fixed times and ids,
//! so whole outputs can be expected byte for byte; `ferry run` on a local target records the
//! rest for real. Nothing connects anywhere: the inventory's other targets are on loopback.

use std::path::Path;
use std::process::{Command, Stdio};

use ferry::audit::{Actor, Entry};

use crate::test::{SECRET, Test, binary};

/// A digest, whole.
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The deployment's run id.
const DEPLOY: &str = "0193bbbb-0001-7000-8000-000000000001";
/// The `ferry run`'s run id (shares the prefix `0193bbbb` with [`DEPLOY`]).
const RUN: &str = "0193bbbb-0002-7000-8000-000000000002";
/// The containers' ids, whole.
const NEW_CONTAINER: &str = "c0ffee0000010123456789abcdef0123456789abcdef0123456789abcdef0123";
const OLD_CONTAINER: &str = "beef00000002456789abcdef0123456789abcdef0123456789abcdef01234567";

/// The test inventory with stg-1 on this machine (`transport = "local"`) and the prod targets
/// on loopback ports where nothing listens.
fn local() -> Test {
    Test::new()
        .replace(
            "ferry.toml",
            "[targets.stg-1]\nhost = \"10.0.0.11\"",
            "[targets.stg-1]\ntransport = \"local\"",
        )
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"127.0.0.1\"\nport = 1")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"127.0.0.2\"\nport = 1")
}

/// `ferry -i FOLDER/ferry.toml ARGS` with the test secret.
fn ferry(folder: &Path, args: &[&str]) -> Test {
    let inventory = folder.join("ferry.toml").display().to_string();
    Test::bare().env("WEB_DATABASE_URL", SECRET).args(["-i", &inventory]).args(args.iter().copied())
}

/// One record of the fixture log: its time and what it says.
fn record(time: &str, kind: &str, run: &str, targets: &[&str], detail: serde_json::Value) -> (String, Entry) {
    let deploy = run == DEPLOY;
    let entry = Entry {
        kind: kind.into(),
        run: run.into(),
        command: if deploy { "deploy" } else { "run" }.into(),
        app: deploy.then(|| "web".into()),
        environment: Some(if deploy { "prod" } else { "staging" }.into()),
        version: deploy.then(|| "1.4".into()),
        digest: deploy.then(|| DIGEST.into()),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        detail,
    };
    (time.to_string(), entry)
}

/// A container as a target reports it.
fn container(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "name": "web-prod", "image": format!("127.0.0.1:5000/acme/web@{DIGEST}"),
        "digest": DIGEST, "ip": "172.17.0.2", "ips": { "bridge": "172.17.0.2" }, "ports": [] })
}

/// A folder whose audit log holds a deployment of web 1.4 to prod (prod-1 replaced, prod-2
/// failed its health check and was restored), then a `ferry run uptime` in staging.
fn fixture() -> tempfile::TempDir {
    let folder = local().into_dir();
    let target = |status: &str, action: &str| {
        serde_json::json!({ "container": "web-prod", "config_hash": "0f0f", "argv": ["docker", "run"],
            "secrets": ["DATABASE_URL"], "status": status, "action": action })
    };
    let records = [
        record(
            "2026-12-01T10:00:00.000Z",
            "run_started",
            DEPLOY,
            &["prod-1", "prod-2"],
            serde_json::json!({ "image": format!("127.0.0.1:5000/acme/web@{DIGEST}") }),
        ),
        record(
            "2026-12-01T10:00:02.100Z",
            "target_outcome",
            DEPLOY,
            &["prod-1"],
            serde_json::json!({ "status": "ok", "exit_code": null, "signal": null, "error": null, "ms": 2100,
                "tail": [], "action": "replaced", "container": container(NEW_CONTAINER), "logs": [] }),
        ),
        record(
            "2026-12-01T10:00:32.600Z",
            "target_outcome",
            DEPLOY,
            &["prod-2"],
            serde_json::json!({ "status": "failed", "exit_code": null, "signal": null,
                "error": "health check failed after 30s", "ms": 30500, "tail": [], "action": "restored",
                "container": container(OLD_CONTAINER), "logs": ["listening on :8080", "panic: the database refused"] }),
        ),
        record(
            "2026-12-01T10:00:33.000Z",
            "run_finished",
            DEPLOY,
            &["prod-1", "prod-2"],
            serde_json::json!({ "ok": 1, "failed": 1, "skipped": 0, "interrupted": false, "ms": 33000,
                "deployment": { "image": format!("127.0.0.1:5000/acme/web@{DIGEST}"), "succeeded": false,
                    "targets": { "prod-1": target("ok", "replaced"), "prod-2": target("failed", "restored") } } }),
        ),
        record(
            "2026-12-01T10:05:00.000Z",
            "run_started",
            RUN,
            &["stg-1"],
            serde_json::json!({ "command_line": "uptime" }),
        ),
        record(
            "2026-12-01T10:05:00.300Z",
            "target_outcome",
            RUN,
            &["stg-1"],
            serde_json::json!({ "status": "ok", "exit_code": 0, "signal": null, "error": null, "ms": 300,
                "tail": ["up 3 days"] }),
        ),
        record(
            "2026-12-01T10:05:00.400Z",
            "run_finished",
            RUN,
            &[],
            serde_json::json!({ "ok": 1, "failed": 0, "skipped": 0, "interrupted": false, "ms": 400 }),
        ),
    ];
    let actor = Actor { user: "ann".into(), host: "laptop".into(), via: "terminal".into(), job: None };
    let mut text = String::new();
    let mut prev: Option<(u64, String)> = None;
    for (i, (time, entry)) in records.into_iter().enumerate() {
        let id = format!("0193ffff-0000-7000-8000-{i:012}");
        let sealed = ferry::audit::seal(
            prev.as_ref().map(|(s, h)| (*s, h.as_str())),
            time,
            id,
            actor.clone(),
            entry,
            None,
        );
        text += &serde_json::to_string(&sealed).unwrap();
        text.push('\n');
        prev = Some((sealed.seq, sealed.hash));
    }
    std::fs::create_dir_all(folder.path().join(".ferry")).unwrap();
    std::fs::write(folder.path().join(".ferry/audit.jsonl"), text).unwrap();
    folder
}

#[test]
fn the_table_shows_each_deployments_digest_short() {
    let folder = fixture();
    ferry(folder.path(), &["history"])
        .stdout(
            "STARTED (UTC)        RUN            ACTOR                  COMMAND  APP  ENV      VERSION  DIGEST        TARGETS  OUTCOME  SUMMARY\n\
             2026-12-01 10:05:00  0193bbbb-0002  ann@laptop (terminal)  run      -    staging  -        -             1        ok       1 ok, 0 failed, 0 skipped\n\
             2026-12-01 10:00:00  0193bbbb-0001  ann@laptop (terminal)  deploy   web  prod     1.4      0123456789ab  2        failed   1 ok, 1 failed, 0 skipped\n",
        )
        .run();
}

#[test]
fn json_has_the_whole_digest_and_plain_adds_it_as_the_last_column() {
    let folder = fixture();
    let json = ferry(folder.path(), &["history", "--output", "json"]).stdout_json().run().json();
    assert_eq!(json["runs"][1]["run"], DEPLOY);
    assert_eq!(json["runs"][1]["digest"], DIGEST);
    assert!(json["runs"][0]["digest"].is_null(), "a `ferry run` deploys no bytes: {json}");
    // The ten columns scripts read so far keep their places; the digest is the eleventh.
    ferry(folder.path(), &["history", "--output", "plain"])
        .stdout(&format!(
            "2026-12-01T10:05:00.000Z\t{RUN}\tann@laptop (terminal)\trun\t-\tstaging\t-\t1\tok\t1 ok, 0 failed, 0 skipped\t-\n\
             2026-12-01T10:00:00.000Z\t{DEPLOY}\tann@laptop (terminal)\tdeploy\tweb\tprod\t1.4\t2\tfailed\t1 ok, 1 failed, 0 skipped\t{DIGEST}\n"
        ))
        .run();
}

#[test]
fn history_run_shows_one_deployment_target_by_target() {
    let folder = fixture();
    // The prefix the table shows names the run.
    ferry(folder.path(), &["history", "--run", "0193bbbb-0001"])
        .stdout(&format!(
            "run       {DEPLOY}\n\
             started   2026-12-01 10:00:00 UTC\n\
             finished  2026-12-01 10:00:33 UTC\n\
             actor     ann@laptop (terminal)\n\
             command   deploy\n\
             app       web\n\
             env       prod\n\
             version   1.4\n\
             digest    {DIGEST}\n\
             image     127.0.0.1:5000/acme/web@{DIGEST}\n\
             outcome   failed: 1 ok, 1 failed, 0 skipped\n\
             \n\
             TARGET  STATUS  ACTION    CONTAINER     EXIT  TIME   ERROR\n\
             prod-1  ok      replaced  c0ffee000001  -     2.1s   -\n\
             prod-2  failed  restored  beef00000002  -     30.5s  health check failed after 30s\n\
             \n\
             prod-2: container logs:\n  \
             | listening on :8080\n  \
             | panic: the database refused\n"
        ))
        .run();
}

#[test]
fn history_run_json_and_plain_have_whole_ids_and_errors() {
    let folder = fixture();
    let json =
        ferry(folder.path(), &["history", "--run", DEPLOY, "--output", "json"]).stdout_json().run().json();
    let run = &json["run"];
    assert_eq!((json["type"].as_str(), run["run"].as_str()), (Some("run"), Some(DEPLOY)));
    assert_eq!((run["command"].as_str(), run["digest"].as_str()), (Some("deploy"), Some(DIGEST)));
    assert_eq!(run["actor"], "ann@laptop (terminal)");
    let targets = run["target_outcomes"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{run}");
    assert_eq!((targets[0]["target"].as_str(), targets[0]["status"].as_str()), (Some("prod-1"), Some("ok")));
    assert_eq!(targets[0]["container"]["id"], NEW_CONTAINER);
    assert_eq!(targets[0]["container"]["digest"], DIGEST);
    assert_eq!(
        (targets[1]["status"].as_str(), targets[1]["action"].as_str()),
        (Some("failed"), Some("restored"))
    );
    assert_eq!(targets[1]["error"], "health check failed after 30s");
    assert_eq!(targets[1]["logs"][1], "panic: the database refused");
    ferry(folder.path(), &["history", "--run", DEPLOY, "--output", "plain"])
        .stdout(&format!(
            "run\t{DEPLOY}\t2026-12-01T10:00:00.000Z\t2026-12-01T10:00:33.000Z\tann@laptop (terminal)\tdeploy\tweb\tprod\t1.4\t{DIGEST}\tfailed\t1 ok, 1 failed, 0 skipped\n\
             target\tprod-1\tok\treplaced\t{NEW_CONTAINER}\t-\t2100\t-\n\
             target\tprod-2\tfailed\trestored\t{OLD_CONTAINER}\t-\t30500\thealth check failed after 30s\n"
        ))
        .run();
}

#[test]
fn history_run_shows_a_command_run_with_its_command_line() {
    let folder = fixture();
    ferry(folder.path(), &["history", "--run", RUN])
        .stdout(&format!(
            "run           {RUN}\n\
             started       2026-12-01 10:05:00 UTC\n\
             finished      2026-12-01 10:05:00 UTC\n\
             actor         ann@laptop (terminal)\n\
             command       run\n\
             command line  uptime\n\
             env           staging\n\
             outcome       ok: 1 ok, 0 failed, 0 skipped\n\
             \n\
             TARGET  STATUS  ACTION  CONTAINER  EXIT  TIME  ERROR\n\
             stg-1   ok      -       -          0     0.3s  -\n"
        ))
        .run();
}

#[test]
fn a_bad_run_id_is_exit_2_pointing_to_history() {
    let folder = fixture();
    let help = "  = help: `ferry history` lists the runs on record\n";
    ferry(folder.path(), &["history", "--run", "0193ffff"])
        .code(2)
        .stderr(&format!("error: no run 0193ffff on record\n{help}"))
        .run();
    ferry(folder.path(), &["history", "--run", "0193bbbb"])
        .code(2)
        .stderr(&format!("error: run id \"0193bbbb\" is ambiguous: it could be {DEPLOY}, {RUN}\n{help}"))
        .run();
    ferry(folder.path(), &["history", "--run", "019"])
        .code(2)
        .stderr(&format!("error: run id \"019\" is too short: give at least 4 characters\n{help}"))
        .run();
    // One run, or a filtered list: not both.
    ferry(folder.path(), &["history", "web", "--run", DEPLOY])
        .code(2)
        .stderr_contains("cannot be used with")
        .run();
}

#[test]
fn history_run_shows_what_a_failed_command_printed() {
    let folder = local().into_dir();
    ferry(folder.path(), &["run", "--env", "staging", "--", "echo boom; exit 3"])
        .code(1)
        .stdout_contains("stg-1 | boom\n")
        .run();
    let json = ferry(folder.path(), &["history", "--output", "json"]).stdout_json().run().json();
    let id = json["runs"][0]["run"].as_str().unwrap().to_string();
    ferry(folder.path(), &["history", "--run", &id[..13]])
        .stdout_contains(&format!("run           {id}\n"))
        .stdout_contains("\ncommand       run\ncommand line  echo boom; exit 3\nenv           staging\n")
        .stdout_contains("\nstg-1   failed  -       -          3     ")
        .stdout_contains("\n\nstg-1: last output lines:\n  | boom\n")
        .run();
}

/// Runs `ferry run --env staging -- true` on the local target from `shell -c`, as a crontab
/// line is run (the command is not the shell's last, so the shell stays its parent), and
/// returns the actor `history` then shows for it.
fn actor_when_started_from(shell: &Path, folder: &Path) -> String {
    let inventory = folder.join("ferry.toml").display().to_string();
    let status = Command::new(shell)
        .args(["-c", "\"$0\" \"$@\"; exit $?"])
        .arg(binary())
        .args(["-i", &inventory, "run", "--env", "staging", "--", "true"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WEB_DATABASE_URL", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let json = ferry(folder, &["history", "--limit", "1", "--output", "json"]).stdout_json().run().json();
    json["runs"][0]["actor"].as_str().unwrap().to_string()
}

#[test]
fn a_run_cron_started_is_recorded_as_cron_and_one_a_script_started_as_script() {
    let folder = local().into_dir();
    let shells = tempfile::tempdir().unwrap();
    // A shell under the name cron: what the process tree of a cron job looks like.
    let cron = shells.path().join("cron");
    std::os::unix::fs::symlink("/bin/sh", &cron).unwrap();
    let from_cron = actor_when_started_from(&cron, folder.path());
    assert!(from_cron.ends_with(" (cron)"), "{from_cron}");
    // No terminal alone is not cron: a script, an ssh command.
    let from_sh = actor_when_started_from(Path::new("/bin/sh"), folder.path());
    assert!(from_sh.ends_with(" (script)"), "{from_sh}");
    // A systemd unit (a timer's service) says so through INVOCATION_ID.
    ferry(folder.path(), &["run", "--env", "staging", "--", "true"])
        .env("INVOCATION_ID", "5f2b6a0c")
        .stdout_contains("stg-1")
        .run();
    let json =
        ferry(folder.path(), &["history", "--limit", "1", "--output", "json"]).stdout_json().run().json();
    assert!(json["runs"][0]["actor"].as_str().unwrap().ends_with(" (systemd)"), "{json}");
}
