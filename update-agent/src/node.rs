//! The running node: which slot booted (from the boot stage's record) and
//! the disk that holds the slots.

use std::path::{Path, PathBuf};

use anyhow::bail;
use drover_core::boot_record::BootRecord;
use drover_core::SlotId;

/// What `droverctl status` shows of the boot record: the slot (a disk
/// slot: the agent does not run on a live boot), the version, whether it
/// was measured and why this slot was chosen. A view of
/// [`BootRecord`], which is the one reader of the file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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

impl TryFrom<&BootRecord> for Booted {
    type Error = drover_core::boot_record::Error;
    fn try_from(r: &BootRecord) -> Result<Self, Self::Error> {
        Ok(Booted {
            slot: r.slot_id()?,
            version: r.version.clone(),
            measured: r.measured,
            decision: r.decision.clone(),
        })
    }
}

/// Reads the boot record (`/run/drover/boot-record.json`).
pub fn booted(record: &Path) -> anyhow::Result<Booted> {
    Ok(Booted::try_from(&BootRecord::read(record)?)?)
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
    machine_id_from(Path::new("/etc/machine-id"))
}

/// The machine-id in `file` (empty when unreadable).
pub fn machine_id_from(file: &Path) -> String {
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
