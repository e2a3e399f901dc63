//! The command line as documented: `--version`, completions, the man page, and every command
//! and flag the README names.

use crate::test::Test;

#[test]
fn version_names_the_commit() {
    let out = Test::bare().args(["--version"]).stdout_contains("ferry 0.1.0 (commit ").run();
    let version = out.stdout.trim();
    assert_eq!(out.stdout, format!("{version}\n"), "one line");
    assert!(version.starts_with("ferry 0.1.0 (commit "), "{version}");
    let commit =
        version.trim_start_matches("ferry 0.1.0 (commit ").trim_end_matches(')').trim_end_matches("-dirty");
    assert!(
        commit == "unknown" || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        Test::bare().args(["completions", shell]).stdout_contains("deploy").stdout_contains("rollback").run();
    }
    Test::bare()
        .args(["completions", "tcsh"])
        .code(2)
        .stderr(
            "error: invalid value 'tcsh' for '<SHELL>'\n  [possible values: bash, elvish, fish, powershell, zsh]\n\n  \
             tip: a similar value exists: 'zsh'\n\nFor more information, try '--help'.\n",
        )
        .run();
    Test::bare().args(["man"]).stdout_contains(".TH ferry 1").stdout_contains("deploy").run();
}

/// Every `ferry COMMAND [SUBCOMMAND] … --flag` the README names, in code blocks and in inline
/// code, exists.
#[test]
fn every_command_and_flag_the_readme_names_exists() {
    let readme = std::fs::read_to_string(crate::test::repo().join("README.md")).unwrap();
    let mut in_code = false;
    let mut snippets: Vec<String> = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code {
            snippets.push(line.to_string());
        } else {
            // Inline code: the odd pieces between backticks.
            snippets.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    let checked: usize = snippets.iter().map(|s| check_commands(s)).sum();
    assert!(checked >= 40, "only {checked} commands found in the README");
}

/// Checks each `ferry …` in `line`; returns how many it checked.
fn check_commands(line: &str) -> usize {
    let mut checked = 0;
    for (at, _) in line.match_indices("ferry ") {
        // `ferry` as a word: not the end of `cargo-ferry` or a path.
        if at > 0 && !line[..at].ends_with([' ', '(', '$', '&', '|', ';']) {
            continue;
        }
        let words: Vec<&str> = line[at + 6..].split_whitespace().collect();
        let Some(command) = words.first().filter(|w| w.chars().all(|c| c.is_ascii_lowercase())) else {
            continue;
        };
        // `ferry lock status|acquire|release --env …`: a flag must exist in one of them.
        let subs: Vec<&str> = match (*command, words.get(1)) {
            ("lock" | "audit" | "state" | "proxy" | "maintenance", Some(sub)) if !sub.starts_with('-') => {
                sub.split('|').collect()
            }
            _ => vec![""],
        };
        let mut help = String::new();
        for sub in &subs {
            let args: Vec<&str> = [*command, sub].into_iter().filter(|w| !w.is_empty()).collect();
            help += &Test::bare().args(args).args(["--help"]).stdout_contains("Usage: ferry ").run().stdout;
        }
        let path = [*command, subs.join("|").as_str()].join(" ");
        let flags: Vec<String> = words
            .iter()
            .take_while(|w| !["&&", "|", ";", "#", "--"].contains(w))
            .flat_map(|w| w.split(['[', ']', '|', '=']))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches([',', '.', ')']).to_string())
            .collect();
        for flag in flags {
            let global = ["--output", "--inventory", "--verbose"].contains(&flag.as_str());
            assert!(global || help.contains(&flag), "README: `ferry {path}` has no {flag} ({line})");
        }
        checked += 1;
    }
    checked
}
