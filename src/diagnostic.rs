//! Error messages that point into a file.
//!
//! Every bad input ferry reports names the file, the line and the column, shows the offending
//! source line with a caret under it, and (when a valid name is close) suggests it. Stages build
//! [`Diagnostic`]s from byte spans; this module turns spans into line and column and renders the
//! snippet, so the look of an error is decided in one place.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

/// A file's text with an index of line starts, so byte spans become line and column cheaply.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (or as derived from it), used verbatim in messages.
    pub path: PathBuf,
    /// The whole text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Indexes `text`, read from `path`.
    pub fn new(path: impl Into<PathBuf>, text: String) -> Arc<Self> {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Arc::new(SourceFile { path: path.into(), text, line_starts })
    }

    /// The 1-based line of byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The location of byte `span` (clamped to the text) in this file.
    pub fn locate(&self, span: Range<usize>) -> Location {
        let start = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let end = floor_char_boundary(&self.text, span.end.clamp(start, self.text.len()));
        let line_index = self.line_starts.partition_point(|&s| s <= start).saturating_sub(1);
        let line_start = self.line_starts[line_index];
        let line_end = self.text[line_start..].find('\n').map_or(self.text.len(), |i| line_start + i);
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let column = self.text[line_start..start].chars().count() + 1;
        let width = self.text[start..end.min(line_end).max(start)].chars().count().max(1);
        Location {
            path: self.path.clone(),
            line: line_index + 1,
            column,
            source_line: Some(line_text.to_string()),
            width,
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// A place in a file: 1-based line and column, and the line's text for the snippet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// The text of that line, shown under the message.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// How many characters the caret underlines.
    #[serde(skip)]
    pub width: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// One error (or warning) with an optional place, snippet and hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where, when the problem is in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Box<Location>>,
    /// What to do about it (often a "did you mean").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with no location yet.
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), location: None, help: None }
    }

    /// Points the diagnostic at `span` in `file`.
    pub fn at(mut self, file: &SourceFile, span: Range<usize>) -> Self {
        self.location = Some(Box::new(file.locate(span)));
        self
    }

    /// Points the diagnostic at an already computed location.
    pub fn at_location(mut self, location: Location) -> Self {
        self.location = Some(Box::new(location));
        self
    }

    /// Adds a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a hint only when there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    /// Renders with a severity word (`error`, `warning`), rustc-style.
    pub fn render(&self, severity: &str) -> String {
        let mut out = format!("{severity}: {}\n", self.message);
        if let Some(loc) = &self.location {
            let gutter = loc.line.to_string().len();
            let pad = " ".repeat(gutter);
            out += &format!("{pad}--> {loc}\n");
            if let Some(line) = &loc.source_line {
                let caret_pad: String =
                    line.chars().take(loc.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                out += &format!("{pad} |\n{} | {line}\n", loc.line);
                out += &format!("{pad} | {caret_pad}{}\n", "^".repeat(loc.width));
            }
        }
        if let Some(help) = &self.help {
            out += &format!("  = help: {help}\n");
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render("error").trim_end())
    }
}

/// `did you mean "x"?` for the candidate closest to `wanted`, when it is close enough to be a
/// plausible typo (edit distance at most a third of the name, at least 1).
///
/// The distance is optimal string alignment over characters, where swapping two neighbours
/// costs one edit, since `prdo` for `prod` is the commonest typo of all.
pub fn did_you_mean<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (wanted.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(wanted, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, c)| (d, c.to_string()))
        .map(|(_, c)| format!("did you mean \"{c}\"?"))
}

/// Shows a path relative to the current directory when it is inside it, with `a/../` folded
/// away, as a user would type it.
pub fn display_path(path: &Path) -> PathBuf {
    let path = normalize(path);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(path)
}

/// Folds `.` and `dir/..` lexically (without touching the file system).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() { PathBuf::from(".") } else { out.iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_and_column() {
        let file = SourceFile::new("a.toml", "one\ntwo = 3\nthree".to_string());
        let loc = file.locate(6..7);
        assert_eq!((loc.line, loc.column), (2, 3));
        assert_eq!(loc.source_line.as_deref(), Some("two = 3"));
        let end = file.locate(100..200);
        assert_eq!((end.line, end.column), (3, 6));
    }

    #[test]
    fn suggests_close_names_only() {
        let envs = ["dev", "staging", "prod"];
        assert_eq!(did_you_mean("stagin", envs).as_deref(), Some("did you mean \"staging\"?"));
        assert_eq!(did_you_mean("qa", envs), None);
        // The metric counts a swap of neighbours as one edit (plain Levenshtein says 2).
        assert_eq!(strsim::osa_distance("kitten", "sitting"), 3);
        assert_eq!(strsim::osa_distance("prdo", "prod"), 1);
        assert_eq!(did_you_mean("prdo", envs).as_deref(), Some("did you mean \"prod\"?"));
        // Characters, not bytes: `é` is one edit away from `e` (two bytes would be too far).
        assert_eq!(did_you_mean("dév", envs).as_deref(), Some("did you mean \"dev\"?"));
        // Ties go to the name that sorts first, so the hint does not depend on inventory order.
        assert_eq!(did_you_mean("pro", ["prod", "prom"]).as_deref(), Some("did you mean \"prod\"?"));
        assert_eq!(did_you_mean("pro", ["prom", "prod"]).as_deref(), Some("did you mean \"prod\"?"));
    }

    #[test]
    fn renders_caret_under_span() {
        let file = SourceFile::new("inv.toml", "[environments.prdo]\n".to_string());
        let d =
            Diagnostic::new("unknown environment \"prdo\"").at(&file, 14..18).help("did you mean \"prod\"?");
        let text = d.render("error");
        assert!(text.contains("--> inv.toml:1:15"), "{text}");
        assert!(text.contains("1 | [environments.prdo]"), "{text}");
        assert!(text.contains("  |               ^^^^"), "{text}");
    }
}
