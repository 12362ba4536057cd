//! Finding the disk that holds the Drover slots, from sysfs.

use std::path::{Path, PathBuf};

/// A block device partition as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// `/dev/vda3`.
    pub dev: PathBuf,
    /// `/dev/vda`.
    pub disk: PathBuf,
    /// GPT partition label (`PARTNAME=` of the uevent).
    pub label: String,
}

/// All partitions the kernel knows, under `sys_block` (`/sys/class/block`).
pub fn partitions(sys_block: &Path) -> Vec<PartitionInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.join("partition").exists() {
            continue;
        }
        let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
        let label = uevent
            .lines()
            .find_map(|l| l.strip_prefix("PARTNAME="))
            .unwrap_or("");
        // The parent directory of a partition in /sys/block/<disk>/<part>.
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        let disk = real
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| Path::new("/dev").join(n))
            .unwrap_or_default();
        out.push(PartitionInfo {
            dev: Path::new("/dev").join(e.file_name()),
            disk,
            label: label.to_string(),
        });
    }
    out.sort_by(|a, b| a.dev.cmp(&b.dev));
    out
}

/// The disk that has partitions labelled USR-A and USR-B.
pub fn slot_disk(parts: &[PartitionInfo]) -> Option<PathBuf> {
    let a = parts.iter().find(|p| p.label == "USR-A")?;
    parts
        .iter()
        .any(|p| p.label == "USR-B" && p.disk == a.disk)
        .then(|| a.disk.clone())
}

/// The device node of the partition labelled `label` on `disk`.
pub fn partition_node(disk: &Path, label: &str) -> Option<PathBuf> {
    partitions(Path::new("/sys/class/block"))
        .into_iter()
        .find(|p| p.disk == disk && p.label == label)
        .map(|p| p.dev)
}
