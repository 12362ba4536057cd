//! Parsing and replaying a TCG event log from arbitrary bytes, as a
//! verifier does with the log in an attestation: errors, never panics.
#![no_main]

use drover_core::measured::measure::Bank;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = drover_core::measured::eventlog::parse(data) {
        for b in Bank::ALL {
            let _ = log.replay(b);
        }
    }
});
