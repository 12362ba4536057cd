//! `drover-agent`'s configuration: `/usr/lib/drover/agent.toml` (the
//! image's defaults), then every `/etc/drover/agent.toml.d/*.toml` in name
//! order, each overriding the keys it sets (tables merge key by key).
//! Unknown keys are errors that name the key's path and the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
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
    /// How the node reboots into an update.
    #[serde(default)]
    pub reboot: Reboot,
    /// Trusted public keys (PEM files or directories of them).
    #[serde(default = "default_keys")]
    pub trusted_keys: Vec<PathBuf>,
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

/// Reboot strategy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Reboot {
    /// `immediate`, `off` or `window`.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `window`.
    pub window: Option<Window>,
}

/// When the agent reboots.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// As soon as an update is written (inhibitor locks allowing).
    #[default]
    Immediate,
    /// Never: the operator reboots.
    Off,
    /// Only inside the maintenance window.
    Window,
}

/// A weekly maintenance window, in UTC.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Window {
    /// Days: `mon` … `sun`.
    pub days: Vec<String>,
    /// Start, `HH:MM` UTC.
    pub start: String,
    /// Length in minutes.
    pub length_minutes: u32,
}

impl Window {
    /// Whether `unix` (seconds) falls inside the window.
    pub fn contains(&self, unix: u64) -> anyhow::Result<bool> {
        const DAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];
        let (h, m) = self
            .start
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .with_context(|| format!("reboot window start '{}' is not HH:MM", self.start))?;
        for d in &self.days {
            let Some(idx) = DAYS.iter().position(|x| d.eq_ignore_ascii_case(x)) else {
                bail!("reboot window day '{d}' is not one of mon, tue, wed, thu, fri, sat, sun");
            };
            // Windows starting on this weekday in this week and the last.
            let day = unix / 86_400;
            for back in 0..=7u64 {
                let cand = day.saturating_sub(back);
                if (cand % 7) as usize != idx {
                    continue;
                }
                let open = cand * 86_400 + h * 3600 + m * 60;
                let close = open + u64::from(self.length_minutes) * 60;
                if unix >= open && unix < close {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
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
        if self.reboot.strategy == Strategy::Window {
            let w = self
                .reboot
                .window
                .as_ref()
                .context("reboot.strategy = \"window\" needs a [reboot.window] table")?;
            w.contains(0)?;
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
    fn windows_open_and_close_on_their_days() {
        let w = Window {
            days: vec!["sat".into()],
            start: "02:30".into(),
            length_minutes: 60,
        };
        // 2026-11-28 is a Saturday.
        let sat = 1_795_824_000; // 2026-11-28T00:00:00Z
        assert!(!w.contains(sat + 2 * 3600).unwrap());
        assert!(w.contains(sat + 2 * 3600 + 30 * 60).unwrap());
        assert!(w.contains(sat + 3 * 3600 + 29 * 60).unwrap());
        assert!(!w.contains(sat + 3 * 3600 + 30 * 60).unwrap());
        assert!(!w.contains(sat + 86_400 + 2 * 3600 + 45 * 60).unwrap());
        // Across midnight: Sunday 23:30 for two hours reaches Monday 01:29.
        let w = Window {
            days: vec!["sun".into()],
            start: "23:30".into(),
            length_minutes: 120,
        };
        let mon = sat + 2 * 86_400;
        assert!(w.contains(mon + 3600).unwrap());
        assert!(!w.contains(mon + 2 * 3600).unwrap());
    }
}
