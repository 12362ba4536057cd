//! ed25519 signing keys (PKCS#8, PEM) and trusted public keys (SPKI, PEM).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key
/// bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Errors loading or using keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {what}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{path}: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The system random generator failed.
    #[error("generating a key: the system random number generator failed")]
    Random,
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(label: &str, text: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no '{begin}' line"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("no '{end}' line"))?
        + start;
    let b64: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in PEM: {e}"))
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        what: "reading the key file",
        source,
    })
}

/// An ed25519 public key Drover trusts to sign manifests or channels.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From the 32 raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of the raw key: how signatures name their key.
    pub fn key_id(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    /// Short hex form of the key id, for messages.
    pub fn short_id(&self) -> String {
        hex::encode(&self.key_id()[..8])
    }

    /// PEM text (`PUBLIC KEY`, SubjectPublicKeyInfo), as OpenSSL writes it.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem_encode("PUBLIC KEY", &der)
    }

    /// Parses PEM text; `path` names it in errors.
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, KeyError> {
        let fmt = |reason: String| KeyError::Format {
            path: path.to_owned(),
            reason,
        };
        let der = pem_decode("PUBLIC KEY", text).map_err(fmt)?;
        if der.len() != 44 || der[..12] != SPKI_PREFIX {
            return Err(fmt(
                "not an ed25519 public key (expected a 44-byte SubjectPublicKeyInfo)".into(),
            ));
        }
        Ok(Self(der[12..].try_into().expect("32 bytes")))
    }

    /// Loads a PEM public key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        Self::from_pem(&read(path)?, path)
    }

    /// Whether `signature` is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short_id())
    }
}

/// An ed25519 signing key, kept as PKCS#8.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key().short_id())
    }
}

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 PEM text.
    pub fn generate() -> Result<(Self, String), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| KeyError::Random)?;
        Ok((Self { pair }, pem_encode("PRIVATE KEY", doc.as_ref())))
    }

    /// Parses PKCS#8 PEM text; `path` names it in errors.
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, KeyError> {
        let fmt = |reason: String| KeyError::Format {
            path: path.to_owned(),
            reason,
        };
        let der = pem_decode("PRIVATE KEY", text).map_err(fmt)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| fmt(format!("not an ed25519 PKCS#8 private key ({e})")))?;
        Ok(Self { pair })
    }

    /// Loads a PKCS#8 PEM secret key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        Self::from_pem(&read(path)?, path)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(
            self.pair
                .public_key()
                .as_ref()
                .try_into()
                .expect("ed25519 public keys are 32 bytes"),
        )
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.pair
            .sign(message)
            .as_ref()
            .try_into()
            .expect("ed25519 signatures are 64 bytes")
    }
}

/// The set of public keys a verifier accepts: several at once, so keys can
/// be rotated (sign with old and new, then retire the old).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// From keys in hand.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    /// Loads PEM files; a directory means every `*.pem` file in it.
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for p in paths {
            if p.is_dir() {
                let rd = std::fs::read_dir(p).map_err(|source| KeyError::Io {
                    path: p.clone(),
                    what: "listing the key directory",
                    source,
                })?;
                let mut files: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "pem"))
                    .collect();
                files.sort();
                for f in files {
                    keys.push(PublicKey::load(&f)?);
                }
            } else {
                keys.push(PublicKey::load(p)?);
            }
        }
        Ok(Self(keys))
    }

    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// The trusted key with this id.
    pub fn find(&self, key_id: &[u8; 32]) -> Option<&PublicKey> {
        self.0.iter().find(|k| &k.key_id() == key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_sign_verify_and_pem_round_trip() {
        let (key, pem) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&pem, Path::new("k")).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let public = PublicKey::from_pem(&key.public_key().to_pem(), Path::new("p")).unwrap();
        let sig = key.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellp", &sig));
    }

    #[test]
    fn wrong_kinds_of_file_are_clear_errors() {
        let err = PublicKey::from_pem("nothing here", Path::new("x.pem")).unwrap_err();
        assert!(err.to_string().contains("x.pem"), "{err}");
        let (_, pem) = SigningKey::generate().unwrap();
        // A private key where a public one is expected.
        assert!(PublicKey::from_pem(&pem, Path::new("p")).is_err());
        let bogus = pem_encode("PRIVATE KEY", b"garbage");
        assert!(SigningKey::from_pem(&bogus, Path::new("s")).is_err());
    }
}
