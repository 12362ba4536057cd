//! `drover verity format|verify`: dm-verity trees compatible with veritysetup.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_core::verity::{self, DataFile, HashFile, VerityParams};

/// Format or verify dm-verity hash trees (SHA-256, 4 KiB blocks, hash type 1),
/// byte for byte what `veritysetup format` writes.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the hash tree of DATA into HASHFILE and print the root hash.
    Format(FormatArgs),
    /// Check DATA and HASHFILE against ROOTHASH; names the first bad block.
    Verify(VerifyArgs),
}

impl Command {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Format(a) => a.run(),
            Command::Verify(a) => a.run(),
        }
    }
}

/// Arguments of `drover verity format`.
#[derive(Debug, clap::Args)]
pub struct FormatArgs {
    /// The data file (or block device) to protect.
    pub data: PathBuf,
    /// Where the superblock and tree go; may be DATA itself with --hash-offset.
    pub hashfile: PathBuf,
    /// Byte offset of the superblock in HASHFILE (veritysetup's --hash-offset).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
    /// Number of 4 KiB data blocks to cover. Default: all of DATA, or with
    /// an appended tree (HASHFILE = DATA) everything before --hash-offset.
    #[arg(long, value_name = "N")]
    pub data_blocks: Option<u64>,
    /// Salt as hex; `-` for an empty salt. Default: 32 random bytes.
    #[arg(long, value_name = "HEX")]
    pub salt: Option<String>,
    /// UUID of the superblock. Default: derived from the salt and data size.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Print `{"root_hash": …, "salt": …}` instead of text.
    #[arg(long)]
    pub json: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn device_size(file: &File, path: &Path) -> anyhow::Result<u64> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .with_context(|| format!("measuring {}", path.display()))
}

fn parse_uuid(s: &str) -> anyhow::Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let v = hex::decode(&hex).with_context(|| format!("UUID '{s}' is not hex"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("UUID '{s}' is not 16 bytes"))
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl FormatArgs {
    fn run(self) -> anyhow::Result<()> {
        let salt = match self.salt.as_deref() {
            Some("-") => Vec::new(),
            Some(h) => hex::decode(h).with_context(|| format!("--salt '{h}' is not hex"))?,
            None => {
                let mut s = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
                    .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
                s
            }
        };
        let appended = same_file(&self.data, &self.hashfile) || self.data == self.hashfile;
        let data = OpenOptions::new()
            .read(true)
            .write(appended)
            .open(&self.data)
            .with_context(|| format!("opening {}", self.data.display()))?;
        let blocks = match self.data_blocks {
            Some(n) => n,
            None if appended => {
                if self.hash_offset == 0 {
                    bail!("HASHFILE is DATA: give --hash-offset past the data");
                }
                self.hash_offset / 4096
            }
            None => {
                let size = device_size(&data, &self.data)?;
                if size % 4096 != 0 {
                    bail!(
                        "{} is {size} bytes, not a multiple of the 4096-byte data block",
                        self.data.display()
                    );
                }
                size / 4096
            }
        };
        let hash = if appended {
            None
        } else {
            Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.hashfile)
                    .with_context(|| format!("opening {}", self.hashfile.display()))?,
            )
        };
        let params = VerityParams::new(blocks, salt.clone());
        let uuid = match &self.uuid {
            Some(u) => parse_uuid(u)?,
            None => drover_core::slot_image::derived_uuid(&salt, params.data_size()),
        };
        let out = verity::format(
            DataFile {
                file: &data,
                path: &self.data,
                offset: 0,
            },
            HashFile {
                file: hash.as_ref().unwrap_or(&data),
                path: &self.hashfile,
                offset: self.hash_offset,
            },
            &params,
            uuid,
        )?;
        let root = hex::encode(out.root_hash);
        let salt_hex = hex::encode(&salt);
        if self.json {
            println!(
                "{}",
                serde_json::json!({"root_hash": root, "salt": salt_hex})
            );
        } else {
            println!("UUID:            {}", format_uuid(&uuid));
            println!("Data blocks:     {blocks}");
            println!("Data block size: 4096");
            println!("Hash block size: 4096");
            println!("Hash algorithm:  sha256");
            println!(
                "Salt:            {}",
                if salt.is_empty() {
                    "-".into()
                } else {
                    salt_hex
                }
            );
            println!("Root hash:       {root}");
        }
        Ok(())
    }
}

/// Arguments of `drover verity verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The data file (or block device).
    pub data: PathBuf,
    /// The file holding superblock and tree (may be DATA with --hash-offset).
    pub hashfile: PathBuf,
    /// The expected root hash, hex.
    pub roothash: String,
    /// Byte offset of the superblock in HASHFILE.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub hash_offset: u64,
}

impl VerifyArgs {
    fn run(self) -> anyhow::Result<()> {
        let root = hex::decode(&self.roothash)
            .ok()
            .filter(|r| r.len() == 32)
            .with_context(|| format!("root hash '{}' is not 64 hex digits", self.roothash))?;
        let data =
            File::open(&self.data).with_context(|| format!("opening {}", self.data.display()))?;
        let hash = File::open(&self.hashfile)
            .with_context(|| format!("opening {}", self.hashfile.display()))?;
        verity::verify(
            DataFile {
                file: &data,
                path: &self.data,
                offset: 0,
            },
            HashFile {
                file: &hash,
                path: &self.hashfile,
                offset: self.hash_offset,
            },
            &root,
        )
        .context("verification failed")?;
        println!(
            "verified: {} matches root hash {}",
            self.data.display(),
            self.roothash
        );
        Ok(())
    }
}
