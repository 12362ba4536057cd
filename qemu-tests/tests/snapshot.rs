//! The saved node (`drover_qemu_tests::snapshot`): a restored guest is the
//! machine that was saved, TPM included. It answers through the guest
//! agent at once, its agent reports the same boot, and PCR 8 read from the
//! TPM after the restore holds what the stage measured before the save
//! (the test image's report printed it then): swtpm's state travelled in
//! QEMU's migration stream. Its clock is the host's, not the saved one. Two restores of the same state are two
//! machines: what one writes to its disk the other does not see.

use std::time::Duration;

use drover_qemu_tests::guest::Guest;
use drover_qemu_tests::snapshot;

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

fn sh(g: &Guest, script: &str) -> String {
    let (code, out) = g
        .exec(&["/bin/sh", "-c", script], true)
        .unwrap_or_else(|e| g.fail(&format!("{script}: {e:#}")));
    if code != 0 {
        g.fail(&format!("`{script}` exited with {code}: {out}"));
    }
    out.trim().to_string()
}

#[test]
fn a_restored_node_is_the_saved_machine_with_its_tpm() {
    let t = std::time::Instant::now();
    let snap = snapshot::idle_node();
    eprintln!(
        "snapshot: saved node ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Nothing listens on the channel: this test needs none.
    let (mut g, _) = snap.restore("restored-a", &a, 9);
    let report = g.expect(
        "DROVER-TEST-REPORT slot=USR-A version=1.0.0",
        Duration::ZERO,
    );
    let saved_pcr8 = field(&report, "pcr8_sha256").to_ascii_lowercase();
    if saved_pcr8.len() != 64 || saved_pcr8.bytes().all(|c| c == b'0') {
        g.fail(&format!(
            "the saved boot measured nothing into PCR 8: {report}"
        ));
    }
    g.wait_for_agent(Duration::from_secs(60))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    eprintln!(
        "snapshot: first restore answers after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pcr8 = sh(&g, "cat /sys/class/tpm/tpm0/pcr-sha256/8").to_ascii_lowercase();
    if pcr8 != saved_pcr8 {
        g.fail(&format!(
            "PCR 8 after the restore is {pcr8}, the saved boot's was {saved_pcr8}"
        ));
    }
    // The clock is now, not the moment of the save.
    let guest_now: u64 = sh(&g, "date +%s").parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if guest_now.abs_diff(host_now) > 30 {
        g.fail(&format!(
            "the restored guest's clock says {guest_now}, the host's {host_now}"
        ));
    }
    let st = g
        .status()
        .unwrap_or_else(|e| g.fail(&format!("droverctl status: {e:#}")));
    if st["booted"]["slot"] != "USR-A" || st["booted-successful"] != true {
        g.fail(&format!("status after the restore: {st:#}"));
    }
    // A second restore beside the first: its own disk.
    sh(&g, "echo restored-a > /var/lib/drover-test-mark && sync");
    let (h, _) = snap.restore("restored-b", &b, 9);
    h.wait_for_agent(Duration::from_secs(60))
        .unwrap_or_else(|e| h.fail(&format!("{e:#}")));
    eprintln!(
        "snapshot: second restore answers after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (code, out) = h
        .exec(&["/bin/cat", "/var/lib/drover-test-mark"], true)
        .unwrap_or_else(|e| h.fail(&format!("{e:#}")));
    if code == 0 {
        h.fail(&format!(
            "the second restore sees the first one's file: {out}"
        ));
    }
}
