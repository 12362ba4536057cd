//! The update channel as a TUF repository, written with awslabs' `tough`
//! (Bottlerocket's TUF library): `drover channel init|refresh|rotate-key|show`
//! and the TUF half of `drover publish`.
//!
//! A channel NAME of repository DIR is a TUF repository of its own:
//! metadata in `DIR/tuf/NAME/metadata/` (`N.root.json` for every root
//! version, `N.targets.json`, `N.snapshot.json`, `timestamp.json`:
//! consistent snapshots, so every file but `timestamp.json` can be cached
//! forever) and targets in `DIR/tuf/NAME/targets/`, each stored as
//! `dir/SHA256.name` and hard-linked to the release's files in
//! `DIR/releases/VERSION/` (which the format-1 channel file keeps serving
//! to agents from before TUF).
//!
//! Keys are ed25519, PKCS#8 PEM, in one directory per channel with fixed
//! names: `root-1.pem` … (offline: only `init` and `rotate-key` need them),
//! `targets.pem` (publishing), `snapshot.pem` and `timestamp.pem`
//! (online: `refresh`). Which key serves which role is the root metadata's
//! business; the file names only find them.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use aws_lc_rs::rand::SystemRandom;
use drover_core::channel;
use drover_core::keys::SigningKey;
use serde::Serialize;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Timestamp,
};
use tough::sign::Sign;
use tough::{ExpirationEnforcement, FilesystemTransport, RepositoryLoader, TargetName};

/// The TUF specification version the metadata declares.
const SPEC_VERSION: &str = "1.0.0";

/// How long each role's metadata stays valid when (re-)signed.
#[derive(Clone, Copy, Debug)]
pub struct Expiries {
    /// Root metadata, in days.
    pub root_days: u32,
    /// Targets metadata, in days.
    pub targets_days: u32,
    /// Snapshot metadata, in days.
    pub snapshot_days: u32,
    /// Timestamp metadata, in hours.
    pub timestamp_hours: u32,
}

impl Default for Expiries {
    fn default() -> Self {
        Self {
            root_days: 365,
            targets_days: 30,
            snapshot_days: 30,
            timestamp_hours: 24,
        }
    }
}

/// A channel's TUF directories.
#[derive(Clone, Debug)]
pub struct ChannelDirs {
    /// `DIR/tuf/NAME/metadata`.
    pub metadata: PathBuf,
    /// `DIR/tuf/NAME/targets`.
    pub targets: PathBuf,
}

impl ChannelDirs {
    /// The directories of channel `name` in repository `repo`.
    pub fn new(repo: &Path, name: &str) -> Self {
        Self {
            metadata: repo.join(channel::tuf_metadata_dir(name)),
            targets: repo.join(channel::tuf_targets_dir(name)),
        }
    }

    /// [`ChannelDirs::new`] of a channel that is a TUF repository; an error
    /// that says to run `drover channel init` when it is not.
    pub fn existing(repo: &Path, name: &str) -> anyhow::Result<Self> {
        let dirs = Self::new(repo, name);
        if !dirs.exists() {
            bail!(
                "channel {name} in {} is not a TUF repository: run `drover channel init` first",
                repo.display()
            );
        }
        Ok(dirs)
    }

    /// Whether the channel was made a TUF repository (`drover channel init`).
    pub fn exists(&self) -> bool {
        self.metadata.join("1.root.json").is_file()
    }

    /// The newest root metadata: its path and version.
    pub fn latest_root(&self) -> anyhow::Result<(PathBuf, u64)> {
        let mut n = 0;
        while self.metadata.join(format!("{}.root.json", n + 1)).is_file() {
            n += 1;
        }
        if n == 0 {
            bail!(
                "{} holds no 1.root.json: run `drover channel init` first",
                self.metadata.display()
            );
        }
        Ok((self.metadata.join(format!("{n}.root.json")), n))
    }
}

/// Runs a future of `tough` to completion on this thread.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(f)
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("versions start at 1")
}

fn in_days(days: u32) -> jiff::Timestamp {
    in_hours(u64::from(days) * 24)
}

fn in_hours(hours: u64) -> jiff::Timestamp {
    let secs = channel::now() + hours * 3600;
    jiff::Timestamp::from_second(secs as i64).expect("a time within jiff's range")
}

/// A key file of ours (ed25519, PKCS#8 PEM, [`SigningKey`]) as `tough`
/// signs with it. (`tough`'s own `LocalKeySource` reads ed25519 keys as
/// DER only.)
#[derive(Debug)]
struct PemKey {
    path: PathBuf,
}

/// The loaded key.
struct Ed25519(SigningKey);

#[tough::async_trait]
impl KeySource for PemKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(Ed25519(SigningKey::load(&self.path)?)))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("drover writes its key files itself".into())
    }
}

#[tough::async_trait]
impl Sign for Ed25519 {
    fn tuf_key(&self) -> Key {
        Key::Ed25519 {
            keyval: Ed25519Key {
                public: self.0.public_key().as_bytes().to_vec().into(),
                _extra: HashMap::new(),
            },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        }
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.sign(msg).to_vec())
    }
}

/// A key file of the channel's key directory, with its TUF key id.
struct KeyFile {
    path: PathBuf,
    id: Decoded<Hex>,
    key: Key,
}

async fn key_file(path: &Path) -> anyhow::Result<KeyFile> {
    let src = PemKey {
        path: path.to_owned(),
    };
    let sign = src.as_sign().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = sign.tuf_key();
    let id = key.key_id().context("computing a key id")?;
    Ok(KeyFile {
        path: path.to_owned(),
        id,
        key,
    })
}

/// Every `*.pem` key file in `dir` (unreadable or foreign files are
/// skipped: the directory may hold public halves and notes too).
async fn all_keys(dir: &Path) -> anyhow::Result<Vec<KeyFile>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading key directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    names.sort();
    for p in names {
        if let Ok(k) = key_file(&p).await {
            out.push(k);
        }
    }
    Ok(out)
}

fn sources(keys: &[&KeyFile]) -> Vec<Box<dyn KeySource>> {
    keys.iter()
        .map(|k| {
            Box::new(PemKey {
                path: k.path.clone(),
            }) as Box<dyn KeySource>
        })
        .collect()
}

/// Generates an ed25519 key at `path` (mode 0600) unless one is there.
fn ensure_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let (_, pem) = SigningKey::generate()?;
    crate::commands::write_atomic(path, pem.as_bytes(), 0o600)
}

/// Writes `name` into the metadata directory: first to a file beside it,
/// synced, then renamed, so a reader never sees half a file.
fn put(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    crate::commands::write_atomic(&dir.join(name), bytes, 0o644)
}

fn root_of(path: &Path) -> anyhow::Result<Signed<Root>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&b)
        .with_context(|| format!("{} is not TUF root metadata", path.display()))
}

/// What `drover channel init` made.
#[derive(Debug, Serialize)]
pub struct InitReport {
    /// The metadata directory.
    pub metadata: PathBuf,
    /// The root metadata a node must start from (build it into the image).
    pub root: PathBuf,
    /// The key files, by role.
    pub keys: HashMap<String, Vec<PathBuf>>,
}

/// Makes channel `name` of `repo` a TUF repository: keys in `keys_dir`
/// (made when missing), root metadata version 1 (`root_keys` root keys,
/// `threshold` of them needed), and empty targets, snapshot and timestamp.
pub fn init(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    root_keys: usize,
    threshold: usize,
    exp: Expiries,
) -> anyhow::Result<InitReport> {
    if threshold == 0 || threshold > root_keys {
        bail!("a threshold of {threshold} root keys out of {root_keys} cannot be met");
    }
    let dirs = ChannelDirs::new(repo, name);
    if dirs.exists() {
        bail!(
            "channel {name} in {} is a TUF repository already; rotate its keys with `drover channel rotate-key`",
            repo.display()
        );
    }
    std::fs::create_dir_all(keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;
    let root_paths: Vec<PathBuf> = (1..=root_keys)
        .map(|i| keys_dir.join(format!("root-{i}.pem")))
        .collect();
    let online = ["targets", "snapshot", "timestamp"].map(|r| keys_dir.join(format!("{r}.pem")));
    for p in root_paths.iter().chain(online.iter()) {
        ensure_key(p)?;
    }
    std::fs::create_dir_all(&dirs.metadata)?;
    std::fs::create_dir_all(&dirs.targets)?;
    block_on(async {
        let mut roots = Vec::new();
        for p in &root_paths {
            roots.push(key_file(p).await?);
        }
        let [t, s, ts] = &online;
        let (t, s, ts) = (key_file(t).await?, key_file(s).await?, key_file(ts).await?);
        let mut keys = HashMap::new();
        for k in roots.iter().chain([&t, &s, &ts]) {
            keys.insert(k.id.clone(), k.key.clone());
        }
        let role = |ids: Vec<Decoded<Hex>>, threshold: usize| RoleKeys {
            keyids: ids,
            threshold: nz(threshold as u64),
            _extra: HashMap::new(),
        };
        let root = Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: nz(1),
            expires: in_days(exp.root_days),
            keys,
            roles: HashMap::from([
                (
                    RoleType::Root,
                    role(roots.iter().map(|k| k.id.clone()).collect(), threshold),
                ),
                (RoleType::Targets, role(vec![t.id.clone()], 1)),
                (RoleType::Snapshot, role(vec![s.id.clone()], 1)),
                (RoleType::Timestamp, role(vec![ts.id.clone()], 1)),
            ]),
            _extra: HashMap::new(),
        };
        let signers: Vec<&KeyFile> = roots.iter().collect();
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &sources(&signers),
            &SystemRandom::new(),
        )
        .await?;
        put(&dirs.metadata, "1.root.json", signed.buffer())?;

        let root_path = dirs.metadata.join("1.root.json");
        let mut editor = RepositoryEditor::new(&root_path).await?;
        editor
            .targets_version(nz(1))?
            .targets_expires(in_days(exp.targets_days))?
            .snapshot_version(nz(1))
            .snapshot_expires(in_days(exp.snapshot_days))
            .timestamp_version(nz(1))
            .timestamp_expires(in_hours(u64::from(exp.timestamp_hours)));
        let repo = editor.sign(&sources(&[&t, &s, &ts])).await?;
        write_repo(&dirs, &repo).await?;
        anyhow::Ok(())
    })?;
    Ok(InitReport {
        metadata: dirs.metadata.clone(),
        root: dirs.metadata.join("1.root.json"),
        keys: HashMap::from([
            ("root".to_string(), root_paths),
            ("targets".to_string(), vec![online[0].clone()]),
            ("snapshot".to_string(), vec![online[1].clone()]),
            ("timestamp".to_string(), vec![online[2].clone()]),
        ]),
    })
}

/// Writes signed metadata through a staging directory, the timestamp last,
/// each file renamed into place.
async fn write_repo(
    dirs: &ChannelDirs,
    repo: &tough::editor::signed::SignedRepository,
) -> anyhow::Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&dirs.metadata)?;
    repo.write(staging.path()).await?;
    let mut names: Vec<String> = std::fs::read_dir(staging.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Everything a timestamp points at is in place before the timestamp.
    names.sort_by_key(|n| (n == "timestamp.json", n.clone()));
    for n in names {
        let to = dirs.metadata.join(&n);
        if n.ends_with(".root.json") && to.exists() {
            continue;
        }
        let from = staging.path().join(&n);
        let f = std::fs::File::open(&from)?;
        f.sync_all()?;
        std::fs::rename(&from, &to).with_context(|| format!("moving {n} into place"))?;
    }
    std::fs::File::open(&dirs.metadata)?.sync_all()?;
    Ok(())
}

/// Loads the channel's repository as it stands (expired metadata is
/// fine: the publisher is about to re-sign it).
async fn load(dirs: &ChannelDirs) -> anyhow::Result<(tough::Repository, PathBuf)> {
    let (root_path, _) = dirs.latest_root()?;
    let root = std::fs::read(&root_path)?;
    let url = |p: &Path| {
        url::Url::from_directory_path(p)
            .map_err(|()| anyhow::anyhow!("{} is not an absolute path", p.display()))
    };
    let repo = RepositoryLoader::new(&root, url(&dirs.metadata)?, url(&dirs.targets)?)
        .transport(FilesystemTransport)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .with_context(|| format!("loading the TUF repository in {}", dirs.metadata.display()))?;
    Ok((repo, root_path))
}

/// The newest metadata as stored, unverified.
struct Raw {
    timestamp: Signed<Timestamp>,
    snapshot: Signed<Snapshot>,
    targets: Signed<tough::schema::Targets>,
}

fn read_raw(dirs: &ChannelDirs) -> anyhow::Result<Raw> {
    fn json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<T> {
        let p = dir.join(name);
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("{} does not parse", p.display()))
    }
    let timestamp: Signed<Timestamp> = json(&dirs.metadata, "timestamp.json")?;
    let sv = timestamp
        .signed
        .meta
        .get("snapshot.json")
        .context("the timestamp lists no snapshot")?
        .version;
    let snapshot: Signed<Snapshot> = json(&dirs.metadata, &format!("{sv}.snapshot.json"))?;
    let tv = snapshot
        .signed
        .meta
        .get("targets.json")
        .context("the snapshot lists no targets")?
        .version;
    let targets = json(&dirs.metadata, &format!("{tv}.targets.json"))?;
    Ok(Raw {
        timestamp,
        snapshot,
        targets,
    })
}

/// The keys among `keys` (one scan of the key directory) whose ids `role`
/// of `root` lists.
fn role_keys<'a>(
    root: &Root,
    role: RoleType,
    keys: &'a [KeyFile],
) -> anyhow::Result<Vec<&'a KeyFile>> {
    let ids = &root
        .roles
        .get(&role)
        .with_context(|| format!("the root metadata has no {role} role"))?
        .keyids;
    Ok(keys.iter().filter(|k| ids.contains(&k.id)).collect())
}

/// Checks that the stored metadata is what this channel's keys signed,
/// by root version `v` (a repository edited on disk is not re-signed).
fn verify_raw(dirs: &ChannelDirs, raw: &Raw, v: u64) -> anyhow::Result<()> {
    let check = root_of(&dirs.metadata.join(format!("{v}.root.json")))?.signed;
    check
        .verify_role(&raw.timestamp)
        .and_then(|()| check.verify_role(&raw.snapshot))
        .and_then(|()| check.verify_role(&raw.targets))
        .map_err(|e| {
            anyhow::anyhow!(
                "the channel's metadata in {} does not verify with root version {v} ({e}): refusing to sign on top of it",
                dirs.metadata.display()
            )
        })
}

/// The targets, snapshot and timestamp keys of `keys_dir` that `root`
/// lists (the directory read once); an error names a role without one.
async fn online_keys(root: &Root, keys_dir: &Path) -> anyhow::Result<Vec<KeyFile>> {
    let all = all_keys(keys_dir).await?;
    let mut ids = Vec::new();
    for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        let found = role_keys(root, role, &all)?;
        if found.is_empty() {
            bail!(
                "{} holds no key the root metadata lists for the {role} role",
                keys_dir.display()
            );
        }
        ids.extend(found.into_iter().map(|k| k.id.clone()));
    }
    Ok(all.into_iter().filter(|k| ids.contains(&k.id)).collect())
}

/// Whether `drover publish --tuf-keys` can sign channel `name` of `repo`
/// with the keys of `keys_dir`: checked before anything is written.
pub fn check_publishable(repo: &Path, name: &str, keys_dir: &Path) -> anyhow::Result<()> {
    let dirs = ChannelDirs::existing(repo, name)?;
    let (root_path, newest) = dirs.latest_root()?;
    verify_raw(&dirs, &read_raw(&dirs)?, newest)?;
    let root = root_of(&root_path)?.signed;
    block_on(online_keys(&root, keys_dir)).map(|_| ())
}

/// One file of a release, to become a target.
#[derive(Clone, Debug)]
pub struct NewTarget {
    /// The target name (`releases/2.0.0/usr.img`).
    pub name: String,
    /// The file in the repository (`DIR/releases/2.0.0/usr.img`).
    pub file: PathBuf,
    /// Its size.
    pub length: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// The `custom` object's entries.
    pub custom: HashMap<String, serde_json::Value>,
}

/// What a signing of the channel produced.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Published {
    /// The new targets version.
    pub targets_version: u64,
    /// The new snapshot version.
    pub snapshot_version: u64,
    /// The new timestamp version.
    pub timestamp_version: u64,
}

/// Adds `targets` to the channel (their files hard-linked under their
/// consistent names) and signs new targets, snapshot and timestamp
/// metadata with the keys of `keys_dir` that the root lists for them.
pub fn add_targets(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    targets: &[NewTarget],
    exp: Expiries,
) -> anyhow::Result<Published> {
    sign_targets(repo, name, keys_dir, targets, &[], exp, false)
}

/// [`add_targets`]; the metadata as it stands must verify with the newest
/// root, or (`rotating`: its role keys were just replaced) with the root
/// before it, or nothing is signed on top of it.
fn sign_targets(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    targets: &[NewTarget],
    remove: &[String],
    exp: Expiries,
    rotating: bool,
) -> anyhow::Result<Published> {
    let dirs = ChannelDirs::existing(repo, name)?;
    for t in targets {
        let to = dirs
            .targets
            .join(channel::tuf_target_file(&t.name, &hex::encode(t.sha256)));
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        if !to.exists() && std::fs::hard_link(&t.file, &to).is_err() {
            drover_core::durable::copy(&t.file, &to, 0o644)?;
        }
    }
    block_on(async {
        // Read as stored, not through the client: after a key rotation the
        // role's metadata is still signed by the retired key, which is
        // what this signing replaces. The result is loaded through the
        // client below.
        let (root_path, newest) = dirs.latest_root()?;
        let root = root_of(&root_path)?.signed;
        let raw = read_raw(&dirs)?;
        verify_raw(&dirs, &raw, if rotating { newest - 1 } else { newest })?;
        let keys = online_keys(&root, keys_dir).await?;
        let versions = (
            raw.targets.signed.version.get() + 1,
            raw.snapshot.signed.version.get() + 1,
            raw.timestamp.signed.version.get() + 1,
        );
        let mut editor = RepositoryEditor::new(&root_path).await?;
        editor.targets(raw.targets)?;
        editor.snapshot(raw.snapshot.signed)?;
        editor.timestamp(raw.timestamp.signed)?;
        for t in targets {
            let target = Target {
                length: t.length,
                hashes: Hashes {
                    sha256: t.sha256.to_vec().into(),
                    _extra: HashMap::new(),
                },
                custom: t.custom.clone(),
                _extra: HashMap::new(),
            };
            editor.add_target(TargetName::new(&t.name)?, target)?;
        }
        for r in remove {
            editor.remove_target(&TargetName::new(r)?)?;
        }
        editor
            .targets_version(nz(versions.0))?
            .targets_expires(in_days(exp.targets_days))?
            .snapshot_version(nz(versions.1))
            .snapshot_expires(in_days(exp.snapshot_days))
            .timestamp_version(nz(versions.2))
            .timestamp_expires(in_hours(u64::from(exp.timestamp_hours)));
        let refs: Vec<&KeyFile> = keys.iter().collect();
        let signed = editor.sign(&sources(&refs)).await?;
        write_repo(&dirs, &signed).await?;
        load(&dirs)
            .await
            .context("the metadata just signed does not load")?;
        Ok(Published {
            targets_version: versions.0,
            snapshot_version: versions.1,
            timestamp_version: versions.2,
        })
    })
}

/// Re-signs the timestamp (and with `snapshot`, the snapshot first) with a
/// new version and expiry, with only the keys of those roles: what a timer
/// or CI runs so that nodes keep accepting the channel.
pub fn refresh(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    snapshot: bool,
    exp: Expiries,
) -> anyhow::Result<Published> {
    let dirs = ChannelDirs::new(repo, name);
    block_on(async {
        let (loaded, _) = load(&dirs).await?;
        let root = loaded.root().signed.clone();
        let holder = KeyHolder::Root(root.clone());
        let rng = SystemRandom::new();
        let all = all_keys(keys_dir).await?;
        let ts_keys = role_keys(&root, RoleType::Timestamp, &all)?;
        if ts_keys.is_empty() {
            bail!(
                "{} holds no timestamp key of this channel",
                keys_dir.display()
            );
        }
        let mut snap_meta = loaded
            .timestamp()
            .signed
            .meta
            .get("snapshot.json")
            .cloned()
            .context("the timestamp lists no snapshot")?;
        let mut snapshot_version = loaded.snapshot().signed.version.get();
        if snapshot {
            let s_keys = role_keys(&root, RoleType::Snapshot, &all)?;
            if s_keys.is_empty() {
                bail!(
                    "{} holds no snapshot key of this channel",
                    keys_dir.display()
                );
            }
            snapshot_version += 1;
            let mut s: Snapshot = loaded.snapshot().signed.clone();
            s.version = nz(snapshot_version);
            s.expires = in_days(exp.snapshot_days);
            let signed = SignedRole::new(s, &holder, &sources(&s_keys), &rng).await?;
            put(
                &dirs.metadata,
                &format!("{snapshot_version}.snapshot.json"),
                signed.buffer(),
            )?;
            snap_meta = Metafile {
                length: Some(*signed.length()),
                hashes: Some(Hashes {
                    sha256: signed.sha256().to_vec().into(),
                    _extra: HashMap::new(),
                }),
                version: nz(snapshot_version),
                _extra: HashMap::new(),
            };
        }
        let mut t: Timestamp = loaded.timestamp().signed.clone();
        let timestamp_version = t.version.get() + 1;
        t.version = nz(timestamp_version);
        t.expires = in_hours(u64::from(exp.timestamp_hours));
        t.meta.insert("snapshot.json".into(), snap_meta);
        let signed = SignedRole::new(t, &holder, &sources(&ts_keys), &rng).await?;
        put(&dirs.metadata, "timestamp.json", signed.buffer())?;
        Ok(Published {
            targets_version: loaded.targets().signed.version.get(),
            snapshot_version,
            timestamp_version,
        })
    })
}

/// A role whose keys can be rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The root keys (offline).
    Root,
    /// The targets key.
    Targets,
    /// The snapshot key.
    Snapshot,
    /// The timestamp key.
    Timestamp,
}

impl Role {
    fn tuf(self) -> RoleType {
        match self {
            Role::Root => RoleType::Root,
            Role::Targets => RoleType::Targets,
            Role::Snapshot => RoleType::Snapshot,
            Role::Timestamp => RoleType::Timestamp,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Rotated {
    /// The new root version.
    pub root_version: u64,
    /// The key made for the role.
    pub new_key: PathBuf,
    /// The key id it replaced.
    pub retired: String,
}

/// Replaces one key of `role`: a new key file is made in `keys_dir`, a new
/// root version lists it instead of the retired one (for the online roles:
/// the role's only key; for root: `retire`, a key id or its first 8 or
/// more hex digits, whose file may be lost) and is signed by a threshold of
/// the old root keys and of the new ones. The metadata of a rotated online
/// role is re-signed with the new key at once.
pub fn rotate_key(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    role: Role,
    retire: Option<&str>,
    exp: Expiries,
) -> anyhow::Result<Rotated> {
    let dirs = ChannelDirs::new(repo, name);
    let (root_path, version) = dirs.latest_root()?;
    let old = root_of(&root_path)?;
    let ids = &old
        .signed
        .roles
        .get(&role.tuf())
        .context("the root metadata lacks the role")?
        .keyids;
    let retired: Decoded<Hex> = match (role, retire) {
        (Role::Root, None) => bail!("rotating a root key needs --retire KEY_ID: which one goes"),
        (Role::Root, Some(prefix)) => {
            let prefix = prefix.to_ascii_lowercase();
            let found: Vec<&Decoded<Hex>> = ids
                .iter()
                .filter(|id| prefix.len() >= 8 && hex::encode(id.as_ref()).starts_with(&prefix))
                .collect();
            match found.as_slice() {
                [one] => (*one).clone(),
                [] => bail!("no root key id starts with '{prefix}' (8 hex digits at least; `drover channel show` lists them)"),
                _ => bail!("'{prefix}' names several root keys"),
            }
        }
        (_, Some(_)) => {
            bail!("--retire is for root keys; the {role:?} role has one key, and it is replaced")
        }
        (_, None) => match ids.as_slice() {
            [one] => one.clone(),
            _ => bail!("the role has {} keys; this tool keeps one", ids.len()),
        },
    };
    let stem = match role {
        Role::Root => {
            let mut i = 1;
            while keys_dir.join(format!("root-{i}.pem")).exists() {
                i += 1;
            }
            format!("root-{i}")
        }
        Role::Targets => "targets".into(),
        Role::Snapshot => "snapshot".into(),
        Role::Timestamp => "timestamp".into(),
    };
    let new_path = keys_dir.join(format!("{stem}.pem"));
    // Made beside the old key under a name no key search picks up; it takes
    // the old one's place only once the new root is written.
    let fresh = keys_dir.join(format!("{stem}.pem.new"));
    if fresh.exists() {
        std::fs::remove_file(&fresh)?;
    }
    ensure_key(&fresh)?;
    let signed = block_on(async {
        let new_key = key_file(&fresh).await?;
        let mut root = old.signed.clone();
        root.version = nz(version + 1);
        root.expires = in_days(exp.root_days);
        let entry = root.roles.get_mut(&role.tuf()).expect("checked above");
        entry.keyids.retain(|id| *id != retired);
        entry.keyids.push(new_key.id.clone());
        let still_used: Vec<Decoded<Hex>> = root
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        root.keys.retain(|id, _| still_used.contains(id));
        root.keys.insert(new_key.id.clone(), new_key.key.clone());

        let mut all = all_keys(keys_dir).await?;
        if role == Role::Root {
            all.push(key_file(&fresh).await?);
        }
        let have = |r: &Root| -> Vec<&KeyFile> {
            let ids = &r.roles[&RoleType::Root].keyids;
            all.iter().filter(|k| ids.contains(&k.id)).collect()
        };
        let (old_signers, new_signers) = (have(&old.signed), have(&root));
        for (which, signers, r) in [
            ("old", &old_signers, &old.signed),
            ("new", &new_signers, &root),
        ] {
            let need = r.roles[&RoleType::Root].threshold.get() as usize;
            if signers.len() < need {
                bail!(
                    "the {which} root needs {need} signatures, {} holds {} of its keys",
                    keys_dir.display(),
                    signers.len()
                );
            }
        }
        let rng = SystemRandom::new();
        let by_new = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &sources(&new_signers),
            &rng,
        )
        .await?;
        let by_old = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(old.signed.clone()),
            &sources(&old_signers),
            &rng,
        )
        .await?;
        let signed = by_new.add_old_signatures(by_old.signed().signatures.clone())?;
        put(
            &dirs.metadata,
            &format!("{}.root.json", version + 1),
            signed.buffer(),
        )?;
        // An online role's old key file gives way to the new one.
        if role != Role::Root {
            if let Some(k) = all.iter().find(|k| k.id == retired) {
                let keep = keys_dir.join(format!("{stem}.pem.retired-v{version}"));
                std::fs::rename(&k.path, &keep)?;
            }
        }
        std::fs::rename(&fresh, &new_path)?;
        anyhow::Ok(())
    });
    if signed.is_err() {
        // Nothing was rotated: the key made for it goes.
        let _ = std::fs::remove_file(&fresh);
    }
    signed?;
    if role != Role::Root {
        // The role's metadata must carry the new key's signature now.
        sign_targets(repo, name, keys_dir, &[], &[], exp, true)?;
    }
    Ok(Rotated {
        root_version: version + 1,
        new_key: new_path,
        retired: hex::encode(retired.as_ref()),
    })
}

/// One role as `drover channel show` reports it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RoleView {
    /// The role's metadata version.
    pub version: u64,
    /// When it expires (RFC 3339).
    pub expires: String,
    /// Signatures needed.
    pub threshold: u64,
    /// Its key ids, hex.
    pub keys: Vec<String>,
}

/// One release of the channel.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReleaseView {
    /// The payload's target name.
    pub target: String,
    /// Its length.
    pub length: u64,
    /// What the custom metadata says.
    #[serde(flatten)]
    pub info: channel::ReleaseInfo,
}

/// `drover channel show`.
#[derive(Debug, Serialize)]
pub struct Show {
    /// The channel.
    pub channel: String,
    /// Roles by name.
    pub roles: HashMap<String, RoleView>,
    /// Releases, oldest version first.
    pub releases: Vec<ReleaseView>,
}

/// What `drover channel withdraw` did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Withdrawn {
    /// The versions withdrawn.
    pub versions: Vec<String>,
    /// The target names taken out of the targets metadata.
    pub targets: Vec<String>,
    /// The metadata versions signed.
    #[serde(flatten)]
    pub published: Published,
}

/// Takes releases `versions` out of the channel: their targets (payload,
/// manifest, frames, block index) leave the targets metadata, and new
/// targets, snapshot and timestamp are signed. Nodes that have not
/// installed a withdrawn release no longer see it; nodes running it keep
/// it (they never go back to an older version). The files stay in the
/// repository: a node halfway through a download finishes reading what
/// its metadata names, and the next check drops it.
pub fn withdraw(
    repo: &Path,
    name: &str,
    keys_dir: &Path,
    versions: &[String],
    exp: Expiries,
) -> anyhow::Result<Withdrawn> {
    let dirs = ChannelDirs::existing(repo, name)?;
    let raw = read_raw(&dirs)?;
    let listed = |n: &str| raw.targets.signed.targets.keys().any(|k| k.raw() == n);
    let mut remove = Vec::new();
    for v in versions {
        let mut found = false;
        for (tname, t) in &raw.targets.signed.targets {
            let Some(info) = t
                .custom
                .get(channel::TUF_CUSTOM_KEY)
                .and_then(|c| serde_json::from_value::<channel::ReleaseInfo>(c.clone()).ok())
            else {
                continue;
            };
            if &info.version != v {
                continue;
            }
            found = true;
            remove.push(tname.raw().to_string());
            remove.push(info.manifest);
            remove.extend(info.blocks);
            remove.extend(info.block_index);
        }
        if !found {
            bail!("channel {name} has no release {v} (`drover channel show` lists what it has)");
        }
    }
    remove.retain(|r| listed(r));
    remove.sort();
    remove.dedup();
    let published = sign_targets(repo, name, keys_dir, &[], &remove, exp, false)?;
    Ok(Withdrawn {
        versions: versions.to_vec(),
        targets: remove,
        published,
    })
}

/// Reads the channel's metadata as it stands.
pub fn show(repo: &Path, name: &str) -> anyhow::Result<Show> {
    let dirs = ChannelDirs::new(repo, name);
    block_on(async {
        let (loaded, _) = load(&dirs).await?;
        let root = &loaded.root().signed;
        let view = |role: RoleType, version: u64, expires: jiff::Timestamp| {
            let rk = &root.roles[&role];
            RoleView {
                version,
                expires: expires.to_string(),
                threshold: rk.threshold.get(),
                keys: rk.keyids.iter().map(|k| hex::encode(k.as_ref())).collect(),
            }
        };
        let roles = HashMap::from([
            (
                "root".into(),
                view(RoleType::Root, root.version.get(), root.expires),
            ),
            (
                "targets".into(),
                view(
                    RoleType::Targets,
                    loaded.targets().signed.version.get(),
                    loaded.targets().signed.expires,
                ),
            ),
            (
                "snapshot".into(),
                view(
                    RoleType::Snapshot,
                    loaded.snapshot().signed.version.get(),
                    loaded.snapshot().signed.expires,
                ),
            ),
            (
                "timestamp".into(),
                view(
                    RoleType::Timestamp,
                    loaded.timestamp().signed.version.get(),
                    loaded.timestamp().signed.expires,
                ),
            ),
        ]);
        let mut releases: Vec<ReleaseView> = loaded
            .all_targets()
            .filter_map(|(n, t)| {
                let info = t.custom.get(channel::TUF_CUSTOM_KEY)?;
                Some(ReleaseView {
                    target: n.raw().to_string(),
                    length: t.length,
                    info: serde_json::from_value(info.clone()).ok()?,
                })
            })
            .collect();
        releases.sort_by(|a, b| channel::compare_versions(&a.info.version, &b.info.version));
        Ok(Show {
            channel: name.to_string(),
            roles,
            releases,
        })
    })
}
