//! Fixtures that Drover's tests (and benches) in several crates share.
//! Test code only: nothing here ships on a node or a build host.
//!
//! * [`fake_fs`]: a stand-in for a slot's EROFS file system, bytes that
//!   only need to be sealed, hashed and compared (the first KiB zero, as
//!   `mkfs.erofs` leaves it, so the locator fits).
//! * [`seal_release`]: seals such a file in place as a release (`drover`,
//!   a version, a security version), signed by the given keys.
//! * [`disk`], [`write_slot`], [`set_bits`]: a disk image in Drover's
//!   partition layout, a payload put into a slot, a slot's gptprio bits.
//!
//! Panics on any failure, as test fixtures do; [`seal_release`] returns
//! its error for the benches, which report it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use drover_core::keys::SigningKey;
use drover_core::layout::{self, LayoutSpec};
use drover_core::manifest::OsRelease;
use drover_core::slot_image::{seal, SealInput, SlotImageError};
use drover_core::{GptPrio, PartitionTable, SlotId, Slots};

/// What a stand-in file system holds after its first, zero KiB.
#[derive(Clone, Copy, Debug)]
pub enum Fill {
    /// One byte value throughout.
    Byte(u8),
    /// Pseudo-random bytes from a seed (xorshift: every 4 KiB block
    /// differs, so no two releases share blocks by accident).
    Random(u64),
    /// `offset % 251`: blocks that differ, cheaply.
    Ramp,
}

/// Writes a stand-in file system of `size` bytes to `path`.
pub fn fake_fs(path: &Path, size: usize, fill: Fill) {
    let mut data = vec![0u8; size];
    match fill {
        Fill::Byte(b) => data[1024.min(size)..].fill(b),
        Fill::Random(seed) => {
            let mut x = seed | 1;
            for c in data[1024.min(size)..].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
        }
        Fill::Ramp => {
            for (i, b) in data.iter_mut().enumerate().skip(1024) {
                *b = (i % 251) as u8;
            }
        }
    }
    std::fs::write(path, data).unwrap();
}

/// The seal input of a test release: OS `drover`, `version`, `security`,
/// EROFS, created at a fixed moment, `salt`, no boot files.
pub fn release_input(version: &str, security: u64, salt: Vec<u8>) -> SealInput {
    SealInput {
        os: OsRelease {
            name: "drover".into(),
            version: version.into(),
            security_version: security,
        },
        fs_kind: "erofs".into(),
        created: 1_700_000_000,
        salt,
        boot: None,
        reference: Vec::new(),
    }
}

/// Seals the file at `path` in place with `input`, signed by `keys`.
pub fn seal_release(
    path: &Path,
    input: SealInput,
    keys: &[&SigningKey],
) -> Result<(), SlotImageError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    seal(&f, path, input, keys).map(drop)
}

/// A layout of small partitions: `usr_mib` per slot, the others 1 MiB.
pub fn small_layout(usr_mib: u64) -> LayoutSpec {
    LayoutSpec {
        esp_mib: 1,
        usr_mib,
        oem_mib: 1,
        root_mib: 1,
        disk_guid: "00000000-0000-4000-8000-000000000000".parse().unwrap(),
    }
}

/// A disk image at `path` with `spec`'s partition table (as `drover build`
/// writes it: USR-A good, USR-B empty) and nothing in the partitions.
pub fn disk(path: &Path, spec: &LayoutSpec) {
    File::create(path)
        .unwrap()
        .set_len(spec.disk_size())
        .unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    layout::create(&mut f, path, spec).unwrap();
}

/// Writes the file `payload` into `slot` of the disk image.
pub fn write_slot(disk: &Path, slot: SlotId, payload: &Path) {
    let (t, f) = PartitionTable::open_rw(disk).unwrap();
    let s = Slots::from_table(t, SlotId::A).unwrap();
    f.write_all_at(&std::fs::read(payload).unwrap(), s.get(slot).offset)
        .unwrap();
}

/// Sets a slot's gptprio bits on a disk image.
pub fn set_bits(disk: &Path, slot: SlotId, priority: u8, tries: u8, successful: bool) {
    let (mut t, mut f) = PartitionTable::open_rw(disk).unwrap();
    let s = Slots::from_table(t.clone(), SlotId::A).unwrap();
    let part = s.get(slot).partition;
    let bits = GptPrio::from_raw(t.entry(part).unwrap().flags)
        .with_priority(priority)
        .with_tries(tries)
        .with_successful(successful);
    t.set_attributes(part, bits.raw()).unwrap();
    t.write(&mut f, false).unwrap();
}

/// A Python virtual environment under `dir` (e.g. the test's
/// `CARGO_TARGET_TMPDIR`) with `packages` installed from PyPI, made once
/// and reused while the package list stays the same: the reference tools
/// some tests check Drover's output with (`pyspdxtools`, CycloneDX's
/// validator). Returns the environment's `python`: run tools with
/// `python -m MODULE`, since the environment is made beside its place and
/// moved there, which leaves the shebangs of its scripts pointing nowhere.
/// Needs `python3` with its `venv` module (Debian: `python3-venv`).
pub fn python_venv(dir: &Path, packages: &[&str]) -> std::path::PathBuf {
    let mut tag = 0u64;
    for b in packages.join(" ").bytes() {
        tag = tag.wrapping_mul(1_099_511_628_211) ^ u64::from(b);
    }
    let venv = dir.join(format!("venv-{tag:016x}"));
    let ready = venv.join(".drover-ready");
    if ready.exists() {
        return venv.join("bin/python");
    }
    // Made beside and renamed into place, so tests that run at once never
    // see half an environment (the loser of a race uses the winner's).
    let tmp = dir.join(format!(".venv-{tag:016x}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("running python3");
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp));
    run(std::process::Command::new(tmp.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages));
    std::fs::write(tmp.join(".drover-ready"), packages.join("\n")).unwrap();
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(ready.exists(), "could not put {} in place", venv.display());
    }
    venv.join("bin/python")
}
