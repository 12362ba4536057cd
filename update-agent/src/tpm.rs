//! The node's TPM, through `tss-esapi`: PCR values for `verify-boot`, and
//! the attestation key and quotes for `attest`.
//!
//! The attestation key (AK) is an RSA-2048 restricted signing key
//! (RSASSA, SHA-256) created under the endorsement key (EK, the TCG default
//! RSA template, re-derived by the TPM on every use) the first time it is
//! needed. Its public part and its private part — wrapped by the TPM, of no
//! use without this TPM — are kept in the agent's state directory, so the
//! key is the same until the TPM is cleared or the files go.

use std::path::Path;

use anyhow::{bail, Context as _};
use drover_core::measured::bootcheck::PcrValues;
use drover_core::measured::measure::Bank;
use tss_esapi::abstraction::{ak, ek, pcr, DefaultKey};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::structures::{
    Data, HashScheme, PcrSelectionList, PcrSlot, Private, Public, SignatureScheme,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::Context;

/// The default TCTI: the kernel's TPM device, its resource manager first
/// ([`drover_core::measured::tpm::DEVICES`]), as the boot stage finds it.
pub const DEFAULT_TCTI: &str = drover_core::measured::tpm::AUTO;

/// File names of the AK in the state directory.
const AK_PUBLIC: &str = "ak.pub";
const AK_PRIVATE: &str = "ak.priv";

/// Opens the TPM named by a TCTI string (`auto`, `device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`).
pub fn open(tcti: &str) -> anyhow::Result<Context> {
    Ok(drover_core::measured::tpm::open(tcti)?)
}

fn all_pcrs() -> Vec<PcrSlot> {
    (0..24)
        .map(|i| PcrSlot::try_from(1u32 << i).expect("PCRs 0-23 exist"))
        .collect()
}

/// Every PCR (0–23) of the given banks; a bank the TPM has not allocated
/// is left out.
pub fn read_pcrs(ctx: &mut Context, banks: &[Bank]) -> anyhow::Result<PcrValues> {
    let mut out = PcrValues::new();
    for &bank in banks {
        let alg = drover_core::measured::tpm::alg(bank);
        let mut remaining = PcrSelectionList::builder()
            .with_selection(alg, &all_pcrs())
            .build()?;
        // TPM2_PCR_Read answers at most eight PCRs at a time, and none of
        // a bank the TPM has not allocated: read until the selection is
        // empty or an answer is. (tss-esapi's `pcr::read_all` loops
        // forever on an unallocated bank: a TPM set up with SHA-256 only,
        // as swtpm_setup and many machines do, hung verify-boot.)
        while !remaining.is_empty() {
            let (_, read, digests) = ctx
                .pcr_read(remaining.clone())
                .with_context(|| format!("reading the {} PCRs", bank.name()))?;
            // An unallocated bank comes back as no selection or as one
            // with no PCR in it.
            if read.get_selections().iter().all(|sel| sel.is_empty()) {
                break;
            }
            let mut data = pcr::PcrData::new();
            data.add(&read, &digests)
                .with_context(|| format!("the {} PCR values", bank.name()))?;
            if let Some(values) = data.pcr_bank(alg) {
                for (i, slot) in all_pcrs().into_iter().enumerate() {
                    if let Some(d) = values.get_digest(slot) {
                        out.insert((bank, i as u32), d.to_vec());
                    }
                }
            }
            remaining
                .subtract(&read)
                .with_context(|| format!("the {} PCRs left to read", bank.name()))?;
        }
    }
    Ok(out)
}

/// The AK, loaded: its handle and marshalled `TPMT_PUBLIC`. Created under
/// the EK and stored in `dir` the first time.
pub fn attestation_key(ctx: &mut Context, dir: &Path) -> anyhow::Result<(KeyHandle, Vec<u8>)> {
    let ek = ek::create_ek_object(ctx, AsymmetricAlgorithm::Rsa, DefaultKey)
        .context("creating the endorsement key from the default template")?;
    let result = load_or_create(ctx, ek, dir);
    let _ = ctx.flush_context(ek.into());
    result
}

fn load_or_create(
    ctx: &mut Context,
    ek: KeyHandle,
    dir: &Path,
) -> anyhow::Result<(KeyHandle, Vec<u8>)> {
    let (pub_path, priv_path) = (dir.join(AK_PUBLIC), dir.join(AK_PRIVATE));
    let (public, private) = if pub_path.exists() && priv_path.exists() {
        let public = Public::unmarshall(&std::fs::read(&pub_path)?)
            .with_context(|| format!("{} is not a TPM public area", pub_path.display()))?;
        let private = Private::try_from(std::fs::read(&priv_path)?)
            .with_context(|| format!("{} is not a TPM private area", priv_path.display()))?;
        (public, private)
    } else {
        let created = ak::create_ak(
            ctx,
            ek,
            HashingAlgorithm::Sha256,
            SignatureSchemeAlgorithm::RsaSsa,
            None,
            DefaultKey,
        )
        .context("creating the attestation key under the endorsement key")?;
        // Wrapped by the TPM (of no use without it), but nobody else's.
        drover_core::durable::replace(&priv_path, created.out_private.value(), 0o600)?;
        crate::state::write_durably(&pub_path, &created.out_public.marshall()?)?;
        tracing::info!(dir = %dir.display(), "created the TPM attestation key");
        (created.out_public, created.out_private)
    };
    let handle = ak::load_ak(ctx, ek, None, private, public).with_context(|| {
        format!(
            "loading the attestation key from {} (was the TPM cleared? remove the files to create a new one)",
            dir.display()
        )
    })?;
    // The public area as the TPM holds it (its hash is the key's name).
    let (public, _, _) = ctx.read_public(handle)?;
    Ok((handle, public.marshall()?))
}

/// A quote of every SHA-256 PCR with `nonce` as qualifying data, signed
/// by the AK: the marshalled `TPMS_ATTEST` and `TPMT_SIGNATURE`.
pub fn quote(ctx: &mut Context, ak: KeyHandle, nonce: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if nonce.is_empty() || nonce.len() > drover_core::measured::attestation::MAX_NONCE {
        bail!(
            "the nonce is {} bytes; a TPM takes 1 to {}",
            nonce.len(),
            drover_core::measured::attestation::MAX_NONCE
        );
    }
    let sel = PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &all_pcrs())
        .build()?;
    let (attest, signature) = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.quote(
                ak,
                Data::try_from(nonce.to_vec())?,
                SignatureScheme::RsaSsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                },
                sel,
            )
        })
        .context("quoting the PCRs")?;
    Ok((attest.marshall()?, signature.marshall()?))
}
