//! `droverctl update --from … --disk …`: the offline update, and every way
//! a bad payload is refused with the active slot untouched and the inactive
//! one unbootable.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_core::keys::SigningKey;
use drover_core::layout::{self, LayoutSpec};
use drover_core::manifest::OsRelease;
use drover_core::slot_image::{seal, SealInput};
use drover_core::{PartitionTable, SlotId, Slots};

struct Fx {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Fx {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("release.pem"), pem).unwrap();
        std::fs::write(
            dir.path().join("release.pub.pem"),
            key.public_key().to_pem(),
        )
        .unwrap();
        Self { dir, key }
    }

    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    /// A slot image of `mib` MiB of pseudo-random "file system" (the first
    /// KiB zero, as EROFS leaves it), signed by `key`.
    fn payload(
        &self,
        name: &str,
        version: &str,
        security: u64,
        mib: usize,
        key: &SigningKey,
    ) -> PathBuf {
        let path = self.p(name);
        let mut data = vec![0u8; mib << 20];
        let mut x = security.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.len() as u64 | 1;
        for c in data[1024..].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        std::fs::write(&path, &data).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        seal(
            &f,
            &path,
            SealInput {
                os: OsRelease {
                    name: "drover".into(),
                    version: version.into(),
                    security_version: security,
                },
                fs_kind: "erofs".into(),
                created: 1_700_000_000,
                salt: vec![7; 32],
                boot: None,
                reference: Vec::new(),
            },
            &[key],
        )
        .unwrap();
        path
    }

    /// A disk with `running` in USR-A (P1, successful) and B empty.
    fn disk(&self, running: &Path) -> PathBuf {
        let path = self.p("disk.raw");
        let spec = LayoutSpec {
            esp_mib: 1,
            usr_mib: 16,
            oem_mib: 1,
            root_mib: 1,
            disk_guid: "00000000-0000-4000-8000-000000000000".parse().unwrap(),
        };
        File::create(&path)
            .unwrap()
            .set_len(spec.disk_size())
            .unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let t = layout::create(&mut f, &path, &spec).unwrap();
        let (off, _) = t.byte_range(3).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&std::fs::read(running).unwrap(), off)
            .unwrap();
        path
    }

    fn update(&self, disk: &Path, from: &Path, extra: &[&str]) -> (bool, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_droverctl"))
            .args(["update", "--json", "--from"])
            .arg(from)
            .arg("--disk")
            .arg(disk)
            .arg("--trust")
            .arg(self.p("release.pub.pem"))
            .args(extra)
            .output()
            .unwrap();
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), s)
    }
}

fn slot_bytes(disk: &Path, slot: SlotId) -> Vec<u8> {
    let (t, _) = PartitionTable::open(disk).unwrap();
    let s = Slots::from_table(t, SlotId::A).unwrap();
    let st = s.get(slot);
    let all = std::fs::read(disk).unwrap();
    all[st.offset as usize..(st.offset + st.size) as usize].to_vec()
}

fn bits(disk: &Path, slot: SlotId) -> (u8, u8, bool) {
    let (t, _) = PartitionTable::open(disk).unwrap();
    let p = Slots::from_table(t, SlotId::A).unwrap().get(slot).prio;
    (p.priority(), p.tries(), p.successful())
}

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
    cases.push(("payload longer than its image", longer, "the file is"));

    let unknown = fx.payload("unknown.img", "2.0.0", 3, 5, &stranger);
    cases.push(("unknown key", unknown, "not signed by a trusted key"));

    let old = fx.payload("old.img", "0.9.0", 2, 5, &fx.key);
    cases.push((
        "security downgrade",
        old,
        "below the running security version 3",
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
