//! The whole slot reader: locator, envelope, signature check with a fixed
//! trusted key, locator/manifest consistency. The seed corpus is a real
//! sealed image (`fuzz/seed.sh`), so mutations reach the deeper checks.
#![no_main]

use std::path::Path;

use drover_core::keys::{PublicKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let trusted = TrustedKeys::new(vec![PublicKey::from_bytes([7; 32])]);
    let _ = drover_core::slot_image::open_verified(data, data.len() as u64, Path::new("fuzz"), &trusted);
    let _ = drover_core::slot_image::Locator::parse(data, data.len() as u64);
});
