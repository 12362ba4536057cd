//! Records the fixtures of `core/tests/fixtures/ovmf-swtpm/`: the TCG
//! event log OVMF writes, as the booted Drover system sees it after the
//! boot stage's kexec, and the PCR values read in the same boot. Not a
//! test (ignored); run it to record them again:
//!
//! `cargo test -p drover-qemu-tests --test record_fixtures -- --ignored`

use std::time::Duration;

use base64::Engine as _;
use drover_qemu_tests::guest::{Firmware, GuestBuilder};
use drover_qemu_tests::image::test_image;

#[test]
#[ignore = "records fixtures; run by hand"]
fn record_the_ovmf_event_log_and_pcrs() {
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/ovmf-swtpm");
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = test_image();
    let disk = img.fresh_disk(dir.path());
    let sock = dir.path().join("qga.sock");
    let mut g = GuestBuilder::new(
        "record-fixtures",
        &disk,
        Firmware::Ovmf {
            vars: dir.path().join("OVMF_VARS.fd"),
        },
    )
    .probe_kernel(&img.kernel)
    .tpm(&dir.path().join("tpm"))
    .guest_agent(&sock)
    .start()
    .unwrap();
    g.expect("DROVER-TEST-REPORT", Duration::from_secs(900));
    g.wait_for_agent(Duration::from_secs(300))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let (code, b64) = g
        .exec(
            &[
                "/bin/sh",
                "-c",
                "base64 -w0 /sys/kernel/security/tpm0/binary_bios_measurements",
            ],
            true,
        )
        .unwrap();
    assert_eq!(code, 0, "{b64}");
    let log = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap();
    std::fs::write(out.join("binary_bios_measurements"), log).unwrap();
    for bank in ["sha1", "sha256"] {
        let (code, text) = g
            .exec(
                &[
                    "/bin/sh",
                    "-c",
                    &format!(
                        "for i in $(seq 0 23); do echo \"$i $(cat /sys/class/tpm/tpm0/pcr-{bank}/$i)\"; done"
                    ),
                ],
                true,
            )
            .unwrap();
        assert_eq!(code, 0, "{text}");
        std::fs::write(out.join(format!("pcr-{bank}.txt")), text).unwrap();
    }
    let (_, record) = g
        .exec(&["/bin/cat", "/run/drover/boot-record.json"], true)
        .unwrap();
    std::fs::write(out.join("boot-record.json"), record).unwrap();
}
