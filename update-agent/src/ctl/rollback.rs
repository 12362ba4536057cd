//! `droverctl rollback`: boot the other, previously good slot next.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::Slots;

use super::SlotsJson;

/// Make the other slot, which booted successfully before, the next to boot.
///
/// Refused when the other slot has never booted successfully or was made
/// unbootable. The current slot stays bootable below it, so a rollback can
/// itself be rolled back.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disk image file or block device to change offline (the active slot
    /// is the one that would boot next). Without it, drover-agent rolls
    /// this node back.
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Reboot into the other slot right away (on a node).
    #[arg(long, conflicts_with = "disk")]
    pub reboot: bool,
    /// Print the resulting slots as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let Some(disk) = self.disk else {
            return super::online::rollback(self.reboot, self.json);
        };
        let (mut slots, mut file) = Slots::open_offline(&disk, true)?;
        let from = slots.active();
        let to = slots.rollback().context("rolling back")?;
        slots
            .write(&mut file)
            .with_context(|| format!("writing the partition table of {}", disk.display()))?;
        let out = SlotsJson::from_slots(&slots);
        if self.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!("rolled back: {to} boots next (was {from})");
            out.print_text();
        }
        Ok(())
    }
}
