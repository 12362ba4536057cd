//! Writing a payload's frames (`usr.blocks`) and signed block index
//! (`usr.blocks.idx`): see [`drover_core::blocks`] for the format and why.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use anyhow::Context as _;
use drover_core::blocks::{self, Frame, Index, BLOCK};
use drover_core::keys::{SigningKey, TrustedKeys};
use drover_core::slot_image;
use drover_core::verity::{hash_block, VerityParams};

/// The zstd level frames are compressed at unless the publisher says.
pub const DEFAULT_LEVEL: i32 = 12;

/// A frame compressed, and the SHA-256 of its bytes.
type Compressed = (Vec<u8>, [u8; 32]);

/// What [`write()`] made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Written {
    /// Frames.
    pub frames: usize,
    /// Bytes of `usr.blocks`.
    pub stored_bytes: u64,
    /// Payload bytes not found in the previous release.
    pub new_bytes: u64,
    /// Of `usr.blocks`, the frames a node on the previous release fetches
    /// (no source there; not the tree, which it computes).
    pub delta_stored_bytes: u64,
    /// The index written.
    #[serde(skip)]
    pub index: Index,
    /// Per frame: whether a node on the previous release fetches it.
    #[serde(skip)]
    pub new_frames: Vec<bool>,
}

/// The previous release as the new one sees it: its verity root hash and
/// the digests (with the new release's salt) of its data blocks.
struct Base {
    root: [u8; 32],
    leaves: Vec<[u8; 32]>,
    first: HashMap<[u8; 32], u64>,
}

/// The digests, with `salt`, of the data blocks of `file` up to `size`.
fn data_leaves(file: &File, size: u64, salt: &[u8]) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut out = Vec::with_capacity((size / BLOCK) as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = buf.len().min((size - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)?;
        out.extend(buf[..n].chunks(BLOCK as usize).map(|b| hash_block(salt, b)));
        pos += n as u64;
    }
    Ok(out)
}

fn base_of(prev: &Path, params: &VerityParams, trusted: &TrustedKeys) -> anyhow::Result<Base> {
    let f = File::open(prev).with_context(|| format!("opening {}", prev.display()))?;
    let size = f.metadata()?.len();
    let v = slot_image::open_verified(&f, size, prev, trusted)?;
    let leaves = data_leaves(&f, v.locator.data_size, &params.salt)?;
    let mut first = HashMap::with_capacity(leaves.len());
    for (i, l) in leaves.iter().enumerate() {
        first.entry(*l).or_insert(i as u64);
    }
    Ok(Base {
        root: v.root_hash,
        leaves,
        first,
    })
}

/// Writes `dir/usr.blocks` and `dir/usr.blocks.idx` for `payload`, its
/// frames cut along what `prev` (the channel's previous release) holds and
/// naming where, compressed at zstd `level` on every core, the index signed
/// with `key`. `payload_sha256` is the hex SHA-256 the channel advertises.
pub fn write(
    payload: &Path,
    payload_sha256: &str,
    prev: Option<&Path>,
    trusted: &TrustedKeys,
    key: &SigningKey,
    level: i32,
    dir: &Path,
) -> anyhow::Result<Written> {
    let f = File::open(payload).with_context(|| format!("opening {}", payload.display()))?;
    let size = f.metadata()?.len();
    let v = slot_image::open_verified(&f, size, payload, trusted)?;
    let data_size = v.locator.data_size;
    let base = match prev {
        Some(p) => Some(base_of(p, &v.params, trusted)?),
        None => None,
    };
    // Where the base holds each data block: the block after the previous
    // block's source when it matches there (runs stay runs, repeated
    // content does not scatter them), else its first occurrence.
    let leaves = data_leaves(&f, data_size, &v.params.salt)?;
    let mut source: Vec<Option<u64>> = Vec::with_capacity(leaves.len());
    if let Some(b) = &base {
        for (i, l) in leaves.iter().enumerate() {
            let next = i
                .checked_sub(1)
                .and_then(|p| source[p])
                .map(|s| s + 1)
                .filter(|&s| b.leaves.get(s as usize) == Some(l));
            source.push(next.or_else(|| b.first.get(l).copied()));
        }
    } else {
        source.resize(leaves.len(), None);
    }
    // Region borders: data | superblock | tree | manifest.
    let std::ops::Range {
        start: tree_start,
        end: tree_end,
    } = v.tree_range()?;
    let borders = [
        v.locator.hash_offset,
        tree_start,
        tree_end,
        v.locator.manifest_offset,
    ]
    .map(|b| b.div_ceil(BLOCK));
    let data_blocks = leaves.len();
    let src = |b: u64| source.get(b as usize).copied().flatten();
    let starts = |b: u64| {
        if borders.contains(&b) {
            return true;
        }
        if b as usize >= data_blocks {
            return false;
        }
        match (src(b - 1), src(b)) {
            (Some(p), Some(s)) => s != p + 1,
            (p, s) => p.is_some() != s.is_some(),
        }
    };
    let ranges = blocks::cut(size, starts);
    // What a node on the base fetches: frames with no source, but not the
    // tree, which it computes.
    let fetched_by_base = |r: &std::ops::Range<u64>| {
        src(r.start / BLOCK).is_none() && !(r.start >= tree_start && r.end <= tree_end)
    };
    let new_bytes: u64 = ranges
        .iter()
        .filter(|r| r.start >= data_size || src(r.start / BLOCK).is_none())
        .map(|r| r.end - r.start)
        .sum();

    // Compress on every core, each thread a share of the frames in order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = ranges.len().div_ceil(threads).max(1);
    let compressed: Vec<anyhow::Result<Vec<Compressed>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .chunks(per)
            .map(|part| {
                let f = &f;
                s.spawn(move || {
                    let mut c = zstd::bulk::Compressor::new(level)?;
                    c.include_checksum(false)?;
                    let mut out = Vec::with_capacity(part.len());
                    let mut buf = Vec::new();
                    for r in part {
                        buf.resize((r.end - r.start) as usize, 0);
                        f.read_exact_at(&mut buf, r.start)?;
                        out.push((c.compress(&buf)?, blocks::frame_digest(&buf)));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a compression thread panicked"))
            .collect()
    });

    let data_path = dir.join("usr.blocks");
    let tmp = dir.join(".usr.blocks.tmp");
    let mut out = std::io::BufWriter::new(
        File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut frames = Vec::with_capacity(ranges.len());
    let mut new_frames = Vec::with_capacity(ranges.len());
    let mut stored = 0u64;
    let mut delta_stored_bytes = 0u64;
    let mut it = ranges.iter();
    for part in compressed {
        for (bytes, sha256) in part? {
            let r = it.next().expect("one result per frame");
            out.write_all(&bytes)?;
            let new = fetched_by_base(r);
            if new {
                delta_stored_bytes += bytes.len() as u64;
            }
            new_frames.push(new);
            frames.push(Frame {
                offset: r.start,
                len: (r.end - r.start) as u32,
                stored_offset: stored,
                stored_len: bytes.len() as u32,
                source: src(r.start / BLOCK).map_or(blocks::NO_SOURCE, |s| s * BLOCK),
                sha256,
            });
            stored += bytes.len() as u64;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &data_path)?;

    let mut sha = [0u8; 32];
    hex::decode_to_slice(payload_sha256, &mut sha).context("the payload's SHA-256")?;
    let index = Index {
        payload_size: size,
        payload_sha256: sha,
        base: base.as_ref().map_or([0; 32], |b| b.root),
        frames,
    };
    crate::commands::write_atomic(&dir.join("usr.blocks.idx"), &index.sign(&[key]), 0o644)?;
    Ok(Written {
        frames: index.frames.len(),
        stored_bytes: stored,
        new_bytes,
        delta_stored_bytes,
        index,
        new_frames,
    })
}
