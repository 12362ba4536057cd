//! The event log parser against a real log: OVMF with swtpm under QEMU,
//! recorded on the booted Drover system (after the boot stage's kexec) by
//! `qemu-tests/tests/record_fixtures.rs` (see the fixtures' README). Every
//! PCR the firmware log touches replays to the value read from the TPM in
//! the same boot, in both banks, and PCR 8, which only Drover's stage
//! extends, replays from the boot record's events.

use std::collections::BTreeMap;
use std::path::Path;

use drover_core::eventlog;
use drover_core::measure::{self, Bank};

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
    let v = drover_core::bootcheck::verify(Some(&log), &tpm, &events, &events);
    assert!(v.verified, "{:?}", v.problems);
    // The TPM as it would read after a different stage initramfs was
    // measured into PCR 9 by the EFI stub: the log no longer explains it.
    tpm.insert((Bank::Sha256, 9), vec![0x42; 32]);
    let v = drover_core::bootcheck::verify(Some(&log), &tpm, &events, &events);
    assert!(!v.verified);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].starts_with("PCR 9 (sha256)"),
        "{:?}",
        v.problems
    );
}
