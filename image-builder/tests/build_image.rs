//! `drover build` end to end: a small image (minimal package set, for
//! speed) checked with outside tools. Needs root, network access to the
//! Debian mirror (or a warm package cache) and the Debian packages that
//! `cargo xtask deps` installs.
//!
//! Images are built once per test: the checks on one build share it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    let drover = PathBuf::from(env!("CARGO_BIN_EXE_drover"));
    let p = drover.with_file_name(name);
    if !p.is_file() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "drover-boot"])
            .status()
            .unwrap();
        assert!(st.success(), "building drover-boot");
    }
    p
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{out}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SPEC: &str = r#"
[os]
name = "drover"
version = "0.1.0"
security-version = 4

[debian]
suite = "bookworm"
packages = ["systemd", "systemd-boot-efi", "linux-image-amd64"]

[trust]
keys = ["release.pub.pem"]

[[files]]
path = "/etc/motd"
contents = "hello from a drover test image\n"

[[files]]
path = "/usr/lib/drover/test-marker"
contents = "marker\n"
mode = "0600"

[agent]
# The agent needs dbus; this small image leaves both out.
enabled = false

[disk]
esp-mib = 64
usr-mib = 512
oem-mib = 8
root-mib = 32
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
        let (sec, public) = (
            dir.path().join("release.pem"),
            dir.path().join("release.pub.pem"),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["keygen", "--secret", s(&sec), "--public", s(&public)])
            .output()
            .unwrap();
        assert!(out.status.success());
        // A copy: `drover-boot` goes into the image, and a concurrent
        // `cargo build` must not change it between two builds of a test.
        std::fs::copy(bin("drover-boot"), dir.path().join("drover-boot")).unwrap();
        Self { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build(&self, spec: &str, out: &str, extra: &[&str]) -> (bool, String) {
        let out_dir = self.p(out);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
        cmd.env("SOURCE_DATE_EPOCH", "1700000000")
            .args([
                "build",
                "--quiet",
                "--spec",
                s(&self.p(spec)),
                "--key",
                s(&self.p("release.pem")),
            ])
            .args([
                "--out",
                s(&out_dir),
                "--boot-binary",
                s(&self.p("drover-boot")),
            ])
            .args(extra);
        let o = cmd.output().unwrap();
        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), text)
    }
}

#[test]
fn builds_a_disk_that_outside_tools_accept() {
    let fx = Fixture::new();
    let (ok, log) = fx.build("spec.toml", "out", &["--json"]);
    assert!(ok, "build failed:\n{log}");
    let out = fx.p("out");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("build.json")).unwrap()).unwrap();
    for f in [
        "usr.img",
        "manifest.json",
        "disk.raw",
        "disk.qcow2",
        "esp.img",
        "install.json",
        "drover.iso",
        "sbom.spdx.json",
        "sbom.cdx.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
        assert!(
            report["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["file"] == f),
            "{f} not in build.json"
        );
    }
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "rootfs",
            "usr",
            "initramfs",
            "sbom",
            "erofs",
            "seal",
            "esp",
            "disk",
            "qcow2",
            "iso",
            "digests"
        ]
    );
    assert_eq!(report["security_version"], 4);
    let disk = out.join("disk.raw");
    let usr = out.join("usr.img");

    // GPT: sgdisk and cgpt.
    let v = must("sgdisk", &["-v", s(&disk)]);
    assert!(v.contains("No problems found"), "{v}");
    let p = must("sgdisk", &["-p", s(&disk)]);
    for (n, label) in [
        ("1", "EFI-SYSTEM"),
        ("3", "USR-A"),
        ("4", "USR-B"),
        ("6", "OEM"),
        ("9", "ROOT"),
    ] {
        assert!(
            p.lines()
                .any(|l| l.split_whitespace().next() == Some(n) && l.ends_with(label)),
            "{p}"
        );
    }
    assert_eq!(
        must("cgpt", &["show", "-i", "3", "-P", s(&disk)]).trim(),
        "1"
    );
    assert_eq!(
        must("cgpt", &["show", "-i", "3", "-S", s(&disk)]).trim(),
        "1"
    );
    assert_eq!(
        must("cgpt", &["show", "-i", "4", "-P", s(&disk)]).trim(),
        "0"
    );

    // The slot image: manifest, veritysetup, fsck.erofs.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["verity"]["root_hash"], report["root_hash"]);
    let m = &manifest["verity"];
    must(
        "veritysetup",
        &[
            "verify",
            s(&usr),
            s(&usr),
            m["root_hash"].as_str().unwrap(),
            &format!("--hash-offset={}", m["hash_offset"]),
            &format!("--data-blocks={}", m["data_blocks"]),
        ],
    );
    must("fsck.erofs", &[s(&usr)]);
    let tree = fx.p("extracted");
    must("fsck.erofs", &[&format!("--extract={}", s(&tree)), s(&usr)]);
    let kver = report["kernel_version"].as_str().unwrap();
    assert!(tree.join(format!("lib/modules/{kver}/vmlinuz")).is_file());
    assert!(tree
        .join(format!("lib/modules/{kver}/drover-initramfs.img"))
        .is_file());
    assert_eq!(
        std::fs::read_to_string(tree.join("share/factory/etc/motd")).unwrap(),
        "hello from a drover test image\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("lib/drover/test-marker")).unwrap(),
        "marker\n"
    );
    let os_release = std::fs::read_to_string(tree.join("lib/os-release")).unwrap();
    assert!(os_release.contains("IMAGE_VERSION=0.1.0"), "{os_release}");
    // Nothing of the build host in the factory /etc.
    assert_eq!(
        std::fs::read_to_string(tree.join("share/factory/etc/hostname")).unwrap(),
        "drover\n"
    );
    assert!(!tree.join("share/factory/etc/resolv.conf").exists());
    assert_eq!(
        std::fs::read_dir(tree.join("lib/drover/keys"))
            .unwrap()
            .count(),
        1
    );
    // The manifest's boot digests are those of the files in /usr.
    let kernel_sha = must(
        "sha256sum",
        &[s(&tree.join(format!("lib/modules/{kver}/vmlinuz")))],
    );
    assert!(kernel_sha.starts_with(manifest["boot"]["kernel"]["sha256"].as_str().unwrap()));
    sbom_is_complete_signed_and_valid(&out, &tree, &report, &manifest);

    // The slot initramfs is a cpio that GNU cpio lists, with drover-boot as /init.
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio -t < {}",
            s(&tree.join(format!("lib/modules/{kver}/drover-initramfs.img")))
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "init"), "{listing}");
    assert!(
        listing.lines().any(|l| l.ends_with("dm-verity.ko")),
        "{listing}"
    );

    // Signature: the right key holds, a wrong key does not, a tampered byte fails --verify.
    let drover = env!("CARGO_BIN_EXE_drover");
    let (ok, text) = run(
        drover,
        &[
            "inspect",
            s(&disk),
            "--public",
            s(&fx.p("release.pub.pem")),
            "--verify",
        ],
    );
    assert!(ok && text.contains("verified"), "{text}");
    let (wrong, wrong_pub) = (fx.p("other.pem"), fx.p("other.pub.pem"));
    must(
        drover,
        &["keygen", "--secret", s(&wrong), "--public", s(&wrong_pub)],
    );
    let (ok, text) = run(drover, &["inspect", s(&usr), "--public", s(&wrong_pub)]);
    assert!(
        !ok && text.contains("not signed by a trusted key"),
        "{text}"
    );
    let tampered = fx.p("tampered.img");
    std::fs::copy(&usr, &tampered).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tampered)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, 5 * 1024 * 1024 + 3).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], 5 * 1024 * 1024 + 3).unwrap();
    }
    let (ok, text) = run(
        drover,
        &[
            "inspect",
            s(&tampered),
            "--public",
            s(&fx.p("release.pub.pem")),
            "--verify",
        ],
    );
    assert!(!ok && text.contains("data block 1280 is corrupt"), "{text}");

    // The qcow2 holds the same disk.
    must(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            s(&disk),
            s(&out.join("disk.qcow2")),
        ],
    );

    // The ISO: UEFI El Torito, the slot image and the installer's files.
    let iso = out.join("drover.iso");
    let report = must(
        "xorriso",
        &["-indev", s(&iso), "-report_el_torito", "plain"],
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("El Torito boot img") && l.contains("UEFI")),
        "{report}"
    );
    assert!(report.contains("/boot/efi.img"), "{report}");
    // Hybrid: a GPT with an EFI system partition for USB sticks.
    let gpt = must("sgdisk", &["-p", s(&iso)]);
    assert!(
        gpt.lines()
            .any(|l| l.split_whitespace().next() == Some("2") && l.contains("EF00")),
        "{gpt}"
    );
    let listing = must("xorriso", &["-indev", s(&iso), "-ls", "/drover"]);
    for f in ["usr.img", "esp.img", "install.json", "manifest.json"] {
        assert!(
            listing.contains(&format!("'{f}'")),
            "{f} not on the ISO: {listing}"
        );
    }
    let on_iso = fx.p("usr-from-iso.img");
    must(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract",
            "/drover/usr.img",
            s(&on_iso),
        ],
    );
    assert!(
        std::fs::read(&on_iso).unwrap() == std::fs::read(&usr).unwrap(),
        "the ISO's slot image is not the build's"
    );

    installer(&fx, &out, &tampered);
}

/// Removes what a test set up on the host (a mount, a loop device) even
/// when an assertion fails.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new(&c[0]).args(&c[1..]).status();
        }
    }
}

/// The SBOM: in the output and in the slot's /usr, the same bytes, signed
/// by digest in the manifest; every package of build.json in both formats,
/// the kernel's among them; valid by the reference tools of each format.
fn sbom_is_complete_signed_and_valid(
    out: &Path,
    usr_tree: &Path,
    report: &serde_json::Value,
    manifest: &serde_json::Value,
) {
    let packages: Vec<&str> = report["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        packages.iter().any(|p| p.starts_with("linux-image-6")),
        "{packages:?}"
    );
    for (file, component) in [
        ("sbom.spdx.json", "sbom-spdx"),
        ("sbom.cdx.json", "sbom-cyclonedx"),
    ] {
        let bytes = std::fs::read(out.join(file)).unwrap();
        assert_eq!(
            std::fs::read(usr_tree.join("share/drover").join(file)).unwrap(),
            bytes,
            "{file}: the image's copy differs from the output's"
        );
        let signed = manifest["reference"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["component"] == component)
            .unwrap_or_else(|| panic!("no {component} in the manifest: {manifest}"));
        assert_eq!(signed["sha256"].as_str().unwrap(), sha256(&out.join(file)));
    }
    let spdx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sbom.spdx.json")).unwrap()).unwrap();
    let cdx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sbom.cdx.json")).unwrap()).unwrap();
    for line in &packages {
        let (name_arch, version) = line.split_once(' ').unwrap();
        let name = name_arch.split(':').next().unwrap();
        assert!(
            spdx["packages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == name
                    && p["versionInfo"] == version
                    && p["externalRefs"][0]["referenceLocator"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("pkg:deb/debian/{}@", name.replace('+', "%2B")))),
            "{line} not in the SPDX document"
        );
        assert!(
            cdx["components"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name && c["version"] == version),
            "{line} not in the CycloneDX document"
        );
    }
    // The reference tools, installed from PyPI by this test.
    let python = drover_test_support::python_venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[
            "spdx-tools==0.8.5",
            "cyclonedx-python-lib[validation]==11.12.0",
        ],
    );
    let spdx_file = out.join("sbom.spdx.json");
    let (ok, text) = run(
        s(&python),
        &[
            "-m",
            "spdx_tools.spdx.clitools.pyspdxtools",
            "-i",
            s(&spdx_file),
        ],
    );
    assert!(ok, "pyspdxtools refuses the SPDX document:\n{text}");
    let (ok, text) = run(
        s(&python),
        &["-c", CYCLONEDX_VALIDATE, s(&out.join("sbom.cdx.json"))],
    );
    assert!(
        ok && text.contains("valid"),
        "CycloneDX 1.5 schema:\n{text}"
    );
    // And each refuses a broken document, so the checks above can fail.
    let broken = out.join("broken.spdx.json");
    let mut bad = spdx.clone();
    bad["packages"][1]["SPDXID"] = serde_json::json!("not an SPDX id");
    std::fs::write(&broken, serde_json::to_vec(&bad).unwrap()).unwrap();
    let (ok, _) = run(
        s(&python),
        &[
            "-m",
            "spdx_tools.spdx.clitools.pyspdxtools",
            "-i",
            s(&broken),
        ],
    );
    assert!(!ok, "pyspdxtools accepted a broken SPDX document");
    let mut bad = cdx;
    bad["components"][0]["type"] = serde_json::json!("spaceship");
    std::fs::write(&broken, serde_json::to_vec(&bad).unwrap()).unwrap();
    let (ok, _) = run(s(&python), &["-c", CYCLONEDX_VALIDATE, s(&broken)]);
    assert!(!ok, "the CycloneDX validator accepted a broken document");
    std::fs::remove_file(&broken).unwrap();
}

/// cyclonedx-python-lib's strict JSON schema validation, CycloneDX 1.5.
const CYCLONEDX_VALIDATE: &str = "
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if error is not None:
    print(error)
    sys.exit(1)
print('valid')
";

fn sha256(p: &Path) -> String {
    must("sha256sum", &[s(p)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `drover-install` from a build's output directory onto disk image files
/// and a loop device: an install that outside tools accept, the refusals
/// (too small, mounted, bad signature) that leave the disk as it was, and
/// a failed install (a slot image whose signature holds but whose data
/// does not) that leaves no partition table.
fn installer(fx: &Fixture, out: &Path, corrupt_data: &Path) {
    let install = env!("CARGO_BIN_EXE_drover-install");
    let keys = fx.p("release.pub.pem");
    let base = |disk: &Path| {
        vec![
            "--disk".to_string(),
            s(disk).to_string(),
            "--media".into(),
            s(out).into(),
            "--keys".into(),
            s(&keys).into(),
        ]
    };
    let exec = |args: Vec<String>| {
        let o = Command::new(install).args(&args).output().unwrap();
        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.code(), text)
    };
    let config = fx.p("node.toml");
    std::fs::write(&config, "hostname = \"installed\"\n").unwrap();

    // A good install onto a 1.5 GiB disk image with a node config.
    let disk = fx.p("installed.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1536 << 20)
        .unwrap();
    let mut args = base(&disk);
    args.extend(["--config".into(), s(&config).into(), "--json".into()]);
    let (code, text) = exec(args);
    assert_eq!(code, Some(0), "{text}");
    let v = must("sgdisk", &["-v", s(&disk)]);
    assert!(v.contains("No problems found"), "{v}");
    assert_eq!(
        must("cgpt", &["show", "-i", "3", "-P", s(&disk)]).trim(),
        "1"
    );
    assert_eq!(
        must("cgpt", &["show", "-i", "3", "-S", s(&disk)]).trim(),
        "1"
    );
    assert_eq!(
        must("cgpt", &["show", "-i", "4", "-P", s(&disk)]).trim(),
        "0"
    );
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_drover"),
        &["inspect", s(&disk), "--public", s(&keys), "--verify"],
    );
    assert!(ok && text.contains("verity:           verified"), "{text}");
    // The node config is on OEM (partition 6).
    let (start, _) = drover_core::PartitionTable::open(&disk)
        .unwrap()
        .0
        .byte_range(6)
        .unwrap();
    let oem = fx.p("oem.ext4");
    must(
        "dd",
        &[
            &format!("if={}", s(&disk)),
            &format!("of={}", s(&oem)),
            "bs=1M",
            &format!("skip={}", start >> 20),
            "count=8",
        ],
    );
    let cat = must("debugfs", &["-R", "cat /config.toml", s(&oem)]);
    assert!(cat.contains("hostname = \"installed\""), "{cat}");

    // The slot image over HTTP (nginx on loopback): fetched through the
    // agent's HTTP code, then checked and installed like a file; a URL
    // that is not there is refused before the disk is touched.
    let web = drover_qemu_tests::web::Nginx::serve(out, None);
    let url_disk = fx.p("installed-from-url.raw");
    std::fs::File::create(&url_disk)
        .unwrap()
        .set_len(1536 << 20)
        .unwrap();
    let mut args = base(&url_disk);
    args.extend(["--image".into(), format!("{}usr.img", web.url())]);
    let (code, text) = exec(args);
    assert_eq!(code, Some(0), "{text}");
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_drover"),
        &["inspect", s(&url_disk), "--public", s(&keys), "--verify"],
    );
    assert!(ok && text.contains("verity:           verified"), "{text}");
    let log = web.access_log();
    assert!(
        log.contains("HEAD /usr.img") && log.contains("GET /usr.img"),
        "{log}"
    );
    // Unattended, as the live system's drover-install-auto.service runs
    // it: the kernel command line from a file, the config from a URL.
    std::fs::write(out.join("node-url.toml"), "hostname = \"unattended\"\n").unwrap();
    let unattended = |cmdline: String| {
        let f = fx.p("cmdline");
        std::fs::write(&f, cmdline).unwrap();
        exec(vec![
            "--unattended".into(),
            "--cmdline".into(),
            s(&f).into(),
            "--media".into(),
            s(out).into(),
            "--keys".into(),
            s(&keys).into(),
        ])
    };
    let auto_disk = fx.p("installed-unattended.raw");
    std::fs::File::create(&auto_disk)
        .unwrap()
        .set_len(1536 << 20)
        .unwrap();
    let (code, text) = unattended(format!(
        "console=ttyS0 drover.live drover.install={} drover.install.config={}node-url.toml drover.install.then=stay",
        s(&auto_disk),
        web.url()
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("node config: on OEM"), "{text}");
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_drover"),
        &["inspect", s(&auto_disk), "--public", s(&keys), "--verify"],
    );
    assert!(ok && text.contains("verity:           verified"), "{text}");
    // Nothing asked: nothing done. A typo or a disk too small: refused,
    // status 2, nothing written.
    let (code, text) = unattended("console=ttyS0 drover.live".into());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing to do"), "{text}");
    let small = fx.p("small-unattended.raw");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let small_before = sha256(&small);
    for (cmdline, want) in [
        (
            format!("drover.install={} drover.install.then=stay", s(&small)),
            "Drover needs at least",
        ),
        (
            format!("drover.install={} drover.install.then=halt", s(&small)),
            "drover.install.then=halt",
        ),
        (
            format!(
                "drover.install={} drover.install.config=/nonexistent.toml",
                s(&small)
            ),
            "does not exist",
        ),
    ] {
        let (code, text) = unattended(cmdline.clone());
        assert_eq!(code, Some(2), "{cmdline}: {text}");
        assert!(
            text.contains(want) && text.contains("nothing was written"),
            "{cmdline}: {text}"
        );
        assert_eq!(sha256(&small), small_before, "{cmdline}: the disk changed");
    }

    let url_before = sha256(&url_disk);
    let mut args = base(&url_disk);
    args.extend(["--image".into(), format!("{}missing.img", web.url())]);
    let (code, text) = exec(args);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("refusing to install") && text.contains("404"),
        "{text}"
    );
    assert_eq!(
        sha256(&url_disk),
        url_before,
        "a refused install changed the disk"
    );
    drop(web);
    std::fs::remove_file(&url_disk).unwrap();

    let before = sha256(&disk);
    // Too small.
    let small = fx.p("small.raw");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let (code, text) = exec(base(&small));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("refusing to install") && text.contains("is 100 MiB; Drover needs at least"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 100 << 20);
    assert!(std::fs::read(&small).unwrap().iter().all(|&b| b == 0));

    // A bad signature: one byte of the signed manifest changed.
    let usr = std::fs::read(out.join("usr.img")).unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let at = usr
        .windows(64)
        .rposition(|w| w == &manifest[..64])
        .expect("the manifest's bytes in the slot image");
    let mut bad = usr.clone();
    bad[at + 40] ^= 0x20;
    let bad_path = fx.p("bad-signature.img");
    std::fs::write(&bad_path, &bad).unwrap();
    drop((usr, bad));
    let mut args = base(&disk);
    args.extend(["--image".into(), s(&bad_path).into()]);
    let (code, text) = exec(args);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("refusing to install: the slot image does not verify"),
        "{text}"
    );
    assert_eq!(sha256(&disk), before, "a refused install changed the disk");

    // Mounted: a loop device with a mounted file system.
    let backing = fx.p("busy.raw");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let dev = must("losetup", &["--find", "--show", s(&backing)])
        .trim()
        .to_string();
    cleanup
        .0
        .push(vec!["losetup".into(), "-d".into(), dev.clone()]);
    must("mkfs.ext4", &["-q", &dev]);
    let mnt = fx.p("busy-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    must("mount", &[&dev, s(&mnt)]);
    cleanup.0.push(vec!["umount".into(), s(&mnt).into()]);
    let (code, text) = exec(base(Path::new(&dev)));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("{dev} is mounted on {}", s(&mnt))),
        "{text}"
    );
    drop(cleanup);

    // A partition instead of a whole disk: the installed disk's USR-B.
    let mut cleanup = Cleanup(Vec::new());
    let dev = must("losetup", &["--find", "--show", "--partscan", s(&disk)])
        .trim()
        .to_string();
    cleanup
        .0
        .push(vec!["losetup".into(), "-d".into(), dev.clone()]);
    // The kernel's partitions of the loop device; where the kernel does
    // not parse GPTs itself (this host's does not), partx adds them
    // (BLKPG). No udev here: the node is made beside the test's files.
    let name = format!("{}p4", dev.trim_start_matches("/dev/"));
    let sys = Path::new("/sys/class/block").join(&name).join("dev");
    let appear = || {
        for _ in 0..20 {
            if sys.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    if !appear() {
        must("partx", &["--add", &dev]);
        assert!(appear(), "no {name} after partx --add");
    }
    let numbers = std::fs::read_to_string(&sys).unwrap();
    let (major, minor) = numbers.trim().split_once(':').unwrap();
    let part = s(&fx.p(&name)).to_string();
    must("mknod", &[&part, "b", major, minor]);
    let (code, text) = exec(base(Path::new(&part)));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&format!("{part} is a partition")), "{text}");
    drop(cleanup);
    assert_eq!(sha256(&disk), before, "a refused install changed the disk");

    // A failed install: the signature holds, a data block does not. The
    // disk that had a good table is left with none.
    let mut args = base(&disk);
    args.extend(["--image".into(), s(corrupt_data).into()]);
    let (code, text) = exec(args);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("USR-A as written does not verify")
            && text.contains("left without a partition table"),
        "{text}"
    );
    let head = {
        use std::os::unix::fs::FileExt as _;
        let mut b = vec![0u8; 1 << 20];
        std::fs::File::open(&disk)
            .unwrap()
            .read_exact_at(&mut b, 0)
            .unwrap();
        b
    };
    assert!(
        head.iter().all(|&b| b == 0),
        "the protective MBR or the GPT survived"
    );
    assert!(drover_core::PartitionTable::open(&disk).is_err());
}

#[test]
fn bad_specs_fail_fast_and_leave_no_output_that_looks_complete() {
    let fx = Fixture::new();
    let good = SPEC.to_string();
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown-key",
            good.replace("[disk]", "[disk]\nusr-size = 3"),
            "at `disk.usr-size`: unknown field",
        ),
        (
            "typo-section",
            good.replace("[trust]", "[trusts]"),
            "trusts",
        ),
        (
            "no-kernel",
            good.replace(", \"linux-image-amd64\"", ""),
            "kernel package",
        ),
        (
            "bad-key-file",
            good.replace("release.pub.pem", "missing.pub.pem"),
            "missing.pub.pem",
        ),
    ];
    // Resolve (and if needed build) drover-boot before timing anything.
    let _ = bin("drover-boot");
    for (name, text, want) in cases {
        std::fs::write(fx.p(&format!("{name}.toml")), text).unwrap();
        let t = std::time::Instant::now();
        let (ok, log) = fx.build(&format!("{name}.toml"), name, &[]);
        assert!(!ok, "{name}: the build succeeded");
        assert!(log.contains(want), "{name}: wanted '{want}' in:\n{log}");
        // Failing fast means before any stage runs (a build takes minutes);
        // the time bound is loose because CI runs this beside QEMU guests.
        assert!(!log.contains("rootfs"), "{name}: a build stage ran:\n{log}");
        assert!(t.elapsed().as_secs() < 30, "{name}: not fast");
        assert!(!fx.p(name).join("build.json").exists(), "{name}");
    }
    // An unreadable signing key.
    let (ok, log) = {
        let o = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args([
                "build",
                "--spec",
                s(&fx.p("spec.toml")),
                "--key",
                "/nonexistent/key.pem",
                "--out",
                s(&fx.p("k")),
            ])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(!ok && log.contains("/nonexistent/key.pem"), "{log}");
    // A package that does not exist: mmdebstrap fails, the message says which.
    std::fs::write(
        fx.p("nopkg.toml"),
        good.replace("\"systemd\",", "\"no-such-package-drover\","),
    )
    .unwrap();
    let cache = fx.p("cache");
    let (ok, log) = fx.build("nopkg.toml", "nopkg", &["--cache-dir", s(&cache)]);
    assert!(!ok);
    assert!(log.contains("no-such-package-drover"), "{log}");
    let left: Vec<_> = std::fs::read_dir(fx.p("nopkg"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "a failed build left {left:?}");
}

/// The package list of a build (`build.json`'s `packages`).
fn packages(dir: &Path) -> Vec<String> {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    j["packages"]
        .as_array()
        .expect("build.json lists the packages")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Same inputs and SOURCE_DATE_EPOCH: the same usr.img, byte for byte.
///
/// The inputs include the Debian mirror, which is live: when it publishes
/// new package versions between two builds (build.json's package lists
/// differ), the inputs were not the same and a third build is compared
/// with the second. (The fixture builds with its own copy of
/// `drover-boot`, so a concurrent `cargo build` cannot change it.)
///
/// The first build also keeps its root file system (`--keep-rootfs`); a
/// slot-only build from that tree (`--rootfs`) gives the first build's
/// `usr.img` again, byte for byte, whatever the mirror did meanwhile.
#[test]
fn the_slot_image_and_the_iso_are_reproducible() {
    let fx = Fixture::new();
    let build = |out: &str, extra: &[&str]| {
        let (ok, log) = fx.build("spec.toml", out, extra);
        assert!(ok, "build {out} failed:\n{log}");
        fx.p(out)
    };
    let kept = fx.p("kept-rootfs");
    let first = build("first", &["--keep-rootfs", s(&kept)]);
    assert!(kept.join("usr").is_dir() && kept.join("var/lib/dpkg/status").is_file());
    let from_kept = build("from-kept", &["--slot-only", "--rootfs", s(&kept)]);
    assert!(
        sha256(&first.join("usr.img")) == sha256(&from_kept.join("usr.img")),
        "a build from the kept root file system differs from the build that kept it"
    );
    assert_eq!(packages(&first), packages(&from_kept));
    let mut prev = first;
    for again in ["second", "third"] {
        let next = build(again, &[]);
        let same_inputs = packages(&prev) == packages(&next);
        if std::fs::read(prev.join("usr.img")).unwrap()
            == std::fs::read(next.join("usr.img")).unwrap()
        {
            assert!(same_inputs, "same usr.img from different package lists?");
            // The installation ISO (and the ESP image in it) too.
            for f in ["esp.img", "drover.iso"] {
                assert!(
                    sha256(&prev.join(f)) == sha256(&next.join(f)),
                    "{f} differs between two builds of the same inputs"
                );
            }
            let _ = std::fs::remove_dir_all(&prev);
            return;
        }
        assert!(
            !same_inputs,
            "usr.img differs between two builds of the same inputs (same packages, same binaries)"
        );
        eprintln!("the mirror changed between two builds; building once more");
        prev = next;
    }
    panic!("the mirror changed during each of three builds");
}
