//! `drover-install`: puts Drover on a disk from the installation media
//! (the ISO's `/drover` directory, or a build's output directory).
//!
//! Order, so that a failed or interrupted install never leaves a disk that
//! half boots:
//!
//! 1. Everything is checked before the disk is touched: the node config
//!    validates, the slot image's signature holds (trusted keys), the ESP
//!    image's boot stage matches the signed reference values it carries,
//!    the disk is not mounted or otherwise in use (`O_EXCL`), and it is big
//!    enough.
//! 2. Both partition tables (and the protective MBR) are wiped and synced:
//!    from here on the disk has nothing a firmware would boot.
//! 3. The partitions' ranges are zeroed, the ESP, the slot image (USR-A),
//!    OEM (with the node config) and ROOT are written and synced.
//! 4. What was written is read back: the ESP and OEM bytes, and every
//!    block of USR-A against the signed verity root hash.
//! 5. The GPT is written last (USR-A priority 1, successful; USR-B empty,
//!    priority 0), and synced: the commit point.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use drover_core::keys::TrustedKeys;
use drover_core::layout::{self, LayoutSpec};
use drover_core::slot::layout as parts;
use drover_core::slot_image::{self, Window};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

/// The file on the media that describes the install.
pub const INSTALL_INFO: &str = "install.json";
/// Where the live system finds the media (the ISO's `/drover`).
pub const LIVE_MEDIA: &str = drover_core::paths::LIVE_MEDIA_DIR;
/// The trusted keys in a Drover system.
pub const SYSTEM_KEYS: &str = drover_core::paths::SYSTEM_KEYS;

/// `install.json`: what `drover build` tells the installer. Not signed:
/// it only names files and sizes; the slot image and the ESP's boot stage
/// are checked against signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct InstallInfo {
    /// Format version, 1.
    pub format: u32,
    /// OS name.
    pub os: String,
    /// Release version of the slot image on the media.
    pub version: String,
    /// ESP size, MiB.
    pub esp_mib: u64,
    /// Each USR partition, MiB.
    pub usr_mib: u64,
    /// OEM, MiB.
    pub oem_mib: u64,
    /// ROOT before it grows on first boot, MiB.
    pub root_mib: u64,
    /// The ESP image, relative to the media directory.
    pub esp_image: String,
    /// The slot image, relative to the media directory.
    pub slot_image: String,
}

impl InstallInfo {
    /// The layout with `disk_guid`.
    pub fn layout(&self, disk_guid: uuid::Uuid) -> LayoutSpec {
        LayoutSpec {
            esp_mib: self.esp_mib,
            usr_mib: self.usr_mib,
            oem_mib: self.oem_mib,
            root_mib: self.root_mib,
            disk_guid,
        }
    }

    /// Reads `install.json` from `media`.
    pub fn read(media: &Path) -> anyhow::Result<Self> {
        let p = media.join(INSTALL_INFO);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (is {} the installation media: the ISO's /drover, or a build's output directory?)",
                p.display(),
                media.display()
            )
        })?;
        let info: InstallInfo = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Drover install description", p.display()))?;
        if info.format != 1 {
            bail!(
                "{}: format {} (this installer knows format 1)",
                p.display(),
                info.format
            );
        }
        Ok(info)
    }
}

/// Where the slot image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// The one on the media.
    Media,
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL (downloaded to a temporary file,
    /// then checked like a file).
    Url(String),
}

impl ImageSource {
    /// `URL` or `FILE` as given on the command line.
    pub fn parse(s: &str) -> Self {
        match drover_core::location::Location::parse(s) {
            drover_core::location::Location::Url(u) => Self::Url(u),
            drover_core::location::Location::Local(p) => Self::File(p),
        }
    }
}

/// What to install where.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The target disk (a block device, or a disk image file).
    pub disk: PathBuf,
    /// The media directory (with `install.json`).
    pub media: PathBuf,
    /// The slot image.
    pub image: ImageSource,
    /// Node config for the OEM partition.
    pub config: Option<PathBuf>,
    /// Trusted public keys (files or directories).
    pub keys: Vec<PathBuf>,
    /// Print a line per step on stderr.
    pub verbose: bool,
}

/// What was installed (`--json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstallReport {
    /// The disk.
    pub disk: String,
    /// Its size in bytes.
    pub disk_size: u64,
    /// The new disk GUID.
    pub disk_guid: String,
    /// OS name.
    pub os: String,
    /// Installed version (in USR-A).
    pub version: String,
    /// Verity root hash of USR-A.
    pub root_hash: String,
    /// The key that signed the slot image.
    pub signed_by: String,
    /// Whether a node config went onto OEM.
    pub config: bool,
    /// Seconds the install took.
    pub seconds: f64,
}

/// An error before the disk was touched: the disk is as it was.
#[derive(Debug, thiserror::Error)]
#[error("refusing to install: {0}")]
pub struct Refused(pub String);

struct Steps {
    verbose: bool,
    start: Instant,
}

impl Steps {
    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!(
                "drover-install: [{:>6.1}s] {msg}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

mod ioctl {
    // SAFETY (all): `<linux/fs.h>` block device ioctls; the arguments are
    // a u64 out-parameter, a [start, length] pair, and none.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
}

/// `major:minor` of the disk and all its partitions, from sysfs.
fn device_numbers(disk: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(disk)?;
    let rdev = meta.rdev();
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}"))
        .with_context(|| format!("{} in sysfs", disk.display()))?;
    if sys.join("partition").exists() {
        return Err(Refused(format!(
            "{} is a partition; give the whole disk (Drover writes its own partition table; nothing was written)",
            disk.display()
        ))
        .into());
    }
    let mut out = vec![(format!("{maj}:{min}"), disk.to_owned())];
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for e in std::fs::read_dir(&sys)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&name) && e.path().join("partition").exists() {
            if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                out.push((d.trim().to_string(), Path::new("/dev").join(&n)));
            }
        }
    }
    Ok(out)
}

/// Refuses a block device that is mounted, or holds a mounted partition,
/// or is a swap or device-mapper member.
fn check_not_in_use(disk: &Path) -> anyhow::Result<()> {
    let devs = device_numbers(disk)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        if let Some((_, dev)) = devs.iter().find(|(n, _)| n == f[2]) {
            return Err(Refused(format!(
                "{} is mounted on {} (unmount it first; nothing was written)",
                dev.display(),
                f[4]
            ))
            .into());
        }
    }
    for (_, dev) in &devs {
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        let holders = name
            .map(|n| Path::new("/sys/class/block").join(n).join("holders"))
            .and_then(|h| std::fs::read_dir(h).ok())
            .map(|rd| rd.count())
            .unwrap_or(0);
        if holders > 0 {
            return Err(Refused(format!(
                "{} is in use by device-mapper, RAID or another stacked device (see its holders/ in sysfs; nothing was written)",
                dev.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Opens the target for writing. A block device is opened with `O_EXCL`,
/// which the kernel refuses while anything (a mount, a swap, another
/// program's exclusive open) holds it.
fn open_target(disk: &Path) -> anyhow::Result<(File, bool)> {
    let meta =
        std::fs::metadata(disk).with_context(|| format!("{} does not exist", disk.display()))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        return Err(Refused(format!(
            "{} is neither a block device nor a disk image file",
            disk.display()
        ))
        .into());
    }
    if block {
        check_not_in_use(disk)?;
    }
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if block {
        o.custom_flags(nix::libc::O_EXCL);
    }
    match o.open(disk) {
        Ok(f) => Ok((f, block)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => Err(Refused(format!(
            "{} is in use (mounted, a swap, or opened exclusively by another program; nothing was written)",
            disk.display()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("opening {} for writing", disk.display())),
    }
}

fn size_of_target(f: &File, block: bool) -> anyhow::Result<u64> {
    if block {
        let mut n = 0u64;
        // SAFETY: see the ioctl module.
        unsafe { ioctl::blkgetsize64(f.as_raw_fd(), &mut n) }
            .context("asking the disk for its size")?;
        Ok(n)
    } else {
        Ok(f.metadata()?.len())
    }
}

/// Zeroes `len` bytes at `offset`: BLKZEROOUT on a block device (fast where
/// the device supports write-zeroes), holes punched in a file.
fn zero_range(f: &File, block: bool, offset: u64, len: u64) -> anyhow::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if block {
        let range = [offset, len];
        // SAFETY: see the ioctl module; `range` lives across the call.
        unsafe { ioctl::blkzeroout(f.as_raw_fd(), &range) }
            .with_context(|| format!("zeroing {} MiB at {} MiB", len >> 20, offset >> 20))?;
        return Ok(());
    }
    use nix::fcntl::{fallocate, FallocateFlags};
    if fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .is_err()
    {
        let zeros = vec![0u8; MIB as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MIB);
            f.write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
    }
    Ok(())
}

fn sha256_range(f: &File, offset: u64, len: u64) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// Downloads `url` into a temporary file, with the size shown as it goes.
fn download(url: &str, steps: &Steps) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix("drover-install-")
        .suffix(".img")
        .tempfile()
        .context("creating a temporary file for the download")?;
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut resp = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("downloading {url}"))?;
    let total = resp.content_length();
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0u64;
    let mut shown = 0u64;
    loop {
        let k = resp
            .read(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        if k == 0 {
            break;
        }
        tmp.write_all(&buf[..k])?;
        n += k as u64;
        if n - shown >= 64 * MIB {
            shown = n;
            steps.say(&match total {
                Some(t) => format!("downloaded {} of {} MiB", n >> 20, t >> 20),
                None => format!("downloaded {} MiB", n >> 20),
            });
        }
    }
    tmp.as_file().sync_all()?;
    steps.say(&format!("downloaded {url} ({} MiB)", n >> 20));
    Ok(tmp)
}

fn random_guid() -> anyhow::Result<uuid::Uuid> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness for the disk GUID"))?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid())
}

/// What the checks found, for the writing.
struct Checked {
    /// The layout, with the new disk's GUID.
    spec: LayoutSpec,
    keys: TrustedKeys,
    config_text: Option<String>,
    slot_path: PathBuf,
    slot_len: u64,
    verified: slot_image::VerifiedSlot,
    esp_path: PathBuf,
    esp_file: File,
    esp_len: u64,
    disk: File,
    block: bool,
    size: u64,
    /// Keeps a downloaded slot image until the install is done.
    _download: Option<tempfile::NamedTempFile>,
}

/// Installs. An error that is a [`Refused`] means the disk was not
/// touched; any other error came after the old tables were wiped.
pub fn install(opts: &InstallOptions) -> anyhow::Result<InstallReport> {
    let steps = Steps {
        verbose: opts.verbose,
        start: Instant::now(),
    };
    let c = check(opts, &steps).map_err(|e| match e.downcast::<Refused>() {
        Ok(r) => anyhow::Error::from(r),
        Err(e) => Refused(format!("{e:#}")).into(),
    })?;
    write(opts, &steps, c)
}

/// Step 1: everything that can be checked before the disk is written.
fn check(opts: &InstallOptions, steps: &Steps) -> anyhow::Result<Checked> {
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
            let d = download(u, steps)?;
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

/// Steps 2 to 5.
fn write(opts: &InstallOptions, steps: &Steps, c: Checked) -> anyhow::Result<InstallReport> {
    let (disk, block) = (&c.disk, c.block);
    let spec = &c.spec;
    let m = &c.verified.verified.manifest;

    // 2. No table: from here the disk boots nothing until step 5.
    zero_range(disk, block, 0, MIB)?;
    zero_range(disk, block, c.size - MIB, MIB)?;
    disk.sync_all()?;
    if block {
        // SAFETY: see the ioctl module. The kernel drops the old
        // partitions; failure (a busy partition) was refused above.
        let _ = unsafe { ioctl::blkrrpart(disk.as_raw_fd()) };
    }
    steps.say("old partition tables wiped");

    // 3. Contents. The table is computed now and written in step 5.
    let range = |n: u32| spec.byte_range(n).expect("the layout has it");
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    for p in spec.placed() {
        zero_range(disk, block, p.offset, p.len)?;
    }
    let (o, l) = range(parts::ESP.0);
    crate::build::disk::copy_into(&c.esp_path, disk, o, l, "the ESP image")?;
    steps.say("ESP written");
    let (usr_off, l) = range(parts::USR_A.0);
    crate::build::disk::copy_into(&c.slot_path, disk, usr_off, l, "the slot image")?;
    steps.say(&format!("USR-A written ({} MiB)", c.slot_len >> 20));
    let fs = crate::build::disk::oem_and_root(spec, work.path(), c.config_text.as_deref())?;
    let (oem_off, oem_len) = range(parts::OEM.0);
    crate::build::disk::copy_into(&fs.oem, disk, oem_off, oem_len, "the OEM file system")?;
    let (o, l) = range(parts::ROOT.0);
    crate::build::disk::copy_into(&fs.root, disk, o, l, "the ROOT file system")?;
    disk.sync_all()?;
    steps.say(&format!(
        "OEM ({}) and ROOT written and synced",
        if c.config_text.is_some() {
            "with the node config"
        } else {
            "no node config"
        }
    ));

    // 4. Read back.
    let (esp_off, esp_part) = range(parts::ESP.0);
    let want = sha256_range(&c.esp_file, 0, c.esp_len)?;
    if sha256_range(disk, esp_off, c.esp_len)? != want {
        bail!("the ESP read back differs from what was written: the disk is left without a partition table");
    }
    drover_core::measured::esp::check_stage(disk, esp_off, esp_part, &c.keys)
        .map_err(|e| anyhow::anyhow!("the ESP on the disk: {e}"))?;
    let oem_img = File::open(&fs.oem)?;
    if sha256_range(disk, oem_off, spec.oem_mib * MIB)?
        != sha256_range(&oem_img, 0, spec.oem_mib * MIB)?
    {
        bail!("OEM read back differs from what was written: the disk is left without a partition table");
    }
    let (_, usr_len) = range(parts::USR_A.0);
    let written = slot_image::open_verified(
        &Window {
            file: disk,
            offset: usr_off,
        },
        usr_len,
        &opts.disk,
        &c.keys,
    )?;
    slot_image::verify_data(disk, &opts.disk, usr_off, &written).map_err(|e| {
        anyhow::anyhow!(
            "USR-A as written does not verify: {e}; the disk is left without a partition table"
        )
    })?;
    steps
        .say("read back: ESP and OEM bytes, and every block of USR-A against the signed root hash");

    // 5. The commit point.
    let mut target = disk;
    layout::create(&mut target, &opts.disk, spec)?;
    disk.sync_all()?;
    if block {
        // SAFETY: see the ioctl module.
        if let Err(e) = unsafe { ioctl::blkrrpart(disk.as_raw_fd()) } {
            steps.say(&format!(
                "the kernel did not re-read the partition table ({e}); it will on the next boot"
            ));
        }
    }
    steps.say("partition table written and synced: the disk boots USR-A");
    Ok(InstallReport {
        disk: opts.disk.display().to_string(),
        disk_size: c.size,
        disk_guid: spec.disk_guid.to_string(),
        os: m.os.name.clone(),
        version: m.os.version.clone(),
        root_hash: m.verity.root_hash.clone(),
        signed_by: c.verified.verified.key.short_id(),
        config: c.config_text.is_some(),
        seconds: (steps.start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}
