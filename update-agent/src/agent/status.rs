//! What the agent is doing and what `droverctl status` shows: the
//! operation and its allowed transitions, and the status record, whose
//! remembered part (last check, failed versions, last rollback) is read
//! from the state file each time rather than mirrored beside it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Strategy;
use crate::engine::Verdict;
use crate::node::Booted;
use crate::state::{Rollback, State};

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

impl Operation {
    /// Every operation, for tables and tests.
    pub const ALL: [Operation; 6] = [
        Operation::Idle,
        Operation::Checking,
        Operation::Applying,
        Operation::RebootPending,
        Operation::Rebooting,
        Operation::Confirming,
    ];

    /// Whether the agent may go from `self` to `next`:
    ///
    /// * a check starts from any settled operation and returns to it;
    /// * an apply starts after a check (or, for a newer release, while a
    ///   reboot is pending) and ends pending a reboot, or idle when it
    ///   failed;
    /// * a reboot is asked for while pending (by strategy), idle (a manual
    ///   rollback) or confirming (a failed boot check), and goes back to
    ///   pending when logind refused it;
    /// * confirming is entered at start (the booted slot is an
    ///   unconfirmed update) and ends idle (confirmed) or rebooting (given
    ///   up).
    pub fn may_become(self, next: Operation) -> bool {
        use Operation::*;
        if self == next {
            return true;
        }
        match (self, next) {
            (Idle | RebootPending | Confirming, Checking) => true,
            (Checking, Idle | RebootPending | Confirming | Applying) => true,
            (Idle | RebootPending, Applying) => true,
            // At start, when the booted slot is an unconfirmed update.
            (Idle, Confirming) => true,
            (Applying, RebootPending | Idle) => true,
            (RebootPending | Idle | Confirming, Rebooting) => true,
            (Rebooting, RebootPending) => true,
            (Confirming, Idle) => true,
            _ => false,
        }
    }

    /// The name in the D-Bus API and in `droverctl status` (`reboot-pending`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Idle => "idle",
            Operation::Checking => "checking",
            Operation::Applying => "applying",
            Operation::RebootPending => "reboot-pending",
            Operation::Rebooting => "rebooting",
            Operation::Confirming => "confirming",
        }
    }
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
    /// Since when a written update waits for its reboot (seconds since the
    /// Unix epoch), while it does.
    #[serde(default)]
    pub reboot_pending_since: Option<u64>,
    /// The reboot lock this node holds (taken before its reboot, given
    /// back once the new slot is confirmed).
    #[serde(default)]
    pub reboot_lock: Option<crate::state::HeldLock>,
    /// This boot's measured-boot verdict (`drover-verify-boot.service`),
    /// once the check has run.
    pub measured_boot: Option<MeasuredBoot>,
}

/// What the agent knows only while it runs (the rest of [`Status`] comes
/// from the configuration, the state file and the verdict file).
#[derive(Clone, Debug)]
pub(crate) struct Live {
    pub booted_successful: bool,
    pub other: OtherSlot,
    pub operation: Operation,
    pub progress: Option<(u64, u64)>,
    pub last_verdict: Option<Verdict>,
    pub last_error: Option<String>,
    pub failures: u64,
    pub reboot_blocked: Option<String>,
    pub reboot_pending_since: Option<u64>,
    /// Until when the reboot waits after the pre-reboot units failed, and
    /// why.
    pub pre_reboot_failed: Option<(u64, String)>,
}

impl Live {
    /// An agent that has just started.
    pub fn new() -> Self {
        Live {
            booted_successful: false,
            other: OtherSlot::default(),
            operation: Operation::Idle,
            progress: None,
            last_verdict: None,
            last_error: None,
            failures: 0,
            reboot_blocked: None,
            reboot_pending_since: None,
            pre_reboot_failed: None,
        }
    }
}

/// The pieces [`Status`] is made of.
pub(crate) struct Parts<'a> {
    pub booted: &'a Booted,
    pub channel: &'a str,
    pub server: Option<&'a str>,
    pub strategy: Strategy,
    pub live: Live,
    pub state: State,
    pub measured_boot: Option<MeasuredBoot>,
}

impl From<Parts<'_>> for Status {
    fn from(p: Parts<'_>) -> Status {
        let Live {
            booted_successful,
            other,
            operation,
            progress,
            last_verdict,
            last_error,
            failures,
            reboot_blocked,
            reboot_pending_since,
            pre_reboot_failed: _,
        } = p.live;
        Status {
            booted: p.booted.clone(),
            booted_successful,
            other,
            operation,
            progress,
            channel: p.channel.to_string(),
            server: p.server.map(String::from),
            reboot_strategy: p.strategy,
            last_check: p.state.last_check,
            last_verdict,
            last_error,
            failures,
            failed_versions: p.state.failed_versions,
            last_rollback: p.state.last_rollback,
            reboot_blocked,
            reboot_pending_since,
            reboot_lock: p.state.lock,
            measured_boot: p.measured_boot,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Operation::{self, *};

    #[test]
    fn the_names_are_the_wire_names() {
        for op in Operation::ALL {
            assert_eq!(
                serde_json::to_value(op).unwrap(),
                serde_json::Value::from(op.name())
            );
        }
    }

    #[test]
    fn a_check_returns_to_where_it_started() {
        for from in [Idle, RebootPending, Confirming] {
            assert!(from.may_become(Checking), "{from:?} -> checking");
            assert!(Checking.may_become(from), "checking -> {from:?}");
        }
        assert!(!Applying.may_become(Checking));
        assert!(!Rebooting.may_become(Checking));
    }

    #[test]
    fn an_update_goes_through_apply_to_a_pending_reboot() {
        let path = [Idle, Checking, Applying, RebootPending, Rebooting];
        for w in path.windows(2) {
            assert!(w[0].may_become(w[1]), "{:?} -> {:?}", w[0], w[1]);
        }
        // A failed apply settles idle; a refused reboot stays pending.
        assert!(Applying.may_become(Idle));
        assert!(Rebooting.may_become(RebootPending));
    }

    #[test]
    fn nothing_skips_the_apply_or_the_confirmation() {
        // No reboot into an update that was not written.
        assert!(!Checking.may_become(Rebooting));
        assert!(!Applying.may_become(Rebooting));
        // An update is not applied on top of an unconfirmed one.
        assert!(!Confirming.may_become(Applying));
        // Confirming is entered only at start (from idle), or on return
        // from a check made while confirming.
        for from in [Applying, RebootPending, Rebooting] {
            assert!(!from.may_become(Confirming), "{from:?} -> confirming");
        }
        // A reboot asked for leads nowhere but back to pending.
        for to in Operation::ALL {
            if to != Rebooting && to != RebootPending {
                assert!(!Rebooting.may_become(to), "rebooting -> {to:?}");
            }
        }
    }

    #[test]
    fn a_confirmation_ends_confirmed_or_rolled_back() {
        assert!(Confirming.may_become(Idle));
        assert!(Confirming.may_become(Rebooting));
        assert!(!Confirming.may_become(RebootPending));
    }
}
