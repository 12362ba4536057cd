//! After a boot: confirm an update that booted, detect one that did not
//! (the stage fell back), and give up an update whose boot checks failed.

use std::fs::File;

use anyhow::Context as _;
use drover_core::SlotId;

use super::disk::{open_locked, slots_of};
use super::{Agent, MeasuredBoot, Operation};
use crate::state::Rollback;

impl Agent {
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
            // The fleet's lock store counts it (etcd-lock), for the halt.
            let counted = self.gate.lock().is_some();
            self.state.update(|s| {
                s.pending = None;
                if !s.failed_versions.contains(&p.version) {
                    s.failed_versions.push(p.version.clone());
                }
                if counted && !s.unreported_failures.contains(&p.version) {
                    s.unreported_failures.push(p.version.clone());
                }
                s.last_rollback = Some(rb);
            })?;
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
        if self.op() != Operation::Confirming {
            return Ok(());
        }
        self.refresh()?;
        if self.live().booted_successful {
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
        self.state
            .update(|s| {
                if let Some(p) = s.pending.as_mut() {
                    p.failure = Some(reason.clone());
                }
            })
            .context("recording why the boot was given up")?;
        self.set_op(Operation::Rebooting);
        self.rebooter.reboot()?;
        Ok(())
    }
}
