//! Assembling an initramfs: `drover-boot` as `/init`, the shared libraries
//! it needs (if it is not static), the kernel modules to load (with their
//! dependencies, from `modules.dep`) and the files of its mode.
//!
//! The contract with `drover-boot` (see `boot/README.md`):
//!
//! * `/etc/drover/mode`: `stage` (the ESP initramfs) or `slot` (the slot's own);
//! * `/etc/drover/modules`: module files to load, one absolute path a line,
//!   dependencies first; a line starting with `-` is a soft dependency whose
//!   failure to load is ignored;
//! * `/etc/drover/keys/*.pem`: trusted public keys (stage mode).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use drover_core::paths::initramfs;

use drover_core::cpio::Cpio;

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

/// A module file to load, relative to the modules directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile {
    /// Path relative to `lib/modules/VERSION`.
    pub path: String,
    /// A soft dependency (`softdep … pre:`): loaded when it can be, its
    /// failure (say, `crc32c_intel` on a CPU without SSE 4.2) ignored.
    pub optional: bool,
}

struct ModuleDb {
    deps: HashMap<String, (String, Vec<String>)>,
    softdeps: HashMap<String, Vec<String>>,
    aliases: HashMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

impl ModuleDb {
    fn visit(
        &self,
        name: &str,
        optional: bool,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<ModuleFile>,
    ) {
        if self.builtin.contains(name) || !seen.insert(name.to_string()) {
            return;
        }
        for pre in self.softdeps.get(name).into_iter().flatten() {
            let targets = match self.aliases.get(&normalize(pre)) {
                Some(t) => t.clone(),
                None => vec![normalize(pre)],
            };
            for t in targets {
                self.visit(&t, true, seen, order);
            }
        }
        if let Some((path, list)) = self.deps.get(name) {
            for d in list {
                self.visit(&module_name(d), optional, seen, order);
            }
            order.push(ModuleFile {
                path: path.clone(),
                optional,
            });
        }
    }
}

/// Resolves module names to files in load order: soft dependencies and
/// dependencies first. Built-in modules are skipped; unknown ones are an
/// error.
pub fn resolve_modules(modules_dir: &Path, wanted: &[String]) -> anyhow::Result<Vec<ModuleFile>> {
    let dep_file = modules_dir.join("modules.dep");
    let deps_text = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("reading {}", dep_file.display()))?;
    let read = |name: &str| std::fs::read_to_string(modules_dir.join(name)).unwrap_or_default();
    let builtin: BTreeSet<String> = read("modules.builtin").lines().map(module_name).collect();
    let mut deps = HashMap::new();
    for line in deps_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(String::from).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let mut softdeps: HashMap<String, Vec<String>> = HashMap::new();
    for line in read("modules.softdep").lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else { continue };
        let mut in_pre = false;
        for w in words {
            match w {
                "pre:" => in_pre = true,
                "post:" => in_pre = false,
                _ if in_pre => softdeps
                    .entry(normalize(module))
                    .or_default()
                    .push(w.to_string()),
                _ => {}
            }
        }
    }
    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    for line in read("modules.alias").lines() {
        let mut words = line.split_whitespace();
        if let (Some("alias"), Some(alias), Some(module)) =
            (words.next(), words.next(), words.next())
        {
            if !alias.contains(['*', '?', '[']) {
                aliases
                    .entry(normalize(alias))
                    .or_default()
                    .push(normalize(module));
            }
        }
    }
    let db = ModuleDb {
        deps,
        softdeps,
        aliases,
        builtin,
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let n = normalize(w);
        if db.builtin.contains(&n) {
            continue;
        }
        if !db.deps.contains_key(&n) {
            bail!(
                "kernel module '{w}' is neither built in nor in {} (check `kernel.modules` in the spec)",
                dep_file.display()
            );
        }
        db.visit(&n, false, &mut seen, &mut order);
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

/// A binary without its debug information (`strip --strip-debug`,
/// binutils): a development build carries tens of MiB of it, which the ESP
/// has no room for and the boot does not use. The binary as it is when
/// `strip` is missing.
pub(crate) fn read_stripped(binary: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = tempfile::NamedTempFile::new().context("a temporary file for strip")?;
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(binary)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let from = if stripped { tmp.path() } else { binary };
    std::fs::read(from).with_context(|| format!("reading the boot binary {}", binary.display()))
}

/// The TSS loads its TPM transport with `dlopen`, which `ldd` cannot see:
/// the device transport goes along whenever the loader does.
const DLOPENED: &[(&str, &str)] = &[("libtss2-tctildr.so", "libtss2-tcti-device.so.0")];

/// [`shared_libraries`] of `binary`, plus the plugins its libraries load
/// with `dlopen` (`DLOPENED`) and their own libraries, each once.
pub fn libraries_with_plugins(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = shared_libraries(binary)?;
    let mut extra = Vec::new();
    for lib in &libs {
        let name = lib.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for (loader, plugin) in DLOPENED {
            if name.starts_with(loader) {
                let p = lib.with_file_name(plugin);
                if !p.exists() {
                    bail!(
                        "{} loads {plugin} at run time, but {} is missing (install it on the build host)",
                        lib.display(),
                        p.display()
                    );
                }
                extra.extend(shared_libraries(&p)?);
                extra.push(p);
            }
        }
    }
    for e in extra {
        if !libs.contains(&e) {
            libs.push(e);
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
    let init = read_stripped(input.boot_binary)?;
    c.file("init", 0o755, &init)?;
    for lib in libraries_with_plugins(input.boot_binary)? {
        let real =
            std::fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
        let data = std::fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
        let name = lib.to_string_lossy().to_string();
        add_parents(&mut c, &mut dirs, &name)?;
        c.file(&name, 0o755, &data)?;
    }
    let mut list = String::new();
    for m in &modules {
        let src = input.modules_dir.join(&m.path);
        let data = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let name = format!("usr/lib/modules/{kver}/{}", m.path);
        add_parents(&mut c, &mut dirs, &name)?;
        c.file(&name, 0o644, &data)?;
        let mark = if m.optional { "-" } else { "" };
        list.push_str(&format!("{mark}/{name}\n"));
    }
    c.file(initramfs::MODULES, 0o644, list.as_bytes())?;
    c.file(
        initramfs::MODE,
        0o644,
        format!("{}\n", input.mode).as_bytes(),
    )?;
    for (path, data) in &input.extra {
        add_parents(&mut c, &mut dirs, path)?;
        c.file(path, 0o644, data)?;
    }
    Ok(c.finish()?)
}
