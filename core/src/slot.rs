//! The two `/usr` slots, USR-A and USR-B, and the disk layout facts that name them.

use std::fmt;
use std::ops::Not;
use std::str::FromStr;

/// UAPI Discoverable Partitions type GUID of an x86-64 `/usr` partition.
pub const USR_X86_64_TYPE: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
/// EFI system partition type GUID.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Linux generic data type GUID (used for OEM).
pub const LINUX_DATA_TYPE: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/// UAPI Discoverable Partitions type GUID of an x86-64 root partition (ROOT).
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// Partition numbers and labels of the Drover layout (see docs/disk-layout.md).
pub mod layout {
    /// EFI system partition.
    pub const ESP: (u32, &str) = (1, "EFI-SYSTEM");
    /// First `/usr` slot.
    pub const USR_A: (u32, &str) = (3, "USR-A");
    /// Second `/usr` slot.
    pub const USR_B: (u32, &str) = (4, "USR-B");
    /// Node configuration partition.
    pub const OEM: (u32, &str) = (6, "OEM");
    /// Writable root (`/etc`, `/var`, `/home`).
    pub const ROOT: (u32, &str) = (9, "ROOT");
}

/// One of the two `/usr` slots. `!slot` is the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotId {
    /// USR-A, partition 3.
    A,
    /// USR-B, partition 4.
    B,
}

impl SlotId {
    /// Both slots, in partition order.
    pub const ALL: [SlotId; 2] = [SlotId::A, SlotId::B];

    /// The GPT partition label of the slot.
    pub const fn label(self) -> &'static str {
        match self {
            SlotId::A => layout::USR_A.1,
            SlotId::B => layout::USR_B.1,
        }
    }

    /// The partition number the default layout gives the slot.
    pub const fn default_partition(self) -> u32 {
        match self {
            SlotId::A => layout::USR_A.0,
            SlotId::B => layout::USR_B.0,
        }
    }

    /// The slot with the given GPT label, if it is one of ours.
    pub fn from_label(label: &str) -> Option<SlotId> {
        SlotId::ALL.into_iter().find(|s| s.label() == label)
    }
}

impl Not for SlotId {
    type Output = SlotId;
    fn not(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Error for a slot name that is neither USR-A nor USR-B.
#[derive(Debug, thiserror::Error)]
#[error("unknown slot '{0}': expected USR-A or USR-B (or A, B)")]
pub struct UnknownSlot(pub String);

impl serde::Serialize for SlotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl<'de> serde::Deserialize<'de> for SlotId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for SlotId {
    type Err = UnknownSlot;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "USR-A" | "A" => Ok(SlotId::A),
            "USR-B" | "B" => Ok(SlotId::B),
            _ => Err(UnknownSlot(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_slot_and_names() {
        assert_eq!(!SlotId::A, SlotId::B);
        assert_eq!(!!SlotId::A, SlotId::A);
        assert_eq!("usr-b".parse::<SlotId>().unwrap(), SlotId::B);
        assert_eq!("A".parse::<SlotId>().unwrap(), SlotId::A);
        assert!("USR-C".parse::<SlotId>().is_err());
        assert_eq!(SlotId::from_label("USR-A"), Some(SlotId::A));
        assert_eq!(SlotId::B.default_partition(), 4);
    }
}
