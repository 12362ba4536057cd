//! The installation ISO (issue 9) in QEMU under OVMF: the ISO on a SATA
//! CD-ROM boots the live system (the slot image on the ISO, checked and
//! opened with dm-verity, root in memory) with an empty virtio disk
//! attached; `drover-install` refuses a disk that is too small and one
//! that is mounted, installs onto the empty disk with a node config that
//! arrives through fw_cfg, and the machine, started again without the ISO
//! and without fw_cfg, boots USR-A from the disk, reaches multi-user with
//! the config applied from the OEM partition, and marks USR-A successful.
//! The same ISO copied to a disk (as onto a USB stick) boots live too.

use std::path::Path;
use std::time::Duration;

use drover_qemu_tests::guest::{Firmware, GuestBuilder};
use drover_qemu_tests::image::{slot_bits, test_image, unattended_iso};

const BOOT: Duration = Duration::from_secs(600);
const CONFIG_NAME: &str = "opt/org.drover/install-config";
const CONFIG: &str = r#"
hostname = "installed-node"

[[files]]
path = "/etc/drover-test/installed"
contents = "written by drover-install onto OEM\n"
"#;

fn sparse(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

#[test]
fn the_iso_boots_live_installs_onto_an_empty_disk_and_the_disk_boots_with_the_config() {
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("target.raw");
    sparse(&disk, 2 << 30);
    let small = dir.path().join("small.raw");
    sparse(&small, 256 << 20);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let sock = dir.path().join("qga-live.sock");
    let _ = std::fs::remove_file(&sock);

    // 1. The live system from the ISO.
    let mut g = GuestBuilder::new(
        "live",
        &disk,
        Firmware::Ovmf {
            vars: dir.path().join("OVMF_VARS.fd"),
        },
    )
    .probe_kernel(&img.kernel)
    .extra_disk(&small)
    .cdrom(&img.iso)
    .fw_cfg(CONFIG_NAME, &config)
    .guest_agent(&sock)
    .start()
    .unwrap();
    g.expect("live media: /dev/sr0", BOOT);
    g.expect("LIVE: manifest of drover 1.0.0 signed by", BOOT);
    g.expect("kexec into LIVE 1.0.0", BOOT);
    g.expect("live: a tmpfs in memory mounted on /", BOOT);
    g.wait_for_agent(BOOT).unwrap();
    let (_, cmdline) = g.sh("cat /proc/cmdline");
    assert!(
        cmdline.contains("drover.slot=LIVE") && cmdline.contains("drover.live"),
        "{cmdline}"
    );
    let (_, root) = g.sh("findmnt -n -o FSTYPE /; findmnt -n -o OPTIONS /usr");
    assert!(root.starts_with("tmpfs\nro,"), "live root and /usr: {root}");
    // The live system has no slots: the agent and its boot checks stay off.
    let (_, agent) = g.sh("systemctl is-active drover-agent.service");
    assert_eq!(agent.trim(), "inactive", "drover-agent in the live system");

    // 2. Refusals: nothing written.
    let (code, out) = g.sh("drover-install --disk /dev/vdb 2>&1");
    assert_eq!(code, 2, "too small: {out}");
    assert!(
        out.contains("refusing to install: /dev/vdb is 256 MiB; Drover needs at least 1418 MiB"),
        "{out}"
    );
    let (code, out) = g.sh(
        "mkfs.ext4 -q /dev/vdb && mkdir -p /mnt/busy && mount /dev/vdb /mnt/busy && drover-install --disk /dev/vdb 2>&1; echo rc=$?; umount /mnt/busy",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("refusing to install: /dev/vdb is mounted on /mnt/busy")
            && out.contains("rc=2"),
        "{out}"
    );

    // 3. The install, with the config from fw_cfg.
    let (code, out) = g.sh(
        &format!(
            "drover-install --disk /dev/vda --config /sys/firmware/qemu_fw_cfg/by_name/{CONFIG_NAME}/raw --json --quiet"
        ),
    );
    assert_eq!(code, 0, "drover-install failed: {out}");
    let json = &out[out.find('{').unwrap_or_else(|| g.fail(&out))..];
    let report: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| g.fail(&format!("{e}: {out}")));
    assert_eq!(report["version"], "1.0.0", "{report}");
    assert_eq!(report["config"], true, "{report}");
    let _ = g.exec(&["/usr/bin/systemctl", "poweroff"], false);
    g.wait_exit(Duration::from_secs(180)).unwrap();
    drop(g);

    // The table the installer wrote: USR-A good, USR-B empty.
    assert_eq!(slot_bits(&disk, drover_core::SlotId::A), (1, 0, true));
    assert_eq!(slot_bits(&disk, drover_core::SlotId::B).0, 0);

    // 4. The installed system: no ISO, no fw_cfg.
    let sock = dir.path().join("qga-installed.sock");
    let _ = std::fs::remove_file(&sock);
    let g = GuestBuilder::new(
        "installed",
        &disk,
        Firmware::Ovmf {
            vars: dir.path().join("OVMF_VARS-2.fd"),
        },
    )
    .probe_kernel(&img.kernel)
    .guest_agent(&sock)
    .start()
    .unwrap();
    let mut g = g;
    g.expect("chose USR-A", BOOT);
    g.expect("node config applied", BOOT);
    let console = g.console();
    assert!(
        console.contains("from OEM partition config.toml"),
        "the config came from OEM:\n{console}"
    );
    g.wait_for_agent(BOOT).unwrap();
    let st = g.wait_status(BOOT, "USR-A marked successful", |st| {
        st["booted-successful"] == true
    });
    assert_eq!(st["booted"]["slot"], "USR-A", "{st}");
    assert_eq!(st["booted"]["version"], "1.0.0", "{st}");
    let (_, facts) = g.sh(
        "hostname; cat /etc/drover-test/installed; systemctl is-active multi-user.target; findmnt -n -o SOURCE /",
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(
        lines,
        [
            "installed-node",
            "written by drover-install onto OEM",
            "active",
            "/dev/vda9"
        ],
        "{facts}"
    );
}

/// `drover build --install-to /dev/vda --install-then poweroff`: nobody
/// types anything. The live system installs onto the empty disk with the
/// config from fw_cfg, says so on the console, and powers off; the disk
/// then holds a table with USR-A good. (The libvirt test boots such a disk.)
#[test]
fn the_unattended_iso_installs_by_itself_and_powers_off() {
    let img = test_image();
    let iso = unattended_iso();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("target.raw");
    sparse(&disk, 2 << 30);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut g = GuestBuilder::new(
        "unattended",
        &disk,
        Firmware::Ovmf {
            vars: dir.path().join("OVMF_VARS.fd"),
        },
    )
    .probe_kernel(&img.kernel)
    .cdrom(&iso)
    .fw_cfg(CONFIG_NAME, &config)
    .start()
    .unwrap();
    g.expect("kexec into LIVE 1.0.0", BOOT);
    g.expect(
        &format!(
            "drover-install: unattended install onto /dev/vda (config: /sys/firmware/qemu_fw_cfg/by_name/{CONFIG_NAME}/raw; then: poweroff)"
        ),
        BOOT,
    );
    g.expect("installed drover 1.0.0 on /dev/vda", BOOT);
    g.wait_exit(Duration::from_secs(300)).unwrap();
    let console = g.console();
    drop(g);
    let (_, live_cmdline) = console
        .split_once("kexec into LIVE 1.0.0 (")
        .unwrap_or_else(|| panic!("{console}"));
    assert!(
        live_cmdline
            .lines()
            .next()
            .unwrap()
            .contains("drover.live drover.install=/dev/vda drover.install.then=poweroff"),
        "{live_cmdline}"
    );
    assert_eq!(slot_bits(&disk, drover_core::SlotId::A), (1, 0, true));
    assert_eq!(slot_bits(&disk, drover_core::SlotId::B).0, 0);
}

#[test]
fn the_iso_written_to_a_disk_boots_live_like_a_usb_stick() {
    // The ISO is hybrid: `dd` to a USB stick gives a disk whose GPT has
    // the EFI image as an EFI system partition. Here the copy is a virtio
    // disk, which the firmware and the stage treat like any stick.
    let img = test_image();
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.raw");
    std::fs::copy(&img.iso, &stick).unwrap();
    let mut g = GuestBuilder::new(
        "usb-stick",
        &stick,
        Firmware::Ovmf {
            vars: dir.path().join("OVMF_VARS.fd"),
        },
    )
    .probe_kernel(&img.kernel)
    .start()
    .unwrap();
    g.expect("live media: /dev/vda", BOOT);
    g.expect("kexec into LIVE 1.0.0", BOOT);
    g.expect("live: a tmpfs in memory mounted on /", BOOT);
    g.expect("switching root to systemd", BOOT);
    g.stop();
}
