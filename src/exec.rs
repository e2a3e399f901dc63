//! What running one command on one target produces, whatever the transport.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives output as it arrives (not line-split; see [`crate::report::LineSplitter`]).
pub trait OutputSink: Send {
    /// A chunk of output.
    fn output(&mut self, stream: Stream, data: &[u8]);
}

/// Drops all output (ferry's own bookkeeping commands on targets).
pub struct Discard;

impl OutputSink for Discard {
    fn output(&mut self, _stream: Stream, _data: &[u8]) {}
}

/// Keeps what a command prints (for ferry's own commands whose answer it reads).
#[derive(Debug, Default)]
pub struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Capture {
    /// What was printed on stdout, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// What was printed on stderr, lossily decoded and trimmed (for error messages).
    pub fn errors(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

impl OutputSink for Capture {
    fn output(&mut self, stream: Stream, data: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(data),
            // Bounded: an error message is read, not a log.
            Stream::Stderr if self.stderr.len() < 64 * 1024 => self.stderr.extend_from_slice(data),
            Stream::Stderr => {}
        }
    }
}

/// How a command ended, as the target reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by this signal (e.g. `KILL`, `TERM`).
    Signal(String),
}

impl ExitStatus {
    /// True only for exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by SIG{s}"),
        }
    }
}

/// Why a command has no exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The connection or channel went away before an exit status arrived.
    #[error("{0}")]
    Lost(String),
    /// The command ran past its deadline; it was signalled and abandoned.
    #[error("still running after {}: killed", crate::duration::format(*.0))]
    Deadline(Duration),
    /// A local command could not be started.
    #[error("cannot start the command: {0}")]
    Spawn(String),
}
