//! `droverctl verify-boot`: was this boot measured as it should have been?

use std::path::PathBuf;

use drover_core::keys::TrustedKeys;

use crate::measured::{self, Report, Sources};

/// Check this boot's measurements: replay the firmware's TCG event log and
/// the boot stage's events, compare them with the PCRs read from the TPM,
/// compare the stage's events with the booted slot's signed manifest and
/// the firmware's measurements of the boot stage (systemd-boot, stage
/// kernel, its command line, stage initramfs) with the signed manifest on
/// the ESP.
///
/// Names every PCR and every component that does not match. Exits 0 only
/// when the boot verifies; a boot that was not measured (no TPM) does not.
/// With `--policy`, applies the agent's `require-measured-boot` instead:
/// exits 0 unless it is set and the boot does not verify (this is how
/// `drover-verify-boot.service` runs at every boot).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fail only when the agent's config sets `require-measured-boot`;
    /// write the verdict to /run/drover/verify-boot.json for the agent.
    #[arg(long)]
    pub policy: bool,
    /// The boot record (the stage's events).
    #[arg(long, default_value = measured::BOOT_RECORD, value_name = "FILE")]
    pub boot_record: PathBuf,
    /// The firmware's event log.
    #[arg(long, default_value = measured::EVENT_LOG, value_name = "FILE")]
    pub event_log: PathBuf,
    /// The TPM, as a TCTI name: auto (/dev/tpmrm0, else /dev/tpm0),
    /// device:PATH or swtpm:host=HOST,port=PORT.
    #[arg(long, default_value = crate::tpm::DEFAULT_TCTI, value_name = "TCTI")]
    pub tcti: String,
    /// The agent's config, for the trusted keys.
    #[arg(long, default_value = crate::config::DEFAULTS, value_name = "FILE")]
    pub config: PathBuf,
    /// Its drop-in directory.
    #[arg(long, default_value = crate::config::DROP_INS, value_name = "DIR")]
    pub config_dir: PathBuf,
}

fn print_text(report: &Report) {
    if !report.measured {
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
        println!(
            "{}: {} {} — {} of {} PCR values match their logs, {} of {} measured components match their signed reference values",
            if v.verified { "VERIFIED" } else { "NOT VERIFIED" },
            report.slot,
            report.version,
            v.pcrs.iter().filter(|p| p.ok).count(),
            v.pcrs.len(),
            v.events.iter().filter(|e| e.ok).count(),
            v.events.len()
        );
        for p in &v.problems {
            println!("  {p}");
        }
    }
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let cfg = crate::config::Config::load_from(&self.config, &self.config_dir)?;
        let trusted = TrustedKeys::load(&cfg.trusted_keys)?;
        let src = Sources {
            boot_record: self.boot_record.clone(),
            event_log: self.event_log.clone(),
            tcti: self.tcti.clone(),
        };
        let checked = measured::check(&src, &trusted);
        if let Ok(report) = &checked {
            if self.json {
                println!("{}", serde_json::to_string_pretty(report)?);
            } else {
                print_text(report);
            }
        }
        if self.policy {
            if let Ok(report) = &checked {
                let _ = std::fs::create_dir_all(drover_core::paths::RUN_DIR);
                std::fs::write(measured::VERDICT, serde_json::to_vec_pretty(report)?)?;
            }
            return match policy(checked.as_ref(), cfg.require_measured_boot) {
                Ok(None) => Ok(()),
                Ok(Some(warning)) => {
                    eprintln!("warning: {warning}");
                    Ok(())
                }
                Err(reason) => Err(anyhow::anyhow!(reason)),
            };
        }
        let report = checked?;
        if report.verified {
            Ok(())
        } else if !report.measured {
            anyhow::bail!("the boot was not measured")
        } else {
            anyhow::bail!("the boot does not verify")
        }
    }
}

/// What `--policy` decides about a boot: it counts (`Ok(None)`), it counts
/// with a warning (`Ok(Some)`: it does not verify, but
/// `require-measured-boot` is not set), or it fails its boot check
/// (`Err`, the reason). A boot that was not measured, or whose
/// measurements could not be read, does not verify.
pub fn policy(
    checked: Result<&Report, &anyhow::Error>,
    required: bool,
) -> Result<Option<String>, String> {
    let why = match checked {
        Ok(r) if r.verified => return Ok(None),
        Ok(r) => format!(
            "this boot does not verify: {}",
            r.first_problem().unwrap_or_default()
        ),
        Err(e) => format!("this boot's measurements could not be checked: {e:#}"),
    };
    if required {
        Err(format!("require-measured-boot is set and {why}"))
    } else {
        Ok(Some(format!(
            "{why}; require-measured-boot is not set, so the boot counts anyway"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(measured: bool, verified: bool) -> Report {
        Report {
            measured,
            not_measured_reason: (!measured).then(|| "no TPM device".to_string()),
            slot: "USR-A".into(),
            version: "1.0.0".into(),
            checks: None,
            verified,
        }
    }

    #[test]
    fn secure_sites_refuse_what_does_not_verify_and_others_are_warned() {
        assert_eq!(policy(Ok(&report(true, true)), true), Ok(None));
        // Without a TPM: refused under the policy, a warning without it.
        let e = policy(Ok(&report(false, false)), true).unwrap_err();
        assert!(e.contains("not measured: no TPM device"), "{e}");
        let w = policy(Ok(&report(false, false)), false).unwrap().unwrap();
        assert!(w.contains("counts anyway"), "{w}");
        // Measurements that cannot be read count as not verified.
        let err = anyhow::anyhow!("opening the TPM");
        assert!(policy(Err(&err), true)
            .unwrap_err()
            .contains("opening the TPM"));
        assert!(policy(Err(&err), false).unwrap().is_some());
    }

    #[test]
    fn the_verdict_the_unit_writes_is_the_verdict_the_agent_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verify-boot.json");
        let mut r = report(true, false);
        r.checks = Some(drover_core::measured::bootcheck::Verification {
            verified: false,
            pcrs: Vec::new(),
            events: Vec::new(),
            problems: vec!["stage-initramfs (PCR 9): changed".into(), "second".into()],
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        let back = Report::read_verdict(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.first_problem().as_deref(),
            Some("stage-initramfs (PCR 9): changed")
        );
        assert_eq!(report(true, true).first_problem(), None);
        assert_eq!(
            report(false, false).first_problem().as_deref(),
            Some("not measured: no TPM device")
        );
        std::fs::write(&path, b"{}").unwrap();
        assert_eq!(Report::read_verdict(&path), None);
    }
}
