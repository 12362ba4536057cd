//! `droverctl attest`: evidence of this boot for a remote verifier.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::measured::attestation::{self, Evidence, PcrValue, StageRecord};

use crate::measured;

/// Quote this boot's PCRs for a remote verifier.
///
/// Creates the TPM attestation key on first use (under the endorsement
/// key; kept in DIR), quotes every SHA-256 PCR with the verifier's nonce,
/// and writes the quote, its signature, the PCR values, the firmware's
/// event log, the boot stage's events and the key's public part to FILE
/// (JSON). The verifier checks it with `drover attest-verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The verifier's nonce, hex (1 to 64 bytes; use a fresh one each time).
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
    /// Where to write the evidence (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the attestation key's public part (`TPMT_PUBLIC`), for
    /// the verifier to enroll and pass as `--ak-public`.
    #[arg(long, value_name = "FILE")]
    pub ak_public_out: Option<PathBuf>,
    /// Where the attestation key is kept.
    #[arg(long, default_value = "/var/lib/drover/attest", value_name = "DIR")]
    pub key_dir: PathBuf,
    /// The TPM, as a TCTI name: auto (/dev/tpmrm0, else /dev/tpm0),
    /// device:PATH or swtpm:host=HOST,port=PORT.
    #[arg(long, default_value = crate::tpm::DEFAULT_TCTI, value_name = "TCTI")]
    pub tcti: String,
    /// The boot record (the stage's events).
    #[arg(long, default_value = measured::BOOT_RECORD, value_name = "FILE")]
    pub boot_record: PathBuf,
    /// The firmware's event log.
    #[arg(long, default_value = measured::EVENT_LOG, value_name = "FILE")]
    pub event_log: PathBuf,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let nonce = hex::decode(self.nonce.trim())
            .with_context(|| format!("--nonce '{}' is not hex", self.nonce))?;
        let record = measured::boot_record(&self.boot_record)?;
        if !record.measured {
            anyhow::bail!(
                "this boot was not measured ({}): there is nothing to attest",
                record
                    .not_measured_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            );
        }
        let firmware_log = std::fs::read(&self.event_log).ok();
        let evidence = evidence(&self.tcti, &self.key_dir, &nonce, firmware_log, record)?;
        let text = serde_json::to_vec_pretty(&evidence)?;
        if self.out.as_os_str() == "-" {
            println!("{}", String::from_utf8_lossy(&text));
        } else {
            std::fs::write(&self.out, text)
                .with_context(|| format!("writing {}", self.out.display()))?;
            eprintln!("evidence written to {}", self.out.display());
        }
        if let Some(p) = &self.ak_public_out {
            let ak = attestation::from_b64("ak-public", &evidence.ak_public)
                .map_err(anyhow::Error::msg)?;
            std::fs::write(p, ak).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }
}

/// Builds the evidence: quote first, then the PCRs it covered.
pub fn evidence(
    tcti: &str,
    key_dir: &std::path::Path,
    nonce: &[u8],
    firmware_log: Option<Vec<u8>>,
    record: drover_core::boot_record::BootRecord,
) -> anyhow::Result<Evidence> {
    let mut ctx = crate::tpm::open(tcti)?;
    let (ak, ak_public) = crate::tpm::attestation_key(&mut ctx, key_dir)?;
    let quoted = crate::tpm::quote(&mut ctx, ak, nonce);
    let _ = ctx.flush_context(ak.into());
    let (quote, signature) = quoted?;
    let pcrs = crate::tpm::read_pcrs(&mut ctx, &[attestation::QUOTED_BANK])?
        .into_iter()
        .map(|((bank, pcr), v)| PcrValue {
            bank,
            pcr,
            value: hex::encode(v),
        })
        .collect();
    Ok(Evidence {
        format: attestation::EVIDENCE_FORMAT,
        nonce: hex::encode(nonce),
        ak_public: attestation::to_b64(&ak_public),
        quote: attestation::to_b64(&quote),
        signature: attestation::to_b64(&signature),
        pcrs,
        firmware_log: firmware_log.as_deref().map(attestation::to_b64),
        stage: StageRecord {
            slot: record.slot,
            version: record.version,
            events: record.events,
        },
    })
}
