//! The root file system: from Debian packages with mmdebstrap (and a
//! package cache that survives between builds), or brought by the user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::spec::DebianSection;

/// Where the tree comes from.
#[derive(Debug)]
pub enum Source<'a> {
    /// Debian packages, fetched with mmdebstrap.
    Debian(&'a DebianSection),
    /// A directory or tar archive the user brings (`--rootfs`).
    Given(&'a Path),
}

/// The package cache: `$DROVER_CACHE_DIR`, else `$XDG_CACHE_HOME/drover`,
/// else `~/.cache/drover`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DROVER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("drover");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/drover")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Creates the tree in `target` (an empty directory). Output of the tools
/// goes to `log`.
pub fn create(
    source: &Source<'_>,
    target: &Path,
    cache: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<()> {
    match source {
        Source::Debian(d) => mmdebstrap(d, target, cache, epoch, log),
        Source::Given(p) if p.is_dir() => {
            let status = Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(format!("{}/.", p.display()))
                .arg(target)
                .status()
                .context("running cp")?;
            if !status.success() {
                bail!("copying the root file system from {} failed", p.display());
            }
            Ok(())
        }
        Source::Given(p) => {
            let status = Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(p)
                .arg("-C")
                .arg(target)
                .status()
                .context("running tar")?;
            if !status.success() {
                bail!("unpacking the root file system {} failed", p.display());
            }
            Ok(())
        }
    }
}

/// Copies the tree at `root` to `dest` (replacing whatever is there), for
/// later builds with `--rootfs dest`. The copy is made beside `dest` and
/// renamed into place, so `dest` is either the old tree or the whole new
/// one, never half a copy.
pub fn keep(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let name = dest
        .file_name()
        .with_context(|| format!("--keep-rootfs {}: not a directory name", dest.display()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".partial");
    let tmp = parent.join(tmp_name);
    let remove = |p: &Path| match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    };
    remove(&tmp)?;
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(root)
        .arg(&tmp)
        .status()
        .context("running cp")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("copying the root file system to {} failed", tmp.display());
    }
    remove(dest)?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

/// The packages dpkg lists as installed in `root` (none when it has no
/// dpkg database, as a `--rootfs` tree may not), sorted by name and
/// architecture.
pub fn installed_packages(root: &Path) -> anyhow::Result<Vec<DebPackage>> {
    let status = root.join("var/lib/dpkg/status");
    let text = match std::fs::read_to_string(&status) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", status.display())),
    };
    Ok(parse_dpkg_status(&text))
}

/// One installed Debian package, as dpkg's status file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebPackage {
    /// Binary package name.
    pub name: String,
    /// Architecture (`amd64`, `all`).
    pub arch: String,
    /// Full Debian version, epoch included (`1:1.2.13.dfsg-1`).
    pub version: String,
    /// Source package name (the binary's own when dpkg names none).
    pub source: String,
    /// Source package version (the binary's own when dpkg names none).
    pub source_version: String,
    /// `Maintainer:`, when present.
    pub maintainer: Option<String>,
    /// `Homepage:`, when present.
    pub homepage: Option<String>,
    /// The description's first line, when present.
    pub summary: Option<String>,
}

impl DebPackage {
    /// `name:arch version`, as `build.json` lists packages.
    pub fn line(&self) -> String {
        format!("{}:{} {}", self.name, self.arch, self.version)
    }
}

fn parse_dpkg_status(text: &str) -> Vec<DebPackage> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let (Some(pkg), Some(version), Some(state)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if !state.ends_with(" installed") {
            continue;
        }
        // `Source: glibc` or `Source: glibc (2.36-9+deb12u4)`.
        let (source, source_version) = match field("Source") {
            None => (pkg.to_string(), version.to_string()),
            Some(s) => match s.split_once(' ') {
                Some((name, v)) => (
                    name.to_string(),
                    v.trim_matches(|c| c == '(' || c == ')' || c == ' ')
                        .to_string(),
                ),
                None => (s.to_string(), version.to_string()),
            },
        };
        out.push(DebPackage {
            name: pkg.to_string(),
            arch: field("Architecture").unwrap_or("all").to_string(),
            version: version.to_string(),
            source,
            source_version,
            maintainer: field("Maintainer").map(String::from),
            homepage: field("Homepage").map(String::from),
            summary: field("Description").map(String::from),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

fn mmdebstrap(
    d: &DebianSection,
    target: &Path,
    cache: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<()> {
    let archives = cache.join("apt-archives");
    std::fs::create_dir_all(&archives)
        .with_context(|| format!("creating the package cache {}", archives.display()))?;
    // Builds that run at once share the cache: each works on a private
    // copy (taken under a shared lock) and adds what it downloaded back
    // under an exclusive one, each file renamed into place. mmdebstrap's
    // sync-in on the shared directory itself read files another build's
    // sync-out was writing ("file changed as we read it", seen in CI).
    let private = log.parent().unwrap_or(Path::new(".")).join("apt-archives");
    std::fs::create_dir_all(&private)?;
    let lock = std::fs::File::create(cache.join("apt-archives.lock"))?;
    lock.lock_shared().context("locking the package cache")?;
    copy_debs(&archives, &private)?;
    lock.unlock()?;
    let logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let arch = private.display();
    // Pinned versions: an apt preferences file, in place before the first
    // package is chosen.
    let mut pins = Vec::new();
    if !d.versions.is_empty() {
        let prefs = log.with_extension("preferences");
        let text: String = d
            .versions
            .iter()
            .map(|(p, v)| format!("Package: {p}\nPin: version {v}\nPin-Priority: 1001\n\n"))
            .collect();
        std::fs::write(&prefs, text)?;
        pins.push("--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d".to_string());
        pins.push(format!(
            "--setup-hook=upload {} /etc/apt/preferences.d/drover-versions",
            prefs.display()
        ));
    }
    let status = Command::new("mmdebstrap")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // The kernel package would build an initramfs with initramfs-tools;
        // Drover assembles its own.
        .env("INITRD", "No")
        .args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--include={}", d.packages.join(",")))
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--skip=download/empty",
            "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
        ])
        .arg(format!(
            "--setup-hook=sync-in {arch} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {arch}"
        ))
        .args(&pins)
        .arg(&d.suite)
        .arg(target)
        .arg(&d.mirror)
        .args(&d.sources)
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .status()
        .context(
            "running mmdebstrap (Debian package mmdebstrap; `cargo xtask deps` installs it)",
        )?;
    if !status.success() {
        bail!(
            "mmdebstrap failed ({status}); the end of {}:\n{}",
            log.display(),
            tail(log, 15)
        );
    }
    lock.lock().context("locking the package cache")?;
    copy_debs(&private, &archives)?;
    lock.unlock()?;
    let _ = std::fs::remove_dir_all(&private);
    Ok(())
}

/// Copies the `.deb` files of `from` that `to` lacks, each to a temporary
/// name and renamed into place (a reader never sees half a file).
fn copy_debs(from: &Path, to: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let name = e.file_name();
        if !name.to_string_lossy().ends_with(".deb") || to.join(&name).exists() {
            continue;
        }
        let part = to.join(format!(".{}.part", name.to_string_lossy()));
        std::fs::copy(e.path(), &part)
            .with_context(|| format!("copying {} to {}", e.path().display(), part.display()))?;
        std::fs::rename(&part, to.join(&name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let text = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\n\
                    Source: zlib\nVersion: 1:1.2.13.dfsg-1\nDescription: x\n continued\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
                    Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
                    Source: glibc (2.36-9+deb12u4)\nVersion: 2.36-9+deb12u4\n\
                    Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\n\
                    Homepage: https://www.gnu.org/software/libc/libc.html\n\n\
                    Package: base-files\nStatus: install ok installed\nArchitecture: amd64\n\
                    Version: 12.4+deb12u5\n";
        let p = parse_dpkg_status(text);
        assert_eq!(
            p.iter().map(DebPackage::line).collect::<Vec<_>>(),
            [
                "base-files:amd64 12.4+deb12u5",
                "libc6:amd64 2.36-9+deb12u4",
                "zlib1g:amd64 1:1.2.13.dfsg-1"
            ]
        );
        assert_eq!(
            (p[0].source.as_str(), p[0].source_version.as_str()),
            ("base-files", "12.4+deb12u5")
        );
        assert_eq!(
            (p[1].source.as_str(), p[1].source_version.as_str()),
            ("glibc", "2.36-9+deb12u4")
        );
        assert_eq!(
            (p[2].source.as_str(), p[2].source_version.as_str()),
            ("zlib", "1:1.2.13.dfsg-1")
        );
        assert_eq!(
            p[1].maintainer.as_deref(),
            Some("GNU Libc Maintainers <debian-glibc@lists.debian.org>")
        );
        assert_eq!(p[2].summary.as_deref(), Some("x"));
    }
}
