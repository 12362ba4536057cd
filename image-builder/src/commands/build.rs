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
    /// Make the ISO install unattended onto DEVICE when it boots
    /// (`drover.install=DEVICE` on its boot entry; all data on DEVICE is
    /// lost), then do what --install-then says. Without it the live system
    /// waits for someone to run drover-install.
    #[arg(long, value_name = "DEVICE", conflicts_with = "slot_only")]
    pub install_to: Option<String>,
    /// With --install-to: where the node config comes from (a path in the
    /// live system, an http(s) URL, or fwcfg:NAME; default: the fw_cfg entry
    /// opt/org.drover/install-config when present).
    #[arg(long, value_name = "SOURCE", requires = "install_to")]
    pub install_config: Option<String>,
    /// With --install-to: after a successful install.
    #[arg(long, value_name = "WHAT", requires = "install_to", value_parser = ["reboot", "poweroff", "stay"])]
    pub install_then: Option<String>,
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
            live_install: live_install(
                self.install_to.as_deref(),
                self.install_config.as_deref(),
                self.install_then.as_deref(),
            )?,
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

/// The unattended-install words for the ISO's boot entry (read back by
/// `drover-install --unattended` in the live system).
fn live_install(
    to: Option<&str>,
    config: Option<&str>,
    then: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let Some(to) = to else {
        return Ok(Vec::new());
    };
    let arg = drover_core::paths::INSTALL_ARG;
    for (what, v) in [("--install-to", Some(to)), ("--install-config", config)] {
        if let Some(v) = v {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                bail!("{what} '{v}': a kernel command-line word cannot be empty or hold spaces");
            }
        }
    }
    if !to.starts_with("/dev/") {
        bail!("--install-to {to}: expected a device path such as /dev/vda or /dev/disk/by-id/…");
    }
    let mut words = vec![format!("{arg}={to}")];
    if let Some(c) = config {
        words.push(format!("{arg}.config={c}"));
    }
    if let Some(t) = then {
        words.push(format!("{arg}.then={t}"));
    }
    Ok(words)
}
