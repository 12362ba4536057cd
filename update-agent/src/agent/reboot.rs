//! When to reboot into a written update: the strategy (off, window,
//! immediate) and logind's inhibitor locks decide.

use anyhow::Context as _;

use super::{Agent, Operation};
use crate::config::Strategy;

impl Agent {
    /// Reboots when the strategy allows it now and nothing inhibits it.
    /// Returns whether the reboot was asked for.
    pub fn maybe_reboot(&self) -> anyhow::Result<bool> {
        if self.op() != Operation::RebootPending {
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
        self.live_mut().reboot_blocked = blocked.clone();
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
}
