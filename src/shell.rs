//! POSIX shell quoting and the word splitter for rendered templates.
//!
//! Two directions, kept in one module because they must agree exactly:
//!
//! * [`quote`] makes any string (except one with NUL, which no argv can carry) into one shell
//!   word that a POSIX `sh` reads back byte for byte. Templates use it for every `{{ value }}`,
//!   and the SSH stage uses [`join`] to send an argv through the remote login shell.
//! * [`split`] reads a rendered template back into words. It understands quotes and backslashes,
//!   but it is *not* a shell: operators (`;`, `&&`, `|`, redirections, `$` expansion, backticks,
//!   `~`, comments) are errors, because ferry runs exactly one command and never lets template
//!   text start a second one. Newlines are plain whitespace, so a template may span lines.

/// Characters that need no quoting in any position of a POSIX shell word.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-')
}

/// Error for a value that no command line can carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value contains a NUL byte, which cannot be passed in a command line")]
pub struct NulError;

/// Quotes `s` as one shell word: as-is when it is plain, else in single quotes.
pub fn quote(s: &str) -> Result<String, NulError> {
    let mut out = String::with_capacity(s.len() + 2);
    quote_into(&mut out, s)?;
    Ok(out)
}

/// Appends `s`, quoted as one shell word, to `out`.
fn quote_into(out: &mut String, s: &str) -> Result<(), NulError> {
    if s.contains('\0') {
        return Err(NulError);
    }
    if !s.is_empty() && s.chars().all(is_plain) {
        out.push_str(s);
        return Ok(());
    }
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(())
}

/// Quotes every word and joins them with spaces: a command line `sh -c` runs as this argv.
pub fn join<S: AsRef<str>>(argv: &[S]) -> Result<String, NulError> {
    let mut out = String::with_capacity(argv.iter().map(|w| w.as_ref().len() + 3).sum());
    for (i, word) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        quote_into(&mut out, word.as_ref())?;
    }
    Ok(out)
}

/// One word of a split command, with the byte offset in the input where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word after quote removal.
    pub text: String,
    /// Byte offset of its first character in the input.
    pub offset: usize,
    /// True when the word is the first on its line (for spotting a second command).
    pub starts_line: bool,
}

/// Why a rendered command could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitError {
    /// What is wrong and what to do.
    pub message: String,
    /// Byte offset of the offending character in the input.
    pub offset: usize,
}

/// Splits `input` into words; see the module docs for what is refused.
pub fn split(input: &str) -> Result<Vec<Word>, SplitError> {
    Splitter { input, words: Vec::new(), current: None, at_line_start: true }.run()
}

struct Splitter<'a> {
    input: &'a str,
    words: Vec<Word>,
    /// The word being built and its start offset.
    current: Option<(String, usize, bool)>,
    at_line_start: bool,
}

impl Splitter<'_> {
    fn run(mut self) -> Result<Vec<Word>, SplitError> {
        let mut chars = self.input.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                ' ' | '\t' | '\r' => self.finish(),
                '\n' => {
                    self.finish();
                    self.at_line_start = true;
                }
                '\\' => match chars.next() {
                    Some((_, '\n')) => self.finish(),
                    Some((_, next)) => self.push(i, next),
                    None => return Err(error(i, "a trailing backslash escapes nothing: remove it")),
                },
                '\'' => {
                    self.start(i);
                    loop {
                        match chars.next() {
                            Some((_, '\'')) => break,
                            Some((_, ch)) => self.push(i, ch),
                            None => return Err(error(i, "this single quote is never closed")),
                        }
                    }
                }
                '"' => {
                    self.start(i);
                    loop {
                        match chars.next() {
                            Some((_, '"')) => break,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, ch @ ('"' | '\\' | '$' | '`'))) => self.push(i, ch),
                                Some((_, '\n')) => {}
                                Some((_, ch)) => {
                                    self.push(i, '\\');
                                    self.push(i, ch);
                                }
                                None => return Err(error(i, "this double quote is never closed")),
                            },
                            Some((j, '$' | '`')) => return Err(expansion(j)),
                            Some((_, ch)) => self.push(i, ch),
                            None => return Err(error(i, "this double quote is never closed")),
                        }
                    }
                }
                '$' | '`' => return Err(expansion(i)),
                ';' | '&' | '|' => {
                    return Err(error(
                        i,
                        &format!(
                            "`{c}` would start another command: a template must be exactly one `docker run`"
                        ),
                    ));
                }
                '<' | '>' => {
                    return Err(error(
                        i,
                        &format!(
                            "`{c}` is a shell redirection, which ferry does not run: quote it if it is meant literally"
                        ),
                    ));
                }
                '(' | ')' => {
                    return Err(error(
                        i,
                        &format!("`{c}` is shell syntax here: quote it if it is meant literally"),
                    ));
                }
                '#' if self.current.is_none() => {
                    return Err(error(
                        i,
                        "`#` starts a shell comment: use a template comment {# ... #} instead, or quote it",
                    ));
                }
                '~' if self.current.is_none() => {
                    return Err(error(
                        i,
                        "`~` is not expanded (ferry runs the command without a shell): write the full path, or quote it",
                    ));
                }
                _ => self.push(i, c),
            }
        }
        self.finish();
        Ok(self.words)
    }

    fn start(&mut self, offset: usize) {
        if self.current.is_none() {
            self.current = Some((String::new(), offset, self.at_line_start));
            self.at_line_start = false;
        }
    }

    fn push(&mut self, offset: usize, c: char) {
        self.start(offset);
        if let Some((text, _, _)) = &mut self.current {
            text.push(c);
        }
    }

    fn finish(&mut self) {
        if let Some((text, offset, starts_line)) = self.current.take() {
            self.words.push(Word { text, offset, starts_line });
        }
    }
}

fn error(offset: usize, message: &str) -> SplitError {
    SplitError { message: message.to_string(), offset }
}

fn expansion(offset: usize) -> SplitError {
    error(
        offset,
        "shell expansion is not supported (ferry runs the command without a shell): use a template variable, or single-quote it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<String> {
        split(input).map(|w| w.into_iter().map(|w| w.text).collect()).unwrap_or_default()
    }

    #[test]
    fn quote_is_minimal_and_safe() {
        assert_eq!(quote("abc-1.2/x"), Ok("abc-1.2/x".to_string()));
        assert_eq!(quote(""), Ok("''".to_string()));
        assert_eq!(quote("a b"), Ok("'a b'".to_string()));
        assert_eq!(quote("it's"), Ok("'it'\\''s'".to_string()));
        assert_eq!(quote("a\0b"), Err(NulError));
    }

    #[test]
    fn split_reads_quotes_and_joins_adjacent_parts() {
        assert_eq!(texts("docker run\n  -e A='x y'\"z\" img"), ["docker", "run", "-e", "A=x yz", "img"]);
        assert_eq!(texts("a\\ b c\\\nd"), ["a b", "c", "d"]);
        assert_eq!(texts("'' \"\""), ["", ""]);
        assert_eq!(texts(&format!("x {}", quote("it's $(x)").unwrap_or_default())), ["x", "it's $(x)"]);
    }

    #[test]
    fn split_refuses_operators() {
        for bad in [
            "a; b",
            "a && b",
            "a | b",
            "a > f",
            "echo $HOME",
            "a `b`",
            "a \"$x\"",
            "-v ~/d",
            "# x",
            "a (b)",
            "'open",
        ] {
            assert!(split(bad).is_err(), "{bad} should be refused");
        }
        let err = split("docker run img; rm").err();
        assert_eq!(err.map(|e| e.offset), Some(14));
    }

    #[test]
    fn marks_words_that_start_a_line() {
        let words = split("docker run\n  img\ndocker").unwrap_or_default();
        let starts: Vec<bool> = words.iter().map(|w| w.starts_line).collect();
        assert_eq!(starts, [true, false, true, true]);
    }

    proptest::proptest! {
        #[test]
        fn quote_then_split_is_identity(s in "[^\\x00]{0,40}") {
            let quoted = quote(&s).unwrap_or_default();
            let words = split(&quoted).map_err(|e| proptest::test_runner::TestCaseError::fail(e.message))?;
            proptest::prop_assert_eq!(words.len(), 1);
            proptest::prop_assert_eq!(&words[0].text, &s);
        }

        #[test]
        fn split_never_panics(s in "\\PC{0,60}") {
            let _ = split(&s);
        }
    }
}
