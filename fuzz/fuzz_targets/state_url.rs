//! The state URL parser on any text: it never panics, and no error repeats the password.
#![no_main]

use ferry::store::state_url::StateUrl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = StateUrl::parse(text, &|_| None);
    let with_password = format!("postgres://u:Zq9SeCrEt@{text}");
    if let Err(e) = StateUrl::parse(&with_password, &|_| None) {
        assert!(!e.contains("Zq9SeCrEt"), "{e}");
    }
});
