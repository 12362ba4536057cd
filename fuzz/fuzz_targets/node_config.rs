//! The node's config TOML (OEM partition, fw_cfg, the installer's
//! `--config`): parsed and settled as first boot does, then rendered.
#![no_main]

use drover_os_config::settings::{settle, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = Source {
        name: "fuzz".into(),
        text: text.to_string(),
    };
    let _ = settle(&[src]);
});
