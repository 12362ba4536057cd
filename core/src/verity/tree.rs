//! Building and checking whole trees over files, on every core.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    hash_block, Superblock, TreeLayout, VerityError, VerityParams, DIGEST_SIZE, SUPERBLOCK_SIZE,
};

type Digest = [u8; DIGEST_SIZE];

/// Bytes read per call while hashing data.
const READ_CHUNK: usize = 1 << 20;

/// Where the hash area lives: a file and the byte offset of the superblock
/// in it (veritysetup's `--hash-offset`; 0 for a separate hash file).
#[derive(Clone, Copy, Debug)]
pub struct HashFile<'a> {
    /// The open file.
    pub file: &'a File,
    /// Its name, for messages.
    pub path: &'a Path,
    /// Byte offset of the superblock.
    pub offset: u64,
}

/// The data a tree covers: a file and the byte offset where the data
/// starts in it (0 for a plain file; a partition's offset in a disk image).
#[derive(Clone, Copy, Debug)]
pub struct DataFile<'a> {
    /// The open file.
    pub file: &'a File,
    /// Its name, for messages.
    pub path: &'a Path,
    /// Byte offset of data block 0.
    pub offset: u64,
}

/// What [`format()`] produced.
#[derive(Clone, Debug)]
pub struct FormatOutput {
    /// The root hash.
    pub root_hash: Digest,
    /// The superblock written in front of the tree.
    pub superblock: Superblock,
    /// Where the levels are.
    pub layout: TreeLayout,
}

/// Lays out the digests of one level into `tree` and hashes its blocks,
/// returning the digests of the level's blocks (the next level's input).
fn fill_level(
    tree: &mut [u8],
    layout: &TreeLayout,
    level: usize,
    digests: &[Digest],
    salt: &[u8],
) -> Vec<Digest> {
    let hbs = layout.hash_block_size as usize;
    let start = layout.level_start[level] as usize * hbs;
    let blocks = layout.level_blocks[level] as usize;
    let area = &mut tree[start..start + blocks * hbs];
    for (i, d) in digests.iter().enumerate() {
        area[i * DIGEST_SIZE..(i + 1) * DIGEST_SIZE].copy_from_slice(d);
    }
    area.chunks(hbs).map(|b| hash_block(salt, b)).collect()
}

/// Builds the tree above the digests of the data blocks. Returns the tree
/// bytes (without superblock) and the root hash.
pub(crate) fn build_tree(
    level0: Vec<Digest>,
    layout: &TreeLayout,
    salt: &[u8],
) -> (Vec<u8>, Digest) {
    let mut tree = vec![0u8; layout.tree_size() as usize];
    if layout.levels() == 0 {
        return (tree, level0[0]);
    }
    let mut current = level0;
    for level in 0..layout.levels() {
        current = fill_level(&mut tree, layout, level, &current, salt);
    }
    debug_assert_eq!(current.len(), 1);
    (tree, current[0])
}

/// Checks a whole tree (the bytes after the superblock) against the root
/// hash it must give, and returns its leaves: the digest of every data
/// block. Each level is rebuilt from the one below and compared byte for
/// byte, so a leaf returned is one the root hash vouches for (the delta
/// update checks each block it copies or fetches against it).
pub fn checked_leaves(
    tree: &[u8],
    params: &VerityParams,
    root: &Digest,
) -> Result<Vec<Digest>, VerityError> {
    let layout = TreeLayout::new(params)?;
    if tree.len() as u64 != layout.tree_size() {
        return Err(VerityError::Length {
            expected: layout.tree_size(),
            actual: tree.len() as u64,
        });
    }
    let leaves: Vec<Digest> = if layout.levels() == 0 {
        vec![*root]
    } else {
        let start = (layout.level_start[0] * layout.hash_block_size) as usize;
        tree[start..]
            .chunks_exact(DIGEST_SIZE)
            .take(params.data_blocks as usize)
            .map(|d| d.try_into().expect("32 bytes"))
            .collect()
    };
    let (rebuilt, got) = build_tree(leaves.clone(), &layout, &params.salt);
    if &got != root {
        return Err(VerityError::RootMismatch {
            expected: hex::encode(root),
            actual: hex::encode(got),
        });
    }
    if rebuilt != tree {
        return Err(VerityError::RootMismatch {
            expected: hex::encode(root),
            actual: "a tree with other bytes in its padding".into(),
        });
    }
    Ok(leaves)
}

/// Hashes data blocks `first..first + out.len()` of `data` into `out`.
fn hash_range(
    data: DataFile<'_>,
    bs: usize,
    first: u64,
    out: &mut [Digest],
    salt: &[u8],
) -> Result<(), VerityError> {
    let per_read = (READ_CHUNK / bs).max(1);
    let mut buf = vec![0u8; per_read * bs];
    let mut done = 0usize;
    while done < out.len() {
        let n = per_read.min(out.len() - done);
        let bytes = &mut buf[..n * bs];
        let offset = data.offset + (first + done as u64) * bs as u64;
        data.file
            .read_exact_at(bytes, offset)
            .map_err(|source| VerityError::Io {
                path: data.path.to_owned(),
                what: "reading data blocks (is the file shorter than the data size?)",
                source,
            })?;
        for (d, block) in out[done..done + n].iter_mut().zip(bytes.chunks(bs)) {
            *d = hash_block(salt, block);
        }
        done += n;
    }
    Ok(())
}

/// Hashes all data blocks, split over the machine's cores.
fn hash_data(data: DataFile<'_>, params: &VerityParams) -> Result<Vec<Digest>, VerityError> {
    let n = params.data_blocks as usize;
    let bs = params.data_block_size as usize;
    let mut digests = vec![[0u8; DIGEST_SIZE]; n];
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.div_ceil(256).max(1));
    let per_thread = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = digests
            .chunks_mut(per_thread)
            .enumerate()
            .map(|(i, out)| {
                let first = (i * per_thread) as u64;
                let salt = &params.salt[..];
                scope.spawn(move || hash_range(data, bs, first, out, salt))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("hashing thread panicked"))
    })?;
    Ok(digests)
}

/// Formats a hash tree over the first `params.data_blocks` blocks of
/// `data` and writes superblock and tree at `hash.offset` of `hash.file`
/// (which may be the data file itself, past the data). Syncs the hash file.
pub fn format(
    data: DataFile<'_>,
    hash: HashFile<'_>,
    params: &VerityParams,
    uuid: [u8; 16],
) -> Result<FormatOutput, VerityError> {
    let layout = TreeLayout::new(params)?;
    if !hash.offset.is_multiple_of(512) {
        return Err(VerityError::Params(format!(
            "hash offset {} is not a multiple of 512",
            hash.offset
        )));
    }
    if std::ptr::eq(data.file, hash.file) || data.path == hash.path {
        // Appended tree: it must not overwrite the data it covers.
        if hash.offset < data.offset + params.data_size() && hash.offset >= data.offset {
            return Err(VerityError::Params(format!(
                "hash offset {} lies inside the {} bytes of data",
                hash.offset,
                params.data_size()
            )));
        }
    }
    let level0 = hash_data(data, params)?;
    let (tree, root_hash) = build_tree(level0, &layout, &params.salt);
    let superblock = Superblock {
        params: params.clone(),
        uuid,
    };
    let mut area = vec![0u8; layout.hash_block_size as usize];
    area[..SUPERBLOCK_SIZE].copy_from_slice(&superblock.to_bytes());
    area.extend_from_slice(&tree);
    let io = |what| {
        move |source| VerityError::Io {
            path: hash.path.to_owned(),
            what,
            source,
        }
    };
    hash.file
        .write_all_at(&area, hash.offset)
        .map_err(io("writing the hash tree"))?;
    hash.file.sync_data().map_err(io("syncing the hash tree"))?;
    Ok(FormatOutput {
        root_hash,
        superblock,
        layout,
    })
}

/// Reads the superblock at `hash.offset`.
pub fn read_superblock(hash: HashFile<'_>) -> Result<Superblock, VerityError> {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    hash.file
        .read_exact_at(&mut sb, hash.offset)
        .map_err(|source| VerityError::Io {
            path: hash.path.to_owned(),
            what: "reading the verity superblock",
            source,
        })?;
    Superblock::parse(&sb).map_err(|reason| VerityError::Superblock {
        path: hash.path.to_owned(),
        offset: hash.offset,
        reason,
    })
}

/// Verifies data and tree against `root_hash`, like `veritysetup verify`.
/// The error names the first corrupt block, tree blocks before data blocks.
pub fn verify(
    data: DataFile<'_>,
    hash: HashFile<'_>,
    root_hash: &[u8],
) -> Result<Superblock, VerityError> {
    let sb = read_superblock(hash)?;
    let params = &sb.params;
    let layout = TreeLayout::new(params)?;
    let hbs = layout.hash_block_size;
    let tree_offset = hash.offset + hbs;
    let mut tree = vec![0u8; layout.tree_size() as usize];
    hash.file
        .read_exact_at(&mut tree, tree_offset)
        .map_err(|source| VerityError::Io {
            path: hash.path.to_owned(),
            what: "reading the hash tree (is the hash file truncated?)",
            source,
        })?;
    let salt = &params.salt[..];
    let block_at = |level: usize, j: u64| {
        let start = ((layout.level_start[level] + j) * hbs) as usize;
        &tree[start..start + hbs as usize]
    };
    let entry = |level: usize, j: u64| {
        let per = layout.per_block;
        let block = block_at(level, j / per);
        let k = (j % per) as usize * DIGEST_SIZE;
        &block[k..k + DIGEST_SIZE]
    };

    let levels = layout.levels();
    if levels > 0 {
        let top = hash_block(salt, block_at(levels - 1, 0));
        if top[..] != *root_hash {
            return Err(VerityError::RootMismatch {
                expected: hex::encode(root_hash),
                actual: hex::encode(top),
            });
        }
        for level in (0..levels - 1).rev() {
            for j in 0..layout.level_blocks[level] {
                if hash_block(salt, block_at(level, j))[..] != *entry(level + 1, j) {
                    return Err(VerityError::CorruptHashBlock {
                        path: hash.path.to_owned(),
                        level,
                        block: j,
                        offset: tree_offset + (layout.level_start[level] + j) * hbs,
                    });
                }
            }
        }
    }

    let digests = hash_data(data, params)?;
    let bad = if levels == 0 {
        (digests[0][..] != *root_hash).then_some(0)
    } else {
        (0..params.data_blocks).find(|&j| digests[j as usize][..] != *entry(0, j))
    };
    if let Some(block) = bad {
        return Err(VerityError::CorruptDataBlock {
            path: data.path.to_owned(),
            block,
            offset: data.offset + block * u64::from(params.data_block_size),
        });
    }
    Ok(sb)
}
