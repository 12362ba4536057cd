//! Hashing data while it is written, for the update agent: no second read
//! of the slot, no temporary copy.

use super::tree::build_tree;
use super::{hash_block, TreeLayout, VerityError, VerityParams, DIGEST_SIZE};

/// Accumulates the digests of data blocks fed in order; [`VerityStream::finish`]
/// builds the tree.
#[derive(Debug)]
pub struct VerityStream {
    params: VerityParams,
    layout: TreeLayout,
    partial: Vec<u8>,
    level0: Vec<[u8; DIGEST_SIZE]>,
    seen: u64,
}

impl VerityStream {
    /// Starts a stream over `params.data_blocks` blocks.
    pub fn new(params: VerityParams) -> Result<Self, VerityError> {
        let layout = TreeLayout::new(&params)?;
        Ok(Self {
            partial: Vec::with_capacity(params.data_block_size as usize),
            level0: Vec::with_capacity(params.data_blocks.min(1 << 24) as usize),
            params,
            layout,
            seen: 0,
        })
    }

    /// Feeds the next bytes of data. Fails when more than the data size
    /// arrives.
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), VerityError> {
        let bs = self.params.data_block_size as usize;
        let size = self.params.data_size();
        self.seen += bytes.len() as u64;
        if self.seen > size {
            return Err(VerityError::Length {
                expected: size,
                actual: self.seen,
            });
        }
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == bs {
                self.level0
                    .push(hash_block(&self.params.salt, &self.partial));
                self.partial.clear();
            }
        }
        let mut blocks = bytes.chunks_exact(bs);
        for b in &mut blocks {
            self.level0.push(hash_block(&self.params.salt, b));
        }
        self.partial.extend_from_slice(blocks.remainder());
        Ok(())
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.seen
    }

    /// Ends the stream: the tree bytes (to be written after the superblock)
    /// and the root hash. Fails unless exactly the data size was fed.
    pub fn finish(self) -> Result<(Vec<u8>, [u8; DIGEST_SIZE]), VerityError> {
        if self.seen != self.params.data_size() {
            return Err(VerityError::Length {
                expected: self.params.data_size(),
                actual: self.seen,
            });
        }
        Ok(build_tree(self.level0, &self.layout, &self.params.salt))
    }

    /// The layout of the tree being built.
    pub fn layout(&self) -> &TreeLayout {
        &self.layout
    }
}
