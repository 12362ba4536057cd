//! The node's disk as the agent uses it: locked for a read-modify-write of
//! its table, read into slots, and the other slot's state in words.

use std::fs::File;
use std::path::Path;

use anyhow::Context as _;
use drover_core::{PartitionTable, SlotId, Slots};
use nix::fcntl::{Flock, FlockArg};

/// The disk, opened read-write and locked (`flock`, exclusive) for the
/// time of a read-modify-write of its table: `droverctl` and the agent take
/// the same lock, and udev leaves a locked disk alone.
pub fn open_locked(disk: &Path) -> anyhow::Result<Flock<File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", disk.display()))
}

/// The slots of the partition table on `disk` (open as `f`), `booted` active.
pub(crate) fn slots_of(disk: &Path, f: &File, booted: SlotId) -> anyhow::Result<Slots> {
    let mut r = f;
    let table = PartitionTable::read(&mut r, disk)?;
    Ok(Slots::from_table(table, booted)?)
}

/// The other slot's state in `droverctl status`'s words, from its gptprio
/// attributes and whether it holds a verified image.
pub(crate) fn slot_state(prio: drover_core::GptPrio, verified: bool) -> &'static str {
    if prio.priority() == 0 {
        if verified {
            "unbootable"
        } else {
            "empty"
        }
    } else if prio.successful() {
        "good"
    } else if prio.tries() > 0 {
        "staged"
    } else {
        "failed"
    }
}

#[cfg(test)]
mod tests {
    use drover_core::GptPrio;

    use super::slot_state;

    fn prio(priority: u8, tries: u8, successful: bool) -> GptPrio {
        GptPrio::default()
            .with_priority(priority)
            .with_tries(tries)
            .with_successful(successful)
    }

    #[test]
    fn the_other_slot_is_named_by_its_attributes() {
        assert_eq!(slot_state(prio(0, 0, false), false), "empty");
        assert_eq!(slot_state(prio(0, 0, false), true), "unbootable");
        // Priority 0 wins over a successful bit left behind.
        assert_eq!(slot_state(prio(0, 0, true), true), "unbootable");
        assert_eq!(slot_state(prio(1, 0, true), true), "good");
        assert_eq!(slot_state(prio(2, 1, false), true), "staged");
        assert_eq!(slot_state(prio(2, 0, false), true), "failed");
    }
}
