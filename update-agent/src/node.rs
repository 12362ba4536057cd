//! The running node: which slot booted (from the boot stage's record) and
//! the disk that holds the slots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_core::SlotId;

/// What the boot stage recorded about this boot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Booted {
    /// The slot that booted.
    pub slot: SlotId,
    /// Its OS version.
    pub version: String,
    /// Whether the boot was measured into the TPM.
    pub measured: bool,
    /// `candidate` or `fallback`.
    pub decision: String,
}

/// The boot record (`/run/drover/boot-record.json`) as JSON.
pub fn record_json(record: &Path) -> anyhow::Result<serde_json::Value> {
    let b = std::fs::read(record).with_context(|| {
        format!(
            "reading the boot record {} (was this system started by drover-boot?)",
            record.display()
        )
    })?;
    serde_json::from_slice(&b).with_context(|| format!("{} is not a boot record", record.display()))
}

/// Reads the boot record (`/run/drover/boot-record.json`).
pub fn booted(record: &Path) -> anyhow::Result<Booted> {
    let v = record_json(record)?;
    let slot = v["slot"]
        .as_str()
        .context("the boot record names no slot")?
        .parse::<SlotId>()
        .map_err(|e| anyhow::anyhow!("the boot record's slot: {e}"))?;
    Ok(Booted {
        slot,
        version: v["version"].as_str().unwrap_or("").to_string(),
        measured: v["measured"].as_bool().unwrap_or(false),
        decision: v["decision"].as_str().unwrap_or("").to_string(),
    })
}

/// The disk holding the partitions labelled USR-A and USR-B, from sysfs
/// (`PARTNAME=` of each partition's uevent): no udev needed, so it works
/// in units that run before udev has made `/dev/disk/by-partlabel`.
pub fn find_disk() -> anyhow::Result<PathBuf> {
    let parts = drover_core::devices::partitions(Path::new("/sys/class/block"));
    let Some(disk) = drover_core::devices::slot_disk(&parts) else {
        bail!("no disk has partitions labelled USR-A and USR-B (see /sys/class/block/*/uevent)");
    };
    if !disk.exists() {
        bail!("{} (the disk of the slots) does not exist", disk.display());
    }
    Ok(disk)
}

/// `/etc/machine-id`, or empty.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
