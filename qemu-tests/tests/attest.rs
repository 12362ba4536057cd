//! Measured boot and remote attestation (issue 8) in QEMU, through OVMF,
//! systemd-boot and the stage with a software TPM (`swtpm`):
//!
//! 1. A normal boot verifies on the node (`droverctl verify-boot`) and
//!    attests: `droverctl attest` in the guest, `drover attest-verify` on
//!    the host against the build's published manifest and `build.json`,
//!    with the AK enrolled from the first quote; the same evidence with
//!    another nonce (a replay) is refused. Then the stage initramfs on the
//!    ESP is changed (a file added: the system still boots, and the
//!    signed manifests are untouched): verify-boot and attest-verify both
//!    name `stage-initramfs`.
//! 2. With `require-measured-boot` (from the node config), on a machine
//!    whose stage initramfs was changed, an update boots, fails the
//!    measured-boot check, is never marked successful, and the machine
//!    goes back to the previous slot, reporting why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drover_qemu_tests::guest::{json_after, Firmware, Guest, GuestBuilder};
use drover_qemu_tests::image::{self, drover_binary, publish, test_image};
use drover_qemu_tests::web::Nginx;

const BOOT: Duration = Duration::from_secs(900);

/// Writes a stage initramfs with one file more (a second cpio archive
/// appended, which the kernel unpacks after the first) onto the ESP of
/// `disk`: what someone with write access to the ESP could do.
fn change_stage_initrd(disk: &Path, work: &Path) {
    let mut bytes = std::fs::read(&test_image().initrd).unwrap();
    let mut extra = drover_core::cpio::Cpio::new(Vec::new(), 0);
    extra
        .file("drover-test-changed", 0o644, b"not what was built\n")
        .unwrap();
    bytes.extend_from_slice(&extra.finish().unwrap());
    let changed = work.join("initrd-changed.img");
    std::fs::write(&changed, bytes).unwrap();
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@1M", disk.display()))
        .arg(&changed)
        .arg("::/drover/initrd.img")
        .output()
        .expect("mcopy (Debian package mtools)");
    assert!(
        out.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OVMF machine with a TPM (kept in `dir/tpm` across its boots) and the
/// QEMU guest agent.
fn machine(name: &str, dir: &Path, disk: &Path) -> GuestBuilder {
    let sock = dir.join("qga.sock");
    let _ = std::fs::remove_file(&sock);
    GuestBuilder::new(
        name,
        disk,
        Firmware::Ovmf {
            vars: dir.join("OVMF_VARS.fd"),
        },
    )
    .probe_kernel(&test_image().kernel)
    .tpm(&dir.join("tpm"))
    .guest_agent(&sock)
    .allow_reboot()
}

/// `droverctl attest` in the guest with `nonce`: the evidence and the AK's
/// public part, copied to `dir`.
fn attest(g: &Guest, nonce: &str, dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    g.sh_ok(&format!(
        "droverctl attest --nonce {nonce} --out /run/evidence.json --ak-public-out /run/ak.pub"
    ));
    let evidence = dir.join(format!("evidence-{tag}.json"));
    std::fs::write(&evidence, g.sh_ok("cat /run/evidence.json")).unwrap();
    let ak = dir.join(format!("ak-{tag}.pub"));
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(g.sh_ok("base64 -w0 /run/ak.pub").trim())
        .unwrap();
    std::fs::write(&ak, b).unwrap();
    (evidence, ak)
}

/// `drover attest-verify` on the host: (succeeded, output).
fn attest_verify(evidence: &Path, nonce: &str, ak: &Path) -> (bool, String) {
    let out = test_image().dir.join("out");
    let o = Command::new(drover_binary())
        .arg("attest-verify")
        .arg(evidence)
        .args(["--nonce", nonce, "--manifest"])
        .arg(out.join("manifest.json"))
        .arg("--build-json")
        .arg(out.join("build.json"))
        .arg("--ak-public")
        .arg(ak)
        .output()
        .expect("running drover attest-verify");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn verify_boot_line(g: &mut Guest) -> serde_json::Value {
    let line = g.expect("DROVER-VERIFY-BOOT ", BOOT);
    json_after(&line, "DROVER-VERIFY-BOOT ")
}

#[test]
fn a_normal_boot_attests_and_a_changed_stage_initramfs_is_named() {
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = img.fresh_disk(dir.path());

    let mut g = machine("attest", dir.path(), &disk).start().unwrap();
    g.expect("DROVER-TEST-REPORT slot=USR-A", BOOT);
    let v = verify_boot_line(&mut g);
    let components: Vec<&str> = v["checks"]["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["component"].as_str()).collect())
        .unwrap_or_default();
    if v["verified"] != true
        || ![
            "systemd-boot",
            "stage-kernel",
            "stage-cmdline",
            "stage-initramfs",
        ]
        .iter()
        .all(|c| components.contains(c))
    {
        g.fail(&format!("verify-boot of a normal boot: {v:#}"));
    }
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let nonce = "6e6f6e63652d6f6e65";
    let (evidence, ak) = attest(&g, nonce, dir.path(), "1");
    let (ok, out) = attest_verify(&evidence, nonce, &ak);
    if !ok || !out.starts_with("VERIFIED: USR-A 1.0.0") {
        g.fail(&format!("attest-verify of a normal boot: {out}"));
    }
    // The same evidence offered for a new challenge: a replay.
    let (ok, out) = attest_verify(&evidence, "6e6f6e63652d74776f", &ak);
    if ok || !out.contains("a replayed or foreign quote") {
        g.fail(&format!("a replayed quote was not refused: {out}"));
    }
    g.stop();

    // The stage initramfs on the ESP changed; the machine still boots.
    change_stage_initrd(&disk, dir.path());
    let mut g = machine("attest-changed", dir.path(), &disk)
        .start()
        .unwrap();
    g.expect("DROVER-TEST-REPORT slot=USR-A", BOOT);
    let v = verify_boot_line(&mut g);
    let problems = v["checks"]["problems"].to_string();
    if v["verified"] != false || !problems.contains("stage-initramfs (PCR 9)") {
        g.fail(&format!(
            "verify-boot with a changed stage initramfs: {v:#}"
        ));
    }
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let nonce = "6e6f6e63652d7468726565";
    let (evidence, ak2) = attest(&g, nonce, dir.path(), "2");
    if std::fs::read(&ak).unwrap() != std::fs::read(&ak2).unwrap() {
        g.fail("the attestation key changed between boots");
    }
    let (ok, out) = attest_verify(&evidence, nonce, &ak);
    if ok || !out.contains("stage-initramfs (PCR 9): the firmware measured") {
        g.fail(&format!(
            "attest-verify with a changed stage initramfs: {out}"
        ));
    }
}

#[test]
fn with_require_measured_boot_an_unverified_update_is_never_blessed_and_falls_back() {
    let img = test_image();
    let v2 = image::release("v2", "2.0.0", "");
    let dir = tempfile::tempdir().unwrap();
    let disk = img.fresh_disk(dir.path());
    change_stage_initrd(&disk, dir.path());
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[update]\nrequire-measured-boot = true\n").unwrap();
    let repo = dir.path().join("repo");
    let web = Nginx::serve(&repo, None);

    let mut g = machine("measured-policy", dir.path(), &disk)
        .channel(web.port)
        .fw_cfg("opt/org.drover/config", &config)
        .start()
        .unwrap();
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    // The policy is in force, and this boot fails it (USR-A stays the
    // good slot it was; nothing falls back from the only good slot).
    let (code, out) = g
        .exec(
            &[
                "/usr/bin/systemctl",
                "is-failed",
                "drover-verify-boot.service",
            ],
            true,
        )
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    if code != 0 || out.trim() != "failed" {
        g.fail(&format!("drover-verify-boot.service on USR-A: {out}"));
    }

    publish(&repo, &v2);
    // 2.0.0 boots (the stage accepts the slot: its signature holds), the
    // measured-boot check fails, the agent reboots, the stage falls back.
    g.expect("chose USR-B", BOOT);
    g.expect("DROVER-TEST-REPORT slot=USR-A version=1.0.0", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    let st = g.wait_status(
        Duration::from_secs(180),
        "the rollback of 2.0.0 reported",
        |st| st["last-rollback"]["from-version"] == "2.0.0",
    );
    let reason = st["last-rollback"]["reason"].as_str().unwrap_or("");
    // And the boot now running says it is not verified either.
    let problem = st["measured-boot"]["problem"].as_str().unwrap_or("");
    if st["measured-boot"]["verified"] != false || !problem.contains("stage-initramfs") {
        g.fail(&format!("measured-boot in the status: {st:#}"));
    }
    if st["last-rollback"]["manual"] != false
        || !reason.contains("drover-verify-boot.service")
        || !reason.contains("stage-initramfs")
        || st["other"]["state"] != "unbootable"
    {
        g.fail(&format!("status after the unverified update: {st:#}"));
    }
    let (prio, _, successful) = image::slot_bits(&disk, drover_core::SlotId::B);
    if prio != 0 || successful {
        g.fail(&format!(
            "USR-B after the unverified boot: priority {prio}, successful {successful}"
        ));
    }
}

/// Runs the host's `droverctl` on a disk image offline: (succeeded, output).
fn droverctl_offline(args: &[&str]) -> (bool, String) {
    let o = Command::new(image::target_dir().join("debug/droverctl"))
        .args(args)
        .output()
        .expect("running droverctl");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The security-version floor at boot (issue 18): 2.0.0 (security version
/// 2) boots and is marked successful, which raises the TPM's floor to 2;
/// then someone with the disk gives USR-A (1.0.0, security version 1,
/// validly signed) priority offline. The stage refuses it for the floor
/// and boots 2.0.0.
#[test]
fn a_slot_below_the_tpm_floor_is_refused_at_boot() {
    let img = test_image();
    let v2 = image::release_spec(
        "sec2",
        &image::spec("2.0.0", "").replace("security-version = 1", "security-version = 2"),
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = img.fresh_disk(dir.path());
    let (_, public) = image::keys();
    let (ok, out) = droverctl_offline(&[
        "update",
        "--from",
        v2.join("usr.img").to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
        "--trust",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "droverctl update --disk: {out}");

    let mut g = machine("floor", dir.path(), &disk).start().unwrap();
    g.expect("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT);
    g.wait_for_agent(Duration::from_secs(180))
        .unwrap_or_else(|e| g.fail(&format!("{e:#}")));
    g.wait_status(Duration::from_secs(300), "2.0.0 marked successful", |st| {
        st["booted-successful"] == true
    });
    let floor = g.sh_ok("droverctl security-floor --json");
    if !floor.contains("\"floor\":2") {
        g.fail(&format!(
            "the floor after 2.0.0 was marked successful: {floor}"
        ));
    }
    g.stop();

    // Offline, with the disk only: the older signed slot first.
    let (ok, out) = droverctl_offline(&["rollback", "--disk", disk.to_str().unwrap()]);
    assert!(ok && out.contains("USR-A boots next"), "{out}");
    let mut g = machine("floor-refused", dir.path(), &disk).start().unwrap();
    g.expect(
        "USR-A REFUSED: security version 1 is below this node's floor 2",
        BOOT,
    );
    g.expect("DROVER-TEST-REPORT slot=USR-B version=2.0.0", BOOT);
}
