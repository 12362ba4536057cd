//! The subcommands of `drover`.

pub mod attest_verify;
pub mod build;
pub mod channel;
pub mod config;
pub mod delta;
pub mod inspect;
pub mod keygen;
pub mod publish;
pub mod verity;

use std::path::Path;

/// Writes `contents` to `path` so that a crash never leaves half a file
/// that looks complete ([`drover_core::durable::replace`]). `mode` sets
/// the permission bits.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    Ok(drover_core::durable::replace(path, contents, mode)?)
}
