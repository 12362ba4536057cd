//! The boot record the stage hands to the booted system (read by the
//! agent and `droverctl`): JSON, then the slot it names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<drover_core::boot_record::BootRecord>(data) {
        let _ = r.slot_id();
        let _ = r.to_json();
    }
});
