//! The security-version floor in the TPM: the lowest security version this
//! node may boot, kept where an attacker holding only the disk cannot
//! lower it.
//!
//! Two NV indices in the owner hierarchy: [`COUNTER`], a TPM monotonic
//! counter (`TPM_NT_COUNTER`: it only goes up, by one per increment), and
//! [`BASE`], an ordinary 8-byte index written once, when the counter is
//! made, with the counter's first value (a new counter starts at the
//! highest value any counter of this TPM ever had, not at zero). The floor
//! is `counter − base`. The agent raises it once a slot is marked
//! successful ([`raise`]); the boot stage refuses a slot below it
//! ([`read`], [`allows`]). Both indices are readable without
//! authorization and written with the owner's (empty on a node whose
//! owner hierarchy was not taken). What the floor stops is a disk changed
//! offline (an older signed slot written and given priority): nothing on
//! the disk can lower it, and there is deliberately no command-line
//! switch, since the ESP's loader entry is on the disk too. The operator's
//! override for a deliberate downgrade is on the running node, as root
//! with the owner's authorization: [`reset`] (`droverctl security-floor
//! --reset`) removes the floor; the next slot marked successful sets it
//! again to its own security version.

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
use tss_esapi::Context;

/// The counter's NV index (owner range, Drover's block 0x01D00Dxx).
pub const COUNTER: u32 = 0x01D0_0D01;
/// The base's NV index.
pub const BASE: u32 = 0x01D0_0D02;

/// Whether a slot of `security_version` may boot under `floor` (none: no
/// floor was ever set on this node's TPM, or it has no TPM). The error
/// says why not.
pub fn allows(security_version: u64, floor: Option<u64>) -> Result<(), String> {
    match floor {
        Some(f) if security_version < f => Err(format!(
            "security version {security_version} is below this node's floor {f}, kept in its TPM (a deliberate downgrade: `droverctl security-floor --reset` on the running node)"
        )),
        _ => Ok(()),
    }
}

/// The index's handle, or None when the TPM has no such index (any
/// error of the lookup counts as that: the index is not usable).
fn handle(ctx: &mut Context, index: u32) -> tss_esapi::Result<Option<NvIndexHandle>> {
    let tpm = NvIndexTpmHandle::new(index)?;
    Ok(ctx
        .execute_without_session(|c| c.tr_from_tpm_public(tpm.into()))
        .ok()
        .map(NvIndexHandle::from))
}

fn read_u64(ctx: &mut Context, h: NvIndexHandle) -> tss_esapi::Result<u64> {
    let b = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_read(NvAuth::NvIndex(h), h, 8, 0)
    })?;
    let mut v = [0u8; 8];
    v.copy_from_slice(&b.value()[..8.min(b.value().len())]);
    Ok(u64::from_be_bytes(v))
}

/// The floor, when this TPM holds one.
pub fn read(ctx: &mut Context) -> tss_esapi::Result<Option<u64>> {
    let (Some(c), Some(b)) = (handle(ctx, COUNTER)?, handle(ctx, BASE)?) else {
        return Ok(None);
    };
    let counter = read_u64(ctx, c)?;
    let base = read_u64(ctx, b)?;
    Ok(Some(counter.saturating_sub(base)))
}

fn define(ctx: &mut Context, index: u32, kind: NvIndexType) -> tss_esapi::Result<NvIndexHandle> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(kind)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()?;
    let public = NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index)?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_define_space(Provision::Owner, None, public)
    })
}

fn increment(ctx: &mut Context, h: NvIndexHandle) -> tss_esapi::Result<()> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_increment(NvAuth::Owner, h)
    })
}

/// Raises the floor to `security_version` (it never goes down: a lower
/// one changes nothing), making the indices on first use. Returns the
/// floor after.
pub fn raise(ctx: &mut Context, security_version: u64) -> tss_esapi::Result<u64> {
    // Each step of the first use may have been cut short before: a counter
    // never incremented, a base defined but never written.
    let counter = match handle(ctx, COUNTER)? {
        Some(c) => c,
        None => define(ctx, COUNTER, NvIndexType::Counter)?,
    };
    let now = match read_u64(ctx, counter) {
        Ok(v) => v,
        Err(_) => {
            increment(ctx, counter)?;
            read_u64(ctx, counter)?
        }
    };
    let base = match handle(ctx, BASE)? {
        Some(b) => b,
        None => define(ctx, BASE, NvIndexType::Ordinary)?,
    };
    if read_u64(ctx, base).is_err() {
        let data = MaxNvBuffer::try_from(now.to_be_bytes().to_vec())?;
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_write(NvAuth::Owner, base, data, 0)
        })?;
    }
    loop {
        let floor = read(ctx)?.unwrap_or(0);
        if floor >= security_version {
            return Ok(floor);
        }
        increment(ctx, counter)?;
    }
}

/// Removes the floor (both indices), with the owner's authorization; true
/// when there was one.
pub fn reset(ctx: &mut Context) -> tss_esapi::Result<bool> {
    let mut any = false;
    for index in [COUNTER, BASE] {
        if let Some(h) = handle(ctx, index)? {
            ctx.execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_undefine_space(Provision::Owner, h)
            })?;
            any = true;
        }
    }
    Ok(any)
}
