//! First boot: gather the config's fragments, settle, plan, apply, and
//! leave a stamp so later boots do not apply it again.
//!
//! Sources, merged in this order (later keys win):
//! 1. the image's defaults, `/usr/share/drover/config.d/*.toml` (sorted);
//! 2. QEMU's fw_cfg, `opt/org.drover/config`;
//! 3. `config.toml` on the OEM partition;
//! 4. `drover.config=PATH` on the kernel command line: a path on the OEM
//!    partition when it starts with `/oem/`, else on ROOT.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::settings::Source;
use crate::Error;

/// fw_cfg's file, as the `qemu_fw_cfg` module shows it in sysfs.
pub const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.drover/config/raw";
/// The fw_cfg name to pass to QEMU (`-fw_cfg name=…,file=…`).
pub const FW_CFG_NAME: &str = "opt/org.drover/config";
/// Image defaults, under the slot's `/usr`.
pub const IMAGE_DEFAULTS: &str = "usr/share/drover/config.d";
/// On ROOT: written once the config is applied.
pub const STAMP: &str = "var/lib/drover/node-config.json";

/// Where the sources are, for one boot.
#[derive(Debug)]
pub struct Places<'a> {
    /// The node's root file system (ROOT with `/usr` mounted).
    pub sysroot: &'a Path,
    /// fw_cfg's file (normally [`FW_CFG`]).
    pub fw_cfg: &'a Path,
    /// Where the OEM partition is mounted, if it is.
    pub oem: Option<&'a Path>,
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// The stamp's contents.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stamp {
    /// Sources, in order.
    pub sources: Vec<String>,
    /// SHA-256 over the sources' texts.
    pub sha256: String,
    /// Actions taken.
    pub actions: usize,
}

/// What happened.
#[derive(Debug)]
pub enum Outcome {
    /// Applied on an earlier boot (the stamp).
    AlreadyApplied(Stamp),
    /// No source had a config.
    NoConfig,
    /// Applied now.
    Applied(Stamp),
}

fn read(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8(b).map(Some).map_err(|_| Error::Invalid {
            source_name: path.display().to_string(),
            key: String::new(),
            reason: "not UTF-8 text".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The fragments present, in merge order.
pub fn gather(p: &Places<'_>) -> Result<Vec<Source>, Error> {
    let mut out = Vec::new();
    let defaults = p.sysroot.join(IMAGE_DEFAULTS);
    if let Ok(rd) = std::fs::read_dir(&defaults) {
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            if let Some(text) = read(&f)? {
                let rel = f.strip_prefix(p.sysroot).unwrap_or(&f);
                out.push(Source {
                    name: format!("/{}", rel.display()),
                    text,
                });
            }
        }
    }
    if let Some(text) = read(p.fw_cfg)? {
        out.push(Source {
            name: format!("fw_cfg {FW_CFG_NAME}"),
            text,
        });
    }
    if let Some(oem) = p.oem {
        if let Some(text) = read(&oem.join("config.toml"))? {
            out.push(Source {
                name: "OEM partition config.toml".into(),
                text,
            });
        }
    }
    if let Some(path) = p
        .cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("drover.config="))
    {
        let file = match (path.strip_prefix("/oem/"), p.oem) {
            (Some(rel), Some(oem)) => oem.join(rel),
            (Some(_), None) => {
                return Err(Error::Invalid {
                    source_name: format!("drover.config={path}"),
                    key: String::new(),
                    reason: "the OEM partition is not mounted".into(),
                })
            }
            (None, _) => p.sysroot.join(path.trim_start_matches('/')),
        };
        let text = read(&file)?.ok_or_else(|| Error::Invalid {
            source_name: format!("drover.config={path}"),
            key: String::new(),
            reason: format!("{} does not exist", file.display()),
        })?;
        out.push(Source {
            name: format!("drover.config={path}"),
            text,
        });
    }
    Ok(out)
}

/// Applies the node config on first boot: nothing when the stamp exists or
/// no source has a config; otherwise settles and plans everything first
/// (an invalid config changes nothing and is returned as the error), then
/// applies, then writes the stamp.
pub fn run(p: &Places<'_>) -> Result<Outcome, Error> {
    let stamp_path = p.sysroot.join(STAMP);
    if let Some(text) = read(&stamp_path)? {
        if let Ok(s) = serde_json::from_str::<Stamp>(&text) {
            return Ok(Outcome::AlreadyApplied(s));
        }
    }
    let sources = gather(p)?;
    // Image defaults alone are still the node's config: apply them.
    if sources.is_empty() {
        return Ok(Outcome::NoConfig);
    }
    let settings = crate::settle(&sources)?;
    let actions = crate::plan(&settings, Some(p.sysroot))?;
    crate::apply(&actions, p.sysroot)?;
    let mut h = Sha256::new();
    for s in &sources {
        h.update(s.name.as_bytes());
        h.update([0]);
        h.update(s.text.as_bytes());
        h.update([0]);
    }
    let stamp = Stamp {
        sources: sources.iter().map(|s| s.name.clone()).collect(),
        sha256: hex::encode(h.finalize()),
        actions: actions.len(),
    };
    // Written last, by the same atomic write as the config's own files.
    let dir = stamp_path.parent().expect("stamp has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let json = serde_json::to_vec_pretty(&stamp).expect("serializable");
    crate::apply(
        &[crate::Action::root_file(
            &format!("/{STAMP}"),
            json,
            "the stamp",
        )],
        p.sysroot,
    )?;
    Ok(Outcome::Applied(stamp))
}
