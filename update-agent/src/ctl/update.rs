//! `droverctl update --from DIR --disk IMAGE`: an offline (air-gapped) update.

use std::path::PathBuf;

use anyhow::Context as _;
use drover_core::keys::TrustedKeys;
use drover_core::Slots;

use crate::apply::{self, Policy};

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
    /// A directory holding usr.img (drover build output), or a usr.img file.
    #[arg(long, value_name = "DIR|FILE")]
    pub from: PathBuf,
    /// Disk image file or block device to update (offline).
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// Trusted public key (PEM) or directory of keys; repeatable.
    #[arg(long = "trust", value_name = "KEY", required = true)]
    pub trust: Vec<PathBuf>,
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
        let payload = if self.from.is_dir() {
            self.from.join("usr.img")
        } else {
            self.from.clone()
        };
        let trusted = TrustedKeys::load(&self.trust)?;
        let (mut slots, mut disk) = Slots::open_offline(&self.disk, true)?;
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
        let report = apply::apply(
            &mut slots,
            &mut disk,
            &self.disk,
            &payload,
            &trusted,
            Policy {
                allow_security_downgrade: self.allow_security_downgrade,
            },
            |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )
        .with_context(|| {
            format!(
                "updating {} from {}",
                self.disk.display(),
                payload.display()
            )
        })?;
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
