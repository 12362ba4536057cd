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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use drover_core::keys::TrustedKeys;
use drover_core::manifest::Manifest;
use drover_core::slot_image::{self, ReadAt, Window};
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
    /// The release differs from what the channel advertised.
    #[error("the payload does not match the signed channel metadata: {0}")]
    Advertised(String),
    /// Reading the payload failed (network, file).
    #[error("reading the payload from {source_name} at byte {offset}")]
    Source {
        /// Where from.
        source_name: String,
        /// Where in the payload.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Stopped on request.
    #[error("cancelled after {written} of {total} bytes; the slot stays unbootable")]
    Cancelled {
        /// Bytes written.
        written: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A delta would download more than the whole payload (a node with
    /// almost nothing in common with the release): the caller fetches the
    /// payload instead.
    #[error("the delta needs {delta} bytes of frames, the whole payload is {full}")]
    DeltaLarger {
        /// Bytes of frames the delta would still fetch.
        delta: u64,
        /// The payload's size.
        full: u64,
    },
    /// The release is for other software (another OS name or
    /// architecture) than the node runs, though signed by a trusted key.
    #[error("wrong software: {0}; refusing it")]
    WrongSoftware(String),
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

/// What decides whether a release is accepted: the keys its manifest must
/// be signed by, and the operator's choices.
#[derive(Clone, Copy)]
pub struct Trust<'a> {
    /// Keys a manifest (and a channel) must be signed by.
    pub keys: &'a TrustedKeys,
    /// The operator's choices.
    pub policy: Policy,
}

/// The disk an update is written to: open read-write (and locked by the
/// caller), its slots read from it.
pub struct Target<'a> {
    /// The slots, the inactive one written.
    pub slots: &'a mut Slots,
    /// The disk.
    pub disk: &'a mut File,
    /// Its path, for messages.
    pub path: &'a Path,
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
    /// For an update from a block index: what was fetched and copied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::delta::DeltaStats>,
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

/// Where a payload comes from: a file, or an HTTP server (see
/// [`crate::source`]).
pub trait Source {
    /// For messages: a path or URL.
    fn name(&self) -> String;
    /// The size the source has (a file) or advertises (a channel).
    fn size(&self) -> u64;
    /// Random access, for the locator and the signed manifest.
    fn at(&self) -> &dyn ReadAt;
    /// The payload's bytes from `offset` on. Bytes beyond [`Source::size`]
    /// are an error the caller detects.
    fn stream(&mut self, offset: u64) -> std::io::Result<Box<dyn Read + Send + '_>>;
}

/// A payload file.
pub struct FileSource {
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileSource {
    /// Opens a payload file.
    pub fn open(path: &Path) -> Result<Self, ApplyError> {
        let io = |what| {
            let path = path.to_owned();
            move |source| ApplyError::Io { path, what, source }
        };
        let file = File::open(path).map_err(io("opening the payload"))?;
        let size = file
            .metadata()
            .map_err(io("reading the payload size"))?
            .len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
        })
    }
}

impl Source for FileSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn at(&self) -> &dyn ReadAt {
        &self.file
    }
    fn stream(&mut self, offset: u64) -> std::io::Result<Box<dyn Read + Send + '_>> {
        use std::io::Seek as _;
        let mut f = &self.file;
        f.seek(std::io::SeekFrom::Start(offset))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// What the signed channel metadata says of the release, checked before
/// the disk is touched (size, root hash) and after the write (SHA-256).
#[derive(Clone, Debug)]
pub struct Advertised {
    /// Exact payload size.
    pub size: u64,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
    /// Verity root hash, hex.
    pub root_hash: String,
}

/// Callbacks and controls of one apply.
pub struct Hooks<'a> {
    /// `(written, total)` as bytes are written.
    pub progress: &'a mut dyn FnMut(u64, u64),
    /// Called with the number of bytes that are durable (synced) in the
    /// slot, every [`CHECKPOINT_BYTES`]: persist it to resume after a crash.
    pub checkpoint: &'a mut dyn FnMut(u64),
    /// Set to stop at the next chunk.
    pub cancel: &'a AtomicBool,
}

/// How often the slot is synced and a resume point reported.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;

/// Applies the payload from `src` to the inactive slot of `disk` (opened
/// read-write, `slots` read from it), in the order described at the top of
/// this module.
///
/// `resume_from`: bytes of this same payload already durable in the
/// inactive slot from an interrupted apply (the caller keys its resume state
/// by the payload's SHA-256 and the slot). They are read back from the disk
/// and hashed, and only the rest is fetched.
pub fn apply(
    target: Target<'_>,
    src: &mut dyn Source,
    advertised: Option<&Advertised>,
    trust: Trust<'_>,
    resume_from: u64,
    hooks: Hooks<'_>,
) -> Result<ApplyReport, ApplyError> {
    let Target {
        slots,
        disk,
        path: disk_path,
    } = target;
    let trusted = trust.keys;
    let io = |path: &Path, what: &'static str| {
        let path = path.to_owned();
        move |source| ApplyError::Io { path, what, source }
    };
    let name = src.name();
    let Checked {
        v,
        total,
        target,
        slot: st,
    } = check(slots, disk, disk_path, src, advertised, trust)?;
    let m = v.verified.manifest.clone();
    let mismatch = |reason: String| ApplyError::Mismatch {
        slot: target,
        reason,
    };

    // 2. Unbootable first.
    slots.make_unbootable();
    slots.write(disk)?;

    // 3. Stream, hashing as it goes: one thread reads the source, this one
    // writes the slot, a third hashes what was written (the whole payload,
    // and the verity tree of its data), so the network, the disk and the
    // hashing overlap.
    let mut hasher = Hasher::new(&v, mismatch)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    // What an interrupted apply left durable: read back and hashed, not fetched.
    let resume_from = resume_from.min(total);
    while pos < resume_from {
        let n = buf.len().min((resume_from - pos) as usize);
        FileExt::read_exact_at(&*disk, &mut buf[..n], st.offset + pos)
            .map_err(io(disk_path, "reading back the slot to resume"))?;
        hasher.feed(&buf[..n], pos).map_err(mismatch)?;
        pos += n as u64;
    }
    drop(buf);
    let source_err = |offset: u64| {
        let source_name = name.clone();
        move |source| ApplyError::Source {
            source_name,
            offset,
            source,
        }
    };
    let reader = src.stream(pos).map_err(source_err(pos))?;
    let disk_ref: &File = disk;
    let hasher = std::thread::scope(|s| -> Result<Hasher, ApplyError> {
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            free_tx
                .send(vec![0u8; PIPELINE_BUFFER])
                .expect("the channel holds them all");
        }
        let (full_tx, full_rx) = mpsc::sync_channel::<Msg>(PIPELINE_BUFFERS);
        let (hash_tx, hash_rx) = mpsc::sync_channel::<(u64, Vec<u8>, usize)>(PIPELINE_BUFFERS);
        s.spawn(move || read_ahead(reader, pos, total, &free_rx, &full_tx));
        let back = free_tx.clone();
        let hashing = s.spawn(move || {
            let mut failed = None;
            for (at, b, n) in hash_rx {
                if failed.is_none() {
                    failed = hasher.feed(&b[..n], at).err();
                }
                let _ = back.send(b);
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(hasher),
            }
        });
        drop(free_tx);
        let mut pos = pos;
        let mut last_sync = pos;
        let written = (|| loop {
            if hooks.cancel.load(Ordering::Relaxed) {
                let _ = disk_ref.sync_data();
                return Err(ApplyError::Cancelled {
                    written: pos,
                    total,
                });
            }
            match full_rx.recv() {
                Ok(Msg::Data(at, b, n)) => {
                    debug_assert_eq!(at, pos);
                    disk_ref
                        .write_all_at(&b[..n], st.offset + at)
                        .map_err(io(disk_path, "writing the slot"))?;
                    pos += n as u64;
                    let _ = hash_tx.send((at, b, n));
                    (hooks.progress)(pos, total);
                    if pos - last_sync >= CHECKPOINT_BYTES {
                        disk_ref
                            .sync_data()
                            .map_err(io(disk_path, "syncing the slot"))?;
                        (hooks.checkpoint)(pos);
                        last_sync = pos;
                    }
                }
                Ok(Msg::Short) => {
                    return Err(mismatch(format!(
                        "the payload ended after {pos} of {total} bytes"
                    )))
                }
                Ok(Msg::Longer) => {
                    return Err(ApplyError::Advertised(format!(
                        "the source sent more than the {total} bytes of the signed slot image"
                    )))
                }
                Ok(Msg::Failed(at, e)) => return Err(source_err(at)(e)),
                Ok(Msg::End) => return Ok(()),
                Err(_) => {
                    return Err(mismatch("the payload reader stopped".into()));
                }
            }
        })();
        // Stops the reader (its sends fail) and ends the hasher's input.
        drop(full_rx);
        drop(hash_tx);
        let hashed = hashing.join().expect("the hashing thread panicked");
        written?;
        hashed.map_err(mismatch)
    })?;
    disk.sync_all().map_err(io(disk_path, "syncing the slot"))?;

    // 4. Compare with what was signed.
    let Hasher {
        sha,
        verity,
        tree_from_payload,
        tree_from_payload_len,
        ..
    } = hasher;
    let (tree, root) = verity.finish().map_err(|e| mismatch(e.to_string()))?;
    let sha256 = hex::encode(sha.finalize());
    if root != v.root_hash {
        return Err(mismatch(format!(
            "the data hashes to root {}, the manifest says {}",
            hex::encode(root),
            hex::encode(v.root_hash)
        )));
    }
    if tree.len() as u64 != tree_from_payload_len
        || Sha256::digest(&tree) != tree_from_payload.finalize()
    {
        return Err(mismatch(
            "the verity tree in the payload is not the tree of its data".into(),
        ));
    }
    if let Some(a) = advertised {
        if a.sha256 != sha256 {
            return Err(mismatch(format!(
                "the payload has sha256 {sha256}, the channel says {}",
                a.sha256
            )));
        }
    }
    finish(slots, disk, disk_path, trusted, &v, target)?;
    Ok(ApplyReport {
        slot: target.label(),
        version: m.os.version,
        security_version: m.os.security_version,
        bytes: total,
        sha256,
        root_hash: hex::encode(root),
        delta: None,
    })
}

/// Buffers between the reader, the writer and the hasher, and their size:
/// 8 MiB in flight.
const PIPELINE_BUFFERS: usize = 4;
const PIPELINE_BUFFER: usize = 2 << 20;

/// What the reading thread hands the writer.
enum Msg {
    /// `n` bytes of the payload at offset `at`.
    Data(u64, Vec<u8>, usize),
    /// The payload is complete, and the source has no more.
    End,
    /// The source ended early.
    Short,
    /// The source has more than the payload's size.
    Longer,
    /// Reading failed at this offset.
    Failed(u64, std::io::Error),
}

/// Reads the source from `pos` to `total` into free buffers and hands
/// them on, then checks the source ends there.
fn read_ahead(
    mut reader: Box<dyn Read + Send + '_>,
    mut pos: u64,
    total: u64,
    free: &mpsc::Receiver<Vec<u8>>,
    full: &mpsc::SyncSender<Msg>,
) {
    while pos < total {
        let Ok(mut b) = free.recv() else { return };
        let want = b.len().min((total - pos) as usize);
        let mut n = 0;
        while n < want {
            match reader.read(&mut b[n..want]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if n > 0 {
                        let _ = full.send(Msg::Data(pos, b, n));
                    }
                    let _ = full.send(Msg::Failed(pos + n as u64, e));
                    return;
                }
            }
        }
        if n == 0 {
            let _ = full.send(Msg::Short);
            return;
        }
        if full.send(Msg::Data(pos, b, n)).is_err() {
            return;
        }
        pos += n as u64;
    }
    // Bounded by the advertised size: more bytes mean another payload.
    let mut one = [0u8; 1];
    let _ = full.send(match reader.read(&mut one) {
        Ok(0) => Msg::End,
        Ok(_) => Msg::Longer,
        Err(e) => Msg::Failed(pos, e),
    });
}

/// Hashes the payload in order: all of it (SHA-256), its data (the verity
/// tree it gives), and the tree it carries (compared by digest, not kept:
/// that saves its size in memory, 8 MiB per GiB of data).
struct Hasher {
    sha: Sha256,
    verity: VerityStream,
    tree_from_payload: Sha256,
    tree_from_payload_len: u64,
    data_size: u64,
    tree: std::ops::Range<u64>,
}

impl Hasher {
    fn new(
        v: &slot_image::VerifiedSlot,
        mismatch: impl Fn(String) -> ApplyError,
    ) -> Result<Self, ApplyError> {
        let verity = VerityStream::new(v.params.clone()).map_err(|e| mismatch(e.to_string()))?;
        let tree = v.tree_range().map_err(|e| mismatch(e.to_string()))?;
        Ok(Self {
            sha: Sha256::new(),
            verity,
            tree_from_payload: Sha256::new(),
            tree_from_payload_len: 0,
            data_size: v.locator.data_size,
            tree,
        })
    }

    /// The payload's bytes at `pos`, fed in order.
    fn feed(&mut self, chunk: &[u8], pos: u64) -> Result<(), String> {
        self.sha.update(chunk);
        let (a, b) = (pos, pos + chunk.len() as u64);
        if a < self.data_size {
            let end = b.min(self.data_size);
            self.verity
                .update(&chunk[..(end - a) as usize])
                .map_err(|e| e.to_string())?;
        }
        let (ts, te) = (self.tree.start, self.tree.end);
        if b > ts && a < te {
            let from = ts.max(a) - a;
            let to = te.min(b) - a;
            self.tree_from_payload
                .update(&chunk[from as usize..to as usize]);
            self.tree_from_payload_len += to - from;
        }
        Ok(())
    }
}

/// What [`check`] established before the disk is touched.
pub(crate) struct Checked {
    /// The payload's header, its manifest verified.
    pub v: slot_image::VerifiedSlot,
    /// The payload's size.
    pub total: u64,
    /// The slot to write.
    pub target: SlotId,
    /// Where it is.
    pub slot: drover_core::slots::SlotState,
}

/// Step 1: the payload's signed manifest (trusted key, security version,
/// size, what the channel advertised) and the slot it goes to, before the
/// disk is touched.
pub(crate) fn check(
    slots: &Slots,
    disk: &File,
    disk_path: &Path,
    src: &dyn Source,
    advertised: Option<&Advertised>,
    trust: Trust<'_>,
) -> Result<Checked, ApplyError> {
    let Trust {
        keys: trusted,
        policy,
    } = trust;
    let name_path = PathBuf::from(src.name());
    let size = src.size();
    let v = slot_image::open_verified(src.at(), size, &name_path, trusted)
        .map_err(ApplyError::Payload)?;
    let m = &v.verified.manifest;
    let total = v.image_size;
    if total != size {
        return Err(ApplyError::Payload(slot_image::SlotImageError::Malformed {
            path: name_path,
            reason: format!("the payload is {size} bytes but the slot image it holds is {total}"),
        }));
    }
    if let Some(a) = advertised {
        if a.size != total {
            return Err(ApplyError::Advertised(format!(
                "the channel says {} bytes, the signed slot image is {total}",
                a.size
            )));
        }
        if a.root_hash != hex::encode(v.root_hash) {
            return Err(ApplyError::Advertised(format!(
                "the channel says root hash {}, the signed manifest {}",
                a.root_hash,
                hex::encode(v.root_hash)
            )));
        }
    }
    if let Some(running) = running_manifest(slots, disk, disk_path, trusted) {
        if m.os.name != running.os.name {
            return Err(ApplyError::WrongSoftware(format!(
                "{} {} is for OS '{}', this node runs '{}'",
                name_path.display(),
                m.os.version,
                m.os.name,
                running.os.name
            )));
        }
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
    Ok(Checked {
        v,
        total,
        target,
        slot: st,
    })
}

/// Step 4's last check and step 5: the slot's header read back from the
/// disk gives the same signed manifest; then the slot is valid (one try)
/// and chosen.
pub(crate) fn finish(
    slots: &mut Slots,
    disk: &mut File,
    disk_path: &Path,
    trusted: &TrustedKeys,
    v: &slot_image::VerifiedSlot,
    target: SlotId,
) -> Result<(), ApplyError> {
    let st = slots.get(target);
    let w = Window {
        file: &*disk,
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
    // Every byte outside data and tree (which the root hash covers) must be
    // what the manifest implies: a superblock with another salt, or bytes
    // hidden in the envelope's padding, never become bootable.
    slot_image::check_canonical(&w, disk_path, &back).map_err(|e| ApplyError::Mismatch {
        slot: target,
        reason: format!("{e}"),
    })?;
    slots.mark_valid(1)?;
    slots.write(disk)?;
    slots.upgrade()?;
    slots.write(disk)?;
    Ok(())
}
