//! The agent's work, shared by its D-Bus API, its poll loop and its tests.
//!
//! * this module: the agent, its status, check and update;
//! * [`status`]: the operation and its transitions, the status record;
//! * `disk`: the locked disk and its slots;
//! * `boot`: after a boot, confirm the update or detect the rollback;
//! * `reboot`: when to reboot into a written update;
//! * `rollback`: an operator's manual rollback and `forget-failed`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context as _};
use drover_core::keys::TrustedKeys;
use drover_core::slot_image::{self, Window};

use crate::apply::{Policy, Target, Trust};
use crate::config::Config;
use crate::engine::{self, Node, Remote, Repo, Watch};
use crate::node::Booted;
use crate::reboot::Rebooter;
use crate::state::StateFile;
use crate::strategy::Gate;

mod boot;
mod disk;
mod reboot;
mod rollback;
pub mod status;

pub use disk::open_locked;
pub(crate) use disk::slots_of;
pub use status::{Event, MeasuredBoot, Operation, OtherSlot, Status};
use status::{Live, Parts};

/// What an update wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The version, chosen for the next boot.
    pub version: String,
    /// When the rollout would have come to this node, when the update was
    /// asked for before that (an operator's `droverctl update`).
    pub ahead_of_wave: Option<u64>,
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
    live: Mutex<Live>,
    cancel: AtomicBool,
    busy: Mutex<()>,
    notify: Box<dyn Fn(Event) + Send + Sync>,
    rebooter: Box<dyn Rebooter>,
    gate: Gate,
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
        // A state file that does not parse stops the agent here, at start.
        state.load()?;
        let gate = Gate::new(&cfg.reboot, &machine_id)?;
        let a = Arc::new(Agent {
            gate,
            cfg,
            trusted,
            state,
            disk,
            booted,
            machine_id,
            live: Mutex::new(Live::new()),
            cancel: AtomicBool::new(false),
            busy: Mutex::new(()),
            notify,
            rebooter,
        });
        a.refresh()?;
        Ok(a)
    }

    /// The status now: what the agent is doing, and what the state file
    /// and the verify-boot verdict say.
    pub fn status(&self) -> Status {
        let live = self.live();
        let state = self.state.load().unwrap_or_else(|e| {
            tracing::warn!("reading the agent state for the status: {e:#}");
            Default::default()
        });
        Status::from(Parts {
            booted: &self.booted,
            channel: &self.cfg.channel,
            server: self.cfg.server.as_deref(),
            strategy: self.cfg.reboot.strategy,
            live,
            state,
            measured_boot: MeasuredBoot::read(),
        })
    }

    /// A copy of what the agent knows only while it runs.
    fn live(&self) -> Live {
        self.live_mut().clone()
    }

    fn live_mut(&self) -> MutexGuard<'_, Live> {
        self.live.lock().expect("status lock")
    }

    /// What the agent is doing.
    pub fn op(&self) -> Operation {
        self.live_mut().operation
    }

    fn set_op(&self, op: Operation) {
        let (from, changed) = {
            let mut s = self.live_mut();
            let from = s.operation;
            s.operation = op;
            if op != Operation::Applying {
                s.progress = None;
            }
            match op {
                Operation::RebootPending => {
                    s.reboot_pending_since
                        .get_or_insert_with(drover_core::channel::now);
                }
                // A check while pending, or the reboot asked for (and
                // perhaps refused): still the same wait.
                Operation::Rebooting | Operation::Checking => {}
                _ => {
                    s.reboot_pending_since = None;
                    s.reboot_blocked = None;
                }
            }
            (from, from != op)
        };
        if !from.may_become(op) {
            tracing::error!(
                from = from.name(),
                to = op.name(),
                "unexpected change of operation"
            );
            debug_assert!(false, "{from:?} -> {op:?} is not an allowed transition");
        }
        if changed {
            tracing::info!(operation = ?op, "state changed");
            (self.notify)(Event::State(op));
        }
    }

    fn fail(&self, e: &anyhow::Error) {
        let mut s = self.live_mut();
        s.last_error = Some(format!("{e:#}"));
        s.failures += 1;
    }

    /// The channel's trusted TUF root, when the image has one for it.
    fn tuf_root(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let p = crate::tuf::root_path(&self.cfg.tuf_roots, &self.cfg.channel);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
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
            os: m.os.name,
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
        let state = disk::slot_state(st.prio, version.is_some());
        let mut s = self.live_mut();
        s.booted_successful = slots.get(self.booted.slot).prio.successful();
        s.other = OtherSlot {
            slot: other.label().to_string(),
            version,
            state: state.to_string(),
        };
        Ok(())
    }

    /// Checks the channel. Does not apply.
    pub fn check(&self, ignore_rollout: bool, from: Option<&str>) -> anyhow::Result<engine::Check> {
        let server = self.repo(from)?;
        let prev = self.op();
        self.set_op(Operation::Checking);
        let r = (|| {
            let client = self.http()?;
            let repo = Repo::parse(&server);
            let tuf_root = self.tuf_root()?;
            let remote = Remote {
                repo: &repo,
                client: &client,
                tuf_root: tuf_root.as_deref(),
            };
            engine::check(
                remote,
                &self.cfg.channel,
                self.trust(),
                &self.state,
                &self.node()?,
                ignore_rollout,
            )
        })();
        let r = r.and_then(|c| self.halt(c));
        self.set_op(prev);
        match &r {
            Ok(c) => {
                let mut s = self.live_mut();
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

    /// A release the check found is not started when `halt-after-failures`
    /// nodes of the fleet failed to boot it (counted in the lock store).
    /// A store that does not answer stops the update too: a halt must not
    /// be missed because etcd was down.
    fn halt(&self, mut c: engine::Check) -> anyhow::Result<engine::Check> {
        let (Some(limit), Some(lock), engine::Verdict::Available { version }) =
            (self.cfg.halt_after_failures, self.gate.lock(), &c.verdict)
        else {
            return Ok(c);
        };
        let failures = lock
            .failures(version)
            .with_context(|| {
                format!(
                    "reading the fleet's failed boots of {version} from {} (halt-after-failures = {limit})",
                    lock.describe()
                )
            })?
            .map(|f| f.count())
            .unwrap_or(0);
        if crate::fleet::halted(failures, Some(limit)) {
            tracing::warn!(
                %version,
                failures,
                limit,
                "HALTED: {failures} node(s) failed to boot {version} (halt-after-failures = {limit}); not installing it (`droverctl lock clear-failures {version}` lifts the halt)"
            );
            c.verdict = engine::Verdict::Halted {
                version: version.clone(),
                failures,
                limit,
            };
            c.release = None;
        }
        Ok(c)
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

    fn trust(&self) -> Trust<'_> {
        Trust {
            keys: &self.trusted,
            policy: Policy {
                allow_security_downgrade: self.cfg.allow_security_downgrade,
            },
        }
    }

    /// Checks (`from` a published repository, else the configured server)
    /// and, when a release is available, writes it to the other
    /// slot and chooses it for the next boot; then reboots by strategy.
    /// Returns what was written, if anything.
    pub fn update(
        &self,
        ignore_rollout: bool,
        from: Option<&str>,
    ) -> anyhow::Result<Option<Updated>> {
        let Ok(_busy) = self.busy.try_lock() else {
            bail!("an update is already running");
        };
        if self.op() == Operation::Confirming {
            bail!("the booted update is not confirmed yet (waiting for boot-complete.target)");
        }
        let check = self.check(ignore_rollout, from)?;
        let repo = Repo::parse(&self.repo(from)?);
        let Some(release) = check.release else {
            return Ok(None);
        };
        let turn = release
            .rollout
            .node_start(drover_core::channel::Rollout::wave(
                &self.machine_id,
                &release.version,
            ));
        let ahead_of_wave = (turn > drover_core::channel::now()).then_some(turn);
        if let Some(t) = ahead_of_wave {
            tracing::info!(
                version = %release.version,
                "an operator asked for {} ahead of this node's wave (its turn comes at {})",
                release.version,
                engine::utc(t)
            );
        }
        self.cancel.store(false, Ordering::Relaxed);
        self.set_op(Operation::Applying);
        let r = (|| {
            let node = self.node()?;
            let client = self.http()?;
            let mut f = open_locked(&self.disk)?;
            let mut slots = slots_of(&self.disk, &f, self.booted.slot)?;
            let mut last = 0u64;
            let tuf_root = self.tuf_root()?;
            let remote = Remote {
                repo: &repo,
                client: &client,
                tuf_root: tuf_root.as_deref(),
            };
            let target = Target {
                slots: &mut slots,
                disk: &mut f,
                path: &self.disk,
            };
            let mut progress = |done, total| {
                self.live_mut().progress = Some((done, total));
                // A signal every 1% is plenty.
                if done == total || done - last >= total / 100 {
                    last = done;
                    (self.notify)(Event::Progress(done, total));
                }
            };
            let watch = Watch {
                progress: &mut progress,
                cancel: &self.cancel,
            };
            let (report, resumed) = engine::apply_release(
                remote,
                &release,
                target,
                self.trust(),
                &self.state,
                &node,
                watch,
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
                self.live_mut().last_error = None;
                self.maybe_reboot()?;
                Ok(Some(Updated {
                    version: report.version,
                    ahead_of_wave,
                }))
            }
            Err(e) => {
                tracing::error!("update failed: {e:#}");
                self.fail(&e);
                self.set_op(Operation::Idle);
                Err(e)
            }
        }
    }

    /// Stops a running apply at its next chunk; its slot stays unbootable.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
