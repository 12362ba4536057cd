//! `drover publish`: add a built release to a signed update channel.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::channel::{self, Metadata, Release, Rollout, SignedChannel};
use drover_core::keys::{PublicKey, SigningKey, TrustedKeys};
use drover_core::slot_image;
use sha2::{Digest as _, Sha256};

/// Publish a built image to a channel in a static repository directory.
///
/// Copies the payload (`usr.img`) and its signed manifest to
/// `DIR/releases/VERSION/`, with the payload cut into zstd frames
/// (`usr.blocks`) and their signed index (`usr.blocks.idx`) for delta
/// updates — the frames cut where the channel's previous release differs,
/// so a node running it fetches only the new blocks — then writes `DIR/channels/NAME.json`: the
/// channel metadata with the new release, the next sequence number and a
/// new expiry, signed with the key. Serve DIR with any static web server
/// that answers range requests (nodes resume downloads with them).
///
/// With --tuf-keys, the release also goes to the channel's TUF repository
/// (`drover channel init` made it): its files become targets (under
/// `DIR/tuf/NAME/targets/`, hard links named by their SHA-256), the
/// payload's custom metadata carries version, security version, root hash,
/// OS name, architecture, channel and rollout, and new targets, snapshot
/// and timestamp metadata are signed with the keys of that directory.
/// Nodes whose image carries the channel's TUF root follow only that;
/// older nodes keep following the format-1 file `channels/NAME.json`,
/// which is written as before (their last update in it brings the root).
///
/// An existing channel must verify with the same key. Republishing a
/// version with different bytes is refused; republishing the same bytes
/// only re-signs (a new sequence and expiry: run it before the metadata
/// expires to keep a channel alive).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Channel name (letters, digits, '-', '_').
    #[arg(long, value_name = "NAME")]
    pub channel: String,
    /// A `drover build` output directory (holding usr.img and manifest.json).
    #[arg(long, value_name = "BUILD_DIR")]
    pub image: PathBuf,
    /// Secret key (PKCS#8 PEM) that signs the channel.
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// Public key the image's manifest is signed with, when it is not the
    /// channel key; repeatable.
    #[arg(long = "image-key", value_name = "PUBLIC")]
    pub image_keys: Vec<PathBuf>,
    /// Spread the release over this many hours (0: every node at once).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rollout_hours: u32,
    /// Start with a canary: this share of the fleet (1 to 50 %) first, over
    /// --canary-hours, before the rest; a release that fails their boots
    /// halts early (the agents' halt-after-failures). Agents older than
    /// the canary refuse a channel that has one.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=50), requires = "canary_hours")]
    pub canary_percent: Option<u8>,
    /// How long the canary stage lasts, in hours.
    #[arg(long, value_name = "N", requires = "canary_percent")]
    pub canary_hours: Option<u32>,
    /// The metadata expires this many days from now.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub expires_days: u32,
    /// The zstd level of the payload's frames (`usr.blocks`, what delta
    /// and compressed full updates download): 1 (fast) to 22 (small).
    #[arg(long, default_value_t = crate::blocks::DEFAULT_LEVEL, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
    /// The channel's TUF key directory (targets, snapshot and timestamp
    /// keys): publish to its TUF repository too.
    #[arg(long, value_name = "DIR")]
    pub tuf_keys: Option<PathBuf>,
    /// The architecture the release is for, in the TUF custom metadata.
    #[arg(long, default_value = std::env::consts::ARCH, value_name = "ARCH")]
    pub arch: String,
    /// The TUF timestamp expires this many hours from now (re-sign it
    /// with `drover channel refresh`).
    #[arg(long, default_value_t = crate::tuf::Expiries::default().timestamp_hours, value_name = "N")]
    pub timestamp_expires_hours: u32,
    /// Publish the payload only, without frames and block index: every
    /// node downloads the whole uncompressed payload.
    #[arg(long)]
    pub no_blocks: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        if self.channel.is_empty()
            || !self
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "channel name '{}' may only hold letters, digits, '-' and '_'",
                self.channel
            );
        }
        let key = SigningKey::load(&self.key)?;
        if let Some(keys) = &self.tuf_keys {
            // Before anything is written: a publication lands in both
            // channel formats or in neither.
            crate::tuf::check_publishable(&self.repo, &self.channel, keys)?;
        }
        let mut image_keys: Vec<PublicKey> = vec![key.public_key()];
        for p in &self.image_keys {
            image_keys.push(PublicKey::load(p)?);
        }
        let trusted_images = TrustedKeys::new(image_keys);

        let payload = self.image.join("usr.img");
        let pf = File::open(&payload).with_context(|| {
            format!(
                "opening {} (is {} a drover build output?)",
                payload.display(),
                self.image.display()
            )
        })?;
        let size = pf.metadata()?.len();
        let v = slot_image::open_verified(&pf, size, &payload, &trusted_images).with_context(
            || "the image's manifest does not verify with the channel key (pass --image-key for another key)",
        )?;
        let m = &v.verified.manifest;
        let header = slot_image::read_header(&pf, size, &payload)?;
        if header.image_size() != size {
            bail!(
                "{} is {size} bytes but the slot image in it is {}",
                payload.display(),
                header.image_size()
            );
        }
        let manifest_bytes = header.signed.bytes.clone();
        let version = m.os.version.clone();
        if version.contains('/') || version.starts_with('.') {
            bail!("version '{version}' cannot name a directory");
        }

        // The existing channel, verified with this key.
        let chan_path = channel::channel_path(&self.repo, &self.channel);
        let own = TrustedKeys::new(vec![key.public_key()]);
        let old: Option<Metadata> = match std::fs::read(&chan_path) {
            Ok(b) => Some(
                SignedChannel::from_bytes(&b)
                    .and_then(|s| s.verify(&own))
                    .with_context(|| {
                        format!(
                            "the existing channel {} does not verify with this key",
                            chan_path.display()
                        )
                    })?
                    .0,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", chan_path.display())),
        };

        let (_, sha256) = crate::build::sha256_file(&payload)?;
        let rel_dir = format!("releases/{version}");
        let mut releases = old.as_ref().map(|o| o.releases.clone()).unwrap_or_default();
        let now = channel::now();
        let mut blocks = None;
        match releases.iter().find(|r| r.version == version) {
            Some(r) if r.sha256 != sha256 => bail!(
                "version {version} is already in channel {} with other bytes (sha256 {}); publish a new version",
                self.channel,
                r.sha256
            ),
            Some(_) => {}
            None => {
                let dir = self.repo.join(&rel_dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                drover_core::durable::copy(&payload, &dir.join("usr.img"), 0o644)?;
                crate::commands::write_atomic(&dir.join("manifest.json"), &manifest_bytes, 0o644)?;
                // The newest older release whose payload is in this repository.
                let prev = releases
                    .iter()
                    .filter(|r| channel::compare_versions(&r.version, &version).is_lt())
                    .max_by(|a, b| channel::compare_versions(&a.version, &b.version))
                    .map(|r| self.repo.join(&r.payload))
                    .filter(|p| p.is_file());
                blocks = (!self.no_blocks).then(|| crate::blocks::write(
                    &payload,
                    &sha256,
                    prev.as_deref(),
                    &trusted_images,
                    &key,
                    self.zstd_level,
                    &dir,
                )).transpose()?;
                releases.push(Release {
                    version: version.clone(),
                    security_version: m.os.security_version,
                    payload: format!("{rel_dir}/usr.img"),
                    size,
                    sha256: sha256.clone(),
                    root_hash: hex::encode(v.root_hash),
                    manifest: format!("{rel_dir}/manifest.json"),
                    manifest_sha256: hex::encode(Sha256::digest(&manifest_bytes)),
                    blocks: None,
                    rollout: Rollout {
                        start: now,
                        hours: self.rollout_hours,
                        canary: self.canary_percent.zip(self.canary_hours).map(
                            |(percent, hours)| channel::Canary { percent, hours },
                        ),
                    },
                });
            }
        }
        let meta = Metadata {
            format: channel::FORMAT,
            channel: self.channel.clone(),
            sequence: old.as_ref().map(|o| o.sequence + 1).unwrap_or(1),
            issued_at: now,
            expires_at: now + u64::from(self.expires_days) * 86_400,
            releases,
        };
        let signed = SignedChannel::sign(&meta, &[&key]);
        std::fs::create_dir_all(chan_path.parent().expect("has a parent"))?;
        crate::commands::write_atomic(&chan_path, &signed.to_bytes(), 0o644)?;
        let tuf = match &self.tuf_keys {
            Some(keys) => {
                let r = meta
                    .releases
                    .iter()
                    .find(|r| r.version == version)
                    .expect("the release was just added");
                Some(self.publish_tuf(keys, r, &m.os.name)?)
            }
            None => None,
        };

        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "channel": meta.channel,
                    "sequence": meta.sequence,
                    "expires-at": meta.expires_at,
                    "version": version,
                    "size": size,
                    "sha256": sha256,
                    "path": chan_path,
                    "blocks": blocks,
                    "tuf": tuf,
                })
            );
        } else {
            println!(
                "published {version} (security version {}) to channel {} in {}: sequence {}, expires in {} days, rollout over {} h",
                m.os.security_version,
                self.channel,
                self.repo.display(),
                meta.sequence,
                self.expires_days,
                self.rollout_hours
            );
            if let Some(t) = &tuf {
                println!(
                    "  TUF: targets version {}, snapshot {}, timestamp {} (expires in {} h)",
                    t.targets_version,
                    t.snapshot_version,
                    t.timestamp_version,
                    self.timestamp_expires_hours
                );
            }
            if let Some(b) = &blocks {
                println!(
                    "  {} frames, {} bytes compressed ({:.1} % of the payload); a node on the previous release fetches {} bytes",
                    b.frames,
                    b.stored_bytes,
                    100.0 * b.stored_bytes as f64 / size.max(1) as f64,
                    b.delta_stored_bytes
                );
            }
        }
        Ok(())
    }

    /// Adds release `r`'s files to the channel's TUF repository.
    fn publish_tuf(
        &self,
        keys: &std::path::Path,
        r: &Release,
        os: &str,
    ) -> anyhow::Result<crate::tuf::Published> {
        let rel_dir = r
            .payload
            .rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default();
        // The payload's size and digest are the release's (hashed once,
        // when it was copied in); the other files are hashed here.
        let target = |file: &str| -> anyhow::Result<Option<crate::tuf::NewTarget>> {
            let path = self.repo.join(&rel_dir).join(file);
            if !path.is_file() {
                return Ok(None);
            }
            let (length, sha) = if file == "usr.img" {
                (r.size, r.sha256.clone())
            } else {
                crate::build::sha256_file(&path)?
            };
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&sha, &mut sha256)?;
            Ok(Some(crate::tuf::NewTarget {
                name: format!("{rel_dir}/{file}"),
                file: path,
                length,
                sha256,
                custom: Default::default(),
            }))
        };
        let manifest = target("manifest.json")?.context("the release has no manifest.json")?;
        let blocks = target("usr.blocks")?;
        let index = target("usr.blocks.idx")?;
        let mut payload = target("usr.img")?.context("the release has no usr.img")?;
        let info = channel::ReleaseInfo {
            format: channel::FORMAT,
            channel: self.channel.clone(),
            os: os.to_string(),
            arch: self.arch.clone(),
            version: r.version.clone(),
            security_version: r.security_version,
            root_hash: r.root_hash.clone(),
            rollout: r.rollout,
            manifest: manifest.name.clone(),
            blocks: blocks.as_ref().map(|b| b.name.clone()),
            block_index: index.as_ref().map(|b| b.name.clone()),
        };
        payload.custom.insert(
            channel::TUF_CUSTOM_KEY.to_string(),
            serde_json::to_value(&info)?,
        );
        let all: Vec<crate::tuf::NewTarget> = [Some(payload), Some(manifest), blocks, index]
            .into_iter()
            .flatten()
            .collect();
        crate::tuf::add_targets(
            &self.repo,
            &self.channel,
            keys,
            &all,
            crate::tuf::Expiries {
                targets_days: self.expires_days,
                snapshot_days: self.expires_days,
                timestamp_hours: self.timestamp_expires_hours,
                ..Default::default()
            },
        )
    }
}
