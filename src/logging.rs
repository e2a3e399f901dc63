//! Debug logs on stderr: `-v` (info), `-vv` (debug), `-vvv` (trace), or `FERRY_LOG=debug`.
//!
//! Logs go through `tracing`. Secrets are [`crate::secret::Secret`]s, whose `Debug` is `***`, so
//! even a trace-level dump of a resolution shows no value.

use tracing::Level;

/// Installs the stderr logger for the given `-v` count (none when zero and `FERRY_LOG` unset).
pub fn init(verbosity: u8) {
    let from_env = std::env::var("FERRY_LOG").ok().and_then(|v| match v.to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    });
    let level = match verbosity {
        0 => from_env,
        1 => Some(Level::INFO),
        2 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    };
    if let Some(level) = level {
        // A second init (tests calling `cli::run` twice) keeps the first logger; that is fine.
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init();
    }
}
