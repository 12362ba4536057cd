//! The slot reader past the signature: the input is a locator (its first
//! 24 bytes: data size, hash offset, manifest offset, folded into a
//! small image) and manifest bytes,
//! which the target signs with a key it trusts (a key made for fuzzing
//! only, below) and lays out as a slot image. So every input reaches the
//! manifest parser and the locator/manifest consistency checks that an
//! unsigned input never gets to.
#![no_main]

use std::path::Path;

use drover_core::keys::{SigningKey, TrustedKeys};
use drover_core::slot_image::{Locator, Signature, SignedManifest, LOCATOR_OFFSET, LOCATOR_SIZE};
use libfuzzer_sys::fuzz_target;

/// A key generated for this target (`drover keygen`); it signs nothing else.
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MFECAQEwBQYDK2VwBCIEIHfGS7h5hQTRBgm6I2HV2w7fPCckBufU0ifu7GLUAd9w
gSEARdVSNmKJm3TZy7BP/+YHmqFSDh2ANQmFCW0wA//leqE=
-----END PRIVATE KEY-----
";

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    // Keep the image small (the manifest within 64 KiB past the locator)
    // and the locator's offsets inside it, so that inputs get past the
    // locator's own checks.
    let manifest_offset = LOCATOR_OFFSET + LOCATOR_SIZE as u64 + word(2) % 65_536;
    let locator = Locator {
        data_size: word(0) % (manifest_offset + 1),
        hash_offset: word(1) % (manifest_offset + 1),
        manifest_offset,
    };
    let key = SigningKey::from_pem(FUZZ_KEY, Path::new("fuzz key")).unwrap();
    let bytes = data[24..].to_vec();
    let signed = SignedManifest {
        signatures: vec![Signature {
            key_id: key.public_key().key_id(),
            signature: key.sign(&bytes),
        }],
        bytes,
    };
    let envelope = signed.to_envelope();
    let mut image = vec![0u8; manifest_offset as usize + envelope.len()];
    image[LOCATOR_OFFSET as usize..][..LOCATOR_SIZE].copy_from_slice(&locator.to_bytes());
    image[manifest_offset as usize..].copy_from_slice(&envelope);
    let trusted = TrustedKeys::new(vec![key.public_key()]);
    if let Ok(v) = drover_core::slot_image::open_verified(
        image.as_slice(),
        image.len() as u64,
        Path::new("fuzz"),
        &trusted,
    ) {
        let _ = v.params.data_blocks;
    }
});
