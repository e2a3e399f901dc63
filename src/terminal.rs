//! The local terminal of an interactive `ferry exec`: raw mode while the session lasts, its
//! size, and its resizes.
//!
//! In raw mode every key goes to the remote command as typed (Ctrl-C included: it interrupts
//! the command in the container, not ferry), and nothing is echoed locally: the container's
//! terminal echoes. The terminal's previous modes come back when the [`RawMode`] guard is
//! dropped, which happens on every way out of the session (its end, an error, a signal that
//! ends it, a panic that unwinds), so a shell is never left without echo.

use std::io::IsTerminal;

use rustix::termios::{self, OptionalActions, Termios};

/// Whether stdin and stdout are both a terminal (an interactive session is possible).
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The terminal's size as (columns, rows); 80×24 when it cannot be read.
pub fn size() -> (u32, u32) {
    match termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (u32::from(w.ws_col), u32::from(w.ws_row)),
        _ => (80, 24),
    }
}

/// `$TERM`, or `xterm` when unset (what the remote PTY claims to be).
pub fn term() -> String {
    std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "xterm".into())
}

/// Sends the terminal's new size on every SIGWINCH until the receiver is dropped.
pub fn resizes() -> tokio::sync::mpsc::UnboundedReceiver<(u32, u32)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
        while winch.recv().await.is_some() {
            if tx.send(size()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Raw mode on stdin while this lives; the saved modes are restored on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin into raw mode.
    pub fn enter() -> std::io::Result<RawMode> {
        let saved = termios::tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Flush: keys typed after the session ended are not the next shell command's.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Flush, &self.saved);
    }
}
