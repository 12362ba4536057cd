//! Delta updates: only the blocks the node lacks are downloaded.
//!
//! A release published with a block index ([`drover_core::blocks`]) is
//! applied frame by frame. The node reads the new release's verity tree
//! first (fetched, and checked against the signed root hash), hashes its
//! active slot with the new release's salt, and for each frame of the
//! payload either copies its blocks from the active slot — each one checked
//! against its leaf of the new tree before it is written — or fetches the
//! frame, coalescing neighbouring frames into one range request, and checks
//! the frame's SHA-256 (from the signed index) and each data block's leaf.
//! So every byte written is vouched for by the signed root hash or the
//! signed index, and the slot's header is read back and verified at the end,
//! as for a full update ([`crate::apply`]). A full update is the case where
//! no block is found: it downloads the compressed payload.
//!
//! Order and crash safety are those of the full update: the slot is made
//! unbootable before the first write and valid only after the last check.
//! Progress is made durable in payload order: `checkpoint(n)` says the
//! payload's first `n` bytes are in the slot and synced. After a crash the
//! frames below that point are read back and kept where their digest still
//! holds; nothing else is trusted.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use drover_core::blocks::{Frame, Index, BLOCK};
use drover_core::http::HttpSource;
use drover_core::verity::{checked_leaves, hash_block, VerityStream};

use crate::apply::{
    check, finish, Advertised, ApplyError, ApplyReport, Checked, Hooks, Source, Target, Trust,
    CHECKPOINT_BYTES,
};

/// Where a release's frames (`usr.blocks`) come from.
pub trait BlockSource {
    /// For messages: a path or URL.
    fn name(&self) -> String;
    /// The stored bytes `range` of `usr.blocks`, exactly.
    fn fetch(&self, range: std::ops::Range<u64>) -> std::io::Result<Box<dyn Read + '_>>;
}

impl BlockSource for HttpSource {
    fn name(&self) -> String {
        self.url().to_string()
    }
    fn fetch(&self, range: std::ops::Range<u64>) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.stream_range(range)?))
    }
}

/// `usr.blocks` as a file (a repository directory, a delta bundle).
pub struct FileBlocks {
    /// The file.
    pub file: File,
    /// Its path, for messages.
    pub path: PathBuf,
    /// Where `usr.blocks` starts in it.
    pub base: u64,
}

impl BlockSource for FileBlocks {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn fetch(&self, range: std::ops::Range<u64>) -> std::io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(ReadAtRange {
            file: &self.file,
            pos: self.base + range.start,
            end: self.base + range.end,
        }))
    }
}

/// `file`'s bytes `pos..end`, read at their offsets (no shared file
/// position, so one open file serves every reader).
struct ReadAtRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAtRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.end.saturating_sub(self.pos) as usize);
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

/// What a delta update did, beside what any update reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeltaStats {
    /// Frames in the release.
    pub frames: usize,
    /// Frames fetched.
    pub fetched_frames: usize,
    /// Bytes downloaded (of `usr.blocks`).
    pub fetched_bytes: u64,
    /// Range requests made.
    pub requests: usize,
    /// Payload bytes copied from the active slot.
    pub copied_bytes: u64,
    /// Payload bytes kept from an interrupted attempt.
    pub kept_bytes: u64,
    /// The compressed full payload (all of `usr.blocks`).
    pub full_stored_bytes: u64,
    /// The node ran the index's base release: frames copied by their
    /// source, the tree computed here rather than fetched.
    pub base: bool,
    /// Payload bytes computed here (the tree).
    pub computed_bytes: u64,
}

/// How a frame is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Already in the target slot (an interrupted attempt).
    Kept,
    /// From the active slot, block by block.
    Copy,
    /// Downloaded.
    Fetch,
    /// Downloaded before the rest (the tree).
    Early,
    /// On the base release: copied from the active slot at its source.
    Source,
    /// On the base release: the tree, computed from the data written.
    Compute,
}

/// Writes a checked frame's bytes to the slot.
type WriteFrame<'a> = dyn FnMut(&Frame, &[u8]) -> Result<(), ApplyError> + 'a;

/// The most frames one range request fetches (64 MiB of payload).
const MAX_RUN: usize = 256;

/// What fetched frames are checked against.
struct Check<'a> {
    /// The leaves of the new tree, checked against the root hash; empty
    /// while the tree itself is being fetched.
    leaves: &'a [[u8; 32]],
    salt: &'a [u8],
    data_size: u64,
    target: drover_core::SlotId,
}

/// Applies the release described by the signed `index` (its frames from
/// `blocks`, its header from `src`) to the inactive slot, copying what the
/// active slot has. `resume_from`: payload bytes an interrupted attempt
/// reported durable (checked again here, frame by frame).
#[allow(clippy::too_many_arguments)]
pub fn apply(
    target: Target<'_>,
    src: &dyn Source,
    blocks: &dyn BlockSource,
    index: &[u8],
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
    let Checked {
        v,
        total,
        target,
        slot: st,
    } = check(slots, disk, disk_path, src, advertised, trust)?;
    let mismatch = |reason: String| ApplyError::Mismatch {
        slot: target,
        reason,
    };
    let (index, _) = Index::parse_signed(index, trust.keys)
        .map_err(|e| ApplyError::Advertised(format!("{}: {e}", blocks.name())))?;
    if index.payload_size != total {
        return Err(ApplyError::Advertised(format!(
            "the block index is for a payload of {} bytes, the signed slot image has {total}",
            index.payload_size
        )));
    }
    if let Some(a) = advertised {
        if hex::encode(index.payload_sha256) != a.sha256 {
            return Err(ApplyError::Advertised(format!(
                "the block index is for payload sha256 {}, the channel says {}",
                hex::encode(index.payload_sha256),
                a.sha256
            )));
        }
    }
    let io = |what: &'static str| {
        let path = disk_path.to_owned();
        move |source| ApplyError::Io { path, what, source }
    };
    let params = v.params.clone();
    let data_size = v.locator.data_size;
    let tree_range = v.tree_range().map_err(|e| mismatch(e.to_string()))?;
    let mut stats = DeltaStats {
        frames: index.frames.len(),
        full_stored_bytes: index.stored_size(),
        ..DeltaStats::default()
    };

    // 2. Unbootable first.
    slots.make_unbootable();
    slots.write(disk)?;

    // What an interrupted attempt left: frames below its durable point
    // whose bytes still hash to the index's digest.
    let mut fill = vec![Fill::Fetch; index.frames.len()];
    let mut buf = Vec::new();
    for (i, f) in index.frames.iter().enumerate() {
        if f.range().end > resume_from.min(total) {
            break;
        }
        buf.resize(f.len as usize, 0);
        disk.read_exact_at(&mut buf, st.offset + f.offset)
            .map_err(io("reading back the slot to resume"))?;
        if drover_core::blocks::frame_digest(&buf) == f.sha256 {
            fill[i] = Fill::Kept;
            stats.kept_bytes += u64::from(f.len);
        }
    }

    // A node running the index's base release copies frames by their
    // source and computes the tree; any other matches blocks by the new
    // tree's leaves, which it fetches first.
    let active = slots.get(slots.active());
    let active_root = drover_core::slot_image::open_verified(
        &drover_core::slot_image::Window {
            file: &*disk,
            offset: active.offset,
        },
        active.size,
        disk_path,
        trust.keys,
    )
    .ok()
    .map(|a| a.root_hash);
    stats.base = index.base != [0; 32] && active_root == Some(index.base);
    let mut leaves = Vec::new();
    let mut want: HashMap<[u8; 32], u64> = HashMap::new();
    if stats.base {
        for (i, f) in index.frames.iter().enumerate() {
            if fill[i] != Fill::Fetch {
                continue;
            }
            let r = f.range();
            if r.start >= tree_range.start && r.end <= tree_range.end {
                fill[i] = Fill::Compute;
            } else if f.source != drover_core::blocks::NO_SOURCE && r.end <= data_size {
                fill[i] = Fill::Source;
            }
        }
    } else {
        // 3a. The tree, fetched (or kept) first and checked against the root
        // hash: its leaves say what every data block must be.
        let tree_frames: Vec<usize> = (0..index.frames.len())
            .filter(|&i| {
                let r = index.frames[i].range();
                r.start < tree_range.end && r.end > tree_range.start
            })
            .collect();
        for &i in &tree_frames {
            if fill[i] != Fill::Kept {
                fill[i] = Fill::Early;
            }
        }
        let early: Vec<usize> = tree_frames
            .iter()
            .copied()
            .filter(|&i| fill[i] == Fill::Early)
            .collect();
        let check = Check {
            leaves: &[],
            salt: &params.salt,
            data_size,
            target,
        };
        fetch_frames(
            &index,
            &early,
            blocks,
            &mut stats,
            &check,
            &mut |f, bytes| {
                disk.write_all_at(bytes, st.offset + f.offset)
                    .map_err(io("writing the slot"))
            },
        )?;
        let mut tree = vec![0u8; (tree_range.end - tree_range.start) as usize];
        disk.read_exact_at(&mut tree, st.offset + tree_range.start)
            .map_err(io("reading the tree back"))?;
        leaves = checked_leaves(&tree, &params, &v.root_hash).map_err(|e| {
            mismatch(format!(
                "the verity tree from the block index does not hold: {e}"
            ))
        })?;
        drop(tree);

        // 3b. What the active slot has: its data blocks hashed with the new
        // salt, matched against the leaves still needed.
        for (i, f) in index.frames.iter().enumerate() {
            if fill[i] != Fill::Fetch || f.range().end > data_size {
                continue;
            }
            for b in f.range().step_by(BLOCK as usize) {
                want.entry(leaves[(b / BLOCK) as usize]).or_insert(u64::MAX);
            }
        }
        if let Ok(a) = drover_core::slot_image::read_header(
            &drover_core::slot_image::Window {
                file: &*disk,
                offset: active.offset,
            },
            active.size,
            disk_path,
        ) {
            let mut chunk = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            let end = a.locator.data_size.min(active.size);
            while pos < end && !want.is_empty() {
                let n = chunk.len().min((end - pos) as usize);
                disk.read_exact_at(&mut chunk[..n], active.offset + pos)
                    .map_err(io("reading the active slot"))?;
                for (k, b) in chunk[..n].chunks_exact(BLOCK as usize).enumerate() {
                    if let Some(at) = want.get_mut(&hash_block(&params.salt, b)) {
                        if *at == u64::MAX {
                            *at = pos + k as u64 * BLOCK;
                        }
                    }
                }
                pos += n as u64;
            }
        }
        for (i, f) in index.frames.iter().enumerate() {
            if fill[i] == Fill::Fetch
                && f.range().end <= data_size
                && f.range().step_by(BLOCK as usize).all(|b| {
                    want.get(&leaves[(b / BLOCK) as usize])
                        .is_some_and(|&a| a != u64::MAX)
                })
            {
                fill[i] = Fill::Copy;
            }
        }
    }

    // A delta larger than the payload itself (little in common, frames
    // that do not compress): the whole payload is cheaper.
    let to_fetch: u64 = (0..index.frames.len())
        .filter(|&i| fill[i] == Fill::Fetch)
        .map(|i| u64::from(index.frames[i].stored_len))
        .sum();
    if to_fetch + stats.fetched_bytes > total {
        return Err(ApplyError::DeltaLarger {
            delta: to_fetch + stats.fetched_bytes,
            full: total,
        });
    }

    // 3c. In payload order: copy, or fetch runs of frames; synced and
    // reported durable every CHECKPOINT_BYTES.
    let mut written = 0u64;
    let mut last_sync = 0u64;
    // On the base release, the data as written, in order: the tree.
    let mut verity = stats
        .base
        .then(|| VerityStream::new(params.clone()))
        .transpose()
        .map_err(|e| mismatch(e.to_string()))?;
    let mut tree: Option<Vec<u8>> = None;
    let feed = |verity: &mut Option<VerityStream>, f: &Frame, bytes: &[u8]| {
        if let Some(vs) = verity.as_mut() {
            if f.offset < data_size {
                let n = (data_size - f.offset).min(bytes.len() as u64) as usize;
                vs.update(&bytes[..n])
                    .map_err(|e| mismatch(e.to_string()))?;
            }
        }
        Ok::<(), ApplyError>(())
    };
    let mut i = 0;
    while i < index.frames.len() {
        if hooks.cancel.load(Ordering::Relaxed) {
            let _ = disk.sync_data();
            return Err(ApplyError::Cancelled {
                written: index.frames[i].offset,
                total,
            });
        }
        let f = &index.frames[i];
        match fill[i] {
            Fill::Early => i += 1,
            Fill::Kept => {
                if verity.is_some() && f.offset < data_size {
                    let mut bytes = vec![0u8; f.len as usize];
                    disk.read_exact_at(&mut bytes, st.offset + f.offset)
                        .map_err(io("reading back the slot to resume"))?;
                    feed(&mut verity, f, &bytes)?;
                }
                i += 1;
            }
            Fill::Source => {
                let mut bytes = vec![0u8; f.len as usize];
                disk.read_exact_at(&mut bytes, active.offset + f.source)
                    .map_err(io("reading the active slot"))?;
                if drover_core::blocks::frame_digest(&bytes) != f.sha256 {
                    // The base release, but not these bytes (a damaged
                    // block): fetched instead.
                    fill[i] = Fill::Fetch;
                    continue;
                }
                disk.write_all_at(&bytes, st.offset + f.offset)
                    .map_err(io("writing the slot"))?;
                feed(&mut verity, f, &bytes)?;
                stats.copied_bytes += u64::from(f.len);
                written += u64::from(f.len);
                i += 1;
            }
            Fill::Compute => {
                if tree.is_none() {
                    let vs = verity.take().ok_or_else(|| {
                        mismatch("the tree is computed from data not fed in order".into())
                    })?;
                    let (t, root) = vs.finish().map_err(|e| mismatch(e.to_string()))?;
                    if root != v.root_hash {
                        return Err(mismatch(format!(
                            "the data written hashes to root {}, the signed manifest says {}",
                            hex::encode(root),
                            hex::encode(v.root_hash)
                        )));
                    }
                    tree = Some(t);
                }
                let t = tree.as_ref().expect("computed above");
                let from = (f.offset - tree_range.start) as usize;
                let bytes = &t[from..from + f.len as usize];
                if drover_core::blocks::frame_digest(bytes) != f.sha256 {
                    return Err(mismatch(format!(
                        "frame {i} (the tree) is not the tree of the data: the block index and the manifest disagree"
                    )));
                }
                disk.write_all_at(bytes, st.offset + f.offset)
                    .map_err(io("writing the slot"))?;
                stats.computed_bytes += u64::from(f.len);
                written += u64::from(f.len);
                i += 1;
            }
            Fill::Copy => {
                let mut block = vec![0u8; BLOCK as usize];
                for b in f.range().step_by(BLOCK as usize) {
                    let leaf = &leaves[(b / BLOCK) as usize];
                    let from = want[leaf];
                    disk.read_exact_at(&mut block, active.offset + from)
                        .map_err(io("reading the active slot"))?;
                    if &hash_block(&params.salt, &block) != leaf {
                        return Err(mismatch(format!(
                            "block {} of the active slot changed while it was copied",
                            from / BLOCK
                        )));
                    }
                    disk.write_all_at(&block, st.offset + b)
                        .map_err(io("writing the slot"))?;
                }
                stats.copied_bytes += u64::from(f.len);
                written += u64::from(f.len);
                i += 1;
            }
            Fill::Fetch => {
                // A run of frames to fetch is one range of usr.blocks.
                let mut run = vec![i];
                while let Some(j) = run.last().map(|j| j + 1) {
                    if j >= index.frames.len() || fill[j] != Fill::Fetch || run.len() >= MAX_RUN {
                        break;
                    }
                    run.push(j);
                }
                let check = Check {
                    leaves: &leaves,
                    salt: &params.salt,
                    data_size,
                    target,
                };
                fetch_frames(&index, &run, blocks, &mut stats, &check, &mut |f, bytes| {
                    disk.write_all_at(bytes, st.offset + f.offset)
                        .map_err(io("writing the slot"))?;
                    feed(&mut verity, f, bytes)
                })?;
                written += run
                    .iter()
                    .map(|&k| u64::from(index.frames[k].len))
                    .sum::<u64>();
                i = run.last().expect("not empty") + 1;
            }
        }
        let done = index.frames.get(i).map_or(total, |f| f.offset);
        (hooks.progress)(done, total);
        if written - last_sync >= CHECKPOINT_BYTES {
            disk.sync_data().map_err(io("syncing the slot"))?;
            (hooks.checkpoint)(done);
            last_sync = written;
        }
    }
    // On the base release the data was checked by the root hash it gives,
    // and the tree written is the one computed; with an index that
    // fetched the tree instead, both are checked here.
    if let Some(vs) = verity.take() {
        let (t, root) = vs.finish().map_err(|e| mismatch(e.to_string()))?;
        let mut on_disk = vec![0u8; t.len()];
        disk.read_exact_at(&mut on_disk, st.offset + tree_range.start)
            .map_err(io("reading the tree back"))?;
        if root != v.root_hash || on_disk != t {
            return Err(mismatch(
                "the data and tree written do not give the signed root hash".into(),
            ));
        }
    }
    disk.sync_all().map_err(io("syncing the slot"))?;

    // 4-5. The header read back and verified, then valid and chosen.
    finish(slots, disk, disk_path, trust.keys, &v, target)?;
    let m = &v.verified.manifest;
    Ok(ApplyReport {
        slot: target.label(),
        version: m.os.version.clone(),
        security_version: m.os.security_version,
        bytes: total,
        sha256: hex::encode(index.payload_sha256),
        root_hash: hex::encode(v.root_hash),
        delta: Some(stats),
    })
}

/// Fetches frames `which` (in order; frames between them not asked for
/// are read and skipped) with one range request, checks each (length,
/// SHA-256 from the signed index, and each whole data block against its
/// leaf when the leaves are known) and hands it to `write`.
fn fetch_frames(
    index: &Index,
    which: &[usize],
    blocks: &dyn BlockSource,
    stats: &mut DeltaStats,
    check: &Check<'_>,
    write: &mut WriteFrame<'_>,
) -> Result<(), ApplyError> {
    let mismatch = |reason: String| ApplyError::Mismatch {
        slot: check.target,
        reason,
    };
    let name = blocks.name();
    let source_err = |offset: u64| {
        let source_name = name.clone();
        move |source| ApplyError::Source {
            source_name,
            offset,
            source,
        }
    };
    let (Some(&first), Some(&last)) = (which.first(), which.last()) else {
        return Ok(());
    };
    let range = index.frames[first].stored_offset..index.frames[last].stored_range().end;
    stats.requests += 1;
    stats.fetched_bytes += range.end - range.start;
    let mut reader = blocks
        .fetch(range.clone())
        .map_err(source_err(range.start))?;
    let mut stored = Vec::new();
    let mut plain = Vec::new();
    let mut z =
        zstd::bulk::Decompressor::new().map_err(|e| mismatch(format!("starting zstd: {e}")))?;
    for k in first..=last {
        let f = &index.frames[k];
        stored.resize(f.stored_len as usize, 0);
        reader
            .read_exact(&mut stored)
            .map_err(source_err(f.stored_offset))?;
        if !which.contains(&k) {
            continue;
        }
        stats.fetched_frames += 1;
        plain.clear();
        plain.reserve(f.len as usize);
        let n = z
            .decompress_to_buffer(&stored, &mut plain)
            .map_err(|e| mismatch(format!("frame {k} does not decompress: {e}")))?;
        if n != f.len as usize || drover_core::blocks::frame_digest(&plain) != f.sha256 {
            return Err(mismatch(format!(
                "frame {k} (payload bytes {}..{}) does not match its digest in the signed block index",
                f.offset,
                f.range().end
            )));
        }
        if !check.leaves.is_empty() {
            for (b, block) in f
                .range()
                .step_by(BLOCK as usize)
                .zip(plain.chunks(BLOCK as usize))
            {
                if b + BLOCK <= check.data_size
                    && hash_block(check.salt, block) != check.leaves[(b / BLOCK) as usize]
                {
                    return Err(mismatch(format!(
                        "data block {} does not match the signed verity tree",
                        b / BLOCK
                    )));
                }
            }
        }
        write(f, &plain)?;
    }
    Ok(())
}

/// The path of a file next to `payload` (`releases/V/usr.img` →
/// `releases/V/NAME`), for a relative path or a URL.
pub fn sibling(payload: &str, name: &str) -> String {
    match payload.rfind('/') {
        Some(i) => format!("{}{name}", &payload[..=i]),
        None => name.to_string(),
    }
}

/// The largest block index a payload of `size` bytes can have (a frame per
/// block, 16 signatures).
pub fn index_limit(size: u64) -> u64 {
    48 + 40 * size.div_ceil(BLOCK) + 4 + 96 * 16
}

/// Reads a file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "{} is more than the {limit} bytes it may be",
            path.display()
        )));
    }
    Ok(out)
}

/// A delta bundle (`drover delta`, format at
/// [`drover_core::blocks::BUNDLE_MAGIC`]): the signed index and the frames
/// a node on one older release lacks, in one file.
pub struct Bundle {
    file: File,
    path: PathBuf,
    /// The signed index, as stored.
    pub index_bytes: Vec<u8>,
    index: Index,
    /// Frame number → where its stored bytes are in the file.
    held: HashMap<usize, u64>,
}

impl Bundle {
    /// Opens `path` as a bundle; `Ok(None)` when it is not one (a slot
    /// image, say).
    pub fn open(path: &Path) -> std::io::Result<Option<Self>> {
        use std::io::Seek;
        let bad = |m: String| std::io::Error::other(format!("{}: {m}", path.display()));
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut magic = [0u8; 8];
        if file.read_exact(&mut magic).is_err() || &magic != drover_core::blocks::BUNDLE_MAGIC {
            return Ok(None);
        }
        let mut word = [0u8; 4];
        file.read_exact(&mut word)?;
        let n = u64::from(u32::from_le_bytes(word));
        if n > len {
            return Err(bad(format!("an index of {n} bytes in a file of {len}")));
        }
        let mut index_bytes = vec![0u8; n as usize];
        file.read_exact(&mut index_bytes)?;
        let (index, _) = Index::parse_body(&index_bytes).map_err(|e| bad(e.to_string()))?;
        file.read_exact(&mut word)?;
        let count = u32::from_le_bytes(word) as usize;
        if count > index.frames.len() {
            return Err(bad(format!(
                "{count} frames held of {} in the release",
                index.frames.len()
            )));
        }
        let mut numbers = vec![0u8; count * 4];
        file.read_exact(&mut numbers)?;
        let mut at = file.stream_position()?;
        let mut held = HashMap::new();
        let mut last = None;
        for c in numbers.chunks_exact(4) {
            let i = u32::from_le_bytes(c.try_into().expect("4")) as usize;
            if i >= index.frames.len() || last.is_some_and(|l| i <= l) {
                return Err(bad(format!("frame number {i} out of order or range")));
            }
            last = Some(i);
            held.insert(i, at);
            at += u64::from(index.frames[i].stored_len);
        }
        if at != len {
            return Err(bad(format!(
                "{len} bytes, its frames say {at}: truncated or extended"
            )));
        }
        let bundle = Self {
            file,
            path: path.to_owned(),
            index_bytes,
            index,
            held,
        };
        // Every frame held decompresses to the bytes its index entry
        // hashes to: a damaged bundle is named here, not as a bad manifest.
        // (The index's signature is checked when it is applied.)
        for &i in bundle.held.keys() {
            let plain = bundle.frame(i)?;
            let f = &bundle.index.frames[i];
            if plain.len() != f.len as usize
                || drover_core::blocks::frame_digest(&plain) != f.sha256
            {
                return Err(bad(format!(
                    "frame {i} does not match its digest in the bundle's index: the bundle is damaged"
                )));
            }
        }
        Ok(Some(bundle))
    }

    fn missing(&self, i: usize) -> std::io::Error {
        std::io::Error::other(format!(
            "{} does not hold frame {i} of the release: it was made for nodes running another release than this disk's",
            self.path.display()
        ))
    }

    /// Frame `i`'s bytes, decompressed.
    fn frame(&self, i: usize) -> std::io::Result<Vec<u8>> {
        let at = *self.held.get(&i).ok_or_else(|| self.missing(i))?;
        let f = &self.index.frames[i];
        let mut stored = vec![0u8; f.stored_len as usize];
        self.file.read_exact_at(&mut stored, at)?;
        let mut plain = Vec::with_capacity(f.len as usize);
        zstd::bulk::Decompressor::new()?
            .decompress_to_buffer(&stored, &mut plain)
            .map_err(|e| {
                std::io::Error::other(format!(
                    "{}: frame {i} does not decompress ({e}): the bundle is damaged",
                    self.path.display()
                ))
            })?;
        Ok(plain)
    }
}

impl drover_core::slot_image::ReadAt for Bundle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.index.frame_at(pos).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "beyond the payload")
            })?;
            let plain = self.frame(i)?;
            let from = (pos - self.index.frames[i].offset) as usize;
            let n = (plain.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&plain[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

impl Source for Bundle {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        self.index.payload_size
    }
    fn at(&self) -> &dyn drover_core::slot_image::ReadAt {
        self
    }
    fn stream(&mut self, _offset: u64) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Err(std::io::Error::other(
            "a delta bundle is applied as a delta, not streamed",
        ))
    }
}

impl BlockSource for Bundle {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn fetch(&self, range: std::ops::Range<u64>) -> std::io::Result<Box<dyn Read + '_>> {
        // The frames of the range, held one after the other.
        let first = self
            .index
            .frames
            .partition_point(|f| f.stored_offset < range.start);
        let mut i = first;
        let mut end = range.start;
        while end < range.end {
            if i >= self.index.frames.len() || !self.held.contains_key(&i) {
                return Err(self.missing(i));
            }
            end += u64::from(self.index.frames[i].stored_len);
            i += 1;
        }
        let start = *self.held.get(&first).ok_or_else(|| self.missing(first))?;
        Ok(Box::new(ReadAtRange {
            file: &self.file,
            pos: start,
            end: start + (range.end - range.start),
        }))
    }
}
