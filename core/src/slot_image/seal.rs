//! Sealing a file system image into a signed slot image (the builder).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    Locator, SignedManifest, SlotImageError, ALIGN, LOCATOR_MAGIC, LOCATOR_OFFSET, LOCATOR_SIZE,
};
use crate::keys::SigningKey;
use crate::manifest::Manifest;
use crate::verity::{self, DataFile, HashFile, TreeLayout, VerityParams};

/// What the sealer needs besides the file system.
#[derive(Clone, Debug)]
pub struct SealInput {
    /// The release.
    pub os: crate::manifest::OsRelease,
    /// File system type, e.g. `erofs`.
    pub fs_kind: String,
    /// Build time.
    pub created: u64,
    /// Verity salt (deterministic in builds, for reproducibility).
    pub salt: Vec<u8>,
    /// Boot files inside the slot, if any.
    pub boot: Option<crate::manifest::BootFiles>,
    /// Reference values for attestation.
    pub reference: Vec<crate::manifest::ReferenceValue>,
}

/// Turns a file holding a file system image into a signed slot image in
/// place: pads it to 4 KiB, writes the locator, appends the verity tree and
/// the signed manifest envelope, and syncs. Returns the signed manifest.
pub fn seal(
    file: &File,
    path: &Path,
    input: SealInput,
    keys: &[&SigningKey],
) -> Result<(Manifest, SignedManifest), SlotImageError> {
    let io = |what: &'static str| {
        move |source| SlotImageError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let fs_size = file.metadata().map_err(io("reading the file size"))?.len();
    if fs_size < 1024 {
        return Err(SlotImageError::Malformed {
            path: path.to_owned(),
            reason: format!("{fs_size} bytes is too small for a file system image"),
        });
    }
    let mut reserved = [0u8; LOCATOR_SIZE];
    FileExt::read_exact_at(file, &mut reserved, LOCATOR_OFFSET)
        .map_err(io("reading bytes 512..1024"))?;
    if reserved.iter().any(|&b| b != 0) && &reserved[..8] != LOCATOR_MAGIC {
        return Err(SlotImageError::Malformed {
            path: path.to_owned(),
            reason: "bytes 512..1024 of the file system are in use; the locator needs them (EROFS leaves them free)".into(),
        });
    }
    let data_size = fs_size.next_multiple_of(ALIGN);
    file.set_len(data_size)
        .map_err(io("padding the file system"))?;
    let params = VerityParams::new(data_size / ALIGN, input.salt.clone());
    let layout = TreeLayout::new(&params).map_err(|source| SlotImageError::Verity {
        path: path.to_owned(),
        source,
    })?;
    let locator = Locator {
        data_size,
        hash_offset: data_size,
        manifest_offset: data_size + layout.hash_area_size(),
    };
    file.write_all_at(&locator.to_bytes(), LOCATOR_OFFSET)
        .map_err(io("writing the locator"))?;
    let out = verity::format(
        DataFile {
            file,
            path,
            offset: 0,
        },
        HashFile {
            file,
            path,
            offset: locator.hash_offset,
        },
        &params,
        derived_uuid(&input.salt, data_size),
    )
    .map_err(|source| SlotImageError::Verity {
        path: path.to_owned(),
        source,
    })?;
    let manifest = Manifest {
        format: crate::manifest::MANIFEST_FORMAT,
        os: input.os,
        created: input.created,
        filesystem: crate::manifest::Filesystem {
            kind: input.fs_kind,
            size: data_size,
        },
        verity: crate::manifest::VerityInfo {
            algorithm: "sha256".into(),
            data_block_size: params.data_block_size,
            hash_block_size: params.hash_block_size,
            data_blocks: params.data_blocks,
            hash_offset: locator.hash_offset,
            salt: hex::encode(&params.salt),
            root_hash: hex::encode(out.root_hash),
        },
        manifest_offset: locator.manifest_offset,
        boot: input.boot,
        reference: input.reference,
    };
    let signed = SignedManifest::sign(&manifest, keys);
    let envelope = signed.to_envelope();
    file.write_all_at(&envelope, locator.manifest_offset)
        .map_err(io("writing the signed manifest"))?;
    file.set_len(locator.manifest_offset + envelope.len() as u64)
        .map_err(io("trimming the slot image"))?;
    file.sync_all().map_err(io("syncing the slot image"))?;
    Ok((manifest, signed))
}

/// A UUID for the verity superblock that depends only on the inputs, so
/// images are reproducible.
pub fn derived_uuid(salt: &[u8], data_size: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"drover verity uuid\0");
    h.update(salt);
    h.update(data_size.to_le_bytes());
    let d = h.finalize();
    let mut u: [u8; 16] = d[..16].try_into().unwrap();
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
