//! Rebooting through logind on the D-Bus, honouring its inhibitor locks.

use anyhow::Context as _;
use zbus::blocking::Connection;

/// What reboots the node.
pub trait Rebooter: Send + Sync {
    /// `Some(why)` while something blocks a reboot.
    fn inhibited(&self) -> anyhow::Result<Option<String>>;
    /// Asks for the reboot.
    fn reboot(&self) -> anyhow::Result<()>;
}

const DEST: &str = "org.freedesktop.login1";
const PATH: &str = "/org/freedesktop/login1";
const IFACE: &str = "org.freedesktop.login1.Manager";

/// logind (`org.freedesktop.login1.Manager`) on a bus.
pub struct Logind {
    conn: Connection,
}

impl Logind {
    /// logind on `conn`.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }
}

/// One inhibitor lock as logind lists it: what, who, why, mode, uid, pid.
type Inhibitor = (String, String, String, String, u32, u32);

impl Rebooter for Logind {
    fn inhibited(&self) -> anyhow::Result<Option<String>> {
        let reply = self
            .conn
            .call_method(Some(DEST), PATH, Some(IFACE), "ListInhibitors", &())
            .context("asking logind for its inhibitor locks")?;
        let list: Vec<Inhibitor> = reply.body().deserialize()?;
        let blocking: Vec<String> = list
            .into_iter()
            .filter(|(what, _, _, mode, _, _)| {
                mode == "block" && what.split(':').any(|w| w == "shutdown")
            })
            .map(|(_, who, why, _, _, pid)| format!("{who} (pid {pid}): {why}"))
            .collect();
        Ok(if blocking.is_empty() {
            None
        } else {
            Some(format!(
                "a shutdown inhibitor lock is held by {}",
                blocking.join("; ")
            ))
        })
    }

    fn reboot(&self) -> anyhow::Result<()> {
        self.conn
            .call_method(Some(DEST), PATH, Some(IFACE), "Reboot", &(false,))
            .context("asking logind to reboot")?;
        Ok(())
    }
}
