//! Steps 2 to 5 of an install: wipe the tables, write the partitions,
//! read them back, and write the GPT last (the commit point).

use std::fs::File;
use std::os::fd::AsRawFd as _;

use anyhow::{bail, Context as _};
use drover_core::layout;
use drover_core::slot::layout as parts;
use drover_core::slot_image::{self, Window};

use super::check::Checked;
use super::device::{ioctl, sha256_range, zero_range};
use super::{InstallOptions, InstallReport, Steps, MIB};

/// Steps 2 to 5.
pub(super) fn write(
    opts: &InstallOptions,
    steps: &Steps,
    c: Checked,
) -> anyhow::Result<InstallReport> {
    let (disk, block) = (&c.disk, c.block);
    let spec = &c.spec;
    let m = &c.verified.verified.manifest;

    // 2. No table: from here the disk boots nothing until step 5.
    zero_range(disk, block, 0, MIB)?;
    zero_range(disk, block, c.size - MIB, MIB)?;
    disk.sync_all()?;
    if block {
        // SAFETY: see the ioctl module. The kernel drops the old
        // partitions; failure (a busy partition) was refused above.
        let _ = unsafe { ioctl::blkrrpart(disk.as_raw_fd()) };
    }
    steps.say("old partition tables wiped");

    // 3. Contents. The table is computed now and written in step 5.
    let range = |n: u32| spec.byte_range(n).expect("the layout has it");
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    for p in spec.placed() {
        zero_range(disk, block, p.offset, p.len)?;
    }
    let (o, l) = range(parts::ESP.0);
    crate::build::disk::copy_into(&c.esp_path, disk, o, l, "the ESP image")?;
    steps.say("ESP written");
    let (usr_off, l) = range(parts::USR_A.0);
    crate::build::disk::copy_into(&c.slot_path, disk, usr_off, l, "the slot image")?;
    steps.say(&format!("USR-A written ({} MiB)", c.slot_len >> 20));
    let fs = crate::build::disk::oem_and_root(spec, work.path(), c.config_text.as_deref())?;
    let (oem_off, oem_len) = range(parts::OEM.0);
    crate::build::disk::copy_into(&fs.oem, disk, oem_off, oem_len, "the OEM file system")?;
    let (o, l) = range(parts::ROOT.0);
    crate::build::disk::copy_into(&fs.root, disk, o, l, "the ROOT file system")?;
    disk.sync_all()?;
    steps.say(&format!(
        "OEM ({}) and ROOT written and synced",
        if c.config_text.is_some() {
            "with the node config"
        } else {
            "no node config"
        }
    ));

    // 4. Read back.
    let (esp_off, esp_part) = range(parts::ESP.0);
    let want = sha256_range(&c.esp_file, 0, c.esp_len)?;
    if sha256_range(disk, esp_off, c.esp_len)? != want {
        bail!("the ESP read back differs from what was written: the disk is left without a partition table");
    }
    drover_core::measured::esp::check_stage(disk, esp_off, esp_part, &c.keys)
        .map_err(|e| anyhow::anyhow!("the ESP on the disk: {e}"))?;
    let oem_img = File::open(&fs.oem)?;
    if sha256_range(disk, oem_off, spec.oem_mib * MIB)?
        != sha256_range(&oem_img, 0, spec.oem_mib * MIB)?
    {
        bail!("OEM read back differs from what was written: the disk is left without a partition table");
    }
    let (_, usr_len) = range(parts::USR_A.0);
    let written = slot_image::open_verified(
        &Window {
            file: disk,
            offset: usr_off,
        },
        usr_len,
        &opts.disk,
        &c.keys,
    )?;
    slot_image::verify_data(disk, &opts.disk, usr_off, &written).map_err(|e| {
        anyhow::anyhow!(
            "USR-A as written does not verify: {e}; the disk is left without a partition table"
        )
    })?;
    steps
        .say("read back: ESP and OEM bytes, and every block of USR-A against the signed root hash");

    // 5. The commit point.
    let mut target = disk;
    layout::create(&mut target, &opts.disk, spec)?;
    disk.sync_all()?;
    if block {
        // SAFETY: see the ioctl module.
        if let Err(e) = unsafe { ioctl::blkrrpart(disk.as_raw_fd()) } {
            steps.say(&format!(
                "the kernel did not re-read the partition table ({e}); it will on the next boot"
            ));
        }
    }
    steps.say("partition table written and synced: the disk boots USR-A");
    Ok(InstallReport {
        disk: opts.disk.display().to_string(),
        disk_size: c.size,
        disk_guid: spec.disk_guid.to_string(),
        os: m.os.name.clone(),
        version: m.os.version.clone(),
        root_hash: m.verity.root_hash.clone(),
        signed_by: c.verified.verified.key.short_id(),
        config: c.config_text.is_some(),
        seconds: (steps.start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}
