//! The test image: built once per test run (or reused while the spec, the
//! `drover` binary and the `drover-boot` binary stay the same), shared by
//! all QEMU tests through a lock file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};

/// The spec of the test image: a small package set, and a unit that prints
/// one line of facts about the boot on the serial console once
/// multi-user.target is reached.
pub const SPEC: &str = r##"
[os]
name = "drover"
version = "@VERSION@"
security-version = 1

[debian]
suite = "bookworm"
packages = ["systemd", "systemd-sysv", "systemd-boot-efi", "udev", "dbus", "libtss2-esys-3.0.2-0", "libtss2-tctildr0", "qemu-guest-agent", "containerd", "runc", "linux-image-amd64"]

[kernel]
cmdline = "console=tty0 console=ttyS0,115200 panic=5"

# No [trust]: the image trusts the key it is signed with (test.pem), as
# examples/container-host.toml does, so every QEMU test boots a disk that
# trusts no more than its spec says.

[[files]]
path = "/usr/lib/drover-test/report"
mode = "0755"
contents = """#!/bin/sh
# Test image only: one line of boot facts for the QEMU tests.
usr_opts=$(findmnt -n -o OPTIONS /usr | cut -d, -f1)
usr_src=$(findmnt -n -o SOURCE /usr)
root_opts=$(findmnt -n -o OPTIONS / | cut -d, -f1)
slot=$(sed -n 's/.*drover\\.slot=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
version=$(. /usr/lib/os-release; echo $IMAGE_VERSION)
root_size=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')
measured=$(sed -n 's/.*"measured": \\([a-z]*\\).*/\\1/p' /run/drover/boot-record.json)
pcr8=$(cat /sys/class/tpm/tpm0/pcr-sha256/8 2>/dev/null || echo none)
echo "DROVER-TEST-REPORT slot=$slot version=$version usr=$usr_opts usr_source=$usr_src root=$root_opts root_size=$root_size measured=$measured pcr8_sha256=$pcr8 multi_user=$(systemctl is-active multi-user.target)" > /dev/ttyS0
echo "DROVER-BOOT-RECORD $(tr -d '\\n' < /run/drover/boot-record.json)" > /dev/ttyS0
echo "DROVER-STATUS $(droverctl status --json 2>&1 | tr -d '\\n')" > /dev/ttyS0
echo "DROVER-VERIFY-BOOT $(droverctl verify-boot --json 2>/dev/null | tr -d '\\n')" > /dev/ttyS0
# What the agent said on the boot before, for a failing test's console.
journalctl -b -1 -u drover-agent -o cat --no-pager 2>/dev/null | tail -n 15 | sed 's/^/DROVER-PREVIOUS-BOOT agent: /' > /dev/ttyS0
"""

[[files]]
path = "/usr/lib/systemd/system/drover-test-report.service"
contents = """[Unit]
Description=Boot facts for Drover's QEMU tests (test image only)
After=multi-user.target drover-boot-complete.service

[Service]
Type=oneshot
ExecStart=/usr/lib/drover-test/report
"""

[[files]]
path = "/usr/lib/systemd/system/multi-user.target.wants/drover-test-report.service"
link = "../drover-test-report.service"

# The update channel: QEMU forwards 10.0.2.100:80 of the guest to the test's
# HTTP server on the host's loopback (guestfwd).
[agent]
server = "http://10.0.2.100/"
channel = "stable"
# The channel is a TUF repository (the test keys' root, made once beside
# test.pem): the agent follows it and nothing else.
tuf-root = "@TUF_ROOT@"
poll-interval-secs = 15
# Generous: nothing in the tests waits for this timeout (a failing health
# check reboots at once, a panic reboots by itself), and two TCG guests
# beside a build can take minutes to reach boot-complete.target.
boot-complete-timeout-secs = 900

[[files]]
path = "/etc/systemd/journald.conf.d/50-drover-test.conf"
contents = "[Journal]\nStorage=persistent\n"

[[files]]
path = "/etc/drover/agent.toml.d/50-test.toml"
contents = "poll-jitter-secs = 0\n"

[[files]]
path = "/etc/systemd/network/80-dhcp.network"
contents = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"

[[files]]
path = "/usr/lib/systemd/system/multi-user.target.wants/systemd-networkd.service"
link = "../systemd-networkd.service"

[[files]]
path = "/usr/lib/systemd/system/sockets.target.wants/systemd-networkd.socket"
link = "../systemd-networkd.socket"

[[files]]
path = "/usr/lib/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
link = "../systemd-networkd-wait-online.service"

@EXTRA@

[disk]
esp-mib = 64
usr-mib = 640
oem-mib = 8
root-mib = 64
"##;

/// A built test image.
#[derive(Debug)]
pub struct TestImage {
    /// Where everything lives.
    pub dir: PathBuf,
    /// The disk image (do not boot it directly: copy it with [`TestImage::fresh_disk`]).
    pub disk: PathBuf,
    /// The slot image.
    pub usr_img: PathBuf,
    /// The installation ISO.
    pub iso: PathBuf,
    /// The stage kernel, from the ESP.
    pub kernel: PathBuf,
    /// The stage initramfs, from the ESP.
    pub initrd: PathBuf,
}

/// `<target>`: test binaries run from `<target>/debug/deps/`.
pub fn target_dir() -> PathBuf {
    // A test runs as <target>/debug/deps/<test>, a tool using this crate
    // (cargo xtask) as <target>/debug/<tool>.
    let exe = std::env::current_exe().expect("test executable path");
    let in_deps = exe.parent().and_then(Path::file_name) == Some("deps".as_ref());
    exe.ancestors()
        .nth(if in_deps { 3 } else { 2 })
        .expect("<target>/debug/[deps/]<executable>")
        .to_owned()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The spec of release `version`, with `extra` TOML (more `[[files]]`)
/// added.
pub fn spec(version: &str, extra: &str) -> String {
    SPEC.replace("@VERSION@", version)
        .replace("@EXTRA@", extra)
        .replace("@TUF_ROOT@", &tuf_root().to_string_lossy())
}

/// The TUF root the test images trust for channel `stable`: version 1 of
/// a channel made with the test TUF keys ([`tuf_keys`]), once, beside the
/// test signing key.
pub fn tuf_root() -> PathBuf {
    target_dir().join("tmp/drover-qemu-image/tuf-root.json")
}

/// The test channel's TUF keys (root keys 2 of 3, targets, snapshot,
/// timestamp).
pub fn tuf_keys() -> PathBuf {
    target_dir().join("tmp/drover-qemu-image/tuf-keys")
}

/// The shared test image (1.0.0, a whole disk), built on first use.
pub fn test_image() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = build("v1", &spec("1.0.0", ""), Kind::Image)
            .unwrap_or_else(|e| panic!("building the QEMU test image: {e:#}"));
        TestImage {
            disk: dir.join("out/disk.raw"),
            usr_img: dir.join("out/usr.img"),
            iso: dir.join("out/drover.iso"),
            kernel: dir.join("stage-vmlinuz"),
            initrd: dir.join("stage-initrd.img"),
            dir,
        }
    })
}

/// A release built from [`spec`]`(version, extra)`, slot image only: its
/// build directory (holding `usr.img`, for `drover publish`). Built once
/// per run (and reused while its inputs stay the same).
pub fn release(name: &str, version: &str, extra: &str) -> PathBuf {
    release_spec(name, &spec(version, extra))
}

/// A release built from a whole spec text (for a release that changes
/// what [`spec`]'s `extra` cannot reach, such as the kernel command line).
///
/// Releases are built from the root file system mmdebstrap made for the
/// test image (`drover build --rootfs`, kept by `--keep-rootfs`): the same
/// packages, so only the spec's files, version and command line differ,
/// and a release takes seconds instead of another mmdebstrap run.
pub fn release_spec(name: &str, spec_text: &str) -> PathBuf {
    let packages = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("packages = "))
            .map(str::to_owned)
    };
    assert_eq!(
        packages(spec_text),
        packages(SPEC),
        "test release {name}: a release is built from the test image's root file system, so its package list must be the test image's"
    );
    test_image();
    build(name, spec_text, Kind::Release)
        .unwrap_or_else(|e| panic!("building test release {name}: {e:#}"))
        .join("out")
}

/// The test image's installation ISO, built again with `drover build
/// --install-to /dev/vda --install-then poweroff`: its live system installs
/// unattended onto the machine's first virtio disk (the config from the
/// fw_cfg entry `opt/org.drover/install-config` when one is given) and
/// powers off. Built from the test image's root file system, once per run.
pub fn unattended_iso() -> PathBuf {
    test_image();
    build(
        "unattended",
        &spec("1.0.0", ""),
        Kind::Iso(&["--install-to", "/dev/vda", "--install-then", "poweroff"]),
    )
    .unwrap_or_else(|e| panic!("building the unattended ISO: {e:#}"))
    .join("out/drover.iso")
}

/// What [`build`] makes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The test image: mmdebstrap, every output, the root file system kept.
    Image,
    /// A release: the slot image only, from the test image's root file system.
    Release,
    /// Every output, from the test image's root file system, with these
    /// extra `drover build` arguments.
    Iso(&'static [&'static str]),
}

/// Publishes the release built in `build_dir` to channel `stable` of the
/// static repository `repo`, signed with the test key, with its frames and
/// block index (nodes take the delta path).
pub fn publish(repo: &Path, build_dir: &Path) {
    publish_with(repo, build_dir, &[]);
}

/// [`publish`] without frames and block index (`--no-blocks`): nodes
/// stream the whole payload, the path the power-cut tests record.
pub fn publish_full(repo: &Path, build_dir: &Path) {
    publish_with(repo, build_dir, &["--no-blocks"]);
}

fn publish_with(repo: &Path, build_dir: &Path, extra: &[&str]) {
    let (sec, _) = keys();
    if !repo.join("tuf/stable/metadata/1.root.json").is_file() {
        // A channel of the test TUF keys: its own root version 1, whose
        // keys are those of the root the images carry.
        let o = Command::new(drover_binary())
            .args(["channel", "init", "--channel", "stable", "--repo"])
            .arg(repo)
            .arg("--keys")
            .arg(tuf_keys())
            .output()
            .expect("running drover channel init");
        assert!(
            o.status.success(),
            "drover channel init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = Command::new(drover_binary())
        .args(["publish", "--channel", "stable", "--repo"])
        .arg(repo)
        .arg("--image")
        .arg(build_dir)
        .arg("--key")
        .arg(sec)
        .arg("--tuf-keys")
        .arg(tuf_keys())
        .args(extra)
        .output()
        .expect("running drover publish");
    assert!(
        o.status.success(),
        "drover publish: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (priority, tries, successful) of `slot` in the GPT of a disk image.
pub fn slot_bits(disk: &Path, slot: drover_core::SlotId) -> (u8, u8, bool) {
    let (t, _) = drover_core::PartitionTable::open(disk).expect("reading the GPT");
    let p = drover_core::Slots::from_table(t, drover_core::SlotId::A)
        .expect("the slot partitions")
        .get(slot)
        .prio;
    (p.priority(), p.tries(), p.successful())
}

/// The test signing key pair: `(secret, public)`.
pub fn keys() -> (PathBuf, PathBuf) {
    let base = target_dir().join("tmp/drover-qemu-image");
    (base.join("test.pem"), base.join("test.pub.pem"))
}

/// The `drover` binary the tests build with.
pub fn drover_binary() -> PathBuf {
    target_dir().join("debug/drover")
}

fn build(name: &str, spec_text: &str, kind: Kind) -> anyhow::Result<PathBuf> {
    let from_rootfs = !matches!(kind, Kind::Image);
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The same build nextest makes (`cargo test --no-run` of the whole
    // workspace, all targets): a no-op under `cargo xtask test`. A build of
    // only the three packages resolves features differently, rebuilds the
    // binaries and replaces them under tests that are running.
    run(Command::new(&cargo)
        .args([
            "test",
            "--no-run",
            "--quiet",
            "--workspace",
            "--all-targets",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")))?;
    let bins = target.join("debug");
    let drover = bins.join("drover");
    let boot = bins.join("drover-boot");
    let base = target.join("tmp/drover-qemu-image");
    std::fs::create_dir_all(&base)?;
    let dir = if name == "v1" {
        base.clone()
    } else {
        base.join(name)
    };
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    lock.lock().context("locking the test image directory")?;
    let (sec, public) = keys();
    {
        let klock = std::fs::File::create(base.join(".keys.lock"))?;
        klock.lock().context("locking the test keys")?;
        let nonempty = |p: &Path| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false);
        if !nonempty(&sec) || !nonempty(&public) {
            let _ = std::fs::remove_file(&sec);
            let _ = std::fs::remove_file(&public);
            run(Command::new(&drover)
                .arg("keygen")
                .arg("--secret")
                .arg(&sec)
                .arg("--public")
                .arg(&public))?;
        }
        if !nonempty(&tuf_root()) {
            let template = base.join("tuf-template");
            let _ = std::fs::remove_dir_all(&template);
            let _ = std::fs::remove_dir_all(tuf_keys());
            run(Command::new(&drover)
                .args(["channel", "init", "--channel", "stable", "--repo"])
                .arg(&template)
                .arg("--keys")
                .arg(tuf_keys()))?;
            std::fs::copy(template.join("tuf/stable/metadata/1.root.json"), tuf_root())?;
        }
    }

    let mut h = Sha256::new();
    h.update(spec_text.as_bytes());
    for b in [
        "drover",
        "drover-boot",
        "drover-agent",
        "droverctl",
        "drover-install",
    ] {
        h.update(std::fs::read(bins.join(b))?);
    }
    h.update(std::fs::read(&public)?);
    h.update(std::fs::read(tuf_root())?);
    let rootfs = base.join("rootfs");
    if from_rootfs {
        // Built from the test image's tree: rebuilt when that is.
        h.update(std::fs::read(base.join("inputs.sha256"))?);
    }
    if let Kind::Iso(args) = kind {
        h.update(args.join("\0").as_bytes());
    }
    let key = hex::encode(h.finalize());
    let stamp = dir.join("inputs.sha256");
    let done = match kind {
        Kind::Release => dir.join("out/usr.img"),
        Kind::Iso(_) => dir.join("out/drover.iso"),
        Kind::Image => dir.join("stage-initrd.img"),
    };
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && done.is_file()
        && (from_rootfs || rootfs.is_dir())
    {
        return Ok(dir);
    }
    let _ = std::fs::remove_file(&stamp);
    if dir != base {
        std::fs::copy(&public, dir.join("test.pub.pem"))?;
    }
    std::fs::write(dir.join("spec.toml"), spec_text)?;
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    eprintln!(
        "qemu-tests: building test image {name} in {} ({})",
        dir.display(),
        if from_rootfs {
            "from the test image's root file system: seconds to a minute"
        } else {
            "mmdebstrap: about 2 minutes"
        }
    );
    let mut cmd = Command::new(&drover);
    cmd.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["build", "--quiet", "--spec"])
        .arg(dir.join("spec.toml"))
        .arg("--key")
        .arg(&sec)
        .arg("--out")
        .arg(&out)
        .arg("--boot-binary")
        .arg(&boot)
        .arg("--agent-binaries")
        .arg(&bins);
    match kind {
        Kind::Release => cmd.arg("--slot-only").arg("--rootfs").arg(&rootfs),
        Kind::Iso(args) => cmd.arg("--rootfs").arg(&rootfs).args(args),
        Kind::Image => cmd.arg("--keep-rootfs").arg(&rootfs),
    };
    run(&mut cmd)?;
    if matches!(kind, Kind::Image) {
        let disk = out.join("disk.raw");
        for (from, to) in [
            ("::/drover/vmlinuz", dir.join("stage-vmlinuz")),
            ("::/drover/initrd.img", dir.join("stage-initrd.img")),
        ] {
            run(Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-o")
                .arg("-i")
                .arg(format!("{}@@1M", disk.display()))
                .arg(from)
                .arg(&to))?;
        }
    }
    std::fs::File::create(&stamp)?.write_all(key.as_bytes())?;
    Ok(dir)
}

impl TestImage {
    /// A private, sparse copy of the disk for one test.
    pub fn fresh_disk(&self, dir: &Path) -> PathBuf {
        let p = dir.join("disk.raw");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.disk)
            .arg(&p)
            .status()
            .expect("cp");
        assert!(st.success());
        p
    }

    /// The boot stage started directly (`-kernel`/`-initrd`, no firmware):
    /// the stage picks the slot from the disk as it would under OVMF.
    pub fn stage_direct(&self) -> crate::guest::Firmware {
        crate::guest::Firmware::Direct {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            append: "console=ttyS0,115200 drover.stage panic=5".into(),
        }
    }

    /// A node for the life-cycle tests: the stage booted directly, the
    /// QEMU guest agent on `sock` (a stale socket removed), reboots
    /// allowed. Callers add the channel or fw_cfg they need.
    pub fn node(&self, name: &str, disk: &Path, sock: &Path) -> crate::guest::GuestBuilder {
        let _ = std::fs::remove_file(sock);
        crate::guest::GuestBuilder::new(name, disk, self.stage_direct())
            .guest_agent(sock)
            .allow_reboot()
    }

    /// The signing key of the test image.
    pub fn secret_key(&self) -> PathBuf {
        self.dir.join("test.pem")
    }
}
