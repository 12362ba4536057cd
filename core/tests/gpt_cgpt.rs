//! GPT slot state in sparse disk images, cross-checked with `cgpt` (the
//! ChromeOS reference reader and writer of the gptprio bits) and `sgdisk`.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::{p, run, try_run};
use drover_core::layout::{self, LayoutSpec};
use drover_core::table::{Device, HeaderSource, PartitionTable, TableError};
use drover_core::{Decision, GptPrio, SlotId, Slots};

fn spec() -> LayoutSpec {
    LayoutSpec {
        esp_mib: 64,
        usr_mib: 1024,
        oem_mib: 32,
        root_mib: 512,
        disk_guid: "0f0e0d0c-0b0a-4908-8706-050403020100".parse().unwrap(),
    }
}

/// A 10 GiB sparse disk image with Drover's layout.
fn disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let f = File::create(&path).unwrap();
    f.set_len(10 << 30).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    layout::create(&mut f, &path, &spec()).unwrap();
    path
}

fn cgpt_field(disk: &Path, part: u32, flag: &str) -> String {
    run("cgpt", &["show", "-i", &part.to_string(), flag, p(disk)])
        .trim()
        .to_string()
}

/// (priority, tries, successful) as cgpt reads them.
fn cgpt_bits(disk: &Path, part: u32) -> (u8, u8, bool) {
    (
        cgpt_field(disk, part, "-P").parse().unwrap(),
        cgpt_field(disk, part, "-T").parse().unwrap(),
        cgpt_field(disk, part, "-S") == "1",
    )
}

fn drover_bits(disk: &Path, slot: SlotId) -> (u8, u8, bool) {
    let (t, _) = PartitionTable::open(disk).unwrap();
    let s = Slots::from_table(t, SlotId::A).unwrap();
    let pr = s.get(slot).prio;
    (pr.priority(), pr.tries(), pr.successful())
}

fn open_slots(disk: &Path, active: SlotId) -> (Slots, File) {
    let (t, f) = PartitionTable::open_rw(disk).unwrap();
    (Slots::from_table(t, active).unwrap(), f)
}

#[test]
fn layout_reads_right_in_cgpt_and_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let verify = run("sgdisk", &["-v", p(&d)]);
    assert!(verify.contains("No problems found"), "{verify}");
    for (n, label) in [
        (1, "EFI-SYSTEM"),
        (3, "USR-A"),
        (4, "USR-B"),
        (6, "OEM"),
        (9, "ROOT"),
    ] {
        assert_eq!(cgpt_field(&d, n, "-l"), label);
    }
    assert_eq!(
        cgpt_field(&d, 3, "-t").to_lowercase(),
        drover_core::slot::USR_X86_64_TYPE
    );
    for n in [2, 5, 7, 8] {
        let (_, out) = try_run("sgdisk", &["-i", &n.to_string(), p(&d)]);
        assert!(out.contains("does not exist"), "partition {n}: {out}");
    }
    assert_eq!(cgpt_bits(&d, 3), (1, 0, true));
    assert_eq!(cgpt_bits(&d, 4), (0, 0, false));
    // The same inputs give the same table, byte for byte.
    let dir2 = tempfile::tempdir().unwrap();
    let d2 = disk(dir2.path());
    let head = |path: &Path| {
        let mut b = vec![0u8; 34 * 512];
        File::open(path).unwrap().read_exact(&mut b).unwrap();
        b
    };
    assert_eq!(head(&d), head(&d2));
}

#[test]
fn drover_writes_cgpt_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let (mut s, mut f) = open_slots(&d, SlotId::A);
    assert_eq!(s.make_unbootable(), SlotId::B);
    s.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (0, 0, false));
    s.mark_valid(3).unwrap();
    s.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (0, 3, false));
    s.upgrade().unwrap();
    s.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (2, 3, false));
    assert_eq!(cgpt_bits(&d, 3), (1, 0, true));
    // The boot stage's step: the try is used up and written.
    let mut boot = Slots::from_table(PartitionTable::open_rw(&d).unwrap().0, SlotId::A).unwrap();
    assert_eq!(
        boot.select_for_boot(),
        Decision::Boot {
            slot: SlotId::B,
            consume_try: true
        }
    );
    boot.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (2, 2, false));
    let (mut s, mut f) = open_slots(&d, SlotId::B);
    s.mark_successful(SlotId::B).unwrap();
    s.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (2, 0, true));
    let verify = run("sgdisk", &["-v", p(&d)]);
    assert!(verify.contains("No problems found"), "{verify}");
    // Every value of every field.
    for v in 0..=15u8 {
        let (mut t, mut f) = PartitionTable::open_rw(&d).unwrap();
        let raw = GptPrio::default()
            .with_priority(v)
            .with_tries(15 - v)
            .with_successful(v % 2 == 1);
        t.set_attributes(3, raw.raw()).unwrap();
        t.write(&mut f, false).unwrap();
        assert_eq!(cgpt_bits(&d, 3), (v, 15 - v, v % 2 == 1));
    }
}

#[test]
fn cgpt_writes_drover_reads_and_other_bits_survive() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    for (pr, tr, su) in [
        (5u8, 7u8, true),
        (15, 0, false),
        (0, 15, true),
        (1, 1, false),
    ] {
        run(
            "cgpt",
            &[
                "add",
                "-i",
                "4",
                "-P",
                &pr.to_string(),
                "-T",
                &tr.to_string(),
                "-S",
                if su { "1" } else { "0" },
                p(&d),
            ],
        );
        assert_eq!(drover_bits(&d, SlotId::B), (pr, tr, su));
    }
    // Bits gptprio does not own: required (0), legacy boot (2), 57–63.
    run("cgpt", &["add", "-i", "4", "-R", "1", "-B", "1", p(&d)]);
    let raw16 = cgpt_field(&d, 4, "-A");
    let raw16 = u16::from_str_radix(raw16.trim_start_matches("0x"), 16).unwrap();
    run(
        "cgpt",
        &[
            "add",
            "-i",
            "4",
            "-A",
            &format!("{:#x}", raw16 | 0xfe00),
            p(&d),
        ],
    );
    let (mut s, mut f) = open_slots(&d, SlotId::A);
    s.make_unbootable();
    s.write(&mut f).unwrap();
    assert_eq!(cgpt_bits(&d, 4), (0, 0, false));
    assert_eq!(cgpt_field(&d, 4, "-R"), "1");
    assert_eq!(cgpt_field(&d, 4, "-B"), "1");
    let after = cgpt_field(&d, 4, "-A");
    let after = u16::from_str_radix(after.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(after & 0xfe00, 0xfe00, "bits 57-63 kept: {after:#x}");
    let (t, _) = PartitionTable::open(&d).unwrap();
    assert_eq!(t.entry(4).unwrap().flags & 0b101, 0b101);
}

fn corrupt(d: &Path, offset: u64, len: usize) {
    let mut f = OpenOptions::new().write(true).open(d).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&vec![0xa5; len]).unwrap();
}

#[test]
fn damaged_primary_is_recovered_from_the_backup() {
    for (what, offset, len) in [("header", 512u64, 92usize), ("array", 1024, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let d = disk(dir.path());
        {
            let (mut s, mut f) = open_slots(&d, SlotId::A);
            s.make_unbootable();
            s.mark_valid(2).unwrap();
            s.write(&mut f).unwrap();
        }
        corrupt(&d, offset, len);
        let (t, mut f) = PartitionTable::open_rw(&d).unwrap();
        assert_eq!(t.source(), HeaderSource::Backup, "damaged primary {what}");
        let mut s = Slots::from_table(t, SlotId::A).unwrap();
        assert_eq!(s.get(SlotId::B).prio.tries(), 2);
        // The next write repairs the primary.
        s.upgrade().unwrap();
        s.write(&mut f).unwrap();
        let (t, _) = PartitionTable::open(&d).unwrap();
        assert_eq!(t.source(), HeaderSource::Primary);
        let verify = run("sgdisk", &["-v", p(&d)]);
        assert!(verify.contains("No problems found"), "{what}: {verify}");
        assert_eq!(cgpt_bits(&d, 4), (2, 2, false));
    }
}

#[test]
fn both_headers_damaged_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let size = std::fs::metadata(&d).unwrap().len();
    corrupt(&d, 512, 92);
    corrupt(&d, size - 512, 92);
    let err = PartitionTable::open(&d).unwrap_err();
    assert!(matches!(err, TableError::NoValidTable { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no valid GPT") && msg.contains("primary") && msg.contains("backup"),
        "{msg}"
    );
    assert!(msg.contains("disk.raw"), "{msg}");
}

/// A disk that loses power after `budget` bytes have been written: writes
/// past that point fail and never reach the file (sector-granular, as a
/// real disk's are at best).
#[derive(Debug)]
struct PowerCut {
    file: File,
    budget: u64,
}

impl Read for PowerCut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}
impl Seek for PowerCut {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}
impl Write for PowerCut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("power cut"));
        }
        let n = (buf.len() as u64).min(self.budget) as usize;
        let n = if n < buf.len() { n - n % 512 } else { n };
        if n == 0 {
            self.budget = 0;
            return Err(io::Error::other("power cut"));
        }
        let w = self.file.write(&buf[..n])?;
        self.budget -= w as u64;
        Ok(w)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Device for PowerCut {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_power_cut_at_any_point_of_a_table_write_leaves_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("small.raw");
    let small = LayoutSpec {
        esp_mib: 1,
        usr_mib: 4,
        oem_mib: 1,
        root_mib: 1,
        ..spec()
    };
    File::create(&d)
        .unwrap()
        .set_len(small.disk_size())
        .unwrap();
    let old = (1u8, 0u8, true, 0u8, 0u8, false);
    // The change: B made valid and upgraded in one write.
    let mut cut = 0u64;
    let mut seen_old = false;
    let mut seen_new = false;
    loop {
        // Restore the old table.
        {
            let f = OpenOptions::new().read(true).write(true).open(&d).unwrap();
            let mut f = f;
            layout::create(&mut f, &d, &small).unwrap();
        }
        let (t, f) = PartitionTable::open_rw(&d).unwrap();
        let mut s = Slots::from_table(t, SlotId::A).unwrap();
        s.make_unbootable();
        s.mark_valid(1).unwrap();
        s.upgrade().unwrap();
        let mut dev = PowerCut {
            file: f,
            budget: cut,
        };
        let finished = s.write(&mut dev).is_ok();
        let (t, _) = PartitionTable::open(&d)
            .unwrap_or_else(|e| panic!("cut after {cut} bytes left no readable table: {e}"));
        let s = Slots::from_table(t, SlotId::A).unwrap();
        let (a, b) = (s.get(SlotId::A).prio, s.get(SlotId::B).prio);
        let state = (
            a.priority(),
            a.tries(),
            a.successful(),
            b.priority(),
            b.tries(),
            b.successful(),
        );
        let new = (1u8, 0u8, true, 2u8, 1u8, false);
        assert!(
            state == old || state == new,
            "cut after {cut} bytes: {state:?}"
        );
        seen_old |= state == old;
        seen_new |= state == new;
        assert!(
            s.next_boot().slot().is_some(),
            "cut after {cut}: nothing boots"
        );
        if finished {
            assert_eq!(state, new);
            break;
        }
        cut += 512;
    }
    assert!(seen_old && seen_new);
    assert!(cut > 16 * 1024, "the write was cut at {} points", cut / 512);
}

#[test]
fn missing_slot_partitions_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.raw");
    File::create(&path).unwrap().set_len(64 << 20).unwrap();
    run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+10M",
            "-t",
            "1:8300",
            "-c",
            "1:USR-A",
            p(&path),
        ],
    );
    let (t, _) = PartitionTable::open(&path).unwrap();
    let err = Slots::from_table(t, SlotId::A).unwrap_err().to_string();
    assert!(err.contains("no USR-A partition"), "{err}");
}

/// CRC-32 (IEEE), as GPT uses it; a test-local copy to forge headers.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites a header field and fixes the header CRC, as an attacker or a
/// buggy tool could.
fn forge_header(d: &Path, header_offset: u64, field: usize, value: u32) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().read(true).write(true).open(d).unwrap();
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, header_offset).unwrap();
    h[field..field + 4].copy_from_slice(&value.to_le_bytes());
    h[16..20].fill(0);
    let c = crc32(&h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&h, header_offset).unwrap();
}

#[test]
fn headers_the_gpt_crate_would_panic_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path());
    let size = std::fs::metadata(&d).unwrap().len();
    // Primary claims 256-byte entries: the backup is used instead.
    forge_header(&d, 512, 84, 256);
    let (t, _) = PartitionTable::open(&d).unwrap();
    assert_eq!(t.source(), HeaderSource::Backup);
    // Backup claims four billion entries too: a clear error, no panic, no huge allocation.
    forge_header(&d, size - 512, 80, u32::MAX);
    let err = PartitionTable::open(&d).unwrap_err().to_string();
    assert!(err.contains("entry size 256 is not 128"), "{err}");
    assert!(err.contains("4294967295 partition entries"), "{err}");
}

#[test]
fn the_table_grows_with_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("grow.raw");
    let small = LayoutSpec {
        esp_mib: 1,
        usr_mib: 4,
        oem_mib: 1,
        root_mib: 2,
        ..spec()
    };
    File::create(&d)
        .unwrap()
        .set_len(small.disk_size())
        .unwrap();
    {
        let mut f = OpenOptions::new().read(true).write(true).open(&d).unwrap();
        layout::create(&mut f, &d, &small).unwrap();
    }
    // The image is written to a disk 1 GiB larger.
    let new_size = small.disk_size() + (1 << 30);
    OpenOptions::new()
        .write(true)
        .open(&d)
        .unwrap()
        .set_len(new_size)
        .unwrap();
    let (mut t, mut f) = PartitionTable::open_rw(&d).unwrap();
    let old_backup = t.grow_to(new_size).unwrap().expect("the backup moves");
    assert_eq!(old_backup, small.disk_size() / 512 - 1);
    let (_, last) = t.usable_lbas();
    assert_eq!(last, new_size / 512 - 34);
    let new_last = (last + 1) / 2048 * 2048 - 1;
    assert!(
        t.extend(9, new_last + 2048).is_err(),
        "past the usable area"
    );
    assert!(t.extend(6, new_last).is_err(), "over ROOT");
    t.extend(9, new_last).unwrap();
    t.write(&mut f, false).unwrap();
    drop(f);
    let verify = run("sgdisk", &["-v", p(&d)]);
    assert!(verify.contains("No problems found"), "{verify}");
    let size: u64 = cgpt_field(&d, 9, "-s").parse().unwrap();
    assert_eq!(size, new_last - 2048 * (1 + 1 + 2 * 4 + 1) + 1);
    // A second time there is nothing to do.
    let (mut t, _) = PartitionTable::open_rw(&d).unwrap();
    assert_eq!(t.grow_to(new_size).unwrap(), None);
}
