//! `drover`: build, inspect and publish Drover images.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_image_builder::commands;

/// Build, inspect and sign Drover images (an immutable container-host OS).
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a slot image and a bootable disk image from an image spec.
    Build(commands::build::Args),
    /// Generate an ed25519 signing key pair.
    Keygen(commands::keygen::Args),
    /// Format or verify dm-verity hash trees (veritysetup compatible).
    #[command(subcommand)]
    Verity(commands::verity::Command),
    /// Show and check the signed manifest of a slot or disk image.
    Inspect(commands::inspect::Args),
    /// Add a built release to a signed update channel in a static directory.
    Publish(commands::publish::Args),
    /// The update channel as a TUF repository: init, refresh, rotate-key,
    /// withdraw, show.
    #[command(subcommand)]
    Channel(commands::channel::Command),
    /// Make a delta bundle (the frames nodes on an older build lack) for
    /// air-gapped sites.
    Delta(commands::delta::Args),
    /// Check a node config (os-config) before it goes to a node.
    #[command(subcommand)]
    Config(commands::config::Command),
    /// Check a node's attestation evidence (`droverctl attest`) against
    /// the nonce and the published reference values.
    AttestVerify(commands::attest_verify::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => a.run(),
        Command::Keygen(a) => a.run(),
        Command::Verity(c) => c.run(),
        Command::Inspect(a) => a.run(),
        Command::Publish(a) => a.run(),
        Command::Delta(a) => a.run(),
        Command::Channel(c) => c.run(),
        Command::Config(c) => c.run(),
        Command::AttestVerify(a) => a.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", drover_core::error_report("error: ", "", e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
