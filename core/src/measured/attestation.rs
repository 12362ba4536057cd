//! Remote attestation evidence: what `droverctl attest` writes on a node
//! and what `drover attest-verify` checks on the verifier's side.
//!
//! The evidence holds a TPM quote over every SHA-256 PCR, signed by an
//! attestation key (AK) the node created under its TPM's endorsement
//! hierarchy, with the verifier's nonce inside; the PCR values it covers;
//! the firmware's TCG event log; and the boot stage's own events. The
//! verifier checks the signature, that the quote names the AK, that the
//! nonce is the one it asked for (no replay), that the PCR values are the
//! quoted ones, and then the same boot checks as `droverctl verify-boot`
//! ([`bootcheck::verify`]) against the published reference values instead
//! of anything the node says about itself.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ReferenceValue};
use crate::measured::bootcheck::{self, PcrValues, Verification};
use crate::measured::eventlog;
use crate::measured::measure::{self, Bank, Event};
use crate::measured::quote::{self, AkPublic, Quote};

/// The evidence format this code writes and reads.
pub const EVIDENCE_FORMAT: u32 = 1;

/// The bank quoted.
pub const QUOTED_BANK: Bank = Bank::Sha256;

/// Every PCR of [`QUOTED_BANK`] is quoted.
pub const QUOTED_PCRS: std::ops::Range<u32> = 0..24;

/// Most bytes of nonce a TPM takes as qualifying data.
pub const MAX_NONCE: usize = 64;

/// One PCR value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    /// The bank.
    pub bank: Bank,
    /// The index.
    pub pcr: u32,
    /// The value, hex.
    pub value: String,
}

/// The stage's record of this boot, as far as the verifier needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    /// The slot booted.
    pub slot: String,
    /// Its version, as the node reports it (not trusted; for messages).
    pub version: String,
    /// The events the stage extended into PCR 8.
    pub events: Vec<Event>,
}

/// `droverctl attest --out FILE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Evidence {
    /// [`EVIDENCE_FORMAT`].
    pub format: u32,
    /// The nonce the quote was asked with, hex.
    pub nonce: String,
    /// The AK's marshalled `TPMT_PUBLIC`, base64.
    pub ak_public: String,
    /// The quote's marshalled `TPMS_ATTEST`, base64.
    pub quote: String,
    /// Its marshalled `TPMT_SIGNATURE`, base64.
    pub signature: String,
    /// The PCR values read right after the quote.
    pub pcrs: Vec<PcrValue>,
    /// The firmware's TCG event log, base64 (absent: the node had none).
    pub firmware_log: Option<String>,
    /// The boot stage's events.
    pub stage: StageRecord,
}

/// The verifier's reference values.
#[derive(Clone, Debug)]
pub struct References<'a> {
    /// The published manifest's exact bytes (`manifest.json` of the
    /// build), whose digest the stage measures.
    pub manifest_bytes: &'a [u8],
    /// The boot stage's values (`boot_stage` of the ESP's `build.json`, or
    /// the stage entries of a manifest's reference values).
    pub stage: Option<&'a [ReferenceValue]>,
    /// The node's enrolled AK (`TPMT_PUBLIC`); without it, a quote from
    /// any TPM is accepted as far as the key goes.
    pub ak_public: Option<&'a [u8]>,
}

/// The verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Attestation {
    /// Everything checked and nothing differs.
    pub verified: bool,
    /// The AK's name, hex.
    pub ak_name: String,
    /// Whether the AK was compared with an enrolled one.
    pub ak_pinned: bool,
    /// The slot and version the node booted.
    pub slot: String,
    /// See [`StageRecord::version`].
    pub version: String,
    /// The boot checks against the quoted PCRs (absent when the quote
    /// itself did not hold).
    pub boot: Option<Verification>,
    /// What failed, one line each.
    pub problems: Vec<String>,
}

/// Decodes a base64 field of the evidence (`field` names it in the error).
pub fn from_b64(field: &str, s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("the evidence's {field} is not base64: {e}"))
}

/// Encodes bytes for the evidence.
pub fn to_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The PCR values as a map, or why they cannot be.
fn pcr_map(pcrs: &[PcrValue]) -> Result<PcrValues, String> {
    pcrs.iter()
        .map(|p| {
            hex::decode(&p.value)
                .map(|v| ((p.bank, p.pcr), v))
                .map_err(|e| format!("PCR {} ({}) is not hex: {e}", p.pcr, p.bank.name()))
        })
        .collect()
}

/// Checks evidence against the nonce the verifier chose and its reference
/// values.
pub fn verify(evidence: &Evidence, nonce: &[u8], refs: &References<'_>) -> Attestation {
    let mut out = Attestation {
        verified: false,
        ak_name: String::new(),
        ak_pinned: refs.ak_public.is_some(),
        slot: evidence.stage.slot.clone(),
        version: evidence.stage.version.clone(),
        boot: None,
        problems: Vec::new(),
    };
    match check_quote(evidence, nonce, refs, &mut out) {
        Err(p) => out.problems.push(p),
        Ok(pcrs) => {
            let v = check_boot(evidence, &pcrs, refs);
            match v {
                Err(p) => out.problems.push(p),
                Ok(v) => {
                    out.problems.extend(v.problems.iter().cloned());
                    out.boot = Some(v);
                }
            }
        }
    }
    out.verified = out.problems.is_empty() && out.boot.as_ref().is_some_and(|b| b.verified);
    out
}

/// The quote's own checks; on success, the PCR values it vouches for.
fn check_quote(
    evidence: &Evidence,
    nonce: &[u8],
    refs: &References<'_>,
    out: &mut Attestation,
) -> Result<PcrValues, String> {
    if evidence.format != EVIDENCE_FORMAT {
        return Err(format!(
            "evidence format {} is not supported (this build reads format {EVIDENCE_FORMAT})",
            evidence.format
        ));
    }
    let ak_bytes = from_b64("ak-public", &evidence.ak_public)?;
    let ak = AkPublic::parse(&ak_bytes)?;
    out.ak_name = hex::encode(&ak.name);
    if let Some(pinned) = refs.ak_public {
        let enrolled =
            AkPublic::parse(pinned).map_err(|e| format!("the enrolled attestation key: {e}"))?;
        if enrolled.name != ak.name {
            return Err(format!(
                "the quote was made with attestation key {}, not the enrolled {}: another TPM",
                hex::encode(&ak.name),
                hex::encode(&enrolled.name)
            ));
        }
    }
    let attest = from_b64("quote", &evidence.quote)?;
    let signature = quote::rsassa_signature(&from_b64("signature", &evidence.signature)?)?;
    if !ak.verify(&attest, &signature) {
        return Err("the quote's signature does not verify with the attestation key".into());
    }
    // The quote's `qualifiedSigner` is the AK's qualified name, which
    // hashes in its parents (the EK and the endorsement hierarchy); the
    // verifier knows the AK, not the EK, so the signature is what ties the
    // quote to the key.
    let q = Quote::parse(&attest)?;
    if q.extra_data != nonce {
        return Err(format!(
            "the quote carries nonce {}, not {}: a replayed or foreign quote",
            hex::encode(&q.extra_data),
            hex::encode(nonce)
        ));
    }
    let pcrs = pcr_map(&evidence.pcrs)?;
    let quoted: PcrValues = q
        .selection
        .iter()
        .flat_map(|(b, list)| list.iter().map(move |p| (*b, *p)))
        .filter_map(|k| pcrs.get(&k).map(|v| (k, v.clone())))
        .collect();
    match q.digest_of(&quoted) {
        Err((bank, pcr)) => Err(format!(
            "the evidence lacks PCR {pcr} ({}), which the quote covers",
            bank.name()
        )),
        Ok(d) if d != q.pcr_digest => Err(
            "the PCR values in the evidence are not the ones the TPM quoted (their digest differs)"
                .into(),
        ),
        Ok(_) => Ok(quoted),
    }
}

/// The boot checks against the quoted PCR values and the reference values.
fn check_boot(
    evidence: &Evidence,
    pcrs: &PcrValues,
    refs: &References<'_>,
) -> Result<Verification, String> {
    let manifest = Manifest::from_bytes(refs.manifest_bytes)
        .map_err(|e| format!("the reference manifest: {e}"))?;
    let slot = evidence.stage.slot.as_str();
    if slot != "USR-A" && slot != "USR-B" {
        return Err(format!(
            "the node reports booting slot '{slot}', which is no slot"
        ));
    }
    let root_hash = hex::decode(&manifest.verity.root_hash)
        .map_err(|e| format!("the reference manifest's root hash: {e}"))?;
    let digest: [u8; 32] = Sha256::digest(refs.manifest_bytes).into();
    let expected = measure::expected_events(
        slot,
        &digest,
        &manifest,
        &root_hash,
        &measure::slot_cmdline(&manifest, slot)
            .map_err(|e| format!("the reference manifest: {e}"))?,
    );
    let log = match &evidence.firmware_log {
        None => None,
        Some(s) => Some(
            eventlog::parse(&from_b64("firmware-log", s)?)
                .map_err(|e| format!("the firmware event log: {e}"))?,
        ),
    };
    Ok(bootcheck::verify(
        log.as_ref(),
        pcrs,
        &evidence.stage.events,
        &expected,
        refs.stage,
    ))
}
