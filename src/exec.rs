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

    /// Resolves when the sink can take more output. Transports await it after each chunk, so a
    /// target that prints faster than ferry shows its output waits (the pipe or the SSH window
    /// holds it back) instead of piling up in ferry's memory. Most sinks are always ready.
    fn ready(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

/// Drops all output (ferry's own bookkeeping commands on targets).
pub struct Discard;

impl OutputSink for Discard {
    fn output(&mut self, _stream: Stream, _data: &[u8]) {}
}

/// Keeps what a command prints (for ferry's own commands whose answer it reads), up to
/// [`CAPTURE_STDOUT_BYTES`] of stdout and [`CAPTURE_STDERR_BYTES`] of stderr: the answers ferry
/// reads (`docker inspect`, a lock file, the last log lines) are far smaller, and a target that
/// prints more must not grow ferry.
#[derive(Debug, Default)]
pub struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

/// The most stdout a [`Capture`] keeps.
pub const CAPTURE_STDOUT_BYTES: usize = 8 * 1024 * 1024;

/// The most stderr a [`Capture`] keeps: an error message is read, not a log.
pub const CAPTURE_STDERR_BYTES: usize = 64 * 1024;

impl Capture {
    /// What was printed on stdout, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Whether more was printed than kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// What was printed on stderr, lossily decoded and trimmed (for error messages).
    pub fn errors(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

impl OutputSink for Capture {
    fn output(&mut self, stream: Stream, data: &[u8]) {
        let (kept, limit) = match stream {
            Stream::Stdout => (&mut self.stdout, CAPTURE_STDOUT_BYTES),
            Stream::Stderr => (&mut self.stderr, CAPTURE_STDERR_BYTES),
        };
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }
}

/// The local terminal an interactive command runs on (`ferry exec` with one target): its
/// type and size for the remote PTY, later sizes, and the bytes typed and shown.
pub struct Terminal<'a> {
    /// `$TERM` (the remote PTY's terminal type).
    pub term: String,
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// New sizes (columns, rows) as the local window is resized.
    pub resized: tokio::sync::mpsc::UnboundedReceiver<(u32, u32)>,
    /// What the user types (the local terminal, in raw mode).
    pub input: &'a mut (dyn tokio::io::AsyncRead + Unpin + Send),
    /// Where the command's output goes (the local terminal).
    pub output: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_keeps_at_most_its_caps() {
        let mut capture = Capture::default();
        let chunk = vec![b'y'; 1024 * 1024];
        for _ in 0..20 {
            capture.output(Stream::Stdout, &chunk);
            capture.output(Stream::Stderr, &chunk);
        }
        assert_eq!(capture.stdout.len(), CAPTURE_STDOUT_BYTES);
        assert_eq!(capture.stderr.len(), CAPTURE_STDERR_BYTES);
        assert!(capture.truncated());
        let mut small = Capture::default();
        small.output(Stream::Stdout, b"ok\n");
        assert_eq!((small.text().as_str(), small.truncated()), ("ok\n", false));
    }
}
