//! Measured boot: what the boot stage measures into the TPM, the firmware's
//! event log, the checks a node makes of its own boot, and remote
//! attestation. A wing of its own: the slot and verity code does not
//! depend on it.
//!
//! * [`measure`]: the events the boot stage extends into PCR 8, their
//!   replay per bank, and their prediction from a signed manifest.
//! * [`eventlog`]: the TCG (crypto-agile) firmware event log: parser and
//!   replay.
//! * [`bootcheck`]: a boot's verdict: the logs replayed against the TPM's
//!   PCRs, the events against the signed reference values.
//! * [`authenticode`]: Authenticode digests of PE files (systemd-boot, the
//!   stage kernel), as the firmware measures them.
//! * [`esp`]: the ESP read as FAT, and its boot stage checked against the
//!   signed manifest it carries.
//! * [`quote`]: TPM quotes checked without a TPM.
//! * [`attestation`]: the evidence a node sends and the verifier's checks.
//! * `floor` (feature `tpm`): the security-version floor in a TPM NV
//!   counter, raised by the agent, enforced by the stage.
//! * `tpm` (feature `tpm`): opening the TPM and mapping its algorithms to
//!   PCR banks, for the stage and the agent.

pub mod attestation;
pub mod authenticode;
pub mod bootcheck;
pub mod esp;
pub mod eventlog;
#[cfg(feature = "tpm")]
pub mod floor;
pub mod measure;
pub mod quote;
#[cfg(feature = "tpm")]
pub mod tpm;
