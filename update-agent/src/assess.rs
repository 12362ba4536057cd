//! Boot assessment: has a check that `boot-complete.target` requires
//! failed? Then the new slot will never be marked successful, and waiting
//! out `boot-complete-timeout-secs` only delays the rollback.
//!
//! systemd's boot assessment (`systemd.special(7)`): units that judge a
//! boot are ordered `Before=boot-complete.target` and pulled in with
//! `RequiredBy=boot-complete.target`. When one fails, the target's start
//! job fails and the target stays inactive; there is no "failed" state to
//! read off the target itself. So the agent asks systemd, over the system
//! bus, which units the target requires and whether one of them is in the
//! `failed` state. A unit that is merely slow is not a failure: only the
//! timeout covers a boot that hangs.

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPS: &str = "org.freedesktop.DBus.Properties";

/// The target whose reaching marks a boot good.
pub const BOOT_COMPLETE: &str = "boot-complete.target";

fn unit_property(conn: &Connection, unit: &str, prop: &str) -> zbus::Result<OwnedValue> {
    let path: OwnedObjectPath = conn
        .call_method(Some(DEST), PATH, Some(MANAGER), "LoadUnit", &(unit,))?
        .body()
        .deserialize()?;
    conn.call_method(Some(DEST), &path, Some(PROPS), "Get", &(UNIT, prop))?
        .body()
        .deserialize()
}

/// The units `boot-complete.target` requires that are in the `failed`
/// state, as systemd on `conn` reports them.
pub fn failed_boot_checks(conn: &Connection) -> zbus::Result<Vec<String>> {
    let requires: Vec<String> = unit_property(conn, BOOT_COMPLETE, "Requires")?.try_into()?;
    let mut failed = Vec::new();
    for unit in requires {
        let state: String = unit_property(conn, &unit, "ActiveState")?.try_into()?;
        if state == "failed" {
            failed.push(unit);
        }
    }
    Ok(failed)
}
