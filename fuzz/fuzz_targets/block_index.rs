//! The block index of a payload (`usr.blocks.idx`), read by the agent
//! before its signature is checked (the body gives the frames' sizes): the
//! body parser, then the signed parser with a key the target trusts.
#![no_main]

use std::sync::OnceLock;

use drover_core::blocks::Index;
use drover_core::keys::{SigningKey, TrustedKeys};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static (SigningKey, TrustedKeys) {
    static KEY: OnceLock<(SigningKey, TrustedKeys)> = OnceLock::new();
    KEY.get_or_init(|| {
        let (k, _) = SigningKey::generate().expect("a key");
        let t = TrustedKeys::new(vec![k.public_key()]);
        (k, t)
    })
}

fuzz_target!(|data: &[u8]| {
    let (k, trusted) = key();
    if let Ok((ix, _)) = Index::parse_body(data) {
        // What the agent computes from a parsed index.
        let _ = ix.stored_size();
        let _ = ix.frame_at(ix.payload_size / 2);
        // Signed by the trusted key, it must come back the same.
        let signed = ix.sign(&[k]);
        let (back, _) = Index::parse_signed(&signed, trusted).expect("a signed index parses");
        assert_eq!(back, ix);
    }
    let _ = Index::parse_signed(data, trusted);
});
