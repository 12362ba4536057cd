//! Installs the Debian packages the tests and benches use, when missing.

use std::process::Command;

/// (command that must exist, Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[
    ("veritysetup", "cryptsetup-bin"),
    ("cgpt", "cgpt"),
    ("sgdisk", "gdisk"),
    ("mkfs.erofs", "erofs-utils"),
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("xorriso", "xorriso"),
    ("debugfs", "e2fsprogs"),
    ("losetup", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
    ("cpio", "cpio"),
    ("qemu-img", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("swtpm", "swtpm"),
    ("swtpm_setup", "swtpm-tools"),
    // A second opinion on Drover's quote verification (attest tests).
    ("tpm2_checkquote", "tpm2-tools"),
    (
        "/usr/lib/x86_64-linux-gnu/pkgconfig/tss2-esys.pc",
        "libtss2-dev",
    ),
    ("pkg-config", "pkg-config"),
    ("nginx", "nginx-light"),
    ("socat", "socat"),
    // The peer of `cargo xtask bench delta`.
    ("casync", "casync"),
    ("curl", "curl"),
    // The reboot lock's store, and certificates for its TLS tests.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("openssl", "openssl"),
    // The fleet simulation's plots.
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
    ("dbus-daemon", "dbus-daemon"),
    // Virtual environments for the reference tools the tests install
    // from PyPI (SPDX and CycloneDX validators).
    ("/usr/share/doc/python3-venv", "python3-venv"),
    // The install test that runs the docs' libvirt domain.
    ("libvirtd", "libvirt-daemon-system"),
    ("virsh", "libvirt-clients"),
    // A container on a node: a registry on the host, an image pushed to
    // it, a static binary in the image.
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("/usr/share/doc/busybox-static", "busybox-static"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
    ),
];

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1 || test -x /usr/sbin/{cmd} || test -x /sbin/{cmd}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The Debian packages `install` makes sure of.
pub fn packages() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    for (_, pkg) in NEEDED {
        if !v.contains(pkg) {
            v.push(pkg);
        }
    }
    v
}

fn missing() -> Vec<&'static str> {
    let mut v: Vec<&str> = NEEDED
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    v.dedup();
    v
}

/// Installs whatever is missing with apt-get (needs root). Two rounds:
/// installing Debian's qemu-system-x86 can remove a newer qemu-utils that
/// the machine came with, and the second round puts Debian's back.
pub fn install() -> anyhow::Result<()> {
    let mut updated = false;
    for _round in 0..2 {
        let missing = missing();
        if missing.is_empty() {
            eprintln!(
                "xtask: tools present ({})",
                NEEDED.iter().map(|n| n.1).collect::<Vec<_>>().join(", ")
            );
            return Ok(());
        }
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        if !updated {
            crate::run(Command::new("apt-get").args(["update", "-q"]))?;
            updated = true;
        }
        crate::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let still = missing();
    if !still.is_empty() {
        anyhow::bail!("still missing after installing: {}", still.join(" "));
    }
    Ok(())
}
