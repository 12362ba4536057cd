//! This boot's measurements, checked on the node (`droverctl verify-boot`,
//! `drover-verify-boot.service`) and handed to a remote verifier
//! (`droverctl attest`).
//!
//! Inputs: the boot stage's record (`/run/drover/boot-record.json`), the
//! firmware's TCG event log as the kernel shows it, the PCRs read from the
//! TPM, the booted slot's signed manifest (the stage's events must be what
//! it predicts) and the signed manifest the ESP carries
//! (`/drover/manifest.sig`, written by the build that wrote the ESP; its
//! reference values describe the boot stage the firmware measured). The
//! ESP is read as a FAT file system straight from the disk, read-only,
//! without mounting it.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drover_core::boot_record::BootRecord;
use drover_core::keys::TrustedKeys;
use drover_core::manifest::ReferenceValue;
use drover_core::measured::bootcheck::{self, Verification};
use drover_core::measured::measure::{self, Bank, Event};
use drover_core::slot::layout;
use drover_core::slot_image::{self, Window};
use drover_core::table::PartitionTable;
use serde::{Deserialize, Serialize};

/// The stage's record of this boot.
pub const BOOT_RECORD: &str = drover_core::boot_record::ON_SYSTEM;
/// The firmware's event log.
pub const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// Where `drover-verify-boot.service` leaves its verdict for the agent.
pub const VERDICT: &str = drover_core::paths::VERIFY_BOOT_VERDICT;
/// The signed manifest on the ESP.
pub const ESP_MANIFEST: &str = drover_core::measured::esp::MANIFEST;

/// Where the inputs are.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The boot record.
    pub boot_record: PathBuf,
    /// The firmware's event log.
    pub event_log: PathBuf,
    /// The TPM (TCTI name).
    pub tcti: String,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            boot_record: BOOT_RECORD.into(),
            event_log: EVENT_LOG.into(),
            tcti: crate::tpm::DEFAULT_TCTI.into(),
        }
    }
}

/// The verdict on this boot: what `droverctl verify-boot --json` prints
/// and `drover-verify-boot.service` leaves at [`VERDICT`] for the agent,
/// which reads it back with this type ([`Report::read_verdict`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// The stage measured the boot into a TPM.
    pub measured: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_measured_reason: Option<String>,
    /// The slot booted.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// The checks, when the boot was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Verification>,
    /// Measured, and every check passed.
    pub verified: bool,
}

impl Report {
    /// The first reason this boot does not verify, for one-line reports
    /// (`droverctl status`, the policy's refusal); `None` when it verifies.
    pub fn first_problem(&self) -> Option<String> {
        if self.verified {
            return None;
        }
        match &self.checks {
            _ if !self.measured => Some(format!(
                "not measured: {}",
                self.not_measured_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            )),
            Some(v) => v.problems.first().cloned(),
            None => None,
        }
    }

    /// The verdict `drover-verify-boot.service` left at `path` (normally
    /// [`VERDICT`]), if it has run and left one that parses.
    pub fn read_verdict(path: &Path) -> Option<Report> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Reads the boot record.
pub fn boot_record(path: &Path) -> anyhow::Result<BootRecord> {
    Ok(BootRecord::read(path)?)
}

/// Where the ESP of `disk` is.
fn esp_range(disk: &Path, f: &File) -> anyhow::Result<(u64, u64)> {
    let mut r = f;
    let table = PartitionTable::read(&mut r, disk)?;
    table.byte_range(layout::ESP.0).with_context(|| {
        format!(
            "{} has no ESP (partition {})",
            disk.display(),
            layout::ESP.0
        )
    })
}

/// The boot stage's reference values from the ESP's signed manifest.
pub fn stage_reference(
    disk: &Path,
    f: &File,
    trusted: &TrustedKeys,
) -> anyhow::Result<Vec<ReferenceValue>> {
    let (start, len) = esp_range(disk, f)?;
    drover_core::measured::esp::stage_reference(f, start, len, trusted)
        .map_err(|e| anyhow::anyhow!("the ESP of {}: {e}", disk.display()))
}

/// What the booted slot's signed manifest says the stage measured.
fn expected(
    record: &BootRecord,
    disk: &Path,
    f: &File,
    trusted: &TrustedKeys,
) -> anyhow::Result<Vec<Event>> {
    let booted = record.slot_id()?;
    let slots = crate::agent::slots_of(disk, f, booted)?;
    let st = slots.get(booted);
    let w = Window {
        file: f,
        offset: st.offset,
    };
    let v = slot_image::open_verified(&w, st.size, disk, trusted)
        .with_context(|| format!("reading the signed manifest of {}", booted.label()))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    Ok(measure::expected_events(
        booted.label(),
        &v.verified.digest,
        &v.verified.manifest,
        &v.root_hash,
        cmdline.trim(),
    ))
}

/// Checks this boot.
pub fn check(src: &Sources, trusted: &TrustedKeys) -> anyhow::Result<Report> {
    let record = boot_record(&src.boot_record)?;
    let mut report = Report {
        measured: record.measured,
        not_measured_reason: record.not_measured_reason.clone(),
        slot: record.slot.clone(),
        version: record.version.clone(),
        checks: None,
        verified: false,
    };
    if !record.measured {
        return Ok(report);
    }
    let disk = crate::node::find_disk()?;
    let f = File::open(&disk).with_context(|| format!("opening {}", disk.display()))?;
    let expected = expected(&record, &disk, &f, trusted)?;
    let log = match std::fs::read(&src.event_log) {
        Ok(b) => Some(
            drover_core::measured::eventlog::parse(&b)
                .with_context(|| format!("parsing {}", src.event_log.display()))?,
        ),
        Err(_) => None,
    };
    // Without a signed stage manifest on the ESP the check says so (an ESP
    // from before reference values, or one that was tampered with).
    let stage = stage_reference(&disk, &f, trusted);
    let mut ctx = crate::tpm::open(&src.tcti)?;
    let pcrs = crate::tpm::read_pcrs(&mut ctx, &Bank::ALL)?;
    let mut v = bootcheck::verify(
        log.as_ref(),
        &pcrs,
        &record.events,
        &expected,
        stage.as_ref().ok().map(Vec::as_slice),
    );
    if let Err(e) = &stage {
        v.problems.push(format!("{e:#}"));
    }
    report.verified = v.verified;
    report.checks = Some(v);
    Ok(report)
}
