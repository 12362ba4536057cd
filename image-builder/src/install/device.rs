//! The target disk: refused while in use, opened exclusively, sized,
//! zeroed by range, and read back.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::{Refused, MIB};

pub(super) mod ioctl {
    // SAFETY (all): `<linux/fs.h>` block device ioctls; the arguments are
    // a u64 out-parameter, a [start, length] pair, and none.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
}

/// `major:minor` of the disk and all its partitions, from sysfs.
fn device_numbers(disk: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(disk)?;
    let rdev = meta.rdev();
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}"))
        .with_context(|| format!("{} in sysfs", disk.display()))?;
    if sys.join("partition").exists() {
        return Err(Refused(format!(
            "{} is a partition; give the whole disk (Drover writes its own partition table; nothing was written)",
            disk.display()
        ))
        .into());
    }
    let mut out = vec![(format!("{maj}:{min}"), disk.to_owned())];
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for e in std::fs::read_dir(&sys)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&name) && e.path().join("partition").exists() {
            if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                out.push((d.trim().to_string(), Path::new("/dev").join(&n)));
            }
        }
    }
    Ok(out)
}

/// Refuses a block device that is mounted, or holds a mounted partition,
/// or is a swap or device-mapper member.
fn check_not_in_use(disk: &Path) -> anyhow::Result<()> {
    let devs = device_numbers(disk)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        if let Some((_, dev)) = devs.iter().find(|(n, _)| n == f[2]) {
            return Err(Refused(format!(
                "{} is mounted on {} (unmount it first; nothing was written)",
                dev.display(),
                f[4]
            ))
            .into());
        }
    }
    for (_, dev) in &devs {
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        let holders = name
            .map(|n| Path::new("/sys/class/block").join(n).join("holders"))
            .and_then(|h| std::fs::read_dir(h).ok())
            .map(|rd| rd.count())
            .unwrap_or(0);
        if holders > 0 {
            return Err(Refused(format!(
                "{} is in use by device-mapper, RAID or another stacked device (see its holders/ in sysfs; nothing was written)",
                dev.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Opens the target for writing. A block device is opened with `O_EXCL`,
/// which the kernel refuses while anything (a mount, a swap, another
/// program's exclusive open) holds it.
pub(super) fn open_target(disk: &Path) -> anyhow::Result<(File, bool)> {
    let meta =
        std::fs::metadata(disk).with_context(|| format!("{} does not exist", disk.display()))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        return Err(Refused(format!(
            "{} is neither a block device nor a disk image file",
            disk.display()
        ))
        .into());
    }
    if block {
        check_not_in_use(disk)?;
    }
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if block {
        o.custom_flags(nix::libc::O_EXCL);
    }
    match o.open(disk) {
        Ok(f) => Ok((f, block)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => Err(Refused(format!(
            "{} is in use (mounted, a swap, or opened exclusively by another program; nothing was written)",
            disk.display()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("opening {} for writing", disk.display())),
    }
}

pub(super) fn size_of_target(f: &File, block: bool) -> anyhow::Result<u64> {
    if block {
        let mut n = 0u64;
        // SAFETY: see the ioctl module.
        unsafe { ioctl::blkgetsize64(f.as_raw_fd(), &mut n) }
            .context("asking the disk for its size")?;
        Ok(n)
    } else {
        Ok(f.metadata()?.len())
    }
}

/// Zeroes `len` bytes at `offset`: BLKZEROOUT on a block device (fast where
/// the device supports write-zeroes), holes punched in a file.
pub(super) fn zero_range(f: &File, block: bool, offset: u64, len: u64) -> anyhow::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if block {
        let range = [offset, len];
        // SAFETY: see the ioctl module; `range` lives across the call.
        unsafe { ioctl::blkzeroout(f.as_raw_fd(), &range) }
            .with_context(|| format!("zeroing {} MiB at {} MiB", len >> 20, offset >> 20))?;
        return Ok(());
    }
    use nix::fcntl::{fallocate, FallocateFlags};
    if fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .is_err()
    {
        let zeros = vec![0u8; MIB as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MIB);
            f.write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
    }
    Ok(())
}

pub(super) fn sha256_range(f: &File, offset: u64, len: u64) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}
