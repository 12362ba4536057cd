//! The commands that talk to `drover-agent` over D-Bus: `status`, `check`,
//! `cancel`, and the online forms of `update` and `rollback`.

use anyhow::{bail, Context as _};
use zbus::blocking::{Connection, MessageIterator};
use zbus::MatchRule;

use crate::dbus::{self, IFACE, PATH};

/// The bus `droverctl` talks on: `--bus`, else `DROVER_BUS`, else `system`.
pub fn bus() -> String {
    std::env::var("DROVER_BUS").unwrap_or_else(|_| "system".into())
}

fn connect() -> anyhow::Result<Connection> {
    dbus::connect(&bus())
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
        let s: serde_json::Value = serde_json::from_str(&json)?;
        let str_ = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        println!(
            "booted:     {} {} ({}{})",
            str_(&s["booted"]["slot"]),
            str_(&s["booted"]["version"]),
            if s["booted-successful"].as_bool() == Some(true) {
                "successful"
            } else {
                "not yet marked successful"
            },
            if s["booted"]["measured"].as_bool() == Some(true) {
                ", measured"
            } else {
                ", not measured"
            }
        );
        println!(
            "other:      {} {} ({})",
            str_(&s["other"]["slot"]),
            s["other"]["version"].as_str().unwrap_or("no image"),
            str_(&s["other"]["state"])
        );
        println!(
            "operation:  {}{}",
            str_(&s["operation"]),
            match s["progress"].as_array() {
                Some(p) if p.len() == 2 => format!(
                    " ({} of {} bytes)",
                    p[0].as_u64().unwrap_or(0),
                    p[1].as_u64().unwrap_or(0)
                ),
                _ => String::new(),
            }
        );
        println!(
            "channel:    {} at {}",
            str_(&s["channel"]),
            s["server"].as_str().unwrap_or("(no server configured)")
        );
        println!("last check: {}", when(s["last-check"].as_u64()));
        if let Some(e) = s["last-error"].as_str() {
            println!("last error: {e}");
        }
        if let Some(r) = s["reboot-blocked"].as_str() {
            println!("reboot:     waits: {r}");
        }
        if s["measured-boot"].is_object() {
            let m = &s["measured-boot"];
            println!(
                "measured:   {}",
                if m["verified"].as_bool() == Some(true) {
                    "verified (droverctl verify-boot)".to_string()
                } else {
                    format!("NOT VERIFIED: {}", str_(&m["problem"]))
                }
            );
        }
        if s["last-rollback"].is_object() {
            let r = &s["last-rollback"];
            println!(
                "rollback:   {} from {} to {}, {}",
                if r["manual"].as_bool() == Some(true) {
                    "manual"
                } else {
                    "automatic"
                },
                str_(&r["from-version"]),
                str_(&r["to-version"]),
                when(r["at"].as_u64())
            );
            if let Some(why) = r["reason"].as_str() {
                println!("            {why}");
            }
        }
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
        let c: serde_json::Value = serde_json::from_str(&json)?;
        let v = &c["verdict"];
        match v["result"].as_str() {
            Some("up-to-date") => println!(
                "up to date (channel {}, sequence {})",
                c["channel"], c["sequence"]
            ),
            Some("available") => println!(
                "{} is available: `droverctl update` installs it",
                v["version"].as_str().unwrap_or("?")
            ),
            Some("waiting") => println!(
                "{} is rolling out; this node's wave comes at {} (Unix time)",
                v["version"].as_str().unwrap_or("?"),
                v["at"]
            ),
            _ => println!("{json}"),
        }
        for s in c["skipped"].as_array().into_iter().flatten() {
            println!(
                "skipped {}: {}",
                s[0].as_str().unwrap_or("?"),
                s[1].as_str().unwrap_or("")
            );
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
