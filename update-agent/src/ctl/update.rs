//! `droverctl update`: through the agent on a node, or offline into a disk
//! image (`--from DIR|URL|FILE --disk IMAGE`, an air-gapped update).

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::keys::TrustedKeys;
use drover_core::Slots;

use crate::apply::{self, Policy, Target, Trust};
use crate::engine::{self, Node, Remote, Repo, Watch};
use crate::state::StateFile;

/// Apply a release to the inactive slot of a disk image or block device,
/// offline: from a build or published directory (a USB stick, a mirror) or
/// a payload file.
///
/// The same checks and the same order of writes as the agent: the payload's
/// signature and security version are checked first, the inactive slot is made
/// unbootable, the payload is streamed in and hashed, and only when it matches
/// its signed manifest is the slot marked valid (one try) and chosen for the
/// next boot.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the release comes from: a published repository (a directory
    /// with channels/, or its http(s):// URL; a delta when it has block
    /// indexes), a drover build output directory, a usr.img file, or a
    /// delta bundle made by `drover delta` for the release this disk runs.
    /// Required with --disk; on a node, the agent's configured server when
    /// not given.
    #[arg(long, value_name = "DIR|URL|FILE")]
    pub from: Option<String>,
    /// The channel to take the release from, in a published repository.
    #[arg(long, default_value = "stable", value_name = "NAME")]
    pub channel: String,
    /// Where the agent state lives (channel sequence numbers seen, versions
    /// that failed, the resume point of an interrupted download).
    #[arg(long, default_value = "/var/lib/drover", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Disk image file or block device to update offline. Without it,
    /// drover-agent does the update on this node.
    #[arg(long, value_name = "PATH", requires = "from")]
    pub disk: Option<PathBuf>,
    /// Trusted public key (PEM) or directory of keys; repeatable (offline).
    #[arg(long = "trust", value_name = "KEY", requires = "disk")]
    pub trust: Vec<PathBuf>,
    /// The channel's trusted TUF root metadata (what the image carries in
    /// /usr/lib/drover/tuf/CHANNEL.root.json): read the channel as a TUF
    /// repository (offline; the agent finds its root itself).
    #[arg(long, value_name = "FILE", requires = "disk")]
    pub tuf_root: Option<PathBuf>,
    /// Accept a release whose security version is below the running one.
    #[arg(long)]
    pub allow_security_downgrade: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let Some(disk_path) = self.disk.clone() else {
            return super::online::update(self.from.as_deref(), self.json);
        };
        if self.trust.is_empty() {
            anyhow::bail!("--disk needs at least one --trust KEY");
        }
        let from = self.from.clone().unwrap_or_default();
        let trusted = TrustedKeys::load(&self.trust)?;
        let (mut slots, mut disk) = Slots::open_offline(&disk_path, true)?;
        let bar = if self.json {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "writing {msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            );
            b.set_message(slots.inactive().label());
            b
        };
        let trust = Trust {
            keys: &trusted,
            policy: Policy {
                allow_security_downgrade: self.allow_security_downgrade,
            },
        };
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let mut progress = |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let repo = Repo::parse(&from);
        let is_repo = match &repo {
            Repo::Url(_) => true,
            Repo::Dir(d) => d.join("channels").is_dir() || d.join("tuf").is_dir(),
        };
        let report = if is_repo {
            let state = StateFile::in_dir(&self.state_dir);
            let running = apply::running_manifest(&slots, &disk, &disk_path, &trusted)
                .context("the running slot of the disk has no manifest signed by a trusted key")?;
            let node = Node {
                version: running.os.version.clone(),
                security_version: running.os.security_version,
                machine_id: String::new(),
                os: running.os.name.clone(),
            };
            let client = crate::source::client(crate::source::STALL_TIMEOUT)?;
            let tuf_root = match &self.tuf_root {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let remote = Remote {
                repo: &repo,
                client: &client,
                tuf_root: tuf_root.as_deref(),
            };
            let check = engine::check(remote, &self.channel, trust, &state, &node, true)
                .with_context(|| format!("checking channel {} at {}", self.channel, from))?;
            let Some(release) = check.release else {
                bar.finish_and_clear();
                if self.json {
                    println!("{}", serde_json::to_string(&check)?);
                } else {
                    println!(
                        "{} is up to date with channel {} (sequence {})",
                        node.version, check.channel, check.sequence
                    );
                }
                return Ok(());
            };
            let target = Target {
                slots: &mut slots,
                disk: &mut disk,
                path: &disk_path,
            };
            let watch = Watch {
                progress: &mut progress,
                cancel: &cancel,
            };
            let (report, resumed) =
                engine::apply_release(remote, &release, target, trust, &state, &node, watch)?;
            if resumed > 0 && !self.json {
                eprintln!("resumed an interrupted download at byte {resumed}");
            }
            report
        } else {
            let payload = match &repo {
                Repo::Dir(d) if d.is_dir() => d.join("usr.img"),
                _ => PathBuf::from(&from),
            };
            let target = Target {
                slots: &mut slots,
                disk: &mut disk,
                path: &disk_path,
            };
            let hooks = apply::Hooks {
                progress: &mut progress,
                checkpoint: &mut |_| {},
                cancel: &cancel,
            };
            // A delta bundle (`drover delta`), else a slot image.
            let bundle = crate::delta::Bundle::open(&payload)
                .with_context(|| format!("reading {}", payload.display()))?;
            match bundle {
                // One bundle serves as the header's source and the frames'.
                Some(b) => {
                    crate::delta::apply(target, &b, &b, &b.index_bytes, None, trust, 0, hooks)
                }
                None => {
                    let mut src = apply::FileSource::open(&payload)?;
                    apply::apply(target, &mut src, None, trust, 0, hooks)
                }
            }
            .with_context(|| {
                format!(
                    "updating {} from {}",
                    disk_path.display(),
                    payload.display()
                )
            })?
        };
        bar.finish_and_clear();
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} (security version {}) written to {} and chosen for the next boot, with one try",
                report.version, report.security_version, report.slot
            );
            super::SlotsJson::from_slots(&slots).print_text();
        }
        Ok(())
    }
}
