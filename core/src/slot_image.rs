//! The slot image: exactly the bytes written into USR-A or USR-B.
//!
//! ```text
//! 0                 file system (EROFS); its first KiB is reserved for boot
//!                   loaders, and Drover's locator sits in bytes 512..1024
//! data_size         dm-verity superblock (one 4 KiB hash block), then the tree
//! manifest_offset   signed manifest envelope, padded to 4 KiB
//! ```
//!
//! The locator is the "footer at a fixed place" of the design. It is at the
//! front rather than at the end because a slot partition is larger than the
//! image written into it: the end of the partition does not mark the end of
//! the image, while offset 512 is the same in the payload file and in the
//! partition. It is covered by the verity tree and repeats facts the signed
//! manifest states, so a tampered locator fails the signature or the
//! consistency check.
//!
//! Locator (512 bytes, little-endian): magic `DROVERSL`, format u32 (1),
//! flags u32 (0), data size u64, hash offset u64, manifest offset u64, the
//! rest zero.
//!
//! Envelope: magic `DRVRMNFT`, format u32 (1), manifest length u32 (at most
//! 1 MiB), signature count u32 (1–16), reserved u32 (0), the manifest bytes,
//! then per signature the SHA-256 of the signer's raw public key (32 bytes)
//! and the ed25519 signature (64 bytes) over the manifest bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, SigningKey, TrustedKeys};
use crate::manifest::Manifest;
use crate::verity::{self, DataFile, HashFile, TreeLayout, VerityError, VerityParams};

/// Where the locator starts in the slot image.
pub const LOCATOR_OFFSET: u64 = 512;
/// Size of the locator.
pub const LOCATOR_SIZE: usize = 512;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u32 = 1 << 20;
/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: u32 = 16;
/// Alignment of the hash area and the manifest envelope.
pub const ALIGN: u64 = 4096;

const LOCATOR_MAGIC: &[u8; 8] = b"DROVERSL";
const ENVELOPE_MAGIC: &[u8; 8] = b"DRVRMNFT";
const ENVELOPE_HEADER: usize = 24;
const SIG_ENTRY: usize = 32 + 64;

/// Errors reading, checking or sealing a slot image.
#[derive(Debug, thiserror::Error)]
pub enum SlotImageError {
    /// Reading or writing failed.
    #[error("{path}: {what}")]
    Io {
        /// The image, partition or disk.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a slot image Drover can read.
    #[error("{path}: not a valid slot image: {reason}")]
    Malformed {
        /// The image, partition or disk.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No signature is by a trusted key.
    #[error("{path}: the manifest is not signed by a trusted key (signed by {signers}; trusted: {trusted})")]
    UnknownKey {
        /// The image.
        path: PathBuf,
        /// Short ids of the keys that signed.
        signers: String,
        /// Short ids of the trusted keys.
        trusted: String,
    },
    /// A signature by a trusted key does not verify: the manifest or the
    /// signature was changed.
    #[error("{path}: the manifest signature by trusted key {key} does not verify (the manifest was altered or the signature is corrupt)")]
    BadSignature {
        /// The image.
        path: PathBuf,
        /// Short id of the key.
        key: String,
    },
    /// The verity tree could not be built or does not verify.
    #[error("{path}: verity check failed")]
    Verity {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: VerityError,
    },
}

/// Reads bytes at an offset: files, partitions inside disks, byte slices.
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error when fewer bytes exist.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// A slot that lives at a byte offset of a file: a partition inside a disk
/// image or block device.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    /// The disk.
    pub file: &'a File,
    /// Byte offset of the slot in it.
    pub offset: u64,
}

impl ReadAt for Window<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, self.offset + offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

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
