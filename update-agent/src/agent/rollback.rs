//! An operator's commands on the slots: manual rollback, and allowing a
//! failed version again.

use anyhow::{bail, Context as _};

use super::disk::{open_locked, slots_of};
use super::{Agent, Operation};
use crate::state::Rollback;

/// How long an operator's command waits for a check of the channel that
/// is under way (a check is bounded by the download stall timeout).
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

impl Agent {
    /// Lets the agent install `version` again: takes it off the versions
    /// that failed to boot here or were rolled back from by hand. An
    /// operator's decision (the fix may be elsewhere: a health check, the
    /// node's config); the next check may offer it again.
    pub fn forget_failed(&self, version: &str) -> anyhow::Result<()> {
        let (known, list) = self.state.update(|s| {
            let before = s.failed_versions.len();
            s.failed_versions.retain(|v| v != version);
            (s.failed_versions.len() != before, s.failed_versions.clone())
        })?;
        if !known {
            bail!(
                "{version} is not among the versions that failed here ({})",
                if list.is_empty() {
                    "there are none".to_string()
                } else {
                    list.join(", ")
                }
            );
        }
        tracing::info!(%version, "an operator allowed {version} to be installed again");
        Ok(())
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
            match self.op() {
                Operation::Idle | Operation::Checking => {}
                op => bail!("an update is running ({}); cancel it first", op.name()),
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
        let other_version = self.live().other.version.unwrap_or_default();
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
            s.last_rollback = Some(rb);
            if !s.failed_versions.contains(&left) {
                s.failed_versions.push(left);
            }
        })?;
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
