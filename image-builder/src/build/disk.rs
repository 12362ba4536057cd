//! The disk image: Drover's GPT layout with the ESP, the slot image in
//! USR-A, an empty USR-B, OEM and ROOT file systems.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use drover_core::layout::{self, LayoutSpec};
use drover_core::slot::layout as parts;
use drover_core::PartitionTable;

/// Copies `src` into `dst` at `offset`, skipping all-zero chunks so the
/// disk image stays sparse. Fails when `src` is longer than `limit`.
pub fn copy_into(
    src: &Path,
    dst: &File,
    offset: u64,
    limit: u64,
    what: &str,
) -> anyhow::Result<u64> {
    let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f.metadata()?.len();
    if len > limit {
        bail!(
            "{what} is {} MiB but its partition is {} MiB; raise the size in the spec's [disk] section",
            len.div_ceil(1 << 20),
            limit >> 20
        );
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + pos)?;
        }
        pos += n as u64;
    }
    Ok(len)
}

fn mkfs_ext4(
    image: &Path,
    label: &str,
    mib: u64,
    uuid: uuid::Uuid,
    content: Option<&Path>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(image);
    File::create(image)?.set_len(mib << 20)?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args([
        "-q",
        "-F",
        "-L",
        label,
        "-U",
        &uuid.to_string(),
        "-E",
        "lazy_itable_init=1,root_owner=0:0",
    ]);
    if let Some(c) = content {
        cmd.arg("-d").arg(c);
    }
    cmd.arg(image);
    let out = cmd
        .output()
        .context("running mkfs.ext4 (Debian package e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 for {label} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The OEM and ROOT file systems of a layout, as image files.
#[derive(Debug)]
pub struct FileSystems {
    /// OEM (ext4): a README, and the node config as `config.toml` if given.
    pub oem: PathBuf,
    /// ROOT (ext4), empty: first boot fills it.
    pub root: PathBuf,
}

/// Makes OEM and ROOT in `work` for the disk build and the installer,
/// their UUIDs derived from the disk GUID.
pub fn oem_and_root(
    spec: &LayoutSpec,
    work: &Path,
    config: Option<&str>,
) -> anyhow::Result<FileSystems> {
    let derived = |n: u32| {
        let mut b = *spec.disk_guid.as_bytes();
        b[15] ^= n as u8;
        uuid::Builder::from_random_bytes(b).into_uuid()
    };
    let oem_dir = work.join("oem");
    std::fs::create_dir_all(&oem_dir)?;
    std::fs::write(
        oem_dir.join("README"),
        "Drover OEM partition: put the node config here as config.toml.\n",
    )?;
    if let Some(text) = config {
        std::fs::write(oem_dir.join("config.toml"), text)?;
    }
    let oem = work.join("oem.ext4");
    mkfs_ext4(
        &oem,
        "OEM",
        spec.oem_mib,
        derived(parts::OEM.0),
        Some(&oem_dir),
    )?;
    let root = work.join("root.ext4");
    mkfs_ext4(&root, "ROOT", spec.root_mib, derived(parts::ROOT.0), None)?;
    Ok(FileSystems { oem, root })
}

/// Paths of the pieces that go into the disk.
#[derive(Debug)]
pub struct DiskInput<'a> {
    /// The ESP file system image.
    pub esp: &'a Path,
    /// The slot image for USR-A.
    pub usr: &'a Path,
    /// Scratch directory.
    pub work: &'a Path,
}

/// Creates `disk` (raw, sparse) from the pieces.
pub fn build(disk: &Path, spec: &LayoutSpec, input: &DiskInput<'_>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(disk);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(disk)
        .with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(spec.disk_size())?;
    let mut dev = &f;
    let table = layout::create(&mut dev, disk, spec)?;
    let range = |t: &PartitionTable, n: u32| t.byte_range(n).expect("layout has it");
    let (o, l) = range(&table, parts::ESP.0);
    copy_into(input.esp, &f, o, l, "the ESP image")?;
    let (o, l) = range(&table, parts::USR_A.0);
    copy_into(input.usr, &f, o, l, "the slot image (usr.img)")?;
    let fs = oem_and_root(spec, input.work, None)?;
    let (o, l) = range(&table, parts::OEM.0);
    copy_into(&fs.oem, &f, o, l, "the OEM file system")?;
    let (o, l) = range(&table, parts::ROOT.0);
    copy_into(&fs.root, &f, o, l, "the ROOT file system")?;
    f.sync_all()?;
    Ok(())
}

/// Writes a qcow2 copy of a raw disk with qemu-img.
pub fn qcow2(raw: &Path, out: &Path) -> anyhow::Result<()> {
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .output()
        .context("running qemu-img (Debian package qemu-utils)")?;
    if !o.status.success() {
        bail!(
            "qemu-img convert failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}
