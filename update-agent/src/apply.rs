//! Applying a release to the inactive slot, in the order that keeps the
//! machine bootable at every moment:
//!
//! 1. check the payload's signed manifest (trusted key, security version,
//!    size) before touching the disk;
//! 2. make the inactive slot unbootable and write the table;
//! 3. stream the payload into the slot, hashing as it is written (SHA-256 of
//!    the whole payload, and the verity tree of its data), no temporary copy;
//! 4. compare the root hash and the tree with the signed manifest and the
//!    payload, and read the slot's header back from the disk;
//! 5. only then mark the slot valid (one try) and upgrade to it.
//!
//! A failure at 3 or 4 leaves the slot unbootable (step 2) and says why; the
//! active slot is never written.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use drover_core::keys::TrustedKeys;
use drover_core::manifest::Manifest;
use drover_core::slot_image::{self, Window};
use drover_core::verity::VerityStream;
use drover_core::{SlotId, Slots};
use sha2::{Digest, Sha256};

/// Why an update was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload could not be read.
    #[error("{path}: {what}")]
    Io {
        /// Payload or disk.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signature, format or consistency of the payload.
    #[error("the payload was refused")]
    Payload(#[source] slot_image::SlotImageError),
    /// Slot state or partition table.
    #[error(transparent)]
    Slots(#[from] drover_core::SlotError),
    /// The release is below the running security version.
    #[error("security version {offered} of {version} is below the running security version {running}; refusing to downgrade (an operator can override with --allow-security-downgrade)")]
    SecurityDowngrade {
        /// Offered release.
        version: String,
        /// Its security version.
        offered: u64,
        /// The running one.
        running: u64,
    },
    /// The payload does not fit the slot.
    #[error("the payload is {size} bytes but the {slot} partition holds {capacity}")]
    TooBig {
        /// The slot.
        slot: SlotId,
        /// Payload size.
        size: u64,
        /// Partition size.
        capacity: u64,
    },
    /// What was written does not match the signed manifest.
    #[error("the payload written to {slot} does not match its signed manifest: {reason}; {slot} stays unbootable")]
    Mismatch {
        /// The slot.
        slot: SlotId,
        /// What differs.
        reason: String,
    },
}

/// Operator choices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Accept a release whose security version is below the running one.
    pub allow_security_downgrade: bool,
}

/// What an applied update did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    /// The slot written.
    pub slot: &'static str,
    /// The version now staged.
    pub version: String,
    /// Its security version.
    pub security_version: u64,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the payload as written.
    pub sha256: String,
    /// Verity root hash, as computed while writing.
    pub root_hash: String,
}

/// The manifest of the running (active) slot, if it holds a verified one.
pub fn running_manifest(
    slots: &Slots,
    disk: &File,
    path: &Path,
    trusted: &TrustedKeys,
) -> Option<Manifest> {
    let st = slots.get(slots.active());
    let w = Window {
        file: disk,
        offset: st.offset,
    };
    slot_image::open_verified(&w, st.size, path, trusted)
        .ok()
        .map(|v| v.verified.manifest)
}

/// Applies the payload file `payload` to the inactive slot of `disk`
/// (opened read-write, `slots` read from it). `progress(done, total)` is
/// called as bytes are written.
pub fn apply(
    slots: &mut Slots,
    disk: &mut File,
    disk_path: &Path,
    payload: &Path,
    trusted: &TrustedKeys,
    policy: Policy,
    mut progress: impl FnMut(u64, u64),
) -> Result<ApplyReport, ApplyError> {
    let io = |path: &Path, what: &'static str| {
        let path = path.to_owned();
        move |source| ApplyError::Io { path, what, source }
    };
    let pf = File::open(payload).map_err(io(payload, "opening the payload"))?;
    let size = pf
        .metadata()
        .map_err(io(payload, "reading the payload size"))?
        .len();

    // 1. Check before touching the disk.
    let v = slot_image::open_verified(&pf, size, payload, trusted).map_err(ApplyError::Payload)?;
    let m = v.verified.manifest.clone();
    let header = slot_image::read_header(&pf, size, payload).map_err(ApplyError::Payload)?;
    let total = header.image_size();
    if total != size {
        return Err(ApplyError::Payload(slot_image::SlotImageError::Malformed {
            path: payload.to_owned(),
            reason: format!("the file is {size} bytes but the slot image it holds is {total}"),
        }));
    }
    if let Some(running) = running_manifest(slots, disk, disk_path, trusted) {
        if m.os.security_version < running.os.security_version && !policy.allow_security_downgrade {
            return Err(ApplyError::SecurityDowngrade {
                version: m.os.version.clone(),
                offered: m.os.security_version,
                running: running.os.security_version,
            });
        }
    }
    let target = slots.inactive();
    let st = slots.get(target);
    if total > st.size {
        return Err(ApplyError::TooBig {
            slot: target,
            size: total,
            capacity: st.size,
        });
    }

    // 2. Unbootable first.
    slots.make_unbootable();
    slots.write(disk)?;

    // 3. Stream, hashing as it goes.
    let data_size = v.locator.data_size;
    let mut verity = VerityStream::new(v.params.clone()).map_err(|e| ApplyError::Mismatch {
        slot: target,
        reason: e.to_string(),
    })?;
    let mut sha = Sha256::new();
    let mut tree_from_payload = Vec::new();
    let tree_start = v.locator.hash_offset + 4096;
    let tree_len = verity.layout().tree_size();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &pf);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < total {
        let want = buf.len().min((total - pos) as usize);
        let n = reader
            .read(&mut buf[..want])
            .map_err(io(payload, "reading the payload"))?;
        if n == 0 {
            return Err(ApplyError::Mismatch {
                slot: target,
                reason: format!("the payload ended after {pos} of {total} bytes"),
            });
        }
        let chunk = &buf[..n];
        disk.write_all_at(chunk, st.offset + pos)
            .map_err(io(disk_path, "writing the slot"))?;
        sha.update(chunk);
        // The data region feeds the verity stream; the tree region is kept to compare.
        let (a, b) = (pos, pos + n as u64);
        if a < data_size {
            let end = b.min(data_size);
            verity
                .update(&chunk[..(end - a) as usize])
                .map_err(|e| ApplyError::Mismatch {
                    slot: target,
                    reason: e.to_string(),
                })?;
        }
        let (ts, te) = (tree_start, tree_start + tree_len);
        if b > ts && a < te {
            let from = ts.max(a) - a;
            let to = te.min(b) - a;
            tree_from_payload.extend_from_slice(&chunk[from as usize..to as usize]);
        }
        pos = b;
        progress(pos, total);
    }
    disk.sync_all().map_err(io(disk_path, "syncing the slot"))?;

    // 4. Compare with what was signed.
    let (tree, root) = verity.finish().map_err(|e| ApplyError::Mismatch {
        slot: target,
        reason: e.to_string(),
    })?;
    if root != v.root_hash {
        return Err(ApplyError::Mismatch {
            slot: target,
            reason: format!(
                "the data hashes to root {}, the manifest says {}",
                hex::encode(root),
                hex::encode(v.root_hash)
            ),
        });
    }
    if tree != tree_from_payload {
        return Err(ApplyError::Mismatch {
            slot: target,
            reason: "the verity tree in the payload is not the tree of its data".into(),
        });
    }
    let w = Window {
        file: disk,
        offset: st.offset,
    };
    let back =
        slot_image::open_verified(&w, st.size, disk_path, trusted).map_err(ApplyError::Payload)?;
    if back.root_hash != v.root_hash {
        return Err(ApplyError::Mismatch {
            slot: target,
            reason: "reading the slot back gives another manifest".into(),
        });
    }

    // 5. Valid, then chosen.
    slots.mark_valid(1)?;
    slots.write(disk)?;
    slots.upgrade()?;
    slots.write(disk)?;
    Ok(ApplyReport {
        slot: target.label(),
        version: m.os.version,
        security_version: m.os.security_version,
        bytes: total,
        sha256: hex::encode(sha.finalize()),
        root_hash: hex::encode(root),
    })
}
