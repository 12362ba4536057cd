//! Reading a slot image and verifying it against trusted keys.

use std::fs::File;
use std::path::Path;

use super::{
    Locator, ReadAt, SignedManifest, SlotImageError, VerifiedManifest, LOCATOR_OFFSET, LOCATOR_SIZE,
};
use crate::keys::TrustedKeys;
use crate::verity::{self, DataFile, HashFile, VerityParams};

/// The unverified metadata of a slot image: locator and signed manifest.
#[derive(Clone, Debug)]
pub struct SlotHeader {
    /// The locator.
    pub locator: Locator,
    /// The manifest and its signatures.
    pub signed: SignedManifest,
}

impl SlotHeader {
    /// Total bytes of the slot image (up to the end of the envelope).
    pub fn image_size(&self) -> u64 {
        self.locator.manifest_offset + self.signed.to_envelope().len() as u64
    }
}

/// Reads locator and envelope from a slot image or partition of `size`
/// bytes. Never panics on bad input; the error says what is wrong.
pub fn read_header<R: ReadAt + ?Sized>(
    src: &R,
    size: u64,
    path: &Path,
) -> Result<SlotHeader, SlotImageError> {
    let malformed = |reason: String| SlotImageError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let mut b = [0u8; LOCATOR_SIZE];
    src.read_exact_at(&mut b, LOCATOR_OFFSET)
        .map_err(|_| malformed(format!("only {size} bytes, too small to hold a locator")))?;
    let locator = Locator::parse(&b, size).map_err(malformed)?;
    let signed = SignedManifest::read(src, locator.manifest_offset, size).map_err(malformed)?;
    Ok(SlotHeader { locator, signed })
}

/// A slot image whose manifest signature holds and agrees with the locator.
#[derive(Clone, Debug)]
pub struct VerifiedSlot {
    /// The locator.
    pub locator: Locator,
    /// The verified manifest.
    pub verified: VerifiedManifest,
    /// Verity parameters from the manifest.
    pub params: VerityParams,
    /// Root hash from the manifest.
    pub root_hash: [u8; 32],
    /// Bytes of the whole slot image ([`SlotHeader::image_size`]).
    pub image_size: u64,
}

impl VerifiedSlot {
    /// Where the verity hash tree lies in the slot image: after the
    /// superblock's block at the hash offset, as long as the parameters'
    /// tree is.
    pub fn tree_range(&self) -> Result<std::ops::Range<u64>, verity::VerityError> {
        let layout = verity::TreeLayout::new(&self.params)?;
        let start = self.locator.hash_offset + u64::from(self.params.hash_block_size);
        Ok(start..start + layout.tree_size())
    }
}

/// Reads a slot image and verifies its manifest signature and the
/// consistency of locator and manifest. Does not read the data.
pub fn open_verified<R: ReadAt + ?Sized>(
    src: &R,
    size: u64,
    path: &Path,
    trusted: &TrustedKeys,
) -> Result<VerifiedSlot, SlotImageError> {
    let header = read_header(src, size, path)?;
    let verified = header.signed.verify(trusted, path)?;
    let m = &verified.manifest;
    let malformed = |reason: String| SlotImageError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let params = m.verity.params().map_err(malformed)?;
    let root_hash = m.verity.root_hash_bytes().map_err(malformed)?;
    let image_size = header.image_size();
    let l = header.locator;
    if l.data_size != params.data_size()
        || l.data_size != m.filesystem.size
        || l.hash_offset != m.verity.hash_offset
        || l.manifest_offset != m.manifest_offset
    {
        return Err(malformed(format!(
            "the locator ({l:?}) disagrees with the signed manifest (data {} bytes, hash offset {}, manifest offset {})",
            m.filesystem.size, m.verity.hash_offset, m.manifest_offset
        )));
    }
    Ok(VerifiedSlot {
        locator: l,
        verified,
        params,
        root_hash,
        image_size,
    })
}

/// Full verity check of a verified slot that lives at `offset` of `file`
/// (0 for a payload file, the partition offset in a disk image).
pub fn verify_data(
    file: &File,
    path: &Path,
    offset: u64,
    slot: &VerifiedSlot,
) -> Result<(), SlotImageError> {
    let sb = verity::verify(
        DataFile { file, path, offset },
        HashFile {
            file,
            path,
            offset: offset + slot.locator.hash_offset,
        },
        &slot.root_hash,
    )
    .map_err(|source| SlotImageError::Verity {
        path: path.to_owned(),
        source,
    })?;
    if sb.params != slot.params {
        return Err(SlotImageError::Malformed {
            path: path.to_owned(),
            reason: "the verity superblock's parameters differ from the signed manifest's".into(),
        });
    }
    Ok(())
}
