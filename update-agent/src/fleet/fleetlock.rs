//! The FleetLock v1 client (the protocol of Fedora CoreOS's Zincati):
//! `POST /v1/pre-reboot` takes a slot of the group's semaphore,
//! `POST /v1/steady-state` gives it back; both with the header
//! `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":…,"group":…}}`. A 2xx answer is success; any
//! other carries `{"kind":…,"value":…}` when the server says why. So Drover
//! nodes share a lock server with Fedora CoreOS nodes (airlock) or with a
//! Kubernetes-aware one (poseidon/fleetlock drains the node first).
//!
//! The protocol has no way to read the holders, change the number of
//! slots, or count failures: those are the server's business (airlock
//! keeps its semaphore in etcd; `droverctl lock status` says so).

use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{Acquired, Failures, Lock, LockStatus};
use crate::config;

/// The protocol header.
pub const HEADER: &str = "fleet-lock-protocol";

/// A request's body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body {
    /// The client.
    pub client_params: ClientParams,
}

/// Who asks.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientParams {
    /// The node's id.
    pub id: String,
    /// Its group.
    pub group: String,
}

/// A server's error body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What kind of error (`failed_lock`, …).
    pub kind: String,
    /// For people.
    pub value: String,
}

/// A FleetLock server and a group.
pub struct FleetLockClient {
    base: String,
    group: String,
    http: reqwest::blocking::Client,
}

/// What a server answered that was not success.
enum Answer {
    Ok,
    No(String),
}

impl FleetLockClient {
    /// From the agent's `[reboot.fleetlock]`.
    pub fn new(cfg: &config::FleetLock) -> anyhow::Result<FleetLockClient> {
        Ok(FleetLockClient {
            base: cfg.url.trim_end_matches('/').to_string(),
            group: cfg.group.clone(),
            http: reqwest::blocking::Client::builder()
                .user_agent(concat!("drover-agent/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                // A Kubernetes-aware server drains the node before it
                // answers a pre-reboot request.
                .timeout(Duration::from_secs(600))
                .build()?,
        })
    }

    fn post(&self, op: &str, id: &str) -> anyhow::Result<Answer> {
        let url = format!("{}/v1/{op}", self.base);
        let body = Body {
            client_params: ClientParams {
                id: id.to_string(),
                group: self.group.clone(),
            },
        };
        let resp = self
            .http
            .post(&url)
            .header(HEADER, "true")
            .json(&body)
            .send()
            .map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Answer::Ok);
        }
        // A reason is a line or two; a server that sends more is not read
        // past 64 KiB.
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(resp, 64 << 10), &mut text);
        let why = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => format!("{} ({}): {}", status, e.kind, e.value),
            Err(_) if status.is_server_error() => {
                bail!("POST {url}: {status}, no FleetLock error body")
            }
            Err(_) => format!("{status}"),
        };
        Ok(Answer::No(why))
    }

    fn unsupported(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "the FleetLock protocol cannot {what}; ask the lock server at {} (airlock keeps its semaphore in etcd)",
            self.base
        )
    }
}

impl Lock for FleetLockClient {
    fn describe(&self) -> String {
        format!("FleetLock server {} (group {})", self.base, self.group)
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn acquire(&self, id: &str) -> anyhow::Result<Acquired> {
        Ok(match self.post("pre-reboot", id)? {
            Answer::Ok => Acquired::Held,
            Answer::No(why) => Acquired::Refused(format!("the lock server said no: {why}")),
        })
    }

    fn release(&self, id: &str) -> anyhow::Result<bool> {
        match self.post("steady-state", id)? {
            Answer::Ok => Ok(true),
            Answer::No(why) => bail!("the lock server refused to release: {why}"),
        }
    }

    fn status(&self) -> anyhow::Result<LockStatus> {
        Err(self.unsupported("list the holders"))
    }

    fn set_max(&self, _max: u32) -> anyhow::Result<LockStatus> {
        Err(self.unsupported("change the number of holders"))
    }

    fn record_failure(&self, _version: &str, _id: &str) -> anyhow::Result<Option<Failures>> {
        Ok(None)
    }

    fn failures(&self, _version: &str) -> anyhow::Result<Option<Failures>> {
        Ok(None)
    }

    fn all_failures(&self) -> anyhow::Result<Vec<Failures>> {
        Err(self.unsupported("count failed boots (the fleet-wide halt needs etcd-lock)"))
    }

    fn clear_failures(&self, _version: &str) -> anyhow::Result<bool> {
        Err(self.unsupported("count failed boots (the fleet-wide halt needs etcd-lock)"))
    }
}
