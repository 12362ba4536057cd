//! Growing ROOT to fill the disk: on first boot (the image is smaller than
//! the disk it was written to) and whenever the disk grew since.
//!
//! 1. Move the backup GPT to the end of the disk and extend ROOT (the last
//!    partition) to the last usable 1 MiB boundary; write the table (both
//!    headers, fsynced) and clear the old backup header.
//! 2. Tell the kernel the partition's new size (`BLKPG_RESIZE_PARTITION`;
//!    re-reading the whole table would fail with the /usr slot in use).
//! 3. Once ROOT is mounted, grow ext4 online (`EXT4_IOC_RESIZE_FS`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use anyhow::Context as _;
use drover_core::slot::layout;
use drover_core::PartitionTable;

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;

mod ioctl {
    // SAFETY: BLKPG takes a pointer to a blkpg_ioctl_arg whose data points
    // to a blkpg_partition; both live on the caller's stack for the call.
    nix::ioctl_write_ptr_bad!(blkpg, 0x1269, super::BlkpgIoctlArg);
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64, the new block count.
    nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
}

/// Grows the table and ROOT on `disk` when there is room. Returns ROOT's
/// new size in bytes when it grew.
pub fn grow_partition(disk: &Path) -> anyhow::Result<Option<u64>> {
    let mut f = File::options().read(true).write(true).open(disk)?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut table = PartitionTable::read(&mut f, disk)?;
    let lb = table.block_size();
    let moved = table.grow_to(size)?;
    let root = layout::ROOT.0;
    let Some(entry) = table.entry(root) else {
        return Ok(None);
    };
    let (_, usable_last) = table.usable_lbas();
    let align = (1 << 20) / lb;
    let new_last = (usable_last + 1) / align * align - 1;
    if new_last <= entry.last_lba + align {
        if moved.is_some() {
            table.write(&mut f, false)?;
        }
        return Ok(None);
    }
    let first = entry.first_lba;
    table.extend(root, new_last)?;
    table.write(&mut f, false)?;
    if let Some(old) = moved {
        f.write_all_at(&vec![0u8; lb as usize], old * lb)?;
        f.sync_all()?;
    }
    let mut part = BlkpgPartition {
        start: (first * lb) as i64,
        length: ((new_last - first + 1) * lb) as i64,
        pno: root as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: see the ioctl module; `part` outlives the call.
    unsafe { ioctl::blkpg(f.as_raw_fd(), &arg) }
        .context("telling the kernel ROOT's new size (BLKPG)")?;
    Ok(Some(part.length as u64))
}

/// Grows the ext4 file system mounted at `mountpoint` to `bytes`.
pub fn grow_ext4(mountpoint: &Path, bytes: u64) -> anyhow::Result<()> {
    let st = nix::sys::statvfs::statvfs(mountpoint)?;
    let bsize = st.fragment_size() as u64;
    let blocks = bytes / bsize;
    if blocks <= st.blocks() as u64 {
        return Ok(());
    }
    let dir = File::open(mountpoint)?;
    // SAFETY: see the ioctl module; `blocks` outlives the call.
    unsafe { ioctl::ext4_resize_fs(dir.as_raw_fd(), &blocks) }
        .context("growing ext4 (EXT4_IOC_RESIZE_FS)")?;
    Ok(())
}
