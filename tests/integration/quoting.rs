//! Shell quoting is proven, not assumed: random strings go into a template, the planned argv goes
//! through a real `/bin/sh` (a `docker` shell function that prints its arguments), and exactly the
//! input comes back. Arguments are printed NUL-separated (`printf '%s\0'`) so that values with
//! newlines are compared exactly, not line by line.

use std::process::Command;

use proptest::prelude::*;

use ferry::inventory::Inventory;
use ferry::planning::{PlanRequest, build_plan};
use ferry::render::Renderer;
use ferry::shell;

const TEMPLATE: &str =
    "docker run -e X={{ v }} --label note={{ v }} --workdir {{ v }}\n  {{ image }} {{ v }} tail{{ v }}\n";

const INVENTORY: &str = r#"
[environments.prod]
targets = ["t1"]
[targets.t1]
host = "10.0.0.1"
[apps.app]
image = "img"
template = "t.j2"
vars = { v = "placeholder" }
"#;

fn awkward() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("$(id)".to_string()),
        Just("`id`".to_string()),
        Just("\n".to_string()),
        Just(";".to_string()),
        Just("&&".to_string()),
        Just("|".to_string()),
        Just("-".to_string()),
        Just("--rm".to_string()),
        Just("\\".to_string()),
        Just("$HOME".to_string()),
        Just("*".to_string()),
        Just("~".to_string()),
        Just("#".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("é".to_string()),
        Just("🚀".to_string()),
        Just("{{ x }}".to_string()),
        Just("%s".to_string()),
        Just("!".to_string()),
        Just("'\\''".to_string()),
        Just("\r".to_string()),
        "[^\\x00]{1,8}",
    ];
    prop::collection::vec(fragment, 0..8).prop_map(|parts| parts.concat())
}

struct Fixture {
    _dir: tempfile::TempDir,
    inventory: Inventory,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.path().join("templates")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("templates/t.j2"), TEMPLATE).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("ferry.toml"), INVENTORY).unwrap_or_else(|e| panic!("{e}"));
    let inventory = Inventory::load(&dir.path().join("ferry.toml")).unwrap_or_else(|e| panic!("{e}"));
    Fixture { _dir: dir, inventory }
}

/// Runs `argv` through `sh -c` with `docker` as a shell function; returns the words after `run`.
fn through_sh(argv: &[String]) -> Vec<String> {
    let line = shell::join(argv).unwrap_or_else(|e| panic!("{e}"));
    let script = format!("docker() {{ shift; printf '%s\\0' \"$@\"; }}\n{line}\n");
    let out = Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap_or_else(|e| panic!("sh: {e}"));
    assert!(out.status.success(), "sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{e}"));
    text.split_terminator('\0').map(str::to_string).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn any_value_survives_the_template_and_a_real_shell(value in awkward()) {
        let fixture = fixture();
        let renderer = Renderer::new(&fixture.inventory).unwrap_or_else(|_| panic!("template compiles"));
        let sets = vec![("v".to_string(), value.to_string())];
        let lookup = |_: &str| None;
        let request = PlanRequest {
            app: "app", environment: "prod", version: "1", digest: None, limits: &[], sets: &sets,
            deployment: "d", env: &lookup, missing_secrets: ferry::vars::MissingSecrets::Error,
            hash_key: b"",
        };
        let plan = build_plan(&fixture.inventory, &renderer, &request).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let argv = &plan.targets[0].exec_argv;
        let image = argv.iter().position(|a| a == "img:1").unwrap_or_else(|| panic!("image in {argv:?}"));
        prop_assert_eq!(&argv[image + 1], &value);
        prop_assert_eq!(&argv[image + 2], &format!("tail{value}"));
        let with_x = format!("X={}", value);
        let with_note = format!("note={}", value);
        prop_assert!(argv.contains(&with_x), "missing {:?} in {:?}", with_x, argv);
        prop_assert!(argv.contains(&with_note), "missing {:?} in {:?}", with_note, argv);
        let back = through_sh(argv);
        prop_assert_eq!(&back[..], &argv[2..]);
    }
}

#[test]
fn nul_in_a_value_is_a_clean_error() {
    let fixture = fixture();
    let renderer = Renderer::new(&fixture.inventory).unwrap_or_else(|_| panic!("template compiles"));
    let sets = vec![("v".to_string(), "a\0b".to_string())];
    let lookup = |_: &str| None;
    let request = PlanRequest {
        app: "app",
        environment: "prod",
        version: "1",
        digest: None,
        limits: &[],
        sets: &sets,
        deployment: "d",
        env: &lookup,
        missing_secrets: ferry::vars::MissingSecrets::Error,
        hash_key: b"",
    };
    let err =
        build_plan(&fixture.inventory, &renderer, &request).err().map(|e| (e.exit_code(), e.to_string()));
    let (code, text) = err.unwrap_or_default();
    assert_eq!(code, 2);
    assert!(text.contains("NUL"), "{text}");
}
