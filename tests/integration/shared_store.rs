//! The shared store's acceptance tests (issue 13), against the lab's real PostgreSQL and real
//! targets: several "runners" (each its own state folder, `HOME`, user and host name, as CI
//! jobs on different machines are) share one database, and what one does the others see.
//!
//! Each test has a database of its own ([`Lab::postgres_db`]) and its own environments, ports
//! and folders. They all hold [`POSTGRES`]: one of them stops the server mid-deploy, and while
//! it is down every other connection would be refused, so the store tests run one at a time
//! (the rest of the lab suite still runs beside them). What ferry wrote is read back with the
//! superuser's `psql`, not through ferry.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{Lab, POSTGRES, PostgresBack, json_lines, lab};
use crate::test::Test;

/// The deploy template (`--stop-timeout 1`: busybox httpd as PID 1 ignores TERM).
const TEMPLATE: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }}
";

/// The app's secret.
const TOKEN: &str = "tok-shared-7d1e0b";

/// [`POSTGRES`], also after a test that held it failed.
fn hold() -> MutexGuard<'static, ()> {
    POSTGRES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a test's world is set up.
struct Spec<'a> {
    /// The database (also names the test's folders).
    db: &'a str,
    /// Environments and their hosts (h1..h3), in lifecycle order.
    envs: &'a [(&'a str, &'a [usize])],
    /// The app's host port.
    port: u16,
    /// The app's health check.
    health: &'a str,
    /// `[lifecycle] phases` = the environments in order.
    lifecycle: bool,
    /// `[state] url = { env = "LAB_STATE_URL" }` in the inventory (else runners export
    /// `FERRY_STATE_URL`).
    state_table: bool,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            db: "",
            envs: &[],
            port: 0,
            health: "{ grace = \"1s\" }",
            lifecycle: false,
            state_table: false,
        }
    }
}

/// One test's database, inventory and hosts.
struct World {
    lab: Lab,
    dir: tempfile::TempDir,
    db: String,
    url: String,
    password: String,
    state_table: bool,
    port: u16,
}

impl World {
    fn new(spec: Spec<'_>) -> World {
        let lab = lab();
        let url = lab.postgres_db(spec.db);
        let password = lab.pg_password();
        let dir = tempfile::tempdir().unwrap();
        let ssh = lab.dir.join("ssh/client_key").display().to_string();
        let known = lab.dir.join("known_hosts").display().to_string();
        let mut text =
            format!("[defaults]\nuser = \"root\"\nidentity = \"{ssh}\"\nknown_hosts = \"{known}\"\n");
        if spec.state_table {
            text += "\n[state]\nurl = { env = \"LAB_STATE_URL\" }\n";
        }
        for n in 1..=3 {
            text += &format!("\n[targets.h{n}]\nhost = \"10.200.0.{}\"\n", 10 + n);
        }
        text += "\n[feeds.lab]\nurl = \"http://10.200.0.1:5000\"\n";
        for (env, hosts) in spec.envs {
            let names: Vec<String> = hosts.iter().map(|n| format!("\"h{n}\"")).collect();
            text += &format!("\n[environments.{env}]\ntargets = [{}]\n", names.join(", "));
        }
        if spec.lifecycle {
            let phases: Vec<String> = spec.envs.iter().map(|(e, _)| format!("\"{e}\"")).collect();
            text += &format!("\n[lifecycle]\nphases = [{}]\n", phases.join(", "));
        }
        text += &format!(
            "\n[apps.web]\nfeed = \"lab\"\nimage = \"ferry/web\"\ntemplate = \"web.j2\"\n\
             vars = {{ port = {}, greeting = \"hello\" }}\nenv = {{ GREETING = \"{{{{ greeting }}}}\" }}\n\
             secrets = {{ TOKEN = {{ env = \"WEB_TOKEN\" }} }}\nhealth = {}\n",
            spec.port, spec.health
        );
        std::fs::write(dir.path().join("ferry.toml"), text).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/web.j2"), TEMPLATE).unwrap();
        let world = World {
            lab,
            dir,
            db: spec.db.to_string(),
            url,
            password,
            state_table: spec.state_table,
            port: spec.port,
        };
        // A lab kept up between runs may hold this test's containers and locks: start clean.
        for (env, hosts) in spec.envs {
            for &n in *hosts {
                world.on_host(
                    n,
                    &format!(
                        "docker ps -aq --filter label=ferry.environment={env} | xargs -r docker rm -f; rm -rf /root/.ferry/locks/{env}"
                    ),
                );
            }
        }
        world
    }

    fn inventory(&self) -> String {
        self.dir.path().join("ferry.toml").display().to_string()
    }

    /// A runner: its own state folder and `HOME`, user `user` on host `host`; `ci` makes it a
    /// CI job (actor via `ci`), else a script (no terminal, no cron ancestor).
    fn runner(&self, user: &'static str, host: &'static str, ci: bool) -> Runner<'_> {
        let runner = Runner { world: self, user, host, ci };
        std::fs::create_dir_all(runner.home()).unwrap();
        runner
    }

    /// `psql` as the superuser in this test's database.
    fn psql(&self, sql: &str) -> String {
        self.lab.psql(&self.db, sql)
    }

    /// Every record in the store, in chain order, as ferry wrote it.
    fn records(&self) -> Vec<Value> {
        json_lines(&self.psql("select line from ferry_audit order by seq"))
    }

    /// The lease row of `env`: `holder|run`, or "" when there is none.
    fn lease(&self, env: &str) -> String {
        self.psql(&format!("select holder || '|' || run from ferry_leases where environment = '{env}'"))
    }

    /// Runs a command inside host `n`'s network and mount namespaces.
    fn on_host(&self, n: usize, script: &str) -> String {
        let holder = std::fs::read_to_string(self.lab.dir.join(format!("net/h{n}/holder.pid"))).unwrap();
        let out = Command::new("nsenter")
            .args(["-t", holder.trim(), "-m", "-n", "sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The image the app's container of `env` runs on host `n`, if there is one.
    fn image_on(&self, n: usize, env: &str) -> String {
        self.on_host(n, &format!("docker inspect -f '{{{{.Config.Image}}}}' web-{env} 2>/dev/null"))
            .trim()
            .to_string()
    }

    /// The body of `GET /` on host `n`.
    fn http(&self, n: usize) -> String {
        use std::io::{Read, Write};
        let addr = format!("10.200.0.{}:{}", 10 + n, self.port).parse().unwrap();
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }
}

/// One machine that runs ferry against the shared store.
struct Runner<'w> {
    world: &'w World,
    user: &'static str,
    host: &'static str,
    ci: bool,
}

impl Runner<'_> {
    fn home(&self) -> PathBuf {
        self.world.dir.path().join(self.user).join("home")
    }

    fn state(&self) -> PathBuf {
        self.world.dir.path().join(self.user).join("state")
    }

    /// How this runner shows up as a holder and in history.
    fn actor(&self) -> String {
        format!("{}@{} ({})", self.user, self.host, if self.ci { "ci" } else { "script" })
    }

    /// The runner's environment (the state URL included, never in argv).
    fn env(&self) -> Vec<(String, String)> {
        let url_var = if self.world.state_table { "LAB_STATE_URL" } else { "FERRY_STATE_URL" };
        let mut env = vec![
            ("FERRY_STATE_DIR".to_string(), self.state().display().to_string()),
            ("HOME".to_string(), self.home().display().to_string()),
            ("USER".to_string(), self.user.to_string()),
            ("HOSTNAME".to_string(), self.host.to_string()),
            ("WEB_TOKEN".to_string(), TOKEN.to_string()),
            (url_var.to_string(), self.world.url.clone()),
        ];
        if self.ci {
            env.push(("CI".to_string(), "true".to_string()));
        }
        env
    }

    /// `ferry -i INVENTORY ARGS` on this runner; neither the database password nor the app's
    /// secret may show in any output.
    fn ferry(&self, args: &[&str]) -> Test {
        let mut test = Test::bare().args(["-i", &self.world.inventory()]).args(args.iter().copied());
        for (k, v) in self.env() {
            test = test.env(&k, &v);
        }
        test.never_prints(&self.world.password).never_prints(TOKEN)
    }

    /// `ferry deploy web --env ENV --version V --yes --output json EXTRA`.
    fn deploy(&self, env: &str, version: &str, extra: &[&str]) -> Test {
        let mut args = vec!["deploy", "web", "--env", env, "--version", version, "--yes", "--output", "json"];
        args.extend_from_slice(extra);
        self.ferry(&args).stdout_json_lines()
    }

    /// The same as a process in the background.
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(crate::test::binary())
            .args(["-i", &self.world.inventory()])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `ferry state init`, which every test runs first.
    fn init(&self) {
        let endpoint = format!("ferry@10.200.0.1:5432/{}", self.world.db);
        self.ferry(&["state", "init"])
            .stdout(&format!(
                "store:    {endpoint} (postgresql, ready)\ntls:      verify-full\nschema:   2\nrecords:  0 (0 delayed, 0 imported)\nhead:     (empty)\n"
            ))
            .run();
    }

    /// `ferry audit verify` must pass with `records` records.
    fn verify(&self, records: usize) {
        let endpoint = format!("ferry@10.200.0.1:5432/{}", self.world.db);
        self.ferry(&["audit", "verify"])
            .stdout(&format!("the state store {endpoint}: ok, {records} records, chain intact\n"))
            .run();
    }

    /// The runs `ferry history --output json` shows.
    fn history(&self) -> Vec<Value> {
        let out = self.ferry(&["history", "--output", "json"]).stdout_json().run();
        out.json()["runs"].as_array().unwrap().clone()
    }
}

/// The `run` id of a deploy's JSON events.
fn run_id(stdout: &str) -> String {
    json_lines(stdout).iter().find(|e| e["type"] == "run_started").unwrap()["run"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `ready` holds (or fails the test after `limit`).
fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child's exit code and outputs.
fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The record's time in ms since the epoch.
fn time_ms(record: &Value) -> i64 {
    let time = record["time"].as_str().unwrap();
    ferry::time::parse_ms(time).unwrap_or_else(|| panic!("not an RFC 3339 time: {time}"))
}

/// The first scenario: what one runner deployed, another promotes; each sees the
/// other's runs under the other's name; a rollback returns to a record the other runner wrote.
/// Neither runner keeps a local log: everything is in the database.
#[test]
fn two_runners_share_one_record_promote_history_and_rollback() {
    let _pg = hold();
    let world = World::new(Spec {
        db: "ss_two_runners",
        envs: &[("ss1-stg", &[1]), ("ss1-prod", &[2])],
        port: 18201,
        lifecycle: true,
        state_table: true,
        ..Spec::default()
    });
    let a = world.runner("alice", "runner-a", false);
    let b = world.runner("bob", "runner-b", true);
    a.init();
    let deployed = a.deploy("ss1-stg", "1.0", &[]).run();
    let a_run = run_id(&deployed.stdout);
    let staged = world.records().into_iter().find(|r| r["kind"] == "run_finished").unwrap();
    let digest = staged["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{staged}");
    assert_eq!(world.image_on(1, "ss1-stg"), format!("10.200.0.1:5000/ferry/web@{digest}"));

    // B has never deployed anything, and has a state folder of its own.
    let promoted = b
        .ferry(&["promote", "web", "--to", "ss1-prod", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr(&format!("promote: web 1.0 ({digest}) from ss1-stg (deployment {a_run}) to ss1-prod\n"))
        .run();
    let b_run = run_id(&promoted.stdout);
    assert_eq!(world.image_on(2, "ss1-prod"), format!("10.200.0.1:5000/ferry/web@{digest}"));
    assert_eq!(world.http(2), "ferry web 1.0\n");

    let runs = b.history();
    let a_seen = runs.iter().find(|r| r["run"] == a_run.as_str()).unwrap_or_else(|| panic!("{runs:?}"));
    assert_eq!(a_seen["actor"], a.actor(), "{a_seen}");
    assert_eq!((a_seen["command"].as_str(), a_seen["outcome"].as_str()), (Some("deploy"), Some("ok")));
    let b_seen = runs.iter().find(|r| r["run"] == b_run.as_str()).unwrap();
    assert_eq!(b_seen["actor"], "bob@runner-b (ci)");
    assert_eq!(b_seen["command"], "promote");
    // The store lists every run; A sees the same list.
    assert_eq!(a.history(), runs);
    // Each shows the bytes it deployed; `--run` finds one in the store by the prefix the table
    // shows, with its target's container (issue 16).
    assert_eq!(
        (a_seen["digest"].as_str(), b_seen["digest"].as_str()),
        (Some(digest.as_str()), Some(digest.as_str()))
    );
    let one = a.ferry(&["history", "--run", &b_run[..13], "--output", "json"]).stdout_json().run().json();
    assert_eq!(
        (one["run"]["run"].as_str(), one["run"]["actor"].as_str()),
        (Some(b_run.as_str()), Some("bob@runner-b (ci)"))
    );
    let target = &one["run"]["target_outcomes"][0];
    assert_eq!(
        (target["status"].as_str(), target["action"].as_str()),
        (Some("ok"), Some("created")),
        "{one}"
    );
    assert_eq!(target["container"]["digest"], digest.as_str(), "{one}");
    assert_eq!(target["container"]["id"].as_str().map(str::len), Some(64), "{one}");
    // The whole id (looked up by the runs table's key) finds the same run.
    let whole = a.ferry(&["history", "--run", &b_run, "--output", "json"]).stdout_json().run().json();
    assert_eq!(whole, one);
    a.ferry(&["history", "--run", "0000ffff"])
        .code(2)
        .stderr("error: no run 0000ffff on record\n  = help: `ferry history` lists the runs on record\n")
        .run();

    // A moves staging on and promotes it itself; then rolls prod back: the deployment it
    // returns to is B's promote, which only the database knows.
    a.deploy("ss1-stg", "2.0", &[]).run();
    a.ferry(&["promote", "web", "--to", "ss1-prod", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains("promote: web 2.0 (sha256:")
        .run();
    assert_eq!(world.http(2), "ferry web 2.0\n");
    let back = a
        .ferry(&["rollback", "web", "--env", "ss1-prod", "--yes", "--output", "json"])
        .stdout_json_lines()
        .stderr_contains(&format!(
            "rollback: web in ss1-prod returns to deployment {b_run} (1.0 {digest}, finished "
        ))
        .run();
    let back_run = run_id(&back.stdout);
    assert_eq!(world.image_on(2, "ss1-prod"), format!("10.200.0.1:5000/ferry/web@{digest}"));
    assert_eq!(world.http(2), "ferry web 1.0\n");
    let records = world.records();
    let finished =
        records.iter().find(|r| r["run"] == back_run.as_str() && r["kind"] == "run_finished").unwrap();
    assert_eq!(finished["detail"]["deployment"]["rollback_to"], b_run.as_str(), "{finished}");
    assert_eq!(finished["actor"]["user"], "alice");

    let total = records.len();
    a.verify(total);
    b.verify(total);
    for runner in [&a, &b] {
        assert!(!runner.state().join("audit.jsonl").exists(), "{}: no local log", runner.user);
    }
}

/// Four runners append at once: the database serializes them into one chain, without gaps,
/// forks or lost records.
#[test]
fn four_runners_appending_at_once_make_one_chain_of_a_thousand_records() {
    let _pg = hold();
    let world = World::new(Spec { db: "ss_bench", ..Spec::default() });
    let runners = [
        world.runner("r1", "runner-1", false),
        world.runner("r2", "runner-2", false),
        world.runner("r3", "runner-3", true),
        world.runner("r4", "runner-4", true),
    ];
    runners[0].init();
    let children: Vec<Child> =
        runners.iter().map(|r| r.spawn(&["audit", "bench", "--records", "250"])).collect();
    for child in children {
        let (code, stdout, stderr) = finish(child);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(
            stdout.starts_with("250 appends to the state store ferry@10.200.0.1:5432/ss_bench: median "),
            "{stdout}"
        );
        assert_eq!(stderr, "");
    }
    for runner in &runners {
        runner.verify(1000);
    }
    assert_eq!(
        world.psql("select count(*), min(seq), max(seq), count(distinct seq) from ferry_audit"),
        "1000|1|1000|1000"
    );
    // Each record links to the one before it in seq order (verify checks the hashes; this is
    // the table itself: one linear chain, no fork).
    assert_eq!(
        world.psql("select count(*) from ferry_audit a join ferry_audit b on b.seq = a.seq - 1 where a.prev <> b.hash"),
        "0"
    );
    assert_eq!(
        world.psql("select line::json->'actor'->>'user', count(*) from ferry_audit group by 1 order by 1"),
        "r1|250\nr2|250\nr3|250\nr4|250"
    );
    // They did write at the same time: the chain switches between runners many times.
    let switches: usize = world
        .psql(
            "select count(*) from (select line::json->'actor'->>'user' as u, \
             lag(line::json->'actor'->>'user') over (order by seq) as p from ferry_audit) s where u <> p",
        )
        .parse()
        .unwrap();
    assert!(switches > 10, "the appends hardly interleaved ({switches} switches): not a concurrent test");
}

/// Two runners deploy one environment at the same moment: the database's lease lets one in and
/// refuses the other (exit 3, naming the holder); with `--lock-wait` the second runs after the
/// first, and no target is worked on by both at once.
#[test]
fn two_runners_deploying_one_environment_take_turns() {
    let _pg = hold();
    let world = World::new(Spec {
        db: "ss_turns",
        envs: &[("ss3", &[1, 2])],
        port: 18203,
        health: "{ grace = \"5s\" }",
        ..Spec::default()
    });
    let a = world.runner("alice", "runner-a", false);
    let b = world.runner("bob", "runner-b", true);
    a.init();
    let deploy = ["deploy", "web", "--env", "ss3", "--version", "1.0", "--yes", "--output", "json"];
    let first = a.spawn(&deploy);
    wait_for("A's lease", Duration::from_secs(20), || {
        world.lease("ss3").starts_with("alice@runner-a (script)|")
    });
    let refused = b
        .ferry(&["deploy", "web", "--env", "ss3", "--version", "2.0", "--yes"])
        .code(3)
        .stdout("")
        .stderr_contains("environment ss3 is locked on the state store by alice@runner-a (script) since ")
        .stderr_contains("wait for it with --lock-wait DURATION")
        .run();
    assert!(
        refused.stderr.contains(&format!("(run {})", world.lease("ss3").split('|').nth(1).unwrap())),
        "{}",
        refused.stderr
    );
    let (code, stdout, stderr) = finish(first);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let a_run = run_id(&stdout);
    for n in [1, 2] {
        assert!(world.image_on(n, "ss3").starts_with("10.200.0.1:5000/ferry/web@sha256:"), "A deployed h{n}");
        assert_eq!(world.http(n), "ferry web 1.0\n", "B changed nothing");
    }
    let b_refused = b.history().into_iter().find(|r| r["outcome"] == "refused").unwrap();
    assert!(
        b_refused["summary"].as_str().unwrap().contains("locked on the state store by alice@runner-a"),
        "{b_refused}"
    );

    // Again, B waiting this time.
    let second = a.spawn(&[
        "deploy",
        "web",
        "--env",
        "ss3",
        "--version",
        "1.0",
        "--set",
        "greeting=a",
        "--yes",
        "--output",
        "json",
    ]);
    wait_for("A's second lease", Duration::from_secs(20), || {
        let lease = world.lease("ss3");
        lease.starts_with("alice@") && !lease.ends_with(&a_run)
    });
    let waited = b.deploy("ss3", "2.0", &["--lock-wait", "2m"]).run();
    let b_run = run_id(&waited.stdout);
    let (code, stdout, stderr) = finish(second);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let a_run = run_id(&stdout);
    for n in [1, 2] {
        assert_eq!(world.http(n), "ferry web 2.0\n", "B ran last");
    }
    let records = world.records();
    let of = |run: &str, kind: &str| -> Vec<&Value> {
        records.iter().filter(|r| r["run"] == run && r["kind"] == kind).collect()
    };
    let seq = |r: &Value| r["seq"].as_u64().unwrap();
    let a_released = of(&a_run, "lock_released")[0];
    let b_acquired = of(&b_run, "lock_acquired")[0];
    assert!(seq(of(&b_run, "run_started")[0]) < seq(a_released), "B was waiting while A ran");
    assert!(seq(a_released) < seq(b_acquired), "B locked after A released");
    let a_outcomes = of(&a_run, "target_outcome");
    let b_outcomes = of(&b_run, "target_outcome");
    assert_eq!((a_outcomes.len(), b_outcomes.len()), (2, 2));
    let a_last_end = a_outcomes.iter().map(|r| time_ms(r)).max().unwrap();
    for r in &b_outcomes {
        let start = time_ms(r) - r["detail"]["ms"].as_i64().unwrap();
        assert!(
            start >= a_last_end,
            "B's {} started at {start}, before A's last target ended at {a_last_end}",
            r["targets"][0]
        );
    }
    a.verify(records.len());
}

/// A runner killed with -9 mid-deploy leaves its lease in the database: another runner sees
/// it held, breaks it with `--force` (on record), and history shows the dead run as
/// interrupted. A lease also ends by itself when its TTL runs out.
#[test]
fn a_killed_runners_lease_is_shown_broken_with_force_or_expires() {
    let _pg = hold();
    let world = World::new(Spec {
        db: "ss_kill",
        envs: &[("ss4", &[3])],
        port: 18204,
        health: "{ grace = \"30s\" }",
        ..Spec::default()
    });
    let a = world.runner("alice", "runner-a", false);
    let b = world.runner("bob", "runner-b", true);
    a.init();
    let mut child =
        a.spawn(&["deploy", "web", "--env", "ss4", "--version", "1.0", "--yes", "--output", "json"]);
    wait_for("A's lease", Duration::from_secs(20), || world.lease("ss4").starts_with("alice@"));
    // In its 30 s health gate (the container was created): kill it there.
    wait_for("A's container", Duration::from_secs(30), || !world.image_on(3, "ss4").is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    let a_run = world.lease("ss4").split('|').nth(1).unwrap().to_string();

    let status = b
        .ferry(&["lock", "status", "--env", "ss4"])
        .stdout_contains("TARGET         STATE   HOLDER ")
        .stdout_contains("\n(state store)  LOCKED  alice@runner-a (script)  ")
        .stdout_contains("\nh3             LOCKED  alice@runner-a (script)  ")
        .run();
    assert_eq!(status.stdout.lines().count(), 3, "{}", status.stdout);
    b.ferry(&["deploy", "web", "--env", "ss4", "--version", "1.0", "--yes"])
        .code(3)
        .stdout("")
        .stderr_contains("environment ss4 is locked on the state store by alice@runner-a (script) since ")
        .run();
    b.ferry(&["lock", "release", "--env", "ss4", "--force"]).stdout("released ss4 on 2 targets\n").run();
    assert_eq!(world.lease("ss4"), "", "the lease row is gone");
    b.ferry(&["lock", "status", "--env", "ss4"])
        .stdout("TARGET  STATE  HOLDER  EXPIRES  MESSAGE\nh3      free\n")
        .run();
    let records = world.records();
    let broken: Vec<&Value> = records.iter().filter(|r| r["kind"] == "lock_broken").collect();
    assert_eq!(broken.len(), 2, "the lease and h3's lock: {broken:?}");
    let lease_broken = broken.iter().find(|r| r["targets"][0] == "(state store)").unwrap();
    assert_eq!(lease_broken["run"], a_run.as_str(), "{lease_broken}");
    assert_eq!(lease_broken["actor"]["user"], "bob");
    assert_eq!(lease_broken["detail"]["reason"], "forced");
    assert!(
        lease_broken["detail"]["previous"].as_str().unwrap().starts_with("alice@runner-a (script) since ")
    );
    b.verify(records.len());
    let runs = b.history();
    let dead = runs.iter().find(|r| r["run"] == a_run.as_str()).unwrap();
    // Its records: A's run_started and lock_acquired, no run_finished; then B's two breaks of
    // its locks, which are filed under the run they broke.
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["run"] == a_run.as_str())
        .map(|r| (r["actor"]["user"].as_str().unwrap(), r["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alice", "run_started"),
            ("alice", "lock_acquired"),
            ("bob", "lock_broken"),
            ("bob", "lock_broken")
        ]
    );
    assert_eq!(dead["outcome"], "interrupted", "{dead}");
    assert_eq!(dead["actor"], "alice@runner-a (script)");
    // Free again for everyone (a locked run, without the 30 s gate of a deploy).
    b.ferry(&["run", "--env", "ss4", "--lock", "--output", "json", "--", "true"]).stdout_json_lines().run();

    // A lease that runs out: A freezes the environment for 3 s; B is refused, then takes it.
    a.ferry(&["lock", "acquire", "--env", "ss4", "--ttl", "3s", "--message", "short freeze"])
        .stdout_contains("locked ss4 until ")
        .run();
    let taken = Instant::now();
    assert!(world.lease("ss4").starts_with("alice@runner-a (script)|"));
    // Taken by hand, and described so (not as a run that may be dead).
    b.ferry(&["lock", "acquire", "--env", "ss4"])
        .code(3)
        .stderr_contains(
            "environment ss4 is locked on the state store, by hand: alice@runner-a (script) took it with `ferry lock acquire` on ",
        )
        .stderr_contains(" (\"short freeze\"); it expires ")
        .run();
    b.ferry(&["lock", "status", "--env", "ss4"])
        .stdout_contains("\n(state store)  LOCKED  alice@runner-a (script)  ")
        .stdout_contains("  short freeze\n")
        .run();
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(taken.elapsed()));
    b.ferry(&["lock", "acquire", "--env", "ss4", "--ttl", "1m"]).stdout_contains("locked ss4 until ").run();
    assert!(world.lease("ss4").starts_with("bob@runner-b (ci)|"), "{}", world.lease("ss4"));
    // The expired lease B took over is on record with its holder, and B's fence is the lease's.
    let records = world.records();
    let broken = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "lock_broken" && r["targets"][0] == "(state store)")
        .expect("the expired lease's takeover is recorded");
    assert_eq!(broken["actor"]["user"], "bob");
    assert_eq!(broken["detail"]["reason"], "expired", "{broken}");
    assert!(broken["detail"]["previous"].as_str().unwrap().contains("short freeze"), "{broken}");
    let acquired = records.iter().rev().find(|r| r["kind"] == "lock_acquired").unwrap();
    assert!(acquired["detail"]["fences"].to_string().contains("(state store)"), "{acquired}");
    b.ferry(&["lock", "release", "--env", "ss4"]).stdout("released ss4 on 2 targets\n").run();
    assert_eq!(world.lease("ss4"), "");
    b.verify(world.records().len());
}

/// PostgreSQL goes away while a deploy waits in its health gate: the deploy finishes its
/// target, keeps the records it could not write in the local spool (and says so), and the next
/// command on that runner pushes them, releases the lease the run could not release, and shows
/// the run. Nothing is missing and the chain verifies.
#[test]
fn postgres_stopped_mid_deploy_spools_and_the_next_command_pushes() {
    let _pg = hold();
    let world = World::new(Spec {
        db: "ss_spool",
        envs: &[("ss5", &[1])],
        port: 18205,
        health: "{ grace = \"8s\" }",
        ..Spec::default()
    });
    let a = world.runner("alice", "runner-a", false);
    a.init();
    let child = a.spawn(&["deploy", "web", "--env", "ss5", "--version", "1.0", "--yes", "--output", "json"]);
    wait_for("A's lease", Duration::from_secs(20), || world.lease("ss5").starts_with("alice@"));
    let run = world.lease("ss5").split('|').nth(1).unwrap().to_string();
    wait_for("A's container", Duration::from_secs(30), || !world.image_on(1, "ss5").is_empty());
    let before: Vec<String> =
        world.records().iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(before, ["run_started", "lock_acquired"], "the gate is still running");
    world.lab.pg_stop();
    let back = PostgresBack(&world.lab);
    let (code, stdout, stderr) = finish(child);
    let spool = a.state().join("spool.jsonl");
    let spooled = std::fs::read_to_string(&spool).unwrap_or_default();
    world.lab.pg_start();
    drop(back);
    assert_eq!(code, Some(0), "the deploy finished its target\n{stdout}\n{stderr}");
    let events = json_lines(&stdout);
    let h1 = events.iter().find(|e| e["type"] == "target_finished").unwrap();
    assert_eq!((h1["status"].as_str(), h1["action"].as_str()), (Some("ok"), Some("created")), "{h1}");
    assert!(
        stderr.contains(
            "warning: the state store ferry@10.200.0.1:5432/ss_spool was lost during this command: "
        ) && stderr.contains(&format!("records are in the local spool {}", spool.display())),
        "{stderr}"
    );
    assert!(!stderr.contains(&world.password), "{stderr}");
    assert_eq!(world.http(1), "ferry web 1.0\n");
    let lines = json_lines(&spooled);
    let spooled_kinds: Vec<&str> = lines.iter().filter_map(|l| l["entry"]["kind"].as_str()).collect();
    assert_eq!(spooled_kinds, ["target_outcome", "run_finished", "lock_released"], "{spooled}");
    assert!(lines.iter().any(|l| l["spooled"] == "release" && l["run"] == run.as_str()), "{spooled}");
    // The database is back, but nothing has reached it yet: the lease is still the dead one's.
    assert_eq!(world.records().len(), 2);
    assert!(world.lease("ss5").ends_with(&run));

    let out = a
        .ferry(&["history", "--output", "json"])
        .stdout_json()
        .stderr("note: 3 delayed records from the local spool are now in the state store ferry@10.200.0.1:5432/ss_spool\n")
        .run();
    let runs = out.json()["runs"].as_array().unwrap().clone();
    let shown = runs.iter().find(|r| r["run"] == run.as_str()).unwrap();
    assert_eq!(
        (shown["outcome"].as_str(), shown["summary"].as_str(), shown["delayed"].as_u64()),
        (
            Some("ok"),
            Some("1 ok, 0 failed, 0 skipped (3 records delayed: spooled while the store was unreachable)"),
            Some(3)
        )
    );
    assert_eq!(world.lease("ss5"), "", "released by the command that pushed the spool");
    assert_eq!(std::fs::read_to_string(&spool).unwrap_or_default(), "", "the spool is emptied");
    let records = world.records();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run_started", "lock_acquired", "target_outcome", "run_finished", "lock_released"]);
    assert_eq!(
        world.psql(&format!(
            "select kind, coalesce(origin, '-') from ferry_audit where run = '{run}' order by seq"
        )),
        "run_started|-\nlock_acquired|-\ntarget_outcome|spooled\nrun_finished|spooled\nlock_released|spooled"
    );
    let finished = &records[3];
    assert_eq!(finished["origin"]["via"], "spooled", "{finished}");
    assert_eq!(finished["detail"]["deployment"]["succeeded"], true);
    // Delayed, not re-dated: the run_finished keeps the time it happened (before the push).
    assert!(time_ms(finished) <= time_ms(&records[2]) + 5_000);
    a.verify(5);
    a.ferry(&["state", "status"]).stdout_contains("records:  5 (3 delayed, 0 imported)\n").run();
    // A second command has nothing left to push.
    a.ferry(&["history"]).stdout_contains(&run[..13]).run();
}

/// A superuser edits a deployment's record, or deletes a row: `audit verify` names the row,
/// and rollback and promote refuse to act on the chain (exit 4).
#[test]
fn a_row_changed_by_a_superuser_is_named_and_refused() {
    let _pg = hold();
    let world = World::new(Spec {
        db: "ss_tamper",
        envs: &[("ss6-stg", &[2]), ("ss6-prod", &[3])],
        port: 18206,
        lifecycle: true,
        ..Spec::default()
    });
    let a = world.runner("alice", "runner-a", false);
    a.init();
    a.deploy("ss6-stg", "1.0", &[]).run();
    a.deploy("ss6-stg", "2.0", &[]).run();
    let records = world.records();
    let total = records.len();
    a.verify(total);
    let first = records.iter().find(|r| r["kind"] == "run_finished").unwrap();
    let seq = first["seq"].as_u64().unwrap();
    let image = first["detail"]["deployment"]["image"].as_str().unwrap().to_string();
    let endpoint = "the state store ferry@10.200.0.1:5432/ss_tamper";
    let refused = |what: &[&str]| {
        a.ferry(what)
            .code(4)
            .stderr_contains(
                "the audit chain in the state store ferry@10.200.0.1:5432/ss_tamper is broken at seq ",
            )
            .stderr_contains("ferry acts on no record of a broken chain")
            .run()
            .stderr
    };
    let rollback = ["rollback", "web", "--env", "ss6-stg", "--yes"];
    let promote = ["promote", "web", "--to", "ss6-prod", "--yes"];

    // An edit: the first deployment's image becomes another one.
    let forged = image.replace("10.200.0.1:5000/ferry/web@", "10.200.0.1:5000/evil/web@");
    world.psql(&format!(
        "update ferry_audit set line = replace(line, '{image}', '{forged}') where seq = {seq}"
    ));
    assert_eq!(world.psql("select count(*) from ferry_audit where line like '%evil/web%'"), "1");
    let verify = a
        .ferry(&["audit", "verify"])
        .code(1)
        .stdout_contains(&format!("{endpoint}: seq {seq}: BROKEN: "))
        .run();
    assert_eq!(verify.stdout.lines().count(), 1, "{}", verify.stdout);
    for what in [&rollback[..], &promote[..]] {
        let stderr = refused(what);
        assert!(stderr.contains(&format!("broken at seq {seq}: ")), "{what:?}: {stderr}");
    }
    assert!(world.image_on(3, "ss6-prod").is_empty(), "nothing was promoted");
    assert!(world.http(2).contains("2.0"), "nothing was rolled back");

    // Undone, the chain is whole again; then a row in the middle is deleted.
    world.psql(&format!(
        "update ferry_audit set line = replace(line, '{forged}', '{image}') where seq = {seq}"
    ));
    a.verify(total);
    let gone = seq - 1;
    assert_eq!(world.psql(&format!("select kind from ferry_audit where seq = {gone}")), "target_outcome");
    let kept = world.psql(&format!("select time_ms || E'\\t' || line from ferry_audit where seq = {gone}"));
    world.psql(&format!("delete from ferry_audit where seq = {gone}"));
    a.ferry(&["audit", "verify"]).code(1).stdout_contains(&format!("{endpoint}: seq {seq}: BROKEN: ")).run();
    for what in [&rollback[..], &promote[..]] {
        let stderr = refused(what);
        assert!(stderr.contains("records were deleted"), "{what:?}: {stderr}");
    }
    assert!(world.image_on(3, "ss6-prod").is_empty(), "nothing was promoted");
    assert!(world.http(2).contains("2.0"), "nothing was rolled back");

    // Put back; then the newest deployment's own record is deleted, far from the one promote
    // would pick up instead (1.0): promote must not quietly promote the older release.
    let (time_ms, line) = kept.split_once('\t').unwrap();
    world.psql(&format!(
        "insert into ferry_audit (seq, time_ms, line) values ({gone}, {time_ms}, '{}')",
        line.replace('\'', "''")
    ));
    a.verify(total);
    let newest = world.psql("select max(seq) from ferry_audit where kind = 'run_finished'");
    world.psql(&format!("delete from ferry_audit where seq = {newest}"));
    let stderr = refused(&promote);
    assert!(stderr.contains("records were deleted"), "{stderr}");
    assert!(world.image_on(3, "ss6-prod").is_empty(), "nothing was promoted");
}

/// A store that cannot be reached is refused before any target is touched (exit 1), each cause
/// with its own message naming the endpoint, never the password.
#[test]
fn wrong_password_wrong_ca_and_no_server_each_fail_clearly_and_touch_nothing() {
    let _pg = hold();
    let world = World::new(Spec { db: "ss_reach", envs: &[("ss7", &[1])], port: 18207, ..Spec::default() });
    let a = world.runner("alice", "runner-a", false);
    a.init();
    let wrong = "wrong-pw-93c1f";
    let cases = [
        (
            world.lab.pg_url_with("ss_reach", Some(wrong), Some(&world.lab.pg_ca()), "verify-full"),
            "password authentication failed for user \"ferry\"",
            "(check the password in the state URL)",
        ),
        (
            world.lab.pg_url_with(
                "ss_reach",
                Some(&world.password),
                Some(&world.lab.pg_other_ca()),
                "verify-full",
            ),
            "certificate",
            "(the server's certificate is not trusted: check sslrootcert, and that the certificate names the host)",
        ),
        (
            world
                .lab
                .pg_url_with("ss_reach", Some(&world.password), Some(&world.lab.pg_ca()), "verify-full")
                .replace("@10.200.0.1:5432/", "@10.200.0.1:1/"),
            "Connection refused",
            "= help: check that the database is up and reachable from this machine",
        ),
    ];
    let mut messages = Vec::new();
    for (url, cause, hint) in &cases {
        let endpoint = if url.contains(":1/") {
            "ferry@10.200.0.1:1/ss_reach"
        } else {
            "ferry@10.200.0.1:5432/ss_reach"
        };
        let out = a
            .ferry(&["deploy", "web", "--env", "ss7", "--version", "1.0", "--yes"])
            .env("FERRY_STATE_URL", url)
            .never_prints(wrong)
            .never_prints(&world.password)
            .code(1)
            .stdout("")
            .stderr_contains(&format!("cannot reach the state store {endpoint}: "))
            .stderr_contains(cause)
            .stderr_contains(hint)
            .stderr_contains("nothing was changed on any target")
            .run();
        // Not even the percent-encoded forms.
        assert!(!out.stderr.contains("%2F") && !out.stderr.contains("sslrootcert="), "{}", out.stderr);
        messages.push(out.stderr);
        // history and verify too: no command goes on with the files instead.
        a.ferry(&["history"])
            .env("FERRY_STATE_URL", url)
            .never_prints(wrong)
            .code(1)
            .stderr_contains(&format!("cannot reach the state store {endpoint}: "))
            .run();
    }
    assert!(
        messages[0] != messages[1] && messages[1] != messages[2],
        "each cause its own message: {messages:?}"
    );
    assert!(world.image_on(1, "ss7").is_empty(), "no container");
    assert_eq!(
        world.on_host(1, "ls /root/.ferry/locks/ 2>/dev/null | grep -x ss7 || true"),
        "",
        "no lock was taken on the target"
    );
    assert!(!a.state().join("audit.jsonl").exists(), "nothing recorded in the files instead");
    assert_eq!(world.records().len(), 0, "and nothing in the store");
}

/// The schema is ferry's: a database without it, or with a newer one, is refused with exit 2
/// and what to do.
#[test]
fn a_missing_or_newer_schema_is_refused_with_exit_2() {
    let _pg = hold();
    let world = World::new(Spec { db: "ss_schema", ..Spec::default() });
    let a = world.runner("alice", "runner-a", false);
    for what in [&["history"][..], &["audit", "verify"][..], &["state", "status"][..]] {
        a.ferry(what)
            .code(2)
            .stderr(
                "the state store ferry@10.200.0.1:5432/ss_schema has no ferry schema\n  = help: create it with `ferry state init` (once, by a role that may create tables)\n",
            )
            .run();
    }
    assert_eq!(
        world.psql("select count(*) from pg_tables where schemaname = 'public'"),
        "0",
        "nothing was created"
    );
    a.init();
    a.ferry(&["audit", "bench", "--records", "3"]).stdout_contains("3 appends to the state store").run();
    // init again: nothing to do, nothing lost.
    a.ferry(&["state", "init"]).stdout_contains("records:  3 (0 delayed, 0 imported)\n").run();
    let prefix_index = "select count(*) from pg_indexes where indexname = 'ferry_runs_run_prefix'";
    assert_eq!(world.psql(prefix_index), "1");
    // A store an older ferry made (schema 1: no prefix index) is used as it is; init upgrades it.
    world.psql("drop index ferry_runs_run_prefix; delete from ferry_schema where version = 2");
    a.ferry(&["audit", "bench", "--records", "1"]).stdout_contains("1 appends to the state store").run();
    a.ferry(&["state", "init"]).stdout_contains("records:  4 (0 delayed, 0 imported)\n").run();
    assert_eq!(
        (world.psql("select max(version) from ferry_schema"), world.psql(prefix_index)),
        ("2".into(), "1".into())
    );
    world.psql("update ferry_schema set version = 99");
    let newer = "the state store ferry@10.200.0.1:5432/ss_schema has schema version 99, newer than this ferry's 2\n  = help: upgrade ferry on this runner; an older ferry never writes a newer schema\n";
    for what in [&["history"][..], &["audit", "verify"][..], &["state", "init"][..]] {
        a.ferry(what).code(2).stderr(newer).run();
    }
    assert_eq!(world.psql("select max(version) from ferry_schema"), "99", "init never downgrades");
    assert_eq!(world.psql("select count(*) from ferry_audit"), "4");
}

/// A runner's local log moves into the store once: 10,000 records, the chain verifies, and a
/// second push adds nothing.
#[test]
fn state_push_of_ten_thousand_records_twice_imports_them_once() {
    let _pg = hold();
    let world = World::new(Spec { db: "ss_push", ..Spec::default() });
    let a = world.runner("alice", "runner-a", false);
    a.init();
    let log = world.dir.path().join("old-audit.jsonl");
    let log_text = log.display().to_string();
    let started = Instant::now();
    a.ferry(&["audit", "bench", "--records", "10000", "--log", &log_text])
        .stdout_contains(&format!("10000 appends to {log_text}: median "))
        .run();
    let made = started.elapsed();
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 10_000);
    assert_eq!(world.records().len(), 0, "--log writes the file, not the store");
    let started = Instant::now();
    a.ferry(&["state", "push", "--log", &log_text])
        .stdout(&format!(
            "{log_text}: 10000 records, 10000 imported into the state store ferry@10.200.0.1:5432/ss_push, 0 already there\n"
        ))
        .run();
    let pushed = started.elapsed();
    a.ferry(&["state", "push", "--log", &log_text])
        .stdout(&format!(
            "{log_text}: 10000 records, 0 imported into the state store ferry@10.200.0.1:5432/ss_push, 10000 already there\n"
        ))
        .run();
    let started = Instant::now();
    a.verify(10_000);
    let verified = started.elapsed();
    assert_eq!(
        world.psql("select count(*), min(seq), max(seq), count(*) filter (where origin = 'imported') from ferry_audit"),
        "10000|1|10000|10000"
    );
    // Original times, actors and order kept; the original seq and hash are on each record.
    let local: Vec<Value> = json_lines(&std::fs::read_to_string(&log).unwrap());
    let first = &world.records()[0];
    assert_eq!(
        (&first["time"], &first["actor"], &first["detail"]),
        (&local[0]["time"], &local[0]["actor"], &local[0]["detail"])
    );
    assert_eq!((&first["origin"]["seq"], &first["origin"]["hash"]), (&local[0]["seq"], &local[0]["hash"]));
    a.ferry(&["state", "status"]).stdout_contains("records:  10000 (0 delayed, 10000 imported)\n").run();
    eprintln!("timings: 10,000 fsynced appends {made:?}, push {pushed:?}, verify {verified:?}");
}
