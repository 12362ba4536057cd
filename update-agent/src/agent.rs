//! The agent's work, shared by its D-Bus API, its poll loop and its tests:
//! post-boot bookkeeping (confirm or detect a rollback), check, apply,
//! cancel, rollback, reboot by strategy, and the status everyone reads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use drover_core::keys::TrustedKeys;
use drover_core::slot_image::{self, Window};
use drover_core::{PartitionTable, SlotId, Slots};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::apply::Policy;
use crate::config::{Config, Strategy};
use crate::engine::{self, Node, Repo, Verdict};
use crate::node::Booted;
use crate::reboot::Rebooter;
use crate::state::{Rollback, StateFile};

/// How long an operator's command waits for a check of the channel that
/// is under way (a check is bounded by the download stall timeout).
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// What the agent is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Nothing.
    Idle,
    /// Reading the channel.
    Checking,
    /// Writing a release into the other slot.
    Applying,
    /// An update waits for a reboot (strategy, window or inhibitor).
    RebootPending,
    /// Asked logind to reboot.
    Rebooting,
    /// The booted slot is new and waits for boot-complete.target.
    Confirming,
}

/// The other (not booted) slot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OtherSlot {
    /// USR-A or USR-B.
    pub slot: String,
    /// Its version, when it holds a verified image.
    pub version: Option<String>,
    /// `good` (booted successfully before), `staged` (chosen for the next
    /// boot, one try), `unbootable` or `empty`.
    pub state: String,
}

/// Everything `droverctl status` shows: the D-Bus `Status` method's
/// answer, which `droverctl status` reads back with this type.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// The booted slot and version.
    pub booted: Booted,
    /// Whether the booted slot is marked successful.
    pub booted_successful: bool,
    /// The other slot.
    pub other: OtherSlot,
    /// What the agent is doing.
    pub operation: Operation,
    /// Bytes written and in all, while applying.
    pub progress: Option<(u64, u64)>,
    /// Channel followed and server.
    pub channel: String,
    /// Repository.
    pub server: Option<String>,
    /// Reboot strategy.
    pub reboot_strategy: Strategy,
    /// Seconds since the Unix epoch of the last successful check.
    pub last_check: Option<u64>,
    /// What the last check found.
    pub last_verdict: Option<Verdict>,
    /// The last error, if the last operation failed.
    pub last_error: Option<String>,
    /// Failures since the agent started.
    pub failures: u64,
    /// Versions that failed to boot here.
    pub failed_versions: Vec<String>,
    /// The last rollback.
    pub last_rollback: Option<Rollback>,
    /// Why a reboot waits, when it does.
    pub reboot_blocked: Option<String>,
    /// This boot's measured-boot verdict (`drover-verify-boot.service`),
    /// once the check has run.
    pub measured_boot: Option<MeasuredBoot>,
}

/// `drover-verify-boot.service`'s verdict on this boot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct MeasuredBoot {
    /// The stage measured the boot into a TPM.
    pub measured: bool,
    /// Every check passed.
    pub verified: bool,
    /// The first thing that did not, for people.
    pub problem: Option<String>,
}

impl MeasuredBoot {
    /// Reads the verdict the unit left, if it has run.
    pub fn read() -> Option<MeasuredBoot> {
        let r = crate::measured::Report::read_verdict(Path::new(crate::measured::VERDICT))?;
        Some(MeasuredBoot {
            measured: r.measured,
            verified: r.verified,
            problem: r.first_problem(),
        })
    }
}

/// A state change or progress, for D-Bus signals.
#[derive(Clone, Debug)]
pub enum Event {
    /// Bytes written, bytes in all.
    Progress(u64, u64),
    /// The operation changed.
    State(Operation),
}

/// The agent.
pub struct Agent {
    /// Its configuration.
    pub cfg: Config,
    trusted: TrustedKeys,
    state: StateFile,
    disk: PathBuf,
    booted: Booted,
    machine_id: String,
    status: Mutex<Status>,
    cancel: AtomicBool,
    busy: Mutex<()>,
    notify: Box<dyn Fn(Event) + Send + Sync>,
    rebooter: Box<dyn Rebooter>,
}

/// The disk, opened read-write and locked (`flock`, exclusive) for the
/// time of a read-modify-write of its table: `droverctl` and the agent take
/// the same lock, and udev leaves a locked disk alone.
pub fn open_locked(disk: &Path) -> anyhow::Result<Flock<File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", disk.display()))
}

/// The slots of the partition table on `disk` (open as `f`), `booted` active.
pub(crate) fn slots_of(disk: &Path, f: &File, booted: SlotId) -> anyhow::Result<Slots> {
    let mut r = f;
    let table = PartitionTable::read(&mut r, disk)?;
    Ok(Slots::from_table(table, booted)?)
}

impl Agent {
    /// An agent for the node described by `cfg`, booted as `booted` from
    /// `disk`.
    pub fn new(
        cfg: Config,
        disk: PathBuf,
        booted: Booted,
        machine_id: String,
        notify: Box<dyn Fn(Event) + Send + Sync>,
        rebooter: Box<dyn Rebooter>,
    ) -> anyhow::Result<Arc<Agent>> {
        let trusted = TrustedKeys::load(&cfg.trusted_keys)?;
        let state = StateFile::in_dir(&cfg.state_dir);
        let st = state.load()?;
        let status = Status {
            booted: booted.clone(),
            booted_successful: false,
            other: OtherSlot::default(),
            operation: Operation::Idle,
            progress: None,
            channel: cfg.channel.clone(),
            server: cfg.server.clone(),
            reboot_strategy: cfg.reboot.strategy,
            last_check: st.last_check,
            last_verdict: None,
            last_error: None,
            failures: 0,
            failed_versions: st.failed_versions.clone(),
            last_rollback: st.last_rollback.clone(),
            reboot_blocked: None,
            measured_boot: None,
        };
        let a = Arc::new(Agent {
            cfg,
            trusted,
            state,
            disk,
            booted,
            machine_id,
            status: Mutex::new(status),
            cancel: AtomicBool::new(false),
            busy: Mutex::new(()),
            notify,
            rebooter,
        });
        a.refresh()?;
        Ok(a)
    }

    /// The status now.
    pub fn status(&self) -> Status {
        let mut s = self.status.lock().expect("status lock").clone();
        s.measured_boot = MeasuredBoot::read();
        s
    }

    fn set_op(&self, op: Operation) {
        let changed = {
            let mut s = self.status.lock().expect("status lock");
            let c = s.operation != op;
            s.operation = op;
            if op != Operation::Applying {
                s.progress = None;
            }
            c
        };
        if changed {
            tracing::info!(operation = ?op, "state changed");
            (self.notify)(Event::State(op));
        }
    }

    fn fail(&self, e: &anyhow::Error) {
        let mut s = self.status.lock().expect("status lock");
        s.last_error = Some(format!("{e:#}"));
        s.failures += 1;
    }

    fn node(&self) -> anyhow::Result<Node> {
        let f = File::open(&self.disk)?;
        let slots = slots_of(&self.disk, &f, self.booted.slot)?;
        let m = crate::apply::running_manifest(&slots, &f, &self.disk, &self.trusted)
            .context("the booted slot holds no manifest signed by a trusted key")?;
        Ok(Node {
            version: m.os.version,
            security_version: m.os.security_version,
            machine_id: self.machine_id.clone(),
        })
    }

    /// Re-reads the slots into the status.
    pub fn refresh(&self) -> anyhow::Result<()> {
        let f = File::open(&self.disk)?;
        let slots = slots_of(&self.disk, &f, self.booted.slot)?;
        let other = !self.booted.slot;
        let st = slots.get(other);
        let w = Window {
            file: &f,
            offset: st.offset,
        };
        let version = slot_image::open_verified(&w, st.size, &self.disk, &self.trusted)
            .ok()
            .map(|v| v.verified.manifest.os.version);
        let p = st.prio;
        let state = if p.priority() == 0 {
            if version.is_some() {
                "unbootable"
            } else {
                "empty"
            }
        } else if p.successful() {
            "good"
        } else if p.tries() > 0 {
            "staged"
        } else {
            "failed"
        };
        let mut s = self.status.lock().expect("status lock");
        s.booted_successful = slots.get(self.booted.slot).prio.successful();
        s.other = OtherSlot {
            slot: other.label().to_string(),
            version,
            state: state.to_string(),
        };
        Ok(())
    }

    /// After boot: confirm an update that booted, or detect one that did
    /// not (the stage fell back to the other slot) — record its version as
    /// failed, give its slot priority 0, and report the rollback.
    pub fn after_boot(&self) -> anyhow::Result<()> {
        let st = self.state.load()?;
        let Some(p) = st.pending.clone() else {
            return self.refresh();
        };
        let booted_label = self.booted.slot.label();
        if p.slot == booted_label {
            let successful = {
                let f = File::open(&self.disk)?;
                slots_of(&self.disk, &f, self.booted.slot)?
                    .get(self.booted.slot)
                    .prio
                    .successful()
            };
            if successful {
                tracing::info!(version = %p.version, slot = %p.slot, "update confirmed: the new slot booted successfully");
                self.state.update(|s| s.pending = None)?;
            } else {
                tracing::info!(version = %p.version, "booted the new slot; waiting for boot-complete.target");
                self.set_op(Operation::Confirming);
            }
        } else {
            let failed: SlotId = p.slot.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            {
                let mut f = open_locked(&self.disk)?;
                let mut slots = slots_of(&self.disk, &f, self.booted.slot)?;
                if let Err(e) = slots.mark_failed(failed) {
                    tracing::warn!("{e}");
                } else {
                    slots.write(&mut *f)?;
                }
            }
            let rb = Rollback {
                from_version: p.version.clone(),
                to_version: self.booted.version.clone(),
                at: drover_core::channel::now(),
                manual: false,
                reason: p.failure.clone(),
            };
            tracing::warn!(
                failed_version = %p.version,
                running_version = %self.booted.version,
                "ROLLBACK: {} did not boot successfully; back on {} ({}), and {} will not be installed again on its own",
                p.version, self.booted.version, booted_label, p.version
            );
            self.state.update(|s| {
                s.pending = None;
                if !s.failed_versions.contains(&p.version) {
                    s.failed_versions.push(p.version.clone());
                }
                s.last_rollback = Some(rb.clone());
            })?;
            let mut s = self.status.lock().expect("status lock");
            s.last_rollback = Some(rb);
            s.failed_versions.push(p.version);
        }
        self.refresh()
    }

    /// Called while confirming: once the booted slot is marked successful,
    /// the update is confirmed; when a check `boot-complete.target`
    /// requires has failed (`failed_checks`, see [`crate::assess`]) or
    /// past the timeout, the agent reboots into the previous slot (the new
    /// one has no tries left, so the stage falls back).
    pub fn confirm_tick(
        &self,
        since_boot: std::time::Duration,
        failed_checks: impl FnOnce() -> Vec<String>,
    ) -> anyhow::Result<()> {
        if self.status().operation != Operation::Confirming {
            return Ok(());
        }
        self.refresh()?;
        if self.status().booted_successful {
            self.state.update(|s| s.pending = None)?;
            tracing::info!(
                "update confirmed: boot-complete.target reached and the slot marked successful"
            );
            self.set_op(Operation::Idle);
            return Ok(());
        }
        let failed = failed_checks();
        let reason = if !failed.is_empty() {
            let mut reason = format!("boot check failed: {}", failed.join(", "));
            if failed.iter().any(|u| u == "drover-verify-boot.service") {
                if let Some(p) = MeasuredBoot::read().and_then(|m| m.problem) {
                    reason.push_str(&format!(" ({p})"));
                }
            }
            reason
        } else if since_boot.as_secs() >= self.cfg.boot_complete_timeout_secs {
            format!(
                "boot-complete.target not reached within {} s",
                self.cfg.boot_complete_timeout_secs
            )
        } else {
            return Ok(());
        };
        tracing::warn!(
            failed_units = %failed.join(" "),
            "boot assessment failed ({reason}): rebooting into the previous slot"
        );
        self.state.update(|s| {
            if let Some(p) = s.pending.as_mut() {
                p.failure = Some(reason.clone());
            }
        })?;
        self.set_op(Operation::Rebooting);
        self.rebooter.reboot()?;
        Ok(())
    }

    /// Checks the channel. Does not apply.
    pub fn check(&self, ignore_rollout: bool, from: Option<&str>) -> anyhow::Result<engine::Check> {
        let server = self.repo(from)?;
        let prev = self.status().operation;
        self.set_op(Operation::Checking);
        let r = (|| {
            let client = self.http()?;
            engine::check(
                &Repo::parse(&server),
                &client,
                &self.cfg.channel,
                &self.trusted,
                &self.state,
                &self.node()?,
                self.policy(),
                ignore_rollout,
            )
        })();
        self.set_op(prev);
        match &r {
            Ok(c) => {
                let mut s = self.status.lock().expect("status lock");
                s.last_check = Some(drover_core::channel::now());
                s.last_verdict = Some(c.verdict.clone());
                s.last_error = None;
                tracing::info!(verdict = ?c.verdict, sequence = c.sequence, "checked channel {}", c.channel);
            }
            Err(e) => {
                tracing::error!("check failed: {e:#}");
                self.fail(e);
            }
        }
        r
    }

    /// The HTTP client, with the configured stall timeout.
    fn http(&self) -> reqwest::Result<reqwest::blocking::Client> {
        crate::source::client(std::time::Duration::from_secs(
            self.cfg.download_stall_timeout_secs,
        ))
    }

    /// `from`, else the configured server.
    fn repo(&self, from: Option<&str>) -> anyhow::Result<String> {
        match from.filter(|f| !f.is_empty()) {
            Some(f) => Ok(f.to_string()),
            None => self
                .cfg
                .server
                .clone()
                .context("no server configured (set `server` in /etc/drover/agent.toml.d/)"),
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            allow_security_downgrade: self.cfg.allow_security_downgrade,
        }
    }

    /// Checks (`from` a published repository, else the configured server)
    /// and, when a release is available, writes it to the other
    /// slot and chooses it for the next boot; then reboots by strategy.
    /// Returns the version written, if any.
    pub fn update(
        &self,
        ignore_rollout: bool,
        from: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let Ok(_busy) = self.busy.try_lock() else {
            bail!("an update is already running");
        };
        if self.status().operation == Operation::Confirming {
            bail!("the booted update is not confirmed yet (waiting for boot-complete.target)");
        }
        let check = self.check(ignore_rollout, from)?;
        let repo = Repo::parse(&self.repo(from)?);
        let Some(release) = check.release else {
            return Ok(None);
        };
        self.cancel.store(false, Ordering::Relaxed);
        self.set_op(Operation::Applying);
        let r = (|| {
            let node = self.node()?;
            let client = self.http()?;
            let mut f = open_locked(&self.disk)?;
            let mut slots = slots_of(&self.disk, &f, self.booted.slot)?;
            let mut last = 0u64;
            let (report, resumed) = engine::apply_release(
                &repo,
                &client,
                &release,
                &mut slots,
                &mut f,
                &self.disk,
                &self.trusted,
                self.policy(),
                &self.state,
                &node,
                &mut |done, total| {
                    self.status.lock().expect("status lock").progress = Some((done, total));
                    // A signal every 1% is plenty.
                    if done == total || done - last >= total / 100 {
                        last = done;
                        (self.notify)(Event::Progress(done, total));
                    }
                },
                &self.cancel,
            )?;
            if resumed > 0 {
                tracing::info!("resumed an interrupted download at byte {resumed}");
            }
            Ok::<_, anyhow::Error>(report)
        })();
        let _ = self.refresh();
        match r {
            Ok(report) => {
                tracing::info!(
                    version = %report.version,
                    slot = report.slot,
                    sha256 = %report.sha256,
                    "update written and verified; it boots next, with one try"
                );
                self.set_op(Operation::RebootPending);
                self.status.lock().expect("status lock").last_error = None;
                self.maybe_reboot()?;
                Ok(Some(report.version))
            }
            Err(e) => {
                tracing::error!("update failed: {e:#}");
                self.fail(&e);
                self.set_op(Operation::Idle);
                Err(e)
            }
        }
    }

    /// Lets the agent install `version` again: takes it off the versions
    /// that failed to boot here or were rolled back from by hand. An
    /// operator's decision (the fix may be elsewhere: a health check, the
    /// node's config); the next check may offer it again.
    pub fn forget_failed(&self, version: &str) -> anyhow::Result<()> {
        let known = self.state.update(|s| {
            let before = s.failed_versions.len();
            s.failed_versions.retain(|v| v != version);
            s.failed_versions.len() != before
        })?;
        if !known {
            let list = self.status().failed_versions;
            anyhow::bail!(
                "{version} is not among the versions that failed here ({})",
                if list.is_empty() {
                    "there are none".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        self.status
            .lock()
            .expect("status lock")
            .failed_versions
            .retain(|v| v != version);
        tracing::info!(%version, "an operator allowed {version} to be installed again");
        Ok(())
    }

    /// Stops a running apply at its next chunk; its slot stays unbootable.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Reboots when the strategy allows it now and nothing inhibits it.
    /// Returns whether the reboot was asked for.
    pub fn maybe_reboot(&self) -> anyhow::Result<bool> {
        if self.status().operation != Operation::RebootPending {
            return Ok(false);
        }
        let blocked = match self.cfg.reboot.strategy {
            Strategy::Off => Some("reboot strategy is off: the operator reboots".to_string()),
            Strategy::Window => {
                let w = self
                    .cfg
                    .reboot
                    .window
                    .as_ref()
                    .context("no reboot window")?;
                if w.contains(drover_core::channel::now())? {
                    None
                } else {
                    Some(format!(
                        "outside the reboot window ({} {} for {} min, UTC)",
                        w.days.join(","),
                        w.start,
                        w.length_minutes
                    ))
                }
            }
            Strategy::Immediate => None,
        };
        let blocked = match blocked {
            Some(b) => Some(b),
            None => self.rebooter.inhibited()?,
        };
        self.status.lock().expect("status lock").reboot_blocked = blocked.clone();
        if let Some(why) = blocked {
            tracing::info!("reboot waits: {why}");
            return Ok(false);
        }
        self.set_op(Operation::Rebooting);
        tracing::info!("rebooting into the update");
        if let Err(e) = self.rebooter.reboot() {
            self.set_op(Operation::RebootPending);
            return Err(e);
        }
        Ok(true)
    }

    /// The agent's work lock for an operator's command: a routine check of
    /// the channel (a second or two) is waited for, an update being
    /// written is not (the operator cancels it first). Without the wait, a
    /// `droverctl rollback` that arrived during a poll was refused as "an
    /// update is running" about one time in ten (seen in the QEMU life-cycle
    /// test).
    fn wait_for_check(&self) -> anyhow::Result<std::sync::MutexGuard<'_, ()>> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(g) = self.busy.try_lock() {
                return Ok(g);
            }
            match self.status().operation {
                Operation::Idle | Operation::Checking => {}
                op => bail!(
                    "an update is running ({}); cancel it first",
                    serde_json::to_value(op)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
            }
            if start.elapsed() > CHECK_WAIT {
                bail!(
                    "the agent has been checking the channel for {} s; try again",
                    CHECK_WAIT.as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Makes the other slot, which booted successfully before, the next to
    /// boot, and reboots when asked to.
    pub fn rollback(&self, reboot: bool) -> anyhow::Result<String> {
        let _busy = self.wait_for_check()?;
        let to = {
            let mut f = open_locked(&self.disk)?;
            let mut slots = slots_of(&self.disk, &f, self.booted.slot)?;
            let to = slots.rollback().context("rolling back")?;
            slots.write(&mut *f)?;
            to
        };
        self.refresh()?;
        let other_version = self.status().other.version.unwrap_or_default();
        let rb = Rollback {
            from_version: self.booted.version.clone(),
            to_version: other_version.clone(),
            at: drover_core::channel::now(),
            manual: true,
            reason: Some("asked for by an operator (droverctl rollback)".into()),
        };
        // The version rolled back from is not installed again on the
        // agent's own initiative (the operator chose to leave it).
        let left = self.booted.version.clone();
        self.state.update(|s| {
            s.pending = None;
            s.last_rollback = Some(rb.clone());
            if !s.failed_versions.contains(&left) {
                s.failed_versions.push(left.clone());
            }
        })?;
        {
            let mut s = self.status.lock().expect("status lock");
            s.last_rollback = Some(rb);
            if !s.failed_versions.contains(&left) {
                s.failed_versions.push(left);
            }
        }
        tracing::warn!(
            "manual rollback: {} ({}) boots next instead of {}",
            to,
            other_version,
            self.booted.version
        );
        if reboot {
            self.set_op(Operation::Rebooting);
            self.rebooter.reboot()?;
        }
        Ok(to.label().to_string())
    }
}
