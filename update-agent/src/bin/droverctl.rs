//! `droverctl`: inspect and steer Drover's A/B slots and updates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_update_agent::ctl;

/// Inspect and steer Drover's A/B /usr slots.
#[derive(Debug, Parser)]
#[command(name = "droverctl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show both slots and which one boots next.
    Slots(ctl::slots::Args),
    /// Boot the other, previously good slot next.
    Rollback(ctl::rollback::Args),
    /// Record that a slot booted successfully.
    MarkSuccessful(ctl::mark_successful::Args),
    /// Apply a release to the inactive slot, offline.
    Update(ctl::update::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Slots(a) => a.run(),
        Command::Rollback(a) => a.run(),
        Command::MarkSuccessful(a) => a.run(),
        Command::Update(a) => a.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!(" -> {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
