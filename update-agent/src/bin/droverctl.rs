//! `droverctl`: inspect and steer Drover's A/B slots and updates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_update_agent::ctl;

/// Inspect and steer Drover's updates and A/B /usr slots.
///
/// On a node the commands talk to drover-agent over D-Bus; with --disk the
/// slot commands and `update` work on a disk image or block device offline.
#[derive(Debug, Parser)]
#[command(name = "droverctl", version, propagate_version = true)]
struct Cli {
    /// The D-Bus drover-agent is on: `system`, or an address
    /// (`unix:path=…`). Also from DROVER_BUS.
    #[arg(long, global = true, value_name = "BUS")]
    bus: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the agent is doing, the booted and the other slot.
    Status(ctl::online::StatusArgs),
    /// Check the channel for a newer release now.
    Check(ctl::online::CheckArgs),
    /// Stop an update that is being written.
    Cancel(ctl::online::CancelArgs),
    /// Let the agent install a version that failed here again.
    ForgetFailed(ctl::online::ForgetFailedArgs),
    /// Show both slots and which one boots next.
    Slots(ctl::slots::Args),
    /// Boot the other, previously good slot next.
    Rollback(ctl::rollback::Args),
    /// Record that a slot booted successfully.
    MarkSuccessful(ctl::mark_successful::Args),
    /// Show, or remove for a deliberate downgrade, the security-version
    /// floor the TPM keeps.
    SecurityFloor(ctl::security_floor::Args),
    /// Write a newer release to the other slot (through the agent, or offline
    /// into a disk image).
    Update(ctl::update::Args),
    /// Check this boot's TPM measurements against the event logs and the
    /// booted slot's signed manifest.
    VerifyBoot(ctl::verify_boot::Args),
    /// Quote this boot's PCRs with a verifier's nonce, for
    /// `drover attest-verify`.
    Attest(ctl::attest::Args),
    /// The fleet's reboot lock (etcd or FleetLock) and the failed boots
    /// that halt a release.
    Lock(ctl::lock::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(b) = &cli.bus {
        // Before any thread exists.
        std::env::set_var("DROVER_BUS", b);
    }
    let result = match cli.command {
        Command::Status(a) => a.run(),
        Command::Check(a) => a.run(),
        Command::Cancel(a) => a.run(),
        Command::ForgetFailed(a) => a.run(),
        Command::Slots(a) => a.run(),
        Command::Rollback(a) => a.run(),
        Command::MarkSuccessful(a) => a.run(),
        Command::SecurityFloor(a) => a.run(),
        Command::Update(a) => a.run(),
        Command::VerifyBoot(a) => a.run(),
        Command::Attest(a) => a.run(),
        Command::Lock(a) => a.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", drover_core::error_report("error: ", "", e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
