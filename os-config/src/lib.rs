//! The node's declarative config: TOML fragments → merged → validated
//! settings → a plan of file actions → applied once, on first boot, by the
//! slot's initramfs (`drover-boot`) before systemd starts.
//!
//! The same schema serves the image's defaults
//! (`/usr/share/drover/config.d/*.toml`), the installer and QEMU's fw_cfg,
//! and `drover config check` on a build host. See `os-config/README.md`.

pub mod firstboot;
pub mod fragment;
pub mod paths;
pub mod plan;
pub mod render;
pub mod settings;
pub mod types;

pub use plan::{apply, plan, Action};
pub use settings::{settle, Settings, Source};

/// What went wrong, with where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value or a key the schema refuses.
    #[error("{source_name}: {}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid {
        /// Which fragment (`fw_cfg opt/org.drover/config`, a path).
        source_name: String,
        /// The key's path, as `users[0].name` (empty: the whole fragment).
        key: String,
        /// Why.
        reason: String,
    },
    /// Reading a source or writing the node's files.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Checks a config (one or more fragments, merged in order) on a build
/// host: the settings and the actions applying it would take (names of
/// the image's own users and units are not resolved here).
pub fn check(sources: &[Source]) -> Result<(Settings, Vec<Action>), Error> {
    let s = settle(sources)?;
    let a = plan(&s, None)?;
    Ok((s, a))
}
