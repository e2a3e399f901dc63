//! Tests against the lab: real OpenSSH sshd (and dockerd, and a registry) in network namespaces,
//! started once per test run by `scripts/test` (see tests/lab/lab.sh).
//!
//! Hosts h1–h3 form environment `lab` and are never disturbed. Host h4 is the fault host: tests
//! that cut its link, drop its packets or stop its sshd hold [`FAULTS`], so they run one at a
//! time while every other test runs in parallel. Tests that need another known_hosts or key
//! write their own copy of the inventory in their own folder.
//!
//! The lab also runs one PostgreSQL server (its own cluster, on the bridge address, TLS from the
//! lab CA): tests of the shared store each take a database of their own ([`Lab::postgres_db`]),
//! so they run in parallel; tests that stop the server hold [`POSTGRES`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::test::Test;

/// Held by tests that change host h4.
pub static FAULTS: Mutex<()> = Mutex::new(());

/// Held by tests that stop the lab's PostgreSQL (`pg_stop`), and by tests that need it to answer
/// throughout: while one test has it stopped, any other connection is refused.
pub static POSTGRES: Mutex<()> = Mutex::new(());

/// The running lab: its folder holds `lab.env`, `lab.toml`, the keys and the daemons' logs.
pub struct Lab {
    pub dir: PathBuf,
}

/// How to get a lab, for the failure of a lab test that found none.
const START_THE_LAB: &str = "The lab tests need real sshd, dockerd and a registry in network \
    namespaces. Run them as root with `scripts/test` (as a normal user: `sudo scripts/test`); it starts \
    the lab, runs `cargo test --features lab`, and stops the lab. Plain `cargo test` (without \
    `--features lab`) runs every test that needs no lab";

/// The lab `scripts/test` started. A lab test without one fails (it never skips): with the
/// `lab` feature on, a missing lab is a broken run, not a pass.
pub fn lab() -> Lab {
    let Some(dir) = std::env::var_os("FERRY_LAB_DIR").filter(|d| !d.is_empty()).map(PathBuf::from) else {
        panic!("no lab is up (FERRY_LAB_DIR is not set). {START_THE_LAB}");
    };
    // lab.sh writes lab.env once every host is up and removes it when it has taken the lab down.
    assert!(
        dir.join("lab.env").is_file(),
        "no lab is up in {} (it has no lab.env). {START_THE_LAB}",
        dir.display()
    );
    Lab { dir }
}

impl Lab {
    fn inventory(&self) -> String {
        self.dir.join("lab.toml").display().to_string()
    }

    /// `ferry -i lab.toml ARGS`.
    fn ferry(&self, args: &[&str]) -> Test {
        Test::bare().args(["-i", &self.inventory()]).args(args.iter().copied())
    }

    /// A copy of the lab inventory in `test`'s folder with another known_hosts text and key.
    fn custom(&self, test: Test, known_hosts: &str, key: &str) -> Test {
        self.custom_in(test.path(), known_hosts, key);
        test
    }

    /// Writes `custom.toml` (the lab inventory with another key) and `known_hosts` into `dir`;
    /// returns the inventory's path.
    fn custom_in(&self, dir: &std::path::Path, known_hosts: &str, key: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("lab.toml")).unwrap();
        let key = self.dir.join("ssh").join(key).display().to_string();
        let text = text.replace("identity = \"ssh/client_key\"", &format!("identity = \"{key}\""));
        std::fs::write(dir.join("custom.toml"), text).unwrap();
        std::fs::write(dir.join("known_hosts"), known_hosts).unwrap();
        dir.join("custom.toml").display().to_string()
    }

    /// The lab's own known_hosts line for host `n`.
    fn key_line(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("known_hosts")).unwrap();
        text.lines().nth(n - 1).unwrap().to_string()
    }

    /// `ssh-keygen -lf` fingerprint of a public key file in the lab.
    fn fingerprint(&self, pub_file: &str) -> String {
        let out = Command::new("ssh-keygen").arg("-lf").arg(self.dir.join(pub_file)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string()
    }

    /// Runs `tests/lab/lab.sh ARGS` (cut, restore, drop, sshd-stop, ...).
    pub fn ctl(&self, args: &[&str]) {
        self.ctl_output(args);
    }

    /// Runs `tests/lab/lab.sh ARGS` and returns what it printed on stdout; fails the test, with
    /// both outputs, when it fails.
    pub fn ctl_output(&self, args: &[&str]) -> String {
        let out = self.lab_sh(args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "lab.sh {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
        stdout.into_owned()
    }

    /// `tests/lab/lab.sh ARGS`, whatever its outcome.
    fn lab_sh(&self, args: &[&str]) -> std::process::Output {
        let script = crate::test::repo().join("tests/lab/lab.sh");
        Command::new(script).args(args).env("FERRY_LAB_DIR", &self.dir).output().unwrap()
    }

    /// A fresh, empty database `name` owned by the role `ferry` (dropped first if it exists);
    /// returns its URL, verify-full against the lab CA, as `FERRY_LAB_PG_URL` has it. Each test
    /// uses a name of its own (`[a-z_][a-z0-9_]*`), so tests run in parallel.
    pub fn postgres_db(&self, name: &str) -> String {
        self.ctl_output(&["pg-db", name]).trim_end().to_string()
    }

    /// Runs `sql` in database `db` as the superuser, over the unix socket (to read or tamper with
    /// what ferry wrote); returns psql's unaligned output (`-At`: one row a line, columns
    /// separated by `|`) without its last newline.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.ctl_output(&["psql", db, sql]);
        out.strip_suffix('\n').unwrap_or(&out).to_string()
    }

    /// Stops the lab's PostgreSQL; its data stays. Hold [`POSTGRES`] and start it again with
    /// [`Lab::pg_start`] (or a [`PostgresBack`] guard, which also does when the test fails).
    pub fn pg_stop(&self) {
        self.ctl(&["pg-stop"]);
    }

    /// Starts the lab's PostgreSQL again, with the options `lab.sh up` gave it; returns once it
    /// accepts connections on the bridge address.
    pub fn pg_start(&self) {
        self.ctl(&["pg-start"]);
    }

    /// The lab CA (it signed the PostgreSQL server's certificate, and the TLS registry's).
    pub fn pg_ca(&self) -> PathBuf {
        self.dir.join("registry2/ca.crt")
    }

    /// A CA that signed nothing in the lab: verify-full against it must fail.
    pub fn pg_other_ca(&self) -> PathBuf {
        self.dir.join("postgres/other-ca.crt")
    }

    /// The role `ferry`'s password.
    pub fn pg_password(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres/ferry.password")).unwrap().trim_end().to_string()
    }

    /// A URL for role `ferry` and database `db` on the lab's server, with another password
    /// (`None`: none in the URL), another root certificate (`None`: no `sslrootcert`) and any
    /// `sslmode`. The right ones are [`Lab::pg_password`] and [`Lab::pg_ca`].
    pub fn pg_url_with(
        &self,
        db: &str,
        password: Option<&str>,
        root_cert: Option<&Path>,
        sslmode: &str,
    ) -> String {
        let user = match password {
            Some(p) => format!("ferry:{}", percent_encode(p)),
            None => "ferry".to_string(),
        };
        let mut url = format!("postgres://{user}@10.200.0.1:5432/{db}?sslmode={sslmode}");
        if let Some(cert) = root_cert {
            url.push_str(&format!("&sslrootcert={}", percent_encode(&cert.display().to_string())));
        }
        url
    }
}

/// `text` with every byte but the URL's unreserved ones (and `/`, for paths) as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts the lab's PostgreSQL again when a test that stopped it ends, also when it fails. It
/// never fails itself (a panic while unwinding would abort the whole run): a server that
/// cannot start makes the next test that needs it fail, with lab.sh's message.
pub struct PostgresBack<'a>(pub &'a Lab);

impl Drop for PostgresBack<'_> {
    fn drop(&mut self) {
        // lab.sh refuses to start a server that runs: then there is nothing to do.
        let _ = self.0.lab_sh(&["pg-start"]);
    }
}

/// Restores host h4 when a fault test ends, also when it fails.
pub struct Restore<'a>(pub &'a Lab, pub &'static [&'static str]);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.ctl(self.1);
    }
}

/// The `target_finished` event of a one-target JSON run.
fn finished_event(stdout: &str) -> serde_json::Value {
    json_lines(stdout).into_iter().find(|e| e["type"] == "target_finished").unwrap()
}

pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

#[test]
fn run_prints_each_hosts_own_hostname() {
    let lab = lab();
    // Lines come in the order the hosts answer, and the summary has timings: checked in pieces.
    let out = lab
        .ferry(&["run", "--env", "lab", "--output", "plain", "--", "hostname"])
        .stdout_contains("h1 | ferry-h1\n")
        .stdout_contains("h2 | ferry-h2\n")
        .stdout_contains("h3 | ferry-h3\n")
        .stdout_contains("\nTARGET  STATUS  EXIT    TIME")
        .stdout_contains("\nh1      ok      exit 0  ")
        .stdout_contains("\nh2      ok      exit 0  ")
        .stdout_contains("\nh3      ok      exit 0  ")
        .run();
    for n in 1..=3 {
        assert!(out.stdout.contains(&format!("h{n} | ferry-h{n}\n")), "{}", out.stdout);
    }
    assert!(out.stdout.contains("TARGET  STATUS  EXIT"), "summary table: {}", out.stdout);
}

#[test]
fn json_events_parse_line_by_line_and_follow_the_schema() {
    let lab = lab();
    let out = lab
        .ferry(&["run", "--env", "lab", "--output", "json", "--", "hostname; echo oops >&2"])
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    assert_eq!(events.first().unwrap()["type"], "run_started");
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    for e in &events {
        assert_eq!(e["schema"], 1, "{e}");
        let fields: &[&str] = match e["type"].as_str().unwrap() {
            "run_started" => &["run", "command", "environment", "targets"],
            "target_connected" => &["target", "ms"],
            "output" => &["target", "stream", "line"],
            "target_finished" => &["target", "status", "exit_code", "signal", "error", "ms"],
            "run_finished" => &["ok", "failed", "skipped", "interrupted", "ms"],
            other => panic!("unknown event type {other}"),
        };
        for f in fields {
            assert!(e.get(*f).is_some(), "{} lacks {f}: {e}", e["type"]);
        }
    }
    let hostnames: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "output" && e["stream"] == "stdout")
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(hostnames.len(), 3);
    assert!(events.iter().any(|e| e["type"] == "output" && e["stream"] == "stderr" && e["line"] == "oops"));
    assert_eq!(events.last().unwrap()["ok"], 3);
}

#[test]
fn exit_code_3_is_reported_as_3() {
    let lab = lab();
    let out = lab
        .ferry(&["run", "--env", "lab", "--limit", "h1", "--output", "json", "--", "exit 3"])
        .code(1)
        .stdout_json_lines()
        .run();
    let finished = finished_event(&out.stdout);
    assert_eq!(finished["exit_code"], 3);
    assert_eq!(finished["status"], "failed");
}

#[test]
fn a_command_killed_by_a_signal() {
    let lab = lab();
    let out = lab
        .ferry(&["run", "--env", "lab", "--limit", "h2", "--output", "json", "--", "kill -9 $$"])
        .code(1)
        .stdout_json_lines()
        .run();
    let finished = finished_event(&out.stdout);
    assert_eq!(finished["signal"], "KILL");
    assert_eq!(finished["exit_code"], serde_json::Value::Null);
}

#[test]
fn a_command_over_its_deadline_is_killed() {
    let lab = lab();
    let started = Instant::now();
    let out = lab
        .ferry(&["run", "--env", "lab", "--limit", "h3", "--timeout", "2s", "--", "sleep 30"])
        .code(1)
        .stdout_contains("h3 ! still running after 2s: killed\n")
        .stdout_contains("\nh3      error   -     ")
        .run();
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(out.stdout.contains("still running after 2s: killed"), "{}", out.stdout);
}

#[test]
fn a_command_past_its_deadline_is_still_mirrored() {
    let lab = lab();
    // The script that writes the line dies with the channel, so ferry writes it on another.
    let sleep = format!("sleep 29.{}", std::process::id());
    lab.ferry(&["run", "--env", "lab", "--limit", "h3", "--timeout", "2s", "--", &sleep])
        .code(1)
        .stdout_contains("h3 ! still running after 2s: killed\n")
        .stdout_contains("h3      error   -     ")
        .run();
    let after = lab
        .ferry(&["run", "--env", "lab", "--limit", "h3", "--output", "plain", "--", "cat ~/.ferry/audit.log"])
        .stdout_contains(&format!(": {sleep} -> "))
        .run();
    let line = after
        .stdout
        .lines()
        .find(|l| l.contains(&format!(": {sleep} -> ")))
        .unwrap_or_else(|| panic!("no mirror line: {}", after.stdout));
    assert!(line.ends_with("-> error: still running after 2s: killed"), "{line}");
}

#[test]
fn ten_megabytes_of_output_and_the_exit_status_all_arrive() {
    let lab = lab();
    let command = "yes 0123456789012345678901234567890123456789 | head -c 10485760; exit 7";
    let out = lab
        .ferry(&["run", "--env", "lab", "--limit", "h1", "--output", "json", "--", command])
        .code(1)
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    let bytes: usize =
        events.iter().filter(|e| e["type"] == "output").map(|e| e["line"].as_str().unwrap().len() + 1).sum();
    // Every line had its newline, except the last one, which `head -c` cut short.
    assert_eq!(bytes - 1, 10_485_760);
    let finished = events.iter().find(|e| e["type"] == "target_finished").unwrap();
    assert_eq!(finished["exit_code"], 7);
}

#[test]
fn the_same_command_means_the_same_under_bash_dash_and_sh() {
    let lab = lab();
    for user in ["ferry-bash", "ferry-dash", "ferry-sh"] {
        let command = "echo \"$((1+2)) $(id -un) it's fine\"";
        let out = lab
            .ferry(&["run", "--env", user, "--output", "plain", "--", command])
            .stdout_contains(&format!("{user} | 3 {user} it's fine\n"))
            .stdout_contains(&format!("\n{user}  ok      exit 0  "))
            .run();
        assert!(out.stdout.contains(&format!("{user} | 3 {user} it's fine\n")), "{user}: {}", out.stdout);
    }
}

#[test]
fn unknown_host_key_is_refused_and_nothing_runs() {
    let lab = lab();
    let marker = format!("/tmp/ferry-marker-{}", std::process::id());
    let test = lab.custom(Test::bare(), "", "client_key");
    let out = test
        .args(["-i", "custom.toml", "run", "--env", "lab", "--limit", "h1", "--", &format!("touch {marker}")])
        .code(4)
        .stdout_contains(&format!(
            "h1 ! host key of h1 (10.200.0.11:22) is not known: ssh-ed25519 {} not in ./known_hosts; check the \
             fingerprint and run `ferry trust`\n",
            lab.fingerprint("net/h1/hostkey.pub")
        ))
        .stdout_contains("\nh1      refused  -     ")
        .run();
    assert!(out.stdout.contains("host key of h1 (10.200.0.11:22) is not known"), "{}", out.stdout);
    assert!(out.stdout.contains(&lab.fingerprint("net/h1/hostkey.pub")), "{}", out.stdout);
    // The marker must not exist on h1: ask h1 itself, through the trusted lab inventory.
    let check = lab
        .ferry(&["run", "--env", "lab", "--limit", "h1", "--", &format!("test ! -e {marker}")])
        .stdout_contains("\nh1      ok      exit 0  ")
        .run();
    assert!(check.stdout.contains("ok"), "{}", check.stdout);
}

#[test]
fn changed_host_key_is_refused_with_both_fingerprints() {
    let lab = lab();
    let other = std::fs::read_to_string(lab.dir.join("ssh/other_key.pub")).unwrap();
    let wrong = format!("10.200.0.11 {}\n", other.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let test = lab.custom(Test::bare(), &wrong, "client_key");
    let out = test
        .args(["-i", "custom.toml", "run", "--env", "lab", "--limit", "h1", "--", "true"])
        .code(4)
        .stdout_contains(&format!(
            "h1 ! HOST KEY CHANGED for h1 (10.200.0.11:22): it presented ssh-ed25519 {} but ./known_hosts records \
             ssh-ed25519 {}; someone may be intercepting the connection. If the host was rebuilt, run \
             `ferry trust --replace h1`\n",
            lab.fingerprint("net/h1/hostkey.pub"),
            lab.fingerprint("ssh/other_key.pub")
        ))
        .stdout_contains("\nh1      refused  -     ")
        .run();
    assert!(out.stdout.contains("HOST KEY CHANGED for h1"), "{}", out.stdout);
    assert!(out.stdout.contains(&lab.fingerprint("net/h1/hostkey.pub")), "presented: {}", out.stdout);
    assert!(out.stdout.contains(&lab.fingerprint("ssh/other_key.pub")), "recorded: {}", out.stdout);
}

#[test]
fn wrong_key_auth_failure_names_user_and_key() {
    let lab = lab();
    let test = lab.custom(Test::bare(), &format!("{}\n", lab.key_line(1)), "other_key");
    let key = lab.dir.join("ssh/other_key").display().to_string();
    let out = test
        .args(["-i", "custom.toml", "run", "--env", "lab", "--limit", "h1", "--", "true"])
        .code(1)
        .stdout_contains(&format!("h1 ! authentication as root@10.200.0.11:22 failed; tried: {key}\n"))
        .stdout_contains("\nh1      error   -     ")
        .run();
    assert!(
        out.stdout.contains(&format!("authentication as root@10.200.0.11:22 failed; tried: {key}")),
        "{}",
        out.stdout
    );
}

#[test]
fn trust_records_keys_only_when_confirmed_and_never_replaces_silently() {
    let lab = lab();
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path();
    let inventory = lab.custom_in(dir, "", "client_key");
    let fingerprints: Vec<String> =
        (1..=3).map(|n| lab.fingerprint(&format!("net/h{n}/hostkey.pub"))).collect();
    let table = |states: [&str; 3], detail_of_h1: &str| trust_table(&fingerprints, states, detail_of_h1);
    let out = Test::bare()
        .args(["-i", &inventory, "trust", "--env", "lab"])
        .code(4)
        .stdout(&table(["NEW", "NEW", "NEW"], ""))
        .stderr("nothing recorded: not confirmed (pass --yes to record without asking)\n")
        .run();
    assert!(out.stdout.contains(&lab.fingerprint("net/h2/hostkey.pub")), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(dir.join("known_hosts")).unwrap(),
        "",
        "no --yes, no terminal: nothing written"
    );
    let known_hosts = dir.join("known_hosts").display().to_string();
    Test::bare()
        .args(["-i", &inventory, "trust", "--env", "lab", "--yes"])
        .stdout(&table(["NEW", "NEW", "NEW"], ""))
        .stderr(&format!("recorded 3 host keys in {known_hosts}\n"))
        .run();
    let recorded = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
    assert_eq!(recorded.lines().count(), 3, "{recorded}");
    Test::bare()
        .args(["-i", &inventory, "run", "--env", "lab", "--", "true"])
        .stdout_contains("\nh1      ok      exit 0  ")
        .stdout_contains("\nh2      ok      exit 0  ")
        .stdout_contains("\nh3      ok      exit 0  ")
        .run();
    // A changed key (here: a recorded key swapped for another) needs --replace.
    let other = std::fs::read_to_string(lab.dir.join("ssh/other_key.pub")).unwrap();
    let swapped = recorded.replacen(
        recorded.lines().next().unwrap(),
        &format!("10.200.0.11 {}", other.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
        1,
    );
    std::fs::write(dir.join("known_hosts"), &swapped).unwrap();
    let changed = format!(
        "recorded: ssh-ed25519 {}; pass --replace h1 if the host was rebuilt",
        lab.fingerprint("ssh/other_key.pub")
    );
    let out = Test::bare()
        .args(["-i", &inventory, "trust", "--env", "lab", "--yes"])
        .code(4)
        .stdout(&table(["CHANGED", "TRUSTED", "TRUSTED"], &changed))
        .run();
    assert!(out.stdout.contains("CHANGED"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(dir.join("known_hosts")).unwrap(),
        swapped,
        "not replaced without --replace"
    );
    Test::bare()
        .args(["-i", &inventory, "trust", "--env", "lab", "--yes", "--replace", "h1"])
        .stdout(&table(["REPLACE", "TRUSTED", "TRUSTED"], ""))
        .stderr(&format!("recorded 1 host key in {known_hosts}\n"))
        .run();
    let audit = std::fs::read_to_string(dir.join(".ferry/audit.jsonl")).unwrap();
    assert_eq!(
        audit.matches("\"kind\":\"trust_recorded\"").count(),
        2,
        "new keys and the replacement are audited"
    );
    assert!(audit.contains("\"replaced\":true"));
    Test::bare()
        .args(["-i", &inventory, "run", "--env", "lab", "--limit", "h1", "--", "true"])
        .stdout_contains("\nh1      ok      exit 0  ")
        .run();
}

/// What `ferry trust --env lab` prints for hosts h1–h3 in `states`, with a detail for h1.
fn trust_table(fingerprints: &[String], states: [&str; 3], detail_of_h1: &str) -> String {
    let width = states.iter().map(|s| s.len()).max().unwrap_or(0).max("STATE".len());
    let fingerprint_width = fingerprints.iter().map(String::len).max().unwrap_or(0);
    let mut table = format!(
        "TARGET  ADDRESS      {:<width$}  KEY          {:<fingerprint_width$}  DETAIL\n",
        "STATE", "FINGERPRINT"
    );
    for (n, (state, fingerprint)) in states.iter().zip(fingerprints).enumerate() {
        let row = format!("h{}      10.200.0.1{}  {state:<width$}  ssh-ed25519  {fingerprint}", n + 1, n + 1);
        table += &match (n, detail_of_h1) {
            (0, detail) if !detail.is_empty() => format!("{row}  {detail}\n"),
            _ => format!("{row}\n"),
        };
    }
    table
}

#[test]
fn a_cut_link_fails_that_host_alone_and_fast() {
    let lab = lab();
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    lab.ctl(&["cut", "4"]);
    let _restore = Restore(&lab, &["restore", "4"]);
    let started = Instant::now();
    let args = ["run", "--env", "faulty", "--connect-timeout", "3s", "--output", "json", "--", "hostname"];
    let out = lab.ferry(&args).code(1).stdout_json_lines().run();
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let finished: Vec<_> =
        json_lines(&out.stdout).into_iter().filter(|e| e["type"] == "target_finished").collect();
    let status = |t: &str| finished.iter().find(|e| e["target"] == t).unwrap()["status"].clone();
    assert_eq!((status("h1"), status("h2"), status("h4")), ("ok".into(), "ok".into(), "unreachable".into()));
}

#[test]
fn a_link_cut_mid_command_fails_within_60_seconds() {
    let lab = lab();
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let _restore = Restore(&lab, &["undrop", "4"]);
    let inventory = lab.inventory();
    let started = Instant::now();
    let child = std::thread::spawn(move || {
        Test::bare()
            .args(["-i", &inventory, "run", "--env", "faulty", "--limit", "h4", "--", "echo up; sleep 30"])
            .code(1)
            .stdout_contains("h4 | up\n")
            .stdout_contains("h4 ! the connection was lost before 10.200.0.14:22 reported an exit status\n")
            .stdout_contains("\nh4      error   -     ")
            .run()
    });
    std::thread::sleep(Duration::from_secs(2));
    lab.ctl(&["drop", "4"]);
    let cut_at = Instant::now();
    let out = child.join().unwrap();
    assert!(cut_at.elapsed() < Duration::from_secs(60), "noticed {:?} after the cut", cut_at.elapsed());
    assert!(
        started.elapsed() > Duration::from_secs(30),
        "ended before the command could have: {}",
        out.stdout
    );
    assert!(out.stdout.contains("the connection was lost before"), "{}", out.stdout);
}

#[test]
fn a_stopped_sshd_fails_that_host() {
    let lab = lab();
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    lab.ctl(&["sshd-stop", "4"]);
    let _restore = Restore(&lab, &["sshd-start", "4"]);
    let started = Instant::now();
    let out = lab
        .ferry(&["run", "--env", "faulty", "--", "true"])
        .code(1)
        .stdout_contains(
            "h4 ! unreachable: cannot connect to 10.200.0.14:22: Connection refused (os error 111)\n",
        )
        .stdout_contains("\nh1      ok           exit 0  ")
        .stdout_contains("\nh2      ok           exit 0  ")
        .stdout_contains("\nh4      unreachable  -       ")
        .run();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(out.stdout.contains("cannot connect to 10.200.0.14:22: Connection refused"), "{}", out.stdout);
}

#[test]
fn ctrl_c_finishes_running_targets_starts_no_more_and_exits_130() {
    let lab = lab();
    let child = Command::new(crate::test::binary())
        .args([
            "-i",
            &lab.inventory(),
            "run",
            "--env",
            "lab",
            "--parallel",
            "1",
            "--output",
            "json",
            "--",
            "sleep 2; echo done",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events = json_lines(&stdout);
    let status_of = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == "target_finished" && e["target"] == t)
            .map(|e| e["status"].clone())
    };
    assert_eq!(status_of("h1"), Some("ok".into()), "the running target finishes: {stdout}");
    assert_eq!(status_of("h2"), Some("skipped".into()), "{stdout}");
    assert_eq!(status_of("h3"), Some("skipped".into()), "{stdout}");
    assert_eq!(events.last().unwrap()["interrupted"], true);
}

#[test]
fn a_jump_host_reaches_a_target_only_it_can_see() {
    let lab = lab();
    // "inner" is 127.0.0.1 seen from h1: the only sshd there is h1's own.
    let out = lab
        .ferry(&["run", "--env", "inner", "--output", "plain", "--", "hostname"])
        .stdout_contains("inner | ferry-h1\n")
        .stdout_contains("\ninner   ok      exit 0  ")
        .run();
    assert!(out.stdout.contains("inner | ferry-h1\n"), "{}", out.stdout);
    // The target's key is checked against the target's name, also through the tunnel.
    let known = std::fs::read_to_string(lab.dir.join("known_hosts")).unwrap();
    let without_inner: String =
        known.lines().filter(|l| !l.starts_with("127.0.0.1 ")).map(|l| format!("{l}\n")).collect();
    let test = lab.custom(Test::bare(), &without_inner, "client_key");
    let out = test
        .args(["-i", "custom.toml", "run", "--env", "inner", "--", "true"])
        .code(4)
        .stdout_contains(&format!(
            "inner ! host key of inner (127.0.0.1:22) is not known: ssh-ed25519 {} not in ./known_hosts; check \
             the fingerprint and run `ferry trust`\n",
            lab.fingerprint("net/h1/hostkey.pub")
        ))
        .stdout_contains("\ninner   refused  -     ")
        .run();
    assert!(out.stdout.contains("host key of inner (127.0.0.1:22) is not known"), "{}", out.stdout);
}

#[test]
fn one_connection_carries_several_commands_and_stdin() {
    let lab = lab();
    let inventory = ferry::inventory::Inventory::load(&lab.dir.join("lab.toml")).unwrap();
    let target = inventory.target("h2").unwrap().clone();
    let known_hosts = ferry::known_hosts::KnownHosts::load(&inventory.defaults.known_hosts).unwrap();
    let options = ferry::ssh::Options {
        connect_timeout: Duration::from_secs(10),
        known_hosts: std::sync::Arc::new(known_hosts),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use ferry::host::Host as _;
        let connection = ferry::host::open(&inventory, &target, &options).await.unwrap();
        // Secret env files will travel this way: on stdin, never in a command line.
        let payload = b"DATABASE_URL=postgres://x\nline two\n".repeat(1000);
        let mut sink = ferry::exec::Capture::default();
        let status = connection.exec("cat", Some(&payload), None, &mut sink).await.unwrap();
        assert!(status.success());
        assert_eq!(sink.text().as_bytes(), &payload[..]);
        // The same session again: sshd sees one connection.
        let mut sink = ferry::exec::Capture::default();
        let status = connection.exec("echo $PPID", None, None, &mut sink).await.unwrap();
        let first = sink.text().trim().to_string();
        let mut again = ferry::exec::Capture::default();
        connection.exec("echo $PPID", None, None, &mut again).await.unwrap();
        assert!(status.success());
        assert_ne!(first, "", "a parent pid");
        connection.close().await;
    });
}

#[test]
fn each_target_gets_a_mirror_line_and_no_secret_reaches_it() {
    let lab = lab();
    let folder = tempfile::tempdir().unwrap();
    let inventory = lab.custom_in(
        folder.path(),
        &std::fs::read_to_string(lab.dir.join("known_hosts")).unwrap(),
        "client_key",
    );
    // An app with a secret makes the secret's value known to ferry, so it is masked everywhere.
    let app = "\n[apps.web]\nimage = \"ferry/busybox\"\ntemplate = \"web.j2\"\nsecrets = { TOKEN = { env = \"LAB_TOKEN\" } }\n";
    std::fs::write(&inventory, std::fs::read_to_string(&inventory).unwrap() + app).unwrap();
    std::fs::create_dir_all(folder.path().join("templates")).unwrap();
    std::fs::write(folder.path().join("templates/web.j2"), "docker run {{ image }}\n").unwrap();
    let token = "lab-token-Kq3-never-shown";
    let marker = format!("mirror-{}", std::process::id());
    let out = Test::bare()
        .env("LAB_TOKEN", token)
        .args([
            "-i",
            &inventory,
            "run",
            "--env",
            "lab",
            "--limit",
            "h2",
            "--output",
            "json",
            "--",
            &format!("echo {marker} {token}"),
        ])
        .stdout_json_lines()
        .run();
    assert!(!out.stdout.contains(token), "{}", out.stdout);
    let run_id = json_lines(&out.stdout)[0]["run"].as_str().unwrap().to_string();
    let mirror = lab
        .ferry(&["run", "--env", "lab", "--limit", "h2", "--output", "plain", "--", "cat ~/.ferry/audit.log"])
        .stdout_contains(&format!("ferry run {run_id} by "))
        .stdout_contains(&format!(": echo {marker} *** -> exit 0\n"))
        .stdout_contains("\nh2      ok      exit 0  ")
        .run();
    let line = mirror
        .stdout
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no mirror line: {}", mirror.stdout));
    assert!(line.contains(&format!("ferry run {run_id} by ")), "{line}");
    assert!(line.contains(&format!("echo {marker} ***")) && line.ends_with("-> exit 0"), "{line}");
    assert!(!mirror.stdout.contains(token));
    let log = std::fs::read_to_string(folder.path().join(".ferry/audit.jsonl")).unwrap();
    assert!(!log.contains(token) && log.contains(&run_id));
}

/// A copy of the lab inventory with two extra environments of its own, so lock tests never meet
/// other tests' locks; returns (folder, inventory path).
fn lock_lab(lab: &Lab, suffix: &str) -> (tempfile::TempDir, String) {
    let folder = tempfile::tempdir().unwrap();
    let known = std::fs::read_to_string(lab.dir.join("known_hosts")).unwrap();
    let inventory = lab.custom_in(folder.path(), &known, "client_key");
    let extra = format!("\n[environments.lock-{suffix}]\ntargets = [\"h1\", \"h2\", \"h3\"]\n");
    std::fs::write(&inventory, std::fs::read_to_string(&inventory).unwrap() + &extra).unwrap();
    (folder, inventory)
}

/// `ferry` with its own state folder: a "machine".
fn machine(inventory: &str, state: &std::path::Path) -> Command {
    let mut command = Command::new(crate::test::binary());
    command
        .args(["-i", inventory])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_STATE_DIR", state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

#[test]
fn two_machines_one_lock_exactly_one_runs_and_a_waiter_runs_after() {
    let lab = lab();
    let (folder, inventory) = lock_lab(&lab, "two");
    let (state_a, state_b) = (folder.path().join("machine-a"), folder.path().join("machine-b"));
    let log = format!("/tmp/ferry-lock-order-{}", std::process::id());
    let first = machine(&inventory, &state_a)
        .args([
            "run",
            "--env",
            "lock-two",
            "--lock",
            "--limit",
            "h1",
            "--",
            &format!("echo a-start >> {log}; sleep 3; echo a-end >> {log}"),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let refused = machine(&inventory, &state_b)
        .args([
            "run",
            "--env",
            "lock-two",
            "--lock",
            "--limit",
            "h1",
            "--",
            &format!("echo refused >> {log}"),
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("environment lock-two is locked on h1 by root@"), "{stderr}");
    assert!(stderr.contains("--lock-wait"), "says what to do: {stderr}");
    let waiter = machine(&inventory, &state_b)
        .args([
            "run",
            "--env",
            "lock-two",
            "--lock",
            "--lock-wait",
            "60s",
            "--limit",
            "h1",
            "--",
            &format!("echo b >> {log}"),
        ])
        .output()
        .unwrap();
    assert_eq!(waiter.status.code(), Some(0), "{}", String::from_utf8_lossy(&waiter.stderr));
    assert!(first.wait_with_output().unwrap().status.success());
    let order = lab
        .ferry(&[
            "run",
            "--env",
            "lab",
            "--limit",
            "h1",
            "--output",
            "plain",
            "--",
            &format!("cat {log}; rm {log}"),
        ])
        .stdout_contains("h1 | a-start\nh1 | a-end\nh1 | b\n")
        .stdout_contains("\nh1      ok      exit 0  ")
        .run();
    let lines: Vec<&str> = order.stdout.lines().filter_map(|l| l.strip_prefix("h1 | ")).collect();
    assert_eq!(
        lines,
        ["a-start", "a-end", "b"],
        "the refused run ran nothing; the waiter ran after: {}",
        order.stdout
    );
    // Machine B's log says why its first run did not happen.
    let out = Test::bare()
        .env("FERRY_STATE_DIR", &state_b.display().to_string())
        .args(["-i", &inventory, "history"])
        .stdout_contains("STARTED (UTC)        RUN            ACTOR")
        .stdout_contains("  refused  environment lock-two is locked on h1 by root@")
        .run();
    assert!(out.stdout.contains("refused"), "{}", out.stdout);
}

#[test]
fn kill_9_while_holding_the_lock_then_expiry_or_force_frees_it() {
    let lab = lab();
    let (folder, inventory) = lock_lab(&lab, "kill");
    let state = folder.path().join("state");
    let hold = |ttl: &str| {
        let mut child = machine(&inventory, &state)
            .args(["run", "--env", "lock-kill", "--lock", "--lock-ttl", ttl, "--", "sleep 30"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().unwrap(); // SIGKILL: no release
        child.wait().unwrap();
    };
    let attempt = |extra: &[&str]| {
        machine(&inventory, &state)
            .args(["run", "--env", "lock-kill", "--lock"])
            .args(extra)
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    hold("1h");
    assert_eq!(attempt(&[]).status.code(), Some(3), "the dead run's lock is still there");
    let release = machine(&inventory, &state)
        .args(["lock", "release", "--env", "lock-kill", "--force"])
        .output()
        .unwrap();
    assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
    assert_eq!(attempt(&[]).status.code(), Some(0), "free after --force");
    hold("3s");
    // The lock was taken at most 1.5 s after the start (the hold kills the run then), so it
    // expired at most 1.5 s + 3 s after it; the margin keeps a loaded machine from racing it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(attempt(&[]).status.code(), Some(0), "taken over after expiry");
    let records = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    assert!(records.contains("\"kind\":\"lock_broken\""), "takeover and force are audited");
    let verify = machine(&inventory, &state).args(["audit", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let history = machine(&inventory, &state).args(["history"]).output().unwrap();
    assert!(String::from_utf8_lossy(&history.stdout).contains("interrupted"));
}

#[test]
fn operators_freeze_an_environment_and_only_force_breaks_someone_elses_lock() {
    let lab = lab();
    let (folder, inventory) = lock_lab(&lab, "ops");
    let state = folder.path().join("state").display().to_string();
    let ferry =
        |user: &str| Test::bare().env("USER", user).env("FERRY_STATE_DIR", &state).args(["-i", &inventory]);
    ferry("alice")
        .args(["lock", "acquire", "--env", "lock-ops", "--message", "release freeze"])
        .stdout_contains("locked lock-ops until ")
        .run();
    // The holder names the machine (user@host): checked in pieces.
    let status = ferry("bob")
        .args(["lock", "status", "--env", "lock-ops"])
        .stdout_contains("TARGET  STATE   HOLDER ")
        .stdout_contains("\nh1      LOCKED  alice@")
        .stdout_contains("\nh2      LOCKED  alice@")
        .stdout_contains("\nh3      LOCKED  alice@")
        .run();
    assert_eq!(status.stdout.matches("LOCKED  alice@").count(), 3, "{}", status.stdout);
    assert!(status.stdout.contains("release freeze"));
    // Taken by hand: described as such, never as a run that may be dead.
    let held = "environment lock-ops is locked on h1, by hand: alice@";
    let what_to_do = " took it with `ferry lock acquire` on ";
    let force = " (\"release freeze\"); it expires ";
    let ask = ". Ask them, or release it with `ferry lock release --env lock-ops --force` (audited)\n";
    let refused = ferry("bob")
        .args(["run", "--env", "lock-ops", "--lock", "--", "true"])
        .code(3)
        .stderr_contains(held)
        .stderr_contains(what_to_do)
        .stderr_contains(force)
        .stderr_contains(ask)
        .run();
    assert!(
        refused.stderr.contains("by hand: alice@")
            && !refused.stderr.contains("dead")
            && refused.stderr.contains("release freeze"),
        "{}",
        refused.stderr
    );
    ferry("bob")
        .args(["lock", "release", "--env", "lock-ops"])
        .code(3)
        .stderr_contains(held)
        .stderr_contains(what_to_do)
        .stderr_contains(force)
        .stderr_contains(ask)
        .run();
    ferry("bob")
        .args(["lock", "release", "--env", "lock-ops", "--force"])
        .stdout("released lock-ops on 3 targets\n")
        .run();
    let status = ferry("bob")
        .args(["lock", "status", "--env", "lock-ops"])
        .stdout("TARGET  STATE  HOLDER  EXPIRES  MESSAGE\nh1      free\nh2      free\nh3      free\n")
        .run();
    assert_eq!(status.stdout.matches(" free").count(), 3, "{}", status.stdout);
    ferry("alice")
        .args(["lock", "acquire", "--env", "lock-ops"])
        .stdout_contains("locked lock-ops until ")
        .run();
    ferry("alice")
        .args(["lock", "release", "--env", "lock-ops"])
        .stdout("released lock-ops on 3 targets\n")
        .run();
}

#[test]
fn ctrl_c_releases_the_lock() {
    let lab = lab();
    let (folder, inventory) = lock_lab(&lab, "int");
    let state = folder.path().join("state");
    let child = machine(&inventory, &state)
        .args(["run", "--env", "lock-int", "--lock", "--parallel", "1", "--", "sleep 1"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(130));
    let status = machine(&inventory, &state).args(["lock", "status", "--env", "lock-int"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches(" free").count(), 3, "released on every target: {text}");
    let next = machine(&inventory, &state)
        .args(["run", "--env", "lock-int", "--lock", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(next.status.code(), Some(0));
}

#[test]
fn parallel_1_runs_targets_one_after_another_in_inventory_order() {
    let lab = lab();
    let out = lab
        .ferry(&["run", "--env", "lab", "--parallel", "1", "--output", "json", "--", "sleep 0.2"])
        .stdout_json_lines()
        .run();
    let events = json_lines(&out.stdout);
    let order: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "target_connected" || e["type"] == "target_finished")
        .map(|e| (e["type"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    let expected = [
        ("target_connected", "h1"),
        ("target_finished", "h1"),
        ("target_connected", "h2"),
        ("target_finished", "h2"),
        ("target_connected", "h3"),
        ("target_finished", "h3"),
    ];
    assert_eq!(order, expected);
}
