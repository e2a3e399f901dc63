//! Any text as the command template of a valid inventory: compile, render, split, check.
#![no_main]

mod common;

use ferry::diagnostic::SourceFile;
use ferry::inventory::Inventory;

const INVENTORY: &str = r#"
[environments.prod]
targets = ["a", "b"]
[targets.a]
host = "10.0.0.1"
roles = ["web"]
[targets.b]
host = "10.0.0.2"
roles = ["web"]
vars = { port = 81, list = [1, 2], table = { k = "v" } }
[apps.web]
image = "acme/web"
template = "fuzz.j2"
vars = { port = 80 }
env = { A = "{{ port }}", B = 1.5 }
secrets = { S = { env = "S" } }
health = { cmd = "check {{ port }}" }
"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    let dir = common::workdir();
    // One file per process, rewritten per input: the renderer reads templates only from disk.
    std::fs::write(dir.join("templates/fuzz.j2"), template).unwrap();
    if let Ok(inventory) = Inventory::parse(SourceFile::new("fuzz.toml", INVENTORY.to_string()), dir) {
        common::plan_everything(&inventory);
    }
});
