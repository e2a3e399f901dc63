//! The one error type every command returns, and its exit code.
//!
//! Stages have their own error enums (`InventoryError`, `RenderError`, ...); this type wraps them
//! so `main` can print any error the same way and map it to the documented exit code.

use serde::Serialize;

use crate::diagnostic::Diagnostic;
use crate::inventory::InventoryError;
use crate::render::RenderError;
use crate::select::SelectError;
use crate::vars::VarsError;

/// Exit code: invalid input (usage, inventory, template, unknown app or environment).
pub const EXIT_INVALID: i32 = 2;
/// Exit code: the environment is locked by someone else (and `--lock-wait` ran out).
pub const EXIT_LOCKED: i32 = 3;
/// Exit code: refused by a gate (an unconfirmed prompt, an untrusted host key, the lifecycle).
pub const EXIT_REFUSED: i32 = 4;

/// Any error a ferry command can end with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line or lookup problem that is not in a file (unknown app, no inventory, ...).
    #[error("{0}")]
    Input(Diagnostic),
    /// The inventory is unreadable or invalid.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// Target selection failed.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// Variables or secrets could not be resolved.
    #[error(transparent)]
    Vars(#[from] VarsError),
    /// Templates failed to compile or render (all problems found).
    #[error("{}", render_errors(.0))]
    Render(Vec<RenderError>),
    /// Several independent problems (e.g. `ferry check` over every app and environment).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n"))]
    Multiple(Vec<Error>),
    /// The audit log could not be written: nothing is reported done that is not on record.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The records could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An environment lock could not be taken (boxed: it carries the holder's details).
    #[error(transparent)]
    Lock(Box<crate::lock::LockError>),
    /// A gate refused: an unconfirmed prompt, a lifecycle rule (exit 4; nothing changed).
    #[error("{0}")]
    Refused(Diagnostic),
    /// The command could not do its work, for a reason outside the input (exit 1).
    #[error("{0}")]
    Failed(Diagnostic),
    /// Writing output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

fn render_errors(errors: &[RenderError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n")
}

impl From<RenderError> for Error {
    fn from(e: RenderError) -> Self {
        Error::Render(vec![e])
    }
}

impl From<crate::lock::LockError> for Error {
    fn from(e: crate::lock::LockError) -> Self {
        Error::Lock(Box::new(e))
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Error::Input(d)
    }
}

impl Error {
    /// The process exit code for this error (see the README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Inventory(_) | Error::Select(_) | Error::Vars(_) | Error::Render(_) => {
                EXIT_INVALID
            }
            Error::Multiple(errors) => errors.iter().map(Error::exit_code).max().unwrap_or(EXIT_INVALID),
            Error::Lock(e) if matches!(**e, crate::lock::LockError::Held { .. }) => EXIT_LOCKED,
            Error::Refused(_) | Error::Audit(crate::audit::AuditError::Broken { .. }) => EXIT_REFUSED,
            Error::Store(e) => e.exit_code(),
            Error::Output(_) | Error::Audit(_) | Error::Lock(_) | Error::Failed(_) => 1,
        }
    }

    /// The error as diagnostics, for JSON output.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let one = |d: &Diagnostic| vec![d.clone()];
        match self {
            Error::Input(d) | Error::Refused(d) | Error::Failed(d) => one(d),
            Error::Inventory(InventoryError::Invalid(ds)) => ds.clone(),
            Error::Select(SelectError::LimitMatchesNothing(d)) => one(d),
            Error::Vars(VarsError::MissingSecret(d) | VarsError::InvalidSecret(d)) => one(d),
            Error::Render(errors) => errors
                .iter()
                .map(|e| match e {
                    RenderError::Template(d) | RenderError::Command(d) => d.clone(),
                    other => Diagnostic::new(other.to_string()),
                })
                .collect(),
            Error::Multiple(errors) => errors.iter().flat_map(Error::diagnostics).collect(),
            other => vec![Diagnostic::new(other.to_string())],
        }
    }

    /// The error as one JSON object (`--output json`).
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Json {
            r#type: &'static str,
            exit_code: i32,
            errors: Vec<Diagnostic>,
        }
        serde_json::to_value(Json {
            r#type: "error",
            exit_code: self.exit_code(),
            errors: self.diagnostics(),
        })
        .unwrap_or_default()
    }
}
