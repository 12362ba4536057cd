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

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

pub mod auto;
mod check;
mod device;
mod fetch;
mod write;

pub use crate::media::{InstallInfo, INSTALL_INFO, LIVE_MEDIA};

const MIB: u64 = 1 << 20;

/// The trusted keys in a Drover system.
pub const SYSTEM_KEYS: &str = drover_core::paths::SYSTEM_KEYS;

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

pub(crate) struct Steps {
    verbose: bool,
    pub(crate) start: Instant,
}

impl Steps {
    pub(crate) fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!(
                "drover-install: [{:>6.1}s] {msg}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// Installs. An error that is a [`Refused`] means the disk was not
/// touched; any other error came after the old tables were wiped.
pub fn install(opts: &InstallOptions) -> anyhow::Result<InstallReport> {
    let steps = Steps {
        verbose: opts.verbose,
        start: Instant::now(),
    };
    let c = check::check(opts, &steps).map_err(|e| match e.downcast::<Refused>() {
        Ok(r) => anyhow::Error::from(r),
        Err(e) => Refused(format!("{e:#}")).into(),
    })?;
    write::write(opts, &steps, c)
}
