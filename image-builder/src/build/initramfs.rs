//! Assembling an initramfs: `drover-boot` as `/init`, the shared libraries
//! it needs (if it is not static), the kernel modules to load (with their
//! dependencies, from `modules.dep`) and the files of its mode.
//!
//! The contract with `drover-boot` (see `boot/README.md`):
//!
//! * `/etc/drover/mode`: `stage` (the ESP initramfs) or `slot` (the slot's own);
//! * `/etc/drover/modules`: module files to load, one absolute path a line,
//!   dependencies first;
//! * `/etc/drover/keys/*.pem`: trusted public keys (stage mode).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use super::cpio::Cpio;

/// What goes into one initramfs.
#[derive(Debug)]
pub struct InitramfsInput<'a> {
    /// The `drover-boot` binary.
    pub boot_binary: &'a Path,
    /// `stage` or `slot`.
    pub mode: &'a str,
    /// `.../lib/modules/VERSION` of the kernel the initramfs is for.
    pub modules_dir: &'a Path,
    /// Module names to load (`dm-verity`, `virtio_blk`, …).
    pub modules: &'a [String],
    /// Extra files: path in the initramfs and contents.
    pub extra: Vec<(String, Vec<u8>)>,
    /// mtime of every entry.
    pub mtime: u64,
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
        .unwrap_or(file);
    normalize(stem)
}

/// Resolves module names to files in load order (dependencies first).
/// Built-in modules are skipped; unknown ones are an error.
pub fn resolve_modules(modules_dir: &Path, wanted: &[String]) -> anyhow::Result<Vec<String>> {
    let dep_file = modules_dir.join("modules.dep");
    let deps_text = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("reading {}", dep_file.display()))?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in deps_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(String::from).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((path, list)) = deps.get(name) {
            for d in list {
                visit(&module_name(d), deps, seen, order);
            }
            order.push(path.clone());
        }
    }
    for w in wanted {
        let n = normalize(w);
        if builtin.contains(&n) {
            continue;
        }
        if !deps.contains_key(&n) {
            bail!(
                "kernel module '{w}' is neither built in nor in {} (check `kernel.modules` in the spec)",
                dep_file.display()
            );
        }
        visit(&n, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

/// Shared libraries (and the ELF interpreter) a binary loads, from `ldd`.
/// Empty for a static binary.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || text.contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn add_parents(
    c: &mut Cpio<impl std::io::Write>,
    dirs: &mut BTreeSet<String>,
    path: &str,
) -> anyhow::Result<()> {
    let mut acc = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        if dirs.insert(acc.clone()) {
            c.dir(&acc)?;
        }
    }
    Ok(())
}

/// Builds the initramfs and returns its bytes (uncompressed newc cpio).
pub fn build(input: &InitramfsInput<'_>) -> anyhow::Result<Vec<u8>> {
    let kver = input
        .modules_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("modules directory has no version name")?;
    let modules = resolve_modules(input.modules_dir, input.modules)?;
    let mut c = Cpio::new(Vec::new(), input.mtime);
    let mut dirs = BTreeSet::new();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "tmp",
        "etc",
        "etc/drover",
    ] {
        dirs.insert(d.to_string());
        c.dir(d)?;
    }
    let init = std::fs::read(input.boot_binary)
        .with_context(|| format!("reading the boot binary {}", input.boot_binary.display()))?;
    c.file("init", 0o755, &init)?;
    for lib in shared_libraries(input.boot_binary)? {
        let real =
            std::fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
        let data = std::fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
        let name = lib.to_string_lossy().to_string();
        add_parents(&mut c, &mut dirs, &name)?;
        c.file(&name, 0o755, &data)?;
    }
    let mut list = String::new();
    for rel in &modules {
        let src = input.modules_dir.join(rel);
        let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let name = format!("usr/lib/modules/{kver}/{rel}");
        add_parents(&mut c, &mut dirs, &name)?;
        c.file(&name, 0o644, &data)?;
        list.push_str(&format!("/{name}\n"));
    }
    c.file("etc/drover/modules", 0o644, list.as_bytes())?;
    c.file(
        "etc/drover/mode",
        0o644,
        format!("{}\n", input.mode).as_bytes(),
    )?;
    for (path, data) in &input.extra {
        add_parents(&mut c, &mut dirs, path)?;
        c.file(path, 0o644, data)?;
    }
    Ok(c.finish()?)
}
