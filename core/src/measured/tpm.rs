//! Opening the node's TPM, through `tss-esapi` (feature `tpm`): one place
//! for finding the device, naming a TCTI and mapping PCR banks to TPM
//! algorithms, for the boot stage (which extends PCR 8) and the agent
//! (which reads PCRs and quotes).

use std::path::PathBuf;
use std::str::FromStr as _;

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
use tss_esapi::Context;

use crate::measured::measure::Bank;

/// The kernel's TPM devices, in the order they are tried: its resource
/// manager first (several users at once), then the raw device.
pub const DEVICES: [&str; 2] = ["/dev/tpmrm0", "/dev/tpm0"];

/// The TCTI name that means "the kernel's TPM" ([`device`]).
pub const AUTO: &str = "auto";

/// Opening the TPM failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TPM device.
    #[error("no TPM device ({} and {} do not exist)", DEVICES[0], DEVICES[1])]
    NoDevice,
    /// Not a TCTI name tpm2-tss knows.
    #[error("'{0}' is not a TCTI name (device:PATH, swtpm:host=H,port=P, or auto)")]
    BadTcti(String),
    /// tpm2-tss could not open it.
    #[error("opening the TPM ({what})")]
    Open {
        /// The TCTI.
        what: String,
        /// Why.
        source: tss_esapi::Error,
    },
}

/// The kernel's TPM device, if this machine has one.
pub fn device() -> Option<PathBuf> {
    DEVICES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The TCTI named `name`: [`AUTO`] for the kernel's TPM device, or a
/// tpm2-tss TCTI name (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
pub fn tcti(name: &str) -> Result<TctiNameConf, Error> {
    if name == AUTO {
        let dev = device().ok_or(Error::NoDevice)?;
        let conf = DeviceConfig::from_str(&dev.display().to_string())
            .map_err(|_| Error::BadTcti(dev.display().to_string()))?;
        return Ok(TctiNameConf::Device(conf));
    }
    TctiNameConf::from_str(name).map_err(|_| Error::BadTcti(name.to_string()))
}

/// Opens the TPM at `conf`.
pub fn open_conf(conf: TctiNameConf) -> Result<Context, Error> {
    // tpm2-tss writes its own warnings to stderr; the errors that matter
    // reach the caller anyway.
    std::env::set_var("TSS2_LOG", "all+none");
    let what = format!("{conf:?}");
    Context::new(conf).map_err(|source| Error::Open { what, source })
}

/// Opens the TPM named `name` (see [`tcti`]).
pub fn open(name: &str) -> Result<Context, Error> {
    open_conf(tcti(name)?)
}

/// The TPM algorithm of a PCR bank.
pub fn alg(bank: Bank) -> HashingAlgorithm {
    match bank {
        Bank::Sha1 => HashingAlgorithm::Sha1,
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
        Bank::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// The PCR bank of a TPM algorithm, if Drover computes it.
pub fn bank(alg: HashingAlgorithm) -> Option<Bank> {
    Bank::ALL.into_iter().find(|&b| self::alg(b) == alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banks_and_algorithms_map_both_ways() {
        for b in Bank::ALL {
            assert_eq!(bank(alg(b)), Some(b));
        }
        assert_eq!(bank(HashingAlgorithm::Sm3_256), None);
    }

    #[test]
    fn tcti_names_are_checked() {
        assert!(matches!(
            tcti("device:/dev/tpmrm0"),
            Ok(TctiNameConf::Device(_))
        ));
        assert!(matches!(
            tcti("swtpm:host=127.0.0.1,port=2321"),
            Ok(TctiNameConf::Swtpm(_))
        ));
        let e = tcti("no-such-tcti:x").unwrap_err().to_string();
        assert!(e.contains("'no-such-tcti:x' is not a TCTI name"), "{e}");
    }
}
