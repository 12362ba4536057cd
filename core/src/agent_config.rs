//! The update agent's settings that other parts write: the node config's
//! `[update]` section (rendered into a drop-in on first boot) and the image
//! spec's `[agent]` section (rendered into the image's defaults). One set
//! of validated types, read by the agent and rendered with the `toml`
//! crate, so what one part writes the agent always reads, and what the
//! agent refuses no part can write (a start time `7:5`, an unknown
//! strategy, a lock strategy without its lock server).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// When the agent reboots into a written update.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// As soon as the update is written (inhibitor locks allowing).
    #[default]
    Immediate,
    /// Never on its own: the operator reboots.
    Off,
    /// Only inside the maintenance window.
    Window,
    /// Holding a slot of a counting semaphore in etcd, taken before the
    /// reboot and given back once the new slot is confirmed.
    EtcdLock,
    /// Holding the lock of a FleetLock server (airlock, poseidon/fleetlock).
    Fleetlock,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] = [
        Strategy::Immediate,
        Strategy::Off,
        Strategy::Window,
        Strategy::EtcdLock,
        Strategy::Fleetlock,
    ];

    /// The name in the config files.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Off => "off",
            Strategy::Window => "window",
            Strategy::EtcdLock => "etcd-lock",
            Strategy::Fleetlock => "fleetlock",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|x| x.name()).collect();
                format!("'{s}' is not a reboot strategy ({})", names.join(", "))
            })
    }
}

/// A weekly maintenance window, UTC.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Window {
    /// Days: `mon` … `sun`.
    pub days: Vec<Weekday>,
    /// Start, `HH:MM`.
    pub start: ClockTime,
    /// Length in minutes (1 to 1440).
    pub length_minutes: WindowLength,
}

impl Window {
    /// Whether `unix` (seconds since the epoch) falls inside the window.
    /// A window may run past midnight into the next day.
    pub fn contains(&self, unix: u64) -> bool {
        let (h, m) = self.start.hours_minutes();
        let day = unix / 86_400;
        self.days.iter().any(|d| {
            // Windows that opened on this weekday this week or last.
            (0..=7u64).any(|back| {
                let cand = day.saturating_sub(back);
                if (cand + 3) % 7 != d.from_monday() {
                    return false;
                }
                let open = cand * 86_400 + u64::from(h) * 3600 + u64::from(m) * 60;
                let close = open + u64::from(u32::from(self.length_minutes)) * 60;
                unix >= open && unix < close
            })
        })
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| d.name()).collect();
        write!(
            f,
            "{} {} for {} min, UTC",
            days.join(","),
            self.start.0,
            u32::from(self.length_minutes)
        )
    }
}

/// A day of the week.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// 0 for Monday … 6 for Sunday.
    pub fn from_monday(self) -> u64 {
        self as u64
    }

    /// `mon` … `sun`.
    pub fn name(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self as usize]
    }
}

/// `HH:MM`, 24 hours, two digits each.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct ClockTime(String);

impl ClockTime {
    fn hours_minutes(&self) -> (u8, u8) {
        let (h, m) = self.0.split_at(2);
        (h.parse().unwrap_or(0), m[1..].parse().unwrap_or(0))
    }
}

impl TryFrom<String> for ClockTime {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() == 5
            && s.split_once(':')
                .filter(|(h, m)| h.len() == 2 && m.len() == 2)
                .and_then(|(h, m)| Some((h.parse::<u8>().ok()?, m.parse::<u8>().ok()?)))
                .is_some_and(|(h, m)| h < 24 && m < 60);
        if ok {
            Ok(Self(s))
        } else {
            Err(format!("'{s}' is not a time of day HH:MM"))
        }
    }
}

impl From<ClockTime> for String {
    fn from(c: ClockTime) -> String {
        c.0
    }
}

/// Minutes, 1 to 1440.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "u32", into = "u32")]
pub struct WindowLength(u32);

impl TryFrom<u32> for WindowLength {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=1440).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("{n} minutes: a window is 1 to 1440 minutes long"))
        }
    }
}

impl From<WindowLength> for u32 {
    fn from(w: WindowLength) -> u32 {
        w.0
    }
}

/// The lock group every node is in unless its config names another.
pub const DEFAULT_GROUP: &str = "default";

fn default_group() -> String {
    DEFAULT_GROUP.into()
}

/// `[reboot.etcd]`: the etcd cluster that holds the reboot semaphore.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdLock {
    /// Client URLs of the cluster's members (`https://10.0.0.1:2379`); any
    /// that answers serves.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This node's client certificate (PEM), with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The lock group (one semaphore per group).
    #[serde(default = "default_group")]
    pub group: String,
}

/// `[reboot.fleetlock]`: a FleetLock server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FleetLock {
    /// The server's base URL (`http://fleetlock.example:8080`).
    pub url: String,
    /// The lock group.
    #[serde(default = "default_group")]
    pub group: String,
}

/// `[reboot]`: the strategy and what it needs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Reboot {
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `window` (and, with a lock strategy, the lock is taken only
    /// inside it when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// For `etcd-lock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdLock>,
    /// For `fleetlock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleetlock: Option<FleetLock>,
}

impl Reboot {
    /// [`Reboot::check`] in the agent's words: `reboot.KEY: reason`.
    pub fn validate(&self) -> Result<(), String> {
        self.check()
            .map_err(|(key, reason)| format!("reboot.{key}: {reason}"))
    }

    /// What the strategy needs is there, and each lock's settings are
    /// whole (a client certificate with its key; endpoints are URLs). The
    /// error names the key below `[reboot]` (`window`, `etcd.endpoints`),
    /// for the caller to prefix with where the settings sit in its file.
    pub fn check(&self) -> Result<(), (String, String)> {
        let e = |key: &str, reason: String| Err((key.to_string(), reason));
        let needs = |what: &str| format!("strategy \"{}\" needs {what}", self.strategy);
        match self.strategy {
            Strategy::Window if self.window.is_none() => {
                return e("window", needs("a window (days, start, length-minutes)"))
            }
            Strategy::EtcdLock if self.etcd.is_none() => {
                return e("etcd", needs("the etcd cluster (endpoints)"))
            }
            Strategy::Fleetlock if self.fleetlock.is_none() => {
                return e("fleetlock", needs("the FleetLock server (url)"))
            }
            _ => {}
        }
        if self.window.as_ref().is_some_and(|w| w.days.is_empty()) {
            return e("window.days", "a window needs at least one day".into());
        }
        let url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(x) = &self.etcd {
            if x.endpoints.is_empty() {
                return e("etcd.endpoints", "at least one endpoint".into());
            }
            if let Some(u) = x.endpoints.iter().find(|u| !url(u)) {
                return e(
                    "etcd.endpoints",
                    format!("'{u}' is not an http:// or https:// URL"),
                );
            }
            if x.cert.is_some() != x.key.is_some() {
                return e(
                    "etcd",
                    "a client cert needs its key, and a key its cert".into(),
                );
            }
            group(&x.group).or_else(|r| e("etcd.group", r))?;
        }
        if let Some(f) = &self.fleetlock {
            if !url(&f.url) {
                return e(
                    "fleetlock.url",
                    format!("'{}' is not an http:// or https:// URL", f.url),
                );
            }
            group(&f.group).or_else(|r| e("fleetlock.group", r))?;
        }
        Ok(())
    }
}

/// A lock group: letters, digits, `-`, `_`, `.` (it is part of an etcd key
/// and of a FleetLock request).
fn group(g: &str) -> Result<(), String> {
    if !g.is_empty()
        && g.len() <= 64
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(format!(
            "'{g}' is not a group name (1 to 64 letters, digits, '-', '_', '.')"
        ))
    }
}

/// The agent settings another part writes into an agent config file (a
/// node's drop-in, an image's defaults): each key set only when given.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Written {
    /// The repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Seconds between checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<u64>,
    /// Seconds a new slot may take to reach boot-complete.target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_complete_timeout_secs: Option<u64>,
    /// Secure sites: an unverified measured boot fails the boot check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_measured_boot: Option<bool>,
    /// Refuse to start a release once this many nodes failed to boot it
    /// (counted in the lock store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halt_after_failures: Option<u32>,
    /// Trusted keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// The reboot strategy and its settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<Reboot>,
}

impl Written {
    /// The file's text, a comment line first.
    pub fn render(&self, comment: &str) -> String {
        let body = toml::to_string(self).expect("agent settings serialize to TOML");
        let mut t = String::new();
        for l in comment.lines() {
            t.push_str("# ");
            t.push_str(l);
            t.push('\n');
        }
        t.push_str(&body);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Weekday], start: &str, minutes: u32) -> Window {
        Window {
            days: days.to_vec(),
            start: ClockTime::try_from(start.to_string()).unwrap(),
            length_minutes: WindowLength::try_from(minutes).unwrap(),
        }
    }

    #[test]
    fn windows_open_and_close_on_their_days() {
        let w = window(&[Weekday::Sat], "02:30", 60);
        // 2026-11-28 is a Saturday.
        let sat = 1_795_824_000; // 2026-11-28T00:00:00Z
        assert!(!w.contains(sat + 2 * 3600));
        assert!(w.contains(sat + 2 * 3600 + 30 * 60));
        assert!(w.contains(sat + 3 * 3600 + 29 * 60));
        assert!(!w.contains(sat + 3 * 3600 + 30 * 60));
        assert!(!w.contains(sat + 86_400 + 2 * 3600 + 45 * 60));
        // Across midnight: Sunday 23:30 for two hours reaches Monday 01:29.
        let w = window(&[Weekday::Sun], "23:30", 120);
        let mon = sat + 2 * 86_400;
        assert!(w.contains(mon + 3600));
        assert!(!w.contains(mon + 2 * 3600));
        assert_eq!(w.to_string(), "sun 23:30 for 120 min, UTC");
    }

    #[test]
    fn a_start_time_is_two_digits_each() {
        for bad in ["7:5", "07:5", "24:00", "12:60", "1230", ""] {
            assert!(ClockTime::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(ClockTime::try_from("07:05".to_string()).is_ok());
        assert!(WindowLength::try_from(0).is_err());
        assert!(WindowLength::try_from(1441).is_err());
    }

    #[test]
    fn what_is_rendered_reads_back_the_same() {
        let w = Written {
            server: Some("https://updates.example/\"drover\"".into()),
            channel: Some("beta".into()),
            poll_interval_secs: Some(60),
            halt_after_failures: Some(3),
            reboot: Some(Reboot {
                strategy: Strategy::EtcdLock,
                window: Some(window(&[Weekday::Mon, Weekday::Sun], "07:05", 30)),
                etcd: Some(EtcdLock {
                    endpoints: vec![
                        "https://10.0.0.1:2379".into(),
                        "https://10.0.0.2:2379".into(),
                    ],
                    ca: Some("/etc/drover/etcd/ca.pem".into()),
                    cert: Some("/etc/drover/etcd/node.pem".into()),
                    key: Some("/etc/drover/etcd/node-key.pem".into()),
                    group: "workers".into(),
                }),
                fleetlock: None,
            }),
            ..Written::default()
        };
        let text = w.render("Written by a test.");
        assert!(text.starts_with("# Written by a test.\n"), "{text}");
        assert!(text.contains("strategy = \"etcd-lock\""), "{text}");
        assert!(text.contains("start = \"07:05\""), "{text}");
        let back: Written = toml::from_str(&text).unwrap();
        assert_eq!(back, w);
        back.reboot.unwrap().validate().unwrap();
    }

    #[test]
    fn a_lock_strategy_needs_its_server() {
        let mut r = Reboot {
            strategy: Strategy::EtcdLock,
            ..Reboot::default()
        };
        assert_eq!(
            r.validate().unwrap_err(),
            "reboot.etcd: strategy \"etcd-lock\" needs the etcd cluster (endpoints)"
        );
        r.etcd = Some(EtcdLock {
            endpoints: vec!["10.0.0.1:2379".into()],
            ca: None,
            cert: Some("c.pem".into()),
            key: None,
            group: DEFAULT_GROUP.into(),
        });
        assert!(r.validate().unwrap_err().contains("not an http"));
        r.etcd.as_mut().unwrap().endpoints = vec!["http://127.0.0.1:2379".into()];
        assert!(r.validate().unwrap_err().contains("needs its key"));
        r.etcd.as_mut().unwrap().cert = None;
        r.validate().unwrap();
        r.etcd.as_mut().unwrap().group = "a/b".into();
        assert!(r.validate().unwrap_err().contains("group name"));
        r.strategy = Strategy::Fleetlock;
        r.etcd = None;
        assert!(r.validate().unwrap_err().starts_with("reboot.fleetlock: "));
        assert_eq!("etcd-lock".parse::<Strategy>(), Ok(Strategy::EtcdLock));
        assert!("now".parse::<Strategy>().unwrap_err().contains("fleetlock"));
    }
}
