//! Stage mode: choose the slot and check it before anything of it runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use drover_core::keys::TrustedKeys;
use drover_core::slot_image::{self, ReadAt, VerifiedSlot};
use drover_core::{Decision, PartitionTable, SlotId, Slots};

/// A partition of an open disk, read at offsets.
struct Partition<'a> {
    file: &'a File,
    offset: u64,
}

impl ReadAt for Partition<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self.file, buf, self.offset + offset)
    }
}

/// Prints one step with the time it took, the way the stage reports.
pub fn step(start: Instant, msg: &str) {
    println!(
        "drover-boot: [{:>7.3}s] {msg}",
        start.elapsed().as_secs_f64()
    );
}

/// The chosen, signature-checked slot.
#[derive(Debug)]
pub struct Chosen {
    /// Which slot.
    pub slot: SlotId,
    /// How it was chosen.
    pub decision: Decision,
    /// Its verified manifest and verity parameters.
    pub verified: VerifiedSlot,
}

/// Chooses a slot on `disk` by the rule, writes the used-up try, and checks
/// the slot's manifest signature. A slot that fails the check is not
/// booted: the rule runs again without it (it keeps its decremented tries).
pub fn choose(disk: &Path, keys: &TrustedKeys, start: Instant) -> anyhow::Result<Chosen> {
    let mut refused: Vec<(SlotId, String)> = Vec::new();
    loop {
        let (table, mut file) = PartitionTable::open_rw(disk)?;
        let mut slots = Slots::from_table(table, SlotId::A)?;
        let excluded: Vec<SlotId> = refused.iter().map(|(s, _)| *s).collect();
        let decision = slots.select_for_boot_excluding(&excluded);
        let Some(slot) = decision.slot() else {
            let why = match decision {
                Decision::Rescue { reason } => reason.to_string(),
                _ => unreachable!(),
            };
            let refused: Vec<String> = refused.iter().map(|(s, e)| format!("{s}: {e}")).collect();
            anyhow::bail!(
                "nothing to boot: {why}; refused: {}",
                if refused.is_empty() {
                    "none".into()
                } else {
                    refused.join("; ")
                }
            );
        };
        if let Decision::Boot {
            consume_try: true, ..
        } = decision
        {
            slots.write(&mut file).context("writing the used-up try")?;
            step(
                start,
                &format!("{slot}: one try used up and written before anything of it runs"),
            );
        }
        step(start, &format!("chose {slot} ({})", decision.kind()));
        let st = slots.get(slot);
        let part = Partition {
            file: &file,
            offset: st.offset,
        };
        match slot_image::open_verified(&part, st.size, disk, keys) {
            Ok(verified) => {
                step(
                    start,
                    &format!(
                        "{slot}: manifest of {} {} signed by {}",
                        verified.verified.manifest.os.name,
                        verified.verified.manifest.os.version,
                        verified.verified.key.short_id()
                    ),
                );
                return Ok(Chosen {
                    slot,
                    decision,
                    verified,
                });
            }
            Err(e) => {
                step(start, &format!("{slot} REFUSED: {e}"));
                refused.push((slot, e.to_string()));
                if refused.len() >= 2 {
                    anyhow::bail!(
                        "no slot verifies: {}",
                        refused
                            .iter()
                            .map(|(s, e)| format!("{s}: {e}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                }
            }
        }
    }
}

/// Finds the disk with the slots, retrying while devices appear.
pub fn find_disk(start: Instant) -> anyhow::Result<PathBuf> {
    for _ in 0..100 {
        let parts = crate::devices::partitions(Path::new("/sys/class/block"));
        if let Some(d) = crate::devices::slot_disk(&parts) {
            step(start, &format!("slots found on {}", d.display()));
            return Ok(d);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("no disk with USR-A and USR-B partitions appeared within 10 s")
}
