//! What a verifier parses from a node's attestation evidence, from
//! arbitrary bytes: the quote's `TPMS_ATTEST`, the attestation key's
//! `TPMT_PUBLIC`, the signature's `TPMT_SIGNATURE`, and the whole check of
//! an evidence file: errors, never panics.
#![no_main]

use drover_core::measured::attestation::{self, References};
use drover_core::measured::quote::{self, AkPublic, Quote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    if let Ok(ak) = AkPublic::parse(data) {
        let _ = ak.verify(b"message", data);
    }
    let _ = quote::rsassa_signature(data);
    if let Ok(e) = serde_json::from_slice::<attestation::Evidence>(data) {
        let _ = attestation::verify(
            &e,
            b"nonce",
            &References {
                manifest_bytes: b"{}",
                stage: None,
                ak_public: None,
            },
        );
    }
});
