//! A scripted [`Host`] for unit tests.
//!
//! It stands in for the faults a real peer cannot produce on demand: a `docker` step that fails
//! exactly when a test wants it to, a connection that drops right after the old container was
//! stopped, a lock command that fails on the third of five targets. The lab tests (real sshd,
//! real dockerd) still prove the real thing; this proves what ferry does with each answer.
//!
//! It answers a command with the first rule whose pattern occurs in the command's text, and
//! records every command it got (with its stdin), so a test can assert the exact sequence of
//! steps. Once it has answered "connection lost", every later command is lost too, as on a
//! real link; once it has stalled, every later command (and the close) hangs.

use std::sync::Mutex;
use std::time::Duration;

use super::{BoxFuture, Host};
use crate::exec::{ExecError, ExitStatus, OutputSink, Stream};

/// What the fake answers to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The command ran and exited with `code`, printing `stdout` and `stderr`.
    Exit {
        /// Exit code.
        code: u32,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The connection went away before an exit status arrived (and stays away).
    Lost,
    /// The link went silent: no answer ever comes, not even a reset (packets silently dropped,
    /// under an SSH session that is itself stuck), and every later command and the close hang
    /// too. The fake ignores deadlines, as such a session does: what ends the wait is up to
    /// the layers above. A real peer cannot be made to do this on demand, hence the fake.
    Stall,
}

impl Reply {
    /// Exit 0, printing `stdout`.
    pub fn ok(stdout: &str) -> Reply {
        Reply::Exit { code: 0, stdout: stdout.to_string(), stderr: String::new() }
    }

    /// Exit `code`, printing `stderr`.
    pub fn fail(code: u32, stderr: &str) -> Reply {
        Reply::Exit { code, stdout: String::new(), stderr: stderr.to_string() }
    }
}

/// One command the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The command line.
    pub command: String,
    /// What was sent to its stdin.
    pub stdin: Option<Vec<u8>>,
}

struct Rule {
    pattern: String,
    reply: Reply,
    /// How many more times the rule answers (`None`: always).
    uses: Option<usize>,
}

/// A host that answers from a script; see the module docs.
pub struct FakeHost {
    name: String,
    local: bool,
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<Vec<Call>>,
    lost: Mutex<bool>,
    stalled: Mutex<bool>,
    closed: Mutex<bool>,
}

impl FakeHost {
    /// A fake target called `name` with no rules: every command fails with exit 127 until a
    /// rule answers it, so an unscripted step shows up as a failure, not a silent success.
    pub fn new(name: &str) -> FakeHost {
        FakeHost {
            name: name.to_string(),
            local: false,
            rules: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            lost: Mutex::new(false),
            stalled: Mutex::new(false),
            closed: Mutex::new(false),
        }
    }

    /// Marks it as the runner itself (`transport = "local"`).
    pub fn local(mut self) -> FakeHost {
        self.local = true;
        self
    }

    /// Answers commands containing `pattern` with `reply` (the first matching rule wins; an
    /// empty pattern matches everything).
    pub fn on(self, pattern: &str, reply: Reply) -> FakeHost {
        self.push(pattern, reply, None);
        self
    }

    /// Like [`FakeHost::on`], for the next `times` matching commands only.
    pub fn on_times(self, pattern: &str, times: usize, reply: Reply) -> FakeHost {
        self.push(pattern, reply, Some(times));
        self
    }

    fn push(&self, pattern: &str, reply: Reply, uses: Option<usize>) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule { pattern: pattern.to_string(), reply, uses });
        }
    }

    /// Every command received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The commands received so far that contain `pattern`.
    pub fn ran(&self, pattern: &str) -> Vec<String> {
        self.calls().into_iter().map(|c| c.command).filter(|c| c.contains(pattern)).collect()
    }

    /// Whether [`Host::close`] was called.
    pub fn closed(&self) -> bool {
        self.closed.lock().map(|c| *c).unwrap_or(false)
    }

    fn answer(&self, command: &str) -> Reply {
        if self.stalled() {
            return Reply::Stall;
        }
        if self.lost.lock().map(|l| *l).unwrap_or(true) {
            return Reply::Lost;
        }
        let Ok(mut rules) = self.rules.lock() else { return Reply::Lost };
        let found = rules.iter_mut().find(|r| command.contains(&r.pattern) && r.uses != Some(0));
        let reply = match found {
            Some(rule) => {
                rule.uses = rule.uses.map(|n| n - 1);
                rule.reply.clone()
            }
            None => Reply::fail(127, &format!("fake host {}: no rule for {command:?}", self.name)),
        };
        if reply == Reply::Lost
            && let Ok(mut lost) = self.lost.lock()
        {
            *lost = true;
        }
        if reply == Reply::Stall
            && let Ok(mut stalled) = self.stalled.lock()
        {
            *stalled = true;
        }
        reply
    }

    fn stalled(&self) -> bool {
        self.stalled.lock().map(|s| *s).unwrap_or(false)
    }
}

impl Host for FakeHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("{} (fake)", self.name)
    }

    fn is_local(&self) -> bool {
        self.local
    }

    fn exec<'a>(
        &'a self,
        command: &'a str,
        stdin: Option<&'a [u8]>,
        _deadline: Option<Duration>,
        sink: &'a mut dyn OutputSink,
    ) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(Call { command: command.to_string(), stdin: stdin.map(<[u8]>::to_vec) });
            }
            // Let other tasks run, as a real round trip would.
            tokio::task::yield_now().await;
            match self.answer(command) {
                Reply::Exit { code, stdout, stderr } => {
                    sink.output(Stream::Stdout, stdout.as_bytes());
                    sink.output(Stream::Stderr, stderr.as_bytes());
                    Ok(ExitStatus::Code(code))
                }
                Reply::Lost => Err(ExecError::Lost(format!("fake host {}: connection lost", self.name))),
                Reply::Stall => std::future::pending().await,
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(mut closed) = self.closed.lock() {
                *closed = true;
            }
            if self.stalled() {
                std::future::pending::<()>().await;
            }
        })
    }
}
