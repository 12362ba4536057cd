//! Drover's verity trees against cryptsetup's `veritysetup`, the reference.

mod common;

use std::fs::{File, OpenOptions};
use std::path::Path;

use common::{flip_bit, p, run, try_run, Rng};
use drover_core::verity::{self, DataFile, HashFile, VerityError, VerityParams};

const UUID: &str = "5c3e1a52-7d0a-4b8e-9f3c-2a6d1b0e4f71";

fn uuid_bytes() -> [u8; 16] {
    let h: String = UUID.chars().filter(|c| *c != '-').collect();
    hex::decode(h).unwrap().try_into().unwrap()
}

fn root_from(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("veritysetup printed a root hash")
        .trim()
        .to_string()
}

fn drover_format(data: &Path, hash: &Path, offset: u64, blocks: u64, salt: &[u8]) -> String {
    let d = OpenOptions::new()
        .read(true)
        .write(true)
        .open(data)
        .unwrap();
    let h = if data == hash {
        None
    } else {
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(hash)
                .unwrap(),
        )
    };
    let out = verity::format(
        DataFile {
            file: &d,
            path: data,
            offset: 0,
        },
        HashFile {
            file: h.as_ref().unwrap_or(&d),
            path: hash,
            offset,
        },
        &VerityParams::new(blocks, salt.to_vec()),
        uuid_bytes(),
    )
    .unwrap();
    hex::encode(out.root_hash)
}

fn drover_verify(data: &Path, hash: &Path, offset: u64, root: &str) -> Result<(), VerityError> {
    let d = File::open(data).unwrap();
    let h = File::open(hash).unwrap();
    verity::verify(
        DataFile {
            file: &d,
            path: data,
            offset: 0,
        },
        HashFile {
            file: &h,
            path: hash,
            offset,
        },
        &hex::decode(root).unwrap(),
    )
    .map(|_| ())
}

fn salt_arg(salt: &[u8]) -> String {
    if salt.is_empty() {
        "-".into()
    } else {
        hex::encode(salt)
    }
}

/// Separate hash file: same root, same bytes, and each tool accepts the other's tree.
fn check_separate(blocks: u64, salt: &[u8], seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, Rng::new(seed).bytes(blocks as usize * 4096)).unwrap();
    let ours = dir.path().join("ours.hash");
    let theirs = dir.path().join("theirs.hash");
    let root = drover_format(&data, &ours, 0, blocks, salt);
    let salt_s = salt_arg(salt);
    let out = run(
        "veritysetup",
        &[
            "format",
            p(&data),
            p(&theirs),
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &format!("--salt={salt_s}"),
            &format!("--uuid={UUID}"),
        ],
    );
    assert_eq!(
        root,
        root_from(&out),
        "root hash, {blocks} blocks, salt {salt_s}"
    );
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
        "hash file bytes, {blocks} blocks"
    );
    run("veritysetup", &["verify", p(&data), p(&ours), &root]);
    drover_verify(&data, &theirs, 0, &root).unwrap();
}

/// Tree appended to the data file at --hash-offset.
fn check_appended(blocks: u64, salt: &[u8], seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.img");
    let theirs = dir.path().join("theirs.img");
    let bytes = Rng::new(seed).bytes(blocks as usize * 4096);
    std::fs::write(&ours, &bytes).unwrap();
    std::fs::write(&theirs, &bytes).unwrap();
    let offset = blocks * 4096;
    let root = drover_format(&ours, &ours, offset, blocks, salt);
    let salt_s = salt_arg(salt);
    let out = run(
        "veritysetup",
        &[
            "format",
            p(&theirs),
            p(&theirs),
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &format!("--salt={salt_s}"),
            &format!("--uuid={UUID}"),
            &format!("--hash-offset={offset}"),
            &format!("--data-blocks={blocks}"),
        ],
    );
    assert_eq!(root, root_from(&out), "appended root hash, {blocks} blocks");
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    run(
        "veritysetup",
        &[
            "verify",
            p(&ours),
            p(&ours),
            &root,
            &format!("--hash-offset={offset}"),
            &format!("--data-blocks={blocks}"),
        ],
    );
    drover_verify(&ours, &ours, offset, &root).unwrap();
}

#[test]
fn one_block() {
    check_separate(1, &[0xab; 32], 1);
    check_separate(1, &[], 2);
    check_appended(1, &[0x01, 0x02], 3);
}

#[test]
fn exactly_one_full_hash_block() {
    check_separate(128, &[0x5a; 32], 4);
    check_separate(128, &[], 5);
    check_appended(128, &[0x77; 16], 6);
}

#[test]
fn one_block_more_than_a_hash_block() {
    check_separate(129, &[0x11; 32], 7);
    check_appended(129, &[], 8);
}

#[test]
fn three_levels() {
    // 128 * 128 + 1 blocks need a third level.
    check_separate(128 * 128 + 1, &[0x42; 7], 9);
}

#[test]
fn tens_of_thousands_of_blocks() {
    check_separate(40_000, &[0x33; 32], 10);
    check_appended(40_000, &[], 11);
    check_separate(40_000, &[], 12);
    check_appended(40_000, &[0xee; 256], 13);
}

#[test]
fn every_flipped_bit_is_found_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 20_000u64; // two levels of tree
    let img = dir.path().join("img");
    let pristine = Rng::new(99).bytes(blocks as usize * 4096);
    std::fs::write(&img, &pristine).unwrap();
    let offset = blocks * 4096;
    let root = drover_format(&img, &img, offset, blocks, &[0x9c; 32]);
    let good = std::fs::read(&img).unwrap();
    let tree_start = offset + 4096;
    let end = good.len() as u64;
    let mut rng = Rng::new(7);
    let mut positions = vec![0, offset - 1, tree_start, end - 1];
    for _ in 0..12 {
        positions.push(rng.below(offset));
        positions.push(tree_start + rng.below(end - tree_start));
    }
    for pos in positions {
        std::fs::write(&img, &good).unwrap();
        flip_bit(&img, pos, (pos % 8) as u8);
        let err = drover_verify(&img, &img, offset, &root)
            .expect_err(&format!("bit flip at {pos} not found"));
        let msg = err.to_string();
        if pos < offset {
            let block = pos / 4096;
            assert!(
                matches!(err, VerityError::CorruptDataBlock { block: b, .. } if b == block),
                "flip at {pos}: {msg}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    VerityError::CorruptHashBlock { .. } | VerityError::RootMismatch { .. }
                ),
                "flip at {pos}: {msg}"
            );
        }
        let (ok, out) = try_run(
            "veritysetup",
            &[
                "verify",
                p(&img),
                p(&img),
                &root,
                &format!("--hash-offset={offset}"),
                &format!("--data-blocks={blocks}"),
            ],
        );
        assert!(!ok, "veritysetup accepted a flip at {pos}: {out}");
    }
}

#[test]
fn wrong_root_hash_and_bad_superblock_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hash = dir.path().join("hash");
    std::fs::write(&data, Rng::new(5).bytes(300 * 4096)).unwrap();
    let root = drover_format(&data, &hash, 0, 300, &[1; 32]);
    let mut wrong = hex::decode(&root).unwrap();
    wrong[0] ^= 1;
    let err = drover_verify(&data, &hash, 0, &hex::encode(&wrong)).unwrap_err();
    assert!(matches!(err, VerityError::RootMismatch { .. }), "{err}");
    flip_bit(&hash, 0, 0);
    let err = drover_verify(&data, &hash, 0, &root).unwrap_err();
    assert!(err.to_string().contains("superblock"), "{err}");
    // A truncated hash file.
    let h = std::fs::read(&hash).unwrap();
    std::fs::write(&hash, &h[..4096 + 100]).unwrap();
    assert!(drover_verify(&data, &hash, 0, &root).is_err());
}

#[test]
fn streaming_matches_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hash = dir.path().join("hash");
    let bytes = Rng::new(21).bytes(1000 * 4096);
    std::fs::write(&data, &bytes).unwrap();
    let root = drover_format(&data, &hash, 0, 1000, &[3; 32]);
    let mut s = verity::VerityStream::new(VerityParams::new(1000, vec![3; 32])).unwrap();
    // Odd-sized pieces, as a network delivers them.
    let mut rng = Rng::new(3);
    let mut pos = 0;
    while pos < bytes.len() {
        let n = (1 + rng.below(20_000) as usize).min(bytes.len() - pos);
        s.update(&bytes[pos..pos + n]).unwrap();
        pos += n;
    }
    let (tree, r) = s.finish().unwrap();
    assert_eq!(hex::encode(r), root);
    assert_eq!(tree, std::fs::read(&hash).unwrap()[4096..]);
    // Too much data and too little are both errors.
    let mut s = verity::VerityStream::new(VerityParams::new(2, vec![])).unwrap();
    assert!(s.update(&[0; 3 * 4096]).is_err());
    let mut s = verity::VerityStream::new(VerityParams::new(2, vec![])).unwrap();
    s.update(&[0; 4096]).unwrap();
    assert!(s.finish().is_err());
}
