//! Rebooting into a written update when the [`crate::strategy::Gate`]
//! allows it, and giving the reboot lock back once the update is
//! confirmed (or its rollback recorded).

use anyhow::Context as _;

use super::{Agent, Operation};
use crate::state::HeldLock;

/// After the pre-reboot units failed, the next try waits this long.
pub const PRE_REBOOT_RETRY_SECS: u64 = 600;
use crate::strategy::Decision;

impl Agent {
    /// Reboots when the strategy allows it now and nothing inhibits it
    /// (see [`crate::strategy`]). Returns whether the reboot was asked for.
    pub fn maybe_reboot(&self) -> anyhow::Result<bool> {
        if self.op() != Operation::RebootPending {
            return Ok(false);
        }
        let now = drover_core::channel::now();
        if let Some((until, why)) = self.live().pre_reboot_failed.clone() {
            if now < until {
                self.live_mut().reboot_blocked =
                    Some(format!("{why}; next try in {} s", until - now));
                return Ok(false);
            }
        }
        let held = self.state.load()?.lock.is_some();
        let decision = self.gate.decide(now, held, &|| self.rebooter.inhibited())?;
        let took_lock = match decision {
            Decision::Wait(why) => {
                if self.live().reboot_blocked.as_deref() != Some(why.as_str()) {
                    tracing::info!("reboot waits: {why}");
                }
                self.live_mut().reboot_blocked = Some(why);
                return Ok(false);
            }
            Decision::Reboot { took_lock } => took_lock,
        };
        self.live_mut().reboot_blocked = None;
        if took_lock {
            let lock = self
                .gate
                .lock()
                .context("a lock was taken without a lock")?;
            let held = HeldLock {
                lock: lock.describe(),
                id: self.gate.id().to_string(),
                since: now,
            };
            tracing::info!(lock = %held.lock, id = %held.id, "took the reboot lock");
            // Remember it before the reboot, or give it back.
            if let Err(e) = self.state.update(|s| s.lock = Some(held)) {
                let _ = lock.release(self.gate.id());
                return Err(e.context("recording the reboot lock"));
            }
        }
        // The units hung on drover-pre-reboot.target (a drain): a failure
        // calls this reboot off and gives the lock back.
        if let Err(e) = self.rebooter.pre_reboot() {
            let why = format!("the pre-reboot units failed: {e:#}");
            tracing::error!("{why}; not rebooting now");
            if let Some(lock) = self.gate.lock() {
                if let Some(held) = self.state.load()?.lock {
                    match lock.release(&held.id) {
                        Ok(_) => {
                            self.state.update(|s| s.lock = None)?;
                            tracing::info!(lock = %held.lock, "gave back the reboot lock: the reboot is called off");
                        }
                        Err(e) => tracing::warn!(
                            "giving back the reboot lock: {e:#}; it is given back once this boot is settled"
                        ),
                    }
                }
            }
            let mut l = self.live_mut();
            l.pre_reboot_failed = Some((now + PRE_REBOOT_RETRY_SECS, why.clone()));
            l.reboot_blocked = Some(why);
            return Ok(false);
        }
        self.live_mut().pre_reboot_failed = None;
        self.set_op(Operation::Rebooting);
        tracing::info!("rebooting into the update");
        if let Err(e) = self.rebooter.reboot() {
            self.set_op(Operation::RebootPending);
            return Err(e);
        }
        Ok(true)
    }

    /// Fleet bookkeeping, each poll of the agent's loop: reports the failed
    /// boots the lock store has not counted yet, then gives back the reboot
    /// lock once the booted slot is confirmed and no update is pending.
    /// Errors (the store does not answer) leave both for the next try.
    pub fn settle_fleet(&self) -> anyhow::Result<()> {
        let Some(lock) = self.gate.lock() else {
            return Ok(());
        };
        let st = self.state.load()?;
        for version in &st.unreported_failures {
            if let Some(f) = lock
                .record_failure(version, self.gate.id())
                .with_context(|| {
                    format!(
                        "counting the failed boot of {version} in {}",
                        lock.describe()
                    )
                })?
            {
                tracing::warn!(
                    %version,
                    failures = f.count(),
                    "recorded the failed boot of {version} in the fleet's lock store ({} node(s) so far)",
                    f.count()
                );
            }
            self.state
                .update(|s| s.unreported_failures.retain(|v| v != version))?;
        }
        let Some(held) = st.lock else {
            return Ok(());
        };
        let settled = st.pending.is_none()
            && self.live().booted_successful
            && matches!(self.op(), Operation::Idle | Operation::Checking);
        if !settled {
            return Ok(());
        }
        lock.release(&held.id)
            .with_context(|| format!("giving back the reboot lock of {}", lock.describe()))?;
        self.state.update(|s| s.lock = None)?;
        tracing::info!(lock = %held.lock, "gave back the reboot lock: the booted slot is confirmed");
        Ok(())
    }
}
