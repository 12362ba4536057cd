//! The commands that talk to `drover-agent` over D-Bus: `status`, `check`,
//! `cancel`, and the online forms of `update` and `rollback`.

use anyhow::{bail, Context as _};
use zbus::blocking::{Connection, MessageIterator};
use zbus::MatchRule;

use crate::agent::Status;
use crate::dbus::{self, IFACE, PATH};
use crate::engine::{Check, Verdict};

/// The bus `droverctl` talks on: `--bus`, else `DROVER_BUS`, else `system`.
pub fn bus() -> String {
    std::env::var("DROVER_BUS").unwrap_or_else(|_| "system".into())
}

fn connect() -> anyhow::Result<Connection> {
    dbus::connect(&bus())
}

/// `droverctl status` for people: one line per aspect.
pub fn status_text(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let b = &s.booted;
    let _ = writeln!(
        t,
        "booted:     {} {} ({}{})",
        b.slot,
        b.version,
        if s.booted_successful {
            "successful"
        } else {
            "not yet marked successful"
        },
        if b.measured {
            ", measured"
        } else {
            ", not measured"
        }
    );
    let _ = writeln!(
        t,
        "other:      {} {} ({})",
        s.other.slot,
        s.other.version.as_deref().unwrap_or("no image"),
        s.other.state
    );
    let operation = s.operation.name();
    let _ = writeln!(
        t,
        "operation:  {operation}{}",
        match s.progress {
            Some((done, all)) => format!(" ({done} of {all} bytes)"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        t,
        "channel:    {} at {}",
        s.channel,
        s.server.as_deref().unwrap_or("(no server configured)")
    );
    let _ = writeln!(t, "last check: {}", when(s.last_check));
    if let Some(v) = &s.last_verdict {
        let _ = writeln!(t, "update:     {}", v.describe());
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(t, "last error: {e}");
    }
    if let Some(r) = &s.reboot_blocked {
        let _ = writeln!(t, "reboot:     waits: {r}");
    }
    if let Some(l) = &s.reboot_lock {
        let _ = writeln!(
            t,
            "lock:       holds the {} as {} since {}",
            l.lock,
            l.id,
            crate::engine::utc(l.since)
        );
    }
    if let Some(m) = &s.measured_boot {
        let _ = writeln!(
            t,
            "measured:   {}",
            if m.verified {
                "verified (droverctl verify-boot)".to_string()
            } else {
                format!("NOT VERIFIED: {}", m.problem.as_deref().unwrap_or("-"))
            }
        );
    }
    if let Some(r) = &s.last_rollback {
        let _ = writeln!(
            t,
            "rollback:   {} from {} to {}, {}",
            if r.manual { "manual" } else { "automatic" },
            r.from_version,
            r.to_version,
            when(Some(r.at))
        );
        if let Some(why) = &r.reason {
            let _ = writeln!(t, "            {why}");
        }
    }
    t
}

/// Show what the agent is doing and the state of both slots.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn when(t: Option<u64>) -> String {
    match t {
        None | Some(0) => "never".into(),
        Some(t) => {
            let ago = drover_core::channel::now().saturating_sub(t);
            format!("{ago} s ago")
        }
    }
}

impl StatusArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let json = dbus::call(&connect()?, "Status", &())?;
        if self.json {
            println!("{json}");
            return Ok(());
        }
        let s: Status = serde_json::from_str(&json)
            .with_context(|| format!("the agent's status is not what droverctl reads: {json}"))?;
        print!("{}", status_text(&s));
        Ok(())
    }
}

/// Check the channel for a newer release now (the rollout wave does not
/// apply to an operator's check).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let json = dbus::call(&connect()?, "Check", &())?;
        if self.json {
            println!("{json}");
            return Ok(());
        }
        let c: Check = serde_json::from_str(&json).with_context(|| {
            format!("the agent's check result is not what droverctl reads: {json}")
        })?;
        match &c.verdict {
            Verdict::UpToDate => println!(
                "up to date (channel {}, sequence {})",
                c.channel, c.sequence
            ),
            Verdict::Available { version } => {
                println!("{version} is available: `droverctl update` installs it")
            }
            v @ Verdict::Waiting { .. } => println!(
                "{}; `droverctl update` installs it now, ahead of the wave",
                v.describe()
            ),
            v @ Verdict::Halted { .. } => println!("{}", v.describe()),
        }
        for (version, why) in &c.skipped {
            println!("skipped {version}: {why}");
        }
        Ok(())
    }
}

/// Let the agent install VERSION again: take it off the versions that
/// failed to boot here or were rolled back from by hand (`droverctl status`
/// lists them). The next check may offer it again.
#[derive(Debug, clap::Args)]
pub struct ForgetFailedArgs {
    /// The version.
    #[arg(value_name = "VERSION")]
    pub release: String,
}

impl ForgetFailedArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        dbus::call(&connect()?, "ForgetFailed", &(self.release.as_str(),))?;
        println!(
            "{} may be installed again (the next check can offer it)",
            self.release
        );
        Ok(())
    }
}

/// Stop an update that is being written; the slot it was writing stays
/// unbootable.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {}

impl CancelArgs {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        dbus::call(&connect()?, "Cancel", &())?;
        println!("cancel requested");
        Ok(())
    }
}

/// `droverctl update` on a node: the agent writes the release; progress
/// and the outcome come as signals.
pub fn update(from: Option<&str>, json: bool) -> anyhow::Result<()> {
    let conn = connect()?;
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path(PATH)?
        .interface(IFACE)?
        .build();
    let mut signals = MessageIterator::for_match_rule(rule, &conn, Some(64))?;
    dbus::call(&conn, "Update", &(from.unwrap_or(""),))?;
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template"),
        );
        b.set_message("writing");
        b
    };
    for m in signals.by_ref() {
        let m = m?;
        let member = m
            .header()
            .member()
            .map(|x| x.to_string())
            .unwrap_or_default();
        match member.as_str() {
            "Progress" => {
                let (done, total): (u64, u64) = m.body().deserialize()?;
                bar.set_length(total);
                bar.set_position(done);
            }
            "Finished" => {
                let (ok, msg): (bool, String) = m.body().deserialize()?;
                bar.finish_and_clear();
                if json {
                    println!("{}", serde_json::json!({ "ok": ok, "message": msg }));
                } else {
                    println!("{msg}");
                }
                if !ok {
                    bail!("the update failed: {msg}");
                }
                return Ok(());
            }
            _ => {}
        }
    }
    bail!("the agent went away before the update finished")
}

/// `droverctl rollback` on a node.
pub fn rollback(reboot: bool, json: bool) -> anyhow::Result<()> {
    let out = dbus::call(&connect()?, "Rollback", &(reboot,)).context("rolling back")?;
    if json {
        println!("{out}");
    } else {
        let v: serde_json::Value = serde_json::from_str(&out)?;
        println!(
            "rolled back: {} boots next{}",
            v["next"].as_str().unwrap_or("?"),
            if reboot { "; rebooting" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{MeasuredBoot, Operation, OtherSlot};
    use crate::state::Rollback;

    #[test]
    fn the_status_the_agent_sends_is_the_status_droverctl_prints() {
        let sent = Status {
            booted: crate::node::Booted {
                slot: drover_core::SlotId::B,
                version: "2.0.0".into(),
                measured: true,
                decision: "candidate".into(),
            },
            booted_successful: false,
            other: OtherSlot {
                slot: "USR-A".into(),
                version: Some("1.0.0".into()),
                state: "good".into(),
            },
            operation: Operation::RebootPending,
            progress: Some((10, 20)),
            channel: "stable".into(),
            server: Some("http://10.0.2.100/".into()),
            reboot_strategy: crate::config::Strategy::Immediate,
            last_check: None,
            last_verdict: Some(Verdict::Waiting {
                version: "2.1.0".into(),
                at: 1_795_833_000,
                wave_percent: 42,
            }),
            last_error: Some("the server went away".into()),
            failures: 1,
            failed_versions: vec!["1.9.0".into()],
            last_rollback: Some(Rollback {
                from_version: "1.9.0".into(),
                to_version: "1.0.0".into(),
                at: 0,
                manual: false,
                reason: Some("boot check failed: x.service".into()),
            }),
            reboot_blocked: Some("an inhibitor".into()),
            reboot_pending_since: Some(1_795_833_000),
            reboot_lock: Some(crate::state::HeldLock {
                lock: "etcd lock /drover/reboot-lock/default at http://10.0.0.1:2379".into(),
                id: "5f0c".into(),
                since: 1_795_833_060,
            }),
            measured_boot: Some(MeasuredBoot {
                measured: true,
                verified: false,
                problem: Some("stage-initramfs (PCR 9)".into()),
            }),
        };
        let json = serde_json::to_string(&sent).unwrap();
        let read: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), json);
        let text = status_text(&read);
        for line in [
            "booted:     USR-B 2.0.0 (not yet marked successful, measured)",
            "other:      USR-A 1.0.0 (good)",
            "lock:       holds the etcd lock /drover/reboot-lock/default at http://10.0.0.1:2379 as 5f0c since 2026-11-28 02:31 UTC",
            "update:     2.1.0 is rolling out; this node is at 42 % of the rollout, its turn comes at 2026-11-28 02:30 UTC (1795833000)",
            "operation:  reboot-pending (10 of 20 bytes)",
            "channel:    stable at http://10.0.2.100/",
            "last check: never",
            "last error: the server went away",
            "reboot:     waits: an inhibitor",
            "measured:   NOT VERIFIED: stage-initramfs (PCR 9)",
            "rollback:   automatic from 1.9.0 to 1.0.0, never",
            "            boot check failed: x.service",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }
}
