//! Turning a Debian root file system into a /usr-only OS tree.
//!
//! * the kernel moves to `/usr/lib/modules/VERSION/vmlinuz`;
//! * `/etc` becomes the factory copy `/usr/share/factory/etc`, which the
//!   slot's initramfs copies to ROOT on first boot;
//! * everything outside `/usr` is dropped (it lives on ROOT);
//! * os-release, the trusted keys, the update agent (binaries, units, D-Bus
//!   policy, defaults) and the extra files of the spec go in.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use drover_core::keys::PublicKey;

use crate::spec::ImageSpec;

/// Facts about the prepared tree.
#[derive(Debug)]
pub struct UsrTree {
    /// The `/usr` directory to turn into the file system.
    pub usr: PathBuf,
    /// Kernel version (`6.1.0-50-amd64`).
    pub kernel_version: String,
}

impl UsrTree {
    /// Kernel path relative to `/usr`.
    pub fn kernel_rel(&self) -> String {
        format!("lib/modules/{}/vmlinuz", self.kernel_version)
    }

    /// Slot initramfs path relative to `/usr`.
    pub fn initramfs_rel(&self) -> String {
        format!("lib/modules/{}/drover-initramfs.img", self.kernel_version)
    }

    /// The kernel's modules directory.
    pub fn modules_dir(&self) -> PathBuf {
        self.usr.join("lib/modules").join(&self.kernel_version)
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.is_symlink() {
        std::fs::remove_file(path)?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The agent's units, enabled for multi-user.target.
const AGENT_UNITS: [(&str, &str); 3] = [
    (
        "drover-agent.service",
        include_str!("../../../update-agent/units/drover-agent.service"),
    ),
    (
        "drover-boot-complete.service",
        include_str!("../../../update-agent/units/drover-boot-complete.service"),
    ),
    // Shipped with drover-install; runs only in a live system told to
    // install (drover.install= on its command line).
    (
        "drover-install-auto.service",
        include_str!("../../units/drover-install-auto.service"),
    ),
];

/// The measured-boot check, required by `boot-complete.target`.
const VERIFY_BOOT_UNIT: (&str, &str) = (
    "drover-verify-boot.service",
    include_str!("../../../update-agent/units/drover-verify-boot.service"),
);

/// What runs before a reboot into an update (users hang units on it).
const PRE_REBOOT_TARGET: (&str, &str) = (
    "drover-pre-reboot.target",
    include_str!("../../../update-agent/units/drover-pre-reboot.target"),
);

/// containerd's configuration where containerd is: Debian's, plus the
/// node config's drop-ins (`imports`) and registry hosts (`config_path`).
const CONTAINERD_CONFIG: &str = include_str!("../../files/containerd-config.toml");

/// The kubelet's unit (kubelet-unit/), shipped where containerd is.
const KUBELET_UNIT: &str = include_str!("../../../kubelet-unit/kubelet.service");

/// Who may own and call `org.drover.Update1` on the system bus.
const DBUS_POLICY: &str = include_str!("../../../update-agent/units/org.drover.Update1.conf");

/// Prepares `root` in place. `agent_binaries` holds `drover-agent` and
/// `droverctl` when the spec enables the agent.
pub fn prepare(
    root: &Path,
    spec: &ImageSpec,
    trusted: &[PublicKey],
    agent_binaries: Option<&Path>,
) -> anyhow::Result<UsrTree> {
    let usr = root.join("usr");
    if !usr.is_dir() {
        bail!("{} has no /usr: not a root file system", root.display());
    }
    // The kernel.
    let boot = root.join("boot");
    let mut kernels: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| {
            format!(
                "reading {}: is a linux-image package installed?",
                boot.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(String::from)
        })
        .collect();
    kernels.sort();
    let kernel_version = match kernels.as_slice() {
        [k] => k.clone(),
        [] => bail!(
            "no kernel in {}: the spec must install linux-image-amd64",
            boot.display()
        ),
        many => bail!("several kernels in {}: {}", boot.display(), many.join(", ")),
    };
    let modules = usr.join("lib/modules").join(&kernel_version);
    if !modules.join("modules.dep").is_file() {
        bail!("{} has no modules.dep", modules.display());
    }
    std::fs::rename(
        boot.join(format!("vmlinuz-{kernel_version}")),
        modules.join("vmlinuz"),
    )
    .context("moving the kernel into /usr")?;

    // /etc becomes the factory copy.
    let factory = usr.join("share/factory");
    std::fs::create_dir_all(&factory)?;
    let factory_etc = factory.join("etc");
    if factory_etc.exists() {
        std::fs::remove_dir_all(&factory_etc)?;
    }
    std::fs::rename(root.join("etc"), &factory_etc).context("moving /etc to the factory copy")?;
    // First boot generates the machine id (systemd's "uninitialized").
    write_file(&factory_etc.join("machine-id"), b"uninitialized\n", 0o444)?;
    write_file(
        &factory_etc.join("fstab"),
        b"# /usr (dm-verity) and / (ROOT) are mounted by the initramfs.\n",
        0o644,
    )?;
    // Nothing of the build host and nothing that must differ between
    // nodes: mmdebstrap copies the host's hostname and resolv.conf, and
    // openssh-server generates host keys at install time.
    write_file(
        &factory_etc.join("hostname"),
        format!("{}\n", spec.os.name).as_bytes(),
        0o644,
    )?;
    let _ = std::fs::remove_file(factory_etc.join("resolv.conf"));
    let ssh = factory_etc.join("ssh");
    if ssh.is_dir() {
        for e in std::fs::read_dir(&ssh)?.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())?;
            }
        }
        let unit = usr.join("lib/systemd/system/drover-ssh-keygen.service");
        write_file(
            &unit,
            b"[Unit]\nDescription=Generate this node's SSH host keys\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n",
            0o644,
        )?;
        let wants = usr.join("lib/systemd/system/ssh.service.wants");
        std::fs::create_dir_all(&wants)?;
        let link = wants.join("drover-ssh-keygen.service");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("../drover-ssh-keygen.service", link)?;
    }
    let _ = std::fs::remove_file(factory_etc.join("os-release"));
    std::os::unix::fs::symlink("../usr/lib/os-release", factory_etc.join("os-release"))?;

    // os-release.
    let os = &spec.os;
    let os_release = format!(
        "NAME=\"Drover\"\nPRETTY_NAME=\"Drover {v}\"\nID={id}\nID_LIKE=debian\nVERSION=\"{v}\"\nVERSION_ID={v}\nIMAGE_ID={id}\nIMAGE_VERSION={v}\nDROVER_SECURITY_VERSION={s}\nHOME_URL=\"https://example.invalid/drover\"\n",
        id = os.name,
        v = os.version,
        s = os.security_version
    );
    write_file(&usr.join("lib/os-release"), os_release.as_bytes(), 0o644)?;

    // Trusted keys.
    let keys_dir = usr.join("lib/drover/keys");
    std::fs::create_dir_all(&keys_dir)?;
    for (i, key) in trusted.iter().enumerate() {
        write_file(
            &keys_dir.join(format!("{i:02}-{}.pem", key.short_id())),
            key.to_pem().as_bytes(),
            0o644,
        )?;
    }
    write_file(
        &usr.join("lib/drover/cmdline"),
        spec.kernel.cmdline.as_bytes(),
        0o644,
    )?;

    // The update agent.
    if spec.agent.enabled {
        let bins = agent_binaries
            .context("the spec enables the update agent but no agent binaries were given")?;
        for b in ["drover-agent", "droverctl", "drover-install"] {
            let src = bins.join(b);
            if !src.is_file() {
                bail!(
                    "no {} (build it with `cargo build -p drover-update-agent -p drover-image-builder`, or pass --agent-binaries DIR)",
                    src.display()
                );
            }
            let data = super::initramfs::read_stripped(&src)?;
            write_file(&usr.join("bin").join(b), &data, 0o755)?;
        }
        let sd = usr.join("lib/systemd/system");
        for (name, text) in AGENT_UNITS {
            write_file(&sd.join(name), text.as_bytes(), 0o644)?;
            let wants = sd.join("multi-user.target.wants");
            std::fs::create_dir_all(&wants)?;
            let _ = std::fs::remove_file(wants.join(name));
            std::os::unix::fs::symlink(format!("../{name}"), wants.join(name))?;
        }
        write_file(
            &sd.join(PRE_REBOOT_TARGET.0),
            PRE_REBOOT_TARGET.1.as_bytes(),
            0o644,
        )?;
        // The measured-boot check, a boot check of boot-complete.target.
        write_file(
            &sd.join(VERIFY_BOOT_UNIT.0),
            VERIFY_BOOT_UNIT.1.as_bytes(),
            0o644,
        )?;
        let requires = sd.join("boot-complete.target.requires");
        std::fs::create_dir_all(&requires)?;
        let _ = std::fs::remove_file(requires.join(VERIFY_BOOT_UNIT.0));
        std::os::unix::fs::symlink(
            format!("../{}", VERIFY_BOOT_UNIT.0),
            requires.join(VERIFY_BOOT_UNIT.0),
        )?;
        write_file(
            &usr.join("share/dbus-1/system.d/org.drover.Update1.conf"),
            DBUS_POLICY.as_bytes(),
            0o644,
        )?;
        write_file(
            &usr.join("lib/drover/agent.toml"),
            spec.agent.defaults_toml().as_bytes(),
            0o644,
        )?;
        if let Some(src) = &spec.agent.tuf_root {
            let bytes = std::fs::read(src)
                .with_context(|| format!("reading agent.tuf-root {}", src.display()))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok().unwrap_or_default();
            if v["signed"]["_type"] != "root" {
                bail!(
                    "agent.tuf-root {} is not TUF root metadata (drover channel init writes it as tuf/CHANNEL/metadata/1.root.json)",
                    src.display()
                );
            }
            let dir = drover_core::paths::TUF_ROOTS.trim_start_matches("/usr/");
            write_file(
                &usr.join(dir)
                    .join(format!("{}.root.json", spec.agent.channel)),
                &bytes,
                0o644,
            )?;
        }
    }

    // The kubelet's unit, beside containerd (inert until the node config
    // enables it and the binary is there).
    let sd = usr.join("lib/systemd/system");
    if sd.join("containerd.service").is_file() {
        write_file(&sd.join("kubelet.service"), KUBELET_UNIT.as_bytes(), 0o644)?;
        write_file(
            &factory_etc.join("containerd/config.toml"),
            CONTAINERD_CONFIG.as_bytes(),
            0o644,
        )?;
    }

    // Extra files.
    for f in &spec.files {
        let mode = u32::from_str_radix(&f.mode, 8).expect("checked when the spec was loaded");
        let dest = match f.path.strip_prefix("/etc/") {
            Some(rest) => factory_etc.join(rest),
            None => root.join(f.path.trim_start_matches('/')),
        };
        if let Some(target) = &f.link {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(target, &dest)
                .with_context(|| format!("linking {} to {target}", dest.display()))?;
            continue;
        }
        let data = match (&f.contents, &f.source) {
            (Some(c), None) => c.as_bytes().to_vec(),
            (None, Some(s)) => {
                std::fs::read(s).with_context(|| format!("reading {}", s.display()))?
            }
            _ => unreachable!("checked when the spec was loaded"),
        };
        write_file(&dest, &data, mode)?;
    }
    Ok(UsrTree {
        usr,
        kernel_version,
    })
}
