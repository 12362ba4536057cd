//! The node's file-system contract: the names the image builder, the boot
//! stage, the installer and the agent must agree on, each spelt once.
//!
//! Paths of the booted system are absolute; paths inside the stage
//! initramfs are relative to its root (the builder writes them into a cpio
//! archive, the stage reads them at `/` + the path).

/// The trusted manifest keys of a running Drover system (in the verified
/// `/usr`): the agent's default, the installer's default.
pub const SYSTEM_KEYS: &str = "/usr/lib/drover/keys";

/// The trusted TUF roots of the channels a node may follow
/// (`CHANNEL.root.json`), in the verified `/usr`: a channel with one here
/// is read as a TUF repository, and only so.
pub const TUF_ROOTS: &str = "/usr/lib/drover/tuf";

/// The image's SBOM files (SPDX and CycloneDX), in the verified `/usr`.
pub const SBOM_DIR: &str = "/usr/share/drover";

/// [`SBOM_DIR`] relative to `/usr` (where the builder writes it).
pub const SBOM_DIR_IN_USR: &str = "share/drover";

/// Drover's runtime directory (tmpfs): the stage's scratch space, the boot
/// record ([`crate::boot_record::ON_SYSTEM`]), the verify-boot verdict.
pub const RUN_DIR: &str = "/run/drover";

/// Where `drover-verify-boot.service` leaves its verdict for the agent.
pub const VERIFY_BOOT_VERDICT: &str = "/run/drover/verify-boot.json";

/// The agent's configuration drop-in directory.
pub const AGENT_DROP_INS: &str = "/etc/drover/agent.toml.d";

/// On the stage's and the slot kernel's command line: boot the slot image
/// of an installation ISO (a live system).
pub const LIVE_FLAG: &str = "drover.live";

/// On the live system's command line: install unattended onto this disk
/// (`drover.install=/dev/vda`); its options are the words that start with
/// `drover.install.` (see `drover-install --help`). The stage passes them
/// on to the live system's kernel.
pub const INSTALL_ARG: &str = "drover.install";

/// Where the installation ISO is mounted, in the stage and in the live
/// system.
pub const LIVE_MEDIA: &str = "/run/drover/live-media";

/// The directory on the ISO that holds the slot image, the ESP image and
/// `install.json`.
pub const ISO_DIR: &str = "drover";

/// [`ISO_DIR`] as the live system sees it: [`LIVE_MEDIA`]`/`[`ISO_DIR`]
/// (spelt out for `clap` defaults; a test checks that they agree).
pub const LIVE_MEDIA_DIR: &str = "/run/drover/live-media/drover";

/// Inside the stage and slot initramfs.
pub mod initramfs {
    /// The trusted keys built into the stage initramfs.
    pub const KEYS: &str = "etc/drover/keys";
    /// `stage` or `slot`: what `drover-boot` runs as.
    pub const MODE: &str = "etc/drover/mode";
    /// The kernel modules to load, one path a line (`-` first: optional).
    pub const MODULES: &str = "etc/drover/modules";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_names_agree() {
        assert_eq!(LIVE_MEDIA_DIR, format!("{LIVE_MEDIA}/{ISO_DIR}"));
        assert_eq!(SBOM_DIR, format!("/usr/{SBOM_DIR_IN_USR}"));
        assert!(VERIFY_BOOT_VERDICT.starts_with(RUN_DIR));
        assert!(crate::boot_record::ON_SYSTEM.starts_with(RUN_DIR));
        assert!(LIVE_MEDIA.starts_with(RUN_DIR));
    }
}
