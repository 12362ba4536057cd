//! `droverctl security-floor`: the TPM's security-version floor.

use drover_core::measured::{floor, tpm};

/// Show the security-version floor this node's TPM keeps, or remove it.
///
/// The boot stage refuses a slot whose signed security version is below
/// the floor; `drover-boot-complete.service` raises it to the security
/// version of each slot marked successful, and it never goes down on its
/// own. Nothing on the disk can lower it. For a deliberate downgrade,
/// `--reset` removes it (run as root on this node: it needs the TPM
/// owner's authorization); boot the older slot (`droverctl rollback
/// --reboot`), and the floor is set again at its version once it is
/// marked successful.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the floor.
    #[arg(long)]
    pub reset: bool,
    /// The TPM: `auto` (the kernel's device) or a TCTI name.
    #[arg(long, default_value = tpm::AUTO, value_name = "TCTI")]
    pub tpm: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let mut ctx = tpm::open_conf(tpm::tcti(&self.tpm)?)?;
        let removed = if self.reset {
            Some(floor::reset(&mut ctx)?)
        } else {
            None
        };
        let now = floor::read(&mut ctx)?;
        if self.json {
            println!("{}", serde_json::json!({"floor": now, "removed": removed}));
        } else {
            match (removed, now) {
                (Some(true), _) => println!("security-version floor removed"),
                (Some(false), _) => println!("there was no security-version floor"),
                (None, Some(f)) => println!("security-version floor: {f}"),
                (None, None) => println!("no security-version floor yet"),
            }
        }
        Ok(())
    }
}
