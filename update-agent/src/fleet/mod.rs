//! Fleet coordination: the reboot lock a node takes before it reboots into
//! an update and gives back once the new slot is confirmed, and the
//! fleet-wide count of failed boots per release that halts a bad release.
//!
//! * [`etcd`]: a counting semaphore in etcd (v3), and the failure counts;
//! * [`fleetlock`]: the FleetLock v1 protocol (airlock, poseidon/fleetlock);
//! * [`node_id`]: the id a node holds a lock under.
//!
//! The agent and `droverctl lock` go through the same [`Lock`].

use serde::{Deserialize, Serialize};

use crate::config::{Reboot, Strategy};

pub mod etcd;
pub mod fleetlock;

/// An application id for [`node_id`] (random, fixed): the machine-id is
/// never sent, only a hash keyed by it, as systemd's
/// `sd_id128_get_machine_app_specific` and Zincati do.
const APP_ID: [u8; 16] = [
    0x5d, 0x1e, 0x0b, 0x7a, 0x93, 0x4c, 0x4e, 0x2f, 0xa8, 0x61, 0x3c, 0xd2, 0x17, 0x90, 0xe4, 0x6b,
];

/// The id this node holds locks under: HMAC-SHA256 keyed by the 128-bit
/// machine-id over Drover's application id, cut to 128 bits and marked as
/// a version-4 UUID (systemd's app-specific machine id), 32 hex digits.
/// An empty or malformed machine-id is hashed as text, so the id still
/// never shows it.
pub fn node_id(machine_id: &str) -> String {
    let key_bytes = hex::decode(machine_id.trim())
        .ok()
        .filter(|b| b.len() == 16)
        .unwrap_or_else(|| machine_id.as_bytes().to_vec());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let tag = ring::hmac::sign(&key, &APP_ID);
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag.as_ref()[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    hex::encode(id)
}

/// One holder of a reboot lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node's id ([`node_id`]).
    pub id: String,
    /// Since when, seconds since the Unix epoch.
    pub since: u64,
}

/// A lock group's state (`droverctl lock status --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStatus {
    /// The group.
    pub group: String,
    /// How many nodes may hold it at once.
    pub max: u32,
    /// Who holds it.
    pub holders: Vec<Holder>,
}

/// What an acquire got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// This node holds a slot (newly, or still from before its reboot).
    Held,
    /// Not granted: every slot is taken (the holders named), or the server
    /// said no (its reason).
    Refused(String),
}

impl LockStatus {
    /// `group G: 1 of 1 held (ID since T)`.
    pub fn summary(&self) -> String {
        let holders: Vec<String> = self
            .holders
            .iter()
            .map(|h| format!("{} since {}", h.id, h.since))
            .collect();
        format!(
            "group {}: {} of {} held{}",
            self.group,
            self.holders.len(),
            self.max,
            if holders.is_empty() {
                String::new()
            } else {
                format!(" ({})", holders.join(", "))
            }
        )
    }
}

/// A release's failed boots across the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// The release.
    pub version: String,
    /// Nodes whose boot of it failed (each counted once).
    pub nodes: Vec<String>,
    /// Failed boots per lock group.
    pub groups: std::collections::BTreeMap<String, u32>,
}

impl Failures {
    /// Nodes that failed, across every group.
    pub fn count(&self) -> u32 {
        self.nodes.len() as u32
    }
}

/// A reboot lock and, where the store can hold it, the failure counts.
pub trait Lock: Send + Sync {
    /// For messages: the kind, the group and the server.
    fn describe(&self) -> String;
    /// The group.
    fn group(&self) -> &str;
    /// Takes a slot for `id`, unless every slot is taken. Holding one
    /// already is success (a node that rebooted keeps its slot).
    fn acquire(&self, id: &str) -> anyhow::Result<Acquired>;
    /// Gives back `id`'s slot; returns whether it held one.
    fn release(&self, id: &str) -> anyhow::Result<bool>;
    /// Who holds the lock, and how many may.
    fn status(&self) -> anyhow::Result<LockStatus>;
    /// Sets how many may hold it.
    fn set_max(&self, max: u32) -> anyhow::Result<LockStatus>;
    /// Records that `id` failed to boot `version`; the failures so far.
    /// `None` when the store cannot count (FleetLock).
    fn record_failure(&self, version: &str, id: &str) -> anyhow::Result<Option<Failures>>;
    /// The failures recorded for `version` (`None`: the store cannot
    /// count).
    fn failures(&self, version: &str) -> anyhow::Result<Option<Failures>>;
    /// Every release with recorded failures.
    fn all_failures(&self) -> anyhow::Result<Vec<Failures>>;
    /// Forgets `version`'s failures (an operator lifts a halt).
    fn clear_failures(&self, version: &str) -> anyhow::Result<bool>;
}

/// The halt rule: a release with `failures` failed boots across the fleet
/// is not started once they reach `limit` (`halt-after-failures`).
pub fn halted(failures: u32, limit: Option<u32>) -> bool {
    limit.is_some_and(|l| failures >= l)
}

/// The lock the reboot settings name, if the strategy takes one.
pub fn open(reboot: &Reboot) -> anyhow::Result<Option<Box<dyn Lock>>> {
    Ok(match reboot.strategy {
        Strategy::EtcdLock => {
            let e = reboot.etcd.as_ref().ok_or_else(|| {
                anyhow::anyhow!("reboot.strategy = \"etcd-lock\" needs [reboot.etcd]")
            })?;
            Some(Box::new(etcd::EtcdLock::new(e)?))
        }
        Strategy::Fleetlock => {
            let f = reboot.fleetlock.as_ref().ok_or_else(|| {
                anyhow::anyhow!("reboot.strategy = \"fleetlock\" needs [reboot.fleetlock]")
            })?;
            Some(Box::new(fleetlock::FleetLockClient::new(f)?))
        }
        Strategy::Immediate | Strategy::Off | Strategy::Window => None,
    })
}

/// A small random number below `n` (jitter), from the OS's randomness.
pub(crate) fn jitter_below(n: u64) -> u64 {
    use ring::rand::SecureRandom as _;
    if n == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b) % n
}

#[cfg(test)]
mod tests {
    use super::node_id;

    #[test]
    fn the_node_id_is_a_v4_uuid_that_hides_the_machine_id() {
        let m = "3f7c1e2a9b4d4c6e8f0a1b2c3d4e5f60";
        let id = node_id(m);
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4", "{id}");
        assert!(matches!(&id[16..17], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, m);
        assert_eq!(node_id(m), id, "stable");
        assert_ne!(node_id("3f7c1e2a9b4d4c6e8f0a1b2c3d4e5f61"), id);
        assert_eq!(node_id("").len(), 32);
    }
}
