//! Unattended install: what the live system's kernel command line asks of
//! `drover-install --unattended` (run by `drover-install-auto.service`),
//! after coreos-installer's `coreos.inst.install_dev`.
//!
//! | word | meaning |
//! |---|---|
//! | `drover.install=DEVICE` | install onto DEVICE (required; all data on it is lost) |
//! | `drover.install.config=SOURCE` | node config for OEM: a path in the live system, an `http(s)://` URL, or `fwcfg:NAME` (a QEMU/libvirt fw_cfg entry). Default: the fw_cfg entry `opt/org.drover/install-config` when it exists, else none |
//! | `drover.install.image=URL\|PATH` | a slot image other than the media's |
//! | `drover.install.then=reboot\|poweroff\|stay` | after a successful install (default `reboot`, into the installed disk when the firmware boots disks first) |
//!
//! A failed or refused install stays in the live system, its reason on the
//! console, and the exit status says which (2: nothing was written).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{ImageSource, Refused};

/// The fw_cfg entry an install config arrives in by default.
pub const DEFAULT_FW_CFG: &str = "opt/org.drover/install-config";

/// Where the `qemu_fw_cfg` module shows a fw_cfg entry.
pub fn fw_cfg_path(name: &str) -> PathBuf {
    Path::new("/sys/firmware/qemu_fw_cfg/by_name")
        .join(name)
        .join("raw")
}

/// Where the node config comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file in the live system (a fw_cfg entry resolves to one).
    File(PathBuf),
    /// Downloaded first (at most 1 MiB).
    Url(String),
}

/// What to do once installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Restart (into the installed disk when the firmware boots it first).
    Reboot,
    /// Power off (a provisioning pipeline takes the disk from here).
    Poweroff,
    /// Stay in the live system.
    Stay,
}

impl std::fmt::Display for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Then::Reboot => "reboot",
            Then::Poweroff => "poweroff",
            Then::Stay => "stay",
        })
    }
}

/// An unattended install as the command line asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unattended {
    /// The target disk.
    pub disk: PathBuf,
    /// The node config, when one is given or the default fw_cfg entry exists.
    pub config: Option<ConfigSource>,
    /// The slot image.
    pub image: ImageSource,
    /// Afterwards.
    pub then: Then,
}

impl Unattended {
    /// Reads the `drover.install` words of a kernel command line; `None`
    /// when it has no `drover.install=`. `fw_cfg_exists` answers whether a
    /// fw_cfg entry is present (for the default config source). Unknown
    /// `drover.install.*` words and bad values are refused by name, so a
    /// typo does not install with defaults.
    pub fn from_cmdline(
        cmdline: &str,
        fw_cfg_exists: impl Fn(&str) -> bool,
    ) -> Result<Option<Self>, Refused> {
        let key = drover_core::paths::INSTALL_ARG;
        let mut disk = None;
        let mut config = None;
        let mut image = ImageSource::Media;
        let mut then = Then::Reboot;
        for w in cmdline.split_whitespace() {
            let Some(rest) = w.strip_prefix(key) else {
                continue;
            };
            let (name, value) = if let Some(v) = rest.strip_prefix('=') {
                ("", v)
            } else if let Some(opt) = rest.strip_prefix('.') {
                opt.split_once('=').ok_or_else(|| {
                    Refused(format!("`{w}` on the kernel command line has no value"))
                })?
            } else {
                continue;
            };
            if value.is_empty() {
                return Err(Refused(format!(
                    "`{w}` on the kernel command line has an empty value"
                )));
            }
            match name {
                "" => disk = Some(PathBuf::from(value)),
                "config" => {
                    config = Some(match value.strip_prefix("fwcfg:") {
                        Some(n) => ConfigSource::File(fw_cfg_path(n)),
                        None => match drover_core::location::Location::parse(value) {
                            drover_core::location::Location::Url(u) => ConfigSource::Url(u),
                            drover_core::location::Location::Local(p) => ConfigSource::File(p),
                        },
                    })
                }
                "image" => image = ImageSource::parse(value),
                "then" => {
                    then = match value {
                        "reboot" => Then::Reboot,
                        "poweroff" => Then::Poweroff,
                        "stay" => Then::Stay,
                        other => {
                            return Err(Refused(format!(
                                "{key}.then={other}: expected reboot, poweroff or stay"
                            )))
                        }
                    }
                }
                other => {
                    return Err(Refused(format!(
                        "unknown `{key}.{other}` on the kernel command line (known: {key}=DEVICE, {key}.config, {key}.image, {key}.then)"
                    )))
                }
            }
        }
        let Some(disk) = disk else {
            return Ok(None);
        };
        if config.is_none() && fw_cfg_exists(DEFAULT_FW_CFG) {
            config = Some(ConfigSource::File(fw_cfg_path(DEFAULT_FW_CFG)));
        }
        Ok(Some(Self {
            disk,
            config,
            image,
            then,
        }))
    }
}

/// Waits up to `timeout` for the target disk to appear (its driver may
/// still be probing when the live system reaches multi-user).
pub fn wait_for_disk(disk: &Path, timeout: Duration) -> Result<(), Refused> {
    let start = Instant::now();
    while !disk.exists() {
        if start.elapsed() >= timeout {
            return Err(Refused(format!(
                "{} did not appear within {} s",
                disk.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The node config as a local file: a downloaded one goes into `scratch`.
pub fn fetch_config(source: &ConfigSource, scratch: &Path) -> anyhow::Result<PathBuf> {
    match source {
        ConfigSource::File(p) => {
            if !p.is_file() {
                bail!("the install config {} does not exist", p.display());
            }
            Ok(p.clone())
        }
        ConfigSource::Url(url) => {
            let client = drover_core::http::client(
                concat!("drover-install/", env!("CARGO_PKG_VERSION")),
                drover_core::http::STALL_TIMEOUT,
            )?;
            // The network may still be coming up: retried for two minutes.
            let start = Instant::now();
            let bytes = loop {
                match drover_core::http::get_small(&client, url, 1 << 20) {
                    Ok(b) => break b,
                    Err(e) if start.elapsed() < Duration::from_secs(120) => {
                        eprintln!("drover-install: the install config {url}: {e:#}; retrying");
                        std::thread::sleep(Duration::from_secs(3));
                    }
                    Err(e) => {
                        return Err(e.context(format!("downloading the install config {url}")))
                    }
                }
            };
            let path = scratch.join("install-config.toml");
            std::fs::write(&path, bytes)?;
            Ok(path)
        }
    }
}

/// Powers off or reboots through systemd (`systemctl --no-block`), so the
/// unit that ran the install finishes and its output reaches the journal.
pub fn finish(then: Then) -> anyhow::Result<()> {
    let verb = match then {
        Then::Reboot => "reboot",
        Then::Poweroff => "poweroff",
        Then::Stay => return Ok(()),
    };
    let status = std::process::Command::new("systemctl")
        .args(["--no-block", verb])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {verb} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(c: &str, fw: bool) -> Result<Option<Unattended>, Refused> {
        Unattended::from_cmdline(c, |n| fw && n == DEFAULT_FW_CFG)
    }

    #[test]
    fn the_command_line_asks_for_an_install() {
        assert_eq!(parse("console=ttyS0 drover.live", true).unwrap(), None);
        assert_eq!(
            parse("drover.live drover.install=/dev/vda", false).unwrap(),
            Some(Unattended {
                disk: "/dev/vda".into(),
                config: None,
                image: ImageSource::Media,
                then: Then::Reboot,
            })
        );
        // The default fw_cfg entry, when it is there.
        let u = parse("drover.install=/dev/vda", true).unwrap().unwrap();
        assert_eq!(
            u.config,
            Some(ConfigSource::File(
                "/sys/firmware/qemu_fw_cfg/by_name/opt/org.drover/install-config/raw".into()
            ))
        );
        let u = parse(
            "drover.install=/dev/nvme0n1 drover.install.config=https://cfg.example/n.toml drover.install.then=poweroff drover.install.image=http://10.0.2.100/usr.img",
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(u.disk, Path::new("/dev/nvme0n1"));
        assert_eq!(
            u.config,
            Some(ConfigSource::Url("https://cfg.example/n.toml".into()))
        );
        assert_eq!(u.then, Then::Poweroff);
        assert_eq!(
            u.image,
            ImageSource::Url("http://10.0.2.100/usr.img".into())
        );
        let u = parse(
            "drover.install=/dev/vda drover.install.config=fwcfg:opt/x",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            u.config,
            Some(ConfigSource::File(
                "/sys/firmware/qemu_fw_cfg/by_name/opt/x/raw".into()
            ))
        );
        // Options without a disk do nothing; other words are not ours.
        assert_eq!(
            parse("drover.install.then=poweroff drover.installer=1", true).unwrap(),
            None
        );
    }

    #[test]
    fn typos_are_refused_by_name() {
        for (c, want) in [
            (
                "drover.install=/dev/vda drover.install.then=halt",
                "then=halt",
            ),
            (
                "drover.install=/dev/vda drover.install.confg=x",
                "drover.install.confg",
            ),
            ("drover.install=", "empty value"),
            ("drover.install=/dev/vda drover.install.then", "no value"),
        ] {
            let e = parse(c, false).unwrap_err().to_string();
            assert!(e.contains(want), "{c}: {e}");
        }
    }
}
