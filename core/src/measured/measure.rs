//! What the boot stage measures into the TPM, and how anyone replays it.
//!
//! The stage extends one PCR, [`PCR`], with one event for each thing it
//! chose: the slot, the manifest digest, the root hash, the slot kernel,
//! its initramfs and the command line. Each event is a short ASCII string,
//! `drover:<component>:<value>` (see [`Event::data`]); what goes into a PCR
//! bank is that string hashed with the bank's algorithm. So a verifier that
//! holds the event list (the boot record on the node, or an attestation
//! quote's log) replays every bank with [`replay`], and one that holds only
//! the signed manifest can predict the value with [`expected_events`].
//!
//! Why PCR 8: the firmware owns 0–7; in this boot chain the Linux EFI stub
//! measures the stage initramfs into 9, systemd-boot measures its command
//! line into 12, systemd uses 11, 13 and 15, IMA 10. PCR 8 is by convention
//! the boot loader's "what I decided to boot" register (GRUB's commands and
//! kernel command line) and nothing else in Drover's chain extends it, so
//! its value is exactly the replay of Drover's events from zero, and it
//! cannot be reset without a reboot (unlike PCR 16 or 23).

use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// The PCR the stage extends.
pub const PCR: u32 = 8;

/// A PCR bank's hash algorithm Drover can extend and replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bank {
    /// SHA-1, still allocated by many TPMs; extended so that it cannot be
    /// left at a value an attacker chooses.
    Sha1,
    /// SHA-256, the bank every TPM 2.0 has.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Bank {
    /// Every bank Drover knows, in the order it extends them.
    pub const ALL: [Bank; 4] = [Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512];

    /// The digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            Bank::Sha1 => 20,
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
            Bank::Sha512 => 64,
        }
    }

    /// `data` hashed with this bank's algorithm.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Bank::Sha1 => Sha1::digest(data).to_vec(),
            Bank::Sha256 => Sha256::digest(data).to_vec(),
            Bank::Sha384 => Sha384::digest(data).to_vec(),
            Bank::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// What a TPM's `PCR_Extend` makes of `pcr` with `digest`:
    /// the bank's hash of `pcr || digest`.
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(pcr.len() + digest.len());
        buf.extend_from_slice(pcr);
        buf.extend_from_slice(digest);
        self.hash(&buf)
    }

    /// The TPM 2.0 algorithm id (`TPM_ALG_SHA256` = 0x000b, …), as event
    /// logs and quotes name banks.
    pub fn tpm_alg(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000b,
            Bank::Sha384 => 0x000c,
            Bank::Sha512 => 0x000d,
        }
    }

    /// The bank of a TPM 2.0 algorithm id, when Drover knows it.
    pub fn from_tpm_alg(alg: u16) -> Option<Bank> {
        Bank::ALL.into_iter().find(|b| b.tpm_alg() == alg)
    }

    /// The name Linux uses under `/sys/class/tpm/tpm0/pcr-<name>/`.
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
            Bank::Sha512 => "sha512",
        }
    }
}

/// One measured thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `slot`, `manifest`, `root-hash`, `slot-kernel`, `slot-initramfs`,
    /// `slot-cmdline`.
    pub component: String,
    /// The value measured: the slot label, or a hex SHA-256.
    pub value: String,
    /// For people: the version, a path, the command line itself.
    pub description: String,
}

impl Event {
    /// A new event.
    pub fn new(component: &str, value: impl Into<String>, description: impl Into<String>) -> Self {
        Event {
            component: component.to_string(),
            value: value.into(),
            description: description.into(),
        }
    }

    /// The exact bytes whose digest is extended: `drover:<component>:<value>`.
    pub fn data(&self) -> Vec<u8> {
        format!("drover:{}:{}", self.component, self.value).into_bytes()
    }
}

/// The value `events` give a PCR that starts at zero, in `bank`.
pub fn replay(bank: Bank, events: &[Event]) -> Vec<u8> {
    let mut pcr = vec![0u8; bank.size()];
    for e in events {
        pcr = bank.extend(&pcr, &bank.hash(&e.data()));
    }
    pcr
}

/// The command line the stage gives the slot's kernel: the manifest's,
/// then the slot and the verity parameters the slot's initramfs opens
/// `/usr` with ([`crate::cmdline`]); all from the signed manifest, so a
/// verifier can predict it. Fails only for a manifest whose salt or root
/// hash is not hex.
pub fn slot_cmdline(
    manifest: &crate::manifest::Manifest,
    slot_label: &str,
) -> Result<String, crate::cmdline::Error> {
    use crate::cmdline;
    Ok(format!(
        "{} {}={slot_label} {}={}",
        manifest
            .boot
            .as_ref()
            .map(|b| b.cmdline.as_str())
            .unwrap_or(""),
        cmdline::SLOT,
        cmdline::VERITY,
        cmdline::VerityArg::from_manifest(manifest)?
    ))
}

/// What the stage measures when it boots `slot_label` from a slot whose
/// signed manifest has the SHA-256 `manifest_sha256` and whose verity root
/// hash is `root_hash`, with the kernel and initramfs digests the manifest
/// records and the final command line `cmdline`. The stage builds its events
/// with this function, and a verifier predicts them with it.
pub fn expected_events(
    slot_label: &str,
    manifest_sha256: &[u8; 32],
    manifest: &crate::manifest::Manifest,
    root_hash: &[u8],
    cmdline: &str,
) -> Vec<Event> {
    let m = manifest;
    let mut ev = vec![
        Event::new("slot", slot_label, slot_label),
        Event::new(
            "manifest",
            hex::encode(manifest_sha256),
            format!(
                "{} {} (security version {})",
                m.os.name, m.os.version, m.os.security_version
            ),
        ),
        Event::new("root-hash", hex::encode(root_hash), "dm-verity root hash"),
    ];
    if let Some(b) = &m.boot {
        ev.push(Event::new(
            "slot-kernel",
            b.kernel.sha256.clone(),
            b.kernel.path.clone(),
        ));
        ev.push(Event::new(
            "slot-initramfs",
            b.initramfs.sha256.clone(),
            b.initramfs.path.clone(),
        ));
    }
    ev.push(Event::new(
        "slot-cmdline",
        hex::encode(Sha256::digest(cmdline.as_bytes())),
        cmdline,
    ));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_of_nothing_is_zero() {
        for b in Bank::ALL {
            assert_eq!(replay(b, &[]), vec![0; b.size()]);
        }
    }

    #[test]
    fn replay_matches_a_hand_computed_extend() {
        let e = Event::new("slot", "USR-A", "USR-A");
        assert_eq!(e.data(), b"drover:slot:USR-A");
        let mut buf = vec![0u8; 32];
        buf.extend_from_slice(&Sha256::digest(b"drover:slot:USR-A"));
        assert_eq!(
            replay(Bank::Sha256, std::slice::from_ref(&e)),
            Sha256::digest(&buf).to_vec()
        );
    }

    #[test]
    fn order_and_content_change_the_value() {
        let a = Event::new("slot", "USR-A", "");
        let b = Event::new("root-hash", "00", "");
        let ab = replay(Bank::Sha256, &[a.clone(), b.clone()]);
        assert_ne!(ab, replay(Bank::Sha256, &[b.clone(), a.clone()]));
        let b2 = Event::new("root-hash", "01", "");
        assert_ne!(ab, replay(Bank::Sha256, &[a, b2]));
        // The description is for people and not measured.
        let mut b3 = b;
        b3.description = "other".into();
        assert_eq!(
            ab,
            replay(Bank::Sha256, &[Event::new("slot", "USR-A", ""), b3])
        );
    }
}
