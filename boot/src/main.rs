//! `drover-boot`: `/init` of Drover's initramfs images.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use drover_boot::{early, kexec, live, slot_mode, stage};
use drover_core::keys::TrustedKeys;
use drover_core::paths;

fn run(start: Instant) -> anyhow::Result<()> {
    early::mount_pseudo_filesystems()?;
    let root = Path::new("/");
    let n = early::load_modules(&root.join(paths::initramfs::MODULES))?;
    stage::step(start, &format!("loaded {n} kernel modules"));
    let mode = std::fs::read_to_string(root.join(paths::initramfs::MODE)).unwrap_or_default();
    match mode.trim() {
        "stage" => {
            let keys = TrustedKeys::load(&[root.join(paths::initramfs::KEYS)])?;
            stage::step(start, &format!("{} trusted key(s)", keys.keys().len()));
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let p = if early::cmdline_value(&cmdline, live::FLAG).is_some() {
                // Booted from the installation ISO: the slot image on it.
                live::mount_media(start)?;
                let (path, file, node) = live::open_slot_image()?;
                let size = file.metadata()?.len();
                let extra = live::live_cmdline(&cmdline);
                let mut p = stage::check_and_prepare(
                    &stage::SlotSource {
                        label: live::LABEL,
                        path: &path,
                        file: &file,
                        offset: 0,
                        size,
                        node,
                        full_check: false,
                        extra_cmdline: &extra,
                    },
                    &keys,
                    start,
                )?;
                p.record.decision = "live".into();
                stage::append_record(&p.initrd, &p.record)?;
                p
            } else {
                let disk = stage::find_disk(start)?;
                stage::choose_and_prepare(&disk, &keys, start)?
            };
            let kernel = std::fs::File::open(&p.kernel)?;
            let initrd = std::fs::File::open(&p.initrd)?;
            kexec::load(&kernel, &initrd, &p.cmdline).context("loading the slot kernel")?;
            stage::step(
                start,
                &format!("kexec into {} {} ({})", p.slot, p.record.version, p.cmdline),
            );
            kexec::exec()?;
            Ok(())
        }
        "slot" => {
            slot_mode::run(start)?;
            Ok(())
        }
        other => {
            anyhow::bail!("unknown mode '{other}' in /etc/drover/mode (expected stage or slot)")
        }
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    println!("drover-boot {}: starting", env!("CARGO_PKG_VERSION"));
    match run(start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print!(
                "{}",
                drover_core::error_report("drover-boot: RESCUE: ", "drover-boot: ", e.as_ref())
            );
            if std::process::id() == 1 {
                // PID 1 must not exit: keep the message on the console.
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            ExitCode::FAILURE
        }
    }
}
