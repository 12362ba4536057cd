//! What the boot stage hands on to the booted system: which slot it chose,
//! why, and what it measured (or that it measured nothing).
//!
//! The stage appends it to the slot's initramfs as
//! `/etc/drover/boot-record.json`; slot mode copies it to
//! `/run/drover/boot-record.json` for the agent and `droverctl`.

use drover_core::measure::{Bank, Event};
use serde::{Deserialize, Serialize};

/// Path of the record inside the slot initramfs.
pub const IN_INITRAMFS: &str = "etc/drover/boot-record.json";
/// Path of the record on the booted system.
pub const ON_SYSTEM: &str = "/run/drover/boot-record.json";

/// The record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The slot booted (`USR-A`/`USR-B`).
    pub slot: String,
    /// `candidate`, `fallback`.
    pub decision: String,
    /// OS version in the slot.
    pub version: String,
    /// Slots the stage refused in this boot, with the reason.
    pub refused: Vec<(String, String)>,
    /// Whether the events were extended into a TPM PCR.
    pub measured: bool,
    /// Why not, when they were not.
    pub not_measured_reason: Option<String>,
    /// The PCR extended ([`drover_core::measure::PCR`]).
    pub pcr: u32,
    /// The banks of it that were extended (empty when not measured).
    pub banks: Vec<Bank>,
    /// The events, in order; replay them with
    /// [`drover_core::measure::replay`].
    pub events: Vec<Event>,
}
