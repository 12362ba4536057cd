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
    /// Disk image file or block device to change (with --slot).
    #[arg(long, value_name = "PATH", requires = "slot")]
    pub disk: Option<PathBuf>,
    /// The slot: USR-A or USR-B.
    #[arg(long, value_name = "SLOT", requires = "disk")]
    pub slot: Option<SlotId>,
    /// The slot this node booted, on the disk that holds it (what
    /// drover-boot-complete.service runs once boot-complete.target is
    /// reached).
    #[arg(long, conflicts_with_all = ["disk", "slot"])]
    pub booted: bool,
    /// The boot record that names the booted slot (with --booted).
    #[arg(
        long,
        default_value = drover_core::boot_record::ON_SYSTEM,
        value_name = "FILE"
    )]
    pub boot_record: PathBuf,
    /// Print the resulting slots as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let (disk, slot) = match (self.disk, self.slot) {
            (Some(d), Some(s)) if !self.booted => (d, s),
            _ if self.booted => (
                crate::node::find_disk()?,
                crate::node::booted(&self.boot_record)?.slot,
            ),
            _ => anyhow::bail!("give --booted, or --disk PATH and --slot SLOT"),
        };
        let mut file = crate::agent::open_locked(&disk)?;
        let mut r: &std::fs::File = &file;
        let table = PartitionTable::read(&mut r, &disk)?;
        let mut slots = Slots::from_table(table, slot)?;
        slots
            .mark_successful(slot)
            .context("marking the slot successful")?;
        slots
            .write(&mut *file)
            .with_context(|| format!("writing the partition table of {}", disk.display()))?;
        // The booted slot is good: this node never boots below its
        // security version again (the TPM's floor), unless an operator
        // says so at the console.
        let floor = if self.booted {
            raise_floor(&disk, &file, &slots, slot)
        } else {
            None
        };
        let out = SlotsJson::from_slots(&slots);
        if let Some(line) = floor {
            eprintln!("{line}");
        }
        if self.json {
            println!("{}", serde_json::to_string(&out)?);
        } else {
            println!("{slot} marked successful");
            out.print_text();
        }
        Ok(())
    }
}

/// Raises the TPM's security-version floor to the booted slot's signed
/// security version; what happened, as a line for the journal (None: no
/// TPM). A failure is reported, never fatal: the slot did boot.
fn raise_floor(
    disk: &std::path::Path,
    file: &std::fs::File,
    slots: &Slots,
    slot: SlotId,
) -> Option<String> {
    use drover_core::measured::{floor, tpm};
    tpm::device()?;
    let st = slots.get(slot);
    let raised = (|| -> anyhow::Result<u64> {
        let keys = drover_core::keys::TrustedKeys::load(&[PathBuf::from(
            drover_core::paths::SYSTEM_KEYS,
        )])?;
        let w = drover_core::slot_image::Window {
            file,
            offset: st.offset,
        };
        let v = drover_core::slot_image::open_verified(&w, st.size, disk, &keys)?;
        let mut ctx = tpm::open_conf(tpm::tcti(tpm::AUTO)?)?;
        Ok(floor::raise(
            &mut ctx,
            v.verified.manifest.os.security_version,
        )?)
    })();
    Some(match raised {
        Ok(f) => format!("security-version floor in the TPM: {f}"),
        Err(e) => format!("warning: the TPM's security-version floor was not raised: {e:#}"),
    })
}
