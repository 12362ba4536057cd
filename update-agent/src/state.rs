//! What the agent remembers across restarts and reboots, in one JSON file
//! (`/var/lib/drover/agent-state.json` on a node), written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct State {
    /// Highest channel sequence number seen, per channel: metadata below it
    /// is a rollback and refused.
    pub sequence: BTreeMap<String, u64>,
    /// Versions that failed to boot on this node, or that an operator
    /// rolled back from: never installed again on the agent's own
    /// initiative.
    pub failed_versions: Vec<String>,
    /// An update written and chosen for the next boot, not yet confirmed.
    pub pending: Option<Pending>,
    /// A download in progress, to resume after a crash or restart.
    pub download: Option<Download>,
    /// The last rollback detected, for status and metrics.
    pub last_rollback: Option<Rollback>,
    /// Seconds since the Unix epoch of the last successful check.
    pub last_check: Option<u64>,
    /// The reboot lock this node took before rebooting into an update,
    /// held across the reboot until the new slot is confirmed (or its
    /// rollback recorded).
    pub lock: Option<HeldLock>,
    /// Versions whose failed boot here is not yet counted in the fleet's
    /// lock store (it did not answer); reported on the next try.
    pub unreported_failures: Vec<String>,
}

/// A reboot lock held by this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HeldLock {
    /// The lock (`etcd lock /drover/reboot-lock/default at …`).
    pub lock: String,
    /// The id it is held under.
    pub id: String,
    /// Since when, seconds since the Unix epoch.
    pub since: u64,
}

/// An update waiting for its first boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pending {
    /// Version written.
    pub version: String,
    /// Slot label it was written to.
    pub slot: String,
    /// Version running when it was written.
    pub from_version: String,
    /// Why its boot was given up, when the agent gave it up (a failed
    /// boot check); kept for the rollback report after the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A download in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Download {
    /// Version.
    pub version: String,
    /// SHA-256 of the payload (the key of the resume point).
    pub sha256: String,
    /// Slot label being written.
    pub slot: String,
    /// Bytes durable in the slot.
    pub durable: u64,
}

/// A rollback: automatic (an update did not boot) or manual.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Rollback {
    /// The version left (the one that failed, for an automatic one).
    pub from_version: String,
    /// The version running (or booting next) instead.
    pub to_version: String,
    /// When, seconds since the Unix epoch.
    pub at: u64,
    /// Asked for by an operator (`droverctl rollback`).
    pub manual: bool,
    /// Why the failed version's boot was given up, when the agent knew
    /// (a failed boot check, the boot-complete timeout); absent when the
    /// boot never reached the agent (the stage fell back on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The state file.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `dir/agent-state.json`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("agent-state.json"),
        }
    }

    /// The directory the state file is in (other state lives beside it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Reads the state; a missing file is the empty state.
    pub fn load(&self) -> anyhow::Result<State> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not agent state", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Writes the state (temporary file, fsync, rename).
    pub fn save(&self, s: &State) -> anyhow::Result<()> {
        write_durably(&self.path, &serde_json::to_vec_pretty(s)?)
    }

    /// Loads, changes and saves.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> anyhow::Result<T> {
        let mut s = self.load()?;
        let r = f(&mut s);
        self.save(&s)?;
        Ok(r)
    }
}

/// Replaces `path` with `bytes` (mode 0644) so that a power cut leaves
/// the old file or the new one, whole ([`drover_core::durable::replace`]).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(drover_core::durable::replace(path, bytes, 0o644)?)
}
