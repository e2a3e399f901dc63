//! Secret values: resolved from the runner's environment or files, impossible to print.
//!
//! [`Secret`] has no `Display`, no `Serialize` and no conversion into a template value; its
//! `Debug` prints `***`. The only way to its bytes is [`Secret::expose`], which the env-file
//! writer and the config hash call. So a secret cannot leak through a `{:?}` in a log line, a
//! JSON output or a template by accident: leaking it takes a visible `expose()`.

use std::fmt;

/// The text that stands for a secret wherever one would otherwise be shown.
pub const MASK: &str = "***";

/// A secret value. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself: only for the env file and keyed hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Replaces every occurrence of a secret value in `text` by `***` (defense in depth for text
/// that came back from a target, or any text a template author could have built from one).
pub fn mask<'a>(text: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if !secret.0.is_empty() && out.contains(&secret.0) {
            out = out.replace(&secret.0, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", vec![s.clone()]), "[***]");
        assert_eq!(mask("pw=hunter2;", [&s]), "pw=***;");
    }
}
