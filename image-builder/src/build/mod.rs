//! `drover build`: image spec → root file system → /usr tree → EROFS →
//! signed slot image → ESP → disk image (raw and qcow2), with `build.json`.
//!
//! Everything is built in a scratch directory inside the output directory
//! and renamed into place only at the end, `build.json` last: a build that
//! fails leaves no output that looks complete.

pub mod disk;
pub mod esp;
pub mod initramfs;
pub mod iso;
pub mod rootfs;
pub mod sbom;
pub mod usr;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_core::keys::SigningKey;
use drover_core::layout::LayoutSpec;
use drover_core::manifest::{BootFiles, FileRef, OsRelease, ReferenceValue};
use drover_core::slot_image::{self, SealInput};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::ImageSpec;

/// On the stage's command line: boot the slot image on the ISO.
pub const LIVE_FLAG: &str = drover_core::paths::LIVE_FLAG;

/// Everything a build needs besides the spec.
#[derive(Debug)]
pub struct BuildOptions {
    /// Signing key.
    pub key: SigningKey,
    /// Output directory.
    pub out: PathBuf,
    /// Bring-your-own root file system instead of mmdebstrap.
    pub rootfs: Option<PathBuf>,
    /// Where to keep a copy of the root file system as made, before the
    /// spec's files are added (`--keep-rootfs`).
    pub keep_rootfs: Option<PathBuf>,
    /// The `drover-boot` binary for both initramfs images.
    pub boot_binary: PathBuf,
    /// The directory with `drover-agent` and `droverctl`.
    pub agent_binaries: PathBuf,
    /// Package cache directory.
    pub cache: PathBuf,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// Skip the disk images (slot image and manifest only).
    pub slot_only: bool,
    /// Words for the ISO's boot entry that make its live system install
    /// unattended (`drover.install=/dev/vda`, …); empty for an ISO that
    /// waits for someone to run `drover-install`.
    pub live_install: Vec<String>,
    /// Progress output.
    pub progress: Progress,
}

/// How much to tell the user while building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Spinners and a line per finished stage, on stderr.
    Normal,
    /// Nothing but errors.
    Quiet,
}

/// A file in the output, described in `build.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Artifact {
    /// File name in the output directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// One stage and how long it took.
#[derive(Debug, Serialize, Deserialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// `build.json`, written by `drover build` and read back with this type
/// (`drover attest-verify --build-json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildReport {
    /// OS name.
    pub os: String,
    /// Release version.
    pub version: String,
    /// Security version.
    pub security_version: u64,
    /// `SOURCE_DATE_EPOCH` used.
    pub source_date_epoch: u64,
    /// Kernel version in the slot.
    pub kernel_version: String,
    /// Verity root hash of the slot.
    pub root_hash: String,
    /// SHA-256 of the signed manifest bytes.
    pub manifest_sha256: String,
    /// Output files.
    pub artifacts: Vec<Artifact>,
    /// Reference values of the boot stage on the ESP (what the firmware
    /// measures): systemd-boot, stage kernel, stage initramfs.
    pub boot_stage: Vec<ReferenceValue>,
    /// The Debian packages in the image, `name:arch version`, sorted (the
    /// SBOM files among the artifacts say more of each).
    pub packages: Vec<String>,
    /// Time per stage.
    pub stages: Vec<StageTime>,
}

struct Stages {
    progress: Progress,
    times: Vec<StageTime>,
}

impl Stages {
    fn run<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let bar = if self.progress == Progress::Normal {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix:>9} {msg} {elapsed}")
                    .expect("valid template"),
            );
            b.set_prefix(name);
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            Some(b)
        } else {
            None
        };
        let t = Instant::now();
        let r = f().with_context(|| format!("stage {name}: {what}"));
        let secs = t.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
            let mark = if r.is_ok() { "done" } else { "FAILED" };
            eprintln!("{name:>9} {mark} in {secs:.1} s: {what}");
        }
        self.times.push(StageTime {
            stage: name.to_string(),
            seconds: (secs * 10.0).round() / 10.0,
        });
        r
    }
}

/// The size and SHA-256 (hex) of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

fn derive(tag: &str, spec: &ImageSpec, epoch: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"drover build\0");
    h.update(tag.as_bytes());
    h.update([0]);
    h.update(spec.os.name.as_bytes());
    h.update([0]);
    h.update(spec.os.version.as_bytes());
    h.update([0]);
    h.update(epoch.to_le_bytes());
    h.finalize().into()
}

fn uuid_from(b: [u8; 32]) -> uuid::Uuid {
    uuid::Builder::from_random_bytes(b[..16].try_into().expect("16 bytes")).into_uuid()
}

fn file_ref(usr: &Path, rel: &str) -> anyhow::Result<FileRef> {
    let (size, sha256) = sha256_file(&usr.join(rel))?;
    Ok(FileRef {
        path: rel.to_string(),
        size,
        sha256,
    })
}

/// Runs mkfs.erofs the way Drover does: lz4hc, block-aligned file data,
/// fixed timestamps and UUID.
pub fn mkfs_erofs(usr: &Path, out: &Path, epoch: u64, uuid: uuid::Uuid) -> anyhow::Result<()> {
    let o = Command::new("mkfs.erofs")
        .args(erofs_args(epoch, uuid))
        .arg("--quiet")
        .arg(out)
        .arg(usr)
        .output()
        .context("running mkfs.erofs (Debian package erofs-utils)")?;
    if !o.status.success() {
        bail!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// The mkfs.erofs options Drover uses (also for the benchmark's peer run).
pub fn erofs_args(epoch: u64, uuid: uuid::Uuid) -> Vec<String> {
    vec![
        "-zlz4hc".into(),
        // Block-aligned file data: unchanged files keep their 4 KiB blocks
        // between releases, which is what block-level deltas need.
        "-Enoinline_data".into(),
        format!("-T{epoch}"),
        format!("-U{uuid}"),
    ]
}

/// Runs a whole build. Returns the report that is also `build.json`.
pub fn build(spec: &ImageSpec, opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".drover-build-")
        .tempdir_in(&opts.out)
        .with_context(|| format!("creating a scratch directory in {}", opts.out.display()))?;
    let w = work.path();
    let mut st = Stages {
        progress: opts.progress,
        times: Vec::new(),
    };
    let epoch = opts.epoch;
    let trusted = spec.trusted_keys(&opts.key.public_key())?;

    let root = w.join("root");
    std::fs::create_dir_all(&root)?;
    let source = match &opts.rootfs {
        Some(p) => rootfs::Source::Given(p),
        None => rootfs::Source::Debian(&spec.debian),
    };
    let what = match &opts.rootfs {
        Some(p) => format!("copying the root file system from {}", p.display()),
        None => format!(
            "mmdebstrap {} ({} packages, cache {})",
            spec.debian.suite,
            spec.debian.packages.len(),
            opts.cache.display()
        ),
    };
    st.run("rootfs", &what, || {
        rootfs::create(&source, &root, &opts.cache, epoch, &w.join("rootfs.log"))
    })?;
    if let Some(keep) = &opts.keep_rootfs {
        st.run(
            "keep-rootfs",
            &format!("keeping the root file system at {}", keep.display()),
            || rootfs::keep(&root, keep),
        )?;
    }

    let packages = rootfs::installed_packages(&root)?;
    let tree = st.run("usr", "making a /usr-only tree", || {
        usr::prepare(&root, spec, &trusted, Some(&opts.agent_binaries))
    })?;

    let trusted_pem: Vec<(String, Vec<u8>)> = trusted
        .iter()
        .enumerate()
        .map(|(i, key)| {
            (
                format!(
                    "{}/{i:02}-{}.pem",
                    drover_core::paths::initramfs::KEYS,
                    key.short_id()
                ),
                key.to_pem().into_bytes(),
            )
        })
        .collect();
    let stage_initrd = w.join("stage-initrd.img");
    st.run(
        "initramfs",
        "assembling the slot and stage initramfs (drover-boot + modules)",
        || {
            let slot = initramfs::build(&initramfs::InitramfsInput {
                boot_binary: &opts.boot_binary,
                mode: "slot",
                modules_dir: &tree.modules_dir(),
                modules: &spec.kernel.modules,
                extra: Vec::new(),
                mtime: epoch,
            })?;
            std::fs::write(tree.usr.join(tree.initramfs_rel()), slot)?;
            let stage = initramfs::build(&initramfs::InitramfsInput {
                boot_binary: &opts.boot_binary,
                mode: "stage",
                modules_dir: &tree.modules_dir(),
                modules: &spec.kernel.modules,
                extra: trusted_pem.clone(),
                mtime: epoch,
            })?;
            std::fs::write(&stage_initrd, stage)?;
            Ok(())
        },
    )?;

    let sbom_files = st.run(
        "sbom",
        "SBOM (SPDX 2.3 and CycloneDX 1.5) from the dpkg database",
        || {
            let mut drover_files = Vec::new();
            for b in ["drover-agent", "droverctl", "drover-install"] {
                let p = tree.usr.join("bin").join(b);
                if p.is_file() {
                    drover_files.push((b.to_string(), sha256_file(&p)?.1));
                }
            }
            let boot = initramfs::read_stripped(&opts.boot_binary)?;
            drover_files.push(("drover-boot".into(), hex::encode(Sha256::digest(&boot))));
            let debian_version = sbom::debian_version(&root);
            let input = sbom::SbomInput {
                os_name: &spec.os.name,
                os_version: &spec.os.version,
                debian_version: debian_version.as_deref(),
                packages: &packages,
                drover_files: &drover_files,
                created: epoch,
                unique: derive("sbom", spec, epoch)[..16]
                    .try_into()
                    .expect("16 bytes"),
            };
            let dir = tree.usr.join(drover_core::paths::SBOM_DIR_IN_USR);
            std::fs::create_dir_all(&dir)?;
            let mut files = Vec::new();
            for (name, doc, component) in [
                (sbom::SPDX_FILE, sbom::spdx(&input), "sbom-spdx"),
                (
                    sbom::CYCLONEDX_FILE,
                    sbom::cyclonedx(&input),
                    "sbom-cyclonedx",
                ),
            ] {
                let mut bytes = serde_json::to_vec_pretty(&doc)?;
                bytes.push(b'\n');
                std::fs::write(dir.join(name), &bytes)?;
                let out = w.join(name);
                std::fs::write(&out, &bytes)?;
                files.push((name, out, component, hex::encode(Sha256::digest(&bytes))));
            }
            Ok(files)
        },
    )?;

    let boot = BootFiles {
        kernel: file_ref(&tree.usr, &tree.kernel_rel())?,
        initramfs: file_ref(&tree.usr, &tree.initramfs_rel())?,
        cmdline: spec.kernel.cmdline.clone(),
    };
    // The boot stage as the firmware will measure it (see
    // `drover_core::measured::bootcheck::STAGE_COMPONENTS`): signed in the manifest,
    // so that a node and a remote verifier can check the ESP it booted
    // from, and the manifest goes onto the ESP with it.
    let systemd_boot = [root.join(esp::SYSTEMD_BOOT), Path::new("/").join(esp::SYSTEMD_BOOT)]
        .into_iter()
        .find(|p| p.is_file())
        .context("no systemd-boot EFI binary in the image (add systemd-boot-efi to debian.packages) or on this host")?;
    let stage_cmdline = format!("{} drover.stage", spec.kernel.cmdline);
    let kernel = tree.usr.join(tree.kernel_rel());
    let authenticode = |p: &Path| -> anyhow::Result<String> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        drover_core::measured::authenticode::sha256(&bytes)
            .map(hex::encode)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let boot_stage = vec![
        ReferenceValue {
            component: "systemd-boot".into(),
            sha256: authenticode(&systemd_boot)?,
        },
        ReferenceValue {
            component: "stage-kernel".into(),
            sha256: authenticode(&kernel)?,
        },
        ReferenceValue {
            component: "stage-cmdline".into(),
            sha256: hex::encode(Sha256::digest(esp::measured_cmdline(&stage_cmdline))),
        },
        ReferenceValue {
            component: "stage-initramfs".into(),
            sha256: sha256_file(&stage_initrd)?.1,
        },
    ];
    let mut reference = vec![
        ReferenceValue {
            component: "slot-kernel".into(),
            sha256: boot.kernel.sha256.clone(),
        },
        ReferenceValue {
            component: "slot-initramfs".into(),
            sha256: boot.initramfs.sha256.clone(),
        },
        ReferenceValue {
            component: "slot-cmdline".into(),
            sha256: hex::encode(Sha256::digest(boot.cmdline.as_bytes())),
        },
    ];
    reference.extend(boot_stage.iter().cloned());
    // Not measurements: the SBOM files in the slot, signed by digest so a
    // scanner can tell the SBOM it was handed is this release's.
    reference.extend(
        sbom_files
            .iter()
            .map(|(_, _, component, sha256)| ReferenceValue {
                component: component.to_string(),
                sha256: sha256.clone(),
            }),
    );

    let usr_img = w.join("usr.img");
    st.run(
        "erofs",
        "mkfs.erofs of /usr (lz4hc, block-aligned data)",
        || {
            mkfs_erofs(
                &tree.usr,
                &usr_img,
                epoch,
                uuid_from(derive("erofs uuid", spec, epoch)),
            )
        },
    )?;

    let (manifest, signed) = st.run("seal", "verity tree and signed manifest", || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&usr_img)?;
        Ok(slot_image::seal(
            &f,
            &usr_img,
            SealInput {
                os: OsRelease {
                    name: spec.os.name.clone(),
                    version: spec.os.version.clone(),
                    security_version: spec.os.security_version,
                },
                fs_kind: "erofs".into(),
                created: epoch,
                salt: derive("verity salt", spec, epoch).to_vec(),
                boot: Some(boot.clone()),
                reference,
            },
            &[&opts.key],
        )?)
    })?;
    let manifest_path = w.join("manifest.json");
    std::fs::write(&manifest_path, &signed.bytes)?;

    let mut outputs = vec![
        ("usr.img", usr_img.clone()),
        ("manifest.json", manifest_path.clone()),
    ];
    outputs.extend(
        sbom_files
            .into_iter()
            .map(|(name, path, _, _)| (name, path)),
    );
    if !opts.slot_only {
        let esp_img = w.join("esp.img");
        let envelope = w.join("manifest.sig");
        std::fs::write(&envelope, signed.to_envelope())?;
        st.run(
            "esp",
            "FAT32 ESP with systemd-boot and the boot stage",
            || {
                let id = derive("esp volume id", spec, epoch);
                esp::build(
                    &esp_img,
                    spec.disk.esp_mib,
                    &esp::EspInput {
                        systemd_boot: &systemd_boot,
                        kernel: &kernel,
                        initramfs: &stage_initrd,
                        cmdline: &stage_cmdline,
                        manifest: &envelope,
                        volume_id: u32::from_le_bytes(id[..4].try_into().expect("4 bytes")),
                        epoch,
                    },
                )
            },
        )?;
        let layout = LayoutSpec {
            esp_mib: spec.disk.esp_mib,
            usr_mib: spec.disk.usr_mib,
            oem_mib: spec.disk.oem_mib,
            root_mib: spec.disk.root_mib,
            disk_guid: uuid_from(derive("disk guid", spec, epoch)),
        };
        let raw = w.join("disk.raw");
        st.run(
            "disk",
            "GPT disk image (ESP, USR-A, USR-B, OEM, ROOT)",
            || {
                disk::build(
                    &raw,
                    &layout,
                    &disk::DiskInput {
                        esp: &esp_img,
                        usr: &usr_img,
                        work: w,
                    },
                )
            },
        )?;
        let qcow = w.join("disk.qcow2");
        st.run("qcow2", "qcow2 copy of the disk image", || {
            disk::qcow2(&raw, &qcow)
        })?;
        let info = w.join("install.json");
        std::fs::write(
            &info,
            serde_json::to_vec_pretty(&crate::media::InstallInfo {
                format: 1,
                os: spec.os.name.clone(),
                version: spec.os.version.clone(),
                esp_mib: spec.disk.esp_mib,
                usr_mib: spec.disk.usr_mib,
                oem_mib: spec.disk.oem_mib,
                root_mib: spec.disk.root_mib,
                esp_image: "esp.img".into(),
                slot_image: "usr.img".into(),
            })?,
        )?;
        let iso = w.join("drover.iso");
        st.run(
            "iso",
            "installation ISO (UEFI El Torito, live boot, installer)",
            || {
                let efi = w.join("efi.img");
                let needed = [&systemd_boot, &kernel, &stage_initrd, &envelope]
                    .iter()
                    .map(|p| std::fs::metadata(p).map(|m| m.len()))
                    .sum::<std::io::Result<u64>>()?;
                let id = derive("iso efi volume id", spec, epoch);
                esp::build(
                    &efi,
                    (needed >> 20).max(30) + 4,
                    &esp::EspInput {
                        systemd_boot: &systemd_boot,
                        kernel: &kernel,
                        initramfs: &stage_initrd,
                        cmdline: &[stage_cmdline.as_str(), LIVE_FLAG]
                            .into_iter()
                            .chain(opts.live_install.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" "),
                        manifest: &envelope,
                        volume_id: u32::from_le_bytes(id[..4].try_into().expect("4 bytes")),
                        epoch,
                    },
                )?;
                iso::build(
                    &iso,
                    &iso::IsoInput {
                        efi_image: &efi,
                        files: vec![
                            ("usr.img", &usr_img),
                            ("esp.img", &esp_img),
                            ("manifest.json", &manifest_path),
                            ("install.json", &info),
                        ],
                        epoch,
                    },
                )
            },
        )?;
        outputs.push(("disk.raw", raw));
        outputs.push(("disk.qcow2", qcow));
        outputs.push(("esp.img", esp_img));
        outputs.push(("install.json", info));
        outputs.push(("drover.iso", iso));
    }

    let mut artifacts = Vec::new();
    st.run("digests", "sha256 of the outputs", || {
        for (name, path) in &outputs {
            let (size, sha256) = sha256_file(path)?;
            artifacts.push(Artifact {
                file: name.to_string(),
                size,
                sha256,
            });
        }
        Ok(())
    })?;

    let report = BuildReport {
        os: spec.os.name.clone(),
        version: spec.os.version.clone(),
        security_version: spec.os.security_version,
        source_date_epoch: epoch,
        kernel_version: tree.kernel_version.clone(),
        root_hash: manifest.verity.root_hash.clone(),
        manifest_sha256: hex::encode(Sha256::digest(&signed.bytes)),
        artifacts,
        boot_stage,
        packages: packages.iter().map(rootfs::DebPackage::line).collect(),
        stages: st.times,
    };
    // Publish: old build.json first out, new build.json last in.
    let build_json = opts.out.join("build.json");
    let _ = std::fs::remove_file(&build_json);
    for (name, path) in &outputs {
        std::fs::rename(path, opts.out.join(name))
            .with_context(|| format!("moving {name} into place"))?;
    }
    let tmp = w.join("build.json");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
    std::fs::rename(&tmp, &build_json)?;
    Ok(report)
}
