//! Slot mode: the slot's own initramfs opens `/usr` with dm-verity and the
//! root hash from the command line the stage measured, mounts ROOT,
//! populates `/etc` on first boot and switches root to systemd.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use nix::mount::{mount, MsFlags};

use drover_core::cmdline::VerityArg;

use crate::dm::{self, VerityTable};
use crate::early::cmdline_value;
use crate::stage::step;

/// Applies the node config on first boot (see `drover_os_config`), with
/// the OEM partition mounted read-only at `/oem` while it runs. A config
/// that fails validation stops the boot: nothing of it was applied, and
/// the message stays on the console.
fn node_config(
    start: Instant,
    disk: Option<&Path>,
    sysroot: &Path,
    cmdline: &str,
) -> anyhow::Result<()> {
    use drover_os_config::firstboot::{self, Outcome, Places};
    let oem_dir = Path::new("/oem");
    let oem = match disk
        .and_then(|d| drover_core::devices::partition_node(d, drover_core::slot::layout::OEM.1))
    {
        Some(dev) => {
            std::fs::create_dir_all(oem_dir)?;
            match mount(
                Some(&dev),
                oem_dir,
                Some("ext4"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                None::<&str>,
            ) {
                Ok(()) => Some(oem_dir),
                Err(e) => {
                    step(
                        start,
                        &format!("OEM partition not mounted ({e}): its config is not read"),
                    );
                    None
                }
            }
        }
        None => None,
    };
    let r = firstboot::run(&Places {
        sysroot,
        fw_cfg: Path::new(firstboot::FW_CFG),
        oem,
        cmdline,
    });
    if oem.is_some() {
        let _ = nix::mount::umount(oem_dir);
    }
    match r {
        Ok(Outcome::Applied(s)) => step(
            start,
            &format!(
                "node config applied ({} actions) from {}",
                s.actions,
                s.sources.join(", ")
            ),
        ),
        Ok(Outcome::AlreadyApplied(s)) => step(
            start,
            &format!(
                "node config: applied on first boot (from {}), not again",
                s.sources.join(", ")
            ),
        ),
        Ok(Outcome::NoConfig) => step(start, "node config: none given"),
        Err(e) => bail!("node config refused, nothing of it applied: {e}"),
    }
    Ok(())
}

/// Copies a directory tree with modes, owners and symlinks (the factory
/// `/etc` onto ROOT on first boot).
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if meta.is_dir() {
        std::fs::create_dir(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else {
        std::fs::copy(from, to)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    Ok(())
}

/// Grows ROOT if the disk has room (first boot) and mounts it on `sysroot`.
fn mount_root(start: Instant, disk: &Path, sysroot: &Path) -> anyhow::Result<()> {
    let root_part =
        drover_core::devices::partition_node(disk, "ROOT").context("no ROOT partition")?;
    let grown = match crate::grow::grow_partition(disk) {
        Ok(g) => g,
        Err(e) => {
            // Not fatal: the machine boots with ROOT as it is.
            step(start, &format!("ROOT not grown: {e:#}"));
            None
        }
    };
    std::fs::create_dir_all(sysroot)?;
    mount(
        Some(&root_part),
        sysroot,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting ROOT ({}) on /sysroot", root_part.display()))?;
    if let Some(bytes) = grown {
        match crate::grow::grow_ext4(sysroot, bytes) {
            Ok(()) => step(start, &format!("ROOT grown to {} MiB", bytes >> 20)),
            Err(e) => step(
                start,
                &format!("ROOT partition grown, file system not: {e:#}"),
            ),
        }
    }
    Ok(())
}

/// Runs slot mode; on success it execs systemd and does not return.
pub fn run(start: Instant) -> anyhow::Result<std::convert::Infallible> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let slot = cmdline_value(&cmdline, drover_core::cmdline::SLOT).with_context(|| {
        format!(
            "no {}= on the command line: was this kernel started by the boot stage?",
            drover_core::cmdline::SLOT
        )
    })?;
    let verity: VerityArg = cmdline_value(&cmdline, drover_core::cmdline::VERITY)
        .with_context(|| format!("no {}= on the command line", drover_core::cmdline::VERITY))?
        .parse()?;
    let live = cmdline_value(&cmdline, crate::live::FLAG).is_some();
    let disk = if live {
        None
    } else {
        Some(crate::stage::find_disk(start)?)
    };
    let usr_part = match &disk {
        Some(disk) => drover_core::devices::partition_node(disk, &slot)
            .with_context(|| format!("no {slot} partition"))?,
        None => {
            crate::live::mount_media(start)?;
            // The loop device keeps its own reference to the file.
            crate::live::open_slot_image()?.2
        }
    };
    let dev = dm::create_verity(
        "usr",
        &VerityTable {
            data_dev: usr_part.display().to_string(),
            hash_dev: usr_part.display().to_string(),
            data_blocks: verity.data_blocks,
            hash_offset: verity.hash_offset,
            salt: verity.salt,
            root_hash: verity.root_hash,
            restart_on_corruption: true,
        },
    )?;
    step(
        start,
        &format!(
            "/usr: {slot} opened with dm-verity as {} (restart on corruption)",
            dev.display()
        ),
    );

    let sysroot = Path::new("/sysroot");
    let root_desc = match &disk {
        Some(disk) => {
            mount_root(start, disk, sysroot)?;
            "ROOT"
        }
        None => {
            crate::live::mount_root(sysroot)?;
            "live: a tmpfs in memory"
        }
    };
    std::fs::create_dir_all(sysroot.join("usr"))?;
    mount(
        Some(&dev),
        &sysroot.join("usr"),
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .context("mounting /usr")?;
    step(
        start,
        &format!("{root_desc} mounted on /, /usr read-only from dm-verity"),
    );

    let etc = sysroot.join("etc");
    if !etc.exists() {
        copy_tree(&sysroot.join("usr/share/factory/etc"), &etc)
            .context("populating /etc from the factory copy")?;
        step(
            start,
            "first boot: /etc populated from /usr/share/factory/etc",
        );
    }
    for d in [
        "var", "home", "root", "proc", "sys", "dev", "run", "tmp", "mnt", "srv", "opt", "media",
    ] {
        std::fs::create_dir_all(sysroot.join(d))?;
    }
    std::fs::set_permissions(sysroot.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(sysroot.join("root"), std::fs::Permissions::from_mode(0o700))?;

    node_config(start, disk.as_deref(), sysroot, &cmdline)?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let l = sysroot.join(link);
        if std::fs::symlink_metadata(&l).is_err() && sysroot.join(target).exists() {
            std::os::unix::fs::symlink(target, &l)?;
        }
    }

    // /run with the boot record, handed to systemd already mounted.
    mount(
        Some("tmpfs"),
        &sysroot.join("run"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    std::fs::create_dir_all(sysroot.join("run/drover"))?;
    let record = Path::new("/").join(drover_core::boot_record::IN_INITRAMFS);
    if record.exists() {
        std::fs::copy(
            &record,
            sysroot.join(drover_core::boot_record::ON_SYSTEM.trim_start_matches('/')),
        )?;
    }
    if live {
        // The installer in the live system reads the media.
        let media = sysroot.join(crate::live::MEDIA.trim_start_matches('/'));
        std::fs::create_dir_all(&media)?;
        mount(
            Some(crate::live::MEDIA),
            &media,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .context("moving the live media into /sysroot")?;
    }
    for m in ["/dev", "/proc", "/sys"] {
        mount(
            Some(m),
            &sysroot.join(&m[1..]),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("moving {m} into /sysroot"))?;
    }
    step(start, "switching root to systemd");
    nix::unistd::chdir(sysroot)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving /sysroot to /")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/")?;
    let init = ["/usr/lib/systemd/systemd", "/sbin/init"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no /usr/lib/systemd/systemd or /sbin/init in the slot")?;
    let prog = CString::new(init)?;
    let args = [
        prog.clone(),
        CString::new("--switched-root")?,
        CString::new("--system")?,
    ];
    nix::unistd::execv(&prog, &args).with_context(|| format!("executing {init}"))?;
    unreachable!("execv returned without an error")
}
