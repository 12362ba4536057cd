//! The event log parser against a real log: OVMF with swtpm under QEMU,
//! recorded on the booted Drover system (after the boot stage's kexec) by
//! `qemu-tests/tests/record_fixtures.rs` (see the fixtures' README). Every
//! PCR the firmware log touches replays to the value read from the TPM in
//! the same boot, in both banks, and PCR 8, which only Drover's stage
//! extends, replays from the boot record's events.

use std::collections::BTreeMap;
use std::path::Path;

use drover_core::manifest::ReferenceValue;
use drover_core::measured::eventlog;
use drover_core::measured::measure::{self, Bank};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ovmf-swtpm")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn pcrs(name: &str) -> BTreeMap<u32, Vec<u8>> {
    String::from_utf8(fixture(name))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (i, v) = l.split_once(' ')?;
            Some((i.parse().ok()?, hex::decode(v.trim().to_lowercase()).ok()?))
        })
        .collect()
}

#[test]
fn the_ovmf_log_replays_to_the_tpms_pcrs() {
    let log = eventlog::parse(&fixture("binary_bios_measurements")).unwrap();
    assert!(log.events.len() > 10, "{} events", log.events.len());
    for (bank, file) in [
        (Bank::Sha256, "pcr-sha256.txt"),
        (Bank::Sha1, "pcr-sha1.txt"),
    ] {
        let tpm = pcrs(file);
        let replayed = log.replay(bank).unwrap();
        assert!(replayed.contains_key(&0) && replayed.contains_key(&7));
        assert!(
            !replayed.contains_key(&measure::PCR),
            "the firmware log touches PCR 8"
        );
        for (pcr, value) in &replayed {
            assert_eq!(
                hex::encode(value),
                hex::encode(&tpm[pcr]),
                "{} PCR {pcr}",
                bank.name()
            );
        }
        // PCR 8: Drover's events from the boot record.
        let record: serde_json::Value =
            serde_json::from_slice(&fixture("boot-record.json")).unwrap();
        let events: Vec<measure::Event> = serde_json::from_value(record["events"].clone()).unwrap();
        assert_eq!(
            hex::encode(measure::replay(bank, &events)),
            hex::encode(&tpm[&measure::PCR])
        );
    }
}

#[test]
fn a_changed_event_changes_the_replay() {
    let mut bytes = fixture("binary_bios_measurements");
    let log = eventlog::parse(&bytes).unwrap();
    let before = log.replay(Bank::Sha256).unwrap();
    // Flip a byte of the last event's SHA-256 digest.
    let last = log.events.last().unwrap();
    let d = &last.digests[&eventlog::BankKey(0x000b)];
    let pos = bytes
        .windows(d.len())
        .rposition(|w| w == d.as_slice())
        .unwrap();
    bytes[pos] ^= 1;
    let after = eventlog::parse(&bytes)
        .unwrap()
        .replay(Bank::Sha256)
        .unwrap();
    assert_ne!(before[&last.pcr], after[&last.pcr]);
}

#[test]
fn the_firmware_log_covers_the_boot_chain_pcrs() {
    let log = eventlog::parse(&fixture("binary_bios_measurements")).unwrap();
    let touched: Vec<u32> = log.replay(Bank::Sha256).unwrap().into_keys().collect();
    // Firmware (0–7), the stage kernel's EFI stub measuring its initrd (9).
    for pcr in [0, 1, 2, 3, 4, 5, 6, 7, 9] {
        assert!(
            touched.contains(&pcr),
            "PCR {pcr} not in the log: {touched:?}"
        );
    }
}

#[test]
fn the_recorded_boot_verifies_and_a_changed_stage_initrd_does_not() {
    let log = eventlog::parse(&fixture("binary_bios_measurements")).unwrap();
    let mut tpm = BTreeMap::new();
    for (bank, file) in [
        (Bank::Sha256, "pcr-sha256.txt"),
        (Bank::Sha1, "pcr-sha1.txt"),
    ] {
        for (pcr, v) in pcrs(file) {
            tpm.insert((bank, pcr), v);
        }
    }
    let record: serde_json::Value = serde_json::from_slice(&fixture("boot-record.json")).unwrap();
    let events: Vec<measure::Event> = serde_json::from_value(record["events"].clone()).unwrap();
    // The stage's reference values: systemd-boot's computed here from the
    // binary; the others (the stage kernel and initramfs of that build are
    // not kept) taken from the log itself.
    let mut reference: Vec<ReferenceValue> = Vec::new();
    for (component, _, value) in drover_core::measured::bootcheck::stage_measurements(&log) {
        if !reference.iter().any(|r| r.component == component) {
            reference.push(ReferenceValue {
                component,
                sha256: value,
            });
        }
    }
    reference[0].sha256 = hex::encode(
        drover_core::measured::authenticode::sha256(&fixture("systemd-bootx64.efi")).unwrap(),
    );
    let v = drover_core::measured::bootcheck::verify(
        Some(&log),
        &tpm,
        &events,
        &events,
        Some(&reference),
    );
    assert!(v.verified, "{:?}", v.problems);
    // The TPM as it would read after a different stage initramfs was
    // measured into PCR 9 by the EFI stub: the log no longer explains it.
    let mut changed = tpm.clone();
    changed.insert((Bank::Sha256, 9), vec![0x42; 32]);
    let v = drover_core::measured::bootcheck::verify(
        Some(&log),
        &changed,
        &events,
        &events,
        Some(&reference),
    );
    assert!(!v.verified);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].starts_with("PCR 9 (sha256)"),
        "{:?}",
        v.problems
    );
    // A log that explains the TPM, but for another initramfs than the
    // signed reference value.
    let last = reference.len() - 1;
    assert_eq!(reference[last].component, "stage-initramfs");
    reference[last].sha256 = "00".repeat(32);
    let v = drover_core::measured::bootcheck::verify(
        Some(&log),
        &tpm,
        &events,
        &events,
        Some(&reference),
    );
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].starts_with("stage-initramfs (PCR 9)"),
        "{:?}",
        v.problems
    );
}

#[test]
fn the_authenticode_digest_is_what_ovmf_measured() {
    // The first EFI program OVMF started in that boot was this systemd-boot
    // (Debian's systemd-boot-efi 252.39, the same bytes as in the image).
    let log = eventlog::parse(&fixture("binary_bios_measurements")).unwrap();
    let measured = drover_core::measured::bootcheck::stage_measurements(&log);
    let (component, pcr, value) = &measured[0];
    assert_eq!((component.as_str(), *pcr), ("systemd-boot", 4));
    let ours =
        drover_core::measured::authenticode::sha256(&fixture("systemd-bootx64.efi")).unwrap();
    assert_eq!(&hex::encode(ours), value);
    // The plain file hash is something else: the firmware does not hash
    // the checksum and the certificate directory.
    assert_ne!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fixture(
            "systemd-bootx64.efi"
        ))),
        *value
    );
    let names: Vec<&str> = measured.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "systemd-boot",
            "stage-kernel",
            "stage-cmdline",
            "stage-cmdline",
            "stage-initramfs"
        ]
    );
}
