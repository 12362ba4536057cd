//! Choosing the accelerator: KVM only when a probe guest boots a real
//! kernel to its end under KVM within a few seconds (a KVM guest has been
//! seen to hang on machines like this one while a plain BIOS probe passed),
//! TCG otherwise. `DROVER_QEMU_ACCEL=kvm|tcg` overrides.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `kvm` or `tcg`, probed once per process with `kernel` (any bootable
/// x86-64 kernel: the probe boots it without a root file system, so it
/// panics and, with `panic=-1` and `-no-reboot`, QEMU exits).
pub fn accel(kernel: &Path) -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| match std::env::var("DROVER_QEMU_ACCEL").as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ => probe(kernel),
    })
}

fn probe(kernel: &Path) -> &'static str {
    if !Path::new("/dev/kvm").exists() {
        return "tcg";
    }
    let Ok(mut child) = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args([
            "-no-reboot",
            "-serial",
            "null",
            "-monitor",
            "none",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "panic=-1 console=ttyS0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return "tcg";
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return "kvm";
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("qemu-tests: a KVM guest did not finish booting a kernel within 10 s; using TCG");
    "tcg"
}
