//! `drover-agent`'s configuration: `/usr/lib/drover/agent.toml` (the
//! image's defaults), then every `/etc/drover/agent.toml.d/*.toml` in name
//! order, each overriding the keys it sets (tables merge key by key).
//! Unknown keys are errors that name the key's path and the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
pub use drover_core::agent_config::{EtcdLock, FleetLock, Reboot, Strategy, Window};
use serde::Deserialize;

/// The image's defaults.
pub const DEFAULTS: &str = "/usr/lib/drover/agent.toml";
/// The node's drop-ins.
pub const DROP_INS: &str = drover_core::paths::AGENT_DROP_INS;

/// The configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The repository: an http(s) base URL or a directory.
    pub server: Option<String>,
    /// The channel followed.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub poll_interval_secs: u64,
    /// Up to this many seconds added at random to each interval, so a fleet
    /// does not poll in step.
    #[serde(default = "default_jitter")]
    pub poll_jitter_secs: u64,
    /// Install available releases on its own (otherwise only on request).
    #[serde(default = "yes")]
    pub auto_update: bool,
    /// How the node reboots into an update: the strategy and its window
    /// or lock server ([`drover_core::agent_config`]).
    #[serde(default)]
    pub reboot: Reboot,
    /// Refuse to start a release once this many nodes of the fleet failed
    /// to boot it (counted in the lock store; `etcd-lock` only). Unset: no
    /// halt.
    pub halt_after_failures: Option<u32>,
    /// Trusted public keys (PEM files or directories of them).
    #[serde(default = "default_keys")]
    pub trusted_keys: Vec<PathBuf>,
    /// Where the trusted TUF roots of channels are (`CHANNEL.root.json`;
    /// a channel without one is read in the format-1 channel file).
    #[serde(default = "default_tuf_roots")]
    pub tuf_roots: PathBuf,
    /// Where the agent keeps its state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The disk with the slots; found by partition label when unset.
    pub disk: Option<PathBuf>,
    /// Where the boot stage's record of this boot is.
    #[serde(default = "default_record")]
    pub boot_record: PathBuf,
    /// The D-Bus to serve on: `system`, or a bus address.
    #[serde(default = "default_bus")]
    pub bus: String,
    /// Prometheus metrics: `HOST:PORT` to listen on; none when unset.
    pub metrics_listen: Option<String>,
    /// Seconds a new slot may take to reach boot-complete.target before the
    /// agent gives up on it and reboots into the previous one.
    #[serde(default = "default_boot_timeout")]
    pub boot_complete_timeout_secs: u64,
    /// Accept releases below the running security version.
    #[serde(default)]
    pub allow_security_downgrade: bool,
    /// Secure sites: a boot whose TPM measurements do not verify
    /// (`droverctl verify-boot`), or that was not measured at all, fails
    /// its boot assessment: never marked successful, an update falls back.
    #[serde(default)]
    pub require_measured_boot: bool,
    /// Seconds a server may send nothing (no response, or no bytes of a
    /// payload) before the request is given up; the next attempt resumes.
    #[serde(default = "default_stall")]
    pub download_stall_timeout_secs: u64,
}

fn default_channel() -> String {
    "stable".into()
}
fn default_interval() -> u64 {
    3600
}
fn default_jitter() -> u64 {
    600
}
fn yes() -> bool {
    true
}
fn default_keys() -> Vec<PathBuf> {
    vec![PathBuf::from(drover_core::paths::SYSTEM_KEYS)]
}
fn default_tuf_roots() -> PathBuf {
    PathBuf::from(drover_core::paths::TUF_ROOTS)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/drover")
}
fn default_record() -> PathBuf {
    PathBuf::from(drover_core::boot_record::ON_SYSTEM)
}
fn default_bus() -> String {
    "system".into()
}
fn default_boot_timeout() -> u64 {
    900
}
fn default_stall() -> u64 {
    crate::source::STALL_TIMEOUT.as_secs()
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Loads `defaults` (if it exists) and the drop-ins in `drop_ins`.
    pub fn load_from(defaults: &Path, drop_ins: &Path) -> anyhow::Result<Config> {
        let mut files = Vec::new();
        if defaults.exists() {
            files.push(defaults.to_path_buf());
        }
        if let Ok(rd) = std::fs::read_dir(drop_ins) {
            let mut d: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            d.sort();
            files.extend(d);
        }
        let mut table = toml::Table::new();
        for f in &files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let t: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", f.display()))?;
            // Each file alone must only hold known keys, so the error names it.
            Self::parse(toml::Value::Table(t.clone()), true)
                .with_context(|| format!("in {}", f.display()))?;
            merge(&mut table, t);
        }
        Self::parse(toml::Value::Table(table), false)
    }

    /// The configuration in one TOML text, checked as a whole
    /// configuration is (for tools and the fuzz target; the agent reads
    /// files with [`Config::load_from`]).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let t: toml::Table = toml::from_str(text).context("not valid TOML")?;
        Self::parse(toml::Value::Table(t), false)
    }

    /// The node's configuration, from [`DEFAULTS`] and [`DROP_INS`].
    pub fn load() -> anyhow::Result<Config> {
        Self::load_from(Path::new(DEFAULTS), Path::new(DROP_INS))
    }

    fn parse(v: toml::Value, partial: bool) -> anyhow::Result<Config> {
        let r: Result<Config, _> = serde_path_to_error::deserialize(v);
        match r {
            Ok(c) => {
                if !partial {
                    c.validate()?;
                }
                Ok(c)
            }
            Err(e) => {
                let path = e.path().to_string();
                bail!("{}: {}", path, e.into_inner())
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.reboot.validate().map_err(anyhow::Error::msg)?;
        if self.halt_after_failures == Some(0) {
            bail!("halt-after-failures must be above 0 (leave it unset for no halt)");
        }
        if self.halt_after_failures.is_some() && self.reboot.strategy != Strategy::EtcdLock {
            bail!("halt-after-failures needs reboot.strategy = \"etcd-lock\": the failures are counted in etcd");
        }
        if self.poll_interval_secs == 0 {
            bail!("poll-interval-secs must be above 0");
        }
        if self.download_stall_timeout_secs == 0 {
            bail!("download-stall-timeout-secs must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_override_in_name_order_and_unknown_keys_name_their_path() {
        let d = tempfile::tempdir().unwrap();
        let defaults = d.path().join("agent.toml");
        std::fs::write(
            &defaults,
            "server = \"https://updates.example\"\nchannel = \"stable\"\n[reboot]\nstrategy = \"off\"\n",
        )
        .unwrap();
        let di = d.path().join("agent.toml.d");
        std::fs::create_dir(&di).unwrap();
        std::fs::write(di.join("20-b.toml"), "channel = \"beta\"\n").unwrap();
        std::fs::write(
            di.join("10-a.toml"),
            "channel = \"alpha\"\npoll-interval-secs = 60\n[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"sat\"]\nstart = \"02:30\"\nlength-minutes = 60\n",
        )
        .unwrap();
        let c = Config::load_from(&defaults, &di).unwrap();
        assert_eq!(c.channel, "beta");
        assert_eq!(c.poll_interval_secs, 60);
        assert_eq!(c.server.as_deref(), Some("https://updates.example"));
        assert_eq!(c.reboot.strategy, Strategy::Window);

        std::fs::write(
            di.join("30-bad.toml"),
            "[reboot]\nstrategy = \"now\"\nwindw = 1\n",
        )
        .unwrap();
        let e = format!("{:#}", Config::load_from(&defaults, &di).unwrap_err());
        assert!(e.contains("30-bad.toml") && e.contains("reboot"), "{e}");
        std::fs::write(di.join("30-bad.toml"), "[reboot]\nwindw = 1\n").unwrap();
        let e = format!("{:#}", Config::load_from(&defaults, &di).unwrap_err());
        assert!(e.contains("reboot.windw") || e.contains("windw"), "{e}");
    }

    #[test]
    fn what_the_node_config_and_the_image_write_the_agent_reads() {
        use drover_core::agent_config::{EtcdLock, Written};
        let d = tempfile::tempdir().unwrap();
        let di = d.path().join("agent.toml.d");
        std::fs::create_dir(&di).unwrap();
        let w = Written {
            server: Some("https://updates.example/drover/".into()),
            halt_after_failures: Some(2),
            reboot: Some(Reboot {
                strategy: Strategy::EtcdLock,
                etcd: Some(EtcdLock {
                    endpoints: vec!["https://10.0.0.1:2379".into()],
                    ca: Some("/etc/drover/etcd/ca.pem".into()),
                    cert: None,
                    key: None,
                    group: "db".into(),
                }),
                ..Reboot::default()
            }),
            ..Written::default()
        };
        std::fs::write(di.join("50-node-config.toml"), w.render("test")).unwrap();
        let c = Config::load_from(&d.path().join("none.toml"), &di).unwrap();
        assert_eq!(c.reboot, w.reboot.unwrap());
        assert_eq!(c.halt_after_failures, Some(2));
        assert_eq!(c.server.as_deref(), Some("https://updates.example/drover/"));

        // A start time the node config refuses, the agent refuses too.
        std::fs::write(
            di.join("60-window.toml"),
            "[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"sat\"]\nstart = \"7:5\"\nlength-minutes = 60\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            Config::load_from(&d.path().join("none.toml"), &di).unwrap_err()
        );
        assert!(
            e.contains("60-window.toml")
                && e.contains("reboot.window.start")
                && e.contains("HH:MM"),
            "{e}"
        );
        // And a halt without etcd is explained.
        std::fs::write(
            di.join("60-window.toml"),
            "halt-after-failures = 1\n[reboot]\nstrategy = \"immediate\"\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            Config::load_from(&d.path().join("none.toml"), &di).unwrap_err()
        );
        assert!(e.contains("needs reboot.strategy = \"etcd-lock\""), "{e}");
    }
}
