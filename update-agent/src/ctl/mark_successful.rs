//! `droverctl mark-successful`: record that a slot booted successfully.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::{PartitionTable, SlotId, Slots};

use super::SlotsJson;

/// Mark a slot as having booted successfully (successful bit set, tries 0).
///
/// On a node the agent does this once boot-complete.target is reached; this
/// command does the same to a disk image offline.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disk image file or block device to change.
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// The slot: USR-A or USR-B.
    #[arg(long, value_name = "SLOT")]
    pub slot: SlotId,
    /// Print the resulting slots as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let (table, mut file) = PartitionTable::open_rw(&self.disk)?;
        let mut slots = Slots::from_table(table, self.slot)?;
        slots
            .mark_successful(self.slot)
            .context("marking the slot successful")?;
        slots
            .write(&mut file)
            .with_context(|| format!("writing the partition table of {}", self.disk.display()))?;
        let out = SlotsJson::from_slots(&slots);
        if self.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!("{} marked successful", self.slot);
            out.print_text();
        }
        Ok(())
    }
}
