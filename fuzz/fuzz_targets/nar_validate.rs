//! The NAR reader never panics, and what it accepts it accepts whole:
//! the stats cover every byte, and the event walk agrees with validate().
#![no_main]

use ds_core::nar::{self, NarReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = nar::validate_hashed(data);
    // a second pass through the event API, reading contents in odd chunks
    let mut reader = NarReader::new(data);
    let mut buf = [0u8; 7];
    let walked = loop {
        match reader.next() {
            Ok(Some(nar::NarEvent::Regular { .. })) => {
                while let Ok(n @ 1..) = reader.read_contents(&mut buf) {
                    let _ = n;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break Ok(*reader.stats()),
            Err(e) => break Err(e),
        }
    };
    match (result, walked) {
        (Ok((stats, hash)), Ok(walked)) => {
            assert_eq!(stats, walked);
            assert_eq!(stats.nar_size, data.len() as u64);
            assert_eq!(hash, ds_core::Hash::sha256(data));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("validate and the event walk disagree: {a:?} vs {b:?}"),
    }
});
