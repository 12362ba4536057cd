//! `drover keygen`: a new ed25519 signing key pair.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::keys::SigningKey;

/// Generate an ed25519 key pair for signing slot manifests and channels.
///
/// The secret key is written as PKCS#8 PEM with mode 0600, the public key
/// as SubjectPublicKeyInfo PEM. Existing files are never overwritten.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key (PKCS#8 PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub secret: PathBuf,
    /// Where to write the public key (PEM).
    #[arg(long, value_name = "FILE")]
    pub public: PathBuf,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        for p in [&self.secret, &self.public] {
            if p.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a key",
                    p.display()
                );
            }
        }
        let (key, pem) = SigningKey::generate().context("generating the key")?;
        super::write_atomic(&self.secret, pem.as_bytes(), 0o600)?;
        super::write_atomic(&self.public, key.public_key().to_pem().as_bytes(), 0o644)?;
        eprintln!(
            "wrote secret key {} and public key {} (key id {})",
            self.secret.display(),
            self.public.display(),
            key.public_key().short_id()
        );
        Ok(())
    }
}
