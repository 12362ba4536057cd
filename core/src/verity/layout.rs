use super::{VerityError, DIGEST_SIZE};

/// The parameters of a tree. Only SHA-256 and hash type 1 exist in Drover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    /// Data block size in bytes (power of two, 512–65536). Drover uses 4096.
    pub data_block_size: u32,
    /// Hash block size in bytes (power of two, 512–65536). Drover uses 4096.
    pub hash_block_size: u32,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Salt, up to 256 bytes; may be empty.
    pub salt: Vec<u8>,
}

impl VerityParams {
    /// 4 KiB data and hash blocks, the veritysetup defaults.
    pub fn new(data_blocks: u64, salt: Vec<u8>) -> Self {
        Self {
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks,
            salt,
        }
    }

    /// Checks the values veritysetup would refuse.
    pub fn validate(&self) -> Result<(), VerityError> {
        let ok_size = |n: u32| n.is_power_of_two() && (512..=65536).contains(&n);
        if !ok_size(self.data_block_size) || !ok_size(self.hash_block_size) {
            return Err(VerityError::Params(format!(
                "block sizes must be powers of two from 512 to 65536 (data {}, hash {})",
                self.data_block_size, self.hash_block_size
            )));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::Params("there are no data blocks".into()));
        }
        if self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .is_none_or(|size| size > 1 << 60)
        {
            return Err(VerityError::Params(format!(
                "{} data blocks of {} bytes is more data than Drover accepts (1 EiB)",
                self.data_blocks, self.data_block_size
            )));
        }
        if self.salt.len() > 256 {
            return Err(VerityError::Params(format!(
                "salt is {} bytes, at most 256 are allowed",
                self.salt.len()
            )));
        }
        Ok(())
    }

    /// Size of the data in bytes.
    pub fn data_size(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size)
    }
}

/// Where each level of the tree lies, in hash blocks from the start of the
/// tree (which is the hash block after the superblock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeLayout {
    /// Digests per hash block (a power of two).
    pub per_block: u64,
    /// For each level (0 = hashes of data blocks), its first block.
    pub level_start: Vec<u64>,
    /// For each level, its number of blocks.
    pub level_blocks: Vec<u64>,
    /// Hash block size in bytes.
    pub hash_block_size: u64,
}

impl TreeLayout {
    /// Computes the layout the way cryptsetup's `hash_levels` does: the
    /// fewest levels whose top is one block, stored top level first.
    pub fn new(params: &VerityParams) -> Result<Self, VerityError> {
        params.validate()?;
        let hbs = u64::from(params.hash_block_size);
        let bits = (hbs / DIGEST_SIZE as u64).ilog2();
        let per_block = 1u64 << bits;
        let mut levels = 0u32;
        while bits * levels < 64 && (params.data_blocks - 1) >> (bits * levels) != 0 {
            levels += 1;
        }
        let n = levels as usize;
        let mut level_start = vec![0; n];
        let mut level_blocks = vec![0; n];
        let mut pos = 0u64;
        for i in (0..n).rev() {
            let shift = (i as u32 + 1) * bits;
            if shift > 63 {
                return Err(VerityError::Params("the tree would be too deep".into()));
            }
            let size = params.data_blocks.div_ceil(1u64 << shift);
            level_start[i] = pos;
            level_blocks[i] = size;
            pos += size;
        }
        Ok(Self {
            per_block,
            level_start,
            level_blocks,
            hash_block_size: hbs,
        })
    }

    /// Number of levels; 0 when a single data block is the whole tree.
    pub fn levels(&self) -> usize {
        self.level_blocks.len()
    }

    /// Hash blocks in the tree (not counting the superblock).
    pub fn tree_blocks(&self) -> u64 {
        self.level_blocks.iter().sum()
    }

    /// Bytes of the tree (not counting the superblock).
    pub fn tree_size(&self) -> u64 {
        self.tree_blocks() * self.hash_block_size
    }

    /// Bytes the hash area takes: superblock block plus tree.
    pub fn hash_area_size(&self) -> u64 {
        self.hash_block_size + self.tree_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(blocks: u64) -> TreeLayout {
        TreeLayout::new(&VerityParams::new(blocks, vec![])).unwrap()
    }

    #[test]
    fn levels_like_cryptsetup() {
        assert_eq!(layout(1).levels(), 0);
        assert_eq!(layout(2).level_blocks, vec![1]);
        assert_eq!(layout(128).level_blocks, vec![1]);
        assert_eq!(layout(129).level_blocks, vec![2, 1]);
        assert_eq!(layout(129).level_start, vec![1, 0]);
        assert_eq!(layout(128 * 128).level_blocks, vec![128, 1]);
        assert_eq!(layout(128 * 128 + 1).level_blocks, vec![129, 2, 1]);
        assert_eq!(layout(128 * 128 + 1).level_start, vec![3, 1, 0]);
    }

    #[test]
    fn refuses_bad_params() {
        assert!(TreeLayout::new(&VerityParams::new(0, vec![])).is_err());
        assert!(TreeLayout::new(&VerityParams::new(1, vec![0; 257])).is_err());
        // Found by the verity_superblock fuzz target: a size that overflows.
        assert!(TreeLayout::new(&VerityParams::new(u64::MAX / 8, vec![])).is_err());
        let mut p = VerityParams::new(1, vec![]);
        p.data_block_size = 3000;
        assert!(TreeLayout::new(&p).is_err());
    }
}
