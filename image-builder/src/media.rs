//! The installation media's description, `install.json`: written by
//! `drover build` beside the slot and ESP images (and onto the ISO), read
//! by `drover-install`.

use std::path::Path;

use anyhow::{bail, Context as _};
use drover_core::layout::LayoutSpec;
use serde::{Deserialize, Serialize};

/// The file on the media that describes the install.
pub const INSTALL_INFO: &str = "install.json";
/// Where the live system finds the media (the ISO's `/drover`).
pub const LIVE_MEDIA: &str = drover_core::paths::LIVE_MEDIA_DIR;

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
        Self::parse(&text, &p)
    }

    /// Parses the text of an `install.json` (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let info: InstallInfo = serde_json::from_str(text)
            .with_context(|| format!("{} is not a Drover install description", path.display()))?;
        if info.format != 1 {
            bail!(
                "{}: format {} (this installer knows format 1)",
                path.display(),
                info.format
            );
        }
        Ok(info)
    }
}
