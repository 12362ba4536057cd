//! Following a TUF channel: `tough`'s client (the TUF specification's
//! client workflow: the root chain walked version by version, then
//! timestamp, snapshot and targets, each checked for threshold signatures,
//! expiry, rollback against what this node stored, and the sizes and
//! hashes the role above gives) over a transport of ours that reads HTTP
//! and directories with a hard size bound.
//!
//! What the client verified becomes the [`Metadata`] the rest of the agent
//! works with: one [`Release`] per payload target whose custom metadata
//! ([`ReleaseInfo`]) names this node's channel, OS and architecture, with
//! the payload's, frames' and block index's consistent names, lengths and
//! SHA-256 as TUF signed them. The payload is then streamed, resumed and
//! checked against those as before.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drover_core::channel::{
    self, BlockFiles, Metadata, Release, ReleaseInfo, FORMAT, TUF_CUSTOM_KEY,
};
use tough::{
    Bytes, ExpirationEnforcement, Limits, RepositoryLoader, TargetName, Transport, TransportError,
    TransportErrorKind, TransportStream,
};
use url::Url;

use crate::engine::Repo;

/// No metadata file is read past this many bytes, whatever a server or
/// a directory offers (the endless-data attack); `tough`'s per-role limits
/// ([`LIMITS`]) are below it.
const READ_LIMIT: u64 = 16 << 20;

/// Per-role size limits where the role above does not give the size
/// (root, timestamp; targets when the snapshot omits it).
const LIMITS: Limits = Limits {
    max_root_size: 512 << 10,
    max_targets_size: 8 << 20,
    max_timestamp_size: 64 << 10,
    max_snapshot_size: 1 << 20,
    max_root_updates: 1024,
};

/// The CPU architecture releases must be for, as Rust names it.
pub const ARCH: &str = std::env::consts::ARCH;

/// Where a node's TUF root for `channel` is (`DIR/CHANNEL.root.json`).
pub fn root_path(dir: &Path, channel: &str) -> PathBuf {
    dir.join(format!("{channel}.root.json"))
}

/// The transport: `http(s)://` through the agent's client, `file://`
/// from a directory, both bounded by [`READ_LIMIT`]; a missing file is
/// `FileNotFound` (how the client learns there is no newer root).
#[derive(Clone, Debug)]
struct Bounded {
    client: reqwest::blocking::Client,
}

fn read_all(client: &reqwest::blocking::Client, url: &Url) -> Result<Vec<u8>, TransportError> {
    let err = |kind, e: String| TransportError::new_with_cause(kind, url.as_str(), e);
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| TransportError::new(TransportErrorKind::Other, url.as_str()))?;
            crate::delta::read_bounded(&path, READ_LIMIT).map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    TransportErrorKind::FileNotFound
                } else {
                    TransportErrorKind::Other
                };
                err(kind, e.to_string())
            })
        }
        "http" | "https" => {
            drover_core::http::get_small(client, url.as_str(), READ_LIMIT).map_err(|e| {
                let kind = if e.downcast_ref::<drover_core::http::NotFound>().is_some() {
                    TransportErrorKind::FileNotFound
                } else {
                    TransportErrorKind::Other
                };
                err(kind, format!("{e:#}"))
            })
        }
        _ => Err(TransportError::new(
            TransportErrorKind::UnsupportedUrlScheme,
            url.as_str(),
        )),
    }
}

#[tough::async_trait]
impl Transport for Bounded {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        // The blocking client must not run on the runtime's thread.
        let client = self.client.clone();
        let bytes = std::thread::spawn(move || read_all(&client, &url))
            .join()
            .expect("the fetch thread does not panic")?;
        Ok(Box::pin(futures_util::stream::once(async move {
            Ok(Bytes::from(bytes))
        })))
    }
}

/// What a TUF channel offers this node.
#[derive(Debug)]
pub struct Offer {
    /// The channel as the agent's check reads it: the releases for this
    /// node, `sequence` the timestamp's version, `expires-at` the earliest
    /// expiry of the four roles.
    pub meta: Metadata,
    /// Releases passed over, with why (another OS, architecture or
    /// channel; a format this agent does not know).
    pub foreign: Vec<(String, String)>,
}

/// The base URL of a directory of `repo`, with a trailing slash.
fn base_url(repo: &Repo, rel: &str) -> anyhow::Result<Url> {
    match repo {
        Repo::Url(base) => {
            let mut s = drover_core::http::join(base, rel);
            s.push('/');
            Url::parse(&s).with_context(|| format!("'{s}' is not a URL"))
        }
        Repo::Dir(dir) => {
            let abs = std::path::absolute(dir.join(rel))?;
            Url::from_directory_path(&abs)
                .map_err(|()| anyhow::anyhow!("{} cannot be a file URL", abs.display()))
        }
    }
}

/// The trusted root to start from: the newest of the one built into the
/// image and the one this node stored after walking the chain before
/// (both were verified; the stored one is ignored when it does not parse).
fn start_root(built_in: &[u8], datastore: &Path) -> Vec<u8> {
    let version = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v["signed"]["version"].as_u64())
    };
    match std::fs::read(datastore.join("root.json")) {
        Ok(stored) if version(&stored) > version(built_in) => stored,
        _ => built_in.to_vec(),
    }
}

/// What the agent keeps of `tough`'s datastore between checks.
const KEPT: [&str; 4] = [
    "root.json",
    "timestamp.json",
    "snapshot.json",
    "targets.json",
];

/// Runs `load` on a scratch copy of the datastore and puts what it left
/// there in place file by file, each durably (temporary file, fsync,
/// rename, directory fsync), removing what it removed. `tough` writes its
/// datastore in place without fsync; a power cut could leave a torn file,
/// which it then reads as absent — the rollback protection of that role
/// lost. Here a power cut leaves each file old or new, whole.
///
/// Only the four roles are kept ([`KEPT`]). Not `tough`'s
/// `latest_known_time.json` (the newest system time it saw, and a refusal
/// of any clock before it): kept, one boot with a wrong clock (an RTC
/// that came up in 2099, set right by NTP a minute later) would refuse
/// every update until that date. The TUF specification's client has no
/// such rule; expiry is checked against the system clock, as it says.
fn with_durable_datastore<T>(datastore: &Path, load: impl FnOnce(&Path) -> T) -> anyhow::Result<T> {
    let scratch = datastore.join(".loading");
    let files = |dir: &Path| -> std::io::Result<Vec<std::ffi::OsString>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.file_name());
            }
        }
        out.sort();
        Ok(out)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let kept = |f: &std::ffi::OsString| KEPT.iter().any(|k| f == k);
    for f in files(datastore)?.into_iter().filter(kept) {
        std::fs::copy(datastore.join(&f), scratch.join(&f))?;
    }
    let out = load(&scratch);
    // The root first: a newer root with an older timestamp is a state the
    // client handles (it ignores a stored role the root does not verify).
    let mut left: Vec<_> = files(&scratch)?.into_iter().filter(kept).collect();
    left.sort_by_key(|f| f != "root.json");
    for f in &left {
        let new = std::fs::read(scratch.join(f))?;
        let at = datastore.join(f);
        if std::fs::read(&at).ok().as_deref() != Some(&new[..]) {
            drover_core::durable::replace(&at, &new, 0o644)?;
        }
    }
    let mut removed = false;
    for f in files(datastore)? {
        if !left.contains(&f) {
            std::fs::remove_file(datastore.join(&f))?;
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(datastore)?.sync_all()?;
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(out)
}

/// Loads and verifies channel `name` of `repo` from the trusted root
/// `root`, keeping what TUF says a client must remember (the newest root,
/// timestamp, snapshot and targets) in `datastore`; returns the releases
/// for a node running `os` on [`ARCH`].
pub fn load(
    repo: &Repo,
    client: &reqwest::blocking::Client,
    name: &str,
    root: &[u8],
    datastore: &Path,
    os: &str,
) -> anyhow::Result<Offer> {
    std::fs::create_dir_all(datastore)
        .with_context(|| format!("creating {}", datastore.display()))?;
    let metadata_url = base_url(repo, &channel::tuf_metadata_dir(name))?;
    let targets_rel = channel::tuf_targets_dir(name);
    let start = start_root(root, datastore);
    let targets_url = base_url(repo, &targets_rel)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let loaded = with_durable_datastore(datastore, |scratch| {
        runtime
            .block_on(
                RepositoryLoader::new(&start, metadata_url.clone(), targets_url)
                    .transport(Bounded {
                        client: client.clone(),
                    })
                    .limits(LIMITS)
                    .datastore(scratch)
                    .expiration_enforcement(ExpirationEnforcement::Safe)
                    .load(),
            )
            .map_err(|e| anyhow::anyhow!("{}", chain(&e)))
    })?
    .with_context(|| format!("the TUF metadata of channel {name} at {metadata_url} was refused"))?;

    let expires = [
        loaded.root().signed.expires,
        loaded.timestamp().signed.expires,
        loaded.snapshot().signed.expires,
        loaded.targets().signed.expires,
    ]
    .into_iter()
    .min()
    .expect("four roles");
    let (releases, foreign) = releases_of(&loaded.targets().signed, name, os);
    Ok(Offer {
        meta: Metadata {
            format: FORMAT,
            channel: name.to_string(),
            sequence: loaded.timestamp().signed.version.get(),
            issued_at: 0,
            expires_at: expires.as_second().max(0) as u64,
            releases,
        },
        foreign,
    })
}

/// The releases for this node among what the (verified) targets metadata
/// lists, sorted by version, and the ones passed over with why: the
/// payload targets whose custom metadata ([`ReleaseInfo`]) parses and names
/// this node's channel `name`, `os` and [`ARCH`], with the consistent
/// names, lengths and SHA-256 the metadata signs for their files.
pub fn releases_of(
    targets: &tough::schema::Targets,
    name: &str,
    os: &str,
) -> (Vec<Release>, Vec<(String, String)>) {
    let targets_rel = channel::tuf_targets_dir(name);
    // A target whose SHA-256 is not 32 bytes (signed, but nothing a
    // download could match) is as good as absent.
    let file_of = |target: &str| -> Option<(String, u64, String)> {
        let t = targets
            .find_target(&TargetName::new(target).ok()?, false)
            .ok()?;
        if t.hashes.sha256.len() != 32 {
            return None;
        }
        let sha = hex::encode(t.hashes.sha256.as_ref());
        Some((
            format!("{targets_rel}/{}", channel::tuf_target_file(target, &sha)),
            t.length,
            sha,
        ))
    };
    let mut releases = Vec::new();
    let mut foreign = Vec::new();
    for (tname, t) in targets.targets_iter() {
        let Some(custom) = t.custom.get(TUF_CUSTOM_KEY) else {
            continue;
        };
        let target = tname.raw().to_string();
        let info: ReleaseInfo = match serde_json::from_value(custom.clone()) {
            Ok(i) => i,
            Err(e) => {
                foreign.push((target, format!("its release metadata does not parse: {e}")));
                continue;
            }
        };
        let wrong = if info.format > FORMAT {
            Some(format!(
                "release format {} is newer than this agent's {FORMAT}",
                info.format
            ))
        } else if info.channel != name {
            Some(format!(
                "wrong software: published to channel '{}', not '{name}'",
                info.channel
            ))
        } else if info.os != os {
            Some(format!(
                "wrong software: for OS '{}', this node runs '{os}'",
                info.os
            ))
        } else if info.arch != ARCH {
            Some(format!(
                "wrong software: for architecture '{}', this node is '{ARCH}'",
                info.arch
            ))
        } else {
            None
        };
        if let Some(why) = wrong {
            foreign.push((info.version.clone(), why));
            continue;
        }
        let Some((payload, size, sha256)) = file_of(&target) else {
            foreign.push((
                info.version.clone(),
                format!("its payload target {target} has no usable SHA-256"),
            ));
            continue;
        };
        let Some((manifest, _, manifest_sha256)) = file_of(&info.manifest) else {
            foreign.push((
                info.version.clone(),
                format!(
                    "its manifest target {} is not listed or has no usable SHA-256",
                    info.manifest
                ),
            ));
            continue;
        };
        let blocks = match (&info.blocks, &info.block_index) {
            (Some(b), Some(i)) => match (file_of(b), file_of(i)) {
                (Some((data, data_size, _)), Some((index, index_size, index_sha256))) => {
                    Some(BlockFiles {
                        index,
                        index_size,
                        index_sha256,
                        data,
                        data_size,
                    })
                }
                _ => None,
            },
            _ => None,
        };
        releases.push(Release {
            version: info.version,
            security_version: info.security_version,
            payload,
            size,
            sha256,
            root_hash: info.root_hash,
            manifest,
            manifest_sha256,
            rollout: info.rollout,
            blocks,
        });
    }
    releases.sort_by(|a, b| channel::compare_versions(&a.version, &b.version));
    (releases, foreign)
}

/// An error and its causes on one line (`tough`'s errors nest the reason).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets metadata with release 1.0.0 whose payload hash is `sha`.
    fn targets_with(sha: &str) -> tough::schema::Targets {
        let info = serde_json::json!({
            "format": FORMAT, "channel": "stable", "os": "drover", "arch": ARCH,
            "version": "1.0.0", "security-version": 1, "root-hash": "aa",
            "rollout": {"start": 0, "hours": 0},
            "manifest": "releases/1.0.0/manifest.json",
        });
        serde_json::from_value(serde_json::json!({
            "_type": "targets", "spec_version": "1.0.0", "version": 1,
            "expires": "2030-01-01T00:00:00Z",
            "targets": {
                "releases/1.0.0/usr.img": {
                    "length": 10, "hashes": {"sha256": sha}, "custom": {"drover": info},
                },
                "releases/1.0.0/manifest.json": {
                    "length": 2, "hashes": {"sha256": "ab".repeat(32)},
                },
            },
        }))
        .unwrap()
    }

    /// Found by the `tuf_metadata` fuzz target: a payload whose signed
    /// SHA-256 is not 32 bytes was offered (and its download could only
    /// fail); it is passed over with the reason.
    #[test]
    fn a_release_whose_hash_is_not_sha256_sized_is_passed_over() {
        let (r, foreign) = releases_of(&targets_with(&"cd".repeat(32)), "stable", "drover");
        assert_eq!(r.len(), 1, "{foreign:?}");
        assert_eq!(r[0].sha256, "cd".repeat(32));
        let (r, foreign) = releases_of(&targets_with(&"cd".repeat(53)), "stable", "drover");
        assert!(r.is_empty());
        assert_eq!(foreign.len(), 1);
        assert!(foreign[0].1.contains("no usable SHA-256"), "{foreign:?}");
    }

    #[test]
    fn the_datastore_is_put_in_place_with_what_the_client_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        for (n, b) in [
            ("root.json", "r1"),
            ("timestamp.json", "t1"),
            ("snapshot.json", "s1"),
            // An earlier agent's: dropped.
            ("latest_known_time.json", "\"2099-01-01T00:00:00Z\""),
        ] {
            std::fs::write(p(n), b).unwrap();
        }
        let out = with_durable_datastore(d.path(), |scratch| {
            assert_eq!(std::fs::read(scratch.join("root.json")).unwrap(), b"r1");
            assert!(!scratch.join("latest_known_time.json").exists());
            std::fs::write(scratch.join("latest_known_time.json"), "\"2026\"").unwrap();
            std::fs::write(scratch.join("root.json"), "r2").unwrap();
            // A timestamp key rotation: the client forgets the timestamp.
            std::fs::remove_file(scratch.join("timestamp.json")).unwrap();
            std::fs::write(scratch.join("targets.json"), "x1").unwrap();
            7
        })
        .unwrap();
        assert_eq!(out, 7);
        assert_eq!(std::fs::read(p("root.json")).unwrap(), b"r2");
        assert!(!p("timestamp.json").exists());
        assert_eq!(std::fs::read(p("snapshot.json")).unwrap(), b"s1");
        assert_eq!(std::fs::read(p("targets.json")).unwrap(), b"x1");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }
}
