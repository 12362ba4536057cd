//! `drover attest-verify`: check a node's attestation evidence.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::manifest::{Manifest, ReferenceValue};
use drover_core::measured::attestation::{self, Evidence, References};
use drover_core::measured::bootcheck::STAGE_COMPONENTS;

/// Check evidence written by `droverctl attest` on a node.
///
/// Checks the quote's signature with the attestation key, that the key is
/// the node's enrolled one (--ak-public; a quote from another TPM is
/// refused), that the quote carries NONCE (a
/// replayed quote is refused), that the PCR values are the quoted ones,
/// that the firmware's event log and the boot stage's events replay to
/// them, and that every measured component is exactly the published
/// reference value: the slot's signed manifest (--manifest, the build's
/// manifest.json) and the boot stage on the ESP (--build-json of the build
/// that wrote the ESP, else the stage values in --manifest). Prints
/// VERIFIED or names what differs; exits 0 only when verified.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The evidence file.
    #[arg(value_name = "FILE")]
    pub evidence: PathBuf,
    /// The nonce this verifier gave the node, hex.
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
    /// The published manifest of the release the node should run (the
    /// build's manifest.json).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// build.json of the build that wrote the node's ESP: the boot stage's
    /// reference values (default: the stage values in --manifest).
    #[arg(long, value_name = "FILE")]
    pub build_json: Option<PathBuf>,
    /// The node's enrolled attestation key (`TPMT_PUBLIC`, as written by
    /// `droverctl attest --ak-public-out`). Without it any TPM's quote is
    /// accepted as far as the key goes, and that is said.
    #[arg(long, value_name = "FILE")]
    pub ak_public: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let evidence: Evidence = serde_json::from_slice(&read(&self.evidence)?)
            .with_context(|| format!("{} is not attestation evidence", self.evidence.display()))?;
        let nonce = hex::decode(self.nonce.trim())
            .with_context(|| format!("--nonce '{}' is not hex", self.nonce))?;
        let manifest_bytes = read(&self.manifest)?;
        let manifest = Manifest::from_bytes(&manifest_bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.manifest.display()))?;
        let stage: Vec<ReferenceValue> = match &self.build_json {
            Some(p) => {
                let b: crate::build::BuildReport = serde_json::from_slice(&read(p)?)
                    .with_context(|| format!("{} is not a build.json", p.display()))?;
                b.boot_stage
            }
            None => manifest
                .reference
                .iter()
                .filter(|r| STAGE_COMPONENTS.contains(&r.component.as_str()))
                .cloned()
                .collect(),
        };
        let ak = self.ak_public.as_ref().map(read).transpose()?;
        let verdict = attestation::verify(
            &evidence,
            &nonce,
            &References {
                manifest_bytes: &manifest_bytes,
                stage: Some(&stage),
                ak_public: ak.as_deref(),
            },
        );
        if self.json {
            println!("{}", serde_json::to_string_pretty(&verdict)?);
        } else {
            println!(
                "{}: {} {} (attestation key {}{})",
                if verdict.verified {
                    "VERIFIED"
                } else {
                    "NOT VERIFIED"
                },
                verdict.slot,
                verdict.version,
                &verdict.ak_name.get(..16).unwrap_or(&verdict.ak_name),
                if verdict.ak_pinned {
                    ", enrolled"
                } else {
                    ", NOT PINNED: pass --ak-public to tie the quote to this node's TPM"
                }
            );
            for p in &verdict.problems {
                println!("  {p}");
            }
        }
        if verdict.verified {
            Ok(())
        } else {
            anyhow::bail!("the evidence does not verify")
        }
    }
}
