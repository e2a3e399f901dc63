//! The word splitter on any text; and quote → split is the identity on any NUL-free string.
#![no_main]

use ferry::shell;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = shell::split(text);
    if let Ok(quoted) = shell::quote(text) {
        let words = shell::split(&quoted).expect("quoted text splits");
        assert_eq!(words.len(), 1);
        assert_eq!(words[0].text, text);
    }
});
