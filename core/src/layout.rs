//! Creating a disk with Drover's GPT layout (see `docs/disk-layout.md`):
//!
//! | # | label        | type                          |
//! |---|--------------|-------------------------------|
//! | 1 | `EFI-SYSTEM` | EFI system partition          |
//! | 3 | `USR-A`      | x86-64 `/usr` (UAPI DPS)      |
//! | 4 | `USR-B`      | x86-64 `/usr` (UAPI DPS)      |
//! | 6 | `OEM`        | Linux data                    |
//! | 9 | `ROOT`       | x86-64 root (UAPI DPS)        |
//!
//! Partitions are 1 MiB aligned and laid out in that order. ROOT takes the
//! given size (it grows to fill the disk on first boot).

use std::path::Path;

use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use sha2::{Digest, Sha256};

use crate::gptprio::GptPrio;
use crate::slot::{layout, ESP_TYPE, LINUX_DATA_TYPE, ROOT_X86_64_TYPE, USR_X86_64_TYPE};
use crate::table::{Device, PartitionTable, TableError};

const MIB: u64 = 1 << 20;

/// Sizes of the partitions, in MiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSpec {
    /// EFI system partition.
    pub esp_mib: u64,
    /// Each of USR-A and USR-B.
    pub usr_mib: u64,
    /// OEM.
    pub oem_mib: u64,
    /// ROOT, before it grows on first boot.
    pub root_mib: u64,
    /// Disk GUID; partition GUIDs are derived from it, so the same GUID
    /// gives the same table.
    pub disk_guid: uuid::Uuid,
}

impl LayoutSpec {
    /// Bytes the disk needs: the partitions, 1 MiB in front and 1 MiB at
    /// the end for the backup table.
    pub fn disk_size(&self) -> u64 {
        (1 + self.esp_mib + 2 * self.usr_mib + self.oem_mib + self.root_mib + 1) * MIB
    }
}

fn guid(s: &str) -> uuid::Uuid {
    s.parse().expect("constant GUID")
}

/// A partition GUID derived from the disk GUID and the partition number.
fn part_guid(disk: uuid::Uuid, index: u32) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(b"drover partition guid\0");
    h.update(disk.as_bytes());
    h.update(index.to_le_bytes());
    let d = h.finalize();
    uuid::Builder::from_random_bytes(d[..16].try_into().expect("16 bytes")).into_uuid()
}

/// Creates the layout on `dev` and writes it (protective MBR, both GPTs).
/// USR-A starts as priority 1 and successful (it holds the installed
/// image), USR-B as priority 0 (empty). Contents of partitions are not
/// touched.
pub fn create<D: Device>(
    dev: &mut D,
    path: &Path,
    spec: &LayoutSpec,
) -> Result<PartitionTable, TableError> {
    let mut table = PartitionTable::create(dev, path, spec.disk_guid)?;
    let lb = table.block_size();
    let usr_a = GptPrio::default().with_priority(1).with_successful(true);
    let entries = [
        (layout::ESP, ESP_TYPE, spec.esp_mib, 0u64),
        (layout::USR_A, USR_X86_64_TYPE, spec.usr_mib, usr_a.raw()),
        (layout::USR_B, USR_X86_64_TYPE, spec.usr_mib, 0),
        (layout::OEM, LINUX_DATA_TYPE, spec.oem_mib, 0),
        (layout::ROOT, ROOT_X86_64_TYPE, spec.root_mib, 0),
    ];
    let mut start = MIB / lb;
    for ((index, label), ty, mib, flags) in entries {
        let sectors = mib * MIB / lb;
        table.add(
            index,
            Partition {
                part_type_guid: Type {
                    guid: guid(ty),
                    os: OperatingSystem::None,
                },
                part_guid: part_guid(spec.disk_guid, index),
                first_lba: start,
                last_lba: start + sectors - 1,
                flags,
                name: label.to_string(),
            },
        )?;
        start += sectors;
    }
    table.write(dev, true)?;
    Ok(table)
}
