//! Writing a payload's frames (`usr.blocks`) and signed block index
//! (`usr.blocks.idx`): see [`drover_core::blocks`] for the format and why.

use std::collections::HashSet;
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

/// What [`write`] made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Written {
    /// Frames.
    pub frames: usize,
    /// Bytes of `usr.blocks`.
    pub stored_bytes: u64,
    /// Payload bytes not found in the previous release.
    pub new_bytes: u64,
    /// Of `usr.blocks`, the frames a node on the previous release fetches.
    pub delta_stored_bytes: u64,
    /// The index written.
    #[serde(skip)]
    pub index: Index,
    /// Per frame: whether it holds blocks the previous release lacks.
    #[serde(skip)]
    pub new_frames: Vec<bool>,
}

/// The digests, with `params`' salt, of the data blocks of the slot image
/// `prev` (the previous release's payload): what a node running it has.
fn blocks_of(
    prev: &Path,
    params: &VerityParams,
    trusted: &TrustedKeys,
) -> anyhow::Result<HashSet<[u8; 32]>> {
    let f = File::open(prev).with_context(|| format!("opening {}", prev.display()))?;
    let size = f.metadata()?.len();
    let v = slot_image::open_verified(&f, size, prev, trusted)?;
    let mut set = HashSet::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < v.locator.data_size {
        let n = buf.len().min((v.locator.data_size - pos) as usize);
        f.read_exact_at(&mut buf[..n], pos)?;
        for b in buf[..n].chunks(BLOCK as usize) {
            set.insert(hash_block(&params.salt, b));
        }
        pos += n as u64;
    }
    Ok(set)
}

/// Writes `dir/usr.blocks` and `dir/usr.blocks.idx` for `payload`, its
/// frames cut along the blocks `prev` (the channel's previous release)
/// lacks, compressed at zstd `level` on every core, the index signed with
/// `key`. `payload_sha256` is the hex SHA-256 the channel advertises.
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
    let old = match prev {
        Some(p) => Some(blocks_of(p, &v.params, trusted)?),
        None => None,
    };
    // Data blocks are new unless the previous release has them; the hash
    // area and the manifest always are.
    let is_new = |block: u64| -> bool {
        let Some(old) = &old else { return true };
        let at = block * BLOCK;
        if at + BLOCK > data_size {
            return true;
        }
        let mut b = vec![0u8; BLOCK as usize];
        if f.read_exact_at(&mut b, at).is_err() {
            return true;
        }
        !old.contains(&hash_block(&v.params.salt, &b))
    };
    let ranges = blocks::cut(size, is_new);
    let new_bytes: u64 = ranges
        .iter()
        .filter(|r| is_new(r.start / BLOCK))
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
            let new = is_new(r.start / BLOCK);
            if new {
                delta_stored_bytes += bytes.len() as u64;
            }
            new_frames.push(new);
            frames.push(Frame {
                offset: r.start,
                len: (r.end - r.start) as u32,
                stored_offset: stored,
                stored_len: bytes.len() as u32,
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
