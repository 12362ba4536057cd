//! Rebooting through logind on the D-Bus, honouring its inhibitor locks.

use anyhow::Context as _;
use zbus::blocking::Connection;

/// What reboots the node.
pub trait Rebooter: Send + Sync {
    /// `Some(why)` while something blocks a reboot.
    fn inhibited(&self) -> anyhow::Result<Option<String>>;
    /// Runs what must happen before the reboot (`drover-pre-reboot.target`)
    /// and waits for it; an error calls this reboot off.
    fn pre_reboot(&self) -> anyhow::Result<()>;
    /// Asks for the reboot.
    fn reboot(&self) -> anyhow::Result<()>;
}

/// The target users hang their pre-reboot units on.
pub const PRE_REBOOT_TARGET: &str = "drover-pre-reboot.target";

/// How long the pre-reboot units may take (a drain can take minutes).
pub const PRE_REBOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Starts `unit` through systemd's manager on `conn` and waits for its job:
/// `Ok(())` when it ends `done`; otherwise an error naming the result and
/// the units the target requires or wants that failed.
pub fn start_and_wait(
    conn: &Connection,
    unit: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use zbus::blocking::MessageIterator;
    use zbus::MatchRule;
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(SYSTEMD)?
        .interface(SYSTEMD_MANAGER)?
        .member("JobRemoved")?
        .build();
    let signals = MessageIterator::for_match_rule(rule, conn, Some(256))?;
    // Without Subscribe, systemd sends JobRemoved only to clients that ask.
    let _ = conn.call_method(
        Some(SYSTEMD),
        SYSTEMD_PATH,
        Some(SYSTEMD_MANAGER),
        "Subscribe",
        &(),
    );
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(SYSTEMD_MANAGER),
            "StartUnit",
            &(unit, "replace"),
        )
        .with_context(|| format!("asking systemd to start {unit}"))?;
    let job: zbus::zvariant::OwnedObjectPath = reply.body().deserialize()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let want = job.clone();
    std::thread::spawn(move || {
        for m in signals {
            let Ok(m) = m else { break };
            let Ok((_id, path, _unit, result)) =
                m.body()
                    .deserialize::<(u32, zbus::zvariant::OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path == want {
                let _ = tx.send(result);
                break;
            }
        }
    });
    let result = rx
        .recv_timeout(timeout)
        .map_err(|_| anyhow::anyhow!("{unit} did not finish within {} s", timeout.as_secs()))?;
    if result == "done" {
        return Ok(());
    }
    let failed = failed_dependencies(conn, unit).unwrap_or_default();
    anyhow::bail!(
        "{unit} ended '{result}'{}",
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {} failed", failed.join(", "))
        }
    )
}

/// Whether someone owns `name` on the bus.
fn has_owner(conn: &Connection, name: &str) -> anyhow::Result<bool> {
    let r = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "NameHasOwner",
            &(name,),
        )
        .context("asking the bus who owns systemd's name")?;
    Ok(r.body().deserialize()?)
}

/// The units `unit` requires or wants that are in the `failed` state.
fn failed_dependencies(conn: &Connection, unit: &str) -> anyhow::Result<Vec<String>> {
    let prop = |path: &zbus::zvariant::OwnedObjectPath,
                name: &str|
     -> anyhow::Result<zbus::zvariant::OwnedValue> {
        let r = conn.call_method(
            Some(SYSTEMD),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Unit", name),
        )?;
        Ok(r.body().deserialize::<zbus::zvariant::OwnedValue>()?)
    };
    let path_of = |u: &str| -> anyhow::Result<zbus::zvariant::OwnedObjectPath> {
        let r = conn.call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(SYSTEMD_MANAGER),
            "LoadUnit",
            &(u,),
        )?;
        Ok(r.body().deserialize()?)
    };
    let target = path_of(unit)?;
    let mut deps: Vec<String> = Vec::new();
    for p in ["Requires", "Wants"] {
        if let Ok(v) = prop(&target, p) {
            if let Ok(list) = Vec::<String>::try_from(v) {
                deps.extend(list);
            }
        }
    }
    let mut failed = Vec::new();
    for d in deps {
        let Ok(p) = path_of(&d) else { continue };
        if let Ok(v) = prop(&p, "ActiveState") {
            if String::try_from(v).is_ok_and(|s| s == "failed") {
                failed.push(d);
            }
        }
    }
    failed.sort();
    failed.dedup();
    Ok(failed)
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

    fn pre_reboot(&self) -> anyhow::Result<()> {
        // No systemd on this bus (a test bus, a container): no units to
        // run. Asked first, so the bus does not try to activate it.
        if !has_owner(&self.conn, SYSTEMD)? {
            tracing::debug!("{PRE_REBOOT_TARGET}: no systemd on the bus");
            return Ok(());
        }
        start_and_wait(&self.conn, PRE_REBOOT_TARGET, PRE_REBOOT_TIMEOUT)
    }

    fn reboot(&self) -> anyhow::Result<()> {
        self.conn
            .call_method(Some(DEST), PATH, Some(IFACE), "Reboot", &(false,))
            .context("asking logind to reboot")?;
        Ok(())
    }
}
