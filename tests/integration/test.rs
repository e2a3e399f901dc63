//! A builder for CLI tests: files in a temp folder, arguments, environment, expected exit code.

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
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
}

/// What a run printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Test {
    /// A folder with `ferry.toml` = [`INVENTORY`] and `templates/web.j2` = [`TEMPLATE`], and the
    /// test secret set. Expects exit 0 unless told otherwise.
    pub fn new() -> Test {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let test = Test { dir, args: Vec::new(), env: Vec::new(), code: 0 };
        test.write("ferry.toml", INVENTORY)
            .write("templates/web.j2", TEMPLATE)
            .env("WEB_DATABASE_URL", SECRET)
    }

    /// An empty folder: no inventory, no secret (for tests that bring their own, like the lab's).
    pub fn bare() -> Test {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Test { dir, args: Vec::new(), env: Vec::new(), code: 0 }
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

    /// The exit code the run must end with.
    pub fn code(mut self, code: i32) -> Test {
        self.code = code;
        self
    }

    /// Keeps the folder (and the files written so far) beyond this test run: for tests that run
    /// several commands against one inventory.
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// The test folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ferry` and checks the exit code; returns what it printed.
    pub fn run(self) -> Output {
        let output = Command::new(binary())
            .args(&self.args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("cannot run ferry: {e}"));
        let out = Output {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_eq!(
            output.status.code(),
            Some(self.code),
            "ferry {:?} exited {:?}, expected {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            output.status.code(),
            self.code,
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
