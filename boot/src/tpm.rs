//! Extending the boot stage's events into the TPM, through `tss-esapi`.
//!
//! Every PCR bank the TPM has allocated for [`measure::PCR`] is extended
//! with each event (a bank Drover cannot compute is an error, never skipped
//! in silence: a bank left alone could be extended to any value later).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use anyhow::{bail, Context as _};
use drover_core::measure::{self, Bank, Event};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Digest, DigestValues, PcrSelectionList, PcrSlot};
use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
use tss_esapi::Context;

/// The TPM character device: the kernel's resource manager if there is one.
pub fn device() -> Option<PathBuf> {
    ["/dev/tpmrm0", "/dev/tpm0"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn bank_of(alg: HashingAlgorithm) -> Option<Bank> {
    match alg {
        HashingAlgorithm::Sha1 => Some(Bank::Sha1),
        HashingAlgorithm::Sha256 => Some(Bank::Sha256),
        HashingAlgorithm::Sha384 => Some(Bank::Sha384),
        HashingAlgorithm::Sha512 => Some(Bank::Sha512),
        _ => None,
    }
}

fn alg_of(bank: Bank) -> HashingAlgorithm {
    match bank {
        Bank::Sha1 => HashingAlgorithm::Sha1,
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
        Bank::Sha512 => HashingAlgorithm::Sha512,
    }
}

fn pcr_slot() -> PcrSlot {
    const { assert!(measure::PCR == 8) };
    PcrSlot::Slot8
}

/// The TCTI configuration for a TPM character device.
pub fn device_tcti(dev: &Path) -> anyhow::Result<TctiNameConf> {
    let conf = DeviceConfig::from_str(&dev.display().to_string())
        .with_context(|| format!("TPM device {}", dev.display()))?;
    Ok(TctiNameConf::Device(conf))
}

fn open(tcti: TctiNameConf) -> anyhow::Result<Context> {
    // tpm2-tss logs warnings to stderr on its own; errors reach us anyway.
    std::env::set_var("TSS2_LOG", "all+none");
    let what = format!("{tcti:?}");
    Context::new(tcti).with_context(|| format!("opening the TPM ({what})"))
}

/// The banks allocated for the measured PCR.
fn allocated_banks(ctx: &mut Context) -> anyhow::Result<Vec<Bank>> {
    let (cap, _more) = ctx
        .get_capability(CapabilityType::AssignedPcr, 0, 16)
        .context("reading the TPM's PCR allocation")?;
    let CapabilityData::AssignedPcr(list) = cap else {
        bail!("the TPM answered a PCR allocation query with something else");
    };
    let mut banks = Vec::new();
    for sel in list.get_selections() {
        if !sel.is_selected(pcr_slot()) {
            continue;
        }
        match bank_of(sel.hashing_algorithm()) {
            Some(b) => banks.push(b),
            None => bail!(
                "the TPM has a {:?} bank for PCR {}, which Drover cannot extend",
                sel.hashing_algorithm(),
                measure::PCR
            ),
        }
    }
    if banks.is_empty() {
        bail!("the TPM has no bank allocated for PCR {}", measure::PCR);
    }
    Ok(banks)
}

/// Extends every allocated bank of PCR 8 of the TPM at `dev` with
/// `events`, in order, and returns the banks extended.
pub fn extend(dev: &Path, events: &[Event]) -> anyhow::Result<Vec<Bank>> {
    extend_tcti(device_tcti(dev)?, events)
}

/// [`extend`] through any TCTI (the tests use swtpm's socket).
pub fn extend_tcti(tcti: TctiNameConf, events: &[Event]) -> anyhow::Result<Vec<Bank>> {
    let mut ctx = open(tcti)?;
    let banks = allocated_banks(&mut ctx)?;
    // PCR 8 has an empty authorization value: a password session.
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    for e in events {
        let mut vals = DigestValues::new();
        for &b in &banks {
            vals.set(alg_of(b), Digest::try_from(b.hash(&e.data()))?);
        }
        ctx.pcr_extend(PcrHandle::Pcr8, vals)
            .with_context(|| format!("extending PCR {} with {}", measure::PCR, e.component))?;
    }
    ctx.clear_sessions();
    Ok(banks)
}

/// The current value of PCR 8 in each allocated bank.
pub fn read_tcti(tcti: TctiNameConf) -> anyhow::Result<Vec<(Bank, Vec<u8>)>> {
    let mut ctx = open(tcti)?;
    let banks = allocated_banks(&mut ctx)?;
    let mut out = Vec::new();
    for b in banks {
        let sel = PcrSelectionList::builder()
            .with_selection(alg_of(b), &[pcr_slot()])
            .build()?;
        let (_, _, digests) = ctx.pcr_read(sel).context("reading PCR 8")?;
        let d = digests
            .value()
            .first()
            .with_context(|| format!("the TPM returned no {} value for PCR 8", b.name()))?;
        out.push((b, d.to_vec()));
    }
    Ok(out)
}
