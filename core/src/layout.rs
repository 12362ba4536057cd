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

/// One partition of the layout, where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Partition number.
    pub index: u32,
    /// GPT label.
    pub label: &'static str,
    /// Type GUID.
    pub type_guid: &'static str,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// GPT attribute bits.
    pub flags: u64,
}

impl LayoutSpec {
    /// The partitions in disk order, where [`create`] puts them: 1 MiB
    /// aligned, from 1 MiB on. USR-A starts as priority 1 and successful
    /// (it holds the installed image), USR-B as priority 0 (empty).
    pub fn placed(&self) -> [Placed; 5] {
        let usr_a = GptPrio::default().with_priority(1).with_successful(true);
        let entries = [
            (layout::ESP, ESP_TYPE, self.esp_mib, 0u64),
            (layout::USR_A, USR_X86_64_TYPE, self.usr_mib, usr_a.raw()),
            (layout::USR_B, USR_X86_64_TYPE, self.usr_mib, 0),
            (layout::OEM, LINUX_DATA_TYPE, self.oem_mib, 0),
            (layout::ROOT, ROOT_X86_64_TYPE, self.root_mib, 0),
        ];
        let mut start = MIB;
        entries.map(|((index, label), type_guid, mib, flags)| {
            let p = Placed {
                index,
                label,
                type_guid,
                offset: start,
                len: mib * MIB,
                flags,
            };
            start += mib * MIB;
            p
        })
    }

    /// Offset and length in bytes of partition `index`.
    pub fn byte_range(&self, index: u32) -> Option<(u64, u64)> {
        self.placed()
            .into_iter()
            .find(|p| p.index == index)
            .map(|p| (p.offset, p.len))
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
    for p in spec.placed() {
        table.add(
            p.index,
            Partition {
                part_type_guid: Type {
                    guid: guid(p.type_guid),
                    os: OperatingSystem::None,
                },
                part_guid: part_guid(spec.disk_guid, p.index),
                first_lba: p.offset / lb,
                last_lba: (p.offset + p.len) / lb - 1,
                flags: p.flags,
                name: p.label.to_string(),
            },
        )?;
    }
    table.write(dev, true)?;
    Ok(table)
}
