//! Choosing the accelerator: KVM only when a probe guest boots a real
//! kernel to its end under KVM within a few seconds (a KVM guest has been
//! seen to hang on machines like this one while a plain BIOS probe passed),
//! TCG otherwise. `DROVER_QEMU_ACCEL=kvm|tcg` overrides.
//!
//! The probe runs once per test run, not once per test: nextest runs every
//! test in a process of its own, so the answer is kept in
//! `<target>/tmp/drover-qemu-accel` (written under a lock, so two tests
//! starting together probe once). `cargo xtask test` removes that file
//! when it starts, so each run probes afresh.

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
        _ => cached_probe(kernel),
    })
}

/// Where the answer of this run's probe is kept.
pub fn cache_file() -> std::path::PathBuf {
    crate::image::target_dir().join("tmp/drover-qemu-accel")
}

/// The probe's answer from [`cache_file`], or a probe whose answer is
/// written there; a lock beside it makes concurrent tests probe once.
fn cached_probe(kernel: &Path) -> &'static str {
    let file = cache_file();
    let from = |s: &str| match s.trim() {
        "kvm" => Some("kvm"),
        "tcg" => Some("tcg"),
        _ => None,
    };
    let locked = file.parent().and_then(|d| {
        std::fs::create_dir_all(d).ok()?;
        let l = std::fs::File::create(d.join("drover-qemu-accel.lock")).ok()?;
        l.lock().ok()?;
        Some(l)
    });
    if let Some(a) = std::fs::read_to_string(&file)
        .ok()
        .as_deref()
        .and_then(from)
    {
        return a;
    }
    let a = probe(kernel);
    if locked.is_some() {
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, a).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    a
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
