//! The boot record: what the boot stage hands on to the booted system —
//! which slot it chose and why, and what it measured into the TPM (or why
//! it measured nothing). One type, written by `drover-boot` and read by
//! the agent, `droverctl` and the measured-boot checks.
//!
//! The stage appends it to the slot's initramfs as [`IN_INITRAMFS`]; slot
//! mode copies it to [`ON_SYSTEM`] on the booted system.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::measured::measure::{Bank, Event};
use crate::SlotId;

/// Path of the record inside the slot initramfs.
pub const IN_INITRAMFS: &str = "etc/drover/boot-record.json";
/// Path of the record on the booted system.
pub const ON_SYSTEM: &str = "/run/drover/boot-record.json";

/// The record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The slot booted: `USR-A`, `USR-B`, or `LIVE` for the slot image on
    /// an installation ISO ([`BootRecord::slot_id`]).
    pub slot: String,
    /// `candidate`, `fallback`.
    pub decision: String,
    /// OS version in the slot.
    pub version: String,
    /// Slots the stage refused in this boot, with the reason.
    #[serde(default)]
    pub refused: Vec<(String, String)>,
    /// Whether the events were extended into a TPM PCR.
    pub measured: bool,
    /// Why not, when they were not.
    #[serde(default)]
    pub not_measured_reason: Option<String>,
    /// The PCR extended ([`crate::measured::measure::PCR`]).
    pub pcr: u32,
    /// The banks of it that were extended (empty when not measured).
    #[serde(default)]
    pub banks: Vec<Bank>,
    /// The events, in order; replay them with [`crate::measured::measure::replay`].
    #[serde(default)]
    pub events: Vec<Event>,
}

/// Reading a boot record failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading the boot record {path} (was this system started by drover-boot?)")]
    Read {
        /// The record's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a boot record.
    #[error("{path} is not a boot record")]
    Parse {
        /// The record's path.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The record names a slot that is not on a disk (a live boot).
    #[error("the boot record names slot '{0}', not USR-A or USR-B")]
    NotADiskSlot(String),
}

impl BootRecord {
    /// Reads the record at `path` (normally [`ON_SYSTEM`]).
    pub fn read(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The record as the stage writes it (pretty JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a boot record serializes")
    }

    /// The disk slot booted; an error for a live boot from the ISO.
    pub fn slot_id(&self) -> Result<SlotId, Error> {
        self.slot
            .parse()
            .map_err(|_| Error::NotADiskSlot(self.slot.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BootRecord {
        BootRecord {
            slot: "USR-B".into(),
            decision: "candidate".into(),
            version: "1.2.0".into(),
            refused: vec![("USR-A".into(), "bad signature".into())],
            measured: false,
            not_measured_reason: Some("no TPM device".into()),
            pcr: crate::measured::measure::PCR,
            banks: Vec::new(),
            events: Vec::new(),
        }
    }

    #[test]
    fn what_the_stage_writes_the_agent_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot-record.json");
        std::fs::write(&path, record().to_json()).unwrap();
        let back = BootRecord::read(&path).unwrap();
        assert_eq!(back, record());
        assert_eq!(back.slot_id().unwrap(), SlotId::B);
    }

    #[test]
    fn a_live_boot_has_no_disk_slot_and_bad_files_name_their_path() {
        let live = BootRecord {
            slot: "LIVE".into(),
            ..record()
        };
        assert!(live.slot_id().unwrap_err().to_string().contains("'LIVE'"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let e = BootRecord::read(&missing).unwrap_err();
        assert!(e.to_string().contains("none.json"), "{e}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{\"slot\": 3}").unwrap();
        let e = BootRecord::read(&bad).unwrap_err();
        assert!(
            e.to_string().contains("bad.json is not a boot record"),
            "{e}"
        );
    }

    #[test]
    fn a_record_without_the_optional_lists_still_reads() {
        let v: BootRecord = serde_json::from_str(
            r#"{"slot":"USR-A","decision":"fallback","version":"1.0.0","measured":false,"pcr":8}"#,
        )
        .unwrap();
        assert!(v.events.is_empty() && v.refused.is_empty() && v.not_measured_reason.is_none());
    }
}
