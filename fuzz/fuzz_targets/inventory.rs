//! Any bytes as an inventory file: load, and plan everything that loads.
#![no_main]

mod common;

use ferry::diagnostic::SourceFile;
use ferry::inventory::Inventory;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(inventory) = Inventory::parse(SourceFile::new("fuzz.toml", text.to_string()), common::workdir()) {
        common::plan_everything(&inventory);
    }
});
