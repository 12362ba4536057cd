//! `droverctl update --from … --disk …`: the offline update, and every way
//! a bad payload is refused with the active slot untouched and the inactive
//! one unbootable.

use std::path::PathBuf;

use drover_core::keys::SigningKey;
use drover_core::SlotId;
use drover_test_support::{fake_fs, release_input, seal_release, Fill};

mod common;
use common::*;

#[test]
fn a_good_release_is_written_verified_and_chosen() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 1, 4, &fx.key);
    let v2 = fx.payload("v2.img", "2.0.0", 2, 5, &fx.key);
    let disk = fx.disk(&v1);
    let (ok, out) = fx.update(&disk, &v2, &[]);
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["slot"], "USR-B");
    assert_eq!(report["version"], "2.0.0");
    let payload = std::fs::read(&v2).unwrap();
    assert_eq!(&slot_bytes(&disk, SlotId::B)[..payload.len()], &payload[..]);
    assert_eq!(bits(&disk, SlotId::B), (2, 1, false));
    assert_eq!(bits(&disk, SlotId::A), (1, 0, true));
    // A directory holding usr.img works too.
    let dir = fx.p("release");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&v2, dir.join("usr.img")).unwrap();
    let disk2 = fx.disk(&v1);
    let (ok, out) = fx.update(&disk2, &dir, &[]);
    assert!(ok, "{out}");
}

/// Every bad payload: refused with a clear error, USR-A byte-identical,
/// USR-B unbootable.
#[test]
fn bad_payloads_are_refused_and_lose_nothing() {
    let fx = Fx::new();
    let v1 = fx.payload("v1.img", "1.0.0", 3, 4, &fx.key);
    let good = fx.payload("v2.img", "2.0.0", 3, 5, &fx.key);
    let good_bytes = std::fs::read(&good).unwrap();
    let stranger = SigningKey::generate().unwrap().0;
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();

    let flipped = fx.p("flipped.img");
    let mut b = good_bytes.clone();
    b[3 * 1024 * 1024 + 5] ^= 0x10;
    std::fs::write(&flipped, &b).unwrap();
    cases.push((
        "flipped payload bit",
        flipped,
        "does not match its signed manifest",
    ));

    let flipped_tree = fx.p("flipped-tree.img");
    let mut b = good_bytes.clone();
    let tree_at = (5 << 20) + 4096 + 100;
    b[tree_at] ^= 1;
    std::fs::write(&flipped_tree, &b).unwrap();
    cases.push((
        "flipped tree bit",
        flipped_tree,
        "verity tree in the payload is not the tree of its data",
    ));

    let truncated = fx.p("truncated.img");
    std::fs::write(&truncated, &good_bytes[..good_bytes.len() - 5000]).unwrap();
    cases.push(("truncated payload", truncated, "truncated"));

    let longer = fx.p("longer.img");
    let mut b = good_bytes.clone();
    b.extend_from_slice(&[0xee; 8192]);
    std::fs::write(&longer, &b).unwrap();
    cases.push(("payload longer than its image", longer, "the payload is"));

    let unknown = fx.payload("unknown.img", "2.0.0", 3, 5, &stranger);
    cases.push(("unknown key", unknown, "not signed by a trusted key"));

    let old = fx.payload("old.img", "0.9.0", 2, 5, &fx.key);
    cases.push((
        "security downgrade",
        old,
        "below the running security version 3",
    ));

    // Signed by the trusted key, but for another OS.
    let foreign = fx.p("foreign.img");
    fake_fs(&foreign, 5 << 20, Fill::Random(99));
    let mut input = release_input("2.0.0", 3, vec![7; 32]);
    input.os.name = "otheros".into();
    seal_release(&foreign, input, &[&fx.key]).unwrap();
    cases.push((
        "another OS name",
        foreign,
        "is for OS 'otheros', this node runs 'drover'",
    ));

    // Bytes outside data and tree that the manifest signature does not
    // cover by itself: the superblock's salt (the data is 5 MiB, the
    // superblock follows it, the salt at its byte 88) and the envelope's
    // padding (the image's last byte).
    let salted = fx.p("salted.img");
    let mut b = good_bytes.clone();
    b[(5 << 20) + 88] ^= 1;
    std::fs::write(&salted, &b).unwrap();
    cases.push(("superblock salt byte", salted, "verity superblock"));
    let padded = fx.p("padded.img");
    let mut b = good_bytes.clone();
    *b.last_mut().unwrap() = 0x55;
    std::fs::write(&padded, &b).unwrap();
    cases.push((
        "a byte in the envelope's padding",
        padded,
        "envelope holds bytes",
    ));

    let big = fx.payload("big.img", "2.0.0", 3, 17, &fx.key);
    cases.push(("bigger than the slot", big, "partition holds"));

    for (what, payload, want) in cases {
        let disk = fx.disk(&v1);
        let a_before = slot_bytes(&disk, SlotId::A);
        let (ok, out) = fx.update(&disk, &payload, &[]);
        assert!(!ok, "{what}: accepted:\n{out}");
        assert!(out.contains(want), "{what}: wanted '{want}' in:\n{out}");
        assert_eq!(
            slot_bytes(&disk, SlotId::A),
            a_before,
            "{what}: USR-A changed"
        );
        let (p, t, _) = bits(&disk, SlotId::B);
        assert_eq!((p, t), (0, 0), "{what}: USR-B bootable");
        assert_eq!(
            bits(&disk, SlotId::A),
            (1, 0, true),
            "{what}: USR-A bits changed"
        );
    }

    // The operator override for the downgrade.
    let disk = fx.disk(&v1);
    let (ok, out) = fx.update(&disk, &fx.p("old.img"), &["--allow-security-downgrade"]);
    assert!(ok, "{out}");
}
