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

/// Checks that every byte of a verified slot image outside its data and
/// tree (both covered by the root hash) is exactly what its signed
/// manifest implies: the verity superblock's block (parameters, salt and
/// the UUID `seal` derives from them, zeros after), zeros between the
/// tree and the envelope, and the envelope as `seal` writes it (no bytes
/// in its padding). With this and a verity check, every byte of
/// `0..image_size` is covered by what was verified.
pub fn check_canonical<R: ReadAt + ?Sized>(
    src: &R,
    path: &Path,
    slot: &VerifiedSlot,
) -> Result<(), SlotImageError> {
    let malformed = |reason: String| SlotImageError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let read = |offset: u64, len: u64| -> Result<Vec<u8>, SlotImageError> {
        let mut b = vec![0u8; len as usize];
        src.read_exact_at(&mut b, offset)
            .map_err(|_| malformed(format!("cannot read {len} bytes at {offset}")))?;
        Ok(b)
    };
    let l = &slot.locator;
    let block = u64::from(slot.params.hash_block_size);
    let mut want = vec![0u8; block as usize];
    let sb = verity::Superblock {
        params: slot.params.clone(),
        uuid: super::seal::derived_uuid(&slot.params.salt, l.data_size),
    };
    want[..verity::SUPERBLOCK_SIZE].copy_from_slice(&sb.to_bytes());
    if read(l.hash_offset, block)? != want {
        return Err(malformed(
            "the verity superblock's block differs from the one the signed manifest implies".into(),
        ));
    }
    let tree = slot
        .tree_range()
        .map_err(|e| malformed(format!("verity parameters: {e}")))?;
    if tree.end > l.manifest_offset {
        return Err(malformed(format!(
            "the verity tree ends at {} past the manifest at {}",
            tree.end, l.manifest_offset
        )));
    }
    if read(tree.end, l.manifest_offset - tree.end)?
        .iter()
        .any(|&b| b != 0)
    {
        return Err(malformed(
            "the bytes between the verity tree and the manifest are not zero".into(),
        ));
    }
    let header = read_header(src, slot.image_size, path)?;
    let envelope = header.signed.to_envelope();
    if read(l.manifest_offset, envelope.len() as u64)? != envelope {
        return Err(malformed(
            "the manifest envelope holds bytes its signed content does not account for".into(),
        ));
    }
    Ok(())
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
