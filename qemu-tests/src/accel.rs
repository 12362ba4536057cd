//! Choosing the accelerator: KVM only when a probe guest finishes under it
//! within a few seconds (a KVM guest has been seen to hang on machines like
//! this one), TCG otherwise. `DROVER_QEMU_ACCEL=kvm|tcg` overrides.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `kvm` or `tcg`.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| match std::env::var("DROVER_QEMU_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ => probe(),
    })
}

fn probe() -> &'static str {
    if !std::path::Path::new("/dev/kvm").exists() {
        return "tcg";
    }
    // A guest with no firmware work to do: the BIOS finds nothing to boot
    // and QEMU exits on the first reboot (-no-reboot). Under working KVM this
    // takes well under a second.
    let Ok(mut child) = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "64",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args([
            "-no-reboot",
            "-boot",
            "reboot-timeout=0",
            "-serial",
            "null",
            "-monitor",
            "none",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return "tcg";
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(status)) = child.try_wait() {
            return if status.success() { "kvm" } else { "tcg" };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    "tcg"
}
