//! The update agent's config TOML (`/etc/drover/agent.toml.d/`), parsed
//! and checked as a whole configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = drover_update_agent::config::Config::from_toml(text);
    }
});
