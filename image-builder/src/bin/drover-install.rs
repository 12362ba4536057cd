//! `drover-install`: install Drover onto a disk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drover_image_builder::install::auto::{self, Then, Unattended};
use drover_image_builder::install::{self, ImageSource, InstallOptions, Refused};

/// Install Drover onto a disk: the GPT layout (ESP, USR-A, USR-B, OEM,
/// ROOT), the boot stage, the signed slot image in USR-A and the node
/// config on OEM.
///
/// Run it in the live system booted from drover.iso (the media is found at
/// /run/drover/live-media/drover), or on any Linux host with --media
/// pointing at a build's output directory or the mounted ISO's /drover.
///
/// Everything is checked before the disk is touched: the node config, the
/// slot image's signature, the ESP's boot stage against its signed
/// reference values, that the disk is not mounted or in use, and its size.
/// The old partition tables are wiped first and the new one is written
/// last, after every block written has been read back and verified: an
/// install that fails or is cut off leaves a disk without a partition
/// table, never one that half boots.
///
/// Unattended (--unattended, run by drover-install-auto.service in the
/// live system): the kernel command line says what to do.
/// drover.install=DEVICE installs onto DEVICE; drover.install.config=SOURCE
/// takes the node config from a path, an http(s) URL or fwcfg:NAME
/// (default: the fw_cfg entry opt/org.drover/install-config when present);
/// drover.install.image=URL|PATH installs another slot image;
/// drover.install.then=reboot|poweroff|stay says what follows a successful
/// install (default reboot). `drover build --install-to DEVICE` writes an
/// ISO whose boot entry carries these words.
///
/// Exit status: 0 installed (or, unattended, nothing asked); 1 failed (the
/// disk has no partition table); 2 refused (nothing was written).
#[derive(Debug, Parser)]
#[command(name = "drover-install", version)]
struct Cli {
    /// The disk to install onto (all data on it is lost), or a disk image file.
    #[arg(long, value_name = "DEVICE", required_unless_present = "unattended")]
    disk: Option<PathBuf>,
    /// Install as the kernel command line's drover.install words say (see
    /// above); without drover.install=, do nothing.
    #[arg(long, conflicts_with_all = ["disk", "config", "image"])]
    unattended: bool,
    /// The kernel command line to read with --unattended.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/cmdline",
        requires = "unattended"
    )]
    cmdline: PathBuf,
    /// Node config (TOML, see os-config) to put on the OEM partition; it is
    /// validated first and applied on the first boot.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The slot image to install instead of the media's: a file, or an
    /// http(s) URL (a release's payload from the update channel).
    #[arg(long, value_name = "URL|FILE")]
    image: Option<String>,
    /// The installation media: a directory with install.json, esp.img and
    /// usr.img.
    #[arg(long, value_name = "DIR", default_value = install::LIVE_MEDIA)]
    media: PathBuf,
    /// Trusted public keys (PEM files or directories of them), repeatable.
    #[arg(long = "keys", value_name = "PATH", default_value = install::SYSTEM_KEYS)]
    keys: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// What `--unattended` asks, read from the command line and made local.
fn unattended(
    cli: &Cli,
    scratch: &std::path::Path,
) -> anyhow::Result<Option<(InstallOptions, Then)>> {
    let text = std::fs::read_to_string(&cli.cmdline)
        .map_err(|e| Refused(format!("reading {}: {e}", cli.cmdline.display())))?;
    let Some(u) = Unattended::from_cmdline(&text, |name| auto::fw_cfg_path(name).exists())? else {
        return Ok(None);
    };
    eprintln!(
        "drover-install: unattended install onto {} (config: {}; then: {})",
        u.disk.display(),
        match &u.config {
            None => "none".to_string(),
            Some(auto::ConfigSource::File(p)) => p.display().to_string(),
            Some(auto::ConfigSource::Url(url)) => url.clone(),
        },
        u.then
    );
    auto::wait_for_disk(&u.disk, std::time::Duration::from_secs(60))?;
    let config = match &u.config {
        None => None,
        Some(c) => Some(auto::fetch_config(c, scratch).map_err(|e| Refused(format!("{e:#}")))?),
    };
    Ok(Some((
        InstallOptions {
            disk: u.disk,
            media: cli.media.clone(),
            image: u.image,
            config,
            keys: cli.keys.clone(),
            verbose: !cli.quiet,
        },
        u.then,
    )))
}

fn fail(e: &anyhow::Error) -> ExitCode {
    let refused = e.downcast_ref::<Refused>().is_some();
    eprint!(
        "{}",
        drover_core::error_report("drover-install: error: ", "", e.as_ref())
    );
    if refused {
        eprintln!("drover-install: nothing was written");
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(&anyhow::Error::from(e).context("making a scratch directory")),
    };
    let (opts, then) = if cli.unattended {
        match unattended(&cli, scratch.path()) {
            Ok(Some(x)) => x,
            Ok(None) => {
                eprintln!(
                    "drover-install: no drover.install= on the kernel command line: nothing to do"
                );
                return ExitCode::SUCCESS;
            }
            Err(e) => return fail(&e),
        }
    } else {
        (
            InstallOptions {
                disk: cli.disk.clone().expect("clap requires --disk"),
                media: cli.media.clone(),
                image: cli
                    .image
                    .as_deref()
                    .map(ImageSource::parse)
                    .unwrap_or(ImageSource::Media),
                config: cli.config.clone(),
                keys: cli.keys.clone(),
                verbose: !cli.quiet,
            },
            Then::Stay,
        )
    };
    match install::install(&opts) {
        Ok(r) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("serializable")
                );
            } else {
                println!(
                    "installed {} {} on {} in {:.1} s (signed by {}, node config: {}); remove the installation media and reboot",
                    r.os,
                    r.version,
                    r.disk,
                    r.seconds,
                    r.signed_by,
                    if r.config { "on OEM" } else { "none" }
                );
            }
            if cli.unattended {
                if let Err(e) = auto::finish(then) {
                    return fail(&e);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
