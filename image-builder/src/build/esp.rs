//! The EFI system partition: FAT32 with systemd-boot and the boot stage
//! (kernel + `drover-boot` stage initramfs), written with mtools, no mount.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
// Where things are on the ESP (from its root, no leading slash): defined
// once, with the readers on the node and the installer.
use drover_core::measured::esp::{MANIFEST as STAGE_MANIFEST, STAGE_INITRD, STAGE_KERNEL};

/// systemd-boot's EFI binary inside a root file system or on the host.
pub const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The stage's command line as systemd-boot measures it (PCR 12) and
/// hands it to the kernel's EFI stub (which measures it into PCR 9): the
/// loader entry's `initrd` turned into an `initrd=` option in front, in
/// UTF-16LE with the terminating NUL.
pub fn measured_cmdline(cmdline: &str) -> Vec<u8> {
    let options = format!("initrd=\\{} {cmdline}", STAGE_INITRD.replace('/', "\\"));
    options
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

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
    /// The build's signed manifest envelope, whose reference values
    /// describe this ESP's boot stage (`/drover/manifest.sig`).
    pub manifest: &'a Path,
    /// Volume id (from the build inputs, for reproducibility).
    pub volume_id: u32,
    /// `SOURCE_DATE_EPOCH`: the time stamps of every file and directory.
    pub epoch: u64,
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
    // `--invariant`: no time stamps or random values of mkfs.fat's own
    // (the volume id is given); mtools takes "now" from SOURCE_DATE_EPOCH.
    // The same inputs give the same bytes.
    run(Command::new("mkfs.fat")
        .args([
            "--invariant",
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
            .env("SOURCE_DATE_EPOCH", input.epoch.to_string())
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
        &format!("::/{STAGE_KERNEL}"),
    ])?;
    mtools(&[
        "mcopy",
        input.initramfs.to_str().context("path")?,
        &format!("::/{STAGE_INITRD}"),
    ])?;
    mtools(&[
        "mcopy",
        input.manifest.to_str().context("path")?,
        &format!("::/{STAGE_MANIFEST}"),
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
            "title Drover boot stage\nlinux /{STAGE_KERNEL}\ninitrd /{STAGE_INITRD}\noptions {}\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_is_reproducible_and_fsck_fat_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, len: usize| {
            let p = dir.path().join(name);
            std::fs::write(&p, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
            p
        };
        let (sb, k, i, m) = (
            file("sb.efi", 100_000),
            file("vmlinuz", 3_000_000),
            file("initrd", 1_500_000),
            file("manifest.sig", 2_000),
        );
        let input = EspInput {
            systemd_boot: &sb,
            kernel: &k,
            initramfs: &i,
            cmdline: "console=ttyS0 drover.stage",
            manifest: &m,
            volume_id: 0x1234_5678,
            epoch: 1_700_000_000,
        };
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        build(&a, 34, &input).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        build(&b, 34, &input).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(&a)
            .output()
            .expect("fsck.fat (Debian package dosfstools)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let f = std::fs::File::open(&a).unwrap();
        let got = drover_core::measured::esp::read_file(&f, 0, 34 << 20, "drover/vmlinuz").unwrap();
        assert_eq!(got, std::fs::read(&k).unwrap());
        let entry =
            drover_core::measured::esp::read_file(&f, 0, 34 << 20, "loader/entries/drover.conf")
                .unwrap();
        assert!(String::from_utf8(entry)
            .unwrap()
            .contains("options console=ttyS0 drover.stage\n"));
    }

    #[test]
    fn the_measured_command_line_is_what_systemd_boot_252_measured() {
        // From the OVMF + swtpm fixture's PCR 12 event
        // (core/tests/fixtures/ovmf-swtpm).
        let m = measured_cmdline("console=tty0 console=ttyS0,115200 panic=5 drover.stage");
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(m)),
            "86c785523313b7971ebc94f3f5fc10ba3e8dabf89799d7f078333cdbbec7e599"
        );
    }
}
