//! `drover inspect`: the manifest of a slot image or of each slot of a disk.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use drover_core::keys::TrustedKeys;
use drover_core::slot_image::{self, Window};
use drover_core::{PartitionTable, SlotId};

/// Show the manifest of a slot image, or of USR-A and USR-B of a disk image.
///
/// With --public the manifest signature is checked against the given keys;
/// with --verify the whole verity tree and every data block are checked too.
/// Exits non-zero when a requested check fails.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A slot image (usr.img) or a disk image (disk.raw).
    pub file: PathBuf,
    /// Trusted public key (PEM), or a directory of them; may be repeated.
    #[arg(long = "public", value_name = "KEY")]
    pub public: Vec<PathBuf>,
    /// Check the verity tree and all data against the signed root hash.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One slot image and where it lives.
struct Target {
    name: String,
    offset: u64,
    size: u64,
}

impl Args {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        if self.verify && self.public.is_empty() {
            bail!("--verify needs --public KEY: the root hash is only trusted once the signature holds");
        }
        let trusted = TrustedKeys::load(&self.public)?;
        let file =
            File::open(&self.file).with_context(|| format!("opening {}", self.file.display()))?;
        let len = file.metadata()?.len();
        let targets = match PartitionTable::read(&mut &file, &self.file) {
            Ok(table) => {
                let parts = drover_core::slots::find_slot_partitions(&table)?;
                SlotId::ALL
                    .iter()
                    .zip(parts)
                    .map(|(s, p)| {
                        let (offset, size) = table.byte_range(p).expect("found");
                        Target {
                            name: s.label().to_string(),
                            offset,
                            size,
                        }
                    })
                    .collect()
            }
            Err(_) => vec![Target {
                name: "slot image".into(),
                offset: 0,
                size: len,
            }],
        };
        let mut failures = 0;
        let mut report = Vec::new();
        for t in &targets {
            let win = Window {
                file: &file,
                offset: t.offset,
            };
            let entry = self.inspect_one(&file, &win, t, &trusted);
            match entry {
                Ok(v) => report.push(v),
                Err(e) => {
                    failures += 1;
                    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                    report.push(serde_json::json!({"slot": t.name, "error": chain.join(": ")}));
                }
            }
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for r in &report {
                print_text(r);
            }
        }
        // An empty USR-B in a disk image is normal; only checks that were
        // asked for and failed make the command fail.
        let empty_ok = targets.len() > 1
            && report.iter().filter(|r| r.get("error").is_some()).all(|r| {
                r["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no Drover locator")
            });
        if failures > 0 && !(empty_ok && failures < targets.len()) {
            bail!("{failures} slot image(s) failed inspection");
        }
        Ok(())
    }

    fn inspect_one(
        &self,
        file: &File,
        win: &Window<'_>,
        t: &Target,
        trusted: &TrustedKeys,
    ) -> anyhow::Result<serde_json::Value> {
        let path = &self.file;
        let header = slot_image::read_header(win, t.size, path)?;
        let mut v = serde_json::json!({
            "slot": t.name,
            "image_size": header.image_size(),
            "signed_by": header.signed.signatures.iter()
                .map(|s| hex::encode(&s.key_id[..8])).collect::<Vec<_>>(),
        });
        if trusted.keys().is_empty() {
            let m = drover_core::manifest::Manifest::from_bytes(&header.signed.bytes)
                .map_err(|e| anyhow::anyhow!(e))?;
            v["manifest"] = serde_json::to_value(&m)?;
            v["signature"] = "not checked (no --public key given)".into();
            return Ok(v);
        }
        let slot = slot_image::open_verified(win, t.size, path, trusted)?;
        v["manifest"] = serde_json::to_value(&slot.verified.manifest)?;
        v["manifest_sha256"] = hex::encode(slot.verified.digest).into();
        v["signature"] = format!("good (key {})", slot.verified.key.short_id()).into();
        if self.verify {
            slot_image::verify_data(file, path, t.offset, &slot)?;
            v["verity"] = "verified".into();
        }
        Ok(v)
    }
}

fn print_text(r: &serde_json::Value) {
    println!("{}:", r["slot"].as_str().unwrap_or("?"));
    if let Some(e) = r.get("error") {
        println!("  error: {}", e.as_str().unwrap_or(""));
        return;
    }
    let m = &r["manifest"];
    println!(
        "  os:               {} {} (security version {})",
        m["os"]["name"].as_str().unwrap_or(""),
        m["os"]["version"].as_str().unwrap_or(""),
        m["os"]["security_version"]
    );
    println!("  image size:       {} bytes", r["image_size"]);
    println!(
        "  file system:      {} ({} bytes)",
        m["filesystem"]["type"].as_str().unwrap_or(""),
        m["filesystem"]["size"]
    );
    println!(
        "  root hash:        {}",
        m["verity"]["root_hash"].as_str().unwrap_or("")
    );
    println!(
        "  salt:             {}",
        m["verity"]["salt"].as_str().unwrap_or("")
    );
    println!(
        "  signature:        {}",
        r["signature"].as_str().unwrap_or("")
    );
    if let Some(v) = r.get("verity") {
        println!("  verity:           {}", v.as_str().unwrap_or(""));
    }
}
