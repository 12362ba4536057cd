//! `drover channel`: the update channel as a TUF repository (see
//! [`crate::tuf`]).

use std::path::PathBuf;

use crate::tuf::{self, Expiries, Role};

/// TUF channel commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a channel a TUF repository: generate its keys (root keys with a
    /// threshold, a targets key, snapshot and timestamp keys) where missing
    /// and write root metadata version 1 and empty targets.
    ///
    /// Build the printed root metadata into the image (the spec's
    /// `[agent] tuf-root`): a node trusts the channel from it on and walks
    /// every later root version itself. Move the root keys offline after
    /// this; `drover publish --tuf-keys` needs the targets, snapshot and
    /// timestamp keys, `drover channel refresh` the timestamp key.
    Init(InitArgs),
    /// Re-sign the timestamp (and with --snapshot, the snapshot) with a new
    /// version and expiry. Run it from a timer or CI well within the
    /// timestamp's expiry: nodes refuse a channel whose timestamp expired
    /// (a freeze attack looks the same).
    Refresh(RefreshArgs),
    /// Replace a key: a new key file, and a new root version that lists it,
    /// signed by a threshold of the old root keys and of the new ones.
    ///
    /// For targets, snapshot and timestamp, the role's key is replaced and
    /// its metadata re-signed at once (the old key file is kept as
    /// NAME.pem.retired-vN). For root, --retire names the key that goes (a
    /// lost or leaked one: its file need not exist). Nodes that missed any
    /// number of rotations walk the root versions in order.
    RotateKey(RotateArgs),
    /// Withdraw releases: their targets leave the signed targets metadata
    /// (new targets, snapshot and timestamp are signed), so nodes that have
    /// not installed them no longer see them.
    ///
    /// Nodes already running a withdrawn release keep it: they never go
    /// back to an older version. Publish a newer one to move them on. The
    /// files stay in the repository (a download in flight completes; the
    /// node's next check drops the release). Needs the targets, snapshot
    /// and timestamp keys, as publishing does.
    Withdraw(WithdrawArgs),
    /// Show the channel's roles (versions, expiries, thresholds, key ids)
    /// and releases.
    Show(ShowArgs),
}

/// Which channel.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// The repository directory.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Channel name.
    #[arg(long, value_name = "NAME")]
    pub channel: String,
}

/// Expiries of what a command signs.
#[derive(Debug, clap::Args)]
pub struct ExpiryArgs {
    /// Root metadata expires this many days after signing.
    #[arg(long, default_value_t = Expiries::default().root_days, value_name = "N")]
    pub root_expires_days: u32,
    /// Targets metadata expires this many days after signing.
    #[arg(long, default_value_t = Expiries::default().targets_days, value_name = "N")]
    pub targets_expires_days: u32,
    /// Snapshot metadata expires this many days after signing.
    #[arg(long, default_value_t = Expiries::default().snapshot_days, value_name = "N")]
    pub snapshot_expires_days: u32,
    /// Timestamp metadata expires this many hours after signing.
    #[arg(long, default_value_t = Expiries::default().timestamp_hours, value_name = "N")]
    pub timestamp_expires_hours: u32,
}

impl From<&ExpiryArgs> for Expiries {
    fn from(a: &ExpiryArgs) -> Self {
        Expiries {
            root_days: a.root_expires_days,
            targets_days: a.targets_expires_days,
            snapshot_days: a.snapshot_expires_days,
            timestamp_hours: a.timestamp_expires_hours,
        }
    }
}

/// `drover channel init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Which channel.
    #[command(flatten)]
    pub at: Where,
    /// The channel's key directory (made when missing; existing key files
    /// of the fixed names are used).
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
    /// How many root keys.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub root_keys: usize,
    /// How many root keys must sign a new root version.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub root_threshold: usize,
    /// Expiries.
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover channel refresh`.
#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// Which channel.
    #[command(flatten)]
    pub at: Where,
    /// The key directory (the timestamp key; the snapshot key with
    /// --snapshot).
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
    /// Re-sign the snapshot too.
    #[arg(long)]
    pub snapshot: bool,
    /// Expiries.
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover channel rotate-key`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Which channel.
    #[command(flatten)]
    pub at: Where,
    /// The role whose key is replaced.
    #[arg(value_enum)]
    pub role: Role,
    /// The key directory: a threshold of the root keys, and for an online
    /// role the other online keys (its metadata is re-signed).
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
    /// For root: the key id (8 or more leading hex digits) of the key that
    /// goes.
    #[arg(long, value_name = "KEY_ID")]
    pub retire: Option<String>,
    /// Expiries.
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover channel withdraw`.
#[derive(Debug, clap::Args)]
pub struct WithdrawArgs {
    /// Which channel.
    #[command(flatten)]
    pub at: Where,
    /// The versions to withdraw.
    #[arg(required = true, value_name = "VERSION")]
    pub versions: Vec<String>,
    /// The key directory (targets, snapshot and timestamp keys).
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
    /// Expiries.
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `drover channel show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Which channel.
    #[command(flatten)]
    pub at: Where,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints `value` as one line of JSON, or the text `text` makes.
fn emit(
    json: bool,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

impl Command {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Init(a) => {
                let r = tuf::init(
                    &a.at.repo,
                    &a.at.channel,
                    &a.keys,
                    a.root_keys,
                    a.root_threshold,
                    (&a.expiry).into(),
                )?;
                emit(a.json, &r, || {
                    format!(
                        "channel {} is a TUF repository in {}\n  trusted root for the image: {}\n  keys: {}",
                        a.at.channel,
                        r.metadata.display(),
                        r.root.display(),
                        a.keys.display()
                    )
                })?;
            }
            Command::Refresh(a) => {
                let r = tuf::refresh(
                    &a.at.repo,
                    &a.at.channel,
                    &a.keys,
                    a.snapshot,
                    (&a.expiry).into(),
                )?;
                emit(a.json, &r, || {
                    format!(
                        "channel {}: timestamp version {}, snapshot version {}; the timestamp expires in {} h",
                        a.at.channel,
                        r.timestamp_version,
                        r.snapshot_version,
                        a.expiry.timestamp_expires_hours
                    )
                })?;
            }
            Command::RotateKey(a) => {
                let r = tuf::rotate_key(
                    &a.at.repo,
                    &a.at.channel,
                    &a.keys,
                    a.role,
                    a.retire.as_deref(),
                    (&a.expiry).into(),
                )?;
                emit(a.json, &r, || {
                    format!(
                        "channel {}: root version {} lists {} instead of key {}",
                        a.at.channel,
                        r.root_version,
                        r.new_key.display(),
                        r.retired
                    )
                })?;
            }
            Command::Withdraw(a) => {
                let r = tuf::withdraw(
                    &a.at.repo,
                    &a.at.channel,
                    &a.keys,
                    &a.versions,
                    (&a.expiry).into(),
                )?;
                emit(a.json, &r, || {
                    format!(
                        "channel {}: withdrew {} ({} targets); targets version {}, snapshot {}, timestamp {}",
                        a.at.channel,
                        r.versions.join(", "),
                        r.targets.len(),
                        r.published.targets_version,
                        r.published.snapshot_version,
                        r.published.timestamp_version
                    )
                })?;
            }
            Command::Show(a) => {
                let s = tuf::show(&a.at.repo, &a.at.channel)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    println!("channel {}", s.channel);
                    for role in ["root", "targets", "snapshot", "timestamp"] {
                        let r = &s.roles[role];
                        println!(
                            "  {role:<9} version {:<4} expires {}  {} of {} keys: {}",
                            r.version,
                            r.expires,
                            r.threshold,
                            r.keys.len(),
                            r.keys
                                .iter()
                                .map(|k| &k[..16])
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    for r in &s.releases {
                        println!(
                            "  release {} (security {}, {} {}): {} bytes, {}",
                            r.info.version,
                            r.info.security_version,
                            r.info.os,
                            r.info.arch,
                            r.length,
                            r.target
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
