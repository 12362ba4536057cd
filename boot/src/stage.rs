//! Stage mode: choose the slot, check it, and hand over to its kernel.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use drover_core::keys::TrustedKeys;
use drover_core::measured::measure;
use drover_core::slot_image::{self, Window};
use drover_core::{Decision, PartitionTable, SlotId, Slots};
use sha2::{Digest, Sha256};

use crate::dm::{self, VerityTable};
use drover_core::boot_record::{self, BootRecord};

/// Prints one step with the time since the stage started.
pub fn step(start: Instant, msg: &str) {
    println!(
        "drover-boot: [{:>7.3}s] {msg}",
        start.elapsed().as_secs_f64()
    );
}

/// Everything needed to kexec into a checked slot.
#[derive(Debug)]
pub struct Prepared {
    /// Which slot.
    pub slot: String,
    /// The slot's kernel, read from its verified /usr.
    pub kernel: PathBuf,
    /// Its initramfs with the boot record appended.
    pub initrd: PathBuf,
    /// The command line for it.
    pub cmdline: String,
    /// What is handed on.
    pub record: BootRecord,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Chooses a slot on `disk` by the rule (the used-up try is written before
/// anything of the slot runs), and checks it: manifest signature, a full
/// verity check before a slot's first successful boot, the kernel and
/// initramfs read through dm-verity against the manifest's digests. A slot
/// that fails is not booted: the rule runs again without it (it keeps its
/// decremented tries). With no slot left, the error says why.
pub fn choose_and_prepare(
    disk: &Path,
    keys: &TrustedKeys,
    start: Instant,
) -> anyhow::Result<Prepared> {
    let mut refused: Vec<(SlotId, String)> = Vec::new();
    let floor = security_floor(start);
    loop {
        let (table, mut file) = PartitionTable::open_rw(disk)?;
        let mut slots = Slots::from_table(table, SlotId::A)?;
        let excluded: Vec<SlotId> = refused.iter().map(|(s, _)| *s).collect();
        let decision = slots.select_for_boot_excluding(&excluded);
        let Some(slot) = decision.slot() else {
            let why = match decision {
                Decision::Rescue { reason } => reason.to_string(),
                _ => "no slot".to_string(),
            };
            let r: Vec<String> = refused.iter().map(|(s, e)| format!("{s}: {e}")).collect();
            bail!(
                "nothing to boot: {why}; refused in this boot: {}",
                if r.is_empty() {
                    "none".to_string()
                } else {
                    r.join("; ")
                }
            );
        };
        if let Decision::Boot {
            consume_try: true, ..
        } = decision
        {
            slots.write(&mut file).context("writing the used-up try")?;
            step(
                start,
                &format!("{slot}: one try used up and written before anything of it runs"),
            );
        }
        step(start, &format!("chose {slot} ({})", decision.kind()));
        let st = slots.get(slot);
        let res = drover_core::devices::partition_node(disk, slot.label())
            .with_context(|| format!("no device node for {slot} on {}", disk.display()))
            .and_then(|node| {
                // Below the TPM's floor: refused like a bad signature, and
                // the rule runs again without it.
                let part = Window {
                    file: &file,
                    offset: st.offset,
                };
                let v = slot_image::open_verified(&part, st.size, disk, keys)?;
                drover_core::measured::floor::allows(
                    v.verified.manifest.os.security_version,
                    floor,
                )
                .map_err(anyhow::Error::msg)?;
                check_and_prepare(
                    &SlotSource {
                        label: slot.label(),
                        path: disk,
                        file: &file,
                        offset: st.offset,
                        size: st.size,
                        node,
                        full_check: !st.prio.successful(),
                        extra_cmdline: "",
                    },
                    keys,
                    start,
                )
            });
        match res {
            Ok(mut p) => {
                p.record.decision = decision.kind().to_string();
                p.record.refused = refused
                    .iter()
                    .map(|(s, e)| (s.to_string(), e.clone()))
                    .collect();
                append_record(&p.initrd, &p.record)?;
                return Ok(p);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                step(start, &format!("{slot} REFUSED: {msg}"));
                refused.push((slot, msg));
            }
        }
    }
}

/// The security-version floor from the TPM (none without a TPM, or when it
/// holds none). A TPM that cannot be read is said on the console and means
/// no floor: the boot goes on.
fn security_floor(start: Instant) -> Option<u64> {
    let floor = match drover_core::measured::tpm::device() {
        None => None,
        Some(dev) => match crate::tpm::floor(&dev) {
            Ok(f) => f,
            Err(e) => {
                step(
                    start,
                    &format!("the TPM's security-version floor could not be read ({e:#}); booting without it"),
                );
                None
            }
        },
    };
    if let Some(f) = floor {
        step(start, &format!("security-version floor {f} (TPM)"));
    }
    floor
}

/// Where a slot image is read from: a partition of the disk, or (live
/// boot) the slot image file on the installation media.
#[derive(Debug)]
pub struct SlotSource<'a> {
    /// `USR-A`, `USR-B`, or `LIVE`: what the command line and the
    /// measurements name.
    pub label: &'a str,
    /// The disk or file, for messages.
    pub path: &'a Path,
    /// The open disk or file.
    pub file: &'a File,
    /// Where the slot image starts in it.
    pub offset: u64,
    /// Bytes available from there.
    pub size: u64,
    /// The block device dm-verity reads (the partition or a loop device).
    pub node: PathBuf,
    /// Check every block before booting (a slot that never booted).
    pub full_check: bool,
    /// Appended to the slot's command line (`drover.live`).
    pub extra_cmdline: &'a str,
}

/// Checks a slot image and prepares the kexec into it: manifest signature,
/// optionally every block, the kernel and initramfs read through
/// dm-verity against the manifest's digests, and the measurements.
pub fn check_and_prepare(
    src: &SlotSource<'_>,
    keys: &TrustedKeys,
    start: Instant,
) -> anyhow::Result<Prepared> {
    let (disk, file, offset, slot) = (src.path, src.file, src.offset, src.label);
    let part = Window { file, offset };
    let v = slot_image::open_verified(&part, src.size, disk, keys)?;
    let m = &v.verified.manifest;
    step(
        start,
        &format!(
            "{slot}: manifest of {} {} signed by {}",
            m.os.name,
            m.os.version,
            v.verified.key.short_id()
        ),
    );
    if src.full_check {
        slot_image::verify_data(file, disk, offset, &v)?;
        step(
            start,
            &format!("{slot}: never booted successfully, so every block was checked: verity holds"),
        );
    }
    let boot = m
        .boot
        .as_ref()
        .context("the manifest names no kernel: this slot cannot be booted")?;
    let node = &src.node;
    let name = "drover-stage-usr";
    let _ = dm::remove(name);
    let dev = dm::create_verity(
        name,
        &VerityTable {
            data_dev: node.display().to_string(),
            hash_dev: node.display().to_string(),
            data_blocks: v.params.data_blocks,
            hash_offset: v.locator.hash_offset,
            salt: v.params.salt.clone(),
            root_hash: v.root_hash,
            restart_on_corruption: false,
        },
    )?;
    let mnt = Path::new(drover_core::paths::RUN_DIR).join("stage-usr");
    let mnt = mnt.as_path();
    std::fs::create_dir_all(mnt)?;
    nix::mount::mount(
        Some(&dev),
        mnt,
        Some("erofs"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("mounting {} (erofs) on {}", dev.display(), mnt.display()))?;
    let result = (|| {
        let kernel = std::fs::read(mnt.join(&boot.kernel.path))
            .with_context(|| format!("reading the slot kernel {}", boot.kernel.path))?;
        let initramfs = std::fs::read(mnt.join(&boot.initramfs.path))
            .with_context(|| format!("reading the slot initramfs {}", boot.initramfs.path))?;
        for (what, data, want) in [
            ("kernel", &kernel, &boot.kernel.sha256),
            ("initramfs", &initramfs, &boot.initramfs.sha256),
        ] {
            let got = sha256_hex(data);
            if &got != want {
                bail!("the slot {what} has sha256 {got}, the signed manifest says {want}");
            }
        }
        step(
            start,
            &format!("{slot}: kernel and initramfs read through dm-verity match the manifest"),
        );
        Ok((kernel, initramfs))
    })();
    let _ = nix::mount::umount(mnt);
    let _ = dm::remove(name);
    let (kernel, initramfs) = result?;

    let mut cmdline = measure::slot_cmdline(m, slot)?;
    if !src.extra_cmdline.is_empty() {
        cmdline = format!("{cmdline} {}", src.extra_cmdline);
    }
    let events = measure::expected_events(slot, &v.verified.digest, m, &v.root_hash, &cmdline);
    let (measured, banks, not_measured_reason) = match drover_core::measured::tpm::device() {
        None => (false, Vec::new(), Some("no TPM device".to_string())),
        Some(dev) => match crate::tpm::extend(&dev, &events) {
            Ok(banks) => {
                let names: Vec<&str> = banks.iter().map(|b| b.name()).collect();
                step(
                    start,
                    &format!(
                        "{slot}: {} events measured into PCR {} ({})",
                        events.len(),
                        measure::PCR,
                        names.join(", ")
                    ),
                );
                (true, banks, None)
            }
            Err(e) => (false, Vec::new(), Some(format!("{e:#}"))),
        },
    };
    if let Some(why) = &not_measured_reason {
        step(start, &format!("{slot}: NOT MEASURED ({why}); booting on"));
    }
    let record = BootRecord {
        slot: slot.into(),
        decision: String::new(),
        version: m.os.version.clone(),
        refused: Vec::new(),
        measured,
        not_measured_reason,
        pcr: measure::PCR,
        banks,
        events,
    };
    let dir = Path::new(drover_core::paths::RUN_DIR);
    std::fs::create_dir_all(dir)?;
    let kpath = dir.join("slot-kernel");
    std::fs::write(&kpath, &kernel)?;
    // The record goes on once the caller has filled in the decision.
    std::fs::write(dir.join("slot-initrd"), &initramfs)?;
    Ok(Prepared {
        slot: slot.to_string(),
        kernel: kpath,
        initrd: dir.join("slot-initrd"),
        cmdline,
        record,
    })
}

/// Appends a second cpio archive holding the boot record to the slot
/// initramfs (the kernel unpacks concatenated archives in order).
pub fn append_record(path: &Path, record: &BootRecord) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let json = record.to_json();
    let mut c = drover_core::cpio::Cpio::new(Vec::new(), 0);
    c.dir("etc")?;
    c.dir("etc/drover")?;
    c.file(boot_record::IN_INITRAMFS, 0o644, &json)?;
    f.write_all(&c.finish()?)?;
    Ok(())
}

/// Finds the disk with the slots, waiting up to 10 s for devices to appear.
pub fn find_disk(start: Instant) -> anyhow::Result<PathBuf> {
    for _ in 0..100 {
        let parts = drover_core::devices::partitions(Path::new("/sys/class/block"));
        if let Some(d) = drover_core::devices::slot_disk(&parts) {
            step(start, &format!("slots found on {}", d.display()));
            return Ok(d);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("no disk with USR-A and USR-B partitions appeared within 10 s")
}
