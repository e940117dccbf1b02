//! NarInfo::parse never panics; whatever it accepts renders to text that
//! parses back to the same value and renders identically.
#![no_main]

use ds_core::NarInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let rendered = info.render();
    let again = NarInfo::parse(&rendered)
        .unwrap_or_else(|e| panic!("render of a parsed narinfo does not parse: {e}\n{rendered}"));
    assert_eq!(again, info);
    assert_eq!(again.render(), rendered);
    let _ = info.fingerprint();
});
