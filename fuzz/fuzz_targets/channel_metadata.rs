//! The signed channel file as the agent reads it from a repository:
//! parse, signature check (against a key that signed nothing here, so the
//! refusal paths), freshness against the last sequence seen, and the
//! metadata parser on its own for what a valid signature would let through.
#![no_main]

use drover_core::channel::{check_fresh, Metadata, SignedChannel};
use drover_core::keys::{PublicKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedChannel::from_bytes(data) {
        let trusted = TrustedKeys::new(vec![PublicKey::from_bytes([7; 32])]);
        let _ = signed.verify(&trusted);
        let _ = signed.to_bytes();
    }
    if let Ok(meta) = serde_json::from_slice::<Metadata>(data) {
        let _ = check_fresh(&meta, 1_800_000_000, Some(3));
        for r in &meta.releases {
            let _ = drover_core::channel::compare_versions(&r.version, "1.0.0");
        }
    }
});
