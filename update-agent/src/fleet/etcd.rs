//! The reboot lock in etcd: a counting semaphore per group, and the
//! failed boots per release.
//!
//! Keys (read them with `etcdctl get --prefix /drover/`):
//!
//! * `/drover/reboot-lock/GROUP`: `{"max":N,"holders":[{"id":…,"since":…}]}`;
//!   created with `max` 1 by the first acquire, changed by `droverctl lock
//!   set-max`.
//! * `/drover/failures/VERSION`: `{"version":…,"nodes":[…],"groups":{"GROUP":n}}`,
//!   the nodes whose boot of VERSION failed (each once).
//!
//! Every change is a compare-and-swap on the key's `mod_revision` (or, for
//! a new key, `create_revision` 0), retried with a jittered backoff when
//! another node changed the key in between. There is no lease: a lock is
//! held *across* the node's reboot and given back only once its new slot
//! is confirmed (or its rollback recorded), as CoreOS's locksmith and
//! Fedora CoreOS's airlock do.
//!
//! The client speaks etcd's v3 API through its JSON gateway (`/v3/kv/…`,
//! served by every etcd ≥ 3.4 on its client port, with the same TLS and
//! client certificates as gRPC) with the agent's blocking HTTP client:
//! the `etcd-client` crate would bring an async runtime, tonic and its
//! protobuf build into an agent that is synchronous everywhere else, for
//! the two calls (range, txn) this needs.

use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Acquired, Failures, Holder, Lock, LockStatus};
use crate::config;

/// The prefix of every Drover key.
pub const PREFIX: &str = "/drover/";

/// A group's semaphore key.
pub fn lock_key(group: &str) -> String {
    format!("{PREFIX}reboot-lock/{group}")
}

/// A release's failure key.
pub fn failures_key(version: &str) -> String {
    format!("{PREFIX}failures/{version}")
}

/// Compare-and-swap attempts before an operation gives up.
const CAS_ATTEMPTS: u32 = 20;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The semaphore's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// How many may hold it.
    pub max: u32,
    /// Who holds it.
    pub holders: Vec<Holder>,
}

/// No etcd response is read past this (the largest is a list of every
/// release's failure count).
const RESPONSE_LIMIT: u64 = 16 << 20;

/// The value and revision of the first key in an etcd range response
/// (the JSON gateway's `/v3/kv/range`: base64 values, revisions as
/// strings); no key is revision 0.
pub fn range_value(v: &serde_json::Value) -> anyhow::Result<Versioned> {
    let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
        return Ok(Versioned {
            value: None,
            revision: 0,
        });
    };
    let value = base64::engine::general_purpose::STANDARD
        .decode(kv["value"].as_str().unwrap_or(""))
        .context("etcd sent a value that is not base64")?;
    let revision = kv["mod_revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .context("etcd sent no mod_revision")?;
    Ok(Versioned {
        value: Some(value),
        revision,
    })
}

/// Every key and value of an etcd range response.
pub fn range_list(v: &serde_json::Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let d = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap_or(""))
    };
    let mut out = Vec::new();
    for kv in v["kvs"].as_array().into_iter().flatten() {
        let k = String::from_utf8(d(&kv["key"])?).context("a key that is not UTF-8")?;
        out.push((k, d(&kv["value"])?));
    }
    Ok(out)
}

/// A value and the revision it was last changed at (0: no such key).
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The value, when the key exists.
    pub value: Option<Vec<u8>>,
    /// Its `mod_revision`.
    pub revision: i64,
}

/// An etcd cluster's v3 KV API, through any member that answers.
pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::blocking::Client,
    /// The member that answered last (tried first).
    preferred: std::sync::atomic::AtomicUsize,
    /// Requests answered, and compare-and-swaps that lost to another
    /// writer, since the client was made.
    counts: Counts,
}

/// What a client did: requests and lost compare-and-swaps.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests etcd answered (ranges and transactions).
    pub requests: std::sync::atomic::AtomicU64,
    /// Transactions whose comparison failed (another writer first).
    pub conflicts: std::sync::atomic::AtomicU64,
    /// The cluster's revision at this client's last successful swap: the
    /// place of that write in the cluster's one order of writes.
    pub last_commit: std::sync::atomic::AtomicI64,
}

impl Etcd {
    /// A client for `endpoints`, with the CA and the client certificate
    /// when given.
    pub fn connect(
        endpoints: &[String],
        ca: Option<&std::path::Path>,
        cert_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> anyhow::Result<Etcd> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints");
        }
        let mut b = reqwest::blocking::Client::builder()
            .user_agent(concat!("drover-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the etcd CA {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            b = b.add_root_certificate(cert).tls_built_in_root_certs(false);
        }
        if let Some((cert, key)) = cert_key {
            let mut pem = std::fs::read(cert).with_context(|| {
                format!("reading the etcd client certificate {}", cert.display())
            })?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .with_context(|| format!("reading the etcd client key {}", key.display()))?,
            );
            let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "{} and {} are not a PEM certificate and its key",
                    cert.display(),
                    key.display()
                )
            })?;
            b = b.identity(id);
        }
        Ok(Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http: b.build()?,
            preferred: std::sync::atomic::AtomicUsize::new(0),
            counts: Counts::default(),
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// What this client did so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// POSTs `body` to `path` on the first member that answers, starting
    /// with the one that answered last.
    fn call(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        use std::sync::atomic::Ordering;
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let k = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[k]);
            let r = self
                .http
                .post(&url)
                .json(body)
                .send()
                .and_then(|r| r.error_for_status())
                .map_err(anyhow::Error::from)
                .and_then(|r| {
                    let body =
                        drover_core::http::read_body(r, &format!("POST {url}"), RESPONSE_LIMIT)?;
                    Ok(serde_json::from_slice::<serde_json::Value>(&body)?)
                });
            match r {
                Ok(v) => {
                    self.preferred.store(k, Ordering::Relaxed);
                    self.counts.requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(e) = v.get("error").or_else(|| v.get("message")) {
                        bail!("etcd {url}: {e}");
                    }
                    return Ok(v);
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        bail!("no etcd member answered: {}", errors.join("; "))
    }

    /// The value of `key` and its revision.
    pub fn get(&self, key: &str) -> anyhow::Result<Versioned> {
        range_value(&self.call("/v3/kv/range", &json!({ "key": b64(key) }))?)
    }

    /// The keys under `prefix` and their values.
    pub fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().context("an empty prefix")? += 1;
        let end = base64::engine::general_purpose::STANDARD.encode(end);
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": end }),
        )?;
        range_list(&v)
    }

    /// Puts `value` at `key` if the key is still at `revision` (0: does not
    /// exist; `None` value: deletes it). Returns whether it was swapped.
    pub fn swap(&self, key: &str, revision: i64, value: Option<&[u8]>) -> anyhow::Result<bool> {
        let compare = if revision == 0 {
            json!({ "key": b64(key), "target": "CREATE", "create_revision": "0" })
        } else {
            json!({ "key": b64(key), "target": "MOD", "mod_revision": revision.to_string() })
        };
        let op = match value {
            Some(v) => json!({ "request_put": {
                "key": b64(key),
                "value": base64::engine::general_purpose::STANDARD.encode(v),
            }}),
            None => json!({ "request_delete_range": { "key": b64(key) } }),
        };
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "compare": [compare], "success": [op], "failure": [] }),
        )?;
        let swapped = v["succeeded"].as_bool().unwrap_or(false);
        if swapped {
            if let Some(r) = v["header"]["revision"]
                .as_str()
                .and_then(|r| r.parse().ok())
            {
                self.counts
                    .last_commit
                    .store(r, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(swapped)
    }

    /// Reads `key` as JSON (`None`: absent), lets `change` decide the new
    /// value (`None`: leave it), and swaps it in; on a conflict (another
    /// writer in between) reads again after a jittered backoff.
    pub fn update<T, R>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> anyhow::Result<(Option<T>, R)>,
    ) -> anyhow::Result<R>
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let mut pause = 10u64;
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.get(key)?;
            let parsed: Option<T> =
                match &cur.value {
                    Some(b) => Some(serde_json::from_slice(b).with_context(|| {
                        format!("etcd key {key} does not hold what Drover writes")
                    })?),
                    None => None,
                };
            let (new, r) = change(parsed)?;
            let Some(new) = new else {
                return Ok(r);
            };
            let bytes = serde_json::to_vec(&new)?;
            if self.swap(key, cur.revision, Some(&bytes))? {
                return Ok(r);
            }
            self.counts
                .conflicts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(pause + super::jitter_below(pause)));
            pause = (pause * 2).min(1000);
        }
        bail!("etcd key {key}: still changing under this node after {CAS_ATTEMPTS} attempts")
    }
}

/// The `etcd-lock` strategy's lock: [`Etcd`] and a group.
pub struct EtcdLock {
    etcd: std::sync::Arc<Etcd>,
    group: String,
}

impl EtcdLock {
    /// From the agent's `[reboot.etcd]`.
    pub fn new(cfg: &config::EtcdLock) -> anyhow::Result<EtcdLock> {
        let cert_key = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        Ok(EtcdLock {
            etcd: std::sync::Arc::new(Etcd::connect(&cfg.endpoints, cfg.ca.as_deref(), cert_key)?),
            group: cfg.group.clone(),
        })
    }

    /// The lock of `group` through an existing client (many groups, or
    /// many simulated nodes, over one connection pool).
    pub fn with_client(etcd: std::sync::Arc<Etcd>, group: &str) -> EtcdLock {
        EtcdLock {
            etcd,
            group: group.to_string(),
        }
    }

    /// The client.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    fn status_of(&self, s: Semaphore) -> LockStatus {
        LockStatus {
            group: self.group.clone(),
            max: s.max,
            holders: s.holders,
        }
    }
}

/// An acquire by `id` of group `group`'s semaphore as etcd holds it
/// (`None`: never written): the value to swap in (`None`: unchanged) and
/// what the node got. Holding a slot already is success.
pub fn take_slot(
    cur: Option<Semaphore>,
    group: &str,
    id: &str,
    now: u64,
) -> (Option<Semaphore>, Acquired) {
    let mut s = cur.unwrap_or_else(new_semaphore);
    if s.holders.iter().any(|h| h.id == id) {
        return (None, Acquired::Held);
    }
    if s.holders.len() >= s.max as usize {
        let status = LockStatus {
            group: group.to_string(),
            max: s.max,
            holders: s.holders,
        };
        let why = format!("the reboot lock is full: {}", status.summary());
        return (None, Acquired::Refused(why));
    }
    s.holders.push(Holder {
        id: id.to_string(),
        since: now,
    });
    (Some(s), Acquired::Held)
}

/// A release by `id`: the value to swap in (`None`: unchanged) and whether
/// it held a slot.
pub fn give_back(cur: Option<Semaphore>, id: &str) -> (Option<Semaphore>, bool) {
    let Some(mut s) = cur else {
        return (None, false);
    };
    let before = s.holders.len();
    s.holders.retain(|h| h.id != id);
    if s.holders.len() == before {
        return (None, false);
    }
    (Some(s), true)
}

fn new_semaphore() -> Semaphore {
    Semaphore {
        max: 1,
        holders: Vec::new(),
    }
}

impl Lock for EtcdLock {
    fn describe(&self) -> String {
        format!(
            "etcd lock {} at {}",
            lock_key(&self.group),
            self.etcd.endpoints.join(",")
        )
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn acquire(&self, id: &str) -> anyhow::Result<Acquired> {
        let now = drover_core::channel::now();
        self.etcd
            .update(&lock_key(&self.group), |cur: Option<Semaphore>| {
                Ok(take_slot(cur, &self.group, id, now))
            })
    }

    fn release(&self, id: &str) -> anyhow::Result<bool> {
        self.etcd
            .update(&lock_key(&self.group), |cur: Option<Semaphore>| {
                Ok(give_back(cur, id))
            })
    }

    fn status(&self) -> anyhow::Result<LockStatus> {
        let v = self.etcd.get(&lock_key(&self.group))?;
        let s = match v.value {
            Some(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "etcd key {} does not hold a semaphore",
                    lock_key(&self.group)
                )
            })?,
            None => new_semaphore(),
        };
        Ok(self.status_of(s))
    }

    fn set_max(&self, max: u32) -> anyhow::Result<LockStatus> {
        self.etcd
            .update(&lock_key(&self.group), |cur: Option<Semaphore>| {
                let mut s = cur.unwrap_or_else(new_semaphore);
                s.max = max;
                Ok((Some(s.clone()), self.status_of(s)))
            })
    }

    fn record_failure(&self, version: &str, id: &str) -> anyhow::Result<Option<Failures>> {
        let group = self.group.clone();
        self.etcd
            .update(&failures_key(version), |cur: Option<Failures>| {
                let mut f = cur.unwrap_or_else(|| Failures {
                    version: version.to_string(),
                    ..Failures::default()
                });
                if f.nodes.iter().any(|n| n == id) {
                    return Ok((None, Some(f)));
                }
                f.nodes.push(id.to_string());
                *f.groups.entry(group.clone()).or_default() += 1;
                Ok((Some(f.clone()), Some(f)))
            })
    }

    fn failures(&self, version: &str) -> anyhow::Result<Option<Failures>> {
        let v = self.etcd.get(&failures_key(version))?;
        Ok(Some(match v.value {
            Some(b) => serde_json::from_slice(&b).with_context(|| {
                format!("etcd key {} is not a failure count", failures_key(version))
            })?,
            None => Failures {
                version: version.to_string(),
                ..Failures::default()
            },
        }))
    }

    fn all_failures(&self) -> anyhow::Result<Vec<Failures>> {
        let mut out = Vec::new();
        for (k, v) in self.etcd.list(&format!("{PREFIX}failures/"))? {
            out.push(
                serde_json::from_slice(&v)
                    .with_context(|| format!("etcd key {k} is not a failure count"))?,
            );
        }
        Ok(out)
    }

    fn clear_failures(&self, version: &str) -> anyhow::Result<bool> {
        let key = failures_key(version);
        for _ in 0..CAS_ATTEMPTS {
            let cur = self.etcd.get(&key)?;
            if cur.value.is_none() {
                return Ok(false);
            }
            if self.etcd.swap(&key, cur.revision, None)? {
                return Ok(true);
            }
        }
        bail!("etcd key {key}: still changing after {CAS_ATTEMPTS} attempts")
    }
}
