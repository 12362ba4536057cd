//! Reading the EFI system partition without mounting it (FAT through
//! `fatfs`, read-only), and checking its boot stage against the signed
//! manifest it carries (`/drover/manifest.sig`, written by `drover build`).
//! Used by `droverctl verify-boot` on a node and by `drover-install` before
//! it writes an ESP image to a disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::keys::TrustedKeys;
use crate::manifest::ReferenceValue;
use crate::slot_image::SignedManifest;

/// The signed manifest of the build that wrote the ESP.
pub const MANIFEST: &str = "drover/manifest.sig";
/// systemd-boot as the firmware starts it.
pub const SYSTEMD_BOOT: &str = "EFI/BOOT/BOOTX64.EFI";
/// The stage kernel.
pub const STAGE_KERNEL: &str = "drover/vmlinuz";
/// The stage initramfs.
pub const STAGE_INITRD: &str = "drover/initrd.img";

/// A FAT file system in `file` at `start`, `len` bytes, as `Read + Seek`
/// for the FAT reader; writing is refused.
struct ReadOnlyPartition<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for ReadOnlyPartition<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ReadOnlyPartition<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("seek before the partition start"))?;
        Ok(self.pos)
    }
}

impl Write for ReadOnlyPartition<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the ESP is read, never written, here",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads `path` (relative to the root) from the FAT file system at
/// `start`..`start + len` of `file`. The error says which step failed.
pub fn read_file(file: &File, start: u64, len: u64, path: &str) -> Result<Vec<u8>, String> {
    let part = ReadOnlyPartition {
        file,
        start,
        len,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new())
        .map_err(|e| format!("not a FAT file system: {e}"))?;
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(path)
        .map_err(|e| format!("opening /{path}: {e}"))?
        .read_to_end(&mut out)
        .map_err(|e| format!("reading /{path}: {e}"))?;
    Ok(out)
}

/// The boot stage's reference values from the ESP's signed manifest
/// (`/drover/manifest.sig`), its signature checked against `trusted`.
pub fn stage_reference(
    file: &File,
    start: u64,
    len: u64,
    trusted: &TrustedKeys,
) -> Result<Vec<ReferenceValue>, String> {
    let bytes = read_file(file, start, len, MANIFEST)?;
    let signed = SignedManifest::read(&bytes[..], 0, bytes.len() as u64)
        .map_err(|e| format!("/{MANIFEST}: {e}"))?;
    let v = signed
        .verify(trusted, Path::new(&format!("ESP:/{MANIFEST}")))
        .map_err(|e| e.to_string())?;
    Ok(v.manifest
        .reference
        .into_iter()
        .filter(|r| crate::measured::bootcheck::STAGE_COMPONENTS.contains(&r.component.as_str()))
        .collect())
}

/// Checks the files of the boot stage on an ESP against the signed
/// reference values it carries: systemd-boot and the stage kernel by their
/// Authenticode hash (what the firmware measures), the stage initramfs by
/// its SHA-256. Returns the version the manifest names.
pub fn check_stage(
    file: &File,
    start: u64,
    len: u64,
    trusted: &TrustedKeys,
) -> Result<Vec<ReferenceValue>, String> {
    let refs = stage_reference(file, start, len, trusted)?;
    let want = |c: &str| {
        refs.iter()
            .find(|r| r.component == c)
            .map(|r| r.sha256.clone())
            .ok_or_else(|| format!("/{MANIFEST} has no reference value for {c}"))
    };
    for (component, path, authenticode) in [
        ("systemd-boot", SYSTEMD_BOOT, true),
        ("stage-kernel", STAGE_KERNEL, true),
        ("stage-initramfs", STAGE_INITRD, false),
    ] {
        let bytes = read_file(file, start, len, path)?;
        let got = if authenticode {
            crate::measured::authenticode::sha256(&bytes)
                .map(hex::encode)
                .map_err(|e| format!("/{path}: {e}"))?
        } else {
            hex::encode(Sha256::digest(&bytes))
        };
        let want = want(component)?;
        if got != want {
            return Err(format!(
                "/{path} ({component}) has digest {got}, the signed manifest on the ESP says {want}"
            ));
        }
    }
    Ok(refs)
}
