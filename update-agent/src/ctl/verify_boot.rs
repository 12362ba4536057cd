//! `droverctl verify-boot`: was this boot measured as it should have been?

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drover_core::bootcheck::{self, PcrValues, Verification};
use drover_core::eventlog;
use drover_core::keys::TrustedKeys;
use drover_core::measure::{self, Bank, Event};
use drover_core::slot_image::{self, Window};
use serde::Serialize;

/// Check this boot's measurements: replay the firmware's TCG event log and
/// the boot stage's events, compare them with the PCRs the TPM holds, and
/// compare the stage's events with the booted slot's signed manifest.
///
/// Names every PCR and every event that does not match. Exits 0 only when
/// the boot verifies; a boot that was not measured (no TPM) does not.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The boot record (the stage's events).
    #[arg(
        long,
        default_value = "/run/drover/boot-record.json",
        value_name = "FILE"
    )]
    pub boot_record: PathBuf,
    /// The firmware's event log.
    #[arg(
        long,
        default_value = "/sys/kernel/security/tpm0/binary_bios_measurements",
        value_name = "FILE"
    )]
    pub event_log: PathBuf,
    /// Where the kernel shows the TPM's PCRs (`pcr-<bank>/<n>`).
    #[arg(long, default_value = "/sys/class/tpm/tpm0", value_name = "DIR")]
    pub tpm: PathBuf,
    /// The agent's config, for the trusted keys.
    #[arg(long, default_value = crate::config::DEFAULTS, value_name = "FILE")]
    pub config: PathBuf,
    /// Its drop-in directory.
    #[arg(long, default_value = crate::config::DROP_INS, value_name = "DIR")]
    pub config_dir: PathBuf,
}

/// The JSON output.
#[derive(Debug, Serialize)]
struct Report {
    measured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_measured_reason: Option<String>,
    slot: String,
    version: String,
    /// The checks, when the boot was measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Verification>,
    verified: bool,
}

/// PCR values the kernel shows in sysfs (`pcr-sha256/8`, …).
pub fn read_pcrs(dir: &Path) -> PcrValues {
    let mut out = BTreeMap::new();
    for bank in Bank::ALL {
        let d = dir.join(format!("pcr-{}", bank.name()));
        for pcr in 0..24u32 {
            if let Ok(text) = std::fs::read_to_string(d.join(pcr.to_string())) {
                if let Ok(v) = hex::decode(text.trim().to_lowercase()) {
                    out.insert((bank, pcr), v);
                }
            }
        }
    }
    out
}

/// What the booted slot's signed manifest says the stage measured.
fn expected(record: &serde_json::Value, trusted: &TrustedKeys) -> anyhow::Result<Vec<Event>> {
    let booted: drover_core::SlotId = record["slot"]
        .as_str()
        .context("the boot record names no slot")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let disk = crate::node::find_disk()?;
    let f = File::open(&disk).with_context(|| format!("opening {}", disk.display()))?;
    let slots = crate::agent::slots_of(&disk, &f, booted)?;
    let st = slots.get(booted);
    let w = Window {
        file: &f,
        offset: st.offset,
    };
    let v = slot_image::open_verified(&w, st.size, &disk, trusted)
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

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let text = std::fs::read(&self.boot_record).with_context(|| {
            format!(
                "reading the boot record {} (was this system started by drover-boot?)",
                self.boot_record.display()
            )
        })?;
        let record: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a boot record", self.boot_record.display()))?;
        let measured = record["measured"].as_bool().unwrap_or(false);
        let mut report = Report {
            measured,
            not_measured_reason: record["not_measured_reason"].as_str().map(String::from),
            slot: record["slot"].as_str().unwrap_or("").to_string(),
            version: record["version"].as_str().unwrap_or("").to_string(),
            checks: None,
            verified: false,
        };
        if measured {
            let recorded: Vec<Event> = serde_json::from_value(record["events"].clone())
                .context("the boot record's events")?;
            let cfg = crate::config::Config::load_from(&self.config, &self.config_dir)?;
            let trusted = TrustedKeys::load(&cfg.trusted_keys)?;
            let expected = expected(&record, &trusted)?;
            let log = match std::fs::read(&self.event_log) {
                Ok(b) => Some(
                    eventlog::parse(&b)
                        .with_context(|| format!("parsing {}", self.event_log.display()))?,
                ),
                Err(_) => None,
            };
            let v = bootcheck::verify(log.as_ref(), &read_pcrs(&self.tpm), &recorded, &expected);
            report.verified = v.verified;
            report.checks = Some(v);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if !measured {
            println!(
                "NOT MEASURED: {} {} booted without measurement ({})",
                report.slot,
                report.version,
                report
                    .not_measured_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            );
        } else if let Some(v) = &report.checks {
            let ok_pcrs: Vec<String> = v
                .pcrs
                .iter()
                .filter(|p| p.ok)
                .map(|p| format!("{}:{}", p.bank.name(), p.pcr))
                .collect();
            println!(
                "{}: {} {} — {} PCR values match their logs, {} of {} Drover events match the signed manifest",
                if v.verified { "VERIFIED" } else { "NOT VERIFIED" },
                report.slot,
                report.version,
                ok_pcrs.len(),
                v.events.iter().filter(|e| e.ok).count(),
                v.events.len()
            );
            for p in &v.problems {
                println!("  {p}");
            }
        }
        if report.verified {
            Ok(())
        } else if !measured {
            anyhow::bail!("the boot was not measured")
        } else {
            anyhow::bail!("the boot does not verify")
        }
    }
}
