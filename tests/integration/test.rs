//! A builder for CLI tests, after `just`'s `Test`: files in a temp folder, arguments and
//! environment, then what the run must do. The exit code is always checked (0 unless told
//! otherwise), and so is each output stream, whole: a stream is expected to be empty unless the
//! test says what it holds. Output that is not stable text (timings, ids, the machine's paths)
//! is checked another way that the test names explicitly: pieces it must contain, JSON it must
//! parse as, or an insta snapshot. `Test` is `#[must_use]`, so a test that builds a run and
//! forgets `.run()` does not compile under `clippy -D warnings`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small inventory every test starts from: two environments, three targets, one app with
/// env, a secret and a health check. Tests edit it with [`Test::replace`].
pub const INVENTORY: &str = r#"[defaults]
user = "deploy"
vars = { log_level = "debug" }

[environments.staging]
targets = ["stg-*"]
vars = { log_level = "info" }

[environments.prod]
targets = ["prod-1", "prod-2"]
rollout = { batch = 1, max_failures = 0 }

[targets.stg-1]
host = "10.0.0.11"
roles = ["web"]

[targets.prod-1]
host = "10.0.1.11"
roles = ["web"]

[targets.prod-2]
host = "10.0.1.12"
roles = ["web"]
vars = { port = 9090 }

[feeds.main]
url = "http://127.0.0.1:5000"

[apps.web]
feed = "main"
image = "acme/web"
template = "web.j2"
roles = ["web"]
vars = { port = 8080 }
env = { LOG_LEVEL = "{{ log_level }}" }
secrets = { DATABASE_URL = { env = "WEB_DATABASE_URL" } }
health = { cmd = "wget -qO- http://127.0.0.1:{{ port }}/", timeout = "30s" }
"#;

/// The template that goes with [`INVENTORY`].
pub const TEMPLATE: &str = "docker run --restart unless-stopped\n  -p {{ port }}:8080\n  {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}\n  {{ image }}\n";

/// The secret value tests use; it must never appear in any output.
pub const SECRET: &str = "pw-Zq7!x9-never-shown";

/// One CLI test.
#[must_use = "a Test checks nothing until .run()"]
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    stdout: Expect,
    stderr: Expect,
    /// Values that must appear in neither stream: [`SECRET`] and any the test adds.
    hidden: Vec<String>,
}

/// What one output stream must hold.
#[derive(Debug)]
enum Expect {
    /// Exactly this text; the default is "", nothing printed.
    Exactly(String),
    /// Each of these pieces somewhere, for text with parts that change from run to run.
    Contains(Vec<String>),
    /// One JSON document (`--output json`), whose fields the test reads with [`Output::json`].
    Json,
    /// One JSON document per line (event streams), read with [`Output::json_lines`].
    JsonLines,
    /// Whole, against an insta snapshot that the test takes of the text [`Test::run`] returns.
    Snapshot,
}

impl Expect {
    /// Why `text` does not meet this expectation, if it does not.
    fn mismatch(&self, text: &str) -> Option<String> {
        match self {
            Expect::Exactly(expected) if text != expected => {
                Some(format!("expected exactly:\n{expected}--- (end)"))
            }
            Expect::Contains(pieces) => {
                let missing: Vec<&String> = pieces.iter().filter(|p| !text.contains(p.as_str())).collect();
                (!missing.is_empty()).then(|| format!("missing {missing:?}"))
            }
            Expect::Json => serde_json::from_str::<serde_json::Value>(text)
                .err()
                .map(|e| format!("not one JSON document: {e}")),
            Expect::JsonLines => text.lines().find_map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .err()
                    .map(|e| format!("not JSON: {line}: {e}"))
            }),
            Expect::Exactly(_) | Expect::Snapshot => None,
        }
    }

    /// Adds a piece the stream must contain; a stream expected whole cannot also be in pieces.
    fn add_piece(&mut self, piece: &str) {
        match self {
            Expect::Contains(pieces) => pieces.push(piece.into()),
            Expect::Exactly(text) if text.is_empty() => *self = Expect::Contains(vec![piece.into()]),
            other => panic!("test bug: {other:?} and a piece {piece:?} for one stream"),
        }
    }
}

/// What a run printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Standard output as one JSON document (checked by [`Test::stdout_json`]).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", self.stdout))
    }

    /// Standard output as JSON lines (checked by [`Test::stdout_json_lines`]).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }
}

impl Test {
    /// A folder with `ferry.toml` = [`INVENTORY`] and `templates/web.j2` = [`TEMPLATE`], and the
    /// test secret set. Expects exit 0 and nothing printed unless told otherwise.
    pub fn new() -> Test {
        Test::bare()
            .write("ferry.toml", INVENTORY)
            .write("templates/web.j2", TEMPLATE)
            .env("WEB_DATABASE_URL", SECRET)
    }

    /// An empty folder: no inventory, no secret (for tests that bring their own, like the lab's).
    pub fn bare() -> Test {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Test {
            dir,
            args: Vec::new(),
            env: Vec::new(),
            code: 0,
            stdout: Expect::Exactly(String::new()),
            stderr: Expect::Exactly(String::new()),
            hidden: vec![SECRET.to_string()],
        }
    }

    /// Writes a file (creating folders) relative to the test folder.
    pub fn write(self, path: &str, text: &str) -> Test {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        std::fs::write(&full, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
        self
    }

    /// Replaces `from` with `to` in a file written before; panics when `from` is not there, so a
    /// test can never silently test the unmodified fixture.
    pub fn replace(self, path: &str, from: &str, to: &str) -> Test {
        let full = self.dir.path().join(path);
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {path}: {e}"));
        assert!(text.contains(from), "{path} does not contain {from:?}");
        let text = text.replacen(from, to, 1);
        self.write(path, &text)
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Test {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an environment variable set before.
    pub fn unset(mut self, key: &str) -> Test {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// The exit code the run must end with (0 unless told).
    pub fn code(mut self, code: i32) -> Test {
        self.code = code;
        self
    }

    /// Standard output must be exactly `text` (it must be empty unless told otherwise).
    pub fn stdout(mut self, text: &str) -> Test {
        self.stdout = Expect::Exactly(text.into());
        self
    }

    /// Standard error must be exactly `text` (it must be empty unless told otherwise).
    pub fn stderr(mut self, text: &str) -> Test {
        self.stderr = Expect::Exactly(text.into());
        self
    }

    /// Standard output must contain `piece` (and every other piece given): for output that
    /// also holds timings, ids or the machine's paths, so cannot be expected whole.
    pub fn stdout_contains(mut self, piece: &str) -> Test {
        self.stdout.add_piece(piece);
        self
    }

    /// Standard error must contain `piece` (and every other piece given); see
    /// [`Test::stdout_contains`].
    pub fn stderr_contains(mut self, piece: &str) -> Test {
        self.stderr.add_piece(piece);
        self
    }

    /// Standard output must be one JSON document; the test checks its fields.
    pub fn stdout_json(mut self) -> Test {
        self.stdout = Expect::Json;
        self
    }

    /// Standard output must be JSON lines; the test checks the events.
    pub fn stdout_json_lines(mut self) -> Test {
        self.stdout = Expect::JsonLines;
        self
    }

    /// Standard output is checked whole by the caller's insta snapshot of [`Output::stdout`].
    pub fn stdout_snapshot(mut self) -> Test {
        self.stdout = Expect::Snapshot;
        self
    }

    /// Standard error is checked whole by the caller's insta snapshot of [`Output::stderr`].
    pub fn stderr_snapshot(mut self) -> Test {
        self.stderr = Expect::Snapshot;
        self
    }

    /// `value` (another secret) must appear in neither stream, like [`SECRET`].
    // The lab tests' deploy tokens and registry passwords are its only users so far.
    #[cfg_attr(not(feature = "lab"), allow(dead_code))]
    pub fn never_prints(mut self, value: &str) -> Test {
        self.hidden.push(value.into());
        self
    }

    /// Keeps the folder (and the files written so far) beyond this test run: for tests that run
    /// several commands against one inventory.
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// The arguments so far, as one line (to name a run in a message).
    pub fn command_line(&self) -> String {
        self.args.join(" ")
    }

    /// The test folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ferry`, checks the exit code and both streams, and that no secret is in either;
    /// returns what it printed.
    pub fn run(self) -> Output {
        let dir = self.dir.path().to_path_buf();
        self.run_in(&dir)
    }

    /// [`Test::run`] with `folder` (which the caller keeps) as the working folder instead of the
    /// test's own: for a command that writes files the test then reads, or a second command.
    pub fn run_in(self, folder: &Path) -> Output {
        let output = Command::new(binary())
            .args(&self.args)
            .current_dir(folder)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("cannot run ferry: {e}"));
        let out = Output {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let mut problems = Vec::new();
        if output.status.code() != Some(self.code) {
            problems.push(format!("exited {}, expected {}", output.status, self.code));
        }
        for (name, expect, text) in
            [("stdout", &self.stdout, &out.stdout), ("stderr", &self.stderr, &out.stderr)]
        {
            if let Some(mismatch) = expect.mismatch(text) {
                problems.push(format!("{name}: {mismatch}"));
            }
            for value in self.hidden.iter().filter(|v| text.contains(v.as_str())) {
                problems.push(format!("{name} shows the secret {value:?}"));
            }
        }
        assert!(
            problems.is_empty(),
            "ferry {:?}:\n{}\n--- stdout:\n{}--- stderr:\n{}---",
            self.args,
            problems.join("\n"),
            out.stdout,
            out.stderr
        );
        out
    }
}

/// The `ferry` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// The repository root (for the example inventory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
