//! `drover delta`: a delta bundle for air-gapped sites.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::blocks::BUNDLE_MAGIC;
use drover_core::keys::{PublicKey, SigningKey, TrustedKeys};

/// Make a delta bundle: the frames of a release that nodes running an
/// older release lack, in one file.
///
/// Nodes that run OLD_BUILD apply it offline with `droverctl update --from
/// FILE --disk DEVICE` (or it is copied to a node and applied there): the
/// blocks they have are copied from their running slot, the rest come from
/// the bundle, and everything is checked as for an update from a channel
/// (the new release's signed manifest and verity tree, the bundle's signed
/// index). A node that runs another release is refused with a clear error.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build the nodes run (a `drover build` output directory).
    #[arg(long, value_name = "OLD_BUILD")]
    pub from: PathBuf,
    /// The build to update them to.
    #[arg(long, value_name = "NEW_BUILD")]
    pub to: PathBuf,
    /// Secret key that signs the bundle's index (one the nodes trust).
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// Public key the images' manifests are signed with, when it is not
    /// `--key`; repeatable.
    #[arg(long = "image-key", value_name = "PUBLIC")]
    pub image_keys: Vec<PathBuf>,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// zstd level of the frames, 1 to 22.
    #[arg(long, default_value_t = crate::blocks::DEFAULT_LEVEL, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        let key = SigningKey::load(&self.key)?;
        let mut keys: Vec<PublicKey> = vec![key.public_key()];
        for p in &self.image_keys {
            keys.push(PublicKey::load(p)?);
        }
        let trusted = TrustedKeys::new(keys);
        let (old, new) = (self.from.join("usr.img"), self.to.join("usr.img"));
        for p in [&old, &new] {
            if !p.is_file() {
                bail!(
                    "{} is missing (is its directory a drover build output?)",
                    p.display()
                );
            }
        }
        let (_, sha256) = crate::build::sha256_file(&new)?;
        let scratch = tempfile::tempdir_in(
            self.out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new(".")),
        )?;
        let w = crate::blocks::write(
            &new,
            &sha256,
            Some(&old),
            &trusted,
            &key,
            self.zstd_level,
            scratch.path(),
        )?;
        let index_bytes = std::fs::read(scratch.path().join("usr.blocks.idx"))?;
        // The frames a node on OLD lacks, and the first (the locator, read
        // before anything else).
        let held: Vec<u32> = (0..w.index.frames.len())
            .filter(|&i| i == 0 || w.new_frames[i])
            .map(|i| i as u32)
            .collect();
        let tmp = self.out.with_extension("partial");
        let mut out = std::io::BufWriter::new(
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        out.write_all(BUNDLE_MAGIC)?;
        out.write_all(&(index_bytes.len() as u32).to_le_bytes())?;
        out.write_all(&index_bytes)?;
        out.write_all(&(held.len() as u32).to_le_bytes())?;
        for i in &held {
            out.write_all(&i.to_le_bytes())?;
        }
        let mut blocks = File::open(scratch.path().join("usr.blocks"))?;
        let mut buf = Vec::new();
        let mut stored = 0u64;
        for &i in &held {
            let f = &w.index.frames[i as usize];
            blocks.seek(SeekFrom::Start(f.stored_offset))?;
            buf.resize(f.stored_len as usize, 0);
            blocks.read_exact(&mut buf)?;
            out.write_all(&buf)?;
            stored += u64::from(f.stored_len);
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.out)?;
        let size = std::fs::metadata(&self.out)?.len();
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "out": self.out,
                    "size": size,
                    "frames": w.index.frames.len(),
                    "frames-held": held.len(),
                    "full-compressed": w.stored_bytes,
                    "payload": w.index.payload_size,
                })
            );
        } else {
            println!(
                "{}: {size} bytes, {} of {} frames ({stored} of {} compressed bytes; the slot image is {})",
                self.out.display(),
                held.len(),
                w.index.frames.len(),
                w.stored_bytes,
                w.index.payload_size
            );
        }
        Ok(())
    }
}
