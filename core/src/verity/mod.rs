//! dm-verity hash trees, byte for byte what `veritysetup format` writes
//! (hash type 1, SHA-256, superblock version 1).
//!
//! * [`VerityParams`] and [`TreeLayout`]: where each level of the tree goes.
//! * [`Superblock`]: the 512-byte header in front of the tree.
//! * [`format()`] and [`verify`]: whole files, on every core.
//! * [`VerityStream`]: hashes data as it is written (the update agent).

mod layout;
mod stream;
mod superblock;
mod tree;

pub use layout::{TreeLayout, VerityParams};
pub use stream::VerityStream;
pub use superblock::{Superblock, SUPERBLOCK_SIZE};
pub use tree::{checked_leaves, format, read_superblock, verify, DataFile, FormatOutput, HashFile};

use std::path::PathBuf;

/// SHA-256 digest size; the only hash Drover uses.
pub const DIGEST_SIZE: usize = 32;

/// Errors formatting or verifying a tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// A file could not be read or written.
    #[error("{path}: {what}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Parameters that veritysetup would refuse too.
    #[error("invalid verity parameters: {0}")]
    Params(String),
    /// The superblock is missing or not one Drover can use.
    #[error("{path}: bad verity superblock at offset {offset}: {reason}")]
    Superblock {
        /// The hash file.
        path: PathBuf,
        /// Where the superblock was expected.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The top of the tree does not hash to the expected root hash.
    #[error("root hash mismatch: expected {expected}, the tree gives {actual}")]
    RootMismatch {
        /// The root hash asked for.
        expected: String,
        /// What the stored tree hashes to.
        actual: String,
    },
    /// A block of the hash tree does not match its parent.
    #[error(
        "hash tree block {block} of level {level} is corrupt (byte offset {offset} in {path})"
    )]
    CorruptHashBlock {
        /// The hash file.
        path: PathBuf,
        /// Tree level, 0 being the level that hashes data blocks.
        level: usize,
        /// Block index within the level.
        block: u64,
        /// Byte offset of the block in the hash file.
        offset: u64,
    },
    /// A data block does not match the tree.
    #[error("data block {block} is corrupt (byte offset {offset} in {path})")]
    CorruptDataBlock {
        /// The data file.
        path: PathBuf,
        /// Index of the data block.
        block: u64,
        /// Byte offset of the block in the data file.
        offset: u64,
    },
    /// The data stream ended before or ran past the expected size.
    #[error("expected {expected} bytes of data, got {actual}")]
    Length {
        /// Bytes expected.
        expected: u64,
        /// Bytes seen.
        actual: u64,
    },
}

/// Hashes one block the way hash type 1 does: SHA-256 over salt then block.
pub fn hash_block(salt: &[u8], block: &[u8]) -> [u8; DIGEST_SIZE] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}
