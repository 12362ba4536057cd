//! `drover build --rootfs DIR|TAR`: a slot image from a root file system
//! the user brings, without mmdebstrap. A tiny tree (an `/etc`, a `/usr`,
//! an empty `modules.dep`, a PE file as the kernel) builds in well under a
//! second; the same tree as a directory and as a tar gives the same bytes.
//! (`--keep-rootfs`, which keeps mmdebstrap's tree for such builds, is
//! exercised by the reproducibility test in `build_image.rs` and by the
//! QEMU tests' releases.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn drover(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_drover"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

/// The `drover-boot` binary cargo built beside `drover`.
fn boot_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_drover")).with_file_name("drover-boot")
}

const SPEC: &str = r#"
[os]
name = "drover"
version = "0.0.1"
security-version = 1

[debian]
suite = "bookworm"
packages = ["linux-image-amd64"]

[kernel]
# The tiny tree has no modules: nothing to load.
modules = []

[trust]
keys = ["k.pub.pem"]

[agent]
enabled = false

[[files]]
path = "/usr/lib/drover-test/hello"
contents = "from the spec\n"
"#;

/// A tiny root file system in `dir/root`; any PE file serves as the
/// kernel (the manifest records its Authenticode digest).
fn tiny_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let kver = "6.1.0-drover-test";
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join(format!("usr/lib/modules/{kver}"))).unwrap();
    std::fs::write(root.join(format!("usr/lib/modules/{kver}/modules.dep")), "").unwrap();
    std::fs::write(root.join("usr/lib/os-release"), "ID=debian\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "tiny\n").unwrap();
    std::fs::copy(
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        root.join(format!("boot/vmlinuz-{kver}")),
    )
    .expect("systemd-boot's EFI binary (Debian package systemd-boot-efi) as a PE kernel");
    root
}

fn build(dir: &Path, rootfs: &Path, out: &str) -> (bool, String, PathBuf) {
    let out = dir.join(out);
    let (ok, log) = drover(&[
        "build",
        "--quiet",
        "--slot-only",
        "--spec",
        s(&dir.join("spec.toml")),
        "--key",
        s(&dir.join("k.pem")),
        "--out",
        s(&out),
        "--rootfs",
        s(rootfs),
        "--boot-binary",
        s(&boot_binary()),
    ]);
    (ok, log, out)
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (ok, log) = drover(&[
        "keygen",
        "--secret",
        s(&dir.path().join("k.pem")),
        "--public",
        s(&dir.path().join("k.pub.pem")),
    ]);
    assert!(ok, "{log}");
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    dir
}

#[test]
fn a_tiny_tree_as_a_directory_or_a_tar_builds_the_same_signed_slot_image() {
    let fx = fixture();
    let dir = fx.path();
    let root = tiny_tree(dir);
    let (ok, log, from_dir) = build(dir, &root, "from-dir");
    assert!(ok, "build from a directory: {log}");
    let tar = dir.join("root.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let (ok, log, from_tar) = build(dir, &tar, "from-tar");
    assert!(ok, "build from a tar: {log}");
    let img = std::fs::read(from_dir.join("usr.img")).unwrap();
    assert!(
        img == std::fs::read(from_tar.join("usr.img")).unwrap(),
        "the same tree as a directory and as a tar gave different slot images"
    );
    let (ok, out) = drover(&[
        "inspect",
        s(&from_dir.join("usr.img")),
        "--public",
        s(&dir.join("k.pub.pem")),
        "--verify",
    ]);
    assert!(
        ok && out.contains("drover 0.0.1") && out.contains("verity:           verified"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from_dir.join("build.json")).unwrap())
            .unwrap();
    assert_eq!(report["version"], "0.0.1");
}

#[test]
fn a_missing_or_unusable_rootfs_is_refused_with_its_path() {
    let fx = fixture();
    let dir = fx.path();
    let missing = dir.join("no-such-tree");
    let (ok, log, out) = build(dir, &missing, "out-missing");
    assert!(
        !ok && log.contains("does not exist") && log.contains(s(&missing)),
        "{log}"
    );
    assert!(!out.join("usr.img").exists());

    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("etc")).unwrap();
    let (ok, log, out) = build(dir, &empty, "out-empty");
    assert!(!ok && log.contains("has no /usr"), "{log}");
    assert!(!out.join("usr.img").exists() && !out.join("build.json").exists());

    // --keep-rootfs keeps what mmdebstrap made: with --rootfs there is
    // nothing to keep.
    let (ok, log) = drover(&[
        "build",
        "--spec",
        s(&dir.join("spec.toml")),
        "--key",
        s(&dir.join("k.pem")),
        "--out",
        s(&dir.join("out-both")),
        "--rootfs",
        s(&empty),
        "--keep-rootfs",
        s(&dir.join("kept")),
    ]);
    assert!(!ok && log.contains("cannot be used with"), "{log}");
}
