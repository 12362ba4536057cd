//! Live boot from Drover's installation ISO (`drover.live` on the command
//! line): the slot image is a file on the ISO 9660 file system
//! (`/drover/usr.img`), attached read-only to a loop device, checked like a
//! slot on disk (signature, then dm-verity), and booted with its root file
//! system in memory. Nothing on any disk is written.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::mount::{mount, MsFlags};

use crate::stage::step;

/// Where the ISO is mounted, in the stage and in the live system's initramfs.
pub const MEDIA: &str = drover_core::paths::LIVE_MEDIA;
/// The slot image on the ISO.
pub const SLOT_IMAGE: &str = "drover/usr.img";
/// The label the stage and the slot use for a live boot.
pub const LABEL: &str = "LIVE";
/// The command-line flag of a live boot.
pub const FLAG: &str = drover_core::paths::LIVE_FLAG;

/// What the stage appends to the live system's command line: [`FLAG`],
/// and the unattended-install words of its own command line
/// (`drover.install=…`, `drover.install.…=…`), which `drover build
/// --install-to` puts on the ISO's boot entry.
pub fn live_cmdline(stage_cmdline: &str) -> String {
    let install = drover_core::paths::INSTALL_ARG;
    let mut words = vec![FLAG.to_string()];
    words.extend(
        stage_cmdline
            .split_whitespace()
            .filter(|w| {
                w.strip_prefix(install)
                    .is_some_and(|rest| rest.starts_with('=') || rest.starts_with('.'))
            })
            .map(String::from),
    );
    words.join(" ")
}

mod ioctl {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument; LOOP_SET_FD takes a file
    // descriptor by value (`<linux/loop.h>`).
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
}

/// Whether `dev` holds an ISO 9660 file system (`CD001` in the primary
/// volume descriptor at 32 KiB).
fn is_iso9660(dev: &Path) -> bool {
    let Ok(f) = File::open(dev) else {
        return false;
    };
    let mut b = [0u8; 5];
    f.read_exact_at(&mut b, 32 * 1024 + 1).is_ok() && &b == b"CD001"
}

/// Finds the installation media (any block device with ISO 9660 and
/// `/drover/usr.img` on it), waiting up to 20 s for CD drives to appear,
/// and mounts it read-only at [`MEDIA`].
pub fn mount_media(start: Instant) -> anyhow::Result<PathBuf> {
    let media = Path::new(MEDIA);
    std::fs::create_dir_all(media)?;
    let mut seen = Vec::new();
    for _ in 0..200 {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("loop") && !n.starts_with("dm-"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for n in names {
            let dev = Path::new("/dev").join(&n);
            if seen.contains(&n) || !is_iso9660(&dev) {
                continue;
            }
            seen.push(n.clone());
            if let Err(e) = mount(
                Some(&dev),
                media,
                Some("iso9660"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                None::<&str>,
            ) {
                step(
                    start,
                    &format!("{}: not mounted as ISO 9660: {e}", dev.display()),
                );
                continue;
            }
            if media.join(SLOT_IMAGE).is_file() {
                step(start, &format!("live media: {}", dev.display()));
                return Ok(dev);
            }
            let _ = nix::mount::umount(media);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{FLAG}: no ISO 9660 media with /{SLOT_IMAGE} appeared within 20 s (seen: {})",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// Attaches `file` (opened read-only) to a free loop device, read-only.
pub fn attach_loop(file: &File) -> anyhow::Result<PathBuf> {
    let ctl = File::open("/dev/loop-control")
        .context("opening /dev/loop-control (is the loop module loaded?)")?;
    // SAFETY: see the ioctl module; the descriptor is open for the call.
    let n = unsafe { ioctl::loop_ctl_get_free(ctl.as_raw_fd()) }
        .context("asking for a free loop device")?;
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let mut tries = 0;
    let loop_dev = loop {
        match std::fs::OpenOptions::new().read(true).open(&dev) {
            Ok(f) => break f,
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", dev.display())),
        }
    };
    // SAFETY: both descriptors are open; the kernel takes its own reference
    // to the backing file. A backing file opened read-only makes the loop
    // device read-only.
    unsafe { ioctl::loop_set_fd(loop_dev.as_raw_fd(), file.as_raw_fd()) }
        .with_context(|| format!("attaching the slot image to {}", dev.display()))?;
    Ok(dev)
}

/// The slot image on the mounted media, opened, with its loop device.
pub fn open_slot_image() -> anyhow::Result<(PathBuf, File, PathBuf)> {
    let path = Path::new(MEDIA).join(SLOT_IMAGE);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let node = attach_loop(&file)?;
    Ok((path, file, node))
}

/// Mounts a tmpfs at `sysroot`: the live system's writable root.
pub fn mount_root(sysroot: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(sysroot)?;
    mount(
        Some("tmpfs"),
        sysroot,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755,size=50%"),
    )
    .context("mounting a tmpfs as the live system's root")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_install_words_reach_the_live_system() {
        assert_eq!(
            super::live_cmdline("console=ttyS0 drover.stage drover.live"),
            "drover.live"
        );
        assert_eq!(
            super::live_cmdline(
                "console=ttyS0 drover.stage drover.live drover.install=/dev/vda drover.install.then=poweroff drover.installer=x"
            ),
            "drover.live drover.install=/dev/vda drover.install.then=poweroff"
        );
    }
}
