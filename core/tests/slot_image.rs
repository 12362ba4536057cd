//! The signed slot image: locator, verity tree and manifest envelope.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{flip_bit, p, run, Rng};
use drover_core::keys::{SigningKey, TrustedKeys};
use drover_core::manifest::{OsRelease, ReferenceValue};
use drover_core::slot_image::{
    self, open_verified, read_header, seal, SealInput, SlotImageError, LOCATOR_OFFSET,
};

fn key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

fn input() -> SealInput {
    SealInput {
        os: OsRelease {
            name: "drover".into(),
            version: "1.0.0".into(),
            security_version: 3,
        },
        fs_kind: "erofs".into(),
        created: 1_700_000_000,
        salt: vec![0x5a; 32],
        boot: None,
        reference: vec![ReferenceValue {
            component: "slot-kernel".into(),
            sha256: "00".repeat(32),
        }],
    }
}

/// A stand-in for an EROFS image: random blocks with the first KiB zero,
/// as mkfs.erofs leaves it. Not a multiple of 4 KiB on purpose.
fn fake_fs(dir: &Path, seed: u64, size: usize) -> PathBuf {
    let path = dir.join(format!("usr-{seed}.img"));
    let mut b = Rng::new(seed).bytes(size);
    b[..1024].fill(0);
    std::fs::write(&path, b).unwrap();
    path
}

fn sealed(dir: &Path, keys: &[&SigningKey]) -> PathBuf {
    let path = fake_fs(dir, 1, 3 * 1024 * 1024 + 123);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    seal(&f, &path, input(), keys).unwrap();
    path
}

fn open(path: &Path, trusted: &[&SigningKey]) -> Result<slot_image::VerifiedSlot, SlotImageError> {
    let bytes = std::fs::read(path).unwrap();
    let t = TrustedKeys::new(trusted.iter().map(|k| k.public_key()).collect());
    open_verified(&bytes[..], bytes.len() as u64, path, &t)
}

#[test]
fn sealed_image_verifies_here_and_in_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    let slot = open(&img, &[&k]).unwrap();
    let m = &slot.verified.manifest;
    assert_eq!(m.os.security_version, 3);
    assert_eq!(m.filesystem.size % 4096, 0);
    assert_eq!(m.verity.hash_offset, m.filesystem.size);
    let f = File::open(&img).unwrap();
    slot_image::verify_data(&f, &img, 0, &slot).unwrap();
    run(
        "veritysetup",
        &[
            "verify",
            p(&img),
            p(&img),
            &m.verity.root_hash,
            &format!("--hash-offset={}", m.verity.hash_offset),
            &format!("--data-blocks={}", m.verity.data_blocks),
        ],
    );
    // The image ends right after the padded envelope.
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(len % 4096, 0);
    assert!(len > m.manifest_offset);
}

#[test]
fn sealing_is_reproducible() {
    let k = key();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = sealed(d1.path(), &[&k]);
    let b = sealed(d2.path(), &[&k]);
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn unknown_key_is_refused_and_rotation_works() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = (key(), key(), key());
    let img = sealed(dir.path(), &[&old, &new]);
    open(&img, &[&new]).unwrap();
    open(&img, &[&old]).unwrap();
    open(&img, &[&stranger, &new]).unwrap();
    let err = open(&img, &[&stranger]).unwrap_err();
    assert!(matches!(err, SlotImageError::UnknownKey { .. }), "{err}");
    assert!(
        err.to_string().contains("not signed by a trusted key"),
        "{err}"
    );
    let err = open(&img, &[]).unwrap_err();
    assert!(err.to_string().contains("trusted: none"), "{err}");
}

#[test]
fn flipped_bytes_in_manifest_or_signature_are_bad_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    let slot = open(&img, &[&k]).unwrap();
    let env = slot.locator.manifest_offset;
    let good = std::fs::read(&img).unwrap();
    let manifest_len = slot.verified.manifest.to_bytes().len() as u64;
    for pos in [
        env + 24,
        env + 24 + manifest_len / 2,
        env + 24 + manifest_len - 1,
        env + 24 + manifest_len + 32,
        env + 24 + manifest_len + 95,
    ] {
        std::fs::write(&img, &good).unwrap();
        flip_bit(&img, pos, 3);
        let err = open(&img, &[&k]).unwrap_err();
        assert!(
            matches!(err, SlotImageError::BadSignature { .. }),
            "flip at {pos}: {err}"
        );
    }
    // A flip in the key id makes the signature one by an unknown key.
    std::fs::write(&img, &good).unwrap();
    flip_bit(&img, env + 24 + manifest_len, 0);
    assert!(matches!(
        open(&img, &[&k]).unwrap_err(),
        SlotImageError::UnknownKey { .. }
    ));
}

#[test]
fn every_flip_in_locator_or_envelope_header_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    let good = std::fs::read(&img).unwrap();
    let env = open(&img, &[&k]).unwrap().locator.manifest_offset as usize;
    let t = TrustedKeys::new(vec![k.public_key()]);
    let ranges = [
        (LOCATOR_OFFSET as usize, LOCATOR_OFFSET as usize + 512),
        (env, env + 24),
    ];
    for (start, end) in ranges {
        for pos in start..end {
            for bit in [0u8, 7] {
                let mut b = good.clone();
                b[pos] ^= 1 << bit;
                let r = open_verified(&b[..], b.len() as u64, &img, &t);
                assert!(r.is_err(), "flip of bit {bit} at {pos} was accepted");
            }
        }
    }
}

#[test]
fn truncated_images_and_absurd_lengths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    let good = std::fs::read(&img).unwrap();
    let t = TrustedKeys::new(vec![k.public_key()]);
    let env = open(&img, &[&k]).unwrap().locator.manifest_offset as usize;
    let check = |bytes: &[u8], want: &str| {
        let err = open_verified(bytes, bytes.len() as u64, &img, &t)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "wanted '{want}' in: {err}");
    };
    check(&good[..600], "too small to hold a locator");
    check(&good[..env], "truncated");
    check(&good[..env + 20], "truncated");
    check(&good[..env + 24 + 100], "truncated");
    check(&[], "too small");
    let mut b = good.clone();
    b[env + 12..env + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    check(&b, "manifest length 4294967295 is outside");
    let mut b = good.clone();
    b[env + 16..env + 20].copy_from_slice(&100_000u32.to_le_bytes());
    check(&b, "signature count 100000 is outside");
    let mut b = good.clone();
    b[512 + 32..512 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    check(&b, "manifest offset");
    let mut b = good.clone();
    b[512..1024].fill(0);
    check(&b, "no Drover locator");
}

#[test]
fn a_flipped_data_byte_fails_the_full_check() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    flip_bit(&img, 2 * 1024 * 1024 + 5, 1);
    let slot = open(&img, &[&k]).unwrap(); // the signature does not cover data directly
    let f = File::open(&img).unwrap();
    let err = slot_image::verify_data(&f, &img, 0, &slot).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("data block 512 is corrupt"), "{chain}");
}

#[test]
fn sealing_refuses_a_file_system_that_uses_the_locator_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.img");
    std::fs::write(&path, Rng::new(4).bytes(100_000)).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let err = seal(&f, &path, input(), &[&key()]).unwrap_err().to_string();
    assert!(err.contains("512..1024"), "{err}");
    // The file was not changed.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_000);
}

#[test]
fn a_slot_inside_a_disk_image_reads_through_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let img = sealed(dir.path(), &[&k]);
    let bytes = std::fs::read(&img).unwrap();
    let disk = dir.path().join("disk");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&disk)
        .unwrap();
    let offset = 3 << 20;
    f.set_len(offset + 16 * 1024 * 1024).unwrap();
    f.write_all_at(&bytes, offset).unwrap();
    let slot = open(&img, &[&k]).unwrap();
    slot_image::verify_data(&f, &disk, offset, &slot).unwrap();
    let header = read_header(&bytes[..], bytes.len() as u64, &img).unwrap();
    assert_eq!(header.image_size(), bytes.len() as u64);
}
