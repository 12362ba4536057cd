//! `install.json` on the installation media (an ISO or USB stick anyone
//! may hand the installer): parsed, then the layout it asks for.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(info) = drover_image_builder::media::InstallInfo::parse(text, Path::new("fuzz")) {
            let _ = info.layout(uuid::Uuid::nil());
        }
    }
});
