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

/// Reads the boot record (`/run/drover/boot-record.json`).
pub fn booted(record: &Path) -> anyhow::Result<Booted> {
    let b = std::fs::read(record).with_context(|| {
        format!(
            "reading the boot record {} (was this system started by drover-boot?)",
            record.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&b)
        .with_context(|| format!("{} is not a boot record", record.display()))?;
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

/// The disk holding the partition labelled USR-A: `/dev/disk/by-partlabel`
/// resolved, then the partition's parent in sysfs.
pub fn find_disk() -> anyhow::Result<PathBuf> {
    let link = Path::new("/dev/disk/by-partlabel").join(SlotId::A.label());
    let part = std::fs::canonicalize(&link)
        .with_context(|| format!("no {} (is udev running?)", link.display()))?;
    let name = part
        .file_name()
        .and_then(|n| n.to_str())
        .context("partition device name")?;
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(name))?;
    let parent = sys
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .context("partition without a parent disk in sysfs")?;
    let disk = Path::new("/dev").join(parent);
    if !disk.exists() {
        bail!(
            "{} (the disk of {}) does not exist",
            disk.display(),
            part.display()
        );
    }
    Ok(disk)
}

/// `/etc/machine-id`, or empty.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
