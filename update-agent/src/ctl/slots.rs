//! `droverctl slots`: both slots and the slot that boots next.

use std::path::PathBuf;

use drover_core::PartitionTable;

use super::SlotsJson;

/// Show USR-A and USR-B (priority, tries, successful) and which slot the
/// boot stage would pick next, computed by the boot stage's own code.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disk image file or block device to read; by default the disk that
    /// holds this node's slots.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Print JSON: {"slots":[…],"next":"USR-A"|null,"decision":…}.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let disk = match self.disk {
            Some(d) => d,
            None => crate::node::find_disk()?,
        };
        let (table, _) = PartitionTable::open(&disk)?;
        // Not `Slots::offline`: a disk where nothing boots must still be shown.
        let slots = drover_core::Slots::from_table(table, drover_core::SlotId::A)?;
        let out = SlotsJson::from_slots(&slots);
        if self.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            out.print_text();
        }
        Ok(())
    }
}
