//! The locator and manifest envelope parser on arbitrary bytes: errors, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = drover_core::slot_image::read_header(data, data.len() as u64, Path::new("fuzz")) {
        let _ = h.image_size();
        let _ = drover_core::manifest::Manifest::from_bytes(&h.signed.bytes);
    }
});
