//! Check a channel and apply a release: what `drover-agent` does on each
//! poll and what `droverctl update --from URL|DIR` does once.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::channel::{self, compare_versions, Metadata, Release, Rollout, SignedChannel};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::apply::{
    self, Advertised, ApplyError, ApplyReport, FileSource, Hooks, Policy, Source, Target, Trust,
};
use crate::delta::{self, BlockSource, FileBlocks};
use crate::source::{self, HttpSource};
use crate::state::{Download, Pending, State, StateFile};
use drover_core::blocks::Index;

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
                delta::read_bounded(&p, CHANNEL_LIMIT)
                    .with_context(|| format!("reading channel {}", p.display()))
            }
        }
    }

    /// The block index of `r` and its frames, when it was published with
    /// them (`None`: the payload only, or the index cannot be read — the
    /// full payload is used, and why is logged).
    pub fn blocks(
        &self,
        client: &reqwest::blocking::Client,
        r: &Release,
    ) -> Option<(Vec<u8>, Box<dyn BlockSource>)> {
        // A TUF channel names the files and signs their sizes and the
        // index's digest; a format-1 channel has them beside the payload.
        let (idx, data, limit, signed) = match &r.blocks {
            Some(b) => (
                b.index.clone(),
                b.data.clone(),
                b.index_size,
                Some((b.index_size, b.index_sha256.as_str(), b.data_size)),
            ),
            None => (
                delta::sibling(&r.payload, "usr.blocks.idx"),
                delta::sibling(&r.payload, "usr.blocks"),
                delta::index_limit(r.size),
                None,
            ),
        };
        let check_signed = |bytes: &[u8], ix: &Index| -> anyhow::Result<()> {
            if let Some((size, sha, data_size)) = signed {
                if bytes.len() as u64 != size || hex::encode(Sha256::digest(bytes)) != sha {
                    bail!("the block index is not the one the channel signed");
                }
                if ix.stored_size() != data_size {
                    bail!(
                        "the block index says {} bytes of frames, the channel {data_size}",
                        ix.stored_size()
                    );
                }
            }
            Ok(())
        };
        let got: anyhow::Result<(Vec<u8>, Box<dyn BlockSource>)> = (|| match self {
            Repo::Url(base) => {
                let bytes = source::get_small(client, &source::join(base, &idx), limit)?;
                let (ix, _) = Index::parse_body(&bytes)?;
                check_signed(&bytes, &ix)?;
                let blocks =
                    HttpSource::new(client.clone(), &source::join(base, &data), ix.stored_size())?;
                Ok((bytes, Box::new(blocks) as Box<dyn BlockSource>))
            }
            Repo::Dir(dir) => {
                let p = dir.join(&idx);
                let bytes = delta::read_bounded(&p, limit)
                    .with_context(|| format!("reading {}", p.display()))?;
                let (ix, _) = Index::parse_body(&bytes)?;
                check_signed(&bytes, &ix)?;
                let path = dir.join(&data);
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let len = file.metadata()?.len();
                if len != ix.stored_size() {
                    bail!(
                        "{} is {len} bytes, its index says {}",
                        path.display(),
                        ix.stored_size()
                    );
                }
                Ok((
                    bytes,
                    Box::new(FileBlocks {
                        file,
                        path,
                        base: 0,
                    }) as Box<dyn BlockSource>,
                ))
            }
        })();
        match got {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::info!(
                    "{} has no usable block index ({e:#}); downloading the whole payload",
                    r.version
                );
                None
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

/// Where releases come from, and the HTTP client that reads them (a
/// directory ignores it).
#[derive(Clone, Copy)]
pub struct Remote<'a> {
    /// The repository.
    pub repo: &'a Repo,
    /// The HTTP client (timeouts, proxies).
    pub client: &'a reqwest::blocking::Client,
    /// The channel's trusted TUF root (built into the image): the channel
    /// is read as a TUF repository, and only so. None: the format-1
    /// channel file, checked with the trusted keys.
    pub tuf_root: Option<&'a [u8]>,
}

/// Progress reports and the stop button of one apply.
pub struct Watch<'a> {
    /// `(written, total)` as bytes are written.
    pub progress: &'a mut dyn FnMut(u64, u64),
    /// Set to stop at the next chunk.
    pub cancel: &'a std::sync::atomic::AtomicBool,
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
    /// Running OS name (the signed manifest's): a TUF channel's releases
    /// for another OS are wrong software here.
    pub os: String,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    tag = "result"
)]
pub enum Verdict {
    /// Nothing newer.
    UpToDate,
    /// A newer release whose rollout has not reached this node yet.
    Waiting {
        /// The version.
        version: String,
        /// When this node's wave comes (seconds since the Unix epoch).
        at: u64,
        /// Where this node is in the rollout, in percent: a node at 30
        /// updates once 30 % of the rollout's hours have passed.
        #[serde(default)]
        wave_percent: u8,
    },
    /// A newer release this node should install.
    Available {
        /// The version.
        version: String,
    },
    /// A newer release the fleet halted: too many nodes failed to boot it.
    Halted {
        /// The version.
        version: String,
        /// Nodes that failed to boot it.
        failures: u32,
        /// The configured `halt-after-failures`.
        limit: u32,
    },
}

impl Verdict {
    /// For people: `droverctl check` and `droverctl status`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::UpToDate => "up to date".into(),
            Verdict::Available { version } => format!("{version} is available"),
            Verdict::Waiting {
                version,
                at,
                wave_percent,
            } => format!(
                "{version} is rolling out; this node is at {wave_percent} % of the rollout, its turn comes at {} ({at})",
                utc(*at)
            ),
            Verdict::Halted {
                version,
                failures,
                limit,
            } => format!(
                "{version} is HALTED: {failures} node(s) of the fleet failed to boot it (halt-after-failures = {limit}); `droverctl lock clear-failures {version}` lifts the halt"
            ),
        }
    }
}

/// `2026-12-07 04:53 UTC`.
pub fn utc(unix: u64) -> String {
    drover_core::time::Utc::from_unix(unix).display_minutes()
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
pub fn check(
    remote: Remote<'_>,
    channel_name: &str,
    trust: Trust<'_>,
    state: &StateFile,
    node: &Node,
    ignore_rollout: bool,
) -> anyhow::Result<Check> {
    let now = channel::now();
    if let Some(root) = remote.tuf_root {
        // TUF: expiry, rollback and freshness are the client's (what it
        // must remember lives in the state directory's tuf/CHANNEL/).
        let offer = crate::tuf::load(
            remote.repo,
            remote.client,
            channel_name,
            root,
            &state.dir().join("tuf").join(channel_name),
            &node.os,
        )?;
        for (version, why) in &offer.foreign {
            tracing::info!("passing over {version} in channel {channel_name}: {why}");
        }
        let st = state.update(|s| {
            s.last_check = Some(now);
            s.clone()
        })?;
        let mut check = pick(&offer.meta, &st, node, trust.policy, ignore_rollout, now)?;
        check.skipped.extend(offer.foreign);
        return Ok(check);
    }
    let bytes = remote.repo.channel_bytes(remote.client, channel_name)?;
    let signed = SignedChannel::from_bytes(&bytes)?;
    let (meta, _key) = signed.verify(trust.keys)?;
    if meta.channel != channel_name {
        bail!(
            "the metadata at channel '{channel_name}' is for channel '{}': refusing it",
            meta.channel
        );
    }
    let st = state.load()?;
    channel::check_fresh(&meta, now, st.sequence.get(channel_name).copied())?;
    state.update(|s| {
        s.sequence.insert(channel_name.to_string(), meta.sequence);
        s.last_check = Some(now);
    })?;
    pick(&meta, &st, node, trust.policy, ignore_rollout, now)
}

/// Picks from checked channel metadata the release this node should run
/// (the newest above its version that has not failed here), and whether
/// its wave has come at `now`: the decision of a check, without the
/// fetching (the simulation runs it as is).
pub fn pick(
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
        let wave = Rollout::wave(&node.machine_id, &r.version);
        let at = r.rollout.node_start(wave);
        check.verdict = if now < at && !ignore_rollout {
            Verdict::Waiting {
                version: r.version.clone(),
                at,
                wave_percent: (wave * 100.0) as u8,
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
pub fn apply_release(
    remote: Remote<'_>,
    release: &Release,
    target: Target<'_>,
    trust: Trust<'_>,
    state: &StateFile,
    node: &Node,
    watch: Watch<'_>,
) -> anyhow::Result<(ApplyReport, u64)> {
    let slot = target.slots.inactive().label().to_string();
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
    let mut src = remote.repo.payload(remote.client, release)?;
    let advertised = Advertised {
        size: release.size,
        sha256: release.sha256.clone(),
        root_hash: release.root_hash.clone(),
    };
    let mut checkpoint_err = None;
    let mut checkpoint = |durable| {
        if let Err(e) = state.update(|s| {
            if let Some(d) = s.download.as_mut() {
                d.durable = durable;
            }
        }) {
            checkpoint_err.get_or_insert(e);
        }
    };
    let hooks = Hooks {
        progress: watch.progress,
        checkpoint: &mut checkpoint,
        cancel: watch.cancel,
    };
    let Target { slots, disk, path } = target;
    // The delta when there is an index (None: no index, the payload).
    let delta = remote
        .repo
        .blocks(remote.client, release)
        .map(|(index, blocks)| {
            delta::apply(
                Target { slots, disk, path },
                src.as_ref(),
                blocks.as_ref(),
                &index,
                Some(&advertised),
                trust,
                resume_from,
                Hooks {
                    progress: hooks.progress,
                    checkpoint: hooks.checkpoint,
                    cancel: hooks.cancel,
                },
            )
            .inspect(log_delta)
        });
    // No index, or a delta that would cost more: the whole payload.
    let result = match delta {
        Some(Err(ApplyError::DeltaLarger { delta, full })) => {
            tracing::info!(
                "a delta of {} would fetch {delta} bytes, the payload is {full}: downloading the payload",
                release.version
            );
            None
        }
        other => other,
    }
    .unwrap_or_else(|| {
        apply::apply(
            Target { slots, disk, path },
            src.as_mut(),
            Some(&advertised),
            trust,
            resume_from,
            hooks,
        )
    });
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

/// Says in the journal what a delta update fetched and copied.
fn log_delta(report: &ApplyReport) {
    let Some(s) = &report.delta else { return };
    tracing::info!(
        "{}: fetched {} of {} frames, {} bytes in {} requests ({:.2} % of the compressed payload of {} bytes); copied {} bytes from the active slot, kept {} from an interrupted attempt",
        report.version,
        s.fetched_frames,
        s.frames,
        s.fetched_bytes,
        s.requests,
        100.0 * s.fetched_bytes as f64 / s.full_stored_bytes.max(1) as f64,
        s.full_stored_bytes,
        s.copied_bytes,
        s.kept_bytes
    );
}

#[cfg(test)]
mod tests {
    use drover_core::channel::{Metadata, Release, Rollout};

    use super::{pick, Node, Verdict};
    use crate::apply::Policy;
    use crate::state::State;

    const NOW: u64 = 1_800_000_000;

    fn release(version: &str, security_version: u64, rollout: Rollout) -> Release {
        Release {
            version: version.into(),
            security_version,
            payload: format!("releases/{version}/usr.img"),
            size: 4096,
            sha256: "00".repeat(32),
            root_hash: "11".repeat(32),
            manifest: format!("releases/{version}/manifest"),
            manifest_sha256: "22".repeat(32),
            blocks: None,
            rollout,
        }
    }

    fn now_for_all() -> Rollout {
        Rollout {
            canary: None,
            start: NOW - 60,
            hours: 0,
        }
    }

    fn channel(releases: Vec<Release>) -> Metadata {
        Metadata {
            format: drover_core::channel::FORMAT,
            channel: "stable".into(),
            sequence: 7,
            issued_at: NOW - 60,
            expires_at: NOW + 86_400,
            releases,
        }
    }

    fn node(version: &str, security_version: u64) -> Node {
        Node {
            version: version.into(),
            security_version,
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            os: "drover".into(),
        }
    }

    fn verdict(meta: &Metadata, st: &State, node: &Node, ignore_rollout: bool) -> Verdict {
        pick(meta, st, node, Policy::default(), ignore_rollout, NOW)
            .unwrap()
            .verdict
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_795_824_000 + 9000), "2026-11-28 02:30 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn the_newest_release_wins_by_version_order_not_list_order() {
        let meta = channel(vec![
            release("1.10.0", 1, now_for_all()),
            release("1.9.0", 1, now_for_all()),
            release("1.2.0", 1, now_for_all()),
        ]);
        let c = pick(
            &meta,
            &State::default(),
            &node("1.2.0", 1),
            Policy::default(),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(
            c.verdict,
            Verdict::Available {
                version: "1.10.0".into()
            }
        );
        assert_eq!(c.release.unwrap().version, "1.10.0");
        assert_eq!((c.channel.as_str(), c.sequence), ("stable", 7));
    }

    #[test]
    fn the_running_version_and_older_ones_are_up_to_date() {
        let meta = channel(vec![
            release("1.0.0", 1, now_for_all()),
            release("1.1.0", 1, now_for_all()),
        ]);
        assert_eq!(
            verdict(&meta, &State::default(), &node("1.1.0", 1), false),
            Verdict::UpToDate
        );
        assert_eq!(
            verdict(
                &channel(vec![]),
                &State::default(),
                &node("1.1.0", 1),
                false
            ),
            Verdict::UpToDate
        );
    }

    #[test]
    fn a_version_that_failed_here_is_passed_over_with_the_reason() {
        let meta = channel(vec![
            release("1.1.0", 1, now_for_all()),
            release("1.2.0", 1, now_for_all()),
        ]);
        let st = State {
            failed_versions: vec!["1.2.0".into()],
            ..State::default()
        };
        let c = pick(&meta, &st, &node("1.0.0", 1), Policy::default(), false, NOW).unwrap();
        assert_eq!(
            c.verdict,
            Verdict::Available {
                version: "1.1.0".into()
            }
        );
        assert_eq!(c.skipped.len(), 1);
        assert_eq!(c.skipped[0].0, "1.2.0");
        assert!(
            c.skipped[0].1.contains("forget-failed"),
            "{}",
            c.skipped[0].1
        );
        // Every newer one failed: up to date, each one said.
        let st = State {
            failed_versions: vec!["1.1.0".into(), "1.2.0".into()],
            ..State::default()
        };
        let c = pick(&meta, &st, &node("1.0.0", 1), Policy::default(), false, NOW).unwrap();
        assert_eq!(c.verdict, Verdict::UpToDate);
        assert_eq!(c.skipped.len(), 2);
        assert!(c.release.is_none());
    }

    #[test]
    fn a_security_downgrade_is_refused_unless_the_policy_allows_it() {
        let meta = channel(vec![release("2.0.0", 3, now_for_all())]);
        let err = pick(
            &meta,
            &State::default(),
            &node("1.0.0", 5),
            Policy::default(),
            false,
            NOW,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("security version 3, below the running 5"),
            "{err}"
        );
        let allow = Policy {
            allow_security_downgrade: true,
        };
        let c = pick(
            &meta,
            &State::default(),
            &node("1.0.0", 5),
            allow,
            false,
            NOW,
        )
        .unwrap();
        assert!(c.release.is_some());
    }

    #[test]
    fn a_node_waits_for_its_wave_unless_the_operator_asks() {
        let n = node("1.0.0", 1);
        let wave = Rollout::wave(&n.machine_id, "1.1.0");
        // A rollout that began now, over 1000 hours: this node's turn is
        // its wave's share of them.
        let rollout = Rollout {
            canary: None,
            start: NOW,
            hours: 1000,
        };
        let at = rollout.node_start(wave);
        assert!(
            at > NOW,
            "wave {wave} starts at once; pick another machine id"
        );
        let meta = channel(vec![release("1.1.0", 1, rollout)]);
        let c = pick(&meta, &State::default(), &n, Policy::default(), false, NOW).unwrap();
        assert_eq!(
            c.verdict,
            Verdict::Waiting {
                version: "1.1.0".into(),
                at,
                wave_percent: (wave * 100.0) as u8,
            }
        );
        assert!(
            c.verdict.describe().contains("its turn comes at"),
            "{}",
            c.verdict.describe()
        );
        assert!(c.release.is_none());
        // At its moment, or when the operator says so, it is available.
        let c = pick(&meta, &State::default(), &n, Policy::default(), false, at).unwrap();
        assert!(c.release.is_some());
        assert_eq!(
            verdict(&meta, &State::default(), &n, true),
            Verdict::Available {
                version: "1.1.0".into()
            }
        );
    }
}
