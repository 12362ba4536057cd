//! Boot tests (issue 4): real images from the image builder, booted in QEMU.
//! Each test boots its own copy of the shared test image.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

use drover_core::keys::TrustedKeys;
use drover_core::measured::measure;
use drover_core::{slot_image, PartitionTable, SlotId, Slots};
use drover_qemu_tests::guest::{Firmware, GuestBuilder};
use drover_qemu_tests::image::{slot_bits, test_image};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const REPORT: &str = "DROVER-TEST-REPORT";

/// The boot stage started directly with `-kernel`/`-initrd`.
fn direct() -> Firmware {
    test_image().stage_direct()
}

/// `key=value` from the report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// Writes the test image's slot image into USR-B and sets B's bits.
fn stage_update_in_b(disk: &Path, priority: u8, tries: u8) {
    let img = test_image();
    let payload = std::fs::read(&img.usr_img).unwrap();
    let (table, mut f) = PartitionTable::open_rw(disk).unwrap();
    let mut slots = Slots::from_table(table, SlotId::A).unwrap();
    let b = slots.get(SlotId::B);
    slots.make_unbootable();
    slots.write(&mut f).unwrap();
    f.write_all_at(&payload, b.offset).unwrap();
    f.sync_all().unwrap();
    let (mut t, mut f) = PartitionTable::open_rw(disk).unwrap();
    let bits = drover_core::GptPrio::from_raw(t.entry(b.partition).unwrap().flags)
        .with_priority(priority)
        .with_tries(tries)
        .with_successful(false);
    t.set_attributes(b.partition, bits.raw()).unwrap();
    t.write(&mut f, false).unwrap();
}

#[test]
fn direct_boot_reaches_multi_user_on_usr_a_with_verity_usr_and_writable_root() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    let mut g = GuestBuilder::new("direct-boot", &disk, direct())
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    let ok = field(&line, "slot") == "USR-A"
        && field(&line, "usr") == "ro"
        && field(&line, "usr_source").starts_with("/dev/dm-")
        && field(&line, "root") == "rw"
        && field(&line, "multi_user") == "active"
        // No TPM on this machine: the boot goes on and says so.
        && field(&line, "measured") == "false"
        && field(&line, "pcr8_sha256") == "none";
    if !ok {
        g.fail(&format!("unexpected boot facts: {line}"));
    }
    // Without a TPM, verify-boot says the boot was not measured.
    let vline = g.expect("DROVER-VERIFY-BOOT ", BOOT_TIMEOUT);
    let verdict = drover_qemu_tests::guest::json_after(&vline, "DROVER-VERIFY-BOOT ");
    if verdict["measured"] != false
        || verdict["verified"] != false
        || verdict["not_measured_reason"] != "no TPM device"
    {
        g.fail(&format!("verify-boot without a TPM: {verdict:#}"));
    }
    let console = g.console();
    assert!(
        console.contains("NOT MEASURED (no TPM device)"),
        "the stage did not say the boot was not measured"
    );
    assert!(
        console.contains("/usr: USR-A opened with dm-verity"),
        "slot mode did not report dm-verity"
    );
}

#[test]
fn a_valid_update_in_b_with_one_try_boots_and_uses_up_the_try() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    stage_update_in_b(&disk, 2, 1);
    let mut g = GuestBuilder::new("boot-b", &disk, direct())
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    if field(&line, "slot") != "USR-B" {
        g.fail(&format!("expected USR-B: {line}"));
    }
    g.stop();
    // The try was used up before B ran (tries 0), and once
    // boot-complete.target was reached drover-boot-complete.service marked
    // it successful (the report runs after that unit).
    assert_eq!(
        slot_bits(&disk, SlotId::B),
        (2, 0, true),
        "B: try used up, then marked successful"
    );
    assert_eq!(slot_bits(&disk, SlotId::A), (1, 0, true));
}

#[test]
fn a_flipped_byte_in_b_is_refused_and_a_boots() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    stage_update_in_b(&disk, 2, 1);
    // One byte of B's file system data, past the first MiB.
    let (t, _) = PartitionTable::open(&disk).unwrap();
    let (off, _) = t.byte_range(4).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let at = off + 7 * 1024 * 1024 + 11;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    f.sync_all().unwrap();
    let mut g = GuestBuilder::new("corrupt-b", &disk, direct())
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    if field(&line, "slot") != "USR-A" {
        g.fail(&format!("expected the fallback to USR-A: {line}"));
    }
    let console = g.console();
    if !console.contains("USR-B REFUSED") || !console.contains("corrupt") {
        g.fail("the stage did not say why USR-B was refused");
    }
    g.stop();
    // B keeps its decremented tries and is not chosen again.
    assert_eq!(slot_bits(&disk, SlotId::B), (2, 0, false));
}

#[test]
fn with_no_candidate_the_last_successful_slot_boots() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    // A: priority 0 but successful; B: empty.
    let (mut t, mut f) = PartitionTable::open_rw(&disk).unwrap();
    let a = drover_core::GptPrio::from_raw(t.entry(3).unwrap().flags).with_priority(0);
    t.set_attributes(3, a.raw()).unwrap();
    t.write(&mut f, false).unwrap();
    let mut g = GuestBuilder::new("fallback", &disk, direct())
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    if field(&line, "slot") != "USR-A" {
        g.fail(&format!("expected USR-A: {line}"));
    }
    if !g.console().contains("chose USR-A (fallback)") {
        g.fail("the stage did not report a fallback");
    }
}

#[test]
fn through_ovmf_and_systemd_boot_with_a_tpm_pcr8_replays_from_the_boot_record() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    let vars = dir.path().join("OVMF_VARS.fd");
    let mut g = GuestBuilder::new("ovmf-tpm", &disk, Firmware::Ovmf { vars })
        .probe_kernel(&test_image().kernel)
        .tpm(&dir.path().join("tpm"))
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    if field(&line, "slot") != "USR-A" || field(&line, "usr") != "ro" {
        g.fail(&format!("unexpected boot facts: {line}"));
    }
    if field(&line, "measured") != "true" {
        g.fail(&format!("the boot was not measured: {line}"));
    }
    let record_line = g.expect("DROVER-BOOT-RECORD {", BOOT_TIMEOUT);
    let json = record_line.split_once("DROVER-BOOT-RECORD ").unwrap().1;
    let record: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| g.fail(&format!("boot record is not JSON ({e}): {json}")));
    if record["decision"] != "candidate" || record["slot"] != "USR-A" {
        g.fail(&format!("boot record: {record:#}"));
    }
    let events: Vec<measure::Event> = serde_json::from_value(record["events"].clone()).unwrap();
    let components: Vec<&str> = events.iter().map(|e| e.component.as_str()).collect();
    assert_eq!(
        components,
        [
            "slot",
            "manifest",
            "root-hash",
            "slot-kernel",
            "slot-initramfs",
            "slot-cmdline"
        ]
    );
    // What the TPM holds is exactly what the recorded events replay to,
    // and the events are what the signed manifest predicts.
    // droverctl verify-boot on the node: the firmware log and Drover's
    // events replay to the TPM's PCRs, the events match the manifest.
    let vline = g.expect("DROVER-VERIFY-BOOT ", BOOT_TIMEOUT);
    let verdict = drover_qemu_tests::guest::json_after(&vline, "DROVER-VERIFY-BOOT ");
    if verdict["verified"] != true
        || verdict["measured"] != true
        || !verdict["checks"]["pcrs"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["pcr"] == 0) && p.iter().any(|x| x["pcr"] == 8))
    {
        g.fail(&format!("verify-boot on the node: {verdict:#}"));
    }
    let replayed = hex::encode(measure::replay(measure::Bank::Sha256, &events));
    let pcr8 = field(&line, "pcr8_sha256").to_ascii_lowercase();
    if pcr8 != replayed {
        g.fail(&format!(
            "PCR 8 is {pcr8}, the recorded events replay to {replayed}"
        ));
    }
    let img = test_image();
    let keys = TrustedKeys::load(&[img.dir.join("test.pub.pem")]).unwrap();
    let f = std::fs::File::open(&img.usr_img).unwrap();
    let len = f.metadata().unwrap().len();
    let v = slot_image::open_verified(&f, len, &img.usr_img, &keys).unwrap();
    let cmdline = &events.last().unwrap().description;
    let predicted = measure::expected_events(
        "USR-A",
        &v.verified.digest,
        &v.verified.manifest,
        &v.root_hash,
        cmdline,
    );
    assert_eq!(events, predicted);
}

#[test]
fn root_grows_to_fill_a_larger_disk_on_first_boot() {
    let dir = tempfile::tempdir().unwrap();
    let disk = test_image().fresh_disk(dir.path());
    let before = std::fs::metadata(&disk).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(before + (1 << 30))
        .unwrap();
    let mut g = GuestBuilder::new("grow-root", &disk, direct())
        .start()
        .unwrap();
    let line = g.expect(REPORT, BOOT_TIMEOUT);
    let size: u64 = field(&line, "root_size").parse().unwrap();
    if size < 900 << 20 {
        g.fail(&format!("ROOT did not grow: {line}"));
    }
    if !g.console().contains("ROOT grown to") {
        g.fail("the slot initramfs did not report growing ROOT");
    }
    g.stop();
    let out = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
}
