//! Step 1 of an install: everything that can be checked before the disk
//! is written. Any error here leaves the disk as it was.

use std::fs::File;
use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::keys::TrustedKeys;
use drover_core::layout::LayoutSpec;
use drover_core::slot_image;

use super::device::{open_target, size_of_target};
use super::{ImageSource, InstallOptions, Refused, Steps, MIB};
use crate::media::InstallInfo;

/// What the checks found, for the writing.
pub(super) struct Checked {
    /// The layout, with the new disk's GUID.
    pub(super) spec: LayoutSpec,
    pub(super) keys: TrustedKeys,
    pub(super) config_text: Option<String>,
    pub(super) slot_path: PathBuf,
    pub(super) slot_len: u64,
    pub(super) verified: slot_image::VerifiedSlot,
    pub(super) esp_path: PathBuf,
    pub(super) esp_file: File,
    pub(super) esp_len: u64,
    pub(super) disk: File,
    pub(super) block: bool,
    pub(super) size: u64,
    /// Keeps a downloaded slot image until the install is done.
    pub(super) _download: Option<tempfile::NamedTempFile>,
}

fn random_guid() -> anyhow::Result<uuid::Uuid> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness for the disk GUID"))?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid())
}

/// Step 1: everything that can be checked before the disk is written.
pub(super) fn check(opts: &InstallOptions, steps: &Steps) -> anyhow::Result<Checked> {
    let info = InstallInfo::read(&opts.media)?;
    let keys = TrustedKeys::load(&opts.keys).context("loading the trusted keys")?;

    // 1. Checks, before anything is written.
    let config_text = match &opts.config {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the node config {}", p.display()))?;
            drover_os_config::check(&[drover_os_config::Source {
                name: p.display().to_string(),
                text: text.clone(),
            }])
            .map_err(|e| Refused(format!("the node config {} is not valid: {e}", p.display())))?;
            steps.say(&format!("node config {} is valid", p.display()));
            Some(text)
        }
    };
    let mut download_file = None;
    let slot_path = match &opts.image {
        ImageSource::Media => opts.media.join(&info.slot_image),
        ImageSource::File(p) => p.clone(),
        ImageSource::Url(u) => {
            let d = super::fetch::download(u, info.usr_mib * MIB, steps)?;
            let p = d.path().to_owned();
            download_file = Some(d);
            p
        }
    };
    let slot_file = File::open(&slot_path)
        .with_context(|| format!("opening the slot image {}", slot_path.display()))?;
    let slot_len = slot_file.metadata()?.len();
    let v = slot_image::open_verified(&slot_file, slot_len, &slot_path, &keys)
        .map_err(|e| Refused(format!("the slot image does not verify: {e}")))?;
    let m = &v.verified.manifest;
    if v.image_size > info.usr_mib * MIB {
        return Err(Refused(format!(
            "the slot image is {} MiB, the USR partitions of this layout {} MiB",
            v.image_size.div_ceil(MIB),
            info.usr_mib
        ))
        .into());
    }
    steps.say(&format!(
        "slot image {} {}: signature by {} holds",
        m.os.name,
        m.os.version,
        v.verified.key.short_id()
    ));
    let esp_path = opts.media.join(&info.esp_image);
    let esp_file = File::open(&esp_path)
        .with_context(|| format!("opening the ESP image {}", esp_path.display()))?;
    let esp_len = esp_file.metadata()?.len();
    if esp_len > info.esp_mib * MIB {
        return Err(Refused(format!(
            "the ESP image is {} MiB, the ESP {} MiB",
            esp_len.div_ceil(MIB),
            info.esp_mib
        ))
        .into());
    }
    drover_core::measured::esp::check_stage(&esp_file, 0, esp_len, &keys).map_err(|e| {
        Refused(format!(
            "the ESP image {} does not match its signed reference values: {e}",
            esp_path.display()
        ))
    })?;
    steps.say("ESP image: systemd-boot, stage kernel and initramfs match the signed manifest");

    let guid = random_guid()?;
    let spec = info.layout(guid);
    let (disk, block) = open_target(&opts.disk)?;
    let size = size_of_target(&disk, block)?;
    if size < spec.disk_size() {
        return Err(Refused(format!(
            "{} is {} MiB; Drover needs at least {} MiB (ESP {} + USR-A {} + USR-B {} + OEM {} + ROOT {} + 2 for the partition tables)",
            opts.disk.display(),
            size / MIB,
            spec.disk_size() / MIB,
            spec.esp_mib,
            spec.usr_mib,
            spec.usr_mib,
            spec.oem_mib,
            spec.root_mib
        ))
        .into());
    }
    steps.say(&format!(
        "{}: {} MiB, not in use",
        opts.disk.display(),
        size / MIB
    ));
    Ok(Checked {
        spec,
        keys,
        config_text,
        slot_path,
        slot_len,
        verified: v,
        esp_path,
        esp_file,
        esp_len,
        disk,
        block,
        size,
        _download: download_file,
    })
}
