//! `drover build`: from an image spec to a signed slot image and a disk image.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::keys::SigningKey;

use crate::build::{self, BuildOptions, Progress};
use crate::spec::ImageSpec;

/// Build a Drover image from an image spec.
///
/// Writes into DIR: usr.img (the slot image and update payload), manifest.json
/// (its signed manifest), disk.raw and disk.qcow2 (a bootable GPT disk), and
/// build.json (sizes, digests, root hash, reference values, time per stage),
/// which is written last. The image trusts the public half of --key (its
/// boot stage checks the slot against it, its agent takes updates signed by
/// it) and the spec's `[trust] keys`; a spec that would not trust the
/// signing key is refused, since that disk could not boot. Needs root (mmdebstrap in root mode), and the Debian
/// packages mmdebstrap, erofs-utils, dosfstools, mtools, e2fsprogs, qemu-utils.
/// Set SOURCE_DATE_EPOCH for reproducible output.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image spec (TOML), e.g. examples/container-host.toml.
    #[arg(long, value_name = "SPEC.toml")]
    pub spec: PathBuf,
    /// Secret key to sign the manifest with (PKCS#8 PEM, from `drover keygen`).
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Use this root file system (directory or tar) instead of mmdebstrap.
    #[arg(long, value_name = "DIR|TAR")]
    pub rootfs: Option<PathBuf>,
    /// Also keep the root file system mmdebstrap made (before the spec's
    /// files and the agent are added) as a directory at DIR, for later
    /// builds of the same package set with `--rootfs DIR`: a release that
    /// changes only files, the version or the binaries then skips
    /// mmdebstrap. DIR is replaced whole, and only once the tree is there.
    #[arg(long, value_name = "DIR", conflicts_with = "rootfs")]
    pub keep_rootfs: Option<PathBuf>,
    /// The drover-boot binary. Default: next to this drover binary.
    #[arg(long, value_name = "FILE")]
    pub boot_binary: Option<PathBuf>,
    /// Directory holding drover-agent and droverctl (installed into the
    /// image unless the spec says `[agent] enabled = false`). Default: the
    /// directory of this drover binary.
    #[arg(long, value_name = "DIR")]
    pub agent_binaries: Option<PathBuf>,
    /// Package cache directory. Default: $DROVER_CACHE_DIR or ~/.cache/drover.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build only the slot image and manifest, no disk images.
    #[arg(long)]
    pub slot_only: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print build.json on stdout when done.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        // Everything that can be checked without building, before building.
        let spec = ImageSpec::load(&self.spec)?;
        let key = SigningKey::load(&self.key)?;
        spec.trusted_keys(&key.public_key())?;
        let boot_binary = match self.boot_binary {
            Some(p) => p,
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("drover-boot"),
        };
        if !boot_binary.is_file() {
            bail!(
                "no drover-boot binary at {}: build it (`cargo build -p drover-boot`) or pass --boot-binary",
                boot_binary.display()
            );
        }
        if let Some(r) = &self.rootfs {
            if !r.exists() {
                bail!("--rootfs {} does not exist", r.display());
            }
        }
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH '{s}' is not a number"))?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let opts = BuildOptions {
            key,
            out: self.out,
            rootfs: self.rootfs,
            keep_rootfs: self.keep_rootfs,
            boot_binary,
            agent_binaries: match self.agent_binaries {
                Some(d) => d,
                None => std::env::current_exe()
                    .context("locating this executable")?
                    .parent()
                    .context("the directory of this executable")?
                    .to_path_buf(),
            },
            cache: self
                .cache_dir
                .unwrap_or_else(build::rootfs::default_cache_dir),
            epoch,
            slot_only: self.slot_only,
            progress: if self.quiet {
                Progress::Quiet
            } else {
                Progress::Normal
            },
        };
        let report = build::build(&spec, &opts)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if !self.quiet {
            eprintln!(
                "built {} {} into {} (root hash {})",
                report.os,
                report.version,
                opts.out.display(),
                report.root_hash
            );
        }
        Ok(())
    }
}
