//! The manifest JSON parser and the checks on its verity fields.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = drover_core::manifest::Manifest::from_bytes(data) {
        let _ = m.verity.params();
        let _ = m.verity.root_hash_bytes();
        let _ = m.to_bytes();
    }
});
