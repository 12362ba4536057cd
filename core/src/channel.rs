//! Signed update channel metadata: what `drover publish` writes and what
//! `drover-agent` follows.
//!
//! A channel is one static file, `channels/<name>.json`, that any web
//! server, object store or CDN can serve:
//!
//! ```json
//! { "signed": "<base64 of the metadata JSON bytes>",
//!   "signatures": [ { "key_id": "<hex>", "signature": "<base64>" } ] }
//! ```
//!
//! Each signature is ed25519 over [`SIGNING_CONTEXT`] followed by the exact
//! metadata bytes, so a channel signature can never be taken for a manifest
//! signature made with the same key. The metadata ([`Metadata`]) has a
//! sequence number (a node refuses one that goes backwards: no metadata
//! rollback), an expiry (a node refuses expired metadata: no freeze), and
//! the releases with their payload location, size, SHA-256 and rollout.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::keys::{PublicKey, SigningKey, TrustedKeys};

/// Prefixed to the metadata bytes before signing.
pub const SIGNING_CONTEXT: &[u8] = b"drover channel metadata v1\n";

/// The format number this code writes and reads.
pub const FORMAT: u32 = 1;

/// Channel metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metadata {
    /// [`FORMAT`].
    pub format: u32,
    /// The channel's name (`stable`, `beta`, ...).
    pub channel: String,
    /// Goes up by one with every publication.
    pub sequence: u64,
    /// When this metadata was signed, seconds since the Unix epoch.
    pub issued_at: u64,
    /// After this moment (seconds since the Unix epoch) nodes refuse it.
    pub expires_at: u64,
    /// The releases, oldest first.
    pub releases: Vec<Release>,
}

/// One release in a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Release {
    /// OS version.
    pub version: String,
    /// Security version (nodes refuse to go below the running one).
    pub security_version: u64,
    /// The payload (slot image), relative to the repository root (the
    /// directory above `channels/`) or an absolute URL.
    pub payload: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The dm-verity root hash its signed manifest carries, hex.
    pub root_hash: String,
    /// The signed manifest's bytes, relative like `payload`.
    pub manifest: String,
    /// SHA-256 of the manifest bytes, hex.
    pub manifest_sha256: String,
    /// The rollout plan.
    pub rollout: Rollout,
    /// Where its frames and block index lie, with their signed sizes, when
    /// the channel says so (a TUF channel: the names carry the digests).
    /// Absent: beside the payload, as `usr.blocks` and `usr.blocks.idx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<BlockFiles>,
}

/// A release's frames and block index, as a TUF channel lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockFiles {
    /// The block index, relative like [`Release::payload`].
    pub index: String,
    /// Its exact size.
    pub index_size: u64,
    /// Its SHA-256, hex.
    pub index_sha256: String,
    /// The frames, relative like [`Release::payload`].
    pub data: String,
    /// Their exact size.
    pub data_size: u64,
}

/// What a TUF channel's targets metadata says of a release, in the
/// `custom` object of its payload target under the key [`TUF_CUSTOM_KEY`]
/// (the other files of the release are targets of their own, named here).
/// Unknown fields are ignored; a [`ReleaseInfo::format`] above
/// [`FORMAT`] is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReleaseInfo {
    /// [`FORMAT`].
    pub format: u32,
    /// The channel the release was published to (a release copied into
    /// another channel's repository is wrong software there).
    pub channel: String,
    /// OS name, as in the slot's signed manifest (`drover`).
    pub os: String,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// OS version.
    pub version: String,
    /// Security version.
    pub security_version: u64,
    /// The dm-verity root hash of the slot's signed manifest, hex.
    pub root_hash: String,
    /// The rollout plan.
    pub rollout: Rollout,
    /// The target name of the signed manifest.
    pub manifest: String,
    /// The target name of the frames, when published with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<String>,
    /// The target name of the block index, when published with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_index: Option<String>,
}

/// The key of [`ReleaseInfo`] in a payload target's `custom` object.
pub const TUF_CUSTOM_KEY: &str = "drover";

/// Where a TUF channel's metadata lies in a repository (`tuf/NAME/metadata`),
/// relative to its root.
pub fn tuf_metadata_dir(name: &str) -> String {
    format!("tuf/{name}/metadata")
}

/// Where a TUF channel's targets lie (`tuf/NAME/targets`), relative to
/// the repository root.
pub fn tuf_targets_dir(name: &str) -> String {
    format!("tuf/{name}/targets")
}

/// The file name under which a consistent-snapshot TUF repository stores a
/// target: its SHA-256 (hex) before the last path component
/// (`releases/2.0.0/HASH.usr.img`), as the TUF specification has it.
pub fn tuf_target_file(name: &str, sha256_hex: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{sha256_hex}.{base}"),
        None => format!("{sha256_hex}.{name}"),
    }
}

/// A rollout in waves: a node takes part once `start + wave × hours` has
/// passed, its wave in [0, 1) a hash of its machine-id and the version.
/// With a canary, the first `percent` of the waves spread over the canary's
/// hours first, and the rest over `hours` after them: a release that fails
/// its first boots halts (`halt-after-failures`) while few nodes have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rollout {
    /// Seconds since the Unix epoch.
    pub start: u64,
    /// Hours from the first node to the last; 0 for everyone at once.
    pub hours: u32,
    /// The canary stage, when there is one. (Agents before it refuse a
    /// channel that has one: publish with it once the fleet runs an agent
    /// that knows it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// The first stage of a rollout: a few nodes, with time to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Canary {
    /// The share of the fleet, in percent (1 to 50).
    pub percent: u8,
    /// Hours the canary stage lasts before the rest begins.
    pub hours: u32,
}

impl Rollout {
    /// The node's wave for `version`, in [0, 1).
    pub fn wave(machine_id: &str, version: &str) -> f64 {
        let h = Sha256::digest(format!("drover-rollout\n{machine_id}\n{version}").as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        // 53 bits: exactly representable, uniform in [0, 1).
        (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When a node in `wave` may start (seconds since the Unix epoch).
    pub fn node_start(&self, wave: f64) -> u64 {
        let spread = |w: f64, hours: u32| (w * f64::from(hours) * 3600.0) as u64;
        match self.canary {
            None => self.start + spread(wave, self.hours),
            Some(c) => {
                let f = f64::from(c.percent.clamp(1, 50)) / 100.0;
                if wave < f {
                    self.start + spread(wave / f, c.hours)
                } else {
                    self.start
                        + u64::from(c.hours) * 3600
                        + spread((wave - f) / (1.0 - f), self.hours)
                }
            }
        }
    }
}

/// One signature of a channel file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSignature {
    /// SHA-256 of the public key, hex.
    pub key_id: String,
    /// ed25519 signature, base64.
    pub signature: String,
}

/// The file as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedChannel {
    /// The metadata bytes, base64.
    pub signed: String,
    /// Signatures over [`SIGNING_CONTEXT`] + the metadata bytes.
    pub signatures: Vec<ChannelSignature>,
}

/// Why channel metadata was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// Not a channel file.
    #[error("not Drover channel metadata: {0}")]
    Malformed(String),
    /// No signature by a trusted key.
    #[error("the channel metadata is not signed by a trusted key (signed by: {0})")]
    Untrusted(String),
    /// A trusted key's signature does not hold.
    #[error("the channel metadata's signature by trusted key {0} does not hold: it was altered")]
    BadSignature(String),
    /// Expired.
    #[error("the channel metadata expired at {expires_at} (now {now}): refusing it, the channel may be frozen by an attacker")]
    Expired {
        /// Its expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The sequence number went backwards.
    #[error("the channel metadata has sequence {got}, below {seen} seen before: refusing a metadata rollback")]
    Rollback {
        /// What was offered.
        got: u64,
        /// What the node saw before.
        seen: u64,
    },
}

fn message(bytes: &[u8]) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(bytes);
    m
}

impl SignedChannel {
    /// Signs metadata with one or more keys.
    pub fn sign(meta: &Metadata, keys: &[&SigningKey]) -> Self {
        let bytes = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        let msg = message(&bytes);
        let b64 = base64::engine::general_purpose::STANDARD;
        SignedChannel {
            signed: b64.encode(&bytes),
            signatures: keys
                .iter()
                .map(|k| ChannelSignature {
                    key_id: hex::encode(k.public_key().key_id()),
                    signature: b64.encode(k.sign(&msg)),
                })
                .collect(),
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("serializes");
        v.push(b'\n');
        v
    }

    /// Parses a channel file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ChannelError> {
        serde_json::from_slice(bytes).map_err(|e| ChannelError::Malformed(e.to_string()))
    }

    /// Checks the signature with the trusted keys and parses the metadata.
    /// Expiry and sequence are the caller's to check, with [`check_fresh`].
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<(Metadata, PublicKey), ChannelError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = b64
            .decode(&self.signed)
            .map_err(|e| ChannelError::Malformed(format!("signed: {e}")))?;
        let msg = message(&bytes);
        let mut seen = Vec::new();
        for s in &self.signatures {
            let mut id = [0u8; 32];
            if hex::decode_to_slice(&s.key_id, &mut id).is_err() {
                continue;
            }
            let Some(key) = trusted.find(&id) else {
                seen.push(s.key_id.chars().take(16).collect::<String>());
                continue;
            };
            let sig = b64
                .decode(&s.signature)
                .map_err(|e| ChannelError::Malformed(format!("signature: {e}")))?;
            if !key.verify(&msg, &sig) {
                return Err(ChannelError::BadSignature(key.short_id()));
            }
            let meta: Metadata = serde_json::from_slice(&bytes)
                .map_err(|e| ChannelError::Malformed(e.to_string()))?;
            if meta.format != FORMAT {
                return Err(ChannelError::Malformed(format!(
                    "format {} (this Drover reads format {FORMAT})",
                    meta.format
                )));
            }
            return Ok((meta, *key));
        }
        Err(ChannelError::Untrusted(if seen.is_empty() {
            "nobody".into()
        } else {
            seen.join(", ")
        }))
    }
}

/// Refuses expired metadata and a sequence below `seen`.
pub fn check_fresh(meta: &Metadata, now: u64, seen: Option<u64>) -> Result<(), ChannelError> {
    if now >= meta.expires_at {
        return Err(ChannelError::Expired {
            expires_at: meta.expires_at,
            now,
        });
    }
    if let Some(seen) = seen {
        if meta.sequence < seen {
            return Err(ChannelError::Rollback {
                got: meta.sequence,
                seen,
            });
        }
    }
    Ok(())
}

/// Where channel `name` lives in a repository.
pub fn channel_path(repo: &Path, name: &str) -> std::path::PathBuf {
    repo.join("channels").join(format!("{name}.json"))
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compares two versions: numeric dot-separated parts compare as numbers,
/// others as text (`1.10.0` > `1.9.2`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> Vec<String> { s.split(['.', '-', '+']).map(str::to_string).collect() };
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64) -> Metadata {
        Metadata {
            format: FORMAT,
            channel: "stable".into(),
            sequence: seq,
            issued_at: 1000,
            expires_at: 2000,
            releases: vec![Release {
                version: "1.1.0".into(),
                security_version: 1,
                payload: "releases/1.1.0/usr.img".into(),
                size: 4096,
                sha256: "00".repeat(32),
                root_hash: "11".repeat(32),
                manifest: "releases/1.1.0/manifest.json".into(),
                manifest_sha256: "22".repeat(32),
                blocks: None,
                rollout: Rollout {
                    canary: None,
                    start: 1000,
                    hours: 0,
                },
            }],
        }
    }

    #[test]
    fn signed_metadata_verifies_and_tampering_is_caught() {
        let (k, _) = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new(vec![k.public_key()]);
        let s = SignedChannel::sign(&meta(3), &[&k]);
        let parsed = SignedChannel::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(parsed.verify(&trusted).unwrap().0, meta(3));

        let mut m = meta(3);
        m.releases[0].size = 8192;
        let mut forged = s.clone();
        forged.signed = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec_pretty(&m).unwrap());
        assert!(matches!(
            forged.verify(&trusted),
            Err(ChannelError::BadSignature(_))
        ));

        let (other, _) = SigningKey::generate().unwrap();
        let by_other = SignedChannel::sign(&meta(3), &[&other]);
        assert!(matches!(
            by_other.verify(&trusted),
            Err(ChannelError::Untrusted(_))
        ));
        // Either of two keys (rotation).
        let both = SignedChannel::sign(&meta(3), &[&other, &k]);
        assert!(both.verify(&trusted).is_ok());
    }

    #[test]
    fn a_manifest_signature_is_not_a_channel_signature() {
        let (k, _) = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new(vec![k.public_key()]);
        let bytes = serde_json::to_vec_pretty(&meta(1)).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = SignedChannel {
            signed: b64.encode(&bytes),
            signatures: vec![ChannelSignature {
                key_id: hex::encode(k.public_key().key_id()),
                signature: b64.encode(k.sign(&bytes)),
            }],
        };
        assert!(matches!(
            raw.verify(&trusted),
            Err(ChannelError::BadSignature(_))
        ));
    }

    #[test]
    fn expiry_and_sequence() {
        let m = meta(5);
        assert!(check_fresh(&m, 1999, Some(5)).is_ok());
        assert!(matches!(
            check_fresh(&m, 2000, None),
            Err(ChannelError::Expired { .. })
        ));
        assert_eq!(
            check_fresh(&m, 1500, Some(6)),
            Err(ChannelError::Rollback { got: 5, seen: 6 })
        );
    }

    #[test]
    fn waves_spread_evenly_and_are_deterministic() {
        let w = Rollout::wave("abc", "1.1.0");
        assert_eq!(w, Rollout::wave("abc", "1.1.0"));
        assert_ne!(w, Rollout::wave("abc", "1.2.0"));
        let n = 10_000;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let w = Rollout::wave(&format!("{i:032x}"), "1.1.0");
            assert!((0.0..1.0).contains(&w));
            buckets[(w * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
        let r = Rollout {
            start: 100,
            hours: 10,
            canary: None,
        };
        assert_eq!(r.node_start(0.0), 100);
        assert_eq!(r.node_start(0.5), 100 + 5 * 3600);
    }

    #[test]
    fn a_canary_goes_first_and_the_rest_after_it() {
        let r = Rollout {
            start: 0,
            hours: 10,
            canary: Some(Canary {
                percent: 5,
                hours: 6,
            }),
        };
        // The first 5 % of waves over the canary's 6 h.
        assert_eq!(r.node_start(0.0), 0);
        assert_eq!(r.node_start(0.025), 3 * 3600);
        assert!(r.node_start(0.0499) < 6 * 3600);
        // The rest over 10 h after it.
        assert_eq!(r.node_start(0.05), 6 * 3600);
        assert_eq!(r.node_start(0.525), 11 * 3600);
        assert!(r.node_start(0.9999) <= 16 * 3600);
        // Later waves never start earlier.
        let mut last = 0;
        for i in 0..1000 {
            let t = r.node_start(f64::from(i) / 1000.0);
            assert!(t >= last);
            last = t;
        }
        // Old channels read as before; a canary round-trips.
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"canary\":{\"percent\":5,\"hours\":6}"), "{j}");
        assert_eq!(serde_json::from_str::<Rollout>(&j).unwrap(), r);
        let old: Rollout = serde_json::from_str(r#"{"start":1,"hours":2}"#).unwrap();
        assert_eq!(old.canary, None);
    }

    #[test]
    fn versions_compare_by_number() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.10.0", "1.9.2"), Greater);
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Equal);
        assert_eq!(compare_versions("1.0", "1.0.1"), Less);
    }
}
