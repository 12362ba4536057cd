//! Early userspace: pseudo file systems, kernel modules, the command line.

use std::ffi::CString;
use std::path::Path;

use anyhow::Context as _;
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};

/// Mounts `/proc`, `/sys` and `/dev` (devtmpfs) if they are not there yet.
pub fn mount_pseudo_filesystems() -> anyhow::Result<()> {
    let list: [(&str, &str, &str); 3] = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ];
    for (src, target, fstype) in list {
        std::fs::create_dir_all(target)?;
        if Path::new(target)
            .join(match fstype {
                "proc" => "self",
                "sysfs" => "kernel",
                _ => "null",
            })
            .exists()
        {
            continue;
        }
        mount(
            Some(src),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    Ok(())
}

/// Loads the modules listed in `list` (one path a line, dependencies
/// first; a leading `-` marks a soft dependency whose failure is ignored).
/// A module that is already loaded is not an error.
pub fn load_modules(list: &Path) -> anyhow::Result<usize> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", list.display())),
    };
    let mut n = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (line, optional) = match line.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let f = std::fs::File::open(line).with_context(|| format!("opening module {line}"))?;
        let mut flags = ModuleInitFlags::empty();
        if !line.ends_with(".ko") {
            // .ko.xz / .ko.zst: let the kernel decompress (MODULE_INIT_COMPRESSED_FILE).
            flags = ModuleInitFlags::from_bits_retain(4);
        }
        match finit_module(&f, &CString::default(), flags) {
            Ok(()) => n += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            Err(_) if optional => {}
            Err(e) => return Err(e).with_context(|| format!("loading module {line}")),
        }
    }
    Ok(n)
}

/// The value of `key=` on the kernel command line, or whether a bare `key` is there.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| {
        if w == key {
            Some(String::new())
        } else {
            w.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(String::from)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values() {
        let c = "console=ttyS0 drover.stage root=/dev/vda9 drover.slot=USR-B";
        assert_eq!(cmdline_value(c, "drover.slot").as_deref(), Some("USR-B"));
        assert_eq!(cmdline_value(c, "drover.stage").as_deref(), Some(""));
        assert_eq!(cmdline_value(c, "drover.sl"), None);
    }
}
