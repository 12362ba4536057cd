//! `drover config`: the node config (os-config) on a build host.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_os_config::Source;

/// Node config commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a node config and print what applying it on first boot
    /// would do.
    ///
    /// Several files are merged in the order given, as the node merges its
    /// sources (image defaults, fw_cfg, OEM partition, kernel command
    /// line). Exits non-zero, naming the file and the key, when the config
    /// would be refused. Owners and units the image holds are resolved
    /// only on the node.
    Check(CheckArgs),
}

/// `drover config check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Config files (TOML), merged in this order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the settings and actions as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Command {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Check(a) => a.run(),
        }
    }
}

impl CheckArgs {
    fn run(self) -> anyhow::Result<()> {
        let mut sources = Vec::new();
        for f in &self.files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            sources.push(Source {
                name: f.display().to_string(),
                text,
            });
        }
        let (settings, actions) = drover_os_config::check(&sources)?;
        if self.json {
            let v = serde_json::json!({ "settings": settings, "actions": actions });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "valid: {} ({} action{} on first boot)",
            settings.sources.join(" + "),
            actions.len(),
            if actions.len() == 1 { "" } else { "s" }
        );
        for a in &actions {
            println!("  {a}");
        }
        Ok(())
    }
}
