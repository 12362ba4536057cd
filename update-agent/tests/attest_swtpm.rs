//! `droverctl attest` and `drover attest-verify`'s checks against real
//! software TPMs (`swtpm` on loopback, started and stopped by the test):
//! a quote made by the TPM verifies; a replayed quote (another nonce), a
//! quote from another TPM, PCR values that are not the quoted ones, a
//! forged signature and a boot stage that is not the published one are
//! each refused with the reason named.
//!
//! The "boot" is played into the TPM by the test: it extends the PCRs with
//! a firmware event log built here (standing for OVMF's, whose real
//! recording is tested in drover-core) and with the stage's events
//! predicted from a manifest, as the stage does. The QEMU test
//! `qemu-tests/tests/attest.rs` does the same with a real boot.

#[path = "../../test-support/swtpm.rs"]
mod swtpm;

use drover_core::boot_record::BootRecord;
use drover_core::manifest::{Manifest, ReferenceValue};
use drover_core::measured::attestation::{self, Evidence, References};
use drover_core::measured::bootcheck::STAGE_COMPONENTS;
use drover_core::measured::eventlog::{self, EV_EFI_BOOT_SERVICES_APPLICATION};
use drover_core::measured::measure::{self, Bank};
use drover_update_agent::ctl::attest;
use swtpm::Swtpm;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues};

fn manifest_bytes() -> Vec<u8> {
    let m: Manifest = serde_json::from_value(serde_json::json!({
        "format": 1,
        "os": {"name": "drover", "version": "1.0.0", "security_version": 1},
        "created": 1,
        "filesystem": {"type": "erofs", "size": 4096},
        "verity": {
            "algorithm": "sha256", "data_block_size": 4096, "hash_block_size": 4096,
            "data_blocks": 1, "hash_offset": 4096, "salt": "00",
            "root_hash": "11".repeat(32)
        },
        "manifest_offset": 8192,
        "boot": {
            "kernel": {"path": "lib/modules/6.1/vmlinuz", "sha256": "22".repeat(32), "size": 1},
            "initramfs": {"path": "lib/drover/initrd.img", "sha256": "33".repeat(32), "size": 1},
            "cmdline": "console=ttyS0"
        }
    }))
    .expect("a manifest");
    m.to_bytes()
}

/// The firmware's events of a Drover boot (data stand-ins; each digest is
/// the hash of its data).
fn firmware_events(initrd: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut tag = 0x8F3B_22ECu32.to_le_bytes().to_vec();
    tag.extend_from_slice(&(initrd.len() as u32).to_le_bytes());
    tag.extend_from_slice(initrd);
    vec![
        (0, 0x8, b"firmware version".to_vec()),
        (7, 0x8000_0001, b"SecureBoot=0".to_vec()),
        (
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            b"systemd-boot".to_vec(),
        ),
        (
            4,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            b"stage kernel".to_vec(),
        ),
        (12, 0xd, b"stage command line".to_vec()),
        (9, 0x6, tag),
    ]
}

/// The published stage reference values (for the unmodified initrd).
fn stage_reference() -> Vec<ReferenceValue> {
    let ev = firmware_events(b"stage initrd");
    ev[2..]
        .iter()
        .zip(STAGE_COMPONENTS)
        .map(|((_, _, data), c)| ReferenceValue {
            component: c.into(),
            sha256: hex::encode(Bank::Sha256.hash(data)),
        })
        .collect()
}

/// Plays a boot into the TPM: the firmware log's events and the stage's.
/// Returns the log bytes and the boot record.
fn boot(tpm: &Swtpm, initrd: &[u8]) -> (Vec<u8>, BootRecord) {
    let fw = firmware_events(initrd);
    let log = eventlog::build(&[Bank::Sha256], &fw);
    let bytes = manifest_bytes();
    let m = Manifest::from_bytes(&bytes).unwrap();
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let stage = measure::expected_events(
        "USR-A",
        &digest,
        &m,
        &hex::decode(&m.verity.root_hash).unwrap(),
        &measure::slot_cmdline(&m, "USR-A").unwrap(),
    );
    let mut ctx = drover_update_agent::tpm::open(&tpm.tcti_name()).unwrap();
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let mut extend = |pcr: u32, data: &[u8]| {
        let mut v = DigestValues::new();
        v.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(Bank::Sha256.hash(data)).unwrap(),
        );
        ctx.pcr_extend(PcrHandle::try_from(pcr).unwrap(), v)
            .unwrap();
    };
    for (pcr, _, data) in &fw {
        extend(*pcr, data);
    }
    for e in &stage {
        extend(measure::PCR, &e.data());
    }
    (log, measured_record("USR-A", "1.0.0", stage))
}

/// The record a stage writes for a measured boot of `slot`.
fn measured_record(slot: &str, version: &str, events: Vec<measure::Event>) -> BootRecord {
    BootRecord {
        slot: slot.into(),
        decision: "candidate".into(),
        version: version.into(),
        refused: Vec::new(),
        measured: true,
        not_measured_reason: None,
        pcr: measure::PCR,
        banks: vec![Bank::Sha256],
        events,
    }
}

fn evidence(tpm: &Swtpm, keys: &std::path::Path, nonce: &[u8], initrd: &[u8]) -> Evidence {
    let (log, record) = boot(tpm, initrd);
    attest::evidence(&tpm.tcti_name(), keys, nonce, Some(log), record).unwrap()
}

fn check(e: &Evidence, nonce: &[u8], ak: Option<&[u8]>) -> attestation::Attestation {
    let manifest = manifest_bytes();
    let stage = stage_reference();
    attestation::verify(
        e,
        nonce,
        &References {
            manifest_bytes: &manifest,
            stage: Some(&stage),
            ak_public: ak,
        },
    )
}

fn b64(s: &str) -> Vec<u8> {
    attestation::from_b64("evidence", s).unwrap()
}

#[test]
fn a_quote_from_the_enrolled_tpm_verifies_and_forgeries_do_not() {
    let tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    let nonce = b"verifier nonce 0001";
    let e = evidence(&tpm, keys.path(), nonce, b"stage initrd");
    let ak = b64(&e.ak_public);
    let v = check(&e, nonce, Some(&ak));
    assert!(v.verified, "{:?}", v.problems);
    assert!(v.ak_pinned);
    assert!(keys.path().join("ak.pub").exists() && keys.path().join("ak.priv").exists());

    // The key is created once: a second quote is made with the same one.
    let nonce2 = b"verifier nonce 0002";
    let e2 = attest::evidence(
        &tpm.tcti_name(),
        keys.path(),
        nonce2,
        e.firmware_log.as_deref().map(b64),
        measured_record(&e.stage.slot, &e.stage.version, e.stage.events.clone()),
    )
    .unwrap();
    assert_eq!(e2.ak_public, e.ak_public);
    assert!(check(&e2, nonce2, Some(&ak)).verified);

    // Replayed: the old evidence against the verifier's new nonce.
    let v = check(&e, nonce2, Some(&ak));
    assert!(!v.verified);
    assert!(
        v.problems[0].contains("a replayed or foreign quote"),
        "{:?}",
        v.problems
    );

    // PCR values that are not the quoted ones (PCR 9 edited to hide a
    // different initrd).
    let mut edited = e.clone();
    for p in &mut edited.pcrs {
        if p.pcr == 9 {
            p.value = "44".repeat(32);
        }
    }
    let v = check(&edited, nonce, Some(&ak));
    assert!(
        v.problems[0].contains("not the ones the TPM quoted"),
        "{:?}",
        v.problems
    );

    // A signature that is not the key's.
    let mut forged = e.clone();
    let mut sig = b64(&forged.signature);
    let last = sig.len() - 1;
    sig[last] ^= 1;
    forged.signature = attestation::to_b64(&sig);
    let v = check(&forged, nonce, Some(&ak));
    assert!(
        v.problems[0].contains("signature does not verify"),
        "{:?}",
        v.problems
    );

    // Unpinned: verifies as far as the key goes, and says so.
    let v = check(&e, nonce, None);
    assert!(v.verified && !v.ak_pinned);

    // A second opinion: tpm2-tools' tpm2_checkquote accepts the same quote
    // with the same key and nonce, and refuses it with another nonce.
    let d = tempfile::tempdir().unwrap();
    let mut tpm2b = (ak.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&ak);
    std::fs::write(d.path().join("ak.pub"), tpm2b).unwrap();
    std::fs::write(d.path().join("quote"), b64(&e.quote)).unwrap();
    std::fs::write(d.path().join("sig"), b64(&e.signature)).unwrap();
    let checkquote = |nonce: &[u8]| {
        std::process::Command::new("tpm2_checkquote")
            .current_dir(d.path())
            .args([
                "-u", "ak.pub", "-m", "quote", "-s", "sig", "-g", "sha256", "-q",
            ])
            .arg(hex::encode(nonce))
            .output()
            .expect("tpm2_checkquote (Debian package tpm2-tools; `cargo xtask deps` installs it)")
    };
    let o = checkquote(nonce);
    assert!(
        o.status.success(),
        "tpm2_checkquote: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!checkquote(nonce2).status.success());
}

#[test]
fn a_quote_from_another_tpm_is_refused() {
    let enrolled = Swtpm::start();
    let other = Swtpm::start();
    let nonce = b"nonce for the foreign quote";
    let keys = tempfile::tempdir().unwrap();
    let ak = b64(&evidence(&enrolled, keys.path(), b"enrol", b"stage initrd").ak_public);
    let other_keys = tempfile::tempdir().unwrap();
    let foreign = evidence(&other, other_keys.path(), nonce, b"stage initrd");
    // A proper quote in itself, from a TPM that is not the node's.
    assert!(check(&foreign, nonce, None).verified);
    let v = check(&foreign, nonce, Some(&ak));
    assert!(!v.verified);
    assert!(v.problems[0].contains("another TPM"), "{:?}", v.problems);
}

#[test]
fn a_changed_stage_initrd_is_named_even_though_the_quote_holds() {
    let tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    let nonce = b"nonce";
    let e = evidence(&tpm, keys.path(), nonce, b"stage initrd with a backdoor");
    let v = check(&e, nonce, Some(&b64(&e.ak_public)));
    assert!(!v.verified);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].starts_with("stage-initramfs (PCR 9): the firmware measured"),
        "{:?}",
        v.problems
    );
}

/// A TPM with only the SHA-256 bank allocated, as `swtpm_setup` (libvirt's
/// TPMs) and many machines leave it: reading every bank's PCRs returns
/// SHA-256's and stops. (tss-esapi's own `read_all` asks again forever
/// for a bank the TPM does not have; in a libvirt domain that hung
/// `droverctl verify-boot` and kept the boot from completing.)
#[test]
fn a_tpm_with_only_sha256_allocated_is_read_without_hanging() {
    let tpm = Swtpm::start_manufactured("sha256");
    let tcti = tpm.tcti_name();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ctx = drover_update_agent::tpm::open(&tcti).unwrap();
        tx.send(drover_update_agent::tpm::read_pcrs(&mut ctx, &Bank::ALL))
            .unwrap();
    });
    let pcrs = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("reading the PCRs did not finish in 60 s")
        .unwrap();
    assert_eq!(pcrs.len(), 24, "{:?}", pcrs.keys().collect::<Vec<_>>());
    assert!(pcrs.keys().all(|(bank, _)| *bank == Bank::Sha256));
}
