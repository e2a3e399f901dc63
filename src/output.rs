//! How results are shown: a table for people, plain lines for logs, JSON for machines.

use std::io::Write;

/// The `--output` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and summaries, for a terminal.
    #[default]
    Human,
    /// One tab-separated line per item, no headers: for cron mail, CI logs and `grep`.
    Plain,
    /// One JSON document (or JSON Lines for event streams), with a `schema` version.
    Json,
}

/// A count and its noun, singular for one: `count(1, "target")` is "1 target", `count(3,
/// "host key")` is "3 host keys". Every message that counts something goes through here, so no
/// message reads "1 targets". (Nouns whose plural is not `+s` need their own words.)
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// "is" for one, "are" for more: the verb that goes with [`count`].
pub fn are(n: usize) -> &'static str {
    if n == 1 { "is" } else { "are" }
}

/// Formats rows as a left-aligned table with two spaces between columns; the last column is
/// not padded (it is often a long command line).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out += cell;
            } else {
                out += &format!("{cell:<width$}  ", width = widths[i]);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Writes `text` to stdout, treating a closed pipe (`ferry plan | head`) as success.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `value` as one line of JSON to stdout.
pub fn print_json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
    print(&(text + "\n"))
}
