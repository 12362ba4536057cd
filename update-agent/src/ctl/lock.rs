//! `droverctl lock`: the fleet's reboot lock and failure counts, through
//! the client code the agent uses ([`crate::fleet`]). The lock server
//! comes from the agent's configuration unless given here.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::config::{self, Config, EtcdLock, FleetLock, Reboot, Strategy};
use crate::fleet::{self, Acquired, Lock};

/// Where the lock is: flags, else the agent's configuration.
#[derive(Debug, clap::Args)]
pub struct Server {
    /// etcd client URLs, comma-separated (`https://10.0.0.1:2379,…`).
    #[arg(
        long,
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        conflicts_with = "fleetlock"
    )]
    pub etcd: Vec<String>,
    /// The CA of the etcd members' certificates (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with --etcd-key.
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// A FleetLock server's base URL.
    #[arg(long, value_name = "URL")]
    pub fleetlock: Option<String>,
    /// The lock group [default: the configured one, else `default`].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// The agent's defaults file (for the lock server and group).
    #[arg(long, default_value = config::DEFAULTS, value_name = "FILE", hide = true)]
    pub config: PathBuf,
    /// The agent's drop-in directory.
    #[arg(long, default_value = config::DROP_INS, value_name = "DIR", hide = true)]
    pub config_dir: PathBuf,
}

impl Server {
    /// The lock these flags (or the agent's configuration) name.
    pub fn open(&self) -> anyhow::Result<Box<dyn Lock>> {
        let group = |configured: Option<&str>| {
            self.group
                .clone()
                .or(configured.map(String::from))
                .unwrap_or_else(|| drover_core::agent_config::DEFAULT_GROUP.to_string())
        };
        let reboot = if !self.etcd.is_empty() {
            Reboot {
                strategy: Strategy::EtcdLock,
                etcd: Some(EtcdLock {
                    endpoints: self.etcd.clone(),
                    ca: self.etcd_ca.clone(),
                    cert: self.etcd_cert.clone(),
                    key: self.etcd_key.clone(),
                    group: group(None),
                }),
                ..Reboot::default()
            }
        } else if let Some(url) = &self.fleetlock {
            Reboot {
                strategy: Strategy::Fleetlock,
                fleetlock: Some(FleetLock {
                    url: url.clone(),
                    group: group(None),
                }),
                ..Reboot::default()
            }
        } else {
            let cfg = Config::load_from(&self.config, &self.config_dir)
                .context("reading the agent's configuration for its lock server (or give --etcd or --fleetlock)")?;
            let mut r = cfg.reboot;
            if let Some(e) = r.etcd.as_mut() {
                e.group = group(Some(&e.group));
            }
            if let Some(f) = r.fleetlock.as_mut() {
                f.group = group(Some(&f.group));
            }
            r
        };
        reboot.validate().map_err(anyhow::Error::msg)?;
        fleet::open(&reboot)?.with_context(|| {
            format!(
                "reboot strategy {} takes no lock (give --etcd or --fleetlock)",
                reboot.strategy
            )
        })
    }
}

/// The fleet's reboot lock: who holds it, take or give back a slot, change
/// the number of holders, and the failed boots that halt a release.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Who holds the lock, how many may, and the releases with failed boots.
    Status {
        #[command(flatten)]
        server: Server,
        /// Print `{"group","max","holders":[{"id","since"}],"failures":[…]}`.
        #[arg(long)]
        json: bool,
    },
    /// Take a slot (exit 0), or fail naming the holders when it is full.
    Acquire {
        #[command(flatten)]
        server: Server,
        /// The holder's id [default: this node's].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Give back a slot: this node's, or a dead node's with --id.
    Release {
        #[command(flatten)]
        server: Server,
        /// The holder's id [default: this node's].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Set how many nodes of the group may reboot at once (0 pauses the
    /// group's reboots: updates are written, nobody reboots into them).
    SetMax {
        /// The number of holders.
        #[arg(value_name = "N")]
        max: u32,
        #[command(flatten)]
        server: Server,
        /// Print the new state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift a release's halt: forget its failed boots.
    ClearFailures {
        /// The release.
        #[arg(value_name = "VERSION")]
        release: String,
        #[command(flatten)]
        server: Server,
    },
}

fn this_node() -> String {
    fleet::node_id(&crate::node::machine_id())
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Status { server, json } => {
                let lock = server.open()?;
                let status = lock.status()?;
                let failures = lock.all_failures()?;
                if json {
                    let mut v = serde_json::to_value(&status)?;
                    v["failures"] = serde_json::to_value(&failures)?;
                    println!("{v}");
                } else {
                    println!("{}", lock.describe());
                    println!("{}", status.summary());
                    for f in &failures {
                        println!(
                            "failed boots of {}: {} node(s) ({})",
                            f.version,
                            f.count(),
                            f.groups
                                .iter()
                                .map(|(g, n)| format!("{g}: {n}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
                Ok(())
            }
            Command::Acquire { server, id } => {
                let lock = server.open()?;
                let id = id.unwrap_or_else(this_node);
                match lock.acquire(&id)? {
                    Acquired::Held => {
                        println!("{id} holds a slot of {}", lock.describe());
                        Ok(())
                    }
                    Acquired::Refused(why) => bail!("{why}"),
                }
            }
            Command::Release { server, id } => {
                let lock = server.open()?;
                let id = id.unwrap_or_else(this_node);
                if lock.release(&id)? {
                    println!("{id} gave back its slot of {}", lock.describe());
                } else {
                    println!("{id} held no slot of {}", lock.describe());
                }
                Ok(())
            }
            Command::SetMax { max, server, json } => {
                let lock = server.open()?;
                let s = lock.set_max(max)?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!("{}", s.summary());
                    if max == 0 {
                        println!(
                            "no node of group {} reboots into an update until `droverctl lock set-max N` with N ≥ 1",
                            s.group
                        );
                    }
                }
                Ok(())
            }
            Command::ClearFailures {
                release: version,
                server,
            } => {
                let lock = server.open()?;
                if lock.clear_failures(&version)? {
                    println!("the failed boots of {version} are forgotten: its halt is lifted");
                } else {
                    println!("no failed boots of {version} were recorded");
                }
                Ok(())
            }
        }
    }
}
