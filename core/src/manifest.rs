//! The slot manifest: what a slot image is, signed by the build key.
//!
//! Stored as JSON; the signature covers the exact stored bytes, so the
//! serializer's formatting does not matter to verification. Unknown fields
//! are rejected: a verifier must never silently ignore something it was
//! asked to check.

use serde::{Deserialize, Serialize};

use crate::verity::VerityParams;

/// The manifest format this code writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything a node or verifier needs to know about a slot image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The operating system release in the slot.
    pub os: OsRelease,
    /// Build time (seconds since the epoch; `SOURCE_DATE_EPOCH` when set).
    pub created: u64,
    /// The file system the slot holds.
    pub filesystem: Filesystem,
    /// The dm-verity tree over the file system.
    pub verity: VerityInfo,
    /// Byte offset of the signed manifest envelope in the slot image.
    pub manifest_offset: u64,
    /// The slot's own kernel, initramfs and command line, when it carries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootFiles>,
    /// Reference measurements for attestation (component name → SHA-256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<ReferenceValue>,
}

/// Name and version of the OS in the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsRelease {
    /// OS name, e.g. `drover`.
    pub name: String,
    /// Release version, e.g. `1.4.0`.
    pub version: String,
    /// Monotonic security version: nodes refuse to go below the running one
    /// without an explicit operator override.
    pub security_version: u64,
}

/// The file system image at the start of the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    /// File system type (`erofs`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes from offset 0 covered by verity (the file system, padded to a
    /// whole number of data blocks).
    pub size: u64,
}

/// The verity tree's parameters and root hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// Hash algorithm (`sha256`).
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Byte offset of the verity superblock in the slot image.
    pub hash_offset: u64,
    /// Salt, hex.
    pub salt: String,
    /// Root hash, hex.
    pub root_hash: String,
}

impl VerityInfo {
    /// The tree parameters, checked.
    pub fn params(&self) -> Result<VerityParams, String> {
        if self.algorithm != "sha256" {
            return Err(format!(
                "verity algorithm '{}' is not sha256",
                self.algorithm
            ));
        }
        let salt = hex::decode(&self.salt).map_err(|e| format!("verity salt: {e}"))?;
        let p = VerityParams {
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt,
        };
        p.validate().map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// The root hash as bytes.
    pub fn root_hash_bytes(&self) -> Result<[u8; 32], String> {
        let v = hex::decode(&self.root_hash).map_err(|e| format!("verity root hash: {e}"))?;
        v.try_into()
            .map_err(|_| "verity root hash is not 32 bytes".to_string())
    }
}

/// A file inside the slot's `/usr` that the boot stage reads and measures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Path inside the slot's file system (relative to `/usr`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The slot's kernel, initramfs and command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    /// The kernel image.
    pub kernel: FileRef,
    /// The initramfs.
    pub initramfs: FileRef,
    /// The kernel command line, without the verity arguments the stage adds.
    pub cmdline: String,
}

/// One reference value for a measured component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValue {
    /// What was measured (`slot-kernel`, `slot-initramfs`, …).
    pub component: String,
    /// Its SHA-256, hex.
    pub sha256: String,
}

impl Manifest {
    /// Serializes for storing and signing (pretty JSON, newline at the end).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses stored bytes, checking the format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this build reads format {MANIFEST_FORMAT})",
                m.format
            ));
        }
        Ok(m)
    }
}
