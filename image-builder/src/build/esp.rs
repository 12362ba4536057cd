//! The EFI system partition: FAT32 with systemd-boot and the boot stage
//! (kernel + `drover-boot` stage initramfs), written with mtools, no mount.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

/// systemd-boot's EFI binary inside a root file system or on the host.
pub const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// What goes on the ESP.
#[derive(Debug)]
pub struct EspInput<'a> {
    /// systemd-boot EFI binary.
    pub systemd_boot: &'a Path,
    /// Stage kernel.
    pub kernel: &'a Path,
    /// Stage initramfs.
    pub initramfs: &'a Path,
    /// Kernel command line of the stage.
    pub cmdline: &'a str,
    /// Volume id (from the build inputs, for reproducibility).
    pub volume_id: u32,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates `image` (a FAT32 file of `mib` MiB) with the ESP contents.
pub fn build(image: &Path, mib: u64, input: &EspInput<'_>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(image);
    run(Command::new("mkfs.fat")
        .args([
            "-F",
            "32",
            "-n",
            "EFI-SYSTEM",
            "-i",
            &format!("{:08X}", input.volume_id),
            "-C",
        ])
        .arg(image)
        .arg((mib * 1024).to_string()))
    .context("creating the ESP file system (Debian package dosfstools)")?;
    let img = image.to_str().context("non-UTF-8 path")?;
    let mtools = |args: &[&str]| -> anyhow::Result<()> {
        run(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", img])
            .args(&args[1..]))
        .context("writing the ESP (Debian package mtools)")
    };
    mtools(&[
        "mmd",
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/systemd",
        "::/loader",
        "::/loader/entries",
        "::/drover",
    ])?;
    let sb = input.systemd_boot.to_str().context("non-UTF-8 path")?;
    mtools(&["mcopy", sb, "::/EFI/BOOT/BOOTX64.EFI"])?;
    mtools(&["mcopy", sb, "::/EFI/systemd/systemd-bootx64.efi"])?;
    mtools(&[
        "mcopy",
        input.kernel.to_str().context("path")?,
        "::/drover/vmlinuz",
    ])?;
    mtools(&[
        "mcopy",
        input.initramfs.to_str().context("path")?,
        "::/drover/initrd.img",
    ])?;
    let dir = tempfile::tempdir()?;
    let loader = dir.path().join("loader.conf");
    // No menu and no editor: the boot stage chooses the slot, and nobody at
    // the console edits the stage's command line on a secure site.
    std::fs::write(&loader, "default drover.conf\ntimeout 0\neditor no\n")?;
    let entry = dir.path().join("drover.conf");
    std::fs::write(
        &entry,
        format!(
            "title Drover boot stage\nlinux /drover/vmlinuz\ninitrd /drover/initrd.img\noptions {}\n",
            input.cmdline
        ),
    )?;
    mtools(&[
        "mcopy",
        loader.to_str().context("path")?,
        "::/loader/loader.conf",
    ])?;
    mtools(&[
        "mcopy",
        entry.to_str().context("path")?,
        "::/loader/entries/drover.conf",
    ])?;
    Ok(())
}
