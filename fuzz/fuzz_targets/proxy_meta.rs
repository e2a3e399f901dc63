//! The proxy's route-table parsers on any text (meta files, `ferry proxy status`'s read-back, the
//! admin API's upstreams): they never panic, and a meta file they accept is valid and reads back
//! as itself.
#![no_main]

use ferry::proxy::{Route, parse_table, parse_upstreams};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_upstreams(text);
    let _ = parse_table(text);
    if let Ok(route) = Route::parse_meta(text) {
        assert_eq!(route.validate(), Ok(()));
        assert_eq!(Route::parse_meta(&route.meta()), Ok(route.clone()));
    }
});
