//! The update agent (`drover-agent`) and its CLI (`droverctl`).
//!
//! * [`apply`]: writing a release into the inactive slot in the order that
//!   keeps the machine bootable, from a file or over HTTP ([`source`]).
//! * [`engine`]: checking a signed channel and applying a release, with the
//!   resume point and the agent's memory in [`state`].
//! * [`agent`], [`config`], [`dbus`], [`metrics`], [`reboot`], [`node`]:
//!   the daemon: post-boot confirmation and rollback detection, polling,
//!   reboot strategies through logind, the `org.drover.Update1` D-Bus API
//!   and Prometheus metrics.
//! * [`fleet`], [`strategy`], [`schedule`]: fleet coordination (reboot
//!   locks in etcd or a FleetLock server, the fleet-wide halt), the one
//!   place the reboot is decided, and when the agent polls; time comes in
//!   as an argument, so the fleet simulation runs this same code.
//! * [`ctl`]: `droverctl`'s commands, online (through the agent) and
//!   offline (`--disk`).

pub mod agent;
pub mod apply;
pub mod assess;
pub mod config;
pub mod ctl;
pub mod dbus;
pub mod delta;
pub mod engine;
pub mod fleet;
pub mod measured;
pub mod metrics;
pub mod node;
pub mod reboot;
pub mod schedule;
pub mod source;
pub mod state;
pub mod strategy;
pub mod tpm;
pub mod tuf;
