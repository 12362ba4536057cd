//! `cargo xtask demo`: the main job, narrated. Builds v1 and v2 of the
//! default image (examples/container-host.toml) with a development key,
//! boots v1 in QEMU through OVMF and systemd-boot, applies v2 to the
//! inactive slot offline, boots v2, rolls back and boots v1 again.
//!
//! The network path (the agent following a channel over HTTP) is issue 5;
//! until then the update is applied with `droverctl update --disk`, which
//! runs the agent's checks and order of writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_qemu_tests::guest::{Firmware, Guest, GuestBuilder};

fn say(start: Instant, msg: &str) {
    println!("\n[demo {:>4}s] {msg}", start.elapsed().as_secs());
}

fn show(start: Instant, g: &mut Guest, marker: &str, timeout: Duration) -> anyhow::Result<String> {
    let line = g.wait_for(marker, timeout).map_err(|e| {
        let console = g.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        anyhow::anyhow!(
            "{e}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })?;
    println!(
        "[demo {:>4}s]   console: {}",
        start.elapsed().as_secs(),
        strip(&line)
    );
    Ok(line)
}

fn strip(s: &str) -> String {
    // Drop terminal escape sequences systemd prints.
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn boot(
    start: Instant,
    name: &str,
    disk: &Path,
    dir: &Path,
    expect_slot: &str,
    expect_version: &str,
) -> anyhow::Result<()> {
    let mut g = GuestBuilder::new(
        name,
        disk,
        Firmware::Ovmf {
            vars: dir.join(format!("{name}-vars.fd")),
        },
    )
    .probe_kernel(&dir.join("stage-vmlinuz"))
    .start()?;
    let t = Duration::from_secs(600);
    show(start, &mut g, "chose USR-", t)?;
    show(start, &mut g, "kexec into", t)?;
    let l = show(start, &mut g, "/usr: USR-", t)?;
    if !l.contains(expect_slot) {
        bail!("expected {expect_slot}: {l}");
    }
    let w = show(start, &mut g, "Welcome to", t)?;
    if !w.contains(expect_version) {
        bail!("expected Drover {expect_version}: {w}");
    }
    // The login prompt on the serial console: systemd is up and getty runs.
    show(start, &mut g, "login:", t)?;
    g.stop();
    Ok(())
}

/// Whether an earlier build in `out` is from the same spec text and newer
/// than the binaries that made it.
fn reusable(spec_path: &Path, spec: &str, out: &Path, bins: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(out.join("build.json")).and_then(|m| m.modified()) else {
        return false;
    };
    std::fs::read_to_string(spec_path).ok().as_deref() == Some(spec)
        && bins.iter().all(|b| {
            std::fs::metadata(b)
                .and_then(|m| m.modified())
                .map(|t| t < built)
                .unwrap_or(false)
        })
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    say(
        start,
        &format!(
            "checking the Debian packages the demo needs ({})",
            crate::deps::packages().join(", ")
        ),
    );
    crate::deps::install()?;
    say(
        start,
        "building drover, droverctl and drover-boot (release)",
    );
    crate::run(
        crate::cargo()
            .args([
                "build",
                "--release",
                "-p",
                "drover-image-builder",
                "-p",
                "drover-boot",
                "-p",
                "drover-update-agent",
            ])
            .current_dir(&root),
    )?;
    let bin = |n: &str| root.join("target/release").join(n);
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let (key, public) = (dir.join("dev.pem"), dir.join("dev.pub.pem"));
    if !key.is_file() {
        run_quiet(
            Command::new(bin("drover"))
                .arg("keygen")
                .arg("--secret")
                .arg(&key)
                .arg("--public")
                .arg(&public),
        )?;
    }
    say(
        start,
        &format!(
            "development key {} (never use it for real releases)",
            key.display()
        ),
    );

    let spec = std::fs::read_to_string(root.join("examples/container-host.toml"))?;
    let trust = format!("keys = [\"{}\"]", public.display());
    let spec = spec.replace("# keys = [\"keys/release.pub.pem\"]", &trust);
    let mut outs: Vec<PathBuf> = Vec::new();
    for (v, sv) in [("1.0.0", 1), ("1.1.0", 1)] {
        let s = spec
            .replace("version = \"1.0.0\"", &format!("version = \"{v}\""))
            .replace("security-version = 1", &format!("security-version = {sv}"));
        let spec_path = dir.join(format!("container-host-{v}.toml"));
        let out = dir.join(format!("out-{v}"));
        if reusable(&spec_path, &s, &out, &[bin("drover"), bin("drover-boot")]) {
            say(
                start,
                &format!(
                    "reusing Drover {v} from an earlier run ({}; remove it to rebuild)",
                    out.display()
                ),
            );
            outs.push(out);
            continue;
        }
        std::fs::write(&spec_path, s)?;
        say(start, &format!("building Drover {v} from examples/container-host.toml (mmdebstrap, EROFS, verity, signed manifest, disk image)"));
        crate::run(
            Command::new(bin("drover"))
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["build", "--spec"])
                .arg(&spec_path)
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(&out)
                .arg("--boot-binary")
                .arg(bin("drover-boot")),
        )?;
        outs.push(out);
    }
    let disk = dir.join("node.raw");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(outs[0].join("disk.raw"))
        .arg(&disk)
        .status()?;
    if !st.success() {
        bail!("copying the disk image");
    }
    // The stage kernel, for the KVM probe (KVM only when a guest really runs).
    run_quiet(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@1M", disk.display()))
            .arg("::/drover/vmlinuz")
            .arg(dir.join("stage-vmlinuz")),
    )?;
    let slots = |what: &str| -> anyhow::Result<()> {
        say(start, what);
        print!(
            "{}",
            run_quiet(
                Command::new(bin("droverctl"))
                    .arg("slots")
                    .arg("--disk")
                    .arg(&disk)
            )?
        );
        Ok(())
    };
    slots("the node's disk: v1.0.0 in USR-A, USR-B empty")?;
    say(start, "booting the node in QEMU (OVMF, systemd-boot, drover-boot stage, kexec into the slot); TCG takes a minute or two");
    boot(start, "v1", &disk, &dir, "USR-A", "1.0.0")?;

    say(start, "applying 1.1.0 to the inactive slot (signature, security version, stream + verity check, then one try)");
    print!(
        "{}",
        run_quiet(
            Command::new(bin("droverctl"))
                .arg("update")
                .arg("--from")
                .arg(&outs[1])
                .arg("--disk")
                .arg(&disk)
                .arg("--trust")
                .arg(&public)
        )?
    );
    say(
        start,
        "rebooting: the stage uses up USR-B's try, checks every block of the new slot and boots it",
    );
    boot(start, "v2", &disk, &dir, "USR-B", "1.1.0")?;
    say(start, "1.1.0 is up (login prompt): marking USR-B successful (the agent will do this after boot-complete.target)");
    print!(
        "{}",
        run_quiet(
            Command::new(bin("droverctl"))
                .args(["mark-successful", "--slot", "USR-B", "--disk"])
                .arg(&disk)
        )?
    );

    say(start, "manual rollback to the previous version");
    print!(
        "{}",
        run_quiet(
            Command::new(bin("droverctl"))
                .arg("rollback")
                .arg("--disk")
                .arg(&disk)
        )?
    );
    boot(start, "rollback", &disk, &dir, "USR-A", "1.0.0")?;
    slots("done: the node runs 1.0.0 again, 1.1.0 stays in USR-B as a rollback target")?;
    Ok(())
}
