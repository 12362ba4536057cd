//! The installation ISO: UEFI-bootable through El Torito, whose EFI boot
//! image is a FAT file system with systemd-boot and the boot stage started
//! with `drover.live`; the ISO 9660 file system carries the same signed
//! slot image the disk has, the ESP image and `install.json` for
//! `drover-install`, under `/drover`. It is hybrid: a GPT with the EFI image
//! as an EFI system partition makes the same file boot from a USB stick.
//!
//! No BIOS boot: a machine that can only boot through BIOS could start the
//! live system (isolinux would do it), but the disk `drover-install` writes
//! boots only through UEFI (systemd-boot, the measured boot chain), so such
//! a machine would be left with a disk it cannot boot.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

/// The ISO 9660 volume id.
pub const VOLUME_ID: &str = "DROVER";
/// The EFI boot image inside the ISO.
pub const EFI_IMAGE: &str = "boot/efi.img";

/// What goes into the ISO besides the EFI boot image.
#[derive(Debug)]
pub struct IsoInput<'a> {
    /// The El Torito EFI boot image (a FAT file system).
    pub efi_image: &'a Path,
    /// Files under `/drover`: (name on the ISO, source).
    pub files: Vec<(&'a str, &'a Path)>,
    /// `SOURCE_DATE_EPOCH`: every date in the ISO.
    pub epoch: u64,
}

/// Writes `iso` with xorriso.
pub fn build(iso: &Path, input: &IsoInput<'_>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(iso);
    let mut cmd = Command::new("xorriso");
    // Every date (volume, files, the El Torito catalog) from the epoch,
    // and the volume UUID from it: the same inputs give the same bytes.
    cmd.env("SOURCE_DATE_EPOCH", input.epoch.to_string())
        .args(["-as", "mkisofs", "-quiet", "-iso-level", "3"])
        // Rock Ridge with owners root and modes read-only: nothing of the
        // build host's users.
        .arg("-r")
        .arg("--set_all_file_dates")
        .arg(format!("={}", input.epoch))
        .args(["-V", VOLUME_ID, "-o"])
        .arg(iso)
        .args(["-e", EFI_IMAGE, "-no-emul-boot"])
        // Hybrid: the same EFI image appended as partition 2 of a GPT, so
        // the ISO written to a USB stick (`dd`) boots as a disk too.
        .args(["-append_partition", "2", "0xef"])
        .arg(input.efi_image)
        .args(["-appended_part_as_gpt", "-graft-points"])
        .arg(format!(
            "/{EFI_IMAGE}={}",
            input.efi_image.to_str().context("non-UTF-8 path")?
        ));
    for (name, src) in &input.files {
        cmd.arg(format!(
            "/drover/{name}={}",
            src.to_str().context("non-UTF-8 path")?
        ));
    }
    let out = cmd
        .output()
        .context("running xorriso (Debian package xorriso)")?;
    if !out.status.success() {
        bail!(
            "xorriso failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
