//! Extending the boot stage's events into the TPM, through `tss-esapi`
//! (opened with [`drover_core::measured::tpm`], as the agent opens it).
//!
//! Every PCR bank the TPM has allocated for [`measure::PCR`] is extended
//! with each event (a bank Drover cannot compute is an error, never skipped
//! in silence: a bank left alone could be extended to any value later).

use std::path::Path;

use anyhow::{bail, Context as _};
use drover_core::measured::measure::{self, Bank, Event};
use drover_core::measured::tpm;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Digest, DigestValues, PcrSelectionList, PcrSlot};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

fn pcr_slot() -> PcrSlot {
    const { assert!(measure::PCR == 8) };
    PcrSlot::Slot8
}

/// The TCTI configuration for a TPM character device.
pub fn device_tcti(dev: &Path) -> anyhow::Result<TctiNameConf> {
    Ok(tpm::tcti(&format!("device:{}", dev.display()))?)
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
        match tpm::bank(sel.hashing_algorithm()) {
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
    let mut ctx = tpm::open_conf(tcti)?;
    let banks = allocated_banks(&mut ctx)?;
    // PCR 8 has an empty authorization value: a password session.
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    for e in events {
        let mut vals = DigestValues::new();
        for &b in &banks {
            vals.set(tpm::alg(b), Digest::try_from(b.hash(&e.data()))?);
        }
        ctx.pcr_extend(PcrHandle::Pcr8, vals)
            .with_context(|| format!("extending PCR {} with {}", measure::PCR, e.component))?;
    }
    ctx.clear_sessions();
    Ok(banks)
}

/// The current value of PCR 8 in each allocated bank.
pub fn read_tcti(tcti: TctiNameConf) -> anyhow::Result<Vec<(Bank, Vec<u8>)>> {
    let mut ctx = tpm::open_conf(tcti)?;
    let banks = allocated_banks(&mut ctx)?;
    let mut out = Vec::new();
    for b in banks {
        let sel = PcrSelectionList::builder()
            .with_selection(tpm::alg(b), &[pcr_slot()])
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

/// The security-version floor the TPM at `dev` holds
/// ([`drover_core::measured::floor`]), if any.
pub fn floor(dev: &Path) -> anyhow::Result<Option<u64>> {
    let mut ctx = tpm::open_conf(device_tcti(dev)?)?;
    drover_core::measured::floor::read(&mut ctx).context("reading the floor's NV indices")
}
