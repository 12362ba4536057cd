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
//!
//! One file per part: `format` (the locator and the envelope, their bytes
//! and their checks), `open` (reading and verifying a slot: the boot stage,
//! the agent, `drover inspect`), `seal` (writing one: the image builder
//! only).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::verity::VerityError;

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

mod format;
mod open;
mod seal;

pub use format::{Locator, Signature, SignedManifest, VerifiedManifest};
pub use open::{
    check_canonical, open_verified, read_header, verify_data, SlotHeader, VerifiedSlot,
};
pub use seal::{derived_uuid, seal, SealInput};

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
