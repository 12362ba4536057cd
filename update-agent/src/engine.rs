//! Check a channel and apply a release: what `drover-agent` does on each
//! poll and what `droverctl update --from URL|DIR` does once.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_core::channel::{self, compare_versions, Metadata, Release, Rollout, SignedChannel};
use drover_core::keys::TrustedKeys;
use drover_core::Slots;
use serde::{Deserialize, Serialize};

use crate::apply::{self, Advertised, ApplyError, ApplyReport, FileSource, Hooks, Policy, Source};
use crate::source::{self, HttpSource};
use crate::state::{Download, Pending, State, StateFile};

/// Channel files larger than this are refused.
const CHANNEL_LIMIT: u64 = 4 << 20;

/// A published repository: a base URL or a local directory (a USB stick,
/// a mirror).
#[derive(Clone, Debug)]
pub enum Repo {
    /// `http://` or `https://` base URL.
    Url(String),
    /// A directory with `channels/` and `releases/`.
    Dir(PathBuf),
}

impl Repo {
    /// A URL when it has a scheme, a directory otherwise.
    pub fn parse(s: &str) -> Repo {
        match drover_core::location::Location::parse(s) {
            drover_core::location::Location::Url(u) => Repo::Url(u),
            drover_core::location::Location::Local(p) => Repo::Dir(p),
        }
    }

    fn channel_bytes(
        &self,
        client: &reqwest::blocking::Client,
        name: &str,
    ) -> anyhow::Result<Vec<u8>> {
        match self {
            Repo::Url(base) => source::get_small(
                client,
                &source::join(base, &format!("channels/{name}.json")),
                CHANNEL_LIMIT,
            ),
            Repo::Dir(dir) => {
                let p = channel::channel_path(dir, name);
                std::fs::read(&p).with_context(|| format!("reading channel {}", p.display()))
            }
        }
    }

    /// The payload of `r`.
    pub fn payload(
        &self,
        client: &reqwest::blocking::Client,
        r: &Release,
    ) -> anyhow::Result<Box<dyn Source>> {
        match self {
            Repo::Url(base) => Ok(Box::new(HttpSource::new(
                client.clone(),
                &source::join(base, &r.payload),
                r.size,
            )?)),
            Repo::Dir(dir) => {
                let p = dir.join(&r.payload);
                let s = FileSource::open(&p)?;
                if s.size() != r.size {
                    bail!(
                        "{} is {} bytes, the signed channel metadata says {}: refusing it",
                        p.display(),
                        s.size(),
                        r.size
                    );
                }
                Ok(Box::new(s))
            }
        }
    }
}

/// The running system, as far as an update is concerned.
#[derive(Clone, Debug)]
pub struct Node {
    /// Running OS version.
    pub version: String,
    /// Running security version.
    pub security_version: u64,
    /// `/etc/machine-id`, for the rollout wave.
    pub machine_id: String,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Verdict {
    /// Nothing newer.
    UpToDate,
    /// A newer release whose rollout has not reached this node yet.
    Waiting {
        /// The version.
        version: String,
        /// When this node's wave comes (seconds since the Unix epoch).
        at: u64,
    },
    /// A newer release this node should install.
    Available {
        /// The version.
        version: String,
    },
}

/// A check's result (the D-Bus `Check` method's answer, which `droverctl
/// check` reads back with this type).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// Channel name.
    pub channel: String,
    /// Its sequence number.
    pub sequence: u64,
    /// Its expiry.
    pub expires_at: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// Newer versions passed over, with why (failed here before).
    pub skipped: Vec<(String, String)>,
    /// The release to install, when there is one.
    #[serde(skip)]
    pub release: Option<Release>,
}

/// Fetches and checks the channel metadata (signature, expiry, sequence),
/// records its sequence number, and picks the newest release this node
/// should run. A newest release below the running security version is an
/// error (unless the policy allows it); versions that failed here before are
/// passed over. With `ignore_rollout`, a waiting release is available now
/// (an operator's explicit `droverctl update`).
#[allow(clippy::too_many_arguments)]
pub fn check(
    repo: &Repo,
    client: &reqwest::blocking::Client,
    channel_name: &str,
    trusted: &TrustedKeys,
    state: &StateFile,
    node: &Node,
    policy: Policy,
    ignore_rollout: bool,
) -> anyhow::Result<Check> {
    let bytes = repo.channel_bytes(client, channel_name)?;
    let signed = SignedChannel::from_bytes(&bytes)?;
    let (meta, _key) = signed.verify(trusted)?;
    if meta.channel != channel_name {
        bail!(
            "the metadata at channel '{channel_name}' is for channel '{}': refusing it",
            meta.channel
        );
    }
    let now = channel::now();
    let st = state.load()?;
    channel::check_fresh(&meta, now, st.sequence.get(channel_name).copied())?;
    state.update(|s| {
        s.sequence.insert(channel_name.to_string(), meta.sequence);
        s.last_check = Some(now);
    })?;
    pick(&meta, &st, node, policy, ignore_rollout, now)
}

fn pick(
    meta: &Metadata,
    st: &State,
    node: &Node,
    policy: Policy,
    ignore_rollout: bool,
    now: u64,
) -> anyhow::Result<Check> {
    let mut newer: Vec<&Release> = meta
        .releases
        .iter()
        .filter(|r| compare_versions(&r.version, &node.version).is_gt())
        .collect();
    newer.sort_by(|a, b| compare_versions(&b.version, &a.version));
    let mut skipped = Vec::new();
    let mut check = Check {
        channel: meta.channel.clone(),
        sequence: meta.sequence,
        expires_at: meta.expires_at,
        verdict: Verdict::UpToDate,
        skipped: Vec::new(),
        release: None,
    };
    for r in newer {
        if st.failed_versions.contains(&r.version) {
            skipped.push((
                r.version.clone(),
                "it failed to boot here or was rolled back from by hand (`droverctl forget-failed VERSION` allows it again)".to_string(),
            ));
            continue;
        }
        if r.security_version < node.security_version && !policy.allow_security_downgrade {
            bail!(
                "release {} has security version {}, below the running {} ({}): refusing it",
                r.version,
                r.security_version,
                node.security_version,
                node.version
            );
        }
        let at = r
            .rollout
            .node_start(Rollout::wave(&node.machine_id, &r.version));
        check.verdict = if now < at && !ignore_rollout {
            Verdict::Waiting {
                version: r.version.clone(),
                at,
            }
        } else {
            check.release = Some(r.clone());
            Verdict::Available {
                version: r.version.clone(),
            }
        };
        break;
    }
    check.skipped = skipped;
    Ok(check)
}

/// Applies `release` from `repo` to the inactive slot of `disk`, resuming
/// an interrupted download of the same payload into the same slot, and
/// records the resume point and, on success, the pending update.
#[allow(clippy::too_many_arguments)]
pub fn apply_release(
    repo: &Repo,
    client: &reqwest::blocking::Client,
    release: &Release,
    slots: &mut Slots,
    disk: &mut File,
    disk_path: &Path,
    trusted: &TrustedKeys,
    policy: Policy,
    state: &StateFile,
    node: &Node,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<(ApplyReport, u64)> {
    let slot = slots.inactive().label().to_string();
    let st = state.load()?;
    let resume_from = match &st.download {
        Some(d) if d.sha256 == release.sha256 && d.slot == slot => d.durable,
        _ => 0,
    };
    state.update(|s| {
        s.download = Some(Download {
            version: release.version.clone(),
            sha256: release.sha256.clone(),
            slot: slot.clone(),
            durable: resume_from,
        })
    })?;
    let mut src = repo.payload(client, release)?;
    let advertised = Advertised {
        size: release.size,
        sha256: release.sha256.clone(),
        root_hash: release.root_hash.clone(),
    };
    let mut checkpoint_err = None;
    let result = apply::apply(
        slots,
        disk,
        disk_path,
        src.as_mut(),
        Some(&advertised),
        trusted,
        policy,
        resume_from,
        Hooks {
            progress,
            checkpoint: &mut |durable| {
                if let Err(e) = state.update(|s| {
                    if let Some(d) = s.download.as_mut() {
                        d.durable = durable;
                    }
                }) {
                    checkpoint_err.get_or_insert(e);
                }
            },
            cancel,
        },
    );
    if let Some(e) = checkpoint_err {
        tracing::warn!("could not record a resume point: {e:#}");
    }
    match result {
        Ok(report) => {
            state.update(|s| {
                s.download = None;
                s.pending = Some(Pending {
                    version: report.version.clone(),
                    slot: report.slot.to_string(),
                    from_version: node.version.clone(),
                    failure: None,
                });
            })?;
            Ok((report, resume_from))
        }
        Err(e) => {
            // A broken connection or a stop keeps the resume point; anything
            // else means these bytes are not worth resuming.
            let resumable = matches!(e, ApplyError::Source { .. } | ApplyError::Cancelled { .. });
            if !resumable {
                state.update(|s| s.download = None)?;
            }
            Err(anyhow::Error::new(e).context(format!("applying {} to {slot}", release.version)))
        }
    }
}
