//! The block index of a payload: what makes delta updates possible.
//!
//! `drover publish` stores beside each payload (`usr.img`) the same bytes
//! cut into *frames* — runs of whole 4 KiB blocks, each compressed as one
//! zstd frame — concatenated in `usr.blocks`, and this index of them in
//! `usr.blocks.idx`. The frames together are one valid zstd stream, so
//! `zstd -d < usr.blocks` gives `usr.img` back: the compressed full payload
//! and the delta source are the same file.
//!
//! A node that has most of a release's blocks in its active slot already
//! fetches only the frames holding blocks it lacks, with range requests
//! (see the agent's `delta` module). What it copies from its own disk is
//! checked against the new release's verity leaves (themselves checked
//! against the signed root hash); what it fetches is checked against the
//! frame's SHA-256 in this index, which is signed with a channel key and
//! names the payload's size and SHA-256 as the signed channel advertises
//! them. So every byte written to the slot is covered by something signed.
//!
//! The publisher cuts frames where a block changes from "in the previous
//! release" to "new", where a run of the previous release's blocks stops
//! being contiguous there, at the borders of the payload's regions (data,
//! verity superblock, tree, manifest) and every [`MAX_FRAME`] bytes. A frame
//! whose blocks the previous release holds in one run names where
//! (`source`), and the index names that release (`base`, its verity root
//! hash): a node running it copies such frames straight from its active
//! slot, checks them against the frame's digest, and computes the tree
//! itself — it fetches only the new data blocks, the superblock and the
//! manifest. A node running another release matches blocks by the new
//! tree's leaves instead (it fetches the tree).
//!
//! The file (all integers little-endian):
//!
//! ```text
//! magic "DRVBIX01" | block size u32 (4096) | frames u32
//! payload size u64 | payload SHA-256 [32] | base root hash [32] (zero: none)
//! per frame: bytes u32 | stored bytes u32 | source u64 (u64::MAX: none)
//!            | SHA-256 of its bytes [32]
//! signatures u32 | per signature: key id [32] | ed25519 [64]
//! ```
//!
//! Frames follow each other in the payload and in `usr.blocks`, so their
//! offsets are running sums. Every frame but the last holds a whole number
//! of blocks.

use sha2::{Digest as _, Sha256};

use crate::keys::{PublicKey, SigningKey, TrustedKeys};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"DRVBIX01";

/// Prefixed to the index body before signing, so an index signature is
/// never taken for a channel or manifest signature by the same key.
pub const SIGNING_CONTEXT: &[u8] = b"drover block index v1\n";

/// The block, the unit of comparison: the verity data block.
pub const BLOCK: u64 = 4096;

/// The first bytes of a delta bundle (`drover delta`): for air-gapped
/// sites, one file with a release's signed index and the frames a node on
/// one older release needs.
///
/// ```text
/// magic "DRVDLT01" | index bytes u32 | the signed index
/// frames held u32 | per frame held: its number u32
/// the held frames' stored bytes, in frame order
/// ```
pub const BUNDLE_MAGIC: &[u8; 8] = b"DRVDLT01";

/// The largest frame: a node lacking one block of it fetches all of it.
pub const MAX_FRAME: u64 = 256 << 10;

/// The most an index may be: a frame per block of a 16 GiB payload.
pub const MAX_INDEX_BYTES: u64 = HEADER as u64 + FRAME as u64 * (16 << 30) / BLOCK + 4 + 96 * 16;

const HEADER: usize = 8 + 4 + 4 + 8 + 32 + 32;
const FRAME: usize = 48;

/// `source` of a frame the base release does not hold in one run.
pub const NO_SOURCE: u64 = u64::MAX;
const SIGNATURE: usize = 96;

/// One frame: a run of the payload's bytes, compressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Where the run starts in the payload.
    pub offset: u64,
    /// Its length in the payload.
    pub len: u32,
    /// Where its zstd frame starts in `usr.blocks`.
    pub stored_offset: u64,
    /// The zstd frame's length.
    pub stored_len: u32,
    /// Where the base release's payload holds the same bytes, or
    /// [`NO_SOURCE`].
    pub source: u64,
    /// SHA-256 of the run's (uncompressed) bytes.
    pub sha256: [u8; 32],
}

impl Frame {
    /// The payload bytes it covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }

    /// The bytes of `usr.blocks` it is stored in.
    pub fn stored_range(&self) -> std::ops::Range<u64> {
        self.stored_offset..self.stored_offset + u64::from(self.stored_len)
    }
}

/// A payload's block index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The payload's size.
    pub payload_size: u64,
    /// The payload's SHA-256.
    pub payload_sha256: [u8; 32],
    /// The verity root hash of the release the frames' sources are in
    /// (the channel's previous one), or zeros.
    pub base: [u8; 32],
    /// The frames, in payload order, covering it exactly.
    pub frames: Vec<Frame>,
}

/// Why an index was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// Not an index, or an inconsistent one.
    #[error("not a Drover block index: {0}")]
    Malformed(String),
    /// No signature by a trusted key.
    #[error("the block index is not signed by a trusted key")]
    Untrusted,
    /// A trusted key's signature does not hold.
    #[error("the block index's signature by trusted key {0} does not hold: it was altered")]
    BadSignature(String),
}

fn malformed(s: impl Into<String>) -> IndexError {
    IndexError::Malformed(s.into())
}

/// A cursor over the index bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        if self.0.len() < n {
            return Err(malformed("it ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn digest(&mut self) -> Result<[u8; 32], IndexError> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
}

impl Index {
    /// The size of `usr.blocks`.
    pub fn stored_size(&self) -> u64 {
        self.frames
            .last()
            .map(|f| f.stored_offset + u64::from(f.stored_len))
            .unwrap_or(0)
    }

    /// The frame holding payload byte `offset`.
    pub fn frame_at(&self, offset: u64) -> Option<usize> {
        let i = self
            .frames
            .partition_point(|f| f.offset + u64::from(f.len) <= offset);
        (i < self.frames.len() && self.frames[i].offset <= offset).then_some(i)
    }

    /// The unsigned body.
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + FRAME * self.frames.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        v.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.payload_size.to_le_bytes());
        v.extend_from_slice(&self.payload_sha256);
        v.extend_from_slice(&self.base);
        for f in &self.frames {
            v.extend_from_slice(&f.len.to_le_bytes());
            v.extend_from_slice(&f.stored_len.to_le_bytes());
            v.extend_from_slice(&f.source.to_le_bytes());
            v.extend_from_slice(&f.sha256);
        }
        v
    }

    /// The file: the body signed by `keys`.
    pub fn sign(&self, keys: &[&SigningKey]) -> Vec<u8> {
        let body = self.body();
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&body);
        let mut v = body;
        v.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for k in keys {
            v.extend_from_slice(&k.public_key().key_id());
            v.extend_from_slice(&k.sign(&msg));
        }
        v
    }

    /// Parses the body at the start of `bytes`, checking that the frames
    /// cover the payload exactly; returns it and the rest of `bytes`.
    pub fn parse_body(bytes: &[u8]) -> Result<(Self, &[u8]), IndexError> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err(malformed("wrong magic"));
        }
        let block = r.u32()?;
        if u64::from(block) != BLOCK {
            return Err(malformed(format!("block size {block}, not {BLOCK}")));
        }
        let count = r.u32()? as usize;
        let payload_size = r.u64()?;
        let payload_sha256 = r.digest()?;
        let base = r.digest()?;
        if r.0.len() / FRAME < count {
            return Err(malformed(format!(
                "{count} frames announced, fewer present"
            )));
        }
        let mut frames = Vec::with_capacity(count);
        let (mut offset, mut stored_offset) = (0u64, 0u64);
        for i in 0..count {
            let len = r.u32()?;
            let stored_len = r.u32()?;
            let source = r.u64()?;
            let sha256 = r.digest()?;
            if len == 0 || u64::from(len) > MAX_FRAME || stored_len == 0 {
                return Err(malformed(format!(
                    "frame {i} has {len} bytes stored in {stored_len}"
                )));
            }
            // zstd never needs much more than the input; a frame that claims
            // to is not one the publisher wrote.
            if u64::from(stored_len) > u64::from(len) + u64::from(len) / 128 + 1024 {
                return Err(malformed(format!(
                    "frame {i} is stored in {stored_len} bytes, more than {len} bytes ever need"
                )));
            }
            if offset % BLOCK != 0 {
                return Err(malformed(format!("frame {i} does not start on a block")));
            }
            if source != NO_SOURCE
                && (source % BLOCK != 0 || source.checked_add(u64::from(len)).is_none())
            {
                return Err(malformed(format!("frame {i} has source {source}")));
            }
            frames.push(Frame {
                offset,
                len,
                stored_offset,
                stored_len,
                source,
                sha256,
            });
            offset += u64::from(len);
            stored_offset += u64::from(stored_len);
        }
        if offset != payload_size {
            return Err(malformed(format!(
                "the frames cover {offset} bytes, the payload is {payload_size}"
            )));
        }
        Ok((
            Self {
                payload_size,
                payload_sha256,
                base,
                frames,
            },
            r.0,
        ))
    }

    /// Parses a signed index file and checks its signature with `trusted`.
    pub fn parse_signed(
        bytes: &[u8],
        trusted: &TrustedKeys,
    ) -> Result<(Self, PublicKey), IndexError> {
        let (index, rest) = Self::parse_body(bytes)?;
        let body = &bytes[..bytes.len() - rest.len()];
        let mut r = Reader(rest);
        let n = r.u32()? as usize;
        if r.0.len() != n.saturating_mul(SIGNATURE) {
            return Err(malformed(format!(
                "{n} signatures announced, {} bytes follow",
                r.0.len()
            )));
        }
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(body);
        for _ in 0..n {
            let id: [u8; 32] = r.digest()?;
            let sig = r.take(64)?;
            if let Some(key) = trusted.find(&id) {
                if !key.verify(&msg, sig) {
                    return Err(IndexError::BadSignature(key.short_id()));
                }
                return Ok((index, *key));
            }
        }
        Err(IndexError::Untrusted)
    }
}

/// Cuts a payload into frames: a frame starts at block 0, at every block
/// for which `starts(block)` says so, and after [`MAX_FRAME`] bytes; the
/// last ends at the end. Returns the frames' payload ranges.
pub fn cut(payload_size: u64, starts: impl Fn(u64) -> bool) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut pos = BLOCK.min(payload_size);
    while pos < payload_size {
        if starts(pos / BLOCK) || pos - start >= MAX_FRAME {
            out.push(start..pos);
            start = pos;
        }
        pos = (pos + BLOCK).min(payload_size);
    }
    if payload_size > start {
        out.push(start..payload_size);
    }
    out
}

/// SHA-256 of a frame's bytes.
pub fn frame_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        let ranges = cut(5 * BLOCK + 100, |b| b == 2 || b == 4);
        let mut stored = 0;
        Index {
            payload_size: 5 * BLOCK + 100,
            payload_sha256: [7; 32],
            base: [3; 32],
            frames: ranges
                .iter()
                .map(|r| {
                    let f = Frame {
                        offset: r.start,
                        len: (r.end - r.start) as u32,
                        stored_offset: stored,
                        stored_len: 10,
                        source: if r.start == 0 { 8192 } else { NO_SOURCE },
                        sha256: [1; 32],
                    };
                    stored += 10;
                    f
                })
                .collect(),
        }
    }

    #[test]
    fn frames_start_where_asked_and_every_max_frame() {
        let r = cut(5 * BLOCK + 100, |b| b == 2 || b == 4);
        assert_eq!(
            r,
            vec![
                0..2 * BLOCK,
                2 * BLOCK..4 * BLOCK,
                4 * BLOCK..5 * BLOCK + 100
            ]
        );
        let long = cut(3 * MAX_FRAME, |_| false);
        assert_eq!(long.len(), 3);
        assert!(long.iter().all(|r| r.end - r.start == MAX_FRAME));
        assert!(cut(0, |_| true).is_empty());
    }

    #[test]
    fn a_signed_index_round_trips_and_a_changed_byte_is_refused() {
        let (key, _) = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new(vec![key.public_key()]);
        let ix = index();
        let file = ix.sign(&[&key]);
        let (back, k) = Index::parse_signed(&file, &trusted).unwrap();
        assert_eq!(back, ix);
        assert_eq!(k, key.public_key());
        assert_eq!(back.frame_at(2 * BLOCK + 5), Some(1));
        assert_eq!(back.frame_at(5 * BLOCK + 100), None);
        assert_eq!(back.stored_size(), 30);

        let mut bad = file.clone();
        bad[HEADER + 16 + 5] ^= 1; // a byte of frame 0's digest
        assert!(matches!(
            Index::parse_signed(&bad, &trusted),
            Err(IndexError::BadSignature(_))
        ));
        let (other, _) = SigningKey::generate().unwrap();
        let others = TrustedKeys::new(vec![other.public_key()]);
        assert_eq!(
            Index::parse_signed(&file, &others),
            Err(IndexError::Untrusted)
        );
        assert!(matches!(
            Index::parse_signed(&file[..file.len() - 1], &trusted),
            Err(IndexError::Malformed(_))
        ));
    }

    #[test]
    fn frames_that_do_not_cover_the_payload_are_refused() {
        let mut ix = index();
        ix.payload_size += 1;
        assert!(matches!(
            Index::parse_body(&ix.body()),
            Err(IndexError::Malformed(m)) if m.contains("cover")
        ));
        let mut ix = index();
        ix.frames[0].len = 100;
        assert!(Index::parse_body(&ix.body()).is_err());
    }
}
