//! `drover-install`: install Drover onto a disk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
/// Exit status: 0 installed; 1 failed (the disk has no partition table);
/// 2 refused (nothing was written).
#[derive(Debug, Parser)]
#[command(name = "drover-install", version)]
struct Cli {
    /// The disk to install onto (all data on it is lost), or a disk image file.
    #[arg(long, value_name = "DEVICE")]
    disk: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = InstallOptions {
        disk: cli.disk,
        media: cli.media,
        image: cli
            .image
            .as_deref()
            .map(ImageSource::parse)
            .unwrap_or(ImageSource::Media),
        config: cli.config,
        keys: cli.keys,
        verbose: !cli.quiet,
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            let refused = e.downcast_ref::<Refused>().is_some();
            eprint!(
                "{}",
                drover_core::error_report("drover-install: error: ", "", e.as_ref())
            );
            if refused {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
