//! Device-mapper through its ioctls: create a read-only dm-verity device.
//!
//! The layout of `struct dm_ioctl` and `struct dm_target_spec` is that of
//! `<linux/dm-ioctl.h>` (interface version 4).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{bail, Context as _};

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `struct dm_ioctl` (312 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec` (40 bytes), followed by the parameter string.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

mod ioctl {
    use super::DmIoctl;
    // SAFETY (all three): the kernel reads and writes at most `data_size`
    // bytes of the buffer, which `Dm::call` always sizes to that length.
    nix::ioctl_readwrite!(dm_dev_create, 0xfd, 3, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, 6, DmIoctl);
    nix::ioctl_readwrite!(dm_table_load, 0xfd, 9, DmIoctl);
    nix::ioctl_readwrite!(dm_dev_remove, 0xfd, 4, DmIoctl);
}

fn header(name: &str, flags: u32, data_size: usize) -> anyhow::Result<DmIoctl> {
    if name.len() >= DM_NAME_LEN {
        bail!("device-mapper name '{name}' is too long");
    }
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: data_size as u32,
        data_start: size_of::<DmIoctl>() as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(h)
}

/// A buffer of `u64`s (for alignment) holding a header and its payload.
fn buffer(h: &DmIoctl, payload: &[u8]) -> Vec<u64> {
    let hs = size_of::<DmIoctl>();
    let total = (hs + payload.len()).next_multiple_of(8);
    let mut buf = vec![0u64; total / 8];
    // SAFETY: `buf` is at least `hs + payload.len()` bytes long and u64
    // aligned, which satisfies DmIoctl's alignment; we copy plain bytes.
    unsafe {
        let p = buf.as_mut_ptr() as *mut u8;
        std::ptr::copy_nonoverlapping(h as *const DmIoctl as *const u8, p, hs);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(hs), payload.len());
    }
    buf
}

/// The parameters of a dm-verity table (format version 1).
#[derive(Clone, Debug)]
pub struct VerityTable {
    /// Data device (path or major:minor).
    pub data_dev: String,
    /// Hash device.
    pub hash_dev: String,
    /// Data blocks.
    pub data_blocks: u64,
    /// Byte offset of the verity superblock on the hash device.
    pub hash_offset: u64,
    /// Salt (may be empty).
    pub salt: Vec<u8>,
    /// Root hash.
    pub root_hash: [u8; 32],
    /// Restart the machine when corruption is found at run time, so
    /// corruption ends as a failed boot and not a silent one.
    pub restart_on_corruption: bool,
}

impl VerityTable {
    /// The table line for the `verity` target.
    pub fn params(&self) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        let mut p = format!(
            "1 {} {} 4096 4096 {} {} sha256 {} {}",
            self.data_dev,
            self.hash_dev,
            self.data_blocks,
            self.hash_offset / 4096 + 1,
            hex::encode(self.root_hash),
            salt
        );
        if self.restart_on_corruption {
            p.push_str(" 1 restart_on_corruption");
        }
        p
    }
}

/// Creates the read-only verity device `name`; returns `/dev/dm-N`.
pub fn create_verity(name: &str, table: &VerityTable) -> anyhow::Result<PathBuf> {
    let ctl = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .context("opening /dev/mapper/control (is dm-mod loaded?)")?;
    let fd = ctl.as_raw_fd();

    // Create.
    let h = header(name, DM_READONLY_FLAG, size_of::<DmIoctl>())?;
    let mut buf = buffer(&h, &[]);
    // SAFETY: buf holds a valid dm_ioctl sized to data_size.
    unsafe { ioctl::dm_dev_create(fd, buf.as_mut_ptr() as *mut DmIoctl) }
        .with_context(|| format!("creating device-mapper device {name}"))?;
    // SAFETY: buf starts with the dm_ioctl the kernel filled in.
    let dev = unsafe { (*(buf.as_ptr() as *const DmIoctl)).dev };

    // Load the table.
    let params = table.params();
    let spec_len = size_of::<DmTargetSpec>();
    let body_len = (spec_len + params.len() + 1).next_multiple_of(8);
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: table.data_blocks * 8,
        status: 0,
        next: body_len as u32,
        target_type: [0; 16],
    };
    spec.target_type[..6].copy_from_slice(b"verity");
    let mut payload = vec![0u8; body_len];
    // SAFETY: payload is at least spec_len bytes; DmTargetSpec is plain data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            &spec as *const DmTargetSpec as *const u8,
            payload.as_mut_ptr(),
            spec_len,
        );
    }
    payload[spec_len..spec_len + params.len()].copy_from_slice(params.as_bytes());
    let mut h = header(name, DM_READONLY_FLAG, size_of::<DmIoctl>() + payload.len())?;
    h.target_count = 1;
    let mut buf = buffer(&h, &payload);
    // SAFETY: as above; data_size covers header and the target spec.
    let loaded = unsafe { ioctl::dm_table_load(fd, buf.as_mut_ptr() as *mut DmIoctl) };
    if let Err(e) = loaded {
        let _ = remove(name);
        return Err(e).with_context(|| {
            format!("loading the verity table '{params}' (is dm-verity loaded?)")
        });
    }

    // Resume (DM_DEV_SUSPEND without the suspend flag).
    let h = header(name, 0, size_of::<DmIoctl>())?;
    let mut buf = buffer(&h, &[]);
    // SAFETY: as above.
    if let Err(e) = unsafe { ioctl::dm_dev_suspend(fd, buf.as_mut_ptr() as *mut DmIoctl) } {
        let _ = remove(name);
        return Err(e).with_context(|| format!("activating {name}"));
    }
    let minor = nix::sys::stat::minor(dev);
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    for _ in 0..100 {
        if node.exists() {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("{} did not appear", node.display())
}

/// Removes the device `name`.
pub fn remove(name: &str) -> anyhow::Result<()> {
    let ctl = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    let h = header(name, 0, size_of::<DmIoctl>())?;
    let mut buf = buffer(&h, &[]);
    // SAFETY: as in create_verity.
    unsafe { ioctl::dm_dev_remove(ctl.as_raw_fd(), buf.as_mut_ptr() as *mut DmIoctl) }
        .with_context(|| format!("removing device-mapper device {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_header() {
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(size_of::<DmTargetSpec>(), 40);
    }

    #[test]
    fn verity_table_line() {
        let t = VerityTable {
            data_dev: "/dev/vda3".into(),
            hash_dev: "/dev/vda3".into(),
            data_blocks: 1000,
            hash_offset: 4096 * 1000,
            salt: vec![0xab, 0xcd],
            root_hash: [0x11; 32],
            restart_on_corruption: true,
        };
        assert_eq!(
            t.params(),
            format!(
                "1 /dev/vda3 /dev/vda3 4096 4096 1000 1001 sha256 {} abcd 1 restart_on_corruption",
                "11".repeat(32)
            )
        );
    }
}
