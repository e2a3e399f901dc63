//! Fuzzing the parsers: the inventory loader and the renderer must never panic, whatever the
//! input. proptest drives structure-aware mutations of a valid inventory (cut, duplicated and
//! spliced lines, TOML tokens inserted at random places) and random templates built from Jinja
//! and shell tokens; every loaded inventory is then planned for every app and environment.
//!
//! Cases per run: `FERRY_FUZZ_CASES` (default 1500 each in the normal suite;
//! `scripts/fuzz` runs many more). Each test prints how many inputs it executed.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use ferry::diagnostic::SourceFile;
use ferry::inventory::Inventory;
use ferry::planning::{PlanRequest, build_plan};
use ferry::render::Renderer;

use crate::test::{INVENTORY, TEMPLATE};

fn cases() -> u32 {
    std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

const TOML_TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "=",
    "\"",
    "'",
    ",",
    "\n",
    "#",
    "[[",
    "]]",
    ".",
    "targets",
    "apps",
    "environments",
    "vars",
    "roles",
    "host",
    "port",
    "template",
    "secrets",
    "env",
    "{ env = \"X\" }",
    "{ file = \"/\" }",
    "\"*\"",
    "\"[a-\"",
    "99999999999999999999",
    "-1",
    "1.5e308",
    "true",
    "1979-05-27T07:32:00Z",
    "\"\"\"",
    "\\u0000",
    "🚀",
    "rollout = { batch = \"0%\" }",
    "health = { timeout = \"1h99999999999s\" }",
    "lifecycle",
    "phases = [\"prod\", \"prod\"]",
    "[environments.x]\ntargets = []\n",
    "transport = \"local\"",
    "..",
    "\u{feff}",
    "[[freeze]]\nenvironments = [\"prod\"]\nreason = \"r\"\n",
    "hours = \"23:59-00:00\"",
    "days = [\"sun-mon\"]",
    "timezone = \"Europe/Berlin\"",
    "from = \"2026-03-29T02:30:00+01:00\"",
    "until = 2026-10-25T02:30:00+02:00",
];

/// Freeze windows (issue 16) appended to the fuzzed inventory, so their keys get mutated too.
const FREEZES: &str = r#"
[[freeze]]
name = "nights"
environments = ["prod", "staging"]
reason = "nights"
days = ["fri-mon"]
hours = "18:00-08:00"
timezone = "Europe/Berlin"

[[freeze]]
environments = ["prod"]
reason = "holidays"
from = "2026-12-24T00:00:00+01:00"
until = "2027-01-04T08:00:00+01:00"
"#;

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    Insert(usize, usize),
    Truncate(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        let n = lines.len().max(1);
        match *m {
            Mutation::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) if !lines.is_empty() => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::Insert(i, t) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                let mut at = (t / TOML_TOKENS.len()) % (line.len() + 1);
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.insert_str(at, TOML_TOKENS[t % TOML_TOKENS.len()]);
            }
            Mutation::Truncate(i) => lines.truncate(i % (n + 1)),
            Mutation::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            _ => {}
        }
    }
    lines.join("\n")
}

/// Plans every app in every environment of a loaded inventory, and asks its freeze windows
/// about instants around DST changes; errors are fine, panics are not.
fn plan_everything(inventory: &Inventory) {
    let names: Vec<&str> = inventory.environments.iter().map(|e| e.name.as_str()).collect();
    for at in ["2026-03-29T01:30:00Z", "2026-10-25T00:59:59Z", "2026-12-27T23:00:00Z"] {
        let _ = ferry::freeze::Outlook::at(
            &inventory.freezes,
            &names,
            at.parse().unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let Ok(renderer) = Renderer::new(inventory) else { return };
    let lookup = |name: &str| (name != "UNSET").then(|| "secret".to_string());
    for app in &inventory.apps {
        for env in &inventory.environments {
            let request = PlanRequest {
                app: &app.name,
                environment: &env.name,
                version: "1",
                digest: None,
                limits: &[],
                sets: &[],
                deployment: "d",
                env: &lookup,
                missing_secrets: ferry::vars::MissingSecrets::Error,
                hash_key: b"",
            };
            let _ = build_plan(inventory, &renderer, &request);
        }
    }
}

static LOADER_RUNS: AtomicUsize = AtomicUsize::new(0);
static RENDER_RUNS: AtomicUsize = AtomicUsize::new(0);

fn templates_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.path().join("templates")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("templates/web.j2"), TEMPLATE).unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn inventory_loader_never_panics() {
    let dir = templates_dir();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(mutation(), 1..6), |mutations| {
        LOADER_RUNS.fetch_add(1, Ordering::Relaxed);
        let text = apply(&format!("{INVENTORY}{FREEZES}"), &mutations);
        if let Ok(inventory) = Inventory::parse(SourceFile::new("fuzz.toml", text), dir.path()) {
            plan_everything(&inventory);
        }
        Ok(())
    });
    eprintln!("fuzz: inventory loader executed {} inputs", LOADER_RUNS.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn arbitrary_text_never_panics_the_loader() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&"\\PC{0,200}", |text| {
        let _ = Inventory::parse(SourceFile::new("fuzz.toml", text), std::path::Path::new("/nonexistent"));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

const JINJA_TOKENS: &[&str] = &[
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{# ",
    " #}",
    "for k, v in container_env|items",
    "endfor",
    "if ",
    "endif",
    "else",
    "image",
    "port",
    "target.name",
    "target.roles",
    "deployment.id",
    "nope",
    "|safe",
    "|upper",
    "|join(',')",
    "|items",
    "range(100000000)",
    "docker",
    "run",
    "-p",
    "-d",
    "--name",
    "--rm",
    "-e",
    "--label",
    "ferry.app=x",
    ";",
    "&&",
    "|",
    ">",
    "'",
    "\"",
    "\\",
    "$",
    "`",
    "~",
    "#",
    "\n",
    " ",
    "(",
    ")",
    "x",
    "-",
    "--",
    "{% raw %}",
    "{% endraw %}",
    "{% set a = 1 %}",
    "{{ a }}",
    "loop.index",
    "{% macro m() %}",
    "{% endmacro %}",
    "{{ m() }}",
    "{% include 'web.j2' %}",
    "{% extends 'web.j2' %}",
    "{{ 1/0 }}",
    "{{ [1,2] }}",
    "{{ none }}",
    "é",
];

#[test]
fn renderer_never_panics() {
    let dir = templates_dir();
    let inventory_text = INVENTORY.replace("template = \"web.j2\"", "template = \"fuzz.j2\"");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let tokens = prop::collection::vec(0..JINJA_TOKENS.len(), 0..40);
    let result = runner.run(&(tokens, any::<bool>()), |(picks, prefix)| {
        RENDER_RUNS.fetch_add(1, Ordering::Relaxed);
        let body: String = picks.iter().map(|&i| JINJA_TOKENS[i]).collect();
        let text = if prefix { format!("docker run {body} {{{{ image }}}}") } else { body };
        std::fs::write(dir.path().join("templates/fuzz.j2"), &text)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let inventory = Inventory::parse(SourceFile::new("fuzz.toml", inventory_text.clone()), dir.path())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        plan_everything(&inventory);
        Ok(())
    });
    eprintln!("fuzz: renderer executed {} inputs", RENDER_RUNS.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Pieces of what registries, Docker and tags really send, for the answer parsers.
const ANSWER_TOKENS: &[&str] = &[
    "Bearer ",
    "Basic ",
    "realm=",
    "service=",
    "scope=",
    "\"",
    ",",
    " ",
    "=",
    "<",
    ">",
    ";",
    "rel=\"next\"",
    "/v2/a/tags/list?n=1&last=x",
    "https://h/t",
    "[",
    "]",
    "{",
    "}",
    ":",
    "\"Id\"",
    "\"Name\"",
    "\"State\"",
    "\"Status\"",
    "\"Config\"",
    "\"Image\"",
    "\"Labels\"",
    "null",
    "1",
    "v",
    ".",
    "-",
    "+",
    "rc",
    "0",
    "99999999999999999999",
    "sha256:",
    "@",
    "é",
    "\n",
    "\t",
];

#[test]
fn answer_parsers_never_panic_and_versions_order_totally() {
    use ferry::version::Version;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let text = prop::collection::vec(0..ANSWER_TOKENS.len(), 0..30)
        .prop_map(|picks| picks.iter().map(|&i| ANSWER_TOKENS[i]).collect::<String>());
    let result = runner.run(&(text.clone(), text, any::<String>()), |(a, b, raw)| {
        for input in [&a, &b, &raw] {
            let _ = ferry::registry::parse_challenge(input);
            let _ = ferry::registry::parse_next_link(input);
            let _ = ferry::registry::docker_config_credentials(input, "h");
            let _ = ferry::docker::parse_inspect(input);
            let _ = ferry::docker::pulled_digest(input);
            let _ = ferry::docker::repository_of(input);
        }
        if let (Some(x), Some(y)) = (Version::parse(&a), Version::parse(&b)) {
            prop_assert_eq!(x.cmp(&y), y.cmp(&x).reverse(), "{} vs {}", a, b);
            prop_assert_eq!(x.cmp(&y) == std::cmp::Ordering::Equal, a == b);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Pieces of meta files, route tables and admin API answers (issue 15's proxy parsers).
const PROXY_TOKENS: &[&str] = &[
    "app=web\n",
    "environment=prod\n",
    "host=web.example.com\n",
    "path=/api\n",
    "path=\n",
    "port=80\n",
    "port=65536\n",
    "health=/up\n",
    "tls=internal\n",
    "tls=acme\n",
    "tls=\n",
    "upstream=web-prod-1\n",
    "container=web-prod\n",
    "deployment=d1\n",
    "maintenance=\n",
    "maintenance=\"down \\\"now\\\"\"\n",
    "maintenance=\"\\ud800\"\n",
    "--- route web@prod.meta\n",
    "--- proxy\n",
    "--- upstreams\n",
    "--- containers\n",
    "| ",
    "=",
    "\n",
    "[{\"address\":\"a:1\",\"num_requests\":",
    "18446744073709551616",
    "-1",
    "}]",
    "true caddy:2\n",
    "é",
    "\0",
];

#[test]
fn proxy_parsers_never_panic_and_a_parsed_route_round_trips() {
    use ferry::proxy::{Route, parse_table, parse_upstreams};
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let text = prop::collection::vec(0..PROXY_TOKENS.len(), 0..40)
        .prop_map(|picks| picks.iter().map(|&i| PROXY_TOKENS[i]).collect::<String>());
    let executed = AtomicUsize::new(0);
    let result = runner.run(&(text, any::<String>()), |(tokens, raw)| {
        executed.fetch_add(1, Ordering::Relaxed);
        for input in [&tokens, &raw] {
            let _ = parse_upstreams(input);
            let _ = parse_table(input);
            if let Ok(route) = Route::parse_meta(input) {
                // Whatever the parser accepts is valid and reads back as itself.
                prop_assert_eq!(route.validate(), Ok(()));
                prop_assert_eq!(Route::parse_meta(&route.meta()), Ok(route.clone()));
                let _ = ferry::proxy::switch_call(&route);
            }
        }
        Ok(())
    });
    println!("proxy parsers: {} inputs", executed.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Pieces of ssh_config lines: keywords, patterns, quotes, `=`, tokens, Match criteria.
const SSH_CONFIG_TOKENS: &[&str] = &[
    "Host ",
    "Match ",
    "Include ",
    "HostName ",
    "User ",
    "Port ",
    "IdentityFile ",
    "ProxyJump ",
    "ProxyCommand ",
    "UserKnownHostsFile ",
    "ConnectTimeout ",
    "IdentitiesOnly ",
    "StrictHostKeyChecking ",
    "CanonicalizeHostname ",
    "all ",
    "host ",
    "originalhost ",
    "user ",
    "localuser ",
    "exec ",
    "!",
    "*",
    "?",
    ",",
    "=",
    "\"",
    "'",
    "\\",
    "%",
    "%h",
    "%%",
    "%p",
    "%Z",
    "~/",
    "#",
    " ",
    "\t",
    "\n",
    "app",
    "a,b",
    "u@h:22",
    "[::1]:2",
    "none",
    "yes",
    "no",
    "ssh://",
    "é",
];

#[test]
fn ssh_config_parser_never_panics() {
    use ferry::ssh_config::{Query, SshConfig, expand_path, parse_jumps};
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let text = prop::collection::vec(0..SSH_CONFIG_TOKENS.len(), 0..60)
        .prop_map(|picks| picks.iter().map(|&i| SSH_CONFIG_TOKENS[i]).collect::<String>());
    let home = tempfile::tempdir().unwrap();
    let executed = AtomicUsize::new(0);
    let result = runner.run(&(text, any::<String>()), |(tokens, raw)| {
        executed.fetch_add(1, Ordering::Relaxed);
        for input in [&tokens, &raw] {
            let _ = ferry::ssh_config::split_line(input);
            let Ok(config) = SshConfig::parse("config", input, Some(home.path())) else { continue };
            for alias in ["app", "h", "", "a,b"] {
                let query = Query { alias, user: None, local_user: "root" };
                let Ok(resolved) = config.resolve(&query) else { continue };
                for s in resolved.identity_files.iter().chain(resolved.values.values()) {
                    let _ = expand_path(s, &[('h', "x"), ('p', "22")], Some(home.path()));
                    let _ = parse_jumps(&s.value);
                }
            }
        }
        Ok(())
    });
    println!("ssh_config parser: {} inputs", executed.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
}
