//! The A/B slot pair on a disk, and the transitions the update agent makes.
//!
//! Every transition changes the table in memory only and says so; nothing
//! reaches the disk until [`Slots::write`]. The order the agent keeps (the
//! one updog keeps) is: [`Slots::make_unbootable`] + write, write the image,
//! [`Slots::mark_valid`] + write, [`Slots::upgrade`] + write.

use std::path::Path;

use crate::gptprio::GptPrio;
use crate::selection::{select, Decision, SlotView};
use crate::slot::{SlotId, USR_X86_64_TYPE};
use crate::table::{Device, PartitionTable, TableError};

/// Errors finding the slots or changing their state.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The partition table could not be read or written.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A slot partition is missing or not a `/usr` partition.
    #[error("{disk}: no {slot} partition (a partition labelled {slot} of type {USR_X86_64_TYPE})")]
    Missing {
        /// The disk.
        disk: String,
        /// Which slot.
        slot: SlotId,
    },
    /// Two partitions carry the same slot label.
    #[error("{disk}: more than one partition is labelled {slot}")]
    Duplicate {
        /// The disk.
        disk: String,
        /// Which slot.
        slot: SlotId,
    },
    /// The transition is not allowed from the slots' current state.
    #[error("cannot {action} {slot}: {reason}")]
    Illegal {
        /// What was attempted.
        action: &'static str,
        /// The slot it was attempted on.
        slot: SlotId,
        /// Why not.
        reason: String,
    },
    /// Nothing on the disk would boot, so there is no active slot to reason from.
    #[error("{disk}: no slot would boot ({reason})")]
    NothingBoots {
        /// The disk.
        disk: String,
        /// The rule's reason.
        reason: &'static str,
    },
}

/// State of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// Which slot.
    pub slot: SlotId,
    /// Its partition number.
    pub partition: u32,
    /// Its attribute bits.
    pub prio: GptPrio,
    /// Byte offset of the partition on the disk.
    pub offset: u64,
    /// Size of the partition in bytes.
    pub size: u64,
}

/// The USR-A/USR-B pair of a disk and which of them is booted (active).
#[derive(Clone, Debug)]
pub struct Slots {
    table: PartitionTable,
    partitions: [u32; 2],
    active: SlotId,
}

fn idx(slot: SlotId) -> usize {
    match slot {
        SlotId::A => 0,
        SlotId::B => 1,
    }
}

/// Finds USR-A and USR-B in a table by type and label.
pub fn find_slot_partitions(table: &PartitionTable) -> Result<[u32; 2], SlotError> {
    let usr_type: uuid::Uuid = USR_X86_64_TYPE.parse().expect("constant GUID");
    let disk = table.path().display().to_string();
    let mut found = [None, None];
    for (&index, p) in table.entries() {
        let Some(slot) = SlotId::from_label(&p.name) else {
            continue;
        };
        if p.part_type_guid.guid != usr_type {
            continue;
        }
        if found[idx(slot)].replace(index).is_some() {
            return Err(SlotError::Duplicate { disk, slot });
        }
    }
    let get = |slot: SlotId| {
        found[idx(slot)].ok_or_else(|| SlotError::Missing {
            disk: disk.clone(),
            slot,
        })
    };
    Ok([get(SlotId::A)?, get(SlotId::B)?])
}

impl Slots {
    /// The slots of `table`, with `active` the slot that is running (on a
    /// node: the one the boot stage chose; offline: see [`Slots::offline`]).
    pub fn from_table(table: PartitionTable, active: SlotId) -> Result<Self, SlotError> {
        let partitions = find_slot_partitions(&table)?;
        Ok(Self {
            table,
            partitions,
            active,
        })
    }

    /// The slots of a disk image that is not running: the active slot is the
    /// one that would boot next.
    pub fn offline(table: PartitionTable) -> Result<Self, SlotError> {
        let mut s = Self::from_table(table, SlotId::A)?;
        match s.next_boot() {
            Decision::Rescue { reason } => {
                return Err(SlotError::NothingBoots {
                    disk: s.table.path().display().to_string(),
                    reason,
                });
            }
            d => s.active = d.slot().expect("boot or fallback names a slot"),
        }
        Ok(s)
    }

    /// Opens a disk image file or block device (read-write when `writable`)
    /// and its slots, offline.
    pub fn open_offline(
        path: impl AsRef<Path>,
        writable: bool,
    ) -> Result<(Self, std::fs::File), SlotError> {
        let (table, file) = if writable {
            PartitionTable::open_rw(path)?
        } else {
            PartitionTable::open(path)?
        };
        Ok((Self::offline(table)?, file))
    }

    /// The partition table underneath.
    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    /// The running slot.
    pub fn active(&self) -> SlotId {
        self.active
    }

    /// The slot that is not running, the one updates are written to.
    pub fn inactive(&self) -> SlotId {
        !self.active
    }

    /// State of one slot.
    pub fn get(&self, slot: SlotId) -> SlotState {
        let partition = self.partitions[idx(slot)];
        let entry = self.table.entry(partition).expect("found at construction");
        let (offset, size) = self.table.byte_range(partition).expect("found");
        SlotState {
            slot,
            partition,
            prio: GptPrio::from_raw(entry.flags),
            offset,
            size,
        }
    }

    /// Both slots, as the selection rule sees them.
    pub fn views(&self) -> [SlotView; 2] {
        SlotId::ALL.map(|slot| {
            let s = self.get(slot);
            SlotView {
                slot,
                partition: s.partition,
                prio: s.prio,
            }
        })
    }

    /// What the boot stage would do on the next boot. Changes nothing.
    pub fn next_boot(&self) -> Decision {
        select(&self.views())
    }

    /// Runs the rule as the boot stage does: the winner's try is used up in
    /// memory. The caller writes the table before booting the slot.
    pub fn select_for_boot(&mut self) -> Decision {
        self.select_for_boot_excluding(&[])
    }

    /// The same, leaving out slots the boot stage already refused in this
    /// boot (their bits are not changed; a refused slot keeps its
    /// decremented tries).
    pub fn select_for_boot_excluding(&mut self, excluded: &[SlotId]) -> Decision {
        let views: Vec<SlotView> = self
            .views()
            .into_iter()
            .filter(|v| !excluded.contains(&v.slot))
            .collect();
        let d = select(&views);
        if let Decision::Boot {
            slot,
            consume_try: true,
        } = d
        {
            let p = self.get(slot).prio;
            self.set(slot, p.with_tries(p.tries() - 1));
        }
        d
    }

    fn set(&mut self, slot: SlotId, prio: GptPrio) {
        let partition = self.partitions[idx(slot)];
        self.table
            .set_attributes(partition, prio.raw())
            .expect("slot partitions exist");
    }

    fn illegal(action: &'static str, slot: SlotId, reason: impl Into<String>) -> SlotError {
        SlotError::Illegal {
            action,
            slot,
            reason: reason.into(),
        }
    }

    /// Makes the inactive slot unbootable (priority 0, no tries, not
    /// successful) before an image is written to it. Memory only.
    pub fn make_unbootable(&mut self) -> SlotId {
        let slot = self.inactive();
        let p = self.get(slot).prio;
        self.set(
            slot,
            p.with_priority(0).with_tries(0).with_successful(false),
        );
        slot
    }

    /// Marks the freshly written inactive slot valid with `tries` boot
    /// attempts. It must have been made unbootable first. Memory only.
    pub fn mark_valid(&mut self, tries: u8) -> Result<SlotId, SlotError> {
        let slot = self.inactive();
        let p = self.get(slot).prio;
        if tries == 0 || tries > crate::gptprio::MAX_FIELD {
            return Err(Self::illegal("mark valid", slot, "tries must be 1–15"));
        }
        if p.priority() != 0 || p.successful() {
            return Err(Self::illegal(
                "mark valid",
                slot,
                format!("it was not made unbootable before the image was written ({p})"),
            ));
        }
        self.set(slot, p.with_tries(tries).with_successful(false));
        Ok(slot)
    }

    /// Makes the valid inactive slot the next to boot: its priority above
    /// the active slot's, which stays the fallback. Memory only.
    pub fn upgrade(&mut self) -> Result<SlotId, SlotError> {
        let slot = self.inactive();
        let p = self.get(slot).prio;
        if p.tries() == 0 || p.successful() {
            return Err(Self::illegal(
                "upgrade to",
                slot,
                format!("it is not a freshly written, valid slot ({p})"),
            ));
        }
        self.raise(slot);
        Ok(slot)
    }

    /// Undoes an upgrade that has not booted yet: the inactive slot goes
    /// back to unbootable. Memory only.
    pub fn cancel_upgrade(&mut self) -> Result<SlotId, SlotError> {
        let slot = self.inactive();
        let p = self.get(slot).prio;
        if p.successful() || p.priority() == 0 {
            return Err(Self::illegal(
                "cancel the upgrade to",
                slot,
                format!("no upgrade to it is pending ({p})"),
            ));
        }
        self.set(slot, p.with_priority(0).with_tries(0));
        Ok(slot)
    }

    /// Rolls back to the inactive slot: only when it would boot and has
    /// booted successfully before. The active slot stays bootable below it,
    /// so the rollback can itself be rolled back. Memory only.
    pub fn rollback(&mut self) -> Result<SlotId, SlotError> {
        let slot = self.inactive();
        let p = self.get(slot).prio;
        if !p.successful() {
            return Err(Self::illegal(
                "roll back to",
                slot,
                format!("it has never booted successfully ({p})"),
            ));
        }
        if p.priority() == 0 {
            return Err(Self::illegal(
                "roll back to",
                slot,
                format!("it has priority 0 (made unbootable or failed) ({p})"),
            ));
        }
        self.raise(slot);
        Ok(slot)
    }

    /// Marks `slot` as having booted successfully: successful, no tries
    /// left. On a node `slot` is the active one. Memory only.
    pub fn mark_successful(&mut self, slot: SlotId) -> Result<(), SlotError> {
        let p = self.get(slot).prio;
        if p.priority() == 0 {
            return Err(Self::illegal(
                "mark successful",
                slot,
                format!("it has priority 0 and cannot have been booted by the rule ({p})"),
            ));
        }
        self.set(slot, p.with_successful(true).with_tries(0));
        Ok(())
    }

    /// Records a failed update: `slot` ran out of tries without success.
    /// Its priority goes to 0 so it is never chosen again. Memory only.
    pub fn mark_failed(&mut self, slot: SlotId) -> Result<(), SlotError> {
        if slot == self.active {
            return Err(Self::illegal("mark failed", slot, "it is the running slot"));
        }
        let p = self.get(slot).prio;
        if p.successful() {
            return Err(Self::illegal(
                "mark failed",
                slot,
                format!("it booted successfully ({p})"),
            ));
        }
        self.set(slot, p.with_priority(0).with_tries(0));
        Ok(())
    }

    /// Gives `slot` priority 2 and the other slot priority 1 (when it is
    /// bootable or has booted successfully), so `slot` wins and the other
    /// remains the fallback.
    fn raise(&mut self, slot: SlotId) {
        let other = !slot;
        let po = self.get(other).prio;
        if po.priority() > 0 || po.successful() {
            self.set(other, po.with_priority(1));
        }
        let p = self.get(slot).prio;
        self.set(slot, p.with_priority(2));
    }

    /// Writes the table to `dev` (both headers, fsynced).
    pub fn write<D: Device>(&mut self, dev: &mut D) -> Result<(), SlotError> {
        self.table.write(dev, false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{self, LayoutSpec};
    use std::io::Cursor;

    fn fresh() -> (Slots, Cursor<Vec<u8>>) {
        let spec = LayoutSpec {
            esp_mib: 1,
            usr_mib: 2,
            oem_mib: 1,
            root_mib: 1,
            disk_guid: uuid::Uuid::nil(),
        };
        let mut dev = Cursor::new(vec![0u8; spec.disk_size() as usize]);
        let table = layout::create(&mut dev, Path::new("mem"), &spec).unwrap();
        (Slots::from_table(table, SlotId::A).unwrap(), dev)
    }

    fn bits(s: &Slots, slot: SlotId) -> (u8, u8, bool) {
        let p = s.get(slot).prio;
        (p.priority(), p.tries(), p.successful())
    }

    /// Boots the machine: the stage's rule and the agent's view afterwards.
    fn reboot(s: &mut Slots, dev: &mut Cursor<Vec<u8>>) -> SlotId {
        s.write(dev).unwrap();
        let mut stage = Slots::from_table(
            PartitionTable::read(dev, Path::new("mem")).unwrap(),
            SlotId::A,
        )
        .unwrap();
        let booted = stage.select_for_boot().slot().unwrap();
        stage.write(dev).unwrap();
        *s = Slots::from_table(PartitionTable::read(dev, Path::new("mem")).unwrap(), booted)
            .unwrap();
        booted
    }

    #[test]
    fn happy_path_update_then_manual_rollback() {
        let (mut s, mut dev) = fresh();
        assert_eq!(s.make_unbootable(), SlotId::B);
        assert_eq!(s.mark_valid(1).unwrap(), SlotId::B);
        assert_eq!(s.upgrade().unwrap(), SlotId::B);
        assert_eq!(bits(&s, SlotId::B), (2, 1, false));
        assert_eq!(bits(&s, SlotId::A), (1, 0, true));
        assert_eq!(reboot(&mut s, &mut dev), SlotId::B);
        assert_eq!(bits(&s, SlotId::B), (2, 0, false));
        s.mark_successful(SlotId::B).unwrap();
        assert_eq!(bits(&s, SlotId::B), (2, 0, true));
        assert_eq!(reboot(&mut s, &mut dev), SlotId::B);
        // Manual rollback to A, and back again.
        assert_eq!(s.rollback().unwrap(), SlotId::A);
        assert_eq!(reboot(&mut s, &mut dev), SlotId::A);
        assert_eq!(s.rollback().unwrap(), SlotId::B);
        assert_eq!(reboot(&mut s, &mut dev), SlotId::B);
    }

    #[test]
    fn failed_update_falls_back_and_is_marked_failed() {
        let (mut s, mut dev) = fresh();
        s.make_unbootable();
        s.mark_valid(1).unwrap();
        s.upgrade().unwrap();
        assert_eq!(reboot(&mut s, &mut dev), SlotId::B);
        // B never reached boot-complete: the next boot is A again.
        assert_eq!(reboot(&mut s, &mut dev), SlotId::A);
        assert_eq!(bits(&s, SlotId::B), (2, 0, false));
        s.mark_failed(SlotId::B).unwrap();
        assert_eq!(bits(&s, SlotId::B), (0, 0, false));
        assert!(s.rollback().is_err(), "a failed slot is no rollback target");
        assert_eq!(reboot(&mut s, &mut dev), SlotId::A);
    }

    #[test]
    fn illegal_transitions_are_typed_errors_and_change_nothing() {
        let (mut s, _) = fresh();
        let before = s.views();
        let illegal = |r: Result<SlotId, SlotError>| {
            assert!(matches!(r, Err(SlotError::Illegal { .. })), "{r:?}");
        };
        illegal(s.rollback()); // B never booted
        illegal(s.upgrade()); // B not written
        illegal(s.cancel_upgrade()); // nothing pending
        assert!(matches!(
            s.mark_successful(SlotId::B),
            Err(SlotError::Illegal { .. })
        ));
        assert!(matches!(
            s.mark_failed(SlotId::A),
            Err(SlotError::Illegal { .. })
        ));
        assert_eq!(before, s.views());
        // mark_valid only after make_unbootable, and with 1-15 tries.
        s.make_unbootable();
        illegal(s.mark_valid(0));
        illegal(s.mark_valid(16));
        s.mark_valid(2).unwrap();
        s.upgrade().unwrap();
        illegal(s.mark_valid(1)); // priority is no longer 0
        assert_eq!(s.cancel_upgrade().unwrap(), SlotId::B);
        assert_eq!(bits(&s, SlotId::B), (0, 0, false));
        assert_eq!(
            s.next_boot(),
            Decision::Boot {
                slot: SlotId::A,
                consume_try: false
            }
        );
        let msg = s.rollback().unwrap_err().to_string();
        assert!(msg.starts_with("cannot roll back to USR-B"), "{msg}");
    }

    #[test]
    fn offline_active_is_the_next_boot() {
        let (mut s, mut dev) = fresh();
        s.make_unbootable();
        s.mark_valid(1).unwrap();
        s.upgrade().unwrap();
        s.write(&mut dev).unwrap();
        let t = PartitionTable::read(&mut dev, Path::new("mem")).unwrap();
        assert_eq!(Slots::offline(t).unwrap().active(), SlotId::B);
    }
}
