//! `ferry logs` and `ferry exec` against the lab (issue #14, items 2 and 3): a container that
//! prints the fleet's secret, read back masked and prefixed; a follow that streams and leaves no
//! `docker logs` behind on the target; exec fanned out and audited; and an interactive exec
//! through a real PTY. A child of `deploy`, for its `Fleet`. Environments `l-*`, ports
//! 18220–18229.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Fleet, Spec, TOKEN};

/// The deploy tests' template with a command that prints a line on stderr, then (a second
/// later, so that Docker's timestamps order the two streams) the secret and a few lines on
/// stdout before it serves: a container with logs worth reading.
const CHATTY: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }} sh -c 'echo to-stderr >&2; sleep 1; echo \"token is $TOKEN\"; for i in 1 2 3; do echo line-$i; done; exec httpd -f -p 80 -h /www'
";

/// A container that prints a tick every second, forever.
const TICKING: &str = "docker run --restart unless-stopped --stop-timeout 1
  -p {{ port }}:80
  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}
  {{ image }} sh -c 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done'
";

/// A fleet of `hosts` in `env` whose app runs `template`, deployed.
fn deployed(env: &'static str, port: u16, hosts: &'static [usize], template: &str) -> Fleet {
    let fleet = Fleet::new(Spec { env, port, hosts, ..Spec::default() });
    std::fs::write(fleet.dir.path().join("templates/web.j2"), template).unwrap();
    fleet.deploy("1.0", &[]).run();
    fleet
}

/// The lines of `text` that start with `prefix`, in order.
fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn logs_prefix_every_line_with_its_target_mask_secrets_and_report_a_target_without_the_app() {
    let fleet = deployed("l-tail", 18220, &[1, 2, 3], CHATTY);
    // Give the containers time to print their lines.
    std::thread::sleep(Duration::from_millis(1500));
    let out =
        fleet.ferry(&["logs", "web", "--env", "l-tail", "--limit", "h1,h2"]).stdout_contains("h1 | ").run();
    // In order within a stream (stdout and stderr travel apart, so not across them).
    for n in [1, 2] {
        let lines = lines_of(&out.stdout, &format!("h{n} | "));
        let stdout: Vec<&&str> = lines.iter().filter(|l| !l.ends_with("to-stderr")).collect();
        assert_eq!(
            stdout,
            [
                &format!("h{n} | token is ***").as_str(),
                &format!("h{n} | line-1").as_str(),
                &format!("h{n} | line-2").as_str(),
                &format!("h{n} | line-3").as_str(),
            ],
            "{}",
            out.stdout
        );
        assert_eq!(lines.len(), 5, "{}", out.stdout);
        assert!(lines.contains(&format!("h{n} | to-stderr").as_str()), "{}", out.stdout);
    }
    assert_eq!(out.stdout.lines().count(), 10, "{}", out.stdout);
    // --tail counts both streams; JSON Lines keep them apart.
    let out = fleet
        .ferry(&["logs", "web", "--env", "l-tail", "--target", "h1", "--tail", "5", "--output", "json"])
        .stdout_contains("{")
        .run();
    let lines = crate::lab::json_lines(&out.stdout);
    assert!(lines.iter().all(|l| l.as_object().unwrap().len() == 3), "target, stream, line: {}", out.stdout);
    let mut seen: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| (l["target"].to_string(), l["stream"].to_string(), l["line"].to_string()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("\"h1\"", "\"stderr\"", "\"to-stderr\""),
            ("\"h1\"", "\"stdout\"", "\"line-1\""),
            ("\"h1\"", "\"stdout\"", "\"line-2\""),
            ("\"h1\"", "\"stdout\"", "\"line-3\""),
            ("\"h1\"", "\"stdout\"", "\"token is ***\""),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())),
        "{}",
        out.stdout
    );
    // --since: a time after the lines were written shows none of them; an hour back all.
    fleet
        .ferry(&["logs", "web", "--env", "l-tail", "--target", "h1", "--since", "2099-01-01T00:00:00Z"])
        .run();
    let out = fleet
        .ferry(&["logs", "web", "--env", "l-tail", "--target", "h1", "--since", "1h"])
        .stdout_contains("h1 | line-3\n")
        .run();
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    // A target without the app's container, and one that cannot be reached (no host at that lab
    // address), are each reported and fail the command; the others are read.
    fleet.on_host(3, "docker rm -f web-l-tail");
    let inventory = std::fs::read_to_string(fleet.inventory()).unwrap();
    let inventory = inventory
        .replace("targets = [\"h1\", \"h2\", \"h3\"]", "targets = [\"h1\", \"h2\", \"h3\", \"h9\"]")
        + "\n[targets.h9]\nhost = \"10.200.0.19\"\n";
    std::fs::write(fleet.inventory(), inventory).unwrap();
    let out = fleet
        .ferry(&["logs", "web", "--env", "l-tail", "--tail", "1", "--connect-timeout", "2s"])
        .code(1)
        .stdout_contains("h1 | line-3\n")
        .stdout_contains("h2 | line-3\n")
        .stderr_contains("h3: no container of app web in environment l-tail on this target\n")
        .stderr_contains("h9: ")
        .run();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    let unreachable = out.stderr.lines().find(|l| l.starts_with("h9: ")).unwrap();
    assert!(unreachable.contains("10.200.0.19:22"), "{unreachable}");
}

#[test]
fn logs_follow_streams_as_the_container_prints_and_ctrl_c_stops_the_remote_docker_logs() {
    let fleet = deployed("l-follow", 18221, &[1], TICKING);
    let id = fleet.id(1);
    let mut child = fleet.spawn(&["logs", "web", "--env", "l-follow", "--follow", "--tail", "1"], TOKEN);
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // New ticks arrive while ferry runs: it streams, it does not just print a tail.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines_of(&seen.lock().unwrap(), "h1 | tick-").len() < 3 {
        assert!(Instant::now() < deadline, "no stream of ticks: {}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = format!("pgrep -f '[d]ocker logs --follow --tail 1 {id}' || true");
    assert_ne!(fleet.on_host(1, &running).trim(), "", "docker logs runs on the target while following");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ferry logs --follow still runs 15 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""), "{}", seen.lock().unwrap());
    // ferry waited for the remote command's end: nothing follows the logs any more.
    assert_eq!(fleet.on_host(1, &running).trim(), "", "a docker logs outlived ferry on the target");
    let text = seen.lock().unwrap().clone();
    let ticks: Vec<u64> = lines_of(&text, "h1 | tick-")
        .iter()
        .map(|l| l.trim_start_matches("h1 | tick-").parse().unwrap())
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "one line per tick, in order: {text}");
    assert_eq!(text.lines().count(), ticks.len(), "{text}");
}

#[test]
fn exec_fans_out_like_run_passes_argv_without_a_shell_and_is_audited() {
    let fleet = deployed("l-exec", 18222, &[1, 2], CHATTY);
    // Several targets and no terminal: a confirmation is needed.
    fleet
        .ferry(&["exec", "web", "--env", "l-exec", "--", "true"])
        .code(4)
        .stderr(
            "error: refusing to run `true` in the web containers of 2 targets without a confirmation: \
             stdin is not a terminal\n  = help: pass --yes (cron, CI), or run it from a terminal and answer the prompt\n",
        )
        .run();
    let out = fleet
        .ferry(&[
            "exec",
            "web",
            "--env",
            "l-exec",
            "--yes",
            "--output",
            "plain",
            "--",
            "sh",
            "-c",
            "echo \"token=$TOKEN\"; printf '%s|' \"$@\"; echo; echo err >&2; exit 3",
            "sh",
            "a b",
            "$HOME",
            "it's",
        ])
        .code(1)
        .stdout_contains("\nTARGET  STATUS  EXIT    TIME")
        .run();
    for n in [1, 2] {
        let mut lines = lines_of(&out.stdout, &format!("h{n} | "));
        lines.sort_unstable();
        assert_eq!(
            lines,
            [format!("h{n} | a b|$HOME|it's|"), format!("h{n} | err"), format!("h{n} | token=***")],
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains(&format!("\nh{n}      failed  exit 3  ")), "{}", out.stdout);
    }
    let records = fleet.audit();
    let exec: Vec<&serde_json::Value> = records.iter().filter(|r| r["command"] == "exec").collect();
    let kinds: Vec<&str> = exec.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run_started", "target_outcome", "target_outcome", "run_finished"], "{exec:?}");
    assert_eq!(exec[0]["app"], "web");
    assert_eq!(exec[0]["environment"], "l-exec");
    assert_eq!(
        exec[0]["detail"]["command_line"],
        "sh -c 'echo \"token=$TOKEN\"; printf '\\''%s|'\\'' \"$@\"; echo; echo err >&2; exit 3' sh 'a b' '$HOME' 'it'\\''s'"
    );
    for outcome in &exec[1..3] {
        assert_eq!(outcome["detail"]["exit_code"], 3, "{outcome}");
        assert!(outcome["detail"]["tail"].to_string().contains("token=***"), "{outcome}");
    }
    assert_eq!((exec[3]["detail"]["ok"].as_u64(), exec[3]["detail"]["failed"].as_u64()), (Some(0), Some(2)));
    assert!(!fleet.audit_text().contains(TOKEN));
    // The target's own mirror line says what ran there.
    let mirror = fleet.on_host(1, "cat /root/.ferry/audit.log");
    assert!(mirror.lines().any(|l| l.contains("ferry exec ") && l.ends_with("-> exit 3")), "{mirror}");
    // A target whose container is gone fails alone, with Docker's 125 and a message.
    fleet.on_host(2, "docker rm -f web-l-exec");
    let out = fleet
        .ferry(&["exec", "web", "--env", "l-exec", "--yes", "--output", "plain", "--", "true"])
        .code(1)
        .stdout_contains("h2 | no running container of app web in environment l-exec on this target\n")
        .run();
    assert!(out.stdout.contains("\nh1      ok      exit 0    "), "{}", out.stdout);
    assert!(out.stdout.contains("\nh2      failed  exit 125  "), "{}", out.stdout);
}

/// A pseudo-terminal pair: the master end to type into and read from, the slave end for ferry.
fn pty(cols: u16, rows: u16) -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new().read(true).write(true).open(name.to_str().unwrap()).unwrap();
    let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&slave, size).unwrap();
    (std::fs::File::from(master), slave)
}

#[test]
fn exec_on_one_target_from_a_terminal_is_an_interactive_shell_through_a_pty() {
    let fleet = deployed("l-pty", 18223, &[1], CHATTY);
    let (mut master, slave) = pty(132, 41);
    let before = rustix::termios::tcgetattr(&slave).unwrap();
    let mut child = Command::new(crate::test::binary())
        .args(["-i", &fleet.inventory(), "exec", "web", "--env", "l-pty", "--", "sh"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("FERRY_STATE_DIR", fleet.state())
        .env("WEB_TOKEN", TOKEN)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    {
        let (screen, mut master) = (Arc::clone(&screen), master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !screen.lock().unwrap().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} on the screen: {:?}", screen.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // busybox sh's prompt, then each answer: the arithmetic, a PTY in the container, the size.
    wait_for("# ");
    master.write_all(b"echo $((6*7))\r").unwrap();
    wait_for("\n42\r\n");
    master.write_all(b"tty; stty size\r").unwrap();
    wait_for("/dev/pts/");
    wait_for("41 132");
    master.write_all(b"exit 7\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ferry exec still runs after `exit`: {:?}",
            screen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(7), "the command's exit code: {:?}", screen.lock().unwrap());
    // The terminal is as ferry found it (raw mode undone).
    let after = rustix::termios::tcgetattr(&slave).unwrap();
    assert_eq!(after.local_modes, before.local_modes);
    assert_eq!(after.input_modes, before.input_modes);
    assert_eq!(after.output_modes, before.output_modes);
    assert!(!screen.lock().unwrap().contains(TOKEN));
    let records = fleet.audit();
    let exec: Vec<&serde_json::Value> = records.iter().filter(|r| r["command"] == "exec").collect();
    let kinds: Vec<&str> = exec.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run_started", "target_outcome", "run_finished"], "{exec:?}");
    assert_eq!(exec[0]["detail"]["command_line"], "sh");
    assert_eq!(exec[1]["detail"]["exit_code"], 7);
}

/// A follow whose reader went away ends (review of issue #14; environment `rl-pipe`, port
/// 18255): `ferry logs --follow | grep -m1 ERROR` must return once grep has its line. Before,
/// ferry ignored the failed writes and followed on, with `docker logs` running on the target,
/// until someone killed it.
#[test]
fn logs_follow_ends_when_nothing_reads_its_output_and_stops_the_remote_docker_logs() {
    let fleet = deployed("rl-pipe", 18255, &[1], TICKING);
    let id = fleet.id(1);
    let mut child = fleet.spawn(&["logs", "web", "--env", "rl-pipe", "--follow", "--tail", "1"], TOKEN);
    let mut stdout = child.stdout.take().unwrap();
    // Read up to the second tick, then close the pipe, as `grep -m1` does.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines_of(&seen, "h1 | tick-").len() < 2 {
        assert!(Instant::now() < deadline, "no stream of ticks: {seen}");
        let mut buf = [0u8; 4096];
        let n = stdout.read(&mut buf).unwrap();
        assert_ne!(n, 0, "ferry closed its stdout: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let running = format!("pgrep -f '[d]ocker logs --follow --tail 1 {id}' || true");
    assert_ne!(fleet.on_host(1, &running).trim(), "", "docker logs runs on the target while following");
    drop(stdout);
    // The next tick fails to be written; the follow then stops as after Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry logs --follow still runs 20 s after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""));
    assert_eq!(fleet.on_host(1, &running).trim(), "", "a docker logs outlived ferry on the target");
}
