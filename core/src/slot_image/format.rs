//! The locator and the signed manifest envelope: their bytes and checks.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    ReadAt, SlotImageError, ALIGN, ENVELOPE_HEADER, ENVELOPE_MAGIC, LOCATOR_MAGIC, LOCATOR_SIZE,
    MAX_MANIFEST, MAX_SIGNATURES, SIG_ENTRY,
};
use crate::keys::{PublicKey, SigningKey, TrustedKeys};
use crate::manifest::Manifest;

/// The locator at offset 512.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locator {
    /// Bytes covered by verity, from offset 0.
    pub data_size: u64,
    /// Byte offset of the verity superblock.
    pub hash_offset: u64,
    /// Byte offset of the manifest envelope.
    pub manifest_offset: u64,
}

impl Locator {
    /// The 512 stored bytes.
    pub fn to_bytes(&self) -> [u8; LOCATOR_SIZE] {
        let mut b = [0u8; LOCATOR_SIZE];
        b[0..8].copy_from_slice(LOCATOR_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.hash_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b
    }

    /// Parses and sanity-checks a locator against the size of the image
    /// or partition it was read from.
    pub fn parse(b: &[u8], image_size: u64) -> Result<Self, String> {
        if b.len() < LOCATOR_SIZE {
            return Err(format!(
                "locator is truncated ({} of {LOCATOR_SIZE} bytes)",
                b.len()
            ));
        }
        if &b[0..8] != LOCATOR_MAGIC {
            return Err(
                "no Drover locator at offset 512 (not a Drover slot, or an empty slot)".into(),
            );
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if u32_at(8) != 1 {
            return Err(format!("locator format {} is not supported", u32_at(8)));
        }
        if u32_at(12) != 0 || b[40..].iter().any(|&x| x != 0) {
            return Err("locator has unknown flags or non-zero reserved bytes".into());
        }
        let l = Self {
            data_size: u64_at(16),
            hash_offset: u64_at(24),
            manifest_offset: u64_at(32),
        };
        if l.data_size == 0 || !l.data_size.is_multiple_of(ALIGN) {
            return Err(format!(
                "data size {} is not a positive multiple of {ALIGN}",
                l.data_size
            ));
        }
        if l.hash_offset < l.data_size || !l.hash_offset.is_multiple_of(ALIGN) {
            return Err(format!(
                "hash offset {} is not an aligned offset past the data ({} bytes)",
                l.hash_offset, l.data_size
            ));
        }
        if l.manifest_offset <= l.hash_offset || !l.manifest_offset.is_multiple_of(ALIGN) {
            return Err(format!(
                "manifest offset {} is not an aligned offset past the hash area ({})",
                l.manifest_offset, l.hash_offset
            ));
        }
        if l.manifest_offset.saturating_add(ENVELOPE_HEADER as u64) > image_size {
            return Err(format!(
                "manifest offset {} lies past the end of the image ({image_size} bytes); is it truncated?",
                l.manifest_offset
            ));
        }
        Ok(l)
    }
}

/// One signature of the envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// SHA-256 of the signer's raw public key.
    pub key_id: [u8; 32],
    /// ed25519 signature over the manifest bytes.
    pub signature: [u8; 64],
}

/// Manifest bytes with their signatures, as stored. Not trusted until
/// [`SignedManifest::verify`] says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The exact manifest bytes that were signed.
    pub bytes: Vec<u8>,
    /// The signatures.
    pub signatures: Vec<Signature>,
}

/// A manifest whose signature holds.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The key whose signature was accepted.
    pub key: PublicKey,
    /// SHA-256 of the stored manifest bytes (what the boot stage measures).
    pub digest: [u8; 32],
}

impl SignedManifest {
    /// Signs a manifest with one or more keys.
    pub fn sign(manifest: &Manifest, keys: &[&SigningKey]) -> Self {
        let bytes = manifest.to_bytes();
        let signatures = keys
            .iter()
            .map(|k| Signature {
                key_id: k.public_key().key_id(),
                signature: k.sign(&bytes),
            })
            .collect();
        Self { bytes, signatures }
    }

    /// The stored envelope, padded to 4 KiB.
    pub fn to_envelope(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(ENVELOPE_MAGIC);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(self.bytes.len() as u32).to_le_bytes());
        v.extend_from_slice(&(self.signatures.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&self.bytes);
        for s in &self.signatures {
            v.extend_from_slice(&s.key_id);
            v.extend_from_slice(&s.signature);
        }
        v.resize(v.len().next_multiple_of(ALIGN as usize), 0);
        v
    }

    /// Reads an envelope at `offset` of `src`, which is `size` bytes long.
    pub fn read<R: ReadAt + ?Sized>(src: &R, offset: u64, size: u64) -> Result<Self, String> {
        let mut head = [0u8; ENVELOPE_HEADER];
        src.read_exact_at(&mut head, offset)
            .map_err(|_| "manifest envelope header is truncated".to_string())?;
        if &head[0..8] != ENVELOPE_MAGIC {
            return Err(format!("no manifest envelope at offset {offset}"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        if u32_at(8) != 1 {
            return Err(format!(
                "manifest envelope format {} is not supported",
                u32_at(8)
            ));
        }
        let len = u32_at(12);
        let count = u32_at(16);
        if len == 0 || len > MAX_MANIFEST {
            return Err(format!(
                "manifest length {len} is outside 1..={MAX_MANIFEST}"
            ));
        }
        if count == 0 || count > MAX_SIGNATURES {
            return Err(format!(
                "signature count {count} is outside 1..={MAX_SIGNATURES}"
            ));
        }
        if u32_at(20) != 0 {
            return Err("manifest envelope has non-zero reserved bytes".into());
        }
        let body = len as u64 + u64::from(count) * SIG_ENTRY as u64;
        let end = offset + ENVELOPE_HEADER as u64 + body;
        if end > size {
            return Err(format!(
                "manifest envelope needs {body} bytes past offset {offset}, but the image ends at {size}; is it truncated?"
            ));
        }
        let mut buf = vec![0u8; body as usize];
        src.read_exact_at(&mut buf, offset + ENVELOPE_HEADER as u64)
            .map_err(|_| "manifest envelope is truncated".to_string())?;
        let sigs = buf.split_off(len as usize);
        let signatures = sigs
            .chunks_exact(SIG_ENTRY)
            .map(|c| Signature {
                key_id: c[..32].try_into().unwrap(),
                signature: c[32..].try_into().unwrap(),
            })
            .collect();
        Ok(Self {
            bytes: buf,
            signatures,
        })
    }

    /// Checks the signatures against the trusted keys, then parses the
    /// manifest. `path` names the image in errors.
    pub fn verify(
        &self,
        trusted: &TrustedKeys,
        path: &Path,
    ) -> Result<VerifiedManifest, SlotImageError> {
        let mut bad_key = None;
        for s in &self.signatures {
            let Some(key) = trusted.find(&s.key_id) else {
                continue;
            };
            if key.verify(&self.bytes, &s.signature) {
                let manifest = Manifest::from_bytes(&self.bytes).map_err(|reason| {
                    SlotImageError::Malformed {
                        path: path.to_owned(),
                        reason,
                    }
                })?;
                return Ok(VerifiedManifest {
                    manifest,
                    key: *key,
                    digest: Sha256::digest(&self.bytes).into(),
                });
            }
            bad_key = Some(*key);
        }
        if let Some(key) = bad_key {
            return Err(SlotImageError::BadSignature {
                path: path.to_owned(),
                key: key.short_id(),
            });
        }
        let ids = |it: &mut dyn Iterator<Item = [u8; 32]>| {
            let v: Vec<String> = it.map(|id| hex::encode(&id[..8])).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        Err(SlotImageError::UnknownKey {
            path: path.to_owned(),
            signers: ids(&mut self.signatures.iter().map(|s| s.key_id)),
            trusted: ids(&mut trusted.keys().iter().map(|k| k.key_id())),
        })
    }
}
