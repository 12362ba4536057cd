//! The agent's D-Bus API, `org.drover.Update1` at `/org/drover/Update1`,
//! and the client side `droverctl` uses.
//!
//! Methods (replies are JSON text, for scripts and for `droverctl --json`):
//! `Status() → s`, `Check() → s`, `Update(s from) → s` (starts writing an
//! available release; progress and the outcome arrive as signals),
//! `Cancel()`, `Rollback(b reboot) → s`, `ForgetFailed(s version)`.
//! Signals: `StateChanged(s operation)`, `Progress(t written, t total)`,
//! `Finished(b ok, s message)`.

// zbus's interface macro generates public methods of its own beside the
// documented ones (for the signals), which no doc comment can reach.
#![allow(missing_docs)]

use std::sync::Arc;

use anyhow::Context as _;
use zbus::blocking::Connection;
use zbus::object_server::SignalEmitter;

use crate::agent::{Agent, Event};

/// The well-known bus name.
pub const NAME: &str = "org.drover.Update1";
/// The object path.
pub const PATH: &str = "/org/drover/Update1";
/// The interface.
pub const IFACE: &str = "org.drover.Update1";

/// Connects to `bus`: `system`, or a D-Bus address (`unix:path=…`).
pub fn connect(bus: &str) -> anyhow::Result<Connection> {
    if bus == "system" {
        Connection::system().context("connecting to the system bus")
    } else {
        zbus::blocking::connection::Builder::address(bus)?
            .build()
            .with_context(|| format!("connecting to the bus at {bus}"))
    }
}

/// Emits an agent event as a signal.
pub fn emit(conn: &Connection, ev: &Event) {
    let r = match ev {
        Event::Progress(d, t) => conn.emit_signal(None::<&str>, PATH, IFACE, "Progress", &(*d, *t)),
        Event::State(op) => {
            let s = serde_json::to_value(op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            conn.emit_signal(None::<&str>, PATH, IFACE, "StateChanged", &(s,))
        }
    };
    if let Err(e) = r {
        tracing::debug!("emitting a signal: {e}");
    }
}

/// The served object.
pub struct Service {
    agent: Arc<Agent>,
    conn: Connection,
}

fn failed(e: anyhow::Error) -> zbus::fdo::Error {
    zbus::fdo::Error::Failed(format!("{e:#}"))
}

// Methods that do blocking work (the disk, HTTP, calls to logind on the same
// connection) run it on a thread of `blocking`'s pool: on the connection's
// executor thread a call to logind would wait for a reply that thread must
// read itself.
#[zbus::interface(name = "org.drover.Update1")]
impl Service {
    /// The agent's status, as JSON.
    async fn status(&self) -> zbus::fdo::Result<String> {
        let agent = Arc::clone(&self.agent);
        blocking::unblock(move || {
            let _ = agent.refresh();
            serde_json::to_string(&agent.status()).map_err(|e| failed(e.into()))
        })
        .await
    }

    /// Checks the channel now, as the poll would: a release whose wave has
    /// not come to this node is `waiting` (`Update` skips the wave).
    async fn check(&self) -> zbus::fdo::Result<String> {
        let agent = Arc::clone(&self.agent);
        blocking::unblock(move || {
            let c = agent.check(false, None).map_err(failed)?;
            serde_json::to_string(&c).map_err(|e| failed(e.into()))
        })
        .await
    }

    /// Starts an update now (ignoring the rollout wave), from `from` (a
    /// published repository URL or directory) or, when empty, the configured
    /// server. Replies at once; `Finished` says how it ended.
    fn update(&self, from: String) -> zbus::fdo::Result<String> {
        let agent = Arc::clone(&self.agent);
        let conn = self.conn.clone();
        std::thread::spawn(move || {
            let from = Some(from.as_str()).filter(|f| !f.is_empty());
            let (ok, msg) = match agent.update(true, from) {
                Ok(Some(u)) => (
                    true,
                    match u.ahead_of_wave {
                        None => format!("{} written; it boots next", u.version),
                        Some(t) => format!(
                            "{} written ahead of this node's wave (its turn was to come at {}); it boots next",
                            u.version,
                            crate::engine::utc(t)
                        ),
                    },
                ),
                Ok(None) => (true, "up to date".to_string()),
                Err(e) => (false, format!("{e:#}")),
            };
            if let Err(e) = conn.emit_signal(None::<&str>, PATH, IFACE, "Finished", &(ok, msg)) {
                tracing::debug!("emitting Finished: {e}");
            }
        });
        Ok("started".into())
    }

    /// Stops a running update; its slot stays unbootable.
    fn cancel(&self) {
        self.agent.cancel();
    }

    /// Lets the agent install a version that failed here (or was rolled
    /// back from by hand) again.
    async fn forget_failed(&self, version: String) -> zbus::fdo::Result<()> {
        let agent = Arc::clone(&self.agent);
        blocking::unblock(move || agent.forget_failed(&version).map_err(failed)).await
    }

    /// Boots the other, previously good slot next; reboots when asked.
    async fn rollback(&self, reboot: bool) -> zbus::fdo::Result<String> {
        let agent = Arc::clone(&self.agent);
        blocking::unblock(move || {
            let to = agent.rollback(reboot).map_err(failed)?;
            serde_json::to_string(&serde_json::json!({ "next": to, "reboot": reboot }))
                .map_err(|e| failed(e.into()))
        })
        .await
    }

    /// The operation changed.
    #[zbus(signal)]
    async fn state_changed(emitter: &SignalEmitter<'_>, operation: &str) -> zbus::Result<()>;

    /// Bytes written of the update.
    #[zbus(signal)]
    async fn progress(emitter: &SignalEmitter<'_>, written: u64, total: u64) -> zbus::Result<()>;

    /// An update started with `Update` ended.
    #[zbus(signal)]
    async fn finished(emitter: &SignalEmitter<'_>, ok: bool, message: &str) -> zbus::Result<()>;
}

/// Serves `agent` on `conn` and takes the well-known name.
pub fn serve(conn: &Connection, agent: Arc<Agent>) -> anyhow::Result<()> {
    conn.object_server().at(
        PATH,
        Service {
            agent,
            conn: conn.clone(),
        },
    )?;
    conn.request_name(NAME)
        .with_context(|| format!("taking the bus name {NAME} (is another agent running?)"))?;
    Ok(())
}

/// Calls a method of the agent and returns its JSON reply.
pub fn call<B>(conn: &Connection, method: &str, body: &B) -> anyhow::Result<String>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let reply = conn
        .call_method(Some(NAME), PATH, Some(IFACE), method, body)
        .map_err(|e| match e {
            zbus::Error::MethodError(name, Some(msg), _) => {
                anyhow::anyhow!("{msg} ({})", name.as_str())
            }
            e => anyhow::anyhow!("calling {method} on {NAME} (is drover-agent running?): {e}"),
        })?;
    if reply.body().signature().to_string().is_empty() {
        return Ok(String::new());
    }
    Ok(reply.body().deserialize::<String>()?)
}
