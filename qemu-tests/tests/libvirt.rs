//! `docs/install.md`'s libvirt steps, run as written against a real
//! libvirt (Debian's `libvirt-daemon-system`, started by the harness when
//! none runs): the domain XML is taken from the docs (only the directory
//! of its files and its name are replaced), so the docs cannot drift from
//! what works. Domain type `qemu` (TCG), UEFI without Secure Boot, swtpm
//! as the TPM, the serial console to a file, the node config as fw_cfg.
//! The ISO (built with `--install-to /dev/vda --install-then poweroff`)
//! installs by itself and powers off; with the CD ejected, the domain boots
//! the installed disk: USR-A, measured into its TPM, the config applied.
//! The test adds one thing to the docs' XML: a guest-agent channel, to
//! look inside the installed system.

use std::path::Path;
use std::time::Duration;

use drover_qemu_tests::image::{test_image, unattended_iso};
use drover_qemu_tests::libvirt::{Libvirt, STALE_PREFIX};

const DOCS: &str = include_str!("../../docs/install.md");
/// Where the docs put the domain's files.
const DOCS_DIR: &str = "/var/lib/libvirt/images";
const BOOT: Duration = Duration::from_secs(900);

/// The first ```xml block after the marker the docs carry for this test.
fn docs_domain_xml() -> String {
    let marker = "<!-- tested by qemu-tests/tests/libvirt.rs -->";
    let after = &DOCS[DOCS
        .find(marker)
        .expect("the libvirt marker in docs/install.md")..];
    let start = after
        .find("```xml\n")
        .expect("an xml block after the marker")
        + 7;
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_string()
}

#[test]
fn the_docs_libvirt_domain_installs_unattended_and_boots_the_installed_disk() {
    let img = test_image();
    let iso = unattended_iso();
    // Readable by libvirt's QEMU user (libvirt-qemu): not a 0700 tempdir.
    let dir = tempfile::Builder::new()
        .prefix("drover-libvirt-")
        .tempdir_in(drover_qemu_tests::image::target_dir().join("tmp"))
        .unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lv = Libvirt::start(d).unwrap();

    // The files the docs name, in this test's directory.
    std::fs::copy(&iso, d.join("drover.iso")).unwrap();
    std::fs::File::create(d.join("drover-node.raw"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::write(
        d.join("node.toml"),
        "hostname = \"libvirt-node\"\n\n[[files]]\npath = \"/etc/drover-test/installed\"\ncontents = \"by the unattended install\\n\"\n",
    )
    .unwrap();
    let name = format!("{STALE_PREFIX}{}", std::process::id());
    let xml = docs_domain_xml()
        .replace(DOCS_DIR, &d.to_string_lossy())
        .replace("<name>drover-node</name>", &format!("<name>{name}</name>"))
        .replace(
            "  </devices>",
            "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n  </devices>",
        );
    assert!(xml.contains("<domain type='qemu'>"), "{xml}");
    let xml_file = d.join("domain.xml");
    std::fs::write(&xml_file, &xml).unwrap();
    let console = d.join("drover-node.console.log");
    let dom = lv.define(&name, &xml_file, &console).unwrap();
    // What libvirt kept: the fw_cfg entry (a misplaced <sysinfo> is
    // dropped silently by `virsh define`) and firmware without Secure Boot.
    let kept = lv.virsh(&["dumpxml", &name]).unwrap();
    assert!(
        kept.contains("<entry name='opt/org.drover/install-config'"),
        "libvirt dropped the fw_cfg entry:\n{kept}"
    );
    assert!(
        kept.contains("<feature enabled='no' name='secure-boot'/>"),
        "{kept}"
    );

    // 1. Unattended install, then power off.
    dom.start().unwrap();
    let at = dom.expect("kexec into LIVE 1.0.0", 0, BOOT);
    let at = dom.expect("drover-install: unattended install onto /dev/vda", at, BOOT);
    let at = dom.expect("installed drover 1.0.0 on /dev/vda", at, BOOT);
    dom.wait_shut_off(Duration::from_secs(300));

    // 2. The CD ejected as the docs say; the installed disk boots.
    lv.virsh(&["change-media", &name, "sda", "--eject", "--config"])
        .unwrap();
    dom.start().unwrap();
    let at = dom.expect("chose USR-A", at, BOOT);
    let at = dom.expect("node config applied", at, BOOT);
    dom.wait_for_agent(BOOT);
    let (_, facts) = dom
        .sh("hostname; cat /etc/drover-test/installed; findmnt -n -o SOURCE /")
        .unwrap();
    assert_eq!(
        facts.lines().collect::<Vec<_>>(),
        ["libvirt-node", "by the unattended install", "/dev/vda9"],
        "{facts}"
    );
    dom.expect("DROVER-TEST-REPORT", at, BOOT);
    let c = dom.console();
    let report = c[at..]
        .lines()
        .find(|l| l.contains("DROVER-TEST-REPORT"))
        .unwrap()
        .to_string();
    for want in [
        "slot=USR-A",
        "version=1.0.0",
        "measured=true",
        "multi_user=active",
    ] {
        if !report.contains(want) {
            dom.fail(&format!("{want} not in {report}"));
        }
    }
    assert!(
        c[at..].contains("from OEM partition config.toml"),
        "the config came from OEM"
    );
    drop(dom);
    drop(lv);
    let _ = img;
    assert!(!Path::new(&format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.fd")).exists());
}
